#include "train/ema.h"

#include <cmath>
#include <mutex>
#include <stdexcept>
#include <string>

#include <ATen/ATen.h>

#include "model/model_dir.h"

namespace lpdetr::train {

void EmaOptions::Validate() const {
  if (!(decay >= 0 && decay < 1)) {
    throw std::invalid_argument("EMA decay must be in [0, 1), got " + std::to_string(decay));
  }
  if (!(warmup_steps > 0)) {
    throw std::invalid_argument("EMA warm-up steps must be > 0, got " +
                                std::to_string(warmup_steps));
  }
}

namespace {

// A model for `config` whose (immediately overwritten) random initialisation
// leaves the global CPU generator as it was: keeping an EMA must not change
// the training run's random stream (denoising noise, initialisation, ...).
LpDetr BuildWithoutConsumingRandomness(const ModelConfig& config) {
  at::Generator generator = at::globalContext().defaultGenerator(at::kCPU);
  at::Tensor state;
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    state = generator.get_state();
  }
  LpDetr model(config);
  {
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state);
  }
  return model;
}

}  // namespace

ModelEma::ModelEma(const ModelConfig& config, const torch::nn::Module& source,
                   EmaOptions options)
    : options_(options), model_(BuildWithoutConsumingRandomness(config)) {
  options_.Validate();
  at::NoGradGuard no_grad;
  LoadStateDict(*model_, StateDict(source), "EMA source");
  for (auto& p : model_->parameters()) p.set_requires_grad(false);
  model_->eval();
}

double ModelEma::NextDecay() const {
  return options_.decay * (1.0 - std::exp(-static_cast<double>(updates_ + 1) /
                                          options_.warmup_steps));
}

void ModelEma::Update(const torch::nn::Module& source) {
  at::NoGradGuard no_grad;
  const double d = NextDecay();
  ++updates_;
  const NamedTensors current = StateDict(source);
  const NamedTensors averaged = StateDict(*model_);
  if (current.size() != averaged.size()) {
    throw std::invalid_argument("EMA update: the model has " + std::to_string(current.size()) +
                                " tensors, the average " + std::to_string(averaged.size()));
  }
  for (size_t i = 0; i < current.size(); ++i) {
    const at::Tensor& src = current[i].second;
    const at::Tensor& dst = averaged[i].second;
    if (current[i].first != averaged[i].first) {
      throw std::invalid_argument("EMA update: tensor " + current[i].first +
                                  " where the average has " + averaged[i].first);
    }
    if (dst.is_floating_point()) {
      dst.mul_(d).add_(src.detach(), 1.0 - d);
    } else {
      dst.copy_(src);
    }
  }
}

NamedTensors ModelEma::Weights() const {
  NamedTensors out;
  for (auto& [name, t] : StateDict(*model_)) out.emplace_back(name, t.detach().clone());
  return out;
}

void ModelEma::Restore(const NamedTensors& weights, int64_t updates) {
  if (updates < 0) throw std::invalid_argument("EMA update count must be >= 0");
  at::NoGradGuard no_grad;
  LoadStateDict(*model_, weights, "EMA checkpoint");
  updates_ = updates;
}

}  // namespace lpdetr::train

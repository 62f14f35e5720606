#include "train/train_setup.h"

#include <initializer_list>
#include <stdexcept>
#include <utility>

#include <ATen/ATen.h>
#include <torch/nn/utils/clip_grad.h>

namespace lpdetr::train {
namespace {

bool ContainsAny(const std::string& name, std::initializer_list<const char*> keywords) {
  for (const char* k : keywords) {
    if (name.find(k) != std::string::npos) return true;
  }
  return false;
}

bool IsOfficiallyFrozen(const std::string& name) {
  return name == "backbone.conv1.weight" || name.rfind("backbone.layer1.", 0) == 0;
}

}  // namespace

void PrepareForTraining(torch::nn::Module& model) {
  model.train();
  for (auto& item : model.named_parameters(/*recurse=*/true)) {
    if (IsOfficiallyFrozen(item.key())) item.value().set_requires_grad(false);
  }
}

std::vector<NamedParameter> TrainableParameters(const torch::nn::Module& model) {
  std::vector<NamedParameter> result;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (item.value().requires_grad()) result.push_back({item.key(), item.value()});
  }
  return result;
}

const char* ParameterGroupName(ParameterGroupKind kind) {
  switch (kind) {
    case ParameterGroupKind::kOther:
      return "other";
    case ParameterGroupKind::kBackbone:
      return "backbone";
    case ParameterGroupKind::kBackboneNorm:
      return "backbone_norm";
    case ParameterGroupKind::kLinearProjection:
      return "linear_projection";
    case ParameterGroupKind::kLinearProjectionNorm:
      return "linear_projection_norm";
    case ParameterGroupKind::kOtherNorm:
      return "other_norm";
  }
  return "unknown";
}

ParameterGroupKind ClassifyParameter(const std::string& name) {
  const bool backbone = ContainsAny(name, {"backbone"});
  const bool linear = ContainsAny(name, {"reference_points", "sampling_offsets"});
  const bool norm_or_bias = ContainsAny(name, {"norm", "bias"});
  // A backbone parameter with a linear-projection keyword matches neither the
  // backbone nor the linear-projection rules and falls through to the last two.
  if (backbone && !linear) {
    return norm_or_bias ? ParameterGroupKind::kBackboneNorm : ParameterGroupKind::kBackbone;
  }
  if (!backbone && linear) {
    return norm_or_bias ? ParameterGroupKind::kLinearProjectionNorm
                        : ParameterGroupKind::kLinearProjection;
  }
  return norm_or_bias ? ParameterGroupKind::kOtherNorm : ParameterGroupKind::kOther;
}

std::vector<ParameterGroup> FinetuneBackboneAndLinearProjection(const torch::nn::Module& model) {
  std::vector<ParameterGroup> groups(kNumParameterGroups);
  for (int i = 0; i < kNumParameterGroups; ++i) {
    ParameterGroup& g = groups[i];
    g.kind = static_cast<ParameterGroupKind>(i);
    g.lr_scale = (g.kind == ParameterGroupKind::kOther || g.kind == ParameterGroupKind::kOtherNorm)
                     ? 1.0
                     : 0.1;
    g.weight_decay = g.kind == ParameterGroupKind::kOther ||
                     g.kind == ParameterGroupKind::kBackbone ||
                     g.kind == ParameterGroupKind::kLinearProjection;
  }
  for (NamedParameter& p : TrainableParameters(model)) {
    groups[static_cast<int>(ClassifyParameter(p.name))].params.push_back(std::move(p));
  }
  return groups;
}

std::unique_ptr<torch::optim::AdamW> MakeAdamW(const std::vector<ParameterGroup>& groups,
                                               const OptimizerOptions& options) {
  if (!(options.lr >= 0) || !(options.weight_decay >= 0) || !(options.eps >= 0)) {
    throw std::invalid_argument("optimizer: lr, weight decay and eps must be >= 0, got lr " +
                                std::to_string(options.lr) + ", weight decay " +
                                std::to_string(options.weight_decay) + ", eps " +
                                std::to_string(options.eps));
  }
  auto adamw = [&](double lr, double weight_decay) {
    return torch::optim::AdamWOptions(lr)
        .betas(std::make_tuple(options.beta1, options.beta2))
        .eps(options.eps)
        .weight_decay(weight_decay)
        .amsgrad(false);
  };
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  for (const ParameterGroup& g : groups) {
    std::vector<at::Tensor> tensors;
    for (const NamedParameter& p : g.params) tensors.push_back(p.tensor);
    param_groups.emplace_back(
        std::move(tensors),
        std::make_unique<torch::optim::AdamWOptions>(
            adamw(options.lr * g.lr_scale, g.weight_decay ? options.weight_decay : 0.0)));
  }
  return std::make_unique<torch::optim::AdamW>(std::move(param_groups),
                                               adamw(options.lr, options.weight_decay));
}

std::vector<at::Tensor> GroupTensors(const std::vector<ParameterGroup>& groups) {
  std::vector<at::Tensor> tensors;
  for (const ParameterGroup& g : groups) {
    for (const NamedParameter& p : g.params) tensors.push_back(p.tensor);
  }
  return tensors;
}

double ClipGradients(const std::vector<at::Tensor>& params, double max_norm) {
  if (max_norm > 0) return torch::nn::utils::clip_grad_norm_(params, max_norm);
  std::vector<at::Tensor> norms;
  for (const at::Tensor& p : params) {
    if (p.grad().defined()) norms.push_back(p.grad().detach().norm(2));
  }
  if (norms.empty()) return 0.0;
  return at::stack(norms).norm(2).item<double>();
}

void ClearGradients(const std::vector<at::Tensor>& params) {
  for (const at::Tensor& p : params) p.mutable_grad() = at::Tensor();
}

}  // namespace lpdetr::train

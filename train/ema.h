// Exponential moving average of a model's weights, for evaluation and the
// exported model when a run asks for it (`--ema`).
//
// After each optimizer step, every floating-point parameter and buffer of
// the averaged copy becomes d * ema + (1 - d) * current, with the decay ramp
// d = decay * (1 - exp(-updates / warmup_steps)) (updates counted from 1), so
// early steps follow the model closely and later ones average over about
// 1 / (1 - decay) steps. The copy is an LpDetr in eval mode built from the
// same configuration; its state (weights + update count) is part of a
// training checkpoint so a resumed run continues the same average.
//
// Threading: not thread-safe; the training thread owns it.
#pragma once

#include <cstdint>

#include <torch/nn/module.h>

#include "model/config.h"
#include "model/detector.h"
#include "model/safetensors.h"

namespace lpdetr::train {

struct EmaOptions {
  double decay = 0.9999;        // in [0, 1)
  double warmup_steps = 2000;   // > 0: the ramp's time constant in updates
  void Validate() const;
};

class ModelEma {
 public:
  // Starts the average at `source`'s current weights (update count 0).
  ModelEma(const ModelConfig& config, const torch::nn::Module& source, EmaOptions options);

  // One update from `source` (same architecture).
  void Update(const torch::nn::Module& source);

  // The decay the next update will use.
  double NextDecay() const;

  LpDetr& model() { return model_; }
  int64_t updates() const { return updates_; }

  // The averaged weights (parameters and buffers by name).
  NamedTensors Weights() const;
  // Restores a saved average; throws like LoadStateDict on mismatching names.
  void Restore(const NamedTensors& weights, int64_t updates);

 private:
  EmaOptions options_;
  LpDetr model_;
  int64_t updates_ = 0;
};

}  // namespace lpdetr::train

// Model directories (SPEC 2.3): `config.json` + `weights.safetensors`
// (+ optional `labels.txt`, one class name per line). Loading is strict:
// every parameter and buffer of the model must be in the file with the same
// shape, and the file may hold nothing else; errors list every offending name.
// Nothing is ever unpickled.
#pragma once

#include <map>
#include <string>

#include <c10/core/Device.h>

#include "model/config.h"
#include "model/detector.h"
#include "model/safetensors.h"

namespace lpdetr {

class ModelLoadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct LoadedModel {
  ModelConfig config;  // classes filled from labels.txt when present
  LpDetr model{nullptr};
  std::string dir;
};

// Loads a model directory in eval mode, weights cast to float32 on `device`.
LoadedModel LoadModelDir(const std::string& dir, const c10::Device& device = c10::kCPU);

// Parameters and buffers of a module by their dotted names.
NamedTensors StateDict(const torch::nn::Module& module);

// Copies `weights` into the module's parameters and buffers (cast to their
// dtype). Throws ModelLoadError listing missing keys, unexpected keys and
// shape mismatches.
void LoadStateDict(torch::nn::Module& module, const NamedTensors& weights,
                   const std::string& source = "weights");

// Writes config.json, weights.safetensors (float tensors stored as
// `storage_dtype`) and labels.txt (when the config has class names) into dir.
void SaveModelDir(const std::string& dir, const ModelConfig& config,
                  const torch::nn::Module& module, at::ScalarType storage_dtype = at::kFloat,
                  const std::map<std::string, std::string>& metadata = {});

}  // namespace lpdetr

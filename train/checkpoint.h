// Training checkpoints: everything a run needs to continue exactly where it
// stopped, on disk under RUN_DIR/checkpoints/.
//
// Layout of one checkpoint, a directory `step-NNNNNNNN` (optimizer steps done):
//   weights.safetensors    every parameter and buffer of the model (float32)
//   optimizer.safetensors  AdamW state per trainable parameter by name:
//                          `exp_avg.<name>`, `exp_avg_sq.<name>`, `step.<name>`
//                          (int64 scalar); absent entries = no step taken yet
//   ema.safetensors        the weight average (only when the run uses EMA)
//   rng.safetensors        `torch_cpu`: the state of LibTorch's default CPU
//                          generator (denoising noise), uint8
//   state.json             epoch, position in the epoch, step, EMA update
//                          count, evaluation history and best metric
//                          (TrainState::ToJson)
// The directory is written as `step-NNNNNNNN.tmp`, each file synced, then
// renamed into place; only then is `checkpoints/LATEST` (the directory name)
// replaced atomically. A crash at any point leaves LATEST naming a complete
// checkpoint. Older checkpoints are pruned after a new one is in place.
//
// Threading: the functions are not synchronised; the training thread calls
// them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <nlohmann/json.hpp>
#include <torch/optim/adamw.h>

#include "model/safetensors.h"
#include "train/train_setup.h"

namespace lpdetr::train {

// Where the run is and what it has seen; the JSON part of a checkpoint.
struct TrainState {
  int64_t epoch = 0;           // the epoch being trained (0-based)
  int64_t batch_in_epoch = 0;  // the next batch of that epoch
  int64_t step = 0;            // optimizer steps done
  // The evaluation of the epoch before `epoch` has not run yet (a stop came
  // between the end of that epoch and its evaluation).
  bool eval_pending = false;
  int64_t ema_updates = 0;
  // One entry per evaluation: {"epoch", "step", "stats": {...}}.
  nlohmann::json eval_history = nlohmann::json::array();
  // The best evaluation so far by the run's metric (null before the first).
  nlohmann::json best = nullptr;

  nlohmann::json ToJson() const;
  // Throws std::invalid_argument naming a missing or mistyped key.
  static TrainState FromJson(const nlohmann::json& j);
};

struct Checkpoint {
  NamedTensors weights;
  NamedTensors optimizer;
  NamedTensors ema;  // empty: no EMA
  at::Tensor rng_state;
  TrainState state;
};

// The AdamW state of the parameters in `groups`, keyed by parameter name.
NamedTensors AdamWStateTensors(torch::optim::AdamW& optimizer,
                               const std::vector<ParameterGroup>& groups);
// Restores it; throws std::invalid_argument naming a parameter whose state is
// incomplete or mis-shaped, or an entry for an unknown parameter.
void LoadAdamWState(torch::optim::AdamW& optimizer, const std::vector<ParameterGroup>& groups,
                    const NamedTensors& state);

// LibTorch's default CPU generator state, and restoring it.
at::Tensor DefaultCpuGeneratorState();
void SetDefaultCpuGeneratorState(const at::Tensor& state);

// Writes `checkpoint` as RUN_DIR/checkpoints/step-<step>, points LATEST at
// it and keeps only the newest `keep` checkpoints (>= 1). Returns its path.
std::string WriteCheckpoint(const std::string& run_dir, const Checkpoint& checkpoint, int keep);

// The directory LATEST names; throws std::runtime_error when there is none.
std::string LatestCheckpointDir(const std::string& run_dir);

// Reads a checkpoint directory; throws std::runtime_error naming the file.
Checkpoint ReadCheckpoint(const std::string& dir);

// The whole file; throws std::runtime_error naming it when it cannot be read.
std::string ReadTextFile(const std::string& path);

// Writes `text` to `path` through a temporary file in the same directory,
// synced and renamed over the target.
void WriteTextAtomically(const std::string& path, const std::string& text);

}  // namespace lpdetr::train

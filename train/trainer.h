// The training engine behind `lpdetr-train train` and `resume`: the official
// Relation-DETR recipe on a COCO dataset, with exact resume.
//
// A run lives in one directory (RUN_DIR):
//   run.json          the run's configuration (TrainConfig), fixed at start
//   base_config.json  the model configuration trained (classes and category
//                     ids of the dataset)
//   checkpoints/      resumable states (checkpoint.h); a first one at step 0
//   best/             the model directory of the best evaluation so far, with
//                     its metrics.json (never deleted; ties keep the earlier)
//   model/            the final servable model directory (SPEC 2.3)
//   progress.jsonl    one JSON event per line (progress.h)
//   metrics.json      final and best COCO stats, best epoch and step
//   loss_curve.png, alpha.png
//
// One step is one optimizer step over `accumulate_steps` batches (their losses
// divided by the group's batch count, so gradients are the group's mean). A
// step: forward in training mode with denoising and the hybrid branch, the
// HybridSetCriterion, backward, a NaN/Inf check of the loss and the gradient
// norm, clipping at max_grad_norm, AdamW with the official parameter groups
// at lr x MultiStepLR factor (stepped per epoch), then the EMA update.
// Evaluation runs after every epoch (or every `eval_every` steps) on the
// validation set, with the EMA weights when the run keeps an EMA.
//
// Stopping: a stop request (SIGTERM) is honoured after the current step: a
// checkpoint is written and Run() returns kStopped. A NaN/Inf loss or
// gradient norm returns kFailed with an error event naming the step; nothing
// of that step is saved, and the last checkpoint stays resumable.
//
// Each batch draws its denoising noise from a generator seeded by the run's
// seed and the batch's place (epoch, batch in epoch), so the draws do not
// depend on how the batches are run.
//
// Threading: Run() on one thread (the training thread), which also runs the
// step's batches, or with RunOptions::parallel_batches > 1 a replica pool's
// threads; the data loader has its own threads; the stop flag may be set from
// a signal handler.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/augment.h"
#include "train/ema.h"
#include "train/lr_schedule.h"
#include "train/progress.h"
#include "train/train_setup.h"

namespace lpdetr::train {

// Everything that defines a run (saved as RUN_DIR/run.json).
struct TrainConfig {
  std::string train_annotations, train_images;
  std::string val_annotations, val_images;  // optional (both or neither)
  std::string base_model;    // a model directory to fine-tune, or
  std::string model_config;  // a configuration to train from scratch
  // "finetune" or "full" (train_setup.h); empty: finetune for a base model,
  // full from a configuration. The run records the resolved value.
  std::string backbone_training;
  // Storage of the float tensors of model/ and best/: fp32, fp16 or bf16
  // (the model computes in fp32 either way; fp16 halves the files).
  std::string export_dtype = "fp32";
  // Compute precision of the training forwards: fp32, or bf16 (autocast:
  // convolutions and matrix products in bf16 against fp32 master weights and
  // fp32 optimizer state; normalisation, heads, box refinement, relation and
  // losses in fp32; model/precision.h). Needs a CPU with native bf16.
  std::string precision = "fp32";
  int64_t epochs = 12;
  int64_t batch_size = 2;
  int64_t accumulate_steps = 1;
  int64_t max_steps = 0;  // > 0: the run ends after this many steps
  OptimizerOptions optimizer;
  LrSchedule schedule;
  bool ema = false;
  EmaOptions ema_options;
  int64_t eval_every = 0;          // steps; 0: after every epoch
  std::string best_metric = "AP";  // a key of the COCO stats
  int64_t checkpoint_every = 0;    // steps; 0: after every epoch
  int64_t keep_checkpoints = 2;
  bool augment = true;        // false: resize to the model's min/max size only
  DetrAugmentOptions augment_options;
  uint64_t seed = 42;
  int64_t workers = 2;
  int64_t prefetch = 4;
  int64_t eval_batch_size = 1;
  int64_t log_every = 1;  // step events every N steps

  nlohmann::json ToJson() const;
  // Throws std::invalid_argument naming the bad key.
  static TrainConfig FromJson(const nlohmann::json& j);
  void Validate() const;
};

// Per-invocation settings (not part of the run).
struct RunOptions {
  int threads = 0;               // intra-op threads; 0: all cores
  // > 1: a step's accumulated batches run this many at once, each on its own
  // model replica with threads / parallel_batches intra-op threads
  // (replica_pool.h); at most the run's accumulate_steps. The step computes
  // the same mean gradient either way (each batch draws its denoising noise
  // from a seed of its own), so it may change between invocations.
  int parallel_batches = 1;
  int64_t stop_after_steps = 0;  // > 0: checkpoint and return kStopped after this many steps
  ProgressReporter::Mode progress_mode = ProgressReporter::Mode::kAuto;
  const std::atomic<bool>* stop_requested = nullptr;  // e.g. set by SIGTERM
};

enum class RunResult { kDone = 0, kFailed = 1, kStopped = 3 };

// Starts a new run in `run_dir` (which must not exist or be empty). The
// datasets are checked first; on any problem nothing is written and the error
// (CocoDatasetError listing every problem) is thrown.
RunResult StartTraining(const TrainConfig& config, const std::string& run_dir,
                        const RunOptions& options);

// Continues the run in `run_dir` from its latest checkpoint. `max_steps` > 0
// replaces the run's step limit (e.g. to train longer).
RunResult ResumeTraining(const std::string& run_dir, const RunOptions& options,
                         int64_t max_steps = 0);

}  // namespace lpdetr::train

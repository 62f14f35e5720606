// Runs the batches of one optimizer step on several copies of a model at
// once, one thread each: data parallelism inside one process, for small
// models whose operators are too small to keep every core busy on one
// thread pool (the default model trains about 1.3x faster with two replicas
// of one thread each than on one model with two threads, AMD EPYC 2 cores).
//
// Replica 0 is the master model (the one the optimizer updates); the others
// are private copies. Run(n, fn):
//   1. the copies take the master's parameters and buffers;
//   2. the n batches are split into contiguous chunks, one per replica
//      (replica r gets batches [r*n/R, (r+1)*n/R)); each replica runs
//      fn(model, k) for its batches in order, on its own thread (replica 0
//      on the calling thread) with `threads_per_replica` intra-op threads and
//      single-threaded BLAS;
//   3. the copies' gradients are added to the master's in chunk order and
//      cleared;
//   4. the batch-norm running statistics (FrozenBatchNorm2d with batch
//      statistics) become what running the n batches one after another on
//      the master gives (up to float rounding): in training mode a batch norm
//      reads its batch's statistics and only writes the running ones, so the
//      chunks are independent and their updates compose exactly.
// With two batches the gradients are bit-identical to accumulating them on
// one model with the same per-batch numerics (one thread); with more the
// summation order differs.
//
// fn must touch only the model it is given and its own per-batch slots; it
// should draw random numbers from a generator of its own (e.g. the model's
// DenoisingGenerator::set_generator), never from LibTorch's default one. An
// exception thrown by fn is rethrown by Run (the first by chunk order) after
// every thread has finished; the copies' gradients are then dropped and the
// master's are left as they are.
//
// Threading: Run is called from one thread at a time (the training thread).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "model/config.h"
#include "model/detector.h"
#include "train/train_setup.h"

namespace lpdetr::train {

class ReplicaPool {
 public:
  struct Options {
    int replicas = 2;             // model copies, the master included (>= 1)
    int threads_per_replica = 1;  // intra-op threads of each replica (>= 1)
    // Applied to every copy (PrepareForTraining), as it was to the master.
    BackboneTraining backbone_training = BackboneTraining::kFull;
  };

  // `master` must be set up for training already (PrepareForTraining with
  // options.backbone_training). Throws std::invalid_argument on bad options.
  ReplicaPool(LpDetr master, const ModelConfig& config, Options options);

  int replicas() const { return options_.replicas; }

  // Runs fn(model, k) for every k in [0, n) as described above.
  void Run(int64_t n, const std::function<void(LpDetr& model, int64_t k)>& fn);

 private:
  void SyncFromMaster();
  void AddGradientsToMaster();
  void MergeRunningStatistics(const std::vector<int64_t>& chunk_sizes);

  Options options_;
  LpDetr master_;
  std::vector<LpDetr> copies_;  // replicas 1..R-1
  // The master's running statistics when the step started, per batch norm
  // with batch statistics (mean, var).
  std::vector<std::pair<at::Tensor, at::Tensor>> start_statistics_;
};

}  // namespace lpdetr::train

// The training data loader: a deterministic epoch order, samples built on
// loader threads with a bounded prefetch, batches handed to the training
// thread in order.
//
// Order and randomness depend only on (seed, epoch, position), never on
// thread timing: epoch e visits the dataset in EpochOrder(size, seed, e), and
// the sample at position p of that order gets its own random generator seeded
// with SampleSeed(seed, e, p). A run resumed at batch b of epoch e therefore
// sees exactly the batches (and augmentations) the uninterrupted run would
// have seen; the loader's whole state is (epoch, next batch).
//
// Batches are the consecutive chunks of the order, `batch_size` samples each
// (the last one smaller when the size does not divide). Images are padded into
// one tensor with the official training semantics (ImageBatch::extents empty:
// every image spans the padded batch, its targets normalised by its own size).
//
// Threading: `num_workers` threads build whole batches (decode, augment,
// normalise, collate), each single-threaded inside (intra-op parallelism is
// left to the training thread); at most `prefetch_batches` batches are built or waiting
// ahead of the consumer. Next() is called from one thread (the training
// thread) and only waits. A sample function that throws makes Next() rethrow
// that exception when the consumer reaches its batch. Stop() (also run by the
// destructor) wakes and joins the workers.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/detector.h"

namespace lpdetr::train {

// One training sample: a normalised [3,h,w] float image and its target
// (boxes normalised by h, w).
struct TrainSample {
  at::Tensor image;
  TrainTarget target;
};

struct TrainBatch {
  ImageBatch batch;                  // padded images, official semantics
  at::Tensor image_sizes;            // [B,2] int64 (h, w) of each image
  std::vector<TrainTarget> targets;  // per image
  std::vector<int64_t> indices;      // dataset index of each image
  int64_t epoch = 0;
  int64_t batch_in_epoch = 0;
};

// Builds the sample of dataset item `index`; every random draw must come from
// `rng`. Called concurrently from the loader threads.
using SampleFn = std::function<TrainSample(int64_t index, std::mt19937_64& rng)>;

struct DataLoaderOptions {
  int64_t batch_size = 2;        // images per batch, >= 1
  int num_workers = 2;           // loader threads, >= 1
  int64_t prefetch_batches = 4;  // batches built ahead of the consumer, >= 1
  uint64_t seed = 0;             // order and augmentation seed
  bool shuffle = true;           // false: dataset order every epoch
};

// The dataset indices in the order epoch `epoch` visits them.
std::vector<int64_t> EpochOrder(int64_t size, uint64_t seed, int64_t epoch, bool shuffle);

// The seed of the random generator of the sample at `position` of epoch `epoch`.
uint64_t SampleSeed(uint64_t seed, int64_t epoch, int64_t position);

// ceil(size / batch_size).
int64_t BatchesPerEpoch(int64_t size, int64_t batch_size);

// Pads the samples into one batch (official training semantics).
TrainBatch CollateSamples(std::vector<TrainSample> samples);

class TrainDataLoader {
 public:
  // Throws std::invalid_argument on bad options or an empty dataset.
  TrainDataLoader(int64_t dataset_size, SampleFn sample_fn, DataLoaderOptions options);
  ~TrainDataLoader();
  TrainDataLoader(const TrainDataLoader&) = delete;
  TrainDataLoader& operator=(const TrainDataLoader&) = delete;

  // Discards anything prefetched and starts producing epoch `epoch` from
  // batch `first_batch` (0 <= first_batch <= batches_per_epoch()).
  void StartEpoch(int64_t epoch, int64_t first_batch = 0);

  // The next batch of the current epoch, std::nullopt after its last one (or
  // when stopped). Rethrows the exception of a sample that failed.
  std::optional<TrainBatch> Next();

  void Stop();

  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  const DataLoaderOptions& options() const { return options_; }

 private:
  struct Ready {
    std::optional<TrainBatch> batch;
    std::exception_ptr error;
  };

  void WorkerLoop();
  TrainBatch BuildBatch(int64_t epoch, const std::vector<int64_t>& order, int64_t batch) const;

  const int64_t dataset_size_;
  const SampleFn sample_fn_;
  const DataLoaderOptions options_;
  const int64_t batches_per_epoch_;

  std::mutex mu_;
  std::condition_variable work_cv_;   // workers: a batch may be built, or stop
  std::condition_variable ready_cv_;  // consumer: a batch is ready
  bool stopping_ = false;             // guarded by mu_
  int64_t generation_ = 0;            // guarded by mu_; bumped by StartEpoch
  int64_t epoch_ = -1;                // guarded by mu_; -1: not started
  std::shared_ptr<const std::vector<int64_t>> order_;  // guarded by mu_
  int64_t next_to_build_ = 0;         // guarded by mu_
  int64_t next_to_consume_ = 0;       // guarded by mu_
  std::map<int64_t, Ready> ready_;    // guarded by mu_; by batch index
  std::vector<std::thread> workers_;
};

}  // namespace lpdetr::train

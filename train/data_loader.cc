#include "train/data_loader.h"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "model/preprocess.h"

namespace lpdetr::train {
namespace {

// SplitMix64 finaliser: a well-mixed 64-bit function of its input.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

std::vector<int64_t> EpochOrder(int64_t size, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<int64_t> order(static_cast<size_t>(std::max<int64_t>(size, 0)));
  std::iota(order.begin(), order.end(), 0);
  if (!shuffle) return order;
  std::mt19937_64 rng(Mix(Mix(seed) ^ static_cast<uint64_t>(epoch)));
  // Fisher-Yates with our own index draws: std::shuffle's use of the
  // generator is implementation-defined, this order is not.
  for (size_t i = order.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(rng() % i);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

uint64_t SampleSeed(uint64_t seed, int64_t epoch, int64_t position) {
  return Mix(Mix(Mix(seed) ^ static_cast<uint64_t>(epoch)) ^ static_cast<uint64_t>(position));
}

int64_t BatchesPerEpoch(int64_t size, int64_t batch_size) {
  if (size <= 0 || batch_size <= 0) return 0;
  return (size + batch_size - 1) / batch_size;
}

TrainBatch CollateSamples(std::vector<TrainSample> samples) {
  TORCH_CHECK(!samples.empty(), "CollateSamples needs at least one sample");
  std::vector<at::Tensor> images;
  images.reserve(samples.size());
  TrainBatch out;
  out.image_sizes = at::empty({static_cast<int64_t>(samples.size()), 2}, at::kLong);
  auto sizes = out.image_sizes.accessor<int64_t, 2>();
  for (size_t i = 0; i < samples.size(); ++i) {
    TORCH_CHECK(samples[i].image.dim() == 3 && samples[i].image.size(0) == 3,
                "sample ", i, ": expected a [3,h,w] image, got ", samples[i].image.sizes());
    sizes[static_cast<int64_t>(i)][0] = samples[i].image.size(1);
    sizes[static_cast<int64_t>(i)][1] = samples[i].image.size(2);
    images.push_back(std::move(samples[i].image));
    out.targets.push_back(std::move(samples[i].target));
  }
  out.batch = BatchImages(images);
  out.batch.extents.clear();  // official training semantics
  return out;
}

TrainDataLoader::TrainDataLoader(int64_t dataset_size, SampleFn sample_fn,
                                 DataLoaderOptions options)
    : dataset_size_(dataset_size),
      sample_fn_(std::move(sample_fn)),
      options_(options),
      batches_per_epoch_(BatchesPerEpoch(dataset_size, options.batch_size)) {
  if (dataset_size_ <= 0) throw std::invalid_argument("data loader: the dataset is empty");
  if (options_.batch_size < 1) {
    throw std::invalid_argument("data loader: batch_size must be >= 1, got " +
                                std::to_string(options_.batch_size));
  }
  if (options_.num_workers < 1) {
    throw std::invalid_argument("data loader: num_workers must be >= 1, got " +
                                std::to_string(options_.num_workers));
  }
  if (options_.prefetch_batches < 1) {
    throw std::invalid_argument("data loader: prefetch_batches must be >= 1, got " +
                                std::to_string(options_.prefetch_batches));
  }
  if (!sample_fn_) throw std::invalid_argument("data loader: no sample function");
  for (int i = 0; i < options_.num_workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

TrainDataLoader::~TrainDataLoader() { Stop(); }

void TrainDataLoader::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  ready_cv_.notify_all();
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
}

void TrainDataLoader::StartEpoch(int64_t epoch, int64_t first_batch) {
  if (epoch < 0) throw std::invalid_argument("data loader: epoch must be >= 0");
  if (first_batch < 0 || first_batch > batches_per_epoch_) {
    throw std::invalid_argument("data loader: first batch " + std::to_string(first_batch) +
                                " is outside the epoch's " +
                                std::to_string(batches_per_epoch_) + " batches");
  }
  auto order = std::make_shared<const std::vector<int64_t>>(
      EpochOrder(dataset_size_, options_.seed, epoch, options_.shuffle));
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++generation_;
    epoch_ = epoch;
    order_ = std::move(order);
    next_to_build_ = first_batch;
    next_to_consume_ = first_batch;
    ready_.clear();
  }
  work_cv_.notify_all();
}

std::optional<TrainBatch> TrainDataLoader::Next() {
  std::unique_lock<std::mutex> lock(mu_);
  if (epoch_ < 0) throw std::logic_error("data loader: Next() before StartEpoch()");
  if (next_to_consume_ >= batches_per_epoch_) return std::nullopt;
  const int64_t wanted = next_to_consume_;
  ready_cv_.wait(lock, [&] { return stopping_ || ready_.count(wanted) > 0; });
  if (stopping_) return std::nullopt;
  Ready ready = std::move(ready_.at(wanted));
  ready_.erase(wanted);
  ++next_to_consume_;
  lock.unlock();
  work_cv_.notify_one();  // room for one more batch ahead
  if (ready.error) std::rethrow_exception(ready.error);
  return std::move(ready.batch);
}

TrainBatch TrainDataLoader::BuildBatch(int64_t epoch, const std::vector<int64_t>& order,
                                       int64_t batch) const {
  const int64_t begin = batch * options_.batch_size;
  const int64_t end = std::min<int64_t>(begin + options_.batch_size, dataset_size_);
  std::vector<TrainSample> samples;
  std::vector<int64_t> indices;
  for (int64_t p = begin; p < end; ++p) {
    std::mt19937_64 rng(SampleSeed(options_.seed, epoch, p));
    const int64_t index = order[static_cast<size_t>(p)];
    samples.push_back(sample_fn_(index, rng));
    indices.push_back(index);
  }
  TrainBatch out = CollateSamples(std::move(samples));
  out.indices = std::move(indices);
  out.epoch = epoch;
  out.batch_in_epoch = batch;
  return out;
}

void TrainDataLoader::WorkerLoop() {
  // Loader threads run their tensor work (resize, normalise, collate) on one
  // core each: the intra-op pool belongs to the training thread.
  at::internal::lazy_init_num_threads();
#ifdef _OPENMP
  omp_set_num_threads(1);
#endif
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    work_cv_.wait(lock, [&] {
      return stopping_ || (epoch_ >= 0 && next_to_build_ < batches_per_epoch_ &&
                           next_to_build_ < next_to_consume_ + options_.prefetch_batches);
    });
    if (stopping_) return;
    const int64_t generation = generation_, epoch = epoch_, batch = next_to_build_++;
    const std::shared_ptr<const std::vector<int64_t>> order = order_;
    lock.unlock();
    Ready ready;
    try {
      ready.batch = BuildBatch(epoch, *order, batch);
    } catch (...) {
      ready.error = std::current_exception();
    }
    lock.lock();
    if (generation == generation_) {
      ready_[batch] = std::move(ready);
      ready_cv_.notify_all();
    }
  }
}

}  // namespace lpdetr::train

#include "train/replica_pool.h"

#include <cmath>
#include <exception>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include <ATen/Parallel.h>
#include <torch/torch.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "model/layers.h"
#include "model/runtime.h"

namespace lpdetr::train {
namespace {

// The calling thread's intra-op thread count (OpenMP's is per thread), set
// for a scope and restored after it.
class ScopedIntraOpThreads {
 public:
  explicit ScopedIntraOpThreads(int threads) {
    at::internal::lazy_init_num_threads();
#ifdef _OPENMP
    saved_ = omp_get_max_threads();
    omp_set_num_threads(threads);
#endif
  }
  ~ScopedIntraOpThreads() {
#ifdef _OPENMP
    omp_set_num_threads(saved_);
#endif
  }
  ScopedIntraOpThreads(const ScopedIntraOpThreads&) = delete;
  ScopedIntraOpThreads& operator=(const ScopedIntraOpThreads&) = delete;

 private:
  int saved_ = 1;
};

std::vector<FrozenBatchNorm2dImpl*> BatchStatisticNorms(const torch::nn::Module& model) {
  std::vector<FrozenBatchNorm2dImpl*> norms;
  for (const auto& m : model.modules(/*include_self=*/false)) {
    if (auto* bn = m->as<FrozenBatchNorm2dImpl>(); bn != nullptr && bn->batch_statistics) {
      norms.push_back(bn);
    }
  }
  return norms;
}

}  // namespace

ReplicaPool::ReplicaPool(LpDetr master, const ModelConfig& config, Options options)
    : options_(options), master_(std::move(master)) {
  if (options_.replicas < 1) {
    throw std::invalid_argument("replicas must be >= 1, got " + std::to_string(options_.replicas));
  }
  if (options_.threads_per_replica < 1) {
    throw std::invalid_argument("threads per replica must be >= 1, got " +
                                std::to_string(options_.threads_per_replica));
  }
  if (!master_) throw std::invalid_argument("the replica pool needs a model");
  for (int r = 1; r < options_.replicas; ++r) {
    LpDetr copy(config);
    copy->to(at::kFloat);
    PrepareForTraining(*copy, options_.backbone_training);
    copies_.push_back(std::move(copy));
  }
  SyncFromMaster();  // also checks that the copies have the master's tensors
}

void ReplicaPool::SyncFromMaster() {
  torch::NoGradGuard no_grad;
  const auto params = master_->named_parameters(/*recurse=*/true);
  const auto buffers = master_->named_buffers(/*recurse=*/true);
  for (LpDetr& copy : copies_) {
    auto copy_params = copy->named_parameters(/*recurse=*/true);
    auto copy_buffers = copy->named_buffers(/*recurse=*/true);
    if (copy_params.size() != params.size() || copy_buffers.size() != buffers.size()) {
      throw std::logic_error("a model replica's tensors differ from the master's");
    }
    for (size_t i = 0; i < params.size(); ++i) copy_params[i].value().copy_(params[i].value());
    for (size_t i = 0; i < buffers.size(); ++i) copy_buffers[i].value().copy_(buffers[i].value());
    copy->train(master_->is_training());
  }
  start_statistics_.clear();
  for (FrozenBatchNorm2dImpl* bn : BatchStatisticNorms(*master_)) {
    start_statistics_.emplace_back(bn->running_mean.clone(), bn->running_var.clone());
  }
}

void ReplicaPool::AddGradientsToMaster() {
  torch::NoGradGuard no_grad;
  const std::vector<NamedParameter> master = TrainableParameters(*master_);
  for (LpDetr& copy : copies_) {
    const std::vector<NamedParameter> theirs = TrainableParameters(*copy);
    for (size_t i = 0; i < master.size() && i < theirs.size(); ++i) {
      at::Tensor& grad = theirs[i].tensor.mutable_grad();
      if (!grad.defined()) continue;
      at::Tensor& target = master[i].tensor.mutable_grad();
      if (target.defined()) {
        target.add_(grad);
      } else {
        target = grad;
      }
      grad = at::Tensor();
    }
  }
}

// Sequentially, n batches with momentum m turn the running statistic r0 into
//   (1-m)^n r0 + sum_k (1-m)^(n-1-k) m s_k.
// The replica of a chunk ending at batch e (exclusive) with c batches holds
//   R = (1-m)^c r0 + sum_{k in chunk} (1-m)^(e-1-k) m s_k,
// so the chunk's share of the sum is (1-m)^(n-e) (R - (1-m)^c r0).
void ReplicaPool::MergeRunningStatistics(const std::vector<int64_t>& chunk_sizes) {
  torch::NoGradGuard no_grad;
  const std::vector<FrozenBatchNorm2dImpl*> master = BatchStatisticNorms(*master_);
  if (master.empty()) return;
  std::vector<std::vector<FrozenBatchNorm2dImpl*>> replicas = {master};
  for (LpDetr& copy : copies_) replicas.push_back(BatchStatisticNorms(*copy));
  int64_t n = 0;
  for (int64_t c : chunk_sizes) n += c;
  for (size_t i = 0; i < master.size(); ++i) {
    const double keep = 1.0 - master[i]->momentum;
    const auto& [mean0, var0] = start_statistics_[i];
    at::Tensor mean = mean0 * std::pow(keep, static_cast<double>(n));
    at::Tensor var = var0 * std::pow(keep, static_cast<double>(n));
    int64_t end = 0;
    for (size_t r = 0; r < replicas.size(); ++r) {
      const int64_t c = chunk_sizes[r];
      end += c;
      if (c == 0) continue;
      const double later = std::pow(keep, static_cast<double>(n - end));
      const double own = std::pow(keep, static_cast<double>(c));
      mean += (replicas[r][i]->running_mean - mean0 * own) * later;
      var += (replicas[r][i]->running_var - var0 * own) * later;
    }
    master[i]->running_mean.copy_(mean);
    master[i]->running_var.copy_(var);
  }
}

void ReplicaPool::Run(int64_t n, const std::function<void(LpDetr& model, int64_t k)>& fn) {
  if (n <= 0) return;
  SyncFromMaster();
  const int64_t replicas = options_.replicas;
  std::vector<int64_t> begin(replicas + 1);
  for (int64_t r = 0; r <= replicas; ++r) begin[r] = r * n / replicas;
  std::vector<int64_t> chunk_sizes(replicas);
  for (int64_t r = 0; r < replicas; ++r) chunk_sizes[r] = begin[r + 1] - begin[r];

  std::vector<std::exception_ptr> errors(replicas);
  auto run_chunk = [&](int64_t r) {
    try {
      ScopedIntraOpThreads threads(options_.threads_per_replica);
      LpDetr& model = r == 0 ? master_ : copies_[r - 1];
      for (int64_t k = begin[r]; k < begin[r + 1]; ++k) fn(model, k);
    } catch (...) {
      errors[r] = std::current_exception();
    }
  };
  {
    ScopedBlasThreads blas(1);
    std::vector<std::thread> threads;
    for (int64_t r = 1; r < replicas; ++r) {
      if (chunk_sizes[r] > 0) threads.emplace_back(run_chunk, r);
    }
    run_chunk(0);
    for (std::thread& t : threads) t.join();
  }
  for (const std::exception_ptr& e : errors) {
    if (!e) continue;
    for (LpDetr& copy : copies_) {
      for (const NamedParameter& p : TrainableParameters(*copy)) p.tensor.mutable_grad() = at::Tensor();
    }
    std::rethrow_exception(e);
  }
  AddGradientsToMaster();
  MergeRunningStatistics(chunk_sizes);
}

}  // namespace lpdetr::train

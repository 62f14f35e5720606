#include "server/batcher.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace lpdetr::server {

absl::StatusOr<std::unique_ptr<Batcher>> Batcher::Create(const Options& options, BatchFn fn) {
  if (options.max_batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_size must be >= 1, got ", options.max_batch_size));
  }
  if (options.max_queue_delay_us < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_delay_us must be >= 0, got ", options.max_queue_delay_us));
  }
  if (options.max_queue_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_queue_size must be >= 1, got ", options.max_queue_size));
  }
  if (options.num_workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_workers must be >= 1, got ", options.num_workers));
  }
  if (!fn) return absl::InvalidArgumentError("batch callback is empty");
  return std::unique_ptr<Batcher>(new Batcher(options, std::move(fn)));
}

Batcher::Batcher(const Options& options, BatchFn fn)
    : options_(options), fn_(std::move(fn)), paused_(options.start_paused) {
  for (int i = 0; i < options_.num_workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

Batcher::~Batcher() { Stop(); }

absl::Status Batcher::Submit(TaskPtr task) {
  const Clock::time_point now = Clock::now();
  if (task->deadline <= now) {
    return absl::DeadlineExceededError("deadline passed before the request was queued");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("server is shutting down");
    if (static_cast<int>(queue_.size()) >= options_.max_queue_size) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "batching queue is full (", options_.max_queue_size, " requests); retry later"));
    }
    task->enqueued = now;
    queue_.push_back(std::move(task));
  }
  cv_.notify_all();
  return absl::OkStatus();
}

void Batcher::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
}

void Batcher::Pause() {
  std::lock_guard<std::mutex> lock(mu_);
  paused_ = true;
}

void Batcher::Resume() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    paused_ = false;
  }
  cv_.notify_all();
}

void Batcher::Step(int batches) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    steps_ += batches;
  }
  cv_.notify_all();
}

int Batcher::QueueDepth() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(queue_.size());
}

void Batcher::PurgeLocked(Clock::time_point now,
                          std::vector<std::pair<TaskPtr, absl::Status>>* dropped) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    if ((*it)->deadline <= now) {
      dropped->emplace_back(std::move(*it),
                            absl::DeadlineExceededError("deadline passed while queued"));
      it = queue_.erase(it);
    } else if ((*it)->cancelled()) {
      dropped->emplace_back(std::move(*it), absl::CancelledError("request cancelled"));
      it = queue_.erase(it);
    } else {
      ++it;
    }
  }
}

int Batcher::FillableLocked() const {
  if (queue_.empty()) return 0;
  const int64_t key = queue_.front()->bucket();
  int images = 0;
  for (const TaskPtr& t : queue_) {
    if (options_.bucket_by_size && t->bucket() != key) continue;
    images += t->size();
    if (images >= options_.max_batch_size) break;
  }
  return images;
}

std::vector<Batcher::TaskPtr> Batcher::TakeBatchLocked() {
  std::vector<TaskPtr> batch;
  const int64_t key = queue_.front()->bucket();
  int images = 0;
  for (auto it = queue_.begin(); it != queue_.end();) {
    const int n = (*it)->size();
    const bool same = !options_.bucket_by_size || (*it)->bucket() == key;
    if (same && (batch.empty() || images + n <= options_.max_batch_size)) {
      images += n;
      batch.push_back(std::move(*it));
      it = queue_.erase(it);
      if (images >= options_.max_batch_size) break;
    } else {
      ++it;
    }
  }
  return batch;
}

void Batcher::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    // Wait for work that may be batched now.
    cv_.wait(lock, [&] { return stopping_ || (!queue_.empty() && (!paused_ || steps_ > 0)); });
    if (queue_.empty()) {
      if (stopping_) return;
      continue;
    }
    // Wait (bounded by the oldest request's delay) for the batch to fill.
    if (!stopping_ && !paused_ && options_.max_queue_delay_us > 0) {
      const Clock::time_point until =
          queue_.front()->enqueued + std::chrono::microseconds(options_.max_queue_delay_us);
      cv_.wait_until(lock, until, [&] {
        return stopping_ || paused_ || queue_.empty() ||
               FillableLocked() >= options_.max_batch_size;
      });
      if (paused_ && steps_ == 0) continue;
    }
    std::vector<std::pair<TaskPtr, absl::Status>> dropped;
    PurgeLocked(Clock::now(), &dropped);
    std::vector<TaskPtr> batch;
    if (!queue_.empty()) {
      batch = TakeBatchLocked();
      if (paused_ && steps_ > 0 && !stopping_) --steps_;
    }
    const bool more = !queue_.empty();
    lock.unlock();
    if (more) cv_.notify_one();  // another worker may start the next batch
    for (auto& [task, status] : dropped) task->Drop(status);
    dropped.clear();
    if (!batch.empty()) fn_(batch);
    batch.clear();
    lock.lock();
  }
}

}  // namespace lpdetr::server

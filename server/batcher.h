// A dynamic batcher in the manner of NVIDIA Triton's: requests (each one or
// more images) wait in one bounded FIFO queue; inference workers take the
// oldest request and as many following requests as fit in max_batch_size
// images, waiting at most max_queue_delay_us (counted from the oldest
// request's arrival) for the batch to fill up.
//
// Guarantees:
//   - Submit never blocks: a full queue is RESOURCE_EXHAUSTED at once, a
//     stopped batcher UNAVAILABLE, a request whose deadline already passed
//     DEADLINE_EXCEEDED.
//   - A request whose deadline passes while it is queued is never run
//     (Task::Drop(DEADLINE_EXCEEDED)); a cancelled one is dropped
//     (Task::Drop(CANCELLED)). Both are checked when batches are formed.
//   - Requests are never split; a single request larger than max_batch_size
//     forms a batch of its own.
//   - max_queue_delay_us = 0 does not mean batch size 1: whatever is already
//     queued is batched.
//   - Stop() refuses new work, runs everything already accepted (without
//     waiting for the delay) and joins the workers.
//
// One mutex, held only to move requests in and out of the queue; the batch
// callback runs without it. Test hook: with start_paused no batch is formed
// until Resume(), or one batch per Step(), so tests decide exactly what is
// queued when a batch forms.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lpdetr::server {

class Batcher {
 public:
  using Clock = std::chrono::steady_clock;

  struct Options {
    // Most images in one batch (>= 1).
    int max_batch_size = 8;
    // How long a batch waits for more requests after its oldest request
    // arrived, in microseconds (>= 0; 0 = batch what is queued, don't wait).
    int64_t max_queue_delay_us = 2000;
    // Most requests waiting in the queue (>= 1); more -> RESOURCE_EXHAUSTED.
    int max_queue_size = 64;
    // Inference worker threads (>= 1), each running one batch at a time.
    int num_workers = 1;
    // Only requests with the same Task::bucket are batched together (e.g. the
    // padded input size, to limit padding). Off: any requests mix.
    bool bucket_by_size = false;
    // Test hook: form no batch until Resume() / Step().
    bool start_paused = false;
  };

  // One queued request. The batcher calls exactly one of: the batch callback
  // (with this task in the batch) or Drop(status).
  class Task {
   public:
    virtual ~Task() = default;
    // Images this request contributes to a batch (>= 1).
    virtual int size() const { return 1; }
    // Batching key when bucket_by_size is on.
    virtual int64_t bucket() const { return 0; }
    // Polled when batches form; true -> dropped with CANCELLED.
    virtual bool cancelled() const { return false; }
    // Called (without the batcher's lock) when the task will never run.
    virtual void Drop(const absl::Status& status) = 0;

    Clock::time_point deadline = Clock::time_point::max();
    Clock::time_point enqueued;  // set by Submit
  };

  using TaskPtr = std::shared_ptr<Task>;
  // Runs one batch (on a worker thread) and completes its tasks.
  using BatchFn = std::function<void(std::vector<TaskPtr>& batch)>;

  static absl::StatusOr<std::unique_ptr<Batcher>> Create(const Options& options, BatchFn fn);
  ~Batcher();  // Stop()

  absl::Status Submit(TaskPtr task);

  // Refuses new tasks, runs every accepted one, joins the workers. Idempotent.
  void Stop();

  // Test hook (see start_paused).
  void Pause();
  void Resume();
  void Step(int batches = 1);

  int QueueDepth() const;
  const Options& options() const { return options_; }

 private:
  Batcher(const Options& options, BatchFn fn);
  void WorkerLoop();
  // With mu_ held: removes expired / cancelled tasks into `dropped`.
  void PurgeLocked(Clock::time_point now,
                   std::vector<std::pair<TaskPtr, absl::Status>>* dropped);
  // With mu_ held: takes the next batch from the queue.
  std::vector<TaskPtr> TakeBatchLocked();
  // With mu_ held: the images of the batch the queue front could form now.
  int FillableLocked() const;

  const Options options_;
  const BatchFn fn_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<TaskPtr> queue_;
  bool stopping_ = false;
  bool paused_ = false;
  int steps_ = 0;
  std::vector<std::thread> workers_;
};

}  // namespace lpdetr::server

// Dynamic batcher: batch formation is driven through the test hook
// (start_paused + Resume / Step), so results never depend on timing luck.
#include "server/batcher.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace lpdetr::server {
namespace {

using namespace std::chrono_literals;

struct Recorder;

class TestTask : public Batcher::Task {
 public:
  TestTask(Recorder* r, int id, int size = 1, int64_t bucket = 0)
      : recorder_(r), id_(id), size_(size), bucket_(bucket) {}
  int size() const override { return size_; }
  int64_t bucket() const override { return bucket_; }
  bool cancelled() const override { return cancel; }
  void Drop(const absl::Status& status) override;
  int id() const { return id_; }
  std::atomic<bool> cancel{false};

 private:
  Recorder* recorder_;
  int id_, size_;
  int64_t bucket_;
};

// Records batches (ids in order) and dropped tasks; waits for completions.
struct Recorder {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::vector<int>> batches;
  std::vector<std::pair<int, absl::StatusCode>> dropped;
  int finished = 0;

  Batcher::BatchFn Fn() {
    return [this](std::vector<Batcher::TaskPtr>& batch) {
      std::vector<int> ids;
      for (auto& t : batch) ids.push_back(static_cast<TestTask&>(*t).id());
      std::lock_guard<std::mutex> lock(mu);
      batches.push_back(ids);
      finished += static_cast<int>(ids.size());
      cv.notify_all();
    };
  }
  void OnDrop(int id, absl::StatusCode code) {
    std::lock_guard<std::mutex> lock(mu);
    dropped.emplace_back(id, code);
    ++finished;
    cv.notify_all();
  }
  // Waits (bounded, as a failure guard only) until n tasks finished.
  bool WaitFinished(int n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, 20s, [&] { return finished >= n; });
  }
  bool WaitBatches(size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, 20s, [&] { return batches.size() >= n; });
  }
  std::vector<int> BatchSizes() {
    std::lock_guard<std::mutex> lock(mu);
    std::vector<int> sizes;
    for (auto& b : batches) sizes.push_back(static_cast<int>(b.size()));
    return sizes;
  }
};

void TestTask::Drop(const absl::Status& status) { recorder_->OnDrop(id_, status.code()); }

Batcher::Options Paused(int max_batch, int64_t delay_us = 0) {
  Batcher::Options o;
  o.max_batch_size = max_batch;
  o.max_queue_delay_us = delay_us;
  o.max_queue_size = 100;
  o.num_workers = 1;
  o.start_paused = true;
  return o;
}

std::unique_ptr<Batcher> Make(const Batcher::Options& o, Recorder& r) {
  auto b = Batcher::Create(o, r.Fn());
  EXPECT_TRUE(b.ok()) << b.status();
  return std::move(*b);
}

TEST(BatcherTest, BatchesUpToMaxBatchSizeInOrder) {
  Recorder r;
  auto b = Make(Paused(4), r);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, i)).ok());
  EXPECT_EQ(b->QueueDepth(), 10);
  b->Resume();
  ASSERT_TRUE(r.WaitFinished(10));
  EXPECT_EQ(r.BatchSizes(), (std::vector<int>{4, 4, 2}));
  std::vector<int> all;
  for (auto& batch : r.batches) all.insert(all.end(), batch.begin(), batch.end());
  EXPECT_EQ(all, (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

TEST(BatcherTest, ZeroDelayStillBatchesWhatIsQueued) {
  Recorder r;
  auto b = Make(Paused(8, /*delay_us=*/0), r);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, i)).ok());
  b->Resume();
  ASSERT_TRUE(r.WaitFinished(3));
  EXPECT_EQ(r.BatchSizes(), (std::vector<int>{3}));
}

TEST(BatcherTest, FullBatchDoesNotWaitForTheDelay) {
  Recorder r;
  Batcher::Options o = Paused(4, /*delay_us=*/60'000'000);  // one minute
  o.start_paused = false;
  auto b = Make(o, r);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, i)).ok());
  ASSERT_TRUE(r.WaitFinished(4));  // would take a minute if the delay applied
  EXPECT_EQ(r.BatchSizes(), (std::vector<int>{4}));
}

TEST(BatcherTest, RequestsAreNotSplitAndOversizedRunAlone) {
  Recorder r;
  auto b = Make(Paused(4), r);
  ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, 0, 3)).ok());
  ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, 1, 6)).ok());
  ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, 2, 1)).ok());
  b->Resume();
  ASSERT_TRUE(r.WaitFinished(3));
  ASSERT_EQ(r.batches.size(), 2u);
  EXPECT_EQ(r.batches[0], (std::vector<int>{0, 2}));  // 3 + 1 images; 6 does not fit
  EXPECT_EQ(r.batches[1], (std::vector<int>{1}));     // 6 > max: a batch of its own
}

TEST(BatcherTest, FullQueueIsResourceExhaustedAtOnce) {
  Recorder r;
  Batcher::Options o = Paused(8);
  o.max_queue_size = 3;
  auto b = Make(o, r);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, i)).ok());
  absl::Status s = b->Submit(std::make_shared<TestTask>(&r, 3));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("queue is full"), std::string::npos) << s;
  b->Resume();
  ASSERT_TRUE(r.WaitFinished(3));
  EXPECT_EQ(r.BatchSizes(), (std::vector<int>{3}));
}

TEST(BatcherTest, ExpiredDeadlinesNeverRun) {
  Recorder r;
  auto b = Make(Paused(8), r);
  auto past = std::make_shared<TestTask>(&r, 0);
  past->deadline = Batcher::Clock::now() - 1ms;
  EXPECT_EQ(b->Submit(past).code(), absl::StatusCode::kDeadlineExceeded);

  auto expiring = std::make_shared<TestTask>(&r, 1);
  expiring->deadline = Batcher::Clock::now() + 30ms;
  ASSERT_TRUE(b->Submit(expiring).ok());
  ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, 2)).ok());
  while (Batcher::Clock::now() <= expiring->deadline) std::this_thread::sleep_for(5ms);
  b->Resume();
  ASSERT_TRUE(r.WaitFinished(2));
  ASSERT_EQ(r.batches.size(), 1u);
  EXPECT_EQ(r.batches[0], (std::vector<int>{2}));
  ASSERT_EQ(r.dropped.size(), 1u);
  EXPECT_EQ(r.dropped[0], std::make_pair(1, absl::StatusCode::kDeadlineExceeded));
}

TEST(BatcherTest, CancelledRequestsAreDropped) {
  Recorder r;
  auto b = Make(Paused(8), r);
  std::vector<std::shared_ptr<TestTask>> tasks;
  for (int i = 0; i < 3; ++i) {
    tasks.push_back(std::make_shared<TestTask>(&r, i));
    ASSERT_TRUE(b->Submit(tasks.back()).ok());
  }
  tasks[1]->cancel = true;
  b->Resume();
  ASSERT_TRUE(r.WaitFinished(3));
  EXPECT_EQ(r.batches, (std::vector<std::vector<int>>{{0, 2}}));
  ASSERT_EQ(r.dropped.size(), 1u);
  EXPECT_EQ(r.dropped[0], std::make_pair(1, absl::StatusCode::kCancelled));
}

TEST(BatcherTest, StopDrainsAcceptedWorkThenRefuses) {
  Recorder r;
  // Paused and a one-minute delay: only Stop's drain can run these.
  auto b = Make(Paused(2, 60'000'000), r);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, i)).ok());
  b->Stop();
  EXPECT_EQ(r.finished, 5);
  EXPECT_EQ(r.BatchSizes(), (std::vector<int>{2, 2, 1}));
  EXPECT_TRUE(r.dropped.empty());
  EXPECT_EQ(b->Submit(std::make_shared<TestTask>(&r, 9)).code(), absl::StatusCode::kUnavailable);
  b->Stop();  // idempotent
}

TEST(BatcherTest, StepFormsExactlyOneBatch) {
  Recorder r;
  auto b = Make(Paused(2), r);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, i)).ok());
  b->Step();
  ASSERT_TRUE(r.WaitBatches(1));
  EXPECT_EQ(b->QueueDepth(), 3);
  EXPECT_EQ(r.BatchSizes(), (std::vector<int>{2}));
  b->Step();
  ASSERT_TRUE(r.WaitBatches(2));
  EXPECT_EQ(b->QueueDepth(), 1);
  EXPECT_EQ(r.BatchSizes(), (std::vector<int>{2, 2}));
}

TEST(BatcherTest, SeveralWorkersRunBatchesConcurrently) {
  std::mutex mu;
  std::condition_variable cv;
  int running = 0, peak = 0, done = 0;
  Batcher::Options o = Paused(1);
  o.num_workers = 3;
  auto b = Batcher::Create(o, [&](std::vector<Batcher::TaskPtr>&) {
    std::unique_lock<std::mutex> lock(mu);
    peak = std::max(peak, ++running);
    cv.notify_all();
    // Hold the batch until three run at once (bounded as a failure guard).
    cv.wait_for(lock, 20s, [&] { return peak >= 3; });
    --running;
    ++done;
    cv.notify_all();
  });
  ASSERT_TRUE(b.ok());
  Recorder r;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*b)->Submit(std::make_shared<TestTask>(&r, i)).ok());
  (*b)->Resume();
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, 20s, [&] { return done == 3; }));
  EXPECT_EQ(peak, 3);
}

TEST(BatcherTest, BucketingBatchesEqualSizesOnly) {
  Recorder r;
  Batcher::Options o = Paused(4);
  o.bucket_by_size = true;
  auto b = Make(o, r);
  const int64_t buckets[] = {7, 9, 7, 9, 7};
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(b->Submit(std::make_shared<TestTask>(&r, i, 1, buckets[i])).ok());
  }
  b->Resume();
  ASSERT_TRUE(r.WaitFinished(5));
  EXPECT_EQ(r.batches, (std::vector<std::vector<int>>{{0, 2, 4}, {1, 3}}));
}

TEST(BatcherTest, RejectsBadOptions) {
  Recorder r;
  Batcher::Options o;
  o.max_batch_size = 0;
  EXPECT_EQ(Batcher::Create(o, r.Fn()).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.max_queue_delay_us = -1;
  EXPECT_EQ(Batcher::Create(o, r.Fn()).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.num_workers = 0;
  EXPECT_EQ(Batcher::Create(o, r.Fn()).status().code(), absl::StatusCode::kInvalidArgument);
  o = {};
  o.max_queue_size = 0;
  EXPECT_EQ(Batcher::Create(o, r.Fn()).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lpdetr::server

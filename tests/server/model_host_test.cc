// ModelHost: activation, the switch between versions, retirement of a
// replaced version only once no request holds it, and failed loads that
// change nothing. Real ModelRunners on the embedded default model (small,
// loads in well under a second); the batch function is a stand-in that
// records which version ran each task.
#include "server/model_host.h"

#include <atomic>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/test_paths.h"

namespace lpdetr::server {
namespace {

namespace fs = std::filesystem;

std::string DefaultModelDir() {
  return (fs::path(testing_paths::SourceDir()) / "models" / "lp-detr-shapes").string();
}

// A task that records the version of the batch it ran in.
struct RecordingTask : Batcher::Task {
  std::shared_ptr<ServedModel> model;  // as a request holds its version
  std::mutex mu;
  std::string ran_on;
  bool dropped = false;
  void Drop(const absl::Status&) override {
    std::lock_guard<std::mutex> lock(mu);
    dropped = true;
  }
};

ServedModel::BatchFn Recorder(std::atomic<int>* batches) {
  return [batches](ServedModel& model, std::vector<Batcher::TaskPtr>& batch) {
    for (auto& t : batch) {
      auto& task = static_cast<RecordingTask&>(*t);
      std::lock_guard<std::mutex> lock(task.mu);
      task.ran_on = model.description().version;
    }
    ++*batches;
  };
}

ModelHost::Options FastOptions() {
  ModelHost::Options o;
  o.batcher.max_queue_delay_us = 0;
  o.janitor_interval = absl::Milliseconds(5);
  return o;
}

TEST(ModelHost, ActivateServesTheVersionUnderItsRegistryIdentity) {
  std::atomic<int> batches{0};
  auto host = ModelHost::Create(FastOptions(), Recorder(&batches));
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_EQ((*host)->Find(""), nullptr);
  auto v1 = (*host)->Activate({DefaultModelDir(), "shapes", "1"});
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ((*v1)->description().name, "shapes");
  EXPECT_EQ((*v1)->description().version, "1");
  EXPECT_EQ((*host)->Find(""), *v1);
  EXPECT_EQ((*host)->Find("shapes"), *v1);
  EXPECT_EQ((*host)->Find("other"), nullptr);
  EXPECT_EQ((*host)->DefaultName(), "shapes");
}

TEST(ModelHost, RequestsAdmittedBeforeTheSwitchFinishOnTheOldVersion) {
  std::atomic<int> batches{0};
  ModelHost::Options o = FastOptions();
  o.batcher.start_paused = true;  // so a task is surely queued at the switch
  auto host = ModelHost::Create(o, Recorder(&batches));
  ASSERT_TRUE(host.ok());
  auto v1 = (*host)->Activate({DefaultModelDir(), "shapes", "1"});
  ASSERT_TRUE(v1.ok()) << v1.status();

  auto old_task = std::make_shared<RecordingTask>();
  old_task->model = (*host)->Find("");
  ASSERT_TRUE(old_task->model->batcher().Submit(old_task).ok());
  std::weak_ptr<ServedModel> old_version = *v1;
  v1->reset();

  auto v2 = (*host)->Activate({DefaultModelDir(), "shapes", "2"});
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ((*host)->Find("")->description().version, "2");
  // The old version is retired, not released: a queued request holds it.
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ((*host)->RetiringCount(), 1);
  EXPECT_FALSE(old_version.expired());

  old_task->model->batcher().Resume();
  old_task->model.reset();  // the request answered: it lets go of its version
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!old_version.expired() && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  EXPECT_TRUE(old_version.expired()) << "the replaced version was never released";
  EXPECT_EQ((*host)->RetiringCount(), 0);
  std::lock_guard<std::mutex> lock(old_task->mu);
  EXPECT_EQ(old_task->ran_on, "1");
  EXPECT_FALSE(old_task->dropped);
}

TEST(ModelHost, AFailedLoadKeepsTheServingVersion) {
  std::atomic<int> batches{0};
  auto host = ModelHost::Create(FastOptions(), Recorder(&batches));
  ASSERT_TRUE(host.ok());
  ASSERT_TRUE((*host)->Activate({DefaultModelDir(), "shapes", "1"}).ok());
  const std::string missing = (fs::temp_directory_path() / "no-such-model-dir").string();
  auto failed = (*host)->Activate({missing, "shapes", "2"});
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(failed.status().message().find(missing), std::string::npos) << failed.status();
  EXPECT_EQ((*host)->Find("")->description().version, "1");
  EXPECT_EQ((*host)->RetiringCount(), 0);
}

TEST(ModelHost, WarmUpRunsBeforeTheSwitchAndSeveralNamesServeSideBySide) {
  std::atomic<int> batches{0};
  std::atomic<int> switches{0};
  auto host = ModelHost::Create(
      FastOptions(), Recorder(&batches), nullptr,
      [&switches](const ModelDescription&, const ModelDescription*) { ++switches; });
  ASSERT_TRUE(host.ok());
  ASSERT_TRUE((*host)->Activate({DefaultModelDir(), "a", "1"}).ok());
  ASSERT_TRUE((*host)->Activate({DefaultModelDir(), "b", "3"}).ok());
  EXPECT_EQ(switches.load(), 2);
  EXPECT_EQ((*host)->DefaultName(), "b");
  auto serving = (*host)->Serving();
  ASSERT_EQ(serving.size(), 2u);
  EXPECT_EQ(serving[0]->description().name, "b");  // the default first
  EXPECT_EQ(serving[1]->description().name, "a");
  EXPECT_EQ((*host)->Find("a")->description().version, "1");
  // The warm-up ran on the runner itself, not through the batch function.
  EXPECT_EQ(batches.load(), 0);
}

TEST(ModelHost, ConcurrentFindsDuringActivationsAlwaysSeeAWholeVersion) {
  std::atomic<int> batches{0};
  auto host = ModelHost::Create(FastOptions(), Recorder(&batches));
  ASSERT_TRUE(host.ok());
  ASSERT_TRUE((*host)->Activate({DefaultModelDir(), "shapes", "1"}).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::thread reader([&] {
    while (!stop) {
      std::shared_ptr<ServedModel> m = (*host)->Find("");
      if (!m || m->description().name != "shapes" || m->description().num_classes != 6) ++bad;
    }
  });
  for (int v = 2; v <= 4; ++v) {
    ASSERT_TRUE((*host)->Activate({DefaultModelDir(), "shapes", std::to_string(v)}).ok());
  }
  stop = true;
  reader.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ((*host)->Find("")->description().version, "4");
}

TEST(ModelHost, StopDrainsAndRefusesFurtherActivations) {
  std::atomic<int> batches{0};
  auto host = ModelHost::Create(FastOptions(), Recorder(&batches));
  ASSERT_TRUE(host.ok());
  ASSERT_TRUE((*host)->Activate({DefaultModelDir(), "shapes", "1"}).ok());
  auto task = std::make_shared<RecordingTask>();
  task->model = (*host)->Find("");
  ASSERT_TRUE(task->model->batcher().Submit(task).ok());
  (*host)->Stop();
  {
    std::lock_guard<std::mutex> lock(task->mu);
    EXPECT_EQ(task->ran_on, "1");  // accepted work ran before the stop returned
  }
  EXPECT_EQ((*host)->Find(""), nullptr);
  EXPECT_EQ((*host)->Activate({DefaultModelDir(), "shapes", "2"}).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace lpdetr::server

// JobManager against a stand-in lpdetr-train: a shell script that speaks the
// same command line, progress lines, run-directory files and exit codes
// (0 done, 1 failed, 3 stopped after a checkpoint), so every state path runs
// with real child processes in a second or two.
#include "server/admin/job_manager.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;
using lpdetr::v1::Job;
using lpdetr::v1::JobState;

// The stand-in trainer. `--fake-mode` picks the behaviour: ok (three steps,
// an evaluation, a model, exit 0), fail (an error on stderr, exit 1), hang
// (a checkpoint, then steps until SIGTERM: exit 3 after writing run.json),
// stubborn (ignores SIGTERM). `resume RUN_DIR` always finishes like ok.
constexpr const char* kFakeTrainer = R"(#!/bin/sh
cmd="$1"; shift
run=""; mode=ok
if [ "$cmd" = resume ]; then run="$1"; shift; mode=ok; fi
while [ $# -gt 0 ]; do
  case "$1" in
    --output) run="$2"; shift 2 ;;
    --fake-mode) mode="$2"; shift 2 ;;
    *) shift ;;
  esac
done
mkdir -p "$run"
echo "$cmd" >> "$run/invocations"
echo '{"event":"start","epoch":0,"step":0,"total_steps":3,"message":"training"}'
case "$mode" in
  fail)
    echo "lpdetr-train: the training annotations are broken" >&2
    exit 1 ;;
  hang)
    echo '{}' > "$run/run.json"
    trap 'echo "{\"event\":\"checkpoint\",\"step\":1}"; exit 3' TERM
    echo '{"event":"step","epoch":0,"step":1,"total_steps":3,"loss":2.5,"losses":{"loss_class":1.5},"lr":0.0001,"images_per_s":3.0,"eta_s":9.0}'
    while true; do sleep 0.05; done ;;
  stubborn)
    trap '' TERM
    echo '{"event":"step","epoch":0,"step":1,"total_steps":3,"loss":2.5}'
    while true; do sleep 0.05; done ;;
esac
for s in 1 2 3; do
  echo "{\"event\":\"step\",\"epoch\":0,\"step\":$s,\"total_steps\":3,\"loss\":1.$s,\"losses\":{\"loss_class\":0.$s},\"lr\":0.0001,\"images_per_s\":4.0,\"eta_s\":1.0}"
done
echo '{"event":"eval","epoch":1,"step":3,"total_steps":3,"metrics":{"AP":0.625,"AP50":0.9}}'
echo "progress on stderr" >&2
mkdir -p "$run/model"
printf '{"name":"fake","classes":["circle","square"]}\n' > "$run/model/config.json"
printf 'circle\nsquare\n' > "$run/model/labels.txt"
echo '{"best":{"AP":0.625}}' > "$run/metrics.json"
echo '{"event":"done","epoch":1,"step":3,"total_steps":3,"message":"model written"}'
exit 0
)";

class JobManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/job_manager_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
    trainer_ = root_ / "lpdetr-train";
    std::ofstream(trainer_) << kFakeTrainer;
    fs::permissions(trainer_, fs::perms::owner_all);
    fs::create_directories(root_ / "base");
    std::ofstream(root_ / "base" / "config.json") << "{}\n";
    auto store = JobStore::Open((root_ / "jobs.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::shared_ptr<JobStore>(std::move(*store));
    auto registry = ModelRegistry::Open((root_ / "registry").string());
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = std::shared_ptr<ModelRegistry>(std::move(*registry));
  }

  void TearDown() override {
    manager_.reset();
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  JobManager::Options DefaultOptions() const {
    JobManager::Options o;
    o.train_binary = trainer_.string();
    o.jobs_dir = (root_ / "jobs").string();
    o.cancel_grace = absl::Seconds(5);
    o.persist_interval = absl::Milliseconds(10);
    o.poll_interval = absl::Milliseconds(20);
    return o;
  }

  void CreateManager(JobManager::Options o) {
    auto m = JobManager::Create(std::move(o), store_, registry_);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = *std::move(m);
  }

  FineTuneSpec Spec(const std::string& mode, const std::string& output = "shapes") const {
    FineTuneSpec spec;
    spec.request.set_output_model(output);
    spec.request.set_train_annotations("train.json");
    spec.request.set_train_images("images");
    (*spec.request.mutable_parameters()->mutable_extra())["fake-mode"] = mode;
    spec.base_model_dir = (root_ / "base").string();
    spec.train_annotations = (root_ / "train.json").string();
    spec.train_images = (root_ / "images").string();
    return spec;
  }

  // Follows the job with WaitForChange until `done` holds (or 20 s pass).
  Job WaitUntil(const std::string& id, const std::function<bool(const Job&)>& done) {
    int64_t seen = 0;
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      auto snap = manager_->WaitForChange(id, seen, absl::Now() + absl::Milliseconds(500));
      EXPECT_TRUE(snap.ok()) << snap.status();
      if (!snap.ok()) return Job();
      if (done(snap->job)) return snap->job;
      seen = snap->sequence;
    }
    ADD_FAILURE() << "job " << id << " did not reach the expected state";
    return *manager_->Get(id);
  }

  Job WaitForState(const std::string& id, JobState state) {
    return WaitUntil(id, [state](const Job& j) { return j.state() == state; });
  }

  // What a crashed server leaves behind: job `id` stored as RUNNING with the
  // pid of a still-live child that runs `script` (sh -c) in the job's run
  // directory. Use with ASSERT_NO_FATAL_FAILURE.
  void StartCrashedJob(const std::string& id, const std::string& script,
                       std::unique_ptr<ChildProcess>* child) {
    const fs::path run = root_ / "jobs" / id / "run";
    fs::create_directories(run);
    ChildProcessOptions leftover;
    leftover.argv = {"/bin/sh", "-c", script, "sh", run.string()};
    leftover.log_path = (root_ / "leftover.log").string();
    leftover.kill_with_parent = false;
    auto started = ChildProcess::Start(leftover);
    ASSERT_TRUE(started.ok()) << started.status();
    *child = *std::move(started);
    StoredJob crashed;
    crashed.job.set_id(id);
    crashed.job.set_state(lpdetr::v1::RUNNING);
    crashed.job.mutable_request()->set_output_model("shapes");
    crashed.run_dir = run.string();
    crashed.log_path = (run.parent_path() / "job.log").string();
    crashed.pid = (*child)->pid();
    ASSERT_TRUE(store_->Create(crashed).ok());
  }

  fs::path root_;
  fs::path trainer_;
  std::shared_ptr<JobStore> store_;
  std::shared_ptr<ModelRegistry> registry_;
  std::unique_ptr<JobManager> manager_;
};

TEST_F(JobManagerTest, SuccessfulJobRegistersAVersionWithItsProgress) {
  CreateManager(DefaultOptions());
  auto job = manager_->Start(Spec("ok"));
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), lpdetr::v1::QUEUED);
  const Job done = WaitUntil(job->id(), [](const Job& j) { return JobManager::IsFinal(j.state()); });
  ASSERT_EQ(done.state(), lpdetr::v1::SUCCEEDED) << done.failure_reason();
  EXPECT_EQ(done.result_version(), "1");
  EXPECT_EQ(done.progress().step(), 3);
  EXPECT_EQ(done.progress().total_steps(), 3);
  EXPECT_DOUBLE_EQ(done.progress().eval_ap(), 0.625);
  EXPECT_DOUBLE_EQ(done.progress().losses().total(), 1.3);
  EXPECT_EQ(done.attempts(), 1);
  EXPECT_GT(done.started_at(), 0);
  EXPECT_GE(done.finished_at(), done.started_at());

  auto version = registry_->Get("shapes", "1");
  ASSERT_TRUE(version.ok()) << version.status();
  EXPECT_EQ(version->job_id, job->id());
  EXPECT_DOUBLE_EQ(version->eval_ap, 0.625);
  EXPECT_EQ(version->classes, (std::vector<std::string>{"circle", "square"}));
  // Nothing activates a fresh version.
  EXPECT_FALSE(registry_->ActiveVersion("shapes").ok());

  // The record in the store is final too (a new server would see it).
  auto stored = store_->Get(job->id());
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->job.state(), lpdetr::v1::SUCCEEDED);
  EXPECT_EQ(stored->pid, 0);

  bool truncated = true;
  auto log = manager_->LogTail(job->id(), 100, &truncated);
  ASSERT_TRUE(log.ok());
  EXPECT_FALSE(truncated);
  std::string all;
  for (const auto& line : *log) all += line + "\n";
  EXPECT_NE(all.find("progress on stderr"), std::string::npos) << all;
  EXPECT_NE(all.find("\"event\":\"done\""), std::string::npos) << all;
  auto tail = manager_->LogTail(job->id(), 2, &truncated);
  ASSERT_TRUE(tail.ok());
  EXPECT_EQ(tail->size(), 2u);
  EXPECT_TRUE(truncated);
}

TEST_F(JobManagerTest, FailedJobSaysWhy) {
  CreateManager(DefaultOptions());
  auto job = manager_->Start(Spec("fail"));
  ASSERT_TRUE(job.ok()) << job.status();
  const Job done = WaitUntil(job->id(), [](const Job& j) { return JobManager::IsFinal(j.state()); });
  EXPECT_EQ(done.state(), lpdetr::v1::FAILED);
  EXPECT_NE(done.failure_reason().find("exit code 1"), std::string::npos) << done.failure_reason();
  EXPECT_NE(done.failure_reason().find("the training annotations are broken"), std::string::npos)
      << done.failure_reason();
  EXPECT_TRUE(registry_->List("shapes").value_or(std::vector<ModelVersionInfo>{}).empty());
  // It failed before its first checkpoint: nothing to resume from.
  EXPECT_EQ(manager_->Resume(job->id()).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(JobManagerTest, CancelRunningJobCheckpointsThenResumeFinishesIt) {
  CreateManager(DefaultOptions());
  auto job = manager_->Start(Spec("hang"));
  ASSERT_TRUE(job.ok()) << job.status();
  const Job running = WaitUntil(job->id(), [](const Job& j) {
    return j.state() == lpdetr::v1::RUNNING && j.progress().step() == 1;
  });
  EXPECT_DOUBLE_EQ(running.progress().lr(), 1e-4);
  EXPECT_DOUBLE_EQ(running.progress().images_per_second(), 3.0);
  EXPECT_DOUBLE_EQ(running.progress().losses().terms().at("loss_class"), 1.5);
  auto cancelling = manager_->Cancel(job->id());
  ASSERT_TRUE(cancelling.ok()) << cancelling.status();
  EXPECT_EQ(cancelling->state(), lpdetr::v1::CANCELLING);
  const Job cancelled = WaitForState(job->id(), lpdetr::v1::CANCELLED);
  EXPECT_GT(cancelled.finished_at(), 0);
  EXPECT_EQ(manager_->Cancel(job->id()).status().code(), absl::StatusCode::kFailedPrecondition);

  auto resumed = manager_->Resume(job->id());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->state(), lpdetr::v1::QUEUED);
  const Job done = WaitUntil(job->id(), [](const Job& j) { return JobManager::IsFinal(j.state()); });
  ASSERT_EQ(done.state(), lpdetr::v1::SUCCEEDED) << done.failure_reason();
  EXPECT_EQ(done.attempts(), 2);
  // The second run continued the run directory instead of starting over.
  std::ifstream in(root_ / "jobs" / job->id() / "run" / "invocations");
  std::stringstream invocations;
  invocations << in.rdbuf();
  EXPECT_EQ(invocations.str(), "train\nresume\n");
}

TEST_F(JobManagerTest, CancelKillsAChildThatIgnoresSigterm) {
  JobManager::Options o = DefaultOptions();
  o.cancel_grace = absl::Milliseconds(300);
  CreateManager(o);
  auto job = manager_->Start(Spec("stubborn"));
  ASSERT_TRUE(job.ok());
  const Job running = WaitUntil(job->id(), [](const Job& j) { return j.progress().step() == 1; });
  auto stored = store_->Get(job->id());
  ASSERT_TRUE(stored.ok());
  const pid_t pid = static_cast<pid_t>(stored->pid);
  ASSERT_GT(pid, 0);
  const absl::Time t0 = absl::Now();
  ASSERT_TRUE(manager_->Cancel(job->id()).ok());
  const Job cancelled = WaitForState(job->id(), lpdetr::v1::CANCELLED);
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(300));
  EXPECT_EQ(kill(pid, 0), -1);
}

TEST_F(JobManagerTest, JobsQueueBeyondTheConcurrencyLimit) {
  CreateManager(DefaultOptions());
  auto first = manager_->Start(Spec("hang"));
  auto second = manager_->Start(Spec("ok"));
  ASSERT_TRUE(first.ok() && second.ok());
  WaitForState(first->id(), lpdetr::v1::RUNNING);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(manager_->Get(second->id())->state(), lpdetr::v1::QUEUED);
  auto stats = manager_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->by_state.at(lpdetr::v1::RUNNING), 1);
  EXPECT_EQ(stats->by_state.at(lpdetr::v1::QUEUED), 1);
  ASSERT_EQ(stats->running.size(), 1u);
  EXPECT_EQ(stats->running[0].id, first->id());

  auto listed = manager_->List({lpdetr::v1::QUEUED}, 0);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id(), second->id());

  ASSERT_TRUE(manager_->Cancel(first->id()).ok());
  const Job done =
      WaitUntil(second->id(), [](const Job& j) { return JobManager::IsFinal(j.state()); });
  EXPECT_EQ(done.state(), lpdetr::v1::SUCCEEDED) << done.failure_reason();
}

TEST_F(JobManagerTest, CancelQueuedJobNeverRunsIt) {
  CreateManager(DefaultOptions());
  auto first = manager_->Start(Spec("hang"));
  auto second = manager_->Start(Spec("ok"));
  ASSERT_TRUE(first.ok() && second.ok());
  auto cancelled = manager_->Cancel(second->id());
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(cancelled->state(), lpdetr::v1::CANCELLED);
  ASSERT_TRUE(manager_->Cancel(first->id()).ok());
  WaitForState(first->id(), lpdetr::v1::CANCELLED);
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(manager_->Get(second->id())->state(), lpdetr::v1::CANCELLED);
  EXPECT_FALSE(fs::exists(root_ / "jobs" / second->id() / "run"));
}

TEST_F(JobManagerTest, StopInterruptsRunningJobsAndANewManagerResumesThem) {
  CreateManager(DefaultOptions());
  auto job = manager_->Start(Spec("hang"));
  ASSERT_TRUE(job.ok());
  WaitUntil(job->id(), [](const Job& j) { return j.progress().step() == 1; });
  manager_->Stop();
  auto stored = store_->Get(job->id());
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->job.state(), lpdetr::v1::INTERRUPTED);
  EXPECT_NE(stored->job.failure_reason().find("server stopped"), std::string::npos);
  EXPECT_EQ(stored->pid, 0);
  // Calls after Stop are refused rather than queued into nowhere.
  EXPECT_EQ(manager_->Start(Spec("ok")).status().code(), absl::StatusCode::kUnavailable);
  manager_.reset();

  CreateManager(DefaultOptions());
  EXPECT_EQ(manager_->Get(job->id())->state(), lpdetr::v1::INTERRUPTED);
  ASSERT_TRUE(manager_->Resume(job->id()).ok());
  const Job done = WaitUntil(job->id(), [](const Job& j) { return JobManager::IsFinal(j.state()); });
  EXPECT_EQ(done.state(), lpdetr::v1::SUCCEEDED) << done.failure_reason();
}

TEST_F(JobManagerTest, CreateRecoversJobsOfACrashedServerAndStopsTheirChildren) {
  // A job a crashed server left RUNNING, with its child still alive.
  std::unique_ptr<ChildProcess> child;
  ASSERT_NO_FATAL_FAILURE(
      StartCrashedJob("j-crashed", "while true; do sleep 0.05; done", &child));

  // The leftover already had its parent-death SIGTERM (here: it ignores
  // none and exits on none), so it gets the grace period, then SIGKILL.
  JobManager::Options o = DefaultOptions();
  o.cancel_grace = absl::Milliseconds(300);
  CreateManager(o);
  const Job job = *manager_->Get("j-crashed");
  EXPECT_EQ(job.state(), lpdetr::v1::INTERRUPTED);
  auto status = child->WaitFor(absl::Seconds(5));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->signal, SIGKILL);
}

TEST_F(JobManagerTest, ALeftoverThatFinishesItsCheckpointIsNotSignalled) {
  // Writing its checkpoint after the parent-death SIGTERM: done in 0.3 s.
  std::unique_ptr<ChildProcess> child;
  ASSERT_NO_FATAL_FAILURE(StartCrashedJob("j-checkpointing", "sleep 0.3; exit 3", &child));
  CreateManager(DefaultOptions());  // grace 5 s
  auto status = child->WaitFor(absl::Seconds(5));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_TRUE(status->Exited(3)) << status->ToString();
  EXPECT_EQ(manager_->Get("j-checkpointing")->state(), lpdetr::v1::INTERRUPTED);
}

TEST_F(JobManagerTest, WaitForChangeReturnsAtTheDeadlineWhenNothingChanges) {
  CreateManager(DefaultOptions());
  auto job = manager_->Start(Spec("hang"));
  ASSERT_TRUE(job.ok());
  const Job running = WaitUntil(job->id(), [](const Job& j) { return j.progress().step() == 1; });
  auto now = manager_->WaitForChange(job->id(), 0, absl::Now());
  ASSERT_TRUE(now.ok());
  const absl::Time t0 = absl::Now();
  auto later = manager_->WaitForChange(job->id(), now->sequence, t0 + absl::Milliseconds(200));
  ASSERT_TRUE(later.ok());
  EXPECT_EQ(later->sequence, now->sequence);
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(190));
  EXPECT_EQ(manager_->WaitForChange("j-unknown", 0, absl::Now()).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(JobManagerTest, BadRequestsAreRefusedBeforeAnythingIsQueued) {
  CreateManager(DefaultOptions());
  FineTuneSpec spec = Spec("ok", "../escape");
  EXPECT_EQ(manager_->Start(spec).status().code(), absl::StatusCode::kInvalidArgument);
  spec = Spec("ok");
  (*spec.request.mutable_parameters()->mutable_extra())["output"] = "/tmp/elsewhere";
  auto reserved = manager_->Start(spec);
  EXPECT_EQ(reserved.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(reserved.status().message().find("output"), std::string::npos);
  spec = Spec("ok");
  spec.request.mutable_parameters()->set_export_dtype("int8");
  EXPECT_EQ(manager_->Start(spec).status().code(), absl::StatusCode::kInvalidArgument);
  spec = Spec("ok");
  spec.request.mutable_parameters()->set_lr(-1);
  EXPECT_EQ(manager_->Start(spec).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(manager_->List({}, 0)->empty());
}

TEST_F(JobManagerTest, TrainArgumentsCarryTheParameters) {
  FineTuneSpec spec = Spec("ok");
  spec.val_annotations = "/data/val.json";
  spec.val_images = "/data/val";
  auto* p = spec.request.mutable_parameters();
  p->set_epochs(3);
  p->set_lr(2e-4);
  p->add_lr_milestones(2);
  p->add_scales(320);
  p->add_scales(352);
  p->set_ema(true);
  p->set_export_dtype("fp16");
  auto args = JobManager::TrainArguments(spec, "/runs/r", 2);
  ASSERT_TRUE(args.ok()) << args.status();
  auto value_of = [&](const std::string& flag) -> std::string {
    for (size_t i = 0; i + 1 < args->size(); ++i) {
      if ((*args)[i] == flag) return (*args)[i + 1];
    }
    return "<absent>";
  };
  EXPECT_EQ(args->front(), "train");
  EXPECT_EQ(value_of("--output"), "/runs/r");
  EXPECT_EQ(value_of("--threads"), "2");
  EXPECT_EQ(value_of("--progress"), "json");
  EXPECT_EQ(value_of("--val-images"), "/data/val");
  EXPECT_EQ(value_of("--epochs"), "3");
  EXPECT_EQ(std::stod(value_of("--lr")), 2e-4);
  EXPECT_EQ(value_of("--lr-milestones"), "2");
  EXPECT_EQ(value_of("--scales"), "320,352");
  EXPECT_EQ(value_of("--ema"), "1");
  EXPECT_EQ(value_of("--export-dtype"), "fp16");
  EXPECT_EQ(value_of("--fake-mode"), "ok");
  EXPECT_EQ(value_of("--batch-size"), "<absent>");  // 0 keeps lpdetr-train's default
  spec.val_images.clear();
  EXPECT_EQ(JobManager::TrainArguments(spec, "/runs/r", 2).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(JobManagerTest, CreateRefusesAMissingTrainer) {
  JobManager::Options o = DefaultOptions();
  o.train_binary = (root_ / "no-such-trainer").string();
  auto m = JobManager::Create(o, store_, registry_);
  EXPECT_EQ(m.status().code(), absl::StatusCode::kFailedPrecondition);
  o = DefaultOptions();
  o.max_concurrent_jobs = 0;
  EXPECT_EQ(JobManager::Create(o, store_, registry_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lpdetr::admin

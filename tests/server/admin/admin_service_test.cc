// AdminServiceImpl on loopback gRPC with a stand-in lpdetr-train (a shell
// script that speaks its command line, progress lines and exit codes), a real
// job store, registry and job manager, and a ModelHost with no model loaded
// (jobs start from a registered base model).
//
// Covers what needs the service itself: StartFineTune refusing a dataset
// lpdetr-train would refuse (code, field prefix, nothing queued), and the
// job-duration histogram observing every job that ends exactly once, also
// when it starts and ends between two metrics refreshes, and not again after
// a restart.
#include "server/admin_service.h"

#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "server/admin/job_store.h"
#include "server/admin/model_registry.h"
#include "server/metrics/metrics.h"

namespace lpdetr::server {
namespace {

namespace fs = std::filesystem;
using lpdetr::v1::Job;
using lpdetr::v1::JobState;

constexpr const char* kToken = "admin-service-test-token";

// The stand-in trainer: `--fake-mode ok` writes a model and exits 0, `fail`
// exits 1, `hang` runs until SIGTERM (then exit 3).
constexpr const char* kFakeTrainer = R"(#!/bin/sh
cmd="$1"; shift
run=""; mode=ok
if [ "$cmd" = resume ]; then run="$1"; shift; fi
while [ $# -gt 0 ]; do
  case "$1" in
    --output) run="$2"; shift 2 ;;
    --fake-mode) mode="$2"; shift 2 ;;
    *) shift ;;
  esac
done
mkdir -p "$run"
echo '{"event":"start","epoch":0,"step":0,"total_steps":1}'
case "$mode" in
  fail) echo "lpdetr-train: broken" >&2; exit 1 ;;
  hang) trap 'exit 3' TERM; while true; do sleep 0.05; done ;;
esac
mkdir -p "$run/model"
printf '{"name":"fake","classes":["circle"]}\n' > "$run/model/config.json"
printf 'circle\n' > "$run/model/labels.txt"
echo '{"event":"done","epoch":1,"step":1,"total_steps":1}'
exit 0
)";

// The `_count` sample of the duration histogram for `state` (0 when absent).
double DurationCount(const metrics::Registry& registry, const std::string& state) {
  const std::string prefix =
      "lpdetr_finetune_job_duration_seconds_count{state=\"" + state + "\"} ";
  std::istringstream text(registry.Serialize());
  for (std::string line; std::getline(text, line);) {
    if (line.rfind(prefix, 0) == 0) return std::stod(line.substr(prefix.size()));
  }
  return 0;
}

class AdminServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/admin_service_test.XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    root_ = pattern;
    trainer_ = root_ / "lpdetr-train";
    std::ofstream(trainer_) << kFakeTrainer;
    fs::permissions(trainer_, fs::perms::owner_all);
    data_ = root_ / "data";
    WriteDataset("shapes", 2);
    fs::create_directories(root_ / "base");
    std::ofstream(root_ / "base" / "config.json") << "{}\n";
    auto registry = admin::ModelRegistry::Open((root_ / "registry").string());
    ASSERT_TRUE(registry.ok()) << registry.status();
    registry_ = std::shared_ptr<admin::ModelRegistry>(std::move(*registry));
    ASSERT_TRUE(registry_->Register("base", (root_ / "base").string(), "", -1).ok());
    auto host = ModelHost::Create(ModelHost::Options(),
                                  [](ServedModel&, std::vector<Batcher::TaskPtr>&) {});
    ASSERT_TRUE(host.ok()) << host.status();
    host_ = std::shared_ptr<ModelHost>(std::move(*host));
  }

  void TearDown() override {
    StopServer();
    host_.reset();
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // DATA/<name>/annotations.json and DATA/<name>/images/ with `images` images.
  void WriteDataset(const std::string& name, int images) {
    const fs::path dir = data_ / name;
    fs::create_directories(dir / "images");
    nlohmann::json d = {{"images", nlohmann::json::array()},
                        {"annotations", nlohmann::json::array()},
                        {"categories", {{{"id", 1}, {"name", "circle"}}}}};
    for (int i = 1; i <= images; ++i) {
      const std::string file = std::to_string(i) + ".jpg";
      std::ofstream(dir / "images" / file) << "jpeg";
      d["images"].push_back({{"id", i}, {"file_name", file}, {"width", 8}, {"height", 8}});
      d["annotations"].push_back(
          {{"id", i}, {"image_id", i}, {"category_id", 1}, {"bbox", {1, 1, 4, 4}}});
    }
    std::ofstream(dir / "annotations.json") << d.dump();
  }

  // A job manager and the service on the same store, a fresh metrics registry.
  void StartServer(absl::Duration metrics_interval) {
    auto store = admin::JobStore::Open((root_ / "jobs.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    admin::JobManager::Options o;
    o.train_binary = trainer_.string();
    o.jobs_dir = (root_ / "jobs").string();
    o.max_concurrent_jobs = 2;
    o.cancel_grace = absl::Seconds(5);
    o.persist_interval = absl::Milliseconds(10);
    o.poll_interval = absl::Milliseconds(20);
    auto jobs = admin::JobManager::Create(o, std::shared_ptr<admin::JobStore>(std::move(*store)),
                                          registry_);
    ASSERT_TRUE(jobs.ok()) << jobs.status();
    jobs_ = std::shared_ptr<admin::JobManager>(std::move(*jobs));
    metrics_registry_ = std::make_shared<metrics::Registry>();
    AdminServiceImpl::Options options;
    options.token = kToken;
    options.data_root = data_.string();
    options.metrics_interval = metrics_interval;
    auto service = AdminServiceImpl::Create(options, jobs_, registry_, host_,
                                            std::make_shared<ServiceMetrics>(metrics_registry_));
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = std::move(*service);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_NE(port, 0);
    stub_ = lpdetr::v1::AdminService::NewStub(grpc::CreateChannel(
        "127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }

  void StopServer() {
    if (server_) server_->Shutdown();
    server_.reset();
    stub_.reset();
    if (service_) service_->BeginShutdown();
    service_.reset();
    if (jobs_) jobs_->Stop();
    jobs_.reset();
  }

  lpdetr::v1::StartFineTuneRequest Request(const std::string& mode) const {
    lpdetr::v1::StartFineTuneRequest r;
    r.set_base_model("base");
    r.set_base_version("1");
    r.set_train_annotations("shapes/annotations.json");
    r.set_train_images("shapes/images");
    r.set_output_model("shapes-ft");
    (*r.mutable_parameters()->mutable_extra())["fake-mode"] = mode;
    return r;
  }

  grpc::Status Start(const lpdetr::v1::StartFineTuneRequest& request, Job* job) {
    grpc::ClientContext context;
    context.AddMetadata("authorization", std::string("Bearer ") + kToken);
    return stub_->StartFineTune(&context, request, job);
  }

  std::vector<Job> ListJobs() {
    grpc::ClientContext context;
    context.AddMetadata("authorization", std::string("Bearer ") + kToken);
    lpdetr::v1::ListJobsResponse response;
    const grpc::Status s = stub_->ListJobs(&context, lpdetr::v1::ListJobsRequest(), &response);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return {response.jobs().begin(), response.jobs().end()};
  }

  // Waits (20 s at most) until the job is in `state`.
  Job WaitForState(const std::string& id, JobState state) {
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    int64_t seen = 0;
    while (absl::Now() < deadline) {
      auto snapshot = jobs_->WaitForChange(id, seen, absl::Now() + absl::Milliseconds(200));
      if (!snapshot.ok()) break;
      if (snapshot->job.state() == state) return snapshot->job;
      seen = snapshot->sequence;
    }
    ADD_FAILURE() << "job " << id << " did not become " << lpdetr::v1::JobState_Name(state);
    return Job();
  }

  // Queues and finishes two succeeding jobs and a failing one, and cancels a
  // queued one (behind two that hang), then stops the hanging ones.
  void RunJobsToEveryEnd() {
    std::vector<std::pair<std::string, JobState>> ends;
    for (const char* mode : {"ok", "ok", "fail"}) {
      Job job;
      const grpc::Status s = Start(Request(mode), &job);
      ASSERT_TRUE(s.ok()) << s.error_message();
      ends.emplace_back(job.id(), std::string(mode) == "ok" ? lpdetr::v1::SUCCEEDED
                                                             : lpdetr::v1::FAILED);
    }
    for (const auto& [id, state] : ends) WaitForState(id, state);
    Job hang1, hang2, queued;
    ASSERT_TRUE(Start(Request("hang"), &hang1).ok());
    ASSERT_TRUE(Start(Request("hang"), &hang2).ok());
    WaitForState(hang1.id(), lpdetr::v1::RUNNING);
    WaitForState(hang2.id(), lpdetr::v1::RUNNING);
    ASSERT_TRUE(Start(Request("ok"), &queued).ok());
    ASSERT_TRUE(jobs_->Cancel(queued.id()).ok());  // still QUEUED: 2 run at most
    ASSERT_TRUE(jobs_->Cancel(hang1.id()).ok());
    WaitForState(hang1.id(), lpdetr::v1::CANCELLED);
    ASSERT_TRUE(jobs_->Cancel(hang2.id()).ok());
    WaitForState(hang2.id(), lpdetr::v1::CANCELLED);
  }

  fs::path root_, trainer_, data_;
  std::shared_ptr<admin::ModelRegistry> registry_;
  std::shared_ptr<ModelHost> host_;
  std::shared_ptr<admin::JobManager> jobs_;
  std::shared_ptr<metrics::Registry> metrics_registry_;
  std::unique_ptr<AdminServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<lpdetr::v1::AdminService::Stub> stub_;
};

TEST_F(AdminServiceTest, JobsEndingBetweenRefreshesAreObservedOnce) {
  // One refresh at Create, none after: every end seen comes from the jobs.
  StartServer(absl::Hours(1));
  RunJobsToEveryEnd();
  EXPECT_EQ(DurationCount(*metrics_registry_, "succeeded"), 2);
  EXPECT_EQ(DurationCount(*metrics_registry_, "failed"), 1);
  EXPECT_EQ(DurationCount(*metrics_registry_, "cancelled"), 3);
}

TEST_F(AdminServiceTest, FrequentRefreshesDoNotCountAJobTwice) {
  StartServer(absl::Milliseconds(5));
  RunJobsToEveryEnd();
  absl::SleepFor(absl::Milliseconds(100));  // many refreshes after the ends
  EXPECT_EQ(DurationCount(*metrics_registry_, "succeeded"), 2);
  EXPECT_EQ(DurationCount(*metrics_registry_, "failed"), 1);
  EXPECT_EQ(DurationCount(*metrics_registry_, "cancelled"), 3);
}

TEST_F(AdminServiceTest, StopInterruptsAndARestartObservesNothingTwice) {
  StartServer(absl::Milliseconds(5));
  RunJobsToEveryEnd();
  Job hang;
  ASSERT_TRUE(Start(Request("hang"), &hang).ok());
  WaitForState(hang.id(), lpdetr::v1::RUNNING);
  // The service goes first (as in the server's drain), so its listener is
  // gone when the manager interrupts the job.
  const std::shared_ptr<metrics::Registry> before = metrics_registry_;
  StopServer();
  EXPECT_EQ(DurationCount(*before, "interrupted"), 0);

  // The next server sees six ended jobs and an interrupted one in the store
  // and observes none of them.
  StartServer(absl::Milliseconds(5));
  absl::SleepFor(absl::Milliseconds(100));
  for (const char* state : {"succeeded", "failed", "cancelled", "interrupted"}) {
    EXPECT_EQ(DurationCount(*metrics_registry_, state), 0) << state;
  }
  // What ends from now on is.
  Job job;
  ASSERT_TRUE(Start(Request("ok"), &job).ok());
  WaitForState(job.id(), lpdetr::v1::SUCCEEDED);
  EXPECT_EQ(DurationCount(*metrics_registry_, "succeeded"), 1);
  // An interruption at this manager's stop is an end it observes.
  Job hang2;
  ASSERT_TRUE(Start(Request("hang"), &hang2).ok());
  WaitForState(hang2.id(), lpdetr::v1::RUNNING);
  jobs_->Stop();
  EXPECT_EQ(DurationCount(*metrics_registry_, "interrupted"), 1);
}

TEST_F(AdminServiceTest, BadDatasetsAreRefusedBeforeAnythingIsQueued) {
  StartServer(absl::Hours(1));
  fs::create_directories(data_ / "broken" / "images");
  std::ofstream(data_ / "broken" / "annotations.json") << "{\"images\": [,]}";
  WriteDataset("few", 3);
  fs::remove(data_ / "few" / "images" / "2.jpg");
  struct Case {
    std::string what;
    lpdetr::v1::StartFineTuneRequest request;
    grpc::StatusCode code;
    std::string prefix;
    std::string detail;
  };
  std::vector<Case> cases;
  {
    Case c{"broken JSON", Request("ok"), grpc::StatusCode::INVALID_ARGUMENT,
           "train_annotations: ", "not valid JSON at byte "};
    c.request.set_train_annotations("broken/annotations.json");
    cases.push_back(c);
  }
  {
    Case c{"missing image", Request("ok"), grpc::StatusCode::NOT_FOUND, "train_images: ",
           "\"2.jpg\": not found"};
    c.request.set_train_annotations("few/annotations.json");
    c.request.set_train_images("few/images");
    cases.push_back(c);
  }
  {
    Case c{"broken validation split", Request("ok"), grpc::StatusCode::INVALID_ARGUMENT,
           "val_annotations: ", "not valid JSON"};
    c.request.set_val_annotations("broken/annotations.json");
    c.request.set_val_images("broken/images");
    cases.push_back(c);
  }
  {
    // The request's own problems come before the dataset's.
    Case c{"bad output name", Request("ok"), grpc::StatusCode::INVALID_ARGUMENT,
           "output_model: ", ""};
    c.request.set_train_annotations("broken/annotations.json");
    c.request.set_output_model("a/b");
    cases.push_back(c);
  }
  for (const Case& c : cases) {
    Job job;
    const grpc::Status s = Start(c.request, &job);
    EXPECT_EQ(s.error_code(), c.code) << c.what << ": " << s.error_message();
    EXPECT_EQ(s.error_message().rfind(c.prefix, 0), 0u) << c.what << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(c.detail), std::string::npos)
        << c.what << ": " << s.error_message();
    // Paths as the request gave them, not as resolved on the server.
    EXPECT_EQ(s.error_message().find(root_.string()), std::string::npos)
        << c.what << ": " << s.error_message();
  }
  EXPECT_TRUE(ListJobs().empty());
  EXPECT_FALSE(fs::exists(root_ / "jobs") && !fs::is_empty(root_ / "jobs"));
  // A valid dataset is queued.
  Job job;
  const grpc::Status ok = Start(Request("ok"), &job);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(ListJobs().size(), 1u);
}

}  // namespace
}  // namespace lpdetr::server

// Tests of JobStore: round trips, ids, ordering, restart recovery,
// concurrency and the refusals (not a database, newer schema, corrupt
// record). Every test works in its own temporary directory.
#include "server/admin/job_store.h"

#include <gtest/gtest.h>
#include <google/protobuf/util/message_differencer.h>
#include <sqlite3.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace lpdetr::admin {
namespace {

using google::protobuf::util::MessageDifferencer;
using lpdetr::v1::Job;
using lpdetr::v1::JobState;

// A second, plain SQLite connection to the store's file, to look behind the
// store's back.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK);
    sqlite3_busy_timeout(db_, 5000);
  }
  ~RawDb() { sqlite3_close(db_); }

  // Runs `sql` with `text` bound to ?1 (when given); returns the first
  // column of the first row as text ("" when no row).
  std::string Query(const std::string& sql, const std::string* text = nullptr) {
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db_);
    if (text != nullptr) sqlite3_bind_text(stmt, 1, text->c_str(), -1, SQLITE_TRANSIENT);
    std::string result;
    const int rc = sqlite3_step(stmt);
    EXPECT_TRUE(rc == SQLITE_ROW || rc == SQLITE_DONE) << sqlite3_errmsg(db_);
    if (rc == SQLITE_ROW && sqlite3_column_text(stmt, 0) != nullptr) {
      result = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    }
    sqlite3_finalize(stmt);
    return result;
  }

 private:
  sqlite3* db_ = nullptr;
};

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::path(::testing::TempDir()) /
                           "job_store_test.XXXXXX")
                              .string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    db_path_ = (dir_ / "jobs.db").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<JobStore> OpenStore() {
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(db_path_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  // A job in `state` created at `created_at` (0: let the store pick).
  static StoredJob MakeJob(JobState state, int64_t created_at = 0,
                           const std::string& id = "") {
    StoredJob job;
    job.job.set_id(id);
    job.job.set_state(state);
    job.job.set_created_at(created_at);
    job.job.mutable_request()->set_output_model("m");
    job.run_dir = "/runs/" + id;
    job.log_path = "/runs/" + id + "/log.txt";
    return job;
  }

  static std::vector<std::string> Ids(const std::vector<StoredJob>& jobs) {
    std::vector<std::string> ids;
    for (const StoredJob& job : jobs) ids.push_back(job.job.id());
    return ids;
  }

  static void ExpectSame(const StoredJob& a, const StoredJob& b) {
    EXPECT_TRUE(MessageDifferencer::Equals(a.job, b.job))
        << a.job.DebugString() << "\nvs\n"
        << b.job.DebugString();
    EXPECT_EQ(a.run_dir, b.run_dir);
    EXPECT_EQ(a.log_path, b.log_path);
    EXPECT_EQ(a.pid, b.pid);
  }

  std::filesystem::path dir_;
  std::string db_path_;
};

TEST_F(JobStoreTest, CreateThenGetKeepsEveryField) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  StoredJob job;
  Job& j = job.job;
  j.set_id("job-explicit_1");
  j.set_state(lpdetr::v1::RUNNING);
  auto* request = j.mutable_request();
  request->set_base_model("base");
  request->set_base_version("v3");
  request->set_train_annotations("train/ann.json");
  request->set_train_images("train/img");
  request->set_val_annotations("val/ann.json");
  request->set_val_images("val/img");
  request->set_output_model("plates");
  request->set_description("a description with ünïcode and 'quotes'");
  auto* params = request->mutable_parameters();
  params->set_epochs(12);
  params->set_batch_size(4);
  params->set_lr(1.5e-4);
  params->set_weight_decay(1e-4);
  params->add_lr_milestones(8);
  params->add_lr_milestones(11);
  params->set_lr_gamma(0.1);
  params->set_lr_warmup_steps(50);
  params->set_accumulate_steps(2);
  params->set_ema(true);
  params->set_ema_decay(0.9998);
  params->add_scales(480);
  params->add_scales(512);
  params->set_max_size(800);
  params->set_backbone_training("full");
  params->set_export_dtype("bf16");
  params->set_seed(-7);
  params->set_max_steps(1000);
  (*params->mutable_extra())["eval-every"] = "1";
  (*params->mutable_extra())["log-every"] = "10";
  auto* progress = j.mutable_progress();
  progress->set_epoch(3);
  progress->set_step(345);
  progress->set_total_steps(1000);
  progress->mutable_losses()->set_total(2.5);
  (*progress->mutable_losses()->mutable_terms())["loss_class"] = 0.75;
  (*progress->mutable_losses()->mutable_terms())["loss_bbox_dn"] = 0.25;
  progress->set_lr(1e-5);
  progress->set_images_per_second(3.25);
  progress->set_eta_seconds(600.5);
  progress->set_eval_ap(0.41);
  progress->set_best_ap(0.43);
  j.set_failure_reason("none yet");
  j.set_result_version("20240101-000000");
  j.set_created_at(1700000000);
  j.set_started_at(1700000100);
  j.set_finished_at(1700000200);
  j.set_attempts(2);
  job.run_dir = "/data/runs/job-explicit_1";
  job.log_path = "/data/runs/job-explicit_1/train.log";
  job.pid = 4242;

  absl::StatusOr<StoredJob> created = store->Create(job);
  ASSERT_TRUE(created.ok()) << created.status();
  ExpectSame(*created, job);
  absl::StatusOr<StoredJob> got = store->Get("job-explicit_1");
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, job);
}

TEST_F(JobStoreTest, CreateAssignsIdAndCreationTime) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  const int64_t before = static_cast<int64_t>(std::time(nullptr));
  absl::StatusOr<StoredJob> created = store->Create(MakeJob(lpdetr::v1::QUEUED));
  const int64_t after = static_cast<int64_t>(std::time(nullptr));
  ASSERT_TRUE(created.ok()) << created.status();
  const std::string& id = created->job.id();
  EXPECT_TRUE(std::regex_match(id, std::regex("j-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}"))) << id;
  EXPECT_GE(created->job.created_at(), before);
  EXPECT_LE(created->job.created_at(), after);
  // The id's time stamp is the creation time in UTC.
  const std::time_t t = static_cast<std::time_t>(created->job.created_at());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char stamp[32];
  std::strftime(stamp, sizeof(stamp), "%Y%m%d-%H%M%S", &tm);
  EXPECT_EQ(id.substr(2, 15), stamp);

  absl::StatusOr<StoredJob> got = store->Get(id);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, *created);
}

TEST_F(JobStoreTest, GeneratedIdsAreUniqueAndSortByCreation) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  std::vector<std::string> ids;
  for (int i = 0; i < 300; ++i) {
    absl::StatusOr<StoredJob> created = store->Create(MakeJob(lpdetr::v1::QUEUED));
    ASSERT_TRUE(created.ok()) << created.status();
    ids.push_back(created->job.id());
  }
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), ids.size());
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  // Queued runs them in creation order.
  absl::StatusOr<std::vector<StoredJob>> queued = store->Queued();
  ASSERT_TRUE(queued.ok()) << queued.status();
  EXPECT_EQ(Ids(*queued), ids);
}

TEST_F(JobStoreTest, DuplicateIdIsAlreadyExists) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::QUEUED, 10, "dup")).ok());
  absl::StatusOr<StoredJob> again = store->Create(MakeJob(lpdetr::v1::FAILED, 20, "dup"));
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
  EXPECT_NE(again.status().message().find("dup"), std::string::npos);
  // The first one is untouched.
  absl::StatusOr<StoredJob> got = store->Get("dup");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->job.state(), lpdetr::v1::QUEUED);
  EXPECT_EQ(got->job.created_at(), 10);
}

TEST_F(JobStoreTest, MissingJobIsNotFound) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<StoredJob> got = store->Get("j-nope");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find("j-nope"), std::string::npos);
  EXPECT_EQ(store->Update(MakeJob(lpdetr::v1::RUNNING, 5, "j-nope")).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Update(MakeJob(lpdetr::v1::RUNNING, 5, "")).code(),
            absl::StatusCode::kInvalidArgument);
  // Update did not insert anything.
  EXPECT_EQ(store->Get("j-nope").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobStoreTest, UpdatePersistsAcrossReopen) {
  std::string id;
  StoredJob updated;
  {
    std::unique_ptr<JobStore> store = OpenStore();
    ASSERT_NE(store, nullptr);
    absl::StatusOr<StoredJob> created = store->Create(MakeJob(lpdetr::v1::QUEUED));
    ASSERT_TRUE(created.ok()) << created.status();
    id = created->job.id();
    updated = *created;
    updated.job.set_state(lpdetr::v1::RUNNING);
    updated.job.set_started_at(updated.job.created_at() + 1);
    updated.job.set_attempts(1);
    updated.job.mutable_progress()->set_step(77);
    updated.job.mutable_progress()->set_epoch(2);
    (*updated.job.mutable_progress()->mutable_losses()->mutable_terms())["loss_giou"] = 0.5;
    updated.pid = 31337;
    updated.log_path = "/elsewhere/log";
    ASSERT_TRUE(store->Update(updated).ok());
    absl::StatusOr<StoredJob> got = store->Get(id);
    ASSERT_TRUE(got.ok()) << got.status();
    ExpectSame(*got, updated);
  }
  std::unique_ptr<JobStore> reopened = OpenStore();
  ASSERT_NE(reopened, nullptr);
  absl::StatusOr<StoredJob> got = reopened->Get(id);
  ASSERT_TRUE(got.ok()) << got.status();
  ExpectSame(*got, updated);
  // The state column follows the record.
  absl::StatusOr<std::vector<StoredJob>> running = reopened->List({lpdetr::v1::RUNNING}, 0);
  ASSERT_TRUE(running.ok()) << running.status();
  EXPECT_EQ(Ids(*running), std::vector<std::string>{id});
  absl::StatusOr<std::vector<StoredJob>> queued = reopened->Queued();
  ASSERT_TRUE(queued.ok());
  EXPECT_TRUE(queued->empty());
  EXPECT_EQ(RawDb(db_path_).Query("SELECT state FROM jobs WHERE id = ?1", &id),
            std::to_string(lpdetr::v1::RUNNING));
}

TEST_F(JobStoreTest, ListFiltersByStateNewestFirstWithLimit) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  // Inserted out of creation order on purpose.
  const struct {
    const char* id;
    int64_t created_at;
    JobState state;
  } kJobs[] = {
      {"c", 300, lpdetr::v1::QUEUED},   {"a", 100, lpdetr::v1::SUCCEEDED},
      {"e", 500, lpdetr::v1::FAILED},   {"b", 200, lpdetr::v1::QUEUED},
      {"d", 400, lpdetr::v1::SUCCEEDED}, {"f", 600, lpdetr::v1::RUNNING},
  };
  for (const auto& j : kJobs) {
    ASSERT_TRUE(store->Create(MakeJob(j.state, j.created_at, j.id)).ok());
  }
  using Ids_ = std::vector<std::string>;
  absl::StatusOr<std::vector<StoredJob>> all = store->List({}, 0);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(Ids(*all), (Ids_{"f", "e", "d", "c", "b", "a"}));

  absl::StatusOr<std::vector<StoredJob>> two = store->List({}, 2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(Ids(*two), (Ids_{"f", "e"}));

  absl::StatusOr<std::vector<StoredJob>> queued = store->List({lpdetr::v1::QUEUED}, 10);
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(Ids(*queued), (Ids_{"c", "b"}));

  absl::StatusOr<std::vector<StoredJob>> done = store->List(
      {lpdetr::v1::SUCCEEDED, lpdetr::v1::FAILED, lpdetr::v1::SUCCEEDED}, -1);
  ASSERT_TRUE(done.ok());
  EXPECT_EQ(Ids(*done), (Ids_{"e", "d", "a"}));

  absl::StatusOr<std::vector<StoredJob>> none = store->List({lpdetr::v1::CANCELLED}, 0);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST_F(JobStoreTest, ListDefaultLimitIsHundred) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  for (int i = 0; i < JobStore::kDefaultListLimit + 20; ++i) {
    ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::QUEUED, 1000 + i)).ok());
  }
  absl::StatusOr<std::vector<StoredJob>> listed = store->List({}, 0);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), static_cast<size_t>(JobStore::kDefaultListLimit));
  EXPECT_EQ(listed->front().job.created_at(), 1000 + JobStore::kDefaultListLimit + 19);
  absl::StatusOr<std::vector<StoredJob>> more = store->List({}, 1000);
  ASSERT_TRUE(more.ok());
  EXPECT_EQ(more->size(), static_cast<size_t>(JobStore::kDefaultListLimit + 20));
}

TEST_F(JobStoreTest, QueuedIsOldestFirst) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::QUEUED, 30, "q30")).ok());
  ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::RUNNING, 5, "r5")).ok());
  ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::QUEUED, 10, "q10")).ok());
  ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::INTERRUPTED, 1, "i1")).ok());
  ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::QUEUED, 20, "q20")).ok());
  absl::StatusOr<std::vector<StoredJob>> queued = store->Queued();
  ASSERT_TRUE(queued.ok()) << queued.status();
  EXPECT_EQ(Ids(*queued), (std::vector<std::string>{"q10", "q20", "q30"}));
}

TEST_F(JobStoreTest, RecoverAfterRestartInterruptsAndCancels) {
  {
    std::unique_ptr<JobStore> store = OpenStore();
    ASSERT_NE(store, nullptr);
    StoredJob running = MakeJob(lpdetr::v1::RUNNING, 10, "run");
    running.pid = 111;
    StoredJob cancelling = MakeJob(lpdetr::v1::CANCELLING, 20, "cancel");
    cancelling.pid = 222;
    ASSERT_TRUE(store->Create(running).ok());
    ASSERT_TRUE(store->Create(cancelling).ok());
    ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::QUEUED, 30, "queued")).ok());
    ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::SUCCEEDED, 5, "done")).ok());
  }
  // A restart: a new store on the same file.
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::vector<StoredJob>> recovered =
      store->RecoverAfterRestart("server restarted");
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  ASSERT_EQ(recovered->size(), 2u);
  EXPECT_EQ((*recovered)[0].job.id(), "run");
  EXPECT_EQ((*recovered)[0].job.state(), lpdetr::v1::RUNNING);
  EXPECT_EQ((*recovered)[0].pid, 111);
  EXPECT_EQ((*recovered)[1].job.id(), "cancel");
  EXPECT_EQ((*recovered)[1].job.state(), lpdetr::v1::CANCELLING);
  EXPECT_EQ((*recovered)[1].pid, 222);

  absl::StatusOr<StoredJob> run = store->Get("run");
  ASSERT_TRUE(run.ok());
  EXPECT_EQ(run->job.state(), lpdetr::v1::INTERRUPTED);
  EXPECT_EQ(run->job.failure_reason(), "server restarted");
  EXPECT_EQ(run->pid, 0);
  absl::StatusOr<StoredJob> cancel = store->Get("cancel");
  ASSERT_TRUE(cancel.ok());
  EXPECT_EQ(cancel->job.state(), lpdetr::v1::CANCELLED);
  EXPECT_EQ(cancel->pid, 0);
  EXPECT_GT(cancel->job.finished_at(), 0);
  EXPECT_EQ(store->Get("queued")->job.state(), lpdetr::v1::QUEUED);
  EXPECT_EQ(store->Get("done")->job.state(), lpdetr::v1::SUCCEEDED);

  // Idempotent: nothing left to recover, nothing changes.
  absl::StatusOr<std::vector<StoredJob>> again = store->RecoverAfterRestart("second");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(again->empty());
  EXPECT_EQ(store->Get("run")->job.failure_reason(), "server restarted");
  EXPECT_EQ(store->Get("cancel")->job.state(), lpdetr::v1::CANCELLED);

  absl::StatusOr<std::map<JobState, int64_t>> counts = store->CountByState();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ((*counts)[lpdetr::v1::RUNNING], 0);
  EXPECT_EQ((*counts)[lpdetr::v1::CANCELLING], 0);
  EXPECT_EQ((*counts)[lpdetr::v1::INTERRUPTED], 1);
  EXPECT_EQ((*counts)[lpdetr::v1::CANCELLED], 1);
}

TEST_F(JobStoreTest, CountByStateCountsEveryState) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::map<JobState, int64_t>> empty = store->CountByState();
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->size(), 7u);
  for (const auto& [state, count] : *empty) EXPECT_EQ(count, 0) << state;

  for (int i = 0; i < 3; ++i) ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::QUEUED)).ok());
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::FAILED)).ok());
  ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::SUCCEEDED)).ok());
  absl::StatusOr<std::map<JobState, int64_t>> counts = store->CountByState();
  ASSERT_TRUE(counts.ok());
  EXPECT_EQ(counts->at(lpdetr::v1::QUEUED), 3);
  EXPECT_EQ(counts->at(lpdetr::v1::FAILED), 2);
  EXPECT_EQ(counts->at(lpdetr::v1::SUCCEEDED), 1);
  EXPECT_EQ(counts->at(lpdetr::v1::RUNNING), 0);
}

TEST_F(JobStoreTest, ConcurrentUpdatesAndCreates) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<StoredJob> a = store->Create(MakeJob(lpdetr::v1::RUNNING, 1, "a"));
  absl::StatusOr<StoredJob> b = store->Create(MakeJob(lpdetr::v1::RUNNING, 2, "b"));
  ASSERT_TRUE(a.ok() && b.ok());
  constexpr int kSteps = 150;
  std::atomic<int> failures{0};
  std::vector<std::vector<std::string>> created(2);
  auto work = [&](StoredJob job, int thread) {
    for (int step = 1; step <= kSteps; ++step) {
      job.job.mutable_progress()->set_step(step);
      job.pid = 1000 * (thread + 1) + step;
      if (!store->Update(job).ok()) ++failures;
      absl::StatusOr<StoredJob> made = store->Create(MakeJob(lpdetr::v1::QUEUED));
      if (made.ok()) {
        created[thread].push_back(made->job.id());
      } else {
        ++failures;
      }
    }
  };
  std::thread first(work, *a, 0);
  std::thread second(work, *b, 1);
  first.join();
  second.join();
  EXPECT_EQ(failures.load(), 0);
  absl::StatusOr<StoredJob> got_a = store->Get("a");
  absl::StatusOr<StoredJob> got_b = store->Get("b");
  ASSERT_TRUE(got_a.ok() && got_b.ok());
  EXPECT_EQ(got_a->job.progress().step(), kSteps);
  EXPECT_EQ(got_a->pid, 1000 + kSteps);
  EXPECT_EQ(got_b->job.progress().step(), kSteps);
  EXPECT_EQ(got_b->pid, 2000 + kSteps);
  std::set<std::string> ids(created[0].begin(), created[0].end());
  ids.insert(created[1].begin(), created[1].end());
  EXPECT_EQ(ids.size(), 2u * kSteps);
  absl::StatusOr<std::vector<StoredJob>> queued = store->Queued();
  ASSERT_TRUE(queued.ok());
  EXPECT_EQ(queued->size(), 2u * kSteps);
}

TEST_F(JobStoreTest, NonDatabaseFileIsAnErrorNamingThePath) {
  {
    std::ofstream out(db_path_);
    out << "this is a text file, certainly not an SQLite database.\n";
    for (int i = 0; i < 100; ++i) out << "line " << i << "\n";
  }
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(db_path_);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find(db_path_), std::string::npos) << store.status();
}

TEST_F(JobStoreTest, MissingDirectoryIsAnError) {
  const std::string path = (dir_ / "no-such-dir" / "jobs.db").string();
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find(path), std::string::npos) << store.status();
}

TEST_F(JobStoreTest, NewerSchemaVersionIsFailedPrecondition) {
  {
    std::unique_ptr<JobStore> store = OpenStore();
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::QUEUED, 1, "keep")).ok());
  }
  {
    RawDb raw(db_path_);
    EXPECT_EQ(raw.Query("PRAGMA user_version"), std::to_string(JobStore::kSchemaVersion));
    raw.Query("PRAGMA user_version = " + std::to_string(JobStore::kSchemaVersion + 1));
  }
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(db_path_);
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  // Refusing leaves the database as it was.
  RawDb raw(db_path_);
  EXPECT_EQ(raw.Query("PRAGMA user_version"), std::to_string(JobStore::kSchemaVersion + 1));
  EXPECT_EQ(raw.Query("SELECT COUNT(*) FROM jobs"), "1");
}

TEST_F(JobStoreTest, UsesWalJournalAndCreatesSchema) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  RawDb raw(db_path_);
  EXPECT_EQ(raw.Query("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(raw.Query("PRAGMA user_version"), std::to_string(JobStore::kSchemaVersion));
  EXPECT_EQ(raw.Query("SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND "
                      "tbl_name = 'jobs' AND name NOT LIKE 'sqlite_autoindex%'"),
            "2");
  // Reopening an existing database works and keeps the schema.
  store.reset();
  store = OpenStore();
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->List({}, 0).ok());
}

TEST_F(JobStoreTest, CorruptRecordIsDataLossNamingTheJob) {
  std::unique_ptr<JobStore> store = OpenStore();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::QUEUED, 1, "good")).ok());
  ASSERT_TRUE(store->Create(MakeJob(lpdetr::v1::QUEUED, 2, "broken")).ok());
  {
    RawDb raw(db_path_);
    const std::string id = "broken";
    raw.Query("UPDATE jobs SET record = X'FFFFFFFFFF' WHERE id = ?1", &id);
  }
  absl::StatusOr<StoredJob> got = store->Get("broken");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_NE(got.status().message().find("broken"), std::string::npos);
  absl::StatusOr<std::vector<StoredJob>> listed = store->List({}, 0);
  EXPECT_EQ(listed.status().code(), absl::StatusCode::kDataLoss);
  absl::StatusOr<std::vector<StoredJob>> queued = store->Queued();
  EXPECT_EQ(queued.status().code(), absl::StatusCode::kDataLoss);
  // Other jobs are still readable.
  absl::StatusOr<StoredJob> good = store->Get("good");
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(good->job.id(), "good");
}

}  // namespace
}  // namespace lpdetr::admin

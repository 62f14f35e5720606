#pragma once
// JobStore: the fine-tuning jobs' records, persisted in one SQLite database
// so that a server restart loses no job.
//
// Each job is one row of the table `jobs`: its id, its state and creation
// time (columns, indexed, for filtering and ordering), the serialized public
// record (lpdetr.v1.Job) and what only the server needs (run directory, log
// file, child pid). The `state` column always equals the record's state.
//
// Durability: the database runs in WAL journal mode with synchronous=FULL, so
// a call that returned OK survives a crash of the process or of the machine.
//
// Threading: thread-safe. One SQLite connection, guarded by one mutex; every
// call holds it for its whole duration (calls are short: single-row writes
// and indexed reads). Several processes may open the same file; writers wait
// up to kBusyTimeoutMs for each other's locks.
//
// Knobs (constants below): kSchemaVersion (PRAGMA user_version written on
// creation; a database with a newer version is refused), kBusyTimeoutMs,
// kDefaultListLimit.
//
// Errors: SQLite failures become absl errors carrying sqlite3_errmsg and the
// database path (busy/locked: UNAVAILABLE; constraint: ALREADY_EXISTS; not a
// database: FAILED_PRECONDITION; corrupt: DATA_LOSS; others: INTERNAL). A
// record that fails to parse is DATA_LOSS naming the job id.

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "lpdetr/v1/admin.pb.h"

struct sqlite3;

namespace lpdetr::admin {

// One job as stored: the public record plus what only the server needs.
struct StoredJob {
  // id, state, request, progress, failure_reason, result_version, times,
  // attempts.
  lpdetr::v1::Job job;
  // The lpdetr-train run directory.
  std::string run_dir;
  // The child's log file.
  std::string log_path;
  // The child's pid while RUNNING / CANCELLING, else 0.
  int64_t pid = 0;
};

class JobStore {
 public:
  // The schema this code writes and understands (PRAGMA user_version).
  static constexpr int kSchemaVersion = 1;
  // How long a statement waits for another connection's lock.
  static constexpr int kBusyTimeoutMs = 5000;
  // List's limit when the caller passes <= 0.
  static constexpr int kDefaultListLimit = 100;

  // Opens or creates the database at `path` (its parent directory must
  // exist): WAL journal, synchronous=FULL, busy timeout, schema created on
  // first use. A database with a newer schema version than kSchemaVersion is
  // FAILED_PRECONDITION; a file that is not a database is an error naming
  // the path.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);

  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // The database file this store was opened on.
  const std::string& path() const { return path_; }

  // Inserts a new job and returns it as stored. Assigns job.id when empty
  // ("j-" + UTC yyyymmdd-hhmmss + "-" + 6 hex digits: unique, URL-safe and,
  // for ids made by one store, sortable by creation) and job.created_at
  // (unix seconds) when 0. ALREADY_EXISTS for a duplicate id.
  absl::StatusOr<StoredJob> Create(StoredJob job);

  // Replaces the stored job with the same id (every field, the state column
  // included). INVALID_ARGUMENT for an empty id; NOT_FOUND when absent.
  absl::Status Update(const StoredJob& job);

  // The job with this id. NOT_FOUND naming the id.
  absl::StatusOr<StoredJob> Get(const std::string& id);

  // Jobs newest first (by created_at, then id); `states` empty means every
  // state; limit <= 0 means kDefaultListLimit.
  absl::StatusOr<std::vector<StoredJob>> List(
      const std::vector<lpdetr::v1::JobState>& states, int limit);

  // QUEUED jobs, oldest first (the run order).
  absl::StatusOr<std::vector<StoredJob>> Queued();

  // For server start, in one transaction: every RUNNING job becomes
  // INTERRUPTED with `reason` as failure_reason; every CANCELLING job becomes
  // CANCELLED (the user asked it to stop) with finished_at set. Both get pid
  // 0. Returns the affected jobs as they were before (with their pids, so the
  // caller can kill leftover children), oldest first. A second call finds
  // nothing to do and returns an empty list.
  absl::StatusOr<std::vector<StoredJob>> RecoverAfterRestart(
      const std::string& reason);

  // Number of jobs per state, for metrics. Every state from QUEUED to
  // INTERRUPTED is present (0 when no job is in it).
  absl::StatusOr<std::map<lpdetr::v1::JobState, int64_t>> CountByState();

 private:
  JobStore(std::string path, sqlite3* db, uint64_t seed);

  // Creates the schema when user_version is older than kSchemaVersion.
  absl::Status InitSchema() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A fresh id for a job created at unix time `now`.
  std::string NewId(int64_t now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  // The second of the last generated id and its hex suffix: ids made in the
  // same second get increasing suffixes, so they sort in creation order.
  int64_t last_id_second_ ABSL_GUARDED_BY(mu_) = -1;
  uint32_t last_id_suffix_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace lpdetr::admin

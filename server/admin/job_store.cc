#include "server/admin/job_store.h"

#include <sqlite3.h>

#include <cstdio>
#include <ctime>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace lpdetr::admin {
namespace {

using lpdetr::v1::Job;
using lpdetr::v1::JobState;

// The columns every row read selects, in the order ReadRow expects.
constexpr char kColumns[] = "id, state, record, run_dir, log_path, pid";

constexpr char kUpdateSql[] =
    "UPDATE jobs SET state = ?1, created_at = ?2, record = ?3, run_dir = ?4, "
    "log_path = ?5, pid = ?6 WHERE id = ?7";

// The absl code for an SQLite result code.
absl::StatusCode CodeFor(int rc) {
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::StatusCode::kUnavailable;
    case SQLITE_CONSTRAINT:
      return (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE)
                 ? absl::StatusCode::kAlreadyExists
                 : absl::StatusCode::kInvalidArgument;
    case SQLITE_NOTADB:
    case SQLITE_CANTOPEN:
      return absl::StatusCode::kFailedPrecondition;
    case SQLITE_CORRUPT:
      return absl::StatusCode::kDataLoss;
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return absl::StatusCode::kPermissionDenied;
    case SQLITE_NOMEM:
    case SQLITE_FULL:
      return absl::StatusCode::kResourceExhausted;
    default:
      return absl::StatusCode::kInternal;
  }
}

// The error for a failed SQLite call `rc` while doing `what` on the database
// at `path`, with the connection's message.
absl::Status SqliteError(sqlite3* db, int rc, absl::string_view what,
                         const std::string& path) {
  const char* message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return absl::Status(CodeFor(rc), absl::StrCat("job store ", path, ": ", what,
                                                ": ", message));
}

// One prepared statement: binds parameters, steps through rows, finalizes on
// destruction. The first failure (prepare or bind) is kept and reported by
// Step.
class Statement {
 public:
  Statement(sqlite3* db, const std::string& path, absl::string_view sql)
      : db_(db), path_(path), sql_(sql) {
    rc_ = sqlite3_prepare_v2(db_, sql_.data(), static_cast<int>(sql_.size()),
                             &stmt_, nullptr);
    if (rc_ != SQLITE_OK) status_ = SqliteError(db_, rc_, Context("prepare"), path_);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  void BindInt(int index, int64_t value) {
    if (status_.ok()) Check(sqlite3_bind_int64(stmt_, index, value), "bind");
  }
  void BindText(int index, const std::string& value) {
    if (status_.ok()) {
      Check(sqlite3_bind_text(stmt_, index, value.data(),
                              static_cast<int>(value.size()), SQLITE_TRANSIENT),
            "bind");
    }
  }
  void BindBlob(int index, const std::string& value) {
    if (status_.ok()) {
      Check(sqlite3_bind_blob(stmt_, index, value.data(),
                              static_cast<int>(value.size()), SQLITE_TRANSIENT),
            "bind");
    }
  }

  // true: a row is ready to read; false: the statement is done.
  absl::StatusOr<bool> Step() {
    if (!status_.ok()) return status_;
    rc_ = sqlite3_step(stmt_);
    if (rc_ == SQLITE_ROW) return true;
    if (rc_ == SQLITE_DONE) return false;
    status_ = SqliteError(db_, rc_, Context("step"), path_);
    return status_;
  }
  // Steps a statement that returns no rows.
  absl::Status Run() {
    absl::StatusOr<bool> row = Step();
    return row.ok() ? absl::OkStatus() : row.status();
  }
  // The result code of the last step (to tell constraint failures apart).
  int last_rc() const { return rc_; }

  int64_t ColumnInt(int column) { return sqlite3_column_int64(stmt_, column); }
  std::string ColumnText(int column) {
    const unsigned char* text = sqlite3_column_text(stmt_, column);
    const int size = sqlite3_column_bytes(stmt_, column);
    return text == nullptr ? std::string()
                           : std::string(reinterpret_cast<const char*>(text), size);
  }
  // The blob's bytes (valid until the next step).
  absl::string_view ColumnBlob(int column) {
    const void* data = sqlite3_column_blob(stmt_, column);
    const int size = sqlite3_column_bytes(stmt_, column);
    return data == nullptr ? absl::string_view()
                           : absl::string_view(static_cast<const char*>(data), size);
  }

 private:
  std::string Context(absl::string_view action) const {
    return absl::StrCat(action, " \"", sql_, "\"");
  }
  void Check(int rc, absl::string_view action) {
    if (rc != SQLITE_OK) {
      rc_ = rc;
      status_ = SqliteError(db_, rc, Context(action), path_);
    }
  }

  sqlite3* db_;
  const std::string& path_;
  const std::string sql_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_OK;
  absl::Status status_;
};

// Runs a statement without parameters or wanted rows.
absl::Status Exec(sqlite3* db, const std::string& path, absl::string_view sql) {
  Statement statement(db, path, sql);
  return statement.Run();
}

// Reads the single integer a PRAGMA query returns.
absl::StatusOr<int64_t> PragmaInt(sqlite3* db, const std::string& path,
                                  absl::string_view sql) {
  Statement statement(db, path, sql);
  absl::StatusOr<bool> row = statement.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::InternalError(absl::StrCat("job store ", path, ": \"", sql,
                                                     "\" returned no row"));
  return statement.ColumnInt(0);
}

// A write transaction (BEGIN IMMEDIATE) that rolls back unless committed.
class Transaction {
 public:
  Transaction(sqlite3* db, const std::string& path) : db_(db), path_(path) {}
  ~Transaction() {
    if (open_) Exec(db_, path_, "ROLLBACK").IgnoreError();
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  absl::Status Begin() {
    absl::Status status = Exec(db_, path_, "BEGIN IMMEDIATE");
    open_ = status.ok();
    return status;
  }
  absl::Status Commit() {
    absl::Status status = Exec(db_, path_, "COMMIT");
    if (status.ok()) open_ = false;
    return status;
  }

 private:
  sqlite3* db_;
  const std::string& path_;
  bool open_ = false;
};

// The row the statement stands on (columns as in kColumns) as a StoredJob.
// DATA_LOSS naming the id when the record does not parse or disagrees with
// its columns.
absl::StatusOr<StoredJob> ReadRow(Statement& statement) {
  const std::string id = statement.ColumnText(0);
  const int64_t state = statement.ColumnInt(1);
  const absl::string_view record = statement.ColumnBlob(2);
  StoredJob stored;
  if (!stored.job.ParseFromArray(record.data(), static_cast<int>(record.size()))) {
    return absl::DataLossError(absl::StrCat("job '", id, "': its stored record (",
                                            record.size(),
                                            " bytes) is not a valid lpdetr.v1.Job"));
  }
  if (stored.job.id() != id || static_cast<int64_t>(stored.job.state()) != state) {
    return absl::DataLossError(absl::StrCat(
        "job '", id, "': its stored record (id '", stored.job.id(), "', state ",
        stored.job.state(), ") disagrees with its row (state ", state, ")"));
  }
  stored.run_dir = statement.ColumnText(3);
  stored.log_path = statement.ColumnText(4);
  stored.pid = statement.ColumnInt(5);
  return stored;
}

// Steps through every row of `statement` and reads each.
absl::StatusOr<std::vector<StoredJob>> ReadRows(Statement& statement) {
  std::vector<StoredJob> jobs;
  while (true) {
    absl::StatusOr<bool> row = statement.Step();
    if (!row.ok()) return row.status();
    if (!*row) return jobs;
    absl::StatusOr<StoredJob> job = ReadRow(statement);
    if (!job.ok()) return job.status();
    jobs.push_back(*std::move(job));
  }
}

// Binds `job` to the parameters of kUpdateSql (or the INSERT, which uses the
// same numbering).
absl::Status BindJob(Statement& statement, const StoredJob& job) {
  std::string record;
  if (!job.job.SerializeToString(&record)) {
    return absl::InternalError(
        absl::StrCat("job '", job.job.id(), "': its record does not serialize"));
  }
  statement.BindInt(1, job.job.state());
  statement.BindInt(2, job.job.created_at());
  statement.BindBlob(3, record);
  statement.BindText(4, job.run_dir);
  statement.BindText(5, job.log_path);
  statement.BindInt(6, job.pid);
  statement.BindText(7, job.job.id());
  return absl::OkStatus();
}

// Rewrites the row of `job`. NOT_FOUND when there is none.
absl::Status UpdateRow(sqlite3* db, const std::string& path, const StoredJob& job) {
  Statement statement(db, path, kUpdateSql);
  if (absl::Status status = BindJob(statement, job); !status.ok()) return status;
  if (absl::Status status = statement.Run(); !status.ok()) return status;
  if (sqlite3_changes(db) == 0) {
    return absl::NotFoundError(absl::StrCat("job '", job.job.id(), "' not found"));
  }
  return absl::OkStatus();
}

// "yyyymmdd-hhmmss" of unix time `seconds` in UTC.
std::string UtcStamp(int64_t seconds) {
  const std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buffer[32];
  std::strftime(buffer, sizeof(buffer), "%Y%m%d-%H%M%S", &tm);
  return buffer;
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(path.c_str(), &db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = SqliteError(db, rc, "open", path);
    sqlite3_close_v2(db);
    return status;
  }
  sqlite3_extended_result_codes(db, 1);
  std::random_device entropy;
  const uint64_t seed = (static_cast<uint64_t>(entropy()) << 32) ^ entropy() ^
                        static_cast<uint64_t>(std::time(nullptr));
  std::unique_ptr<JobStore> store(new JobStore(path, db, seed));

  absl::MutexLock lock(&store->mu_);
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  // The first read: a file that is not a database fails here.
  absl::StatusOr<int64_t> version = PragmaInt(db, path, "PRAGMA user_version");
  if (!version.ok()) return version.status();
  if (*version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job store ", path, ": schema version ", *version,
        " is newer than this server's (", kSchemaVersion, ")"));
  }
  {
    Statement statement(db, path, "PRAGMA journal_mode=WAL");
    absl::StatusOr<bool> row = statement.Step();
    if (!row.ok()) return row.status();
    const std::string mode = *row ? statement.ColumnText(0) : std::string();
    if (mode != "wal") {
      return absl::FailedPreconditionError(absl::StrCat(
          "job store ", path, ": cannot use the WAL journal (journal mode is '",
          mode, "')"));
    }
  }
  if (absl::Status status = Exec(db, path, "PRAGMA synchronous=FULL"); !status.ok()) {
    return status;
  }
  if (absl::Status status = store->InitSchema(); !status.ok()) return status;
  return store;
}

JobStore::JobStore(std::string path, sqlite3* db, uint64_t seed)
    : path_(std::move(path)), db_(db), rng_(seed) {}

JobStore::~JobStore() { sqlite3_close_v2(db_); }

absl::Status JobStore::InitSchema() {
  Transaction transaction(db_, path_);
  if (absl::Status status = transaction.Begin(); !status.ok()) return status;
  // Read again inside the transaction: another process may have just
  // created the schema.
  absl::StatusOr<int64_t> version = PragmaInt(db_, path_, "PRAGMA user_version");
  if (!version.ok()) return version.status();
  if (*version >= kSchemaVersion) return transaction.Commit();
  static constexpr const char* kSchema[] = {
      "CREATE TABLE IF NOT EXISTS jobs ("
      " id TEXT PRIMARY KEY,"
      " state INTEGER NOT NULL,"
      " created_at INTEGER NOT NULL,"
      " record BLOB NOT NULL,"
      " run_dir TEXT NOT NULL,"
      " log_path TEXT NOT NULL,"
      " pid INTEGER NOT NULL)",
      "CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state)",
      "CREATE INDEX IF NOT EXISTS jobs_created_at ON jobs(created_at)",
  };
  for (const char* sql : kSchema) {
    if (absl::Status status = Exec(db_, path_, sql); !status.ok()) return status;
  }
  // PRAGMA takes no bound parameters; the value is this code's constant.
  const std::string set_version = absl::StrCat("PRAGMA user_version = ", kSchemaVersion);
  if (absl::Status status = Exec(db_, path_, set_version); !status.ok()) return status;
  return transaction.Commit();
}

std::string JobStore::NewId(int64_t now) {
  constexpr uint32_t kSuffixLimit = 0x1000000;  // 6 hex digits
  if (now != last_id_second_ || last_id_suffix_ + 16 >= kSuffixLimit) {
    // A new second starts in the lower half, leaving room to count up.
    last_id_suffix_ = static_cast<uint32_t>(rng_() % (kSuffixLimit / 2));
  } else {
    last_id_suffix_ += 1 + static_cast<uint32_t>(rng_() % 15);
  }
  last_id_second_ = now;
  char suffix[8];
  std::snprintf(suffix, sizeof(suffix), "%06x", last_id_suffix_);
  return absl::StrCat("j-", UtcStamp(now), "-", suffix);
}

absl::StatusOr<StoredJob> JobStore::Create(StoredJob job) {
  absl::MutexLock lock(&mu_);
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  if (job.job.created_at() == 0) job.job.set_created_at(now);
  const bool assign_id = job.job.id().empty();
  // A generated id collides only with a job made by another store in the same
  // second; a few fresh tries settle that.
  constexpr int kTries = 8;
  for (int attempt = 0;; ++attempt) {
    if (assign_id) job.job.set_id(NewId(now));
    Statement statement(
        db_, path_,
        "INSERT INTO jobs (state, created_at, record, run_dir, log_path, pid, id) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    if (absl::Status status = BindJob(statement, job); !status.ok()) return status;
    absl::Status status = statement.Run();
    if (status.ok()) return job;
    if (statement.last_rc() != SQLITE_CONSTRAINT_PRIMARYKEY) return status;
    if (!assign_id || attempt + 1 >= kTries) {
      return absl::AlreadyExistsError(
          absl::StrCat("job '", job.job.id(), "' already exists"));
    }
  }
}

absl::Status JobStore::Update(const StoredJob& job) {
  if (job.job.id().empty()) return absl::InvalidArgumentError("job id is empty");
  absl::MutexLock lock(&mu_);
  return UpdateRow(db_, path_, job);
}

absl::StatusOr<StoredJob> JobStore::Get(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Statement statement(db_, path_,
                      absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = ?1"));
  statement.BindText(1, id);
  absl::StatusOr<bool> row = statement.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(absl::StrCat("job '", id, "' not found"));
  return ReadRow(statement);
}

absl::StatusOr<std::vector<StoredJob>> JobStore::List(
    const std::vector<JobState>& states, int limit) {
  if (limit <= 0) limit = kDefaultListLimit;
  const std::set<JobState> wanted(states.begin(), states.end());
  // Only placeholders are added to the text; the states are bound.
  std::string sql = absl::StrCat("SELECT ", kColumns, " FROM jobs");
  if (!wanted.empty()) {
    sql += " WHERE state IN (";
    for (size_t i = 0; i < wanted.size(); ++i) sql += i == 0 ? "?" : ", ?";
    sql += ")";
  }
  sql += " ORDER BY created_at DESC, id DESC LIMIT ?";
  absl::MutexLock lock(&mu_);
  Statement statement(db_, path_, sql);
  int index = 1;
  for (JobState state : wanted) statement.BindInt(index++, state);
  statement.BindInt(index, limit);
  return ReadRows(statement);
}

absl::StatusOr<std::vector<StoredJob>> JobStore::Queued() {
  absl::MutexLock lock(&mu_);
  Statement statement(db_, path_,
                      absl::StrCat("SELECT ", kColumns,
                                   " FROM jobs WHERE state = ?1"
                                   " ORDER BY created_at ASC, id ASC"));
  statement.BindInt(1, lpdetr::v1::QUEUED);
  return ReadRows(statement);
}

absl::StatusOr<std::vector<StoredJob>> JobStore::RecoverAfterRestart(
    const std::string& reason) {
  absl::MutexLock lock(&mu_);
  Transaction transaction(db_, path_);
  if (absl::Status status = transaction.Begin(); !status.ok()) return status;
  absl::StatusOr<std::vector<StoredJob>> before;
  {
    Statement statement(db_, path_,
                        absl::StrCat("SELECT ", kColumns,
                                     " FROM jobs WHERE state IN (?1, ?2)"
                                     " ORDER BY created_at ASC, id ASC"));
    statement.BindInt(1, lpdetr::v1::RUNNING);
    statement.BindInt(2, lpdetr::v1::CANCELLING);
    before = ReadRows(statement);
  }
  if (!before.ok()) return before.status();
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  for (const StoredJob& old : *before) {
    StoredJob recovered = old;
    if (old.job.state() == lpdetr::v1::CANCELLING) {
      recovered.job.set_state(lpdetr::v1::CANCELLED);
      recovered.job.set_finished_at(now);
    } else {
      recovered.job.set_state(lpdetr::v1::INTERRUPTED);
      recovered.job.set_failure_reason(reason);
    }
    recovered.pid = 0;
    if (absl::Status status = UpdateRow(db_, path_, recovered); !status.ok()) {
      return status;
    }
  }
  if (absl::Status status = transaction.Commit(); !status.ok()) return status;
  return before;
}

absl::StatusOr<std::map<JobState, int64_t>> JobStore::CountByState() {
  std::map<JobState, int64_t> counts;
  for (int state = lpdetr::v1::QUEUED; state <= lpdetr::v1::INTERRUPTED; ++state) {
    if (lpdetr::v1::JobState_IsValid(state)) counts[static_cast<JobState>(state)] = 0;
  }
  absl::MutexLock lock(&mu_);
  Statement statement(db_, path_, "SELECT state, COUNT(*) FROM jobs GROUP BY state");
  while (true) {
    absl::StatusOr<bool> row = statement.Step();
    if (!row.ok()) return row.status();
    if (!*row) return counts;
    const int64_t state = statement.ColumnInt(0);
    if (lpdetr::v1::JobState_IsValid(static_cast<int>(state))) {
      counts[static_cast<JobState>(state)] = statement.ColumnInt(1);
    }
  }
}

}  // namespace lpdetr::admin

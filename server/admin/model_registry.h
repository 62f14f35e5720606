// ModelRegistry: a versioned store of model directories on disk. Fine-tuning
// jobs add versions to it and the server serves the ACTIVE one.
//
// Layout under the root:
//   <name>/<version>/               a model directory (config.json, weights,
//                                   labels.txt, ...) plus registry.json
//                                   {"job_id", "created_at" (unix s), "eval_ap"}
//   <name>/ACTIVE                   the active version, one line
//   <name>/HISTORY                  previously active versions, most recent last
//   <name>/NEXT_VERSION             the next version number to hand out
//   <name>/.tmp-*                   work in progress; removed by Open
//   DEFAULT                         the model name the server serves by
//                                   default (its ACTIVE version), one line
//
// Versions are "1", "2", ... in order of registration and are never reused,
// even after a delete. Every change is atomic on disk: a version is copied
// into a .tmp- directory, fsynced and renamed to its number; small files are
// written to a temp file, fsynced and renamed; the containing directory is
// fsynced after each rename. A crash leaves either the old or the new state
// (plus .tmp- leftovers that the next Open removes).
//
// Threading: all methods are thread-safe. One absl::Mutex serialises the
// mutations (version assignment, ACTIVE, HISTORY, deletes) and is held shared
// by the reads. Copying a registered directory happens outside the lock, so
// registrations of large models do not block readers. One process owns a
// root at a time (Open removes other writers' .tmp- work).
//
// Knobs: kMaxHistory bounds HISTORY (oldest entries dropped).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace lpdetr::admin {

// One registered version as seen by List/Get.
struct ModelVersionInfo {
  std::string name;
  std::string version;
  std::string path;  // <root>/<name>/<version>
  std::string job_id;
  int64_t created_at = 0;  // unix seconds
  double eval_ap = -1;     // -1 when not evaluated
  // Class names, index = label id: labels.txt when present, else config.json.
  std::vector<std::string> classes;
  bool active = false;
};

class ModelRegistry {
 public:
  // HISTORY keeps at most this many entries.
  static constexpr size_t kMaxHistory = 100;

  // Opens (creating if missing) the registry at `root` and removes .tmp-
  // leftovers of interrupted operations. INVALID_ARGUMENT if `root` exists
  // and is not a directory.
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Open(const std::string& root);

  // A model name is 1..64 characters of [A-Za-z0-9._-] and does not start
  // with '.'. INVALID_ARGUMENT naming it otherwise.
  static absl::Status ValidateName(std::string_view name);

  // Copies `model_dir` (which must hold config.json, else INVALID_ARGUMENT)
  // into a new version of `name` with a registry.json, and returns it. The
  // version becomes visible only once complete; it is not made active.
  absl::StatusOr<ModelVersionInfo> Register(std::string_view name, const std::string& model_dir,
                                            std::string_view job_id, double eval_ap);

  // The versions of `name` in numeric order; an empty name lists every model
  // (models sorted by name). NOT_FOUND for an unknown model.
  absl::StatusOr<std::vector<ModelVersionInfo>> List(std::string_view name);

  // One version; NOT_FOUND naming the model and version when absent.
  absl::StatusOr<ModelVersionInfo> Get(std::string_view name, std::string_view version);

  // The active version of `name`; NOT_FOUND when there is none.
  absl::StatusOr<std::string> ActiveVersion(std::string_view name);

  // The registered model names, sorted.
  std::vector<std::string> ModelNames();

  // Makes `version` active and appends the previously active version to
  // HISTORY. Activating the active version changes nothing.
  absl::Status SetActive(std::string_view name, std::string_view version);

  // The version a rollback would activate: the most recent HISTORY entry that
  // still exists and differs from the active one. FAILED_PRECONDITION if none.
  absl::StatusOr<std::string> RollbackTarget(std::string_view name);

  // Activates RollbackTarget(name) and drops it and the entries after it from
  // HISTORY (the version rolled back from is not appended). Returns it.
  absl::StatusOr<std::string> Rollback(std::string_view name);

  // Removes a version: FAILED_PRECONDITION for the active one, NOT_FOUND for
  // an unknown one. It is renamed away first, so it vanishes atomically.
  absl::Status Delete(std::string_view name, std::string_view version);

  // The model the server serves to requests that name none: its name is
  // written to DEFAULT (atomically). NOT_FOUND unless `name` has an ACTIVE
  // version.
  absl::Status SetDefaultModel(std::string_view name);
  // The DEFAULT model's name and its active version; NOT_FOUND when DEFAULT
  // is missing or names a model without an active version.
  absl::StatusOr<std::pair<std::string, std::string>> DefaultModel();

  const std::string& root() const { return root_; }

 private:
  explicit ModelRegistry(std::string root) : root_(std::move(root)) {}

  std::string ModelDir(std::string_view name) const;
  std::string VersionDir(std::string_view name, std::string_view version) const;

  absl::StatusOr<ModelVersionInfo> ReadVersion(std::string_view name, std::string_view version)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<ModelVersionInfo>> ListModel(std::string_view name)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The ACTIVE version, or "" when none.
  absl::StatusOr<std::string> ReadActive(std::string_view name) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<std::string>> ReadHistory(std::string_view name)
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status WriteHistory(std::string_view name, std::vector<std::string> history)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // HISTORY and the index in it of the rollback target: the most recent
  // entry that still exists and differs from ACTIVE.
  struct RollbackPlan {
    std::vector<std::string> history;
    size_t target = 0;
  };
  // The plan shared by RollbackTarget and Rollback; FAILED_PRECONDITION when
  // there is nothing to roll back to.
  absl::StatusOr<RollbackPlan> PlanRollback(std::string_view name) ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::string> AssignVersion(std::string_view name)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string root_;
  // Guards the registry's tree on disk (no in-memory state besides).
  absl::Mutex mu_;
};

}  // namespace lpdetr::admin

// JobManager runs fine-tuning jobs for AdminService.
//
// A job is one `lpdetr-train` child process. The manager records every job
// in the JobStore (so a restart loses none), starts at most
// `max_concurrent_jobs` children at a time in creation order, follows their
// progress (the JSON lines lpdetr-train prints with `--progress json`), and
// when a child succeeds registers the run's model (its best/ model when the
// job had a validation split, else model/) as a new version of the job's
// output model in the ModelRegistry. Nothing is activated here.
//
// States (lpdetr.v1.JobState): QUEUED -> RUNNING -> SUCCEEDED | FAILED;
// CancelJob: QUEUED -> CANCELLED, RUNNING -> CANCELLING (SIGTERM; the child
// writes a checkpoint; SIGKILL after `cancel_grace`) -> CANCELLED; a server
// stop (Stop(), or a crash found on the next Create) leaves running jobs
// INTERRUPTED; Resume() queues an INTERRUPTED, CANCELLED or FAILED job
// again, continuing from its last checkpoint when it has one.
//
// Files: `jobs_dir/<id>/` holds the run directory `run/`, the child's log
// `job.log` (stdout and stderr) and `command.json` (the lpdetr-train
// arguments, written before the job is queued).
//
// Children get `nice` and `--threads threads_per_job`, so serving keeps most
// of the CPU, and PR_SET_PDEATHSIG: they are started from the manager's own
// scheduler thread, which lives as long as the manager.
//
// Threading: thread-safe. One scheduler thread starts children, reaps them,
// enforces cancel deadlines and writes step progress to the store at most
// every `persist_interval`; the children's reader threads update progress in
// memory. One mutex guards the in-memory state and every state transition
// (store writes included, which are short); model registration (a copy)
// runs outside it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lpdetr/v1/admin.pb.h"
#include "server/admin/child_process.h"
#include "server/admin/job_store.h"
#include "server/admin/model_registry.h"

namespace lpdetr::admin {

// What a job trains, with the request's paths already resolved (absolute and
// confined by the caller).
struct FineTuneSpec {
  // As the user sent it; kept in the job's record.
  lpdetr::v1::StartFineTuneRequest request;
  // The model directory to start from.
  std::string base_model_dir;
  std::string train_annotations;
  std::string train_images;
  std::string val_annotations;  // both empty: no validation split
  std::string val_images;
};

// One observation of a job for WatchJob.
struct JobSnapshot {
  lpdetr::v1::Job job;
  // Increases with every change of this job; pass it back to WaitForChange.
  int64_t sequence = 0;
  // What changed last: "state", "step", "eval", "checkpoint" or "log".
  std::string kind = "state";
  std::string message;
};

// A running job, for metrics.
struct RunningJobStats {
  std::string id;
  std::string output_model;
  lpdetr::v1::JobProgress progress;
};

struct JobStats {
  std::map<lpdetr::v1::JobState, int64_t> by_state;
  std::vector<RunningJobStats> running;
};

class JobManager {
 public:
  struct Options {
    // The lpdetr-train executable (required).
    std::string train_binary;
    // Where the jobs' folders go (required; created if missing).
    std::string jobs_dir;
    // Children running at once; further jobs wait QUEUED.
    int max_concurrent_jobs = 1;
    // lpdetr-train --threads of each child.
    int threads_per_job = 1;
    // Niceness added to each child (0..19).
    int nice = 10;
    // CancelJob and Stop(): SIGTERM, then SIGKILL after this long.
    absl::Duration cancel_grace = absl::Seconds(60);
    // Step progress reaches the store at most this often (state changes,
    // evaluations and checkpoints at once).
    absl::Duration persist_interval = absl::Seconds(2);
    // How often the scheduler looks at its children.
    absl::Duration poll_interval = absl::Milliseconds(100);
    // Validates the fields (INVALID_ARGUMENT naming the bad one).
    absl::Status Validate() const;
  };

  // Recovers from a previous server's stop: jobs the store has as RUNNING
  // become INTERRUPTED (their leftover children get SIGTERM), CANCELLING
  // ones CANCELLED. Then starts the scheduler.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(
      Options options, std::shared_ptr<JobStore> store, std::shared_ptr<ModelRegistry> registry);

  // Stop().
  ~JobManager();
  JobManager(const JobManager&) = delete;
  JobManager& operator=(const JobManager&) = delete;

  // Stops the scheduler: running children get SIGTERM (SIGKILL after
  // cancel_grace) and their jobs become INTERRUPTED; queued jobs stay
  // QUEUED for the next server. Idempotent.
  void Stop();

  // Checks the parameters, writes the job's folder and queues it.
  // INVALID_ARGUMENT for a bad parameter (a flag the server sets itself in
  // `extra`, an unknown precision, a bad output name, ...).
  absl::StatusOr<lpdetr::v1::Job> Start(const FineTuneSpec& spec);
  // NOT_FOUND for an unknown id.
  absl::StatusOr<lpdetr::v1::Job> Get(const std::string& id);
  absl::StatusOr<std::vector<lpdetr::v1::Job>> List(
      const std::vector<lpdetr::v1::JobState>& states, int limit);
  // FAILED_PRECONDITION for a finished job.
  absl::StatusOr<lpdetr::v1::Job> Cancel(const std::string& id);
  // FAILED_PRECONDITION unless INTERRUPTED, CANCELLED or FAILED.
  absl::StatusOr<lpdetr::v1::Job> Resume(const std::string& id);

  // The job once its sequence number exceeds `seen` (at once for seen = 0),
  // or as it is at `deadline` (same sequence) when nothing changed.
  absl::StatusOr<JobSnapshot> WaitForChange(const std::string& id, int64_t seen,
                                            absl::Time deadline);

  // The last `lines` lines of the job's log; `truncated` when older lines
  // exist.
  absl::StatusOr<std::vector<std::string>> LogTail(const std::string& id, int lines,
                                                   bool* truncated);

  absl::StatusOr<JobStats> Stats();

  // Whether a state is final (SUCCEEDED, FAILED, CANCELLED).
  static bool IsFinal(lpdetr::v1::JobState state);

  // Told of every transition this manager makes into SUCCEEDED, FAILED,
  // CANCELLED or INTERRUPTED, once each, with the job as recorded (an
  // INTERRUPTED job has finished_at 0; one that never started, started_at
  // 0). Not told of those Create() recovers: they ended in an earlier
  // process. Called on the thread making the transition, with the manager's
  // lock held: it must be quick and must not call the manager.
  using EndListener = std::function<void(const lpdetr::v1::Job& job)>;
  // Replaces the listener (nullptr: none); once it returns, the old one is
  // not running and is never called again.
  void SetEndListener(EndListener listener);

  // The lpdetr-train arguments (after the program name) that train `spec`
  // into `run_dir` with `threads` threads. Exposed for tests.
  static absl::StatusOr<std::vector<std::string>> TrainArguments(const FineTuneSpec& spec,
                                                                 const std::string& run_dir,
                                                                 int threads);

 private:
  struct Running;

  JobManager(Options options, std::shared_ptr<JobStore> store,
             std::shared_ptr<ModelRegistry> registry);

  void SchedulerLoop();
  // One pass of the scheduler; each step takes the lock itself.
  void ReapFinished();
  void EnforceCancelDeadlines();
  void PersistProgress();
  void StartQueued();
  // Starts the child of a QUEUED job (holding mu_) and marks it RUNNING; on
  // failure marks it FAILED.
  void StartJobLocked(StoredJob job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The final state of a job whose child exited with `status`.
  void FinishJob(const std::string& id, const ExitStatus& status);
  // Stop's work on the scheduler thread: terminate and record children.
  void ShutDownChildren();
  // A progress line from job `id`'s child (its reader thread).
  void OnProgressLine(const std::string& id, std::string_view line);
  void Touch(const std::string& id, const std::string& kind, const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The job's record: the live one while it runs, else the store's.
  absl::StatusOr<StoredJob> LoadLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SaveLocked(const StoredJob& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void NotifyEndLocked(const lpdetr::v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  const std::shared_ptr<JobStore> store_;
  const std::shared_ptr<ModelRegistry> registry_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, std::unique_ptr<Running>> running_ ABSL_GUARDED_BY(mu_);
  EndListener end_listener_ ABSL_GUARDED_BY(mu_);
  // Per job: its sequence number and what changed last.
  struct Change {
    int64_t sequence = 1;
    std::string kind = "state";
    std::string message;
  };
  std::map<std::string, Change> changes_ ABSL_GUARDED_BY(mu_);
  absl::CondVar changed_;

  absl::Mutex stop_mu_;
  bool stopped_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread scheduler_;
};

}  // namespace lpdetr::admin

#include "server/admin/job_manager.h"

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "server/admin/atomic_file.h"

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;
using lpdetr::v1::Job;
using lpdetr::v1::JobState;

constexpr const char* kCommandFile = "command.json";
constexpr const char* kLogFile = "job.log";
constexpr const char* kRunDir = "run";

// Flags the manager sets itself; `extra` may not name them.
const std::set<std::string>& ReservedFlags() {
  static const std::set<std::string> flags = {
      "train-annotations", "train-images", "val-annotations", "val-images", "model",
      "config",            "output",       "threads",         "progress",   "workers"};
  return flags;
}

int64_t NowSeconds() { return absl::ToUnixSeconds(absl::Now()); }

std::string JoinNumbers(const google::protobuf::RepeatedField<int32_t>& values) {
  return absl::StrJoin(values.begin(), values.end(), ",");
}

std::string FormatDouble(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

bool ValidFlagName(const std::string& name) {
  if (name.empty() || name.size() > 64 || name.front() == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

absl::StatusOr<std::vector<std::string>> ReadCommand(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("the job's command file ", path.string(),
                                                   " is missing"));
  try {
    nlohmann::json j = nlohmann::json::parse(in);
    return j.at("arguments").get<std::vector<std::string>>();
  } catch (const std::exception& e) {
    return absl::DataLossError(absl::StrCat("the job's command file ", path.string(),
                                            " is unreadable: ", e.what()));
  }
}

// The last `lines` lines of a text file (reads at most its last 4 MiB).
std::vector<std::string> TailLines(const fs::path& path, int lines, bool* truncated) {
  *truncated = false;
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  constexpr std::streamoff kWindow = 4 << 20;
  const std::streamoff start = std::max<std::streamoff>(0, size - kWindow);
  in.seekg(start);
  std::string data(static_cast<size_t>(size - start), '\0');
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  std::vector<std::string> all;
  std::istringstream is(data);
  for (std::string line; std::getline(is, line);) all.push_back(line);
  if (start > 0 && !all.empty()) all.erase(all.begin());  // a partial first line
  if (static_cast<int>(all.size()) > lines) {
    *truncated = true;
    all.erase(all.begin(), all.end() - lines);
  } else if (start > 0) {
    *truncated = true;
  }
  return all;
}

// The last non-empty line of the log that is not a JSON progress line: what
// lpdetr-train printed about an error.
std::string LastLogMessage(const fs::path& log) {
  bool truncated = false;
  const std::vector<std::string> lines = TailLines(log, 50, &truncated);
  for (auto it = lines.rbegin(); it != lines.rend(); ++it) {
    if (it->empty() || it->front() == '{') continue;
    return *it;
  }
  return "";
}

bool ProcessMatches(int64_t pid, const std::string& needle) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  if (!in) return false;
  std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return cmdline.find(needle) != std::string::npos;
}

// A leftover child of a previous server that died. Children are started
// with a parent-death SIGTERM, so it is already writing its checkpoint: a
// second SIGTERM would make lpdetr-train stop without it. It gets `grace` to
// finish, then SIGKILL.
void StopLeftover(int64_t pid, const std::string& run_dir, absl::Duration grace) {
  if (pid <= 0 || !ProcessMatches(pid, run_dir)) return;
  const absl::Time deadline = absl::Now() + grace;
  while (absl::Now() < deadline && ProcessMatches(pid, run_dir)) {
    absl::SleepFor(absl::Milliseconds(100));
  }
  if (ProcessMatches(pid, run_dir)) kill(static_cast<pid_t>(pid), SIGKILL);
}

}  // namespace

struct JobManager::Running {
  StoredJob job;  // the live record
  std::unique_ptr<ChildProcess> child;
  bool cancelling = false;
  absl::Time kill_at = absl::InfiniteFuture();
  bool dirty = false;  // progress not yet in the store
  absl::Time persisted_at = absl::InfinitePast();
  std::string last_error;  // the message of the child's last "error" event
};

absl::Status JobManager::Options::Validate() const {
  if (train_binary.empty()) return absl::InvalidArgumentError("the lpdetr-train path is empty");
  if (jobs_dir.empty()) return absl::InvalidArgumentError("the jobs directory is empty");
  if (max_concurrent_jobs < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_concurrent_jobs must be >= 1, got ", max_concurrent_jobs));
  }
  if (threads_per_job < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("threads per job must be >= 1, got ", threads_per_job));
  }
  if (nice < 0 || nice > 19) {
    return absl::InvalidArgumentError(absl::StrCat("job niceness must be 0..19, got ", nice));
  }
  if (cancel_grace < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the cancel grace period must be >= 0");
  }
  return absl::OkStatus();
}

bool JobManager::IsFinal(JobState state) {
  return state == lpdetr::v1::SUCCEEDED || state == lpdetr::v1::FAILED ||
         state == lpdetr::v1::CANCELLED;
}

absl::StatusOr<std::vector<std::string>> JobManager::TrainArguments(const FineTuneSpec& spec,
                                                                    const std::string& run_dir,
                                                                    int threads) {
  if (spec.base_model_dir.empty()) return absl::InvalidArgumentError("no base model directory");
  if (spec.train_annotations.empty() || spec.train_images.empty()) {
    return absl::InvalidArgumentError("train_annotations and train_images are required");
  }
  if (spec.val_annotations.empty() != spec.val_images.empty()) {
    return absl::InvalidArgumentError(
        "val_annotations and val_images go together: give both or neither");
  }
  std::vector<std::string> a = {"train",
                                "--train-annotations", spec.train_annotations,
                                "--train-images",      spec.train_images};
  if (!spec.val_annotations.empty()) {
    a.insert(a.end(), {"--val-annotations", spec.val_annotations, "--val-images",
                       spec.val_images});
  }
  a.insert(a.end(), {"--model", spec.base_model_dir, "--output", run_dir, "--threads",
                     std::to_string(threads), "--progress", "json"});
  const lpdetr::v1::FineTuneParameters& p = spec.request.parameters();
  auto add = [&a](const char* flag, const std::string& value) {
    a.push_back(flag);
    a.push_back(value);
  };
  auto non_negative = [](const char* name, double v) -> absl::Status {
    if (v < 0) return absl::InvalidArgumentError(absl::StrCat(name, " must be >= 0, got ", v));
    return absl::OkStatus();
  };
  for (const auto& [name, value] :
       std::vector<std::pair<const char*, double>>{{"epochs", p.epochs()},
                                                   {"batch_size", p.batch_size()},
                                                   {"lr", p.lr()},
                                                   {"weight_decay", p.weight_decay()},
                                                   {"lr_gamma", p.lr_gamma()},
                                                   {"lr_warmup_steps", p.lr_warmup_steps()},
                                                   {"accumulate_steps", p.accumulate_steps()},
                                                   {"ema_decay", p.ema_decay()},
                                                   {"max_size", p.max_size()},
                                                   {"max_steps", static_cast<double>(p.max_steps())}}) {
    if (absl::Status s = non_negative(name, value); !s.ok()) return s;
  }
  if (p.epochs() > 0) add("--epochs", std::to_string(p.epochs()));
  if (p.batch_size() > 0) add("--batch-size", std::to_string(p.batch_size()));
  if (p.lr() > 0) add("--lr", FormatDouble(p.lr()));
  if (p.weight_decay() > 0) add("--weight-decay", FormatDouble(p.weight_decay()));
  if (!p.lr_milestones().empty()) add("--lr-milestones", JoinNumbers(p.lr_milestones()));
  if (p.lr_gamma() > 0) add("--lr-gamma", FormatDouble(p.lr_gamma()));
  if (p.lr_warmup_steps() > 0) add("--lr-warmup-steps", std::to_string(p.lr_warmup_steps()));
  if (p.accumulate_steps() > 0) add("--accumulate-steps", std::to_string(p.accumulate_steps()));
  if (p.ema()) add("--ema", "1");
  if (p.ema_decay() > 0) add("--ema-decay", FormatDouble(p.ema_decay()));
  if (!p.scales().empty()) add("--scales", JoinNumbers(p.scales()));
  if (p.max_size() > 0) add("--max-size", std::to_string(p.max_size()));
  if (!p.backbone_training().empty()) {
    if (p.backbone_training() != "finetune" && p.backbone_training() != "full") {
      return absl::InvalidArgumentError(absl::StrCat(
          "backbone_training must be 'finetune' or 'full', got '", p.backbone_training(), "'"));
    }
    add("--backbone-training", p.backbone_training());
  }
  if (!p.export_dtype().empty()) {
    if (p.export_dtype() != "fp32" && p.export_dtype() != "fp16" && p.export_dtype() != "bf16") {
      return absl::InvalidArgumentError(absl::StrCat(
          "export_dtype must be fp32, fp16 or bf16, got '", p.export_dtype(), "'"));
    }
    add("--export-dtype", p.export_dtype());
  }
  if (p.seed() != 0) add("--seed", std::to_string(p.seed()));
  if (p.max_steps() > 0) add("--max-steps", std::to_string(p.max_steps()));
  // Sorted by name (a protobuf map has no order): the same request always
  // gives the same command.
  std::map<std::string, std::string> extra(p.extra().begin(), p.extra().end());
  for (const auto& [name, value] : extra) {
    if (!ValidFlagName(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "extra parameter '", name, "' is not a flag name (lower-case letters, digits and '-')"));
    }
    if (ReservedFlags().count(name) > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("extra parameter '", name, "' is set by the server itself"));
    }
    a.push_back("--" + name);
    a.push_back(value);
  }
  return a;
}

JobManager::JobManager(Options options, std::shared_ptr<JobStore> store,
                       std::shared_ptr<ModelRegistry> registry)
    : options_(std::move(options)), store_(std::move(store)), registry_(std::move(registry)) {}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(
    Options options, std::shared_ptr<JobStore> store, std::shared_ptr<ModelRegistry> registry) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  if (!store || !registry) return absl::InvalidArgumentError("JobManager needs a store and a registry");
  std::error_code ec;
  fs::create_directories(options.jobs_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create the jobs directory ", options.jobs_dir, ": ", ec.message()));
  }
  if (access(options.train_binary.c_str(), X_OK) != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the training program ", options.train_binary, " is missing or not executable"));
  }
  absl::StatusOr<std::vector<StoredJob>> recovered =
      store->RecoverAfterRestart("the server stopped while the job ran; ResumeJob continues it");
  if (!recovered.ok()) return recovered.status();
  for (const StoredJob& job : *recovered) {
    StopLeftover(job.pid, job.run_dir, options.cancel_grace);
  }
  std::unique_ptr<JobManager> manager(
      new JobManager(std::move(options), std::move(store), std::move(registry)));
  manager->scheduler_ = std::thread([m = manager.get()] { m->SchedulerLoop(); });
  return manager;
}

JobManager::~JobManager() { Stop(); }

void JobManager::Stop() {
  {
    absl::MutexLock lock(&stop_mu_);
    if (stopped_) return;
    stopped_ = true;
  }
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    changed_.SignalAll();
  }
  if (scheduler_.joinable()) scheduler_.join();
}

void JobManager::Touch(const std::string& id, const std::string& kind,
                       const std::string& message) {
  Change& c = changes_[id];
  ++c.sequence;
  c.kind = kind;
  c.message = message;
  changed_.SignalAll();
}

absl::StatusOr<StoredJob> JobManager::LoadLocked(const std::string& id) {
  auto it = running_.find(id);
  if (it != running_.end()) return it->second->job;
  return store_->Get(id);
}

absl::Status JobManager::SaveLocked(const StoredJob& job) {
  auto it = running_.find(job.job.id());
  if (it != running_.end()) it->second->job = job;
  return store_->Update(job);
}

void JobManager::SetEndListener(EndListener listener) {
  absl::MutexLock lock(&mu_);
  end_listener_ = std::move(listener);
}

void JobManager::NotifyEndLocked(const Job& job) {
  if (end_listener_) end_listener_(job);
}

absl::StatusOr<Job> JobManager::Start(const FineTuneSpec& spec) {
  if (absl::Status s = ModelRegistry::ValidateName(spec.request.output_model()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("output_model: ", s.message()));
  }
  StoredJob record;
  *record.job.mutable_request() = spec.request;
  record.job.set_state(lpdetr::v1::QUEUED);
  record.job.mutable_progress()->set_eval_ap(-1);
  record.job.mutable_progress()->set_best_ap(-1);
  // The id comes from the store; the folder is named after it, so the
  // arguments (which name the run directory) are checked with a placeholder
  // first and written once the id is known.
  if (absl::StatusOr<std::vector<std::string>> check =
          TrainArguments(spec, "RUN", options_.threads_per_job);
      !check.ok()) {
    return check.status();
  }
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the server is stopping");
  absl::StatusOr<StoredJob> created = store_->Create(record);
  if (!created.ok()) return created.status();
  const fs::path dir = fs::path(options_.jobs_dir) / created->job.id();
  created->run_dir = (dir / kRunDir).string();
  created->log_path = (dir / kLogFile).string();
  std::error_code ec;
  fs::create_directories(dir, ec);
  absl::Status written =
      ec ? absl::InternalError(absl::StrCat("cannot create ", dir.string(), ": ", ec.message()))
         : absl::OkStatus();
  if (written.ok()) {
    absl::StatusOr<std::vector<std::string>> args =
        TrainArguments(spec, created->run_dir, options_.threads_per_job);
    nlohmann::json command = {{"arguments", *args}};
    written = WriteFileAtomically(dir / kCommandFile, command.dump(2) + "\n");
  }
  if (!written.ok()) {
    created->job.set_state(lpdetr::v1::FAILED);
    created->job.set_failure_reason(std::string(written.message()));
    created->job.set_finished_at(NowSeconds());
    (void)store_->Update(*created);
    return written;
  }
  if (absl::Status s = store_->Update(*created); !s.ok()) return s;
  Touch(created->job.id(), "state", "queued");
  wake_ = true;
  return created->job;
}

absl::StatusOr<Job> JobManager::Get(const std::string& id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<StoredJob> job = LoadLocked(id);
  if (!job.ok()) return job.status();
  return job->job;
}

absl::StatusOr<std::vector<Job>> JobManager::List(const std::vector<JobState>& states,
                                                  int limit) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::vector<StoredJob>> jobs = store_->List(states, limit);
  if (!jobs.ok()) return jobs.status();
  std::vector<Job> out;
  out.reserve(jobs->size());
  for (const StoredJob& j : *jobs) {
    auto it = running_.find(j.job.id());
    out.push_back(it != running_.end() ? it->second->job.job : j.job);
  }
  return out;
}

absl::StatusOr<Job> JobManager::Cancel(const std::string& id) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<StoredJob> job = LoadLocked(id);
  if (!job.ok()) return job.status();
  const JobState state = job->job.state();
  if (state == lpdetr::v1::QUEUED || state == lpdetr::v1::INTERRUPTED) {
    job->job.set_state(lpdetr::v1::CANCELLED);
    job->job.set_finished_at(NowSeconds());
    if (absl::Status s = SaveLocked(*job); !s.ok()) return s;
    NotifyEndLocked(job->job);
    Touch(id, "state", "cancelled");
    return job->job;
  }
  if (state == lpdetr::v1::CANCELLING) return job->job;
  if (state != lpdetr::v1::RUNNING) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " has already finished (", lpdetr::v1::JobState_Name(state), ")"));
  }
  Running& r = *running_.at(id);
  r.cancelling = true;
  r.kill_at = absl::Now() + options_.cancel_grace;
  r.job.job.set_state(lpdetr::v1::CANCELLING);
  if (absl::Status s = store_->Update(r.job); !s.ok()) return s;
  r.child->Signal(SIGTERM);
  Touch(id, "state", "cancelling: the job is writing its checkpoint");
  return r.job.job;
}

absl::StatusOr<Job> JobManager::Resume(const std::string& id) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::UnavailableError("the server is stopping");
  absl::StatusOr<StoredJob> job = LoadLocked(id);
  if (!job.ok()) return job.status();
  const JobState state = job->job.state();
  if (state != lpdetr::v1::INTERRUPTED && state != lpdetr::v1::CANCELLED &&
      state != lpdetr::v1::FAILED) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", id, " is ", lpdetr::v1::JobState_Name(state),
                     ": only INTERRUPTED, CANCELLED or FAILED jobs can be resumed"));
  }
  if (state == lpdetr::v1::FAILED && !fs::exists(fs::path(job->run_dir) / "run.json")) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " failed before its first checkpoint; start a new job instead (",
        job->job.failure_reason(), ")"));
  }
  job->job.set_state(lpdetr::v1::QUEUED);
  job->job.clear_failure_reason();
  job->job.set_finished_at(0);
  if (absl::Status s = SaveLocked(*job); !s.ok()) return s;
  Touch(id, "state", "queued to resume");
  wake_ = true;
  return job->job;
}

absl::StatusOr<JobSnapshot> JobManager::WaitForChange(const std::string& id, int64_t seen,
                                                      absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  auto sequence = [&]() -> int64_t {
    auto it = changes_.find(id);
    return it == changes_.end() ? 1 : it->second.sequence;
  };
  while (sequence() <= seen && !stopping_) {
    if (changed_.WaitWithDeadline(&mu_, deadline)) break;
  }
  absl::StatusOr<StoredJob> job = LoadLocked(id);
  if (!job.ok()) return job.status();
  JobSnapshot snapshot;
  snapshot.job = job->job;
  snapshot.sequence = sequence();
  if (auto it = changes_.find(id); it != changes_.end()) {
    snapshot.kind = it->second.kind;
    snapshot.message = it->second.message;
  }
  return snapshot;
}

absl::StatusOr<std::vector<std::string>> JobManager::LogTail(const std::string& id, int lines,
                                                             bool* truncated) {
  if (lines <= 0) lines = 100;
  if (lines > 10000) {
    return absl::InvalidArgumentError(absl::StrCat("tail_lines must be <= 10000, got ", lines));
  }
  std::string path;
  {
    absl::MutexLock lock(&mu_);
    absl::StatusOr<StoredJob> job = LoadLocked(id);
    if (!job.ok()) return job.status();
    path = job->log_path;
  }
  return TailLines(path, lines, truncated);
}

absl::StatusOr<JobStats> JobManager::Stats() {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::map<JobState, int64_t>> counts = store_->CountByState();
  if (!counts.ok()) return counts.status();
  JobStats stats;
  stats.by_state = *std::move(counts);
  for (const auto& [id, r] : running_) {
    stats.running.push_back({id, r->job.job.request().output_model(), r->job.job.progress()});
  }
  return stats;
}

void JobManager::OnProgressLine(const std::string& id, std::string_view line) {
  if (line.empty() || line.front() != '{') return;
  nlohmann::json e = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (!e.is_object() || !e.contains("event")) return;
  const std::string event = e.value("event", "");
  absl::MutexLock lock(&mu_);
  auto it = running_.find(id);
  if (it == running_.end()) return;
  Running& r = *it->second;
  lpdetr::v1::JobProgress* p = r.job.job.mutable_progress();
  auto number = [&e](const char* key, double fallback) {
    auto f = e.find(key);
    return f != e.end() && f->is_number() ? f->get<double>() : fallback;
  };
  p->set_epoch(static_cast<int32_t>(number("epoch", p->epoch())));
  p->set_step(static_cast<int64_t>(number("step", static_cast<double>(p->step()))));
  p->set_total_steps(
      static_cast<int64_t>(number("total_steps", static_cast<double>(p->total_steps()))));
  std::string message = e.value("message", "");
  if (event == "step") {
    p->mutable_losses()->set_total(number("loss", p->losses().total()));
    if (auto losses = e.find("losses"); losses != e.end() && losses->is_object()) {
      auto* terms = p->mutable_losses()->mutable_terms();
      terms->clear();
      for (auto t = losses->begin(); t != losses->end(); ++t) {
        if (t->is_number()) (*terms)[t.key()] = t->get<double>();
      }
    }
    p->set_lr(number("lr", p->lr()));
    p->set_images_per_second(number("images_per_s", p->images_per_second()));
    p->set_eta_seconds(number("eta_s", p->eta_seconds()));
    message.clear();
  } else if (event == "eval") {
    if (auto m = e.find("metrics"); m != e.end() && m->is_object()) {
      auto ap = m->find("AP");
      if (ap != m->end() && ap->is_number()) {
        p->set_eval_ap(ap->get<double>());
        p->set_best_ap(std::max(p->best_ap(), ap->get<double>()));
      }
    }
  } else if (event == "error") {
    r.last_error = message;
  }
  r.dirty = true;
  const bool urgent = event != "step";
  if (urgent) r.persisted_at = absl::InfinitePast();
  Touch(id, event == "start" || event == "done" || event == "error" ? "log" : event, message);
  if (urgent) wake_ = true;
}

void JobManager::SchedulerLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return wake_ || stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), options_.poll_interval);
      wake_ = false;
      if (stopping_) break;
    }
    ReapFinished();
    EnforceCancelDeadlines();
    PersistProgress();
    StartQueued();
  }
  ShutDownChildren();
}

void JobManager::ReapFinished() {
  std::vector<std::pair<std::string, ExitStatus>> finished;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, r] : running_) {
      if (std::optional<ExitStatus> status = r->child->Poll(); status.has_value()) {
        finished.emplace_back(id, *status);
      }
    }
  }
  for (const auto& [id, status] : finished) FinishJob(id, status);
}

void JobManager::FinishJob(const std::string& id, const ExitStatus& status) {
  ChildProcess* child;
  {
    absl::MutexLock lock(&mu_);
    child = running_.at(id)->child.get();
  }
  // The child's output must be complete before the record is final. Not
  // under mu_: the reader thread delivers lines through OnProgressLine.
  // Only this thread removes entries from running_, so `child` stays valid.
  child->Wait();
  std::unique_ptr<Running> r;
  bool stopping;
  {
    absl::MutexLock lock(&mu_);
    r = std::move(running_.at(id));
    running_.erase(id);
    stopping = stopping_;
  }
  StoredJob& job = r->job;
  job.pid = 0;
  job.job.set_finished_at(NowSeconds());
  const fs::path run(job.run_dir);
  std::string message;
  if (status.Exited(0)) {
    const fs::path best = run / "best";
    const fs::path model_dir =
        !job.job.request().val_annotations().empty() && fs::exists(best / "config.json")
            ? best
            : run / "model";
    double eval_ap = -1;
    if (std::ifstream in(run / "metrics.json"); in) {
      nlohmann::json m = nlohmann::json::parse(in, nullptr, false);
      if (m.is_object() && m.contains("best") && m["best"].is_object() &&
          m["best"].contains("AP") && m["best"]["AP"].is_number()) {
        eval_ap = m["best"]["AP"].get<double>();
      }
    }
    absl::StatusOr<ModelVersionInfo> version = registry_->Register(
        job.job.request().output_model(), model_dir.string(), job.job.id(), eval_ap);
    if (version.ok()) {
      job.job.set_state(lpdetr::v1::SUCCEEDED);
      job.job.set_result_version(version->version);
      message = absl::StrCat("registered ", version->name, " version ", version->version);
    } else {
      job.job.set_state(lpdetr::v1::FAILED);
      job.job.set_failure_reason(absl::StrCat("training finished but registering the model failed: ",
                                              version.status().message()));
    }
  } else if (r->cancelling) {
    job.job.set_state(lpdetr::v1::CANCELLED);
    message = absl::StrCat("cancelled (lpdetr-train: ", status.ToString(), ")");
  } else if (stopping) {
    job.job.set_state(lpdetr::v1::INTERRUPTED);
    job.job.set_finished_at(0);
    job.job.set_failure_reason(absl::StrCat("the server stopped while the job ran (lpdetr-train: ",
                                            status.ToString(), "); ResumeJob continues it"));
  } else if (status.Exited(3)) {
    job.job.set_state(lpdetr::v1::INTERRUPTED);
    job.job.set_finished_at(0);
    job.job.set_failure_reason(
        "lpdetr-train was stopped by a signal from outside the server after writing a "
        "checkpoint; ResumeJob continues it");
  } else {
    job.job.set_state(lpdetr::v1::FAILED);
    std::string reason = r->last_error;
    if (reason.empty()) reason = LastLogMessage(job.log_path);
    job.job.set_failure_reason(absl::StrCat("lpdetr-train ended with ", status.ToString(),
                                            reason.empty() ? "" : ": ", reason));
  }
  if (message.empty()) message = job.job.failure_reason();
  absl::MutexLock lock(&mu_);
  (void)store_->Update(job);
  NotifyEndLocked(job.job);
  Touch(id, "state", message);
  wake_ = true;
}

void JobManager::EnforceCancelDeadlines() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  for (auto& [id, r] : running_) {
    if (r->cancelling && now >= r->kill_at) {
      r->child->Signal(SIGKILL);
      r->kill_at = absl::InfiniteFuture();
    }
  }
}

void JobManager::PersistProgress() {
  absl::MutexLock lock(&mu_);
  const absl::Time now = absl::Now();
  for (auto& [id, r] : running_) {
    if (r->dirty && now - r->persisted_at >= options_.persist_interval) {
      if (store_->Update(r->job).ok()) {
        r->dirty = false;
        r->persisted_at = now;
      }
    }
  }
}

void JobManager::StartQueued() {
  absl::MutexLock lock(&mu_);
  if (stopping_ || static_cast<int>(running_.size()) >= options_.max_concurrent_jobs) return;
  absl::StatusOr<std::vector<StoredJob>> queued = store_->Queued();
  if (!queued.ok()) return;
  for (StoredJob& job : *queued) {
    if (static_cast<int>(running_.size()) >= options_.max_concurrent_jobs) break;
    StartJobLocked(std::move(job));
  }
}

void JobManager::StartJobLocked(StoredJob job) {
  const std::string id = job.job.id();
  const fs::path run(job.run_dir);
  std::vector<std::string> argv = {options_.train_binary};
  absl::Status problem;
  if (fs::exists(run / "run.json")) {
    argv.insert(argv.end(), {"resume", job.run_dir, "--threads",
                             std::to_string(options_.threads_per_job), "--progress", "json"});
  } else {
    // Never started, or stopped before its first checkpoint: from the start.
    std::error_code ec;
    fs::remove_all(run, ec);
    absl::StatusOr<std::vector<std::string>> args =
        ReadCommand(fs::path(job.run_dir).parent_path() / kCommandFile);
    if (args.ok()) {
      argv.insert(argv.end(), args->begin(), args->end());
    } else {
      problem = args.status();
    }
  }
  std::unique_ptr<ChildProcess> child;
  if (problem.ok()) {
    ChildProcessOptions o;
    o.argv = argv;
    o.nice = options_.nice;
    o.log_path = job.log_path;
    o.on_stdout_line = [this, id](std::string_view line) { OnProgressLine(id, line); };
    absl::StatusOr<std::unique_ptr<ChildProcess>> started = ChildProcess::Start(std::move(o));
    if (started.ok()) {
      child = *std::move(started);
    } else {
      problem = started.status();
    }
  }
  if (!problem.ok()) {
    job.job.set_state(lpdetr::v1::FAILED);
    job.job.set_failure_reason(absl::StrCat("cannot start lpdetr-train: ", problem.message()));
    job.job.set_finished_at(NowSeconds());
    (void)store_->Update(job);
    NotifyEndLocked(job.job);
    Touch(id, "state", job.job.failure_reason());
    return;
  }
  job.job.set_state(lpdetr::v1::RUNNING);
  job.job.set_attempts(job.job.attempts() + 1);
  if (job.job.started_at() == 0) job.job.set_started_at(NowSeconds());
  job.pid = child->pid();
  auto r = std::make_unique<Running>();
  r->job = job;
  r->child = std::move(child);
  r->persisted_at = absl::Now();
  (void)store_->Update(job);
  running_[id] = std::move(r);
  Touch(id, "state", absl::StrCat("running (pid ", job.pid, ")"));
}

void JobManager::ShutDownChildren() {
  // One SIGTERM to every child at once (a second one would make lpdetr-train
  // stop without its checkpoint), then each gets what is left of the grace
  // period before SIGKILL. Only this thread removes entries from running_,
  // so the pointers stay valid.
  std::vector<std::pair<std::string, ChildProcess*>> children;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, r] : running_) {
      r->child->Signal(SIGTERM);
      children.emplace_back(id, r->child.get());
    }
  }
  const absl::Time deadline = absl::Now() + options_.cancel_grace;
  for (const auto& [id, child] : children) {
    absl::StatusOr<ExitStatus> status =
        child->WaitFor(std::max(deadline - absl::Now(), absl::ZeroDuration()));
    FinishJob(id, status.ok() ? *status : child->Terminate(absl::ZeroDuration()));
  }
}

}  // namespace lpdetr::admin

#include "server/admin_service.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/admin/admin_auth.h"
#include "server/admin/confined_path.h"
#include "server/admin/dataset_check.h"
#include "server/log.h"
#include "server/status_util.h"

namespace lpdetr::server {
namespace {

using lpdetr::v1::Job;
using lpdetr::v1::JobState;

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The state name as a metrics label value ("running").
std::string StateLabel(JobState state) {
  return absl::AsciiStrToLower(lpdetr::v1::JobState_Name(state));
}

// A job's wall time from its first start to its end (now for an
// INTERRUPTED job, which has no end time); 0 for one that never started.
double JobSeconds(const Job& job) {
  if (job.started_at() <= 0) return 0;
  const int64_t end = job.finished_at() > 0 ? job.finished_at() : absl::ToUnixSeconds(absl::Now());
  return static_cast<double>(std::max<int64_t>(0, end - job.started_at()));
}

std::vector<double> DurationBuckets() {
  return {60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400};
}

}  // namespace

struct AdminServiceImpl::JobMetrics {
  explicit JobMetrics(metrics::Registry& r)
      : jobs(r.AddGauge("lpdetr_finetune_jobs", "Fine-tuning jobs by state")),
        step(r.AddGauge("lpdetr_finetune_job_step", "Current optimizer step of a running job")),
        total_steps(r.AddGauge("lpdetr_finetune_job_total_steps",
                               "Optimizer steps a running job will take in all")),
        loss(r.AddGauge("lpdetr_finetune_job_loss", "Latest training loss of a running job")),
        images_per_second(r.AddGauge("lpdetr_finetune_job_images_per_second",
                                     "Training throughput of a running job")),
        duration(r.AddHistogram("lpdetr_finetune_job_duration_seconds",
                                "Wall time of finished jobs, from start to end, by final state",
                                DurationBuckets())),
        activations(r.AddCounter("lpdetr_model_activations_total",
                                 "Model version switches by kind (activate, rollback) and result")),
        active_version(r.AddGauge("lpdetr_model_active_version",
                                  "The version number serving each model name")) {
    // Every kind x result from 0, so increase() sees the first failure too.
    for (const char* kind : {"activate", "rollback"}) {
      for (const char* result : {"ok", "failed"}) activations.Add({{"kind", kind}, {"result", result}});
    }
  }

  metrics::Family<metrics::Gauge>& jobs;
  metrics::Family<metrics::Gauge>& step;
  metrics::Family<metrics::Gauge>& total_steps;
  metrics::Family<metrics::Gauge>& loss;
  metrics::Family<metrics::Gauge>& images_per_second;
  metrics::Family<metrics::Histogram>& duration;
  metrics::Family<metrics::Counter>& activations;
  metrics::Family<metrics::Gauge>& active_version;
};

absl::StatusOr<std::unique_ptr<AdminServiceImpl>> AdminServiceImpl::Create(
    Options options, std::shared_ptr<admin::JobManager> jobs,
    std::shared_ptr<admin::ModelRegistry> registry, std::shared_ptr<ModelHost> models,
    std::shared_ptr<ServiceMetrics> metrics) {
  if (options.token.empty()) return absl::InvalidArgumentError("the admin service needs a token");
  if (options.data_root.empty()) {
    return absl::InvalidArgumentError("the admin service needs a data root (--data_root)");
  }
  if (!jobs || !registry || !models || !metrics) {
    return absl::InvalidArgumentError("the admin service needs jobs, a registry, models, metrics");
  }
  std::unique_ptr<AdminServiceImpl> service(
      new AdminServiceImpl(std::move(options), std::move(jobs), std::move(registry),
                           std::move(models), std::move(metrics)));
  for (const std::shared_ptr<ServedModel>& m : service->models_->Serving()) {
    int64_t version = 0;
    if (absl::SimpleAtoi(m->description().version, &version)) {
      service->job_metrics_->active_version.Add({{"name", m->description().name}})
          .Set(static_cast<double>(version));
    }
  }
  // Every job's end is observed when it happens, once: also a job that
  // starts and ends between two refreshes. Jobs that ended before this
  // server started are not observed again.
  service->jobs_->SetEndListener([m = service->job_metrics_.get()](const Job& job) {
    m->duration.Add({{"state", StateLabel(job.state())}}).Observe(JobSeconds(job));
  });
  service->RefreshMetrics();
  service->metrics_thread_ = std::thread([s = service.get()] { s->MetricsLoop(); });
  return service;
}

AdminServiceImpl::AdminServiceImpl(Options options, std::shared_ptr<admin::JobManager> jobs,
                                   std::shared_ptr<admin::ModelRegistry> registry,
                                   std::shared_ptr<ModelHost> models,
                                   std::shared_ptr<ServiceMetrics> metrics)
    : options_(std::move(options)),
      jobs_(std::move(jobs)),
      registry_(std::move(registry)),
      models_(std::move(models)),
      metrics_(std::move(metrics)),
      job_metrics_(std::make_unique<JobMetrics>(*metrics_->registry())) {}

AdminServiceImpl::~AdminServiceImpl() {
  jobs_->SetEndListener(nullptr);  // before job_metrics_ goes
  BeginShutdown();
  if (metrics_thread_.joinable()) metrics_thread_.join();
}

void AdminServiceImpl::BeginShutdown() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
}

template <typename Fn>
grpc::Status AdminServiceImpl::Handle(grpc::ServerContext* context, const char* method, Fn&& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  grpc::Status auth = admin::CheckBearerToken(context->client_metadata(), options_.token);
  absl::Status status = auth.ok() ? fn() : FromGrpcStatus(auth);
  metrics_->CountRequest(method, status.code(), Since(t0));
  if (!status.ok()) {
    LogEvent(status.code() == absl::StatusCode::kInternal ? LogLevel::kError : LogLevel::kWarning,
             "admin_error",
             {{"method", method},
              {"peer", context->peer()},
              {"code", CodeName(status.code())},
              {"error", std::string(status.message())}});
  }
  return ToGrpcStatus(status);
}

absl::StatusOr<admin::FineTuneSpec> AdminServiceImpl::Resolve(
    const lpdetr::v1::StartFineTuneRequest& request, DatasetReport* datasets) {
  admin::FineTuneSpec spec;
  spec.request = request;
  if (request.train_annotations().empty() || request.train_images().empty()) {
    return absl::InvalidArgumentError("train_annotations and train_images are required");
  }
  if (request.val_annotations().empty() != request.val_images().empty()) {
    return absl::InvalidArgumentError(
        "val_annotations and val_images go together: give both or neither");
  }
  auto resolve = [&](const std::string& user, const char* field,
                     std::string* out) -> absl::Status {
    if (user.empty()) return absl::OkStatus();
    absl::StatusOr<std::string> path =
        admin::ResolveConfined(options_.data_root, user, /*must_exist=*/true);
    if (!path.ok()) {
      return absl::Status(path.status().code(), absl::StrCat(field, ": ", path.status().message()));
    }
    *out = *std::move(path);
    return absl::OkStatus();
  };
  for (const auto& [user, field, out] :
       std::vector<std::tuple<std::string, const char*, std::string*>>{
           {request.train_annotations(), "train_annotations", &spec.train_annotations},
           {request.train_images(), "train_images", &spec.train_images},
           {request.val_annotations(), "val_annotations", &spec.val_annotations},
           {request.val_images(), "val_images", &spec.val_images}}) {
    if (absl::Status s = resolve(user, field, out); !s.ok()) return s;
  }
  if (absl::Status s = ResolveBaseModel(request, &spec); !s.ok()) return s;
  // The request's own checks (JobManager::Start repeats them) before the
  // datasets, which take longer.
  if (absl::Status s = admin::ModelRegistry::ValidateName(request.output_model()); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("output_model: ", s.message()));
  }
  if (absl::StatusOr<std::vector<std::string>> args =
          admin::JobManager::TrainArguments(spec, "RUN", 1);
      !args.ok()) {
    return args.status();
  }
  // Messages name the paths as the request gave them, never as resolved
  // (a symbolic link's target stays unsaid, as in ResolveConfined).
  struct Split {
    const std::string& annotations;
    const std::string& images;
    const std::string& user_annotations;
    const std::string& user_images;
    const char* annotations_field;
    const char* images_field;
    admin::DatasetSummary* summary;
  };
  for (const Split& d :
       {Split{spec.train_annotations, spec.train_images, request.train_annotations(),
              request.train_images(), "train_annotations", "train_images", &datasets->train},
        Split{spec.val_annotations, spec.val_images, request.val_annotations(),
              request.val_images(), "val_annotations", "val_images", &datasets->val}}) {
    if (d.annotations.empty()) continue;
    absl::StatusOr<admin::CocoAnnotations> read =
        admin::ReadCocoAnnotations(d.annotations, d.user_annotations);
    absl::Status checked = read.status();
    const char* field = d.annotations_field;
    if (read.ok()) {
      checked = admin::CheckImageFiles(*read, d.images, d.user_images);
      field = d.images_field;
      *d.summary = read->summary;
    }
    if (!checked.ok()) {
      datasets->field = field;
      return absl::Status(checked.code(), absl::StrCat(field, ": ", checked.message()));
    }
  }
  return spec;
}

absl::Status AdminServiceImpl::ResolveBaseModel(const lpdetr::v1::StartFineTuneRequest& request,
                                                admin::FineTuneSpec* spec) {
  if (request.base_model().empty()) {
    if (!request.base_version().empty()) {
      return absl::InvalidArgumentError("base_version needs a base_model");
    }
    std::shared_ptr<ServedModel> model = models_->Find("");
    if (!model) return absl::UnavailableError("no model is serving to start from");
    spec->base_model_dir = model->description().dir;
    return absl::OkStatus();
  }
  std::string version = request.base_version();
  if (version.empty()) {
    absl::StatusOr<std::string> active = registry_->ActiveVersion(request.base_model());
    if (!active.ok()) {
      return absl::Status(active.status().code(),
                          absl::StrCat("base_model: ", active.status().message()));
    }
    version = *active;
  }
  absl::StatusOr<admin::ModelVersionInfo> base = registry_->Get(request.base_model(), version);
  if (!base.ok()) {
    return absl::Status(base.status().code(),
                        absl::StrCat("base_model: ", base.status().message()));
  }
  spec->base_model_dir = base->path;
  return absl::OkStatus();
}

grpc::Status AdminServiceImpl::StartFineTune(grpc::ServerContext* context,
                                             const lpdetr::v1::StartFineTuneRequest* request,
                                             Job* response) {
  return Handle(context, "StartFineTune", [&]() -> absl::Status {
    DatasetReport datasets;
    absl::StatusOr<admin::FineTuneSpec> spec = Resolve(*request, &datasets);
    if (!spec.ok()) {
      if (!datasets.field.empty()) {
        // The request itself was fine; its data is not. Paths as resolved
        // inside the data root; nothing else of the request is logged.
        LogEvent(LogLevel::kWarning, "job_rejected",
                 {{"output_model", request->output_model()},
                  {"field", datasets.field},
                  {"code", CodeName(spec.status().code())},
                  {"error", std::string(spec.status().message())}});
      }
      return spec.status();
    }
    absl::StatusOr<Job> job = jobs_->Start(*spec);
    if (!job.ok()) return job.status();
    nlohmann::json fields = {{"job", job->id()},
                             {"output_model", request->output_model()},
                             {"base_model", spec->base_model_dir},
                             {"train_image_count", datasets.train.images},
                             {"train_annotation_count", datasets.train.annotations}};
    if (!spec->val_annotations.empty()) {
      fields["val_image_count"] = datasets.val.images;
      fields["val_annotation_count"] = datasets.val.annotations;
    }
    LogEvent(LogLevel::kInfo, "job_queued", std::move(fields));
    *response = *std::move(job);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::GetJob(grpc::ServerContext* context,
                                      const lpdetr::v1::GetJobRequest* request, Job* response) {
  return Handle(context, "GetJob", [&]() -> absl::Status {
    absl::StatusOr<Job> job = jobs_->Get(request->id());
    if (!job.ok()) return job.status();
    *response = *std::move(job);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::ListJobs(grpc::ServerContext* context,
                                        const lpdetr::v1::ListJobsRequest* request,
                                        lpdetr::v1::ListJobsResponse* response) {
  return Handle(context, "ListJobs", [&]() -> absl::Status {
    std::vector<JobState> states;
    for (int s : request->states()) {
      if (!lpdetr::v1::JobState_IsValid(s) || s == lpdetr::v1::JOB_STATE_UNSPECIFIED) {
        return absl::InvalidArgumentError(absl::StrCat("states: ", s, " is not a job state"));
      }
      states.push_back(static_cast<JobState>(s));
    }
    if (request->limit() < 0) {
      return absl::InvalidArgumentError(absl::StrCat("limit must be >= 0, got ", request->limit()));
    }
    absl::StatusOr<std::vector<Job>> jobs = jobs_->List(states, request->limit());
    if (!jobs.ok()) return jobs.status();
    for (Job& j : *jobs) *response->add_jobs() = std::move(j);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::CancelJob(grpc::ServerContext* context,
                                         const lpdetr::v1::CancelJobRequest* request,
                                         Job* response) {
  return Handle(context, "CancelJob", [&]() -> absl::Status {
    absl::StatusOr<Job> job = jobs_->Cancel(request->id());
    if (!job.ok()) return job.status();
    LogEvent(LogLevel::kInfo, "job_cancel", {{"job", request->id()}});
    *response = *std::move(job);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::ResumeJob(grpc::ServerContext* context,
                                         const lpdetr::v1::ResumeJobRequest* request,
                                         Job* response) {
  return Handle(context, "ResumeJob", [&]() -> absl::Status {
    absl::StatusOr<Job> job = jobs_->Resume(request->id());
    if (!job.ok()) return job.status();
    LogEvent(LogLevel::kInfo, "job_resume", {{"job", request->id()}});
    *response = *std::move(job);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::WatchJob(grpc::ServerContext* context,
                                        const lpdetr::v1::WatchJobRequest* request,
                                        grpc::ServerWriter<lpdetr::v1::JobEvent>* writer) {
  return Handle(context, "WatchJob", [&]() -> absl::Status {
    int64_t seen = 0;
    for (;;) {
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return absl::UnavailableError("the server is shutting down");
      }
      if (context->IsCancelled()) return absl::CancelledError("the client cancelled the watch");
      // A short wait, so cancellation and shutdown are noticed promptly.
      absl::StatusOr<admin::JobSnapshot> snapshot =
          jobs_->WaitForChange(request->id(), seen, absl::Now() + absl::Milliseconds(500));
      if (!snapshot.ok()) return snapshot.status();
      if (snapshot->sequence <= seen) continue;
      seen = snapshot->sequence;
      lpdetr::v1::JobEvent event;
      event.set_kind(snapshot->kind);
      event.set_message(snapshot->message);
      *event.mutable_job() = snapshot->job;
      if (!writer->Write(event)) return absl::CancelledError("the client closed the watch");
      const JobState state = snapshot->job.state();
      if (admin::JobManager::IsFinal(state) || state == lpdetr::v1::INTERRUPTED) {
        return absl::OkStatus();
      }
    }
  });
}

grpc::Status AdminServiceImpl::GetJobLog(grpc::ServerContext* context,
                                         const lpdetr::v1::GetJobLogRequest* request,
                                         lpdetr::v1::GetJobLogResponse* response) {
  return Handle(context, "GetJobLog", [&]() -> absl::Status {
    if (request->tail_lines() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tail_lines must be >= 0, got ", request->tail_lines()));
    }
    bool truncated = false;
    absl::StatusOr<std::vector<std::string>> lines =
        jobs_->LogTail(request->id(), request->tail_lines(), &truncated);
    if (!lines.ok()) return lines.status();
    for (std::string& line : *lines) response->add_lines(std::move(line));
    response->set_truncated(truncated);
    return absl::OkStatus();
  });
}

lpdetr::v1::ModelVersion AdminServiceImpl::ToProto(const admin::ModelVersionInfo& info) const {
  lpdetr::v1::ModelVersion v;
  v.set_name(info.name);
  v.set_version(info.version);
  std::shared_ptr<ServedModel> serving = models_->Find(info.name);
  v.set_active(serving && serving->description().version == info.version);
  v.set_job_id(info.job_id);
  v.set_created_at(info.created_at);
  for (const std::string& c : info.classes) v.add_classes(c);
  v.set_eval_ap(info.eval_ap);
  return v;
}

grpc::Status AdminServiceImpl::ListModelVersions(
    grpc::ServerContext* context, const lpdetr::v1::ListModelVersionsRequest* request,
    lpdetr::v1::ListModelVersionsResponse* response) {
  return Handle(context, "ListModelVersions", [&]() -> absl::Status {
    absl::StatusOr<std::vector<admin::ModelVersionInfo>> versions =
        registry_->List(request->name());
    if (!versions.ok()) return versions.status();
    for (const admin::ModelVersionInfo& v : *versions) *response->add_versions() = ToProto(v);
    return absl::OkStatus();
  });
}

absl::StatusOr<lpdetr::v1::ModelVersion> AdminServiceImpl::Serve(const std::string& name,
                                                                 const std::string& version,
                                                                 const char* kind, bool rollback) {
  absl::StatusOr<admin::ModelVersionInfo> info = registry_->Get(name, version);
  if (!info.ok()) return info.status();
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<std::shared_ptr<ServedModel>> served =
      models_->Activate({info->path, name, version});
  absl::Status recorded = served.status();
  if (recorded.ok()) {
    // The switch happened: make a restart serve the same version.
    recorded = rollback ? registry_->Rollback(name).status() : registry_->SetActive(name, version);
    if (recorded.ok()) recorded = registry_->SetDefaultModel(name);
  }
  job_metrics_->activations.Add({{"kind", kind}, {"result", recorded.ok() ? "ok" : "failed"}})
      .Increment();
  LogEvent(recorded.ok() ? LogLevel::kInfo : LogLevel::kError, "model_activation",
           {{"kind", kind}, {"name", name}, {"version", version},
            {"result", recorded.ok() ? "ok" : std::string(recorded.message())},
            {"seconds", Since(t0)}});
  if (!served.ok()) return served.status();
  if (!recorded.ok()) {
    return absl::Status(recorded.code(),
                        absl::StrCat("version ", version, " of ", name,
                                     " is serving, but recording it in the registry failed: ",
                                     recorded.message()));
  }
  job_metrics_->active_version.Add({{"name", name}}).Set(std::atof(version.c_str()));
  absl::StatusOr<admin::ModelVersionInfo> after = registry_->Get(name, version);
  if (!after.ok()) return after.status();
  return ToProto(*after);
}

grpc::Status AdminServiceImpl::ActivateModel(grpc::ServerContext* context,
                                             const lpdetr::v1::ActivateModelRequest* request,
                                             lpdetr::v1::ModelVersion* response) {
  return Handle(context, "ActivateModel", [&]() -> absl::Status {
    absl::MutexLock serial(&activate_mu_);
    absl::StatusOr<lpdetr::v1::ModelVersion> v =
        Serve(request->name(), request->version(), "activate", /*rollback=*/false);
    if (!v.ok()) return v.status();
    *response = *std::move(v);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::RollbackModel(grpc::ServerContext* context,
                                             const lpdetr::v1::RollbackModelRequest* request,
                                             lpdetr::v1::ModelVersion* response) {
  return Handle(context, "RollbackModel", [&]() -> absl::Status {
    absl::MutexLock serial(&activate_mu_);
    absl::StatusOr<std::string> target = registry_->RollbackTarget(request->name());
    if (!target.ok()) return target.status();
    absl::StatusOr<lpdetr::v1::ModelVersion> v =
        Serve(request->name(), *target, "rollback", /*rollback=*/true);
    if (!v.ok()) return v.status();
    *response = *std::move(v);
    return absl::OkStatus();
  });
}

grpc::Status AdminServiceImpl::DeleteModelVersion(
    grpc::ServerContext* context, const lpdetr::v1::DeleteModelVersionRequest* request,
    lpdetr::v1::DeleteModelVersionResponse*) {
  return Handle(context, "DeleteModelVersion", [&]() -> absl::Status {
    absl::MutexLock serial(&activate_mu_);
    std::shared_ptr<ServedModel> serving = models_->Find(request->name());
    if (serving && serving->description().version == request->version() &&
        serving->description().name == request->name()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "version ", request->version(), " of ", request->name(),
          " is serving; activate another version first"));
    }
    absl::Status deleted = registry_->Delete(request->name(), request->version());
    if (deleted.ok()) {
      LogEvent(LogLevel::kInfo, "model_version_deleted",
               {{"name", request->name()}, {"version", request->version()}});
    }
    return deleted;
  });
}

void AdminServiceImpl::MetricsLoop() {
  for (;;) {
    {
      absl::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), options_.metrics_interval);
      if (stopping_) return;
    }
    RefreshMetrics();
  }
}

void AdminServiceImpl::RefreshMetrics() {
  absl::StatusOr<admin::JobStats> stats = jobs_->Stats();
  if (!stats.ok()) return;
  for (const auto& [state, count] : stats->by_state) {
    job_metrics_->jobs.Add({{"state", StateLabel(state)}}).Set(static_cast<double>(count));
  }
  std::set<std::string> running;
  for (const admin::RunningJobStats& r : stats->running) {
    running.insert(r.id);
    const metrics::Labels labels = {{"job_id", r.id}, {"model", r.output_model}};
    job_metrics_->step.Add(labels).Set(static_cast<double>(r.progress.step()));
    job_metrics_->total_steps.Add(labels).Set(static_cast<double>(r.progress.total_steps()));
    job_metrics_->loss.Add(labels).Set(r.progress.losses().total());
    job_metrics_->images_per_second.Add(labels).Set(r.progress.images_per_second());
  }
  std::set<std::string> ended;
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& id : running_seen_) {
      if (!running.count(id)) ended.insert(id);
    }
    running_seen_ = running;
  }
  // Jobs that stopped running since the last refresh: their series go (the
  // end listener observed their durations).
  for (const std::string& id : ended) {
    absl::StatusOr<Job> job = jobs_->Get(id);
    if (!job.ok()) continue;
    const metrics::Labels labels = {{"job_id", id}, {"model", job->request().output_model()}};
    job_metrics_->step.Remove(labels);
    job_metrics_->total_steps.Remove(labels);
    job_metrics_->loss.Remove(labels);
    job_metrics_->images_per_second.Remove(labels);
  }
}

}  // namespace lpdetr::server

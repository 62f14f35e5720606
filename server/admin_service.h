// AdminService (lpdetr.v1): fine-tuning jobs and the model registry, on the
// server's separate admin listener.
//
// Every call first checks `authorization: Bearer <token>` (constant time;
// UNAUTHENTICATED otherwise, nothing of the token logged). Dataset paths are
// resolved inside `data_root`, base models come from the registry (or the
// server's default model), and results are registered in the registry: no
// path a caller names can leave those roots (PERMISSION_DENIED).
//
// ActivateModel and RollbackModel load the version into the ModelHost (which
// warms it up and switches; in-flight requests finish on the old version),
// then record it as the registry's ACTIVE version and DEFAULT model, so a
// restarted server serves it too. They are serialised.
//
// Metrics (on the server's registry), refreshed every `metrics_interval`:
//   lpdetr_finetune_jobs{state}                       gauge
//   lpdetr_finetune_job_step{job,model}               gauge, running jobs
//   lpdetr_finetune_job_total_steps{job,model}        gauge, running jobs
//   lpdetr_finetune_job_loss{job,model}               gauge, running jobs
//   lpdetr_finetune_job_images_per_second{job,model}  gauge, running jobs
//   lpdetr_finetune_job_duration_seconds{state}       histogram, ended jobs
//   lpdetr_model_activations_total{kind,result}       counter (activate|rollback, ok|failed)
//   lpdetr_model_active_version{name}                 gauge, the serving version number
//
// The duration histogram observes each job once when it ends (SUCCEEDED,
// FAILED, CANCELLED or INTERRUPTED, told by JobManager's end listener): its
// wall time from first start to end, 0 for a job cancelled while queued. Jobs
// that ended before this server started are not observed.
//
// StartFineTune checks the datasets (admin/dataset_check.h) after resolving
// their paths and before queueing: a dataset lpdetr-train would refuse is
// refused here, with the field at fault as the message's prefix, and logged
// as `job_rejected`.
//
// Threading: thread-safe (gRPC calls the handlers on its threads); one
// metrics thread.
#pragma once

#include <memory>
#include <set>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "lpdetr/v1/admin.grpc.pb.h"
#include "server/admin/dataset_check.h"
#include "server/admin/job_manager.h"
#include "server/admin/model_registry.h"
#include "server/model_host.h"
#include "server/service_metrics.h"

namespace lpdetr::server {

class AdminServiceImpl final : public lpdetr::v1::AdminService::Service {
 public:
  struct Options {
    // The bearer token every call must carry (required, non-empty).
    std::string token;
    // Datasets must lie under this directory (required).
    std::string data_root;
    // How often the job metrics are refreshed.
    absl::Duration metrics_interval = absl::Seconds(1);
  };

  static absl::StatusOr<std::unique_ptr<AdminServiceImpl>> Create(
      Options options, std::shared_ptr<admin::JobManager> jobs,
      std::shared_ptr<admin::ModelRegistry> registry, std::shared_ptr<ModelHost> models,
      std::shared_ptr<ServiceMetrics> metrics);
  // Stops the metrics thread.
  ~AdminServiceImpl() override;

  grpc::Status StartFineTune(grpc::ServerContext* context,
                             const lpdetr::v1::StartFineTuneRequest* request,
                             lpdetr::v1::Job* response) override;
  grpc::Status GetJob(grpc::ServerContext* context, const lpdetr::v1::GetJobRequest* request,
                      lpdetr::v1::Job* response) override;
  grpc::Status ListJobs(grpc::ServerContext* context, const lpdetr::v1::ListJobsRequest* request,
                        lpdetr::v1::ListJobsResponse* response) override;
  grpc::Status CancelJob(grpc::ServerContext* context, const lpdetr::v1::CancelJobRequest* request,
                         lpdetr::v1::Job* response) override;
  grpc::Status ResumeJob(grpc::ServerContext* context, const lpdetr::v1::ResumeJobRequest* request,
                         lpdetr::v1::Job* response) override;
  grpc::Status WatchJob(grpc::ServerContext* context, const lpdetr::v1::WatchJobRequest* request,
                        grpc::ServerWriter<lpdetr::v1::JobEvent>* writer) override;
  grpc::Status GetJobLog(grpc::ServerContext* context, const lpdetr::v1::GetJobLogRequest* request,
                         lpdetr::v1::GetJobLogResponse* response) override;
  grpc::Status ListModelVersions(grpc::ServerContext* context,
                                 const lpdetr::v1::ListModelVersionsRequest* request,
                                 lpdetr::v1::ListModelVersionsResponse* response) override;
  grpc::Status ActivateModel(grpc::ServerContext* context,
                             const lpdetr::v1::ActivateModelRequest* request,
                             lpdetr::v1::ModelVersion* response) override;
  grpc::Status RollbackModel(grpc::ServerContext* context,
                             const lpdetr::v1::RollbackModelRequest* request,
                             lpdetr::v1::ModelVersion* response) override;
  grpc::Status DeleteModelVersion(grpc::ServerContext* context,
                                  const lpdetr::v1::DeleteModelVersionRequest* request,
                                  lpdetr::v1::DeleteModelVersionResponse* response) override;

  // WatchJob streams end with UNAVAILABLE from now on (server drain).
  void BeginShutdown();

 private:
  struct JobMetrics;

  AdminServiceImpl(Options options, std::shared_ptr<admin::JobManager> jobs,
                   std::shared_ptr<admin::ModelRegistry> registry,
                   std::shared_ptr<ModelHost> models, std::shared_ptr<ServiceMetrics> metrics);

  // The auth check, the call and its request count, for unary calls.
  template <typename Fn>
  grpc::Status Handle(grpc::ServerContext* context, const char* method, Fn&& fn);
  // What the dataset checks of a StartFineTune found.
  struct DatasetReport {
    std::string field;  // the request field at fault; empty: not a dataset error
    admin::DatasetSummary train, val;
  };
  // The request checked and its paths resolved; last, its datasets checked
  // (admin/dataset_check.h), each error prefixed by the field at fault.
  absl::StatusOr<admin::FineTuneSpec> Resolve(const lpdetr::v1::StartFineTuneRequest& request,
                                              DatasetReport* datasets);
  absl::Status ResolveBaseModel(const lpdetr::v1::StartFineTuneRequest& request,
                                admin::FineTuneSpec* spec);
  // Loads `version` of `name`, switches to it and records it in the registry.
  absl::StatusOr<lpdetr::v1::ModelVersion> Serve(const std::string& name,
                                                 const std::string& version, const char* kind,
                                                 bool rollback);
  lpdetr::v1::ModelVersion ToProto(const admin::ModelVersionInfo& info) const;
  void MetricsLoop();
  void RefreshMetrics();

  const Options options_;
  const std::shared_ptr<admin::JobManager> jobs_;
  const std::shared_ptr<admin::ModelRegistry> registry_;
  const std::shared_ptr<ModelHost> models_;
  const std::shared_ptr<ServiceMetrics> metrics_;
  std::unique_ptr<JobMetrics> job_metrics_;

  absl::Mutex activate_mu_;  // serialises ActivateModel / RollbackModel

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::set<std::string> running_seen_ ABSL_GUARDED_BY(mu_);  // for the metrics
  std::thread metrics_thread_;
};

}  // namespace lpdetr::server

// DetectionService (lpdetr.v1): Detect and DetectStream on the synchronous
// gRPC API. The gRPC thread picks the model version that serves the request
// (ModelHost::Find, once), validates the request against it, decodes and
// preprocesses its images and submits one job to that version's Batcher; an
// inference worker runs the batch and completes the job; the gRPC thread
// answers. The job holds a shared_ptr to its version from admission to
// response, so a model switch never changes a request midway. Data flows one
// way.
//
// DetectStream reads a frame only when fewer than `stream_window` frames are
// in flight (back-pressure), writes results in frame order from a writer
// thread, answers a failed frame with DetectResponse.error and goes on, or
// ends the stream with the frame's error when its stop_on_error is set (such
// a frame is awaited before the next one is read).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <memory>
#include <set>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "lpdetr/v1/detection.grpc.pb.h"
#include "server/batcher.h"
#include "server/model_host.h"
#include "server/model_runner.h"
#include "server/service_metrics.h"

namespace lpdetr::server {

class DetectionServiceImpl final : public lpdetr::v1::DetectionService::Service {
 public:
  struct Options {
    // Most images in one DetectRequest (>= 1).
    int max_images_per_request = 16;
    // Largest width * height of one image, checked before decoding (>= 1).
    int64_t max_image_pixels = 50'000'000;
    // DetectStream frames in flight per stream (>= 1).
    int stream_window = 4;
  };

  static absl::StatusOr<std::unique_ptr<DetectionServiceImpl>> Create(
      const Options& options, std::shared_ptr<ModelHost> models,
      std::shared_ptr<ServiceMetrics> metrics);
  // The batch function of every served version: runs the batch on its model
  // and fills each job's response.
  static ServedModel::BatchFn BatchFunction(std::shared_ptr<ServiceMetrics> metrics);
  ~DetectionServiceImpl() override;

  grpc::Status Detect(grpc::ServerContext* context, const lpdetr::v1::DetectRequest* request,
                      lpdetr::v1::DetectResponse* response) override;
  grpc::Status DetectStream(
      grpc::ServerContext* context,
      grpc::ServerReaderWriter<lpdetr::v1::DetectResponse, lpdetr::v1::DetectRequest>* stream)
      override;

  // New requests (and new stream frames) get UNAVAILABLE from now on;
  // accepted ones run to completion. Every DetectStream answers the frames
  // it has in flight and then ends (an idle one at once).
  void BeginShutdown();
  // Runs every accepted job and stops the workers of every version (after
  // the gRPC server's Shutdown returned).
  void StopBatchers() { models_->Stop(); }

 private:
  struct Job;
  DetectionServiceImpl(const Options& options, std::shared_ptr<ModelHost> models,
                       std::shared_ptr<ServiceMetrics> metrics);
  // Validates, decodes and submits; the job completes asynchronously.
  absl::StatusOr<std::shared_ptr<Job>> Start(grpc::ServerContext* context,
                                             const lpdetr::v1::DetectRequest& request);
  static void RunBatch(ServedModel& model, std::vector<Batcher::TaskPtr>& batch,
                       ServiceMetrics& metrics);

  const Options options_;
  const std::shared_ptr<ModelHost> models_;
  const std::shared_ptr<ServiceMetrics> metrics_;
  std::atomic<bool> shutting_down_{false};
  // The open streams' wakeups (for BeginShutdown).
  struct StreamWakeup {
    std::mutex* mu;
    std::condition_variable* cv;
  };
  std::mutex streams_mu_;
  std::set<StreamWakeup*> streams_ ABSL_GUARDED_BY(streams_mu_);
  struct StreamRegistration;
};

}  // namespace lpdetr::server

// The standard grpc.health.v1.Health service, implemented here (instead of
// gRPC's built-in one) so that its descriptor is in the generated pool, which
// makes it describable through server reflection, and so that open Watch
// streams end when the server drains instead of holding its exit.
//
// Statuses are kept per service name ("" is the server as a whole). Check
// answers the current status, NOT_FOUND for an unknown name. Watch sends the
// current status (SERVICE_UNKNOWN for an unknown name) and every change, and
// ends with UNAVAILABLE after Shutdown() (having sent the last status, which
// is then NOT_SERVING) or when the client cancels.
//
// Threading: every method is thread-safe; one mutex guards the statuses.
// Watch handlers wait on a condition variable and poll for client
// cancellation every `watch_poll` (the synchronous API has no callback).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
#include "grpc_health/v1/health.grpc.pb.h"

namespace lpdetr::server {

class HealthServiceImpl final : public grpc::health::v1::Health::Service {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  explicit HealthServiceImpl(
      std::chrono::milliseconds watch_poll = std::chrono::milliseconds(100))
      : watch_poll_(watch_poll) {}

  // Sets one service's status (registering the name).
  void SetServingStatus(const std::string& service, bool serving);
  // Marks everything NOT_SERVING, refuses later changes and ends every open
  // Watch stream (after sending it NOT_SERVING). Idempotent.
  void Shutdown();

  grpc::Status Check(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::health::v1::HealthCheckResponse* response) override;
  grpc::Status Watch(grpc::ServerContext* context,
                     const grpc::health::v1::HealthCheckRequest* request,
                     grpc::ServerWriter<grpc::health::v1::HealthCheckResponse>* writer) override;

 private:
  // With mu_ held: the status of `service`, SERVICE_UNKNOWN when unregistered.
  ServingStatus StatusLocked(const std::string& service) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::chrono::milliseconds watch_poll_;
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::map<std::string, ServingStatus> statuses_ ABSL_GUARDED_BY(mu_);
  // Bumped on every change so watchers see each one.
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace lpdetr::server

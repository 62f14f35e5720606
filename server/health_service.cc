#include "server/health_service.h"

namespace lpdetr::server {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

void HealthServiceImpl::SetServingStatus(const std::string& service, bool serving) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    statuses_[service] = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
    ++generation_;
  }
  changed_.notify_all();
}

void HealthServiceImpl::Shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    statuses_[""];
    for (auto& [name, status] : statuses_) status = HealthCheckResponse::NOT_SERVING;
    shut_down_ = true;
    ++generation_;
  }
  changed_.notify_all();
}

HealthServiceImpl::ServingStatus HealthServiceImpl::StatusLocked(const std::string& service) const {
  auto it = statuses_.find(service);
  return it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second;
}

grpc::Status HealthServiceImpl::Check(grpc::ServerContext* context,
                                      const HealthCheckRequest* request,
                                      HealthCheckResponse* response) {
  std::lock_guard<std::mutex> lock(mu_);
  const ServingStatus status = StatusLocked(request->service());
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        "unknown service '" + request->service() + "'");
  }
  response->set_status(status);
  return grpc::Status::OK;
}

grpc::Status HealthServiceImpl::Watch(grpc::ServerContext* context,
                                      const HealthCheckRequest* request,
                                      grpc::ServerWriter<HealthCheckResponse>* writer) {
  std::unique_lock<std::mutex> lock(mu_);
  bool first = true;
  ServingStatus sent = HealthCheckResponse::UNKNOWN;
  uint64_t seen = 0;
  while (true) {
    const ServingStatus status = StatusLocked(request->service());
    const bool ending = shut_down_;
    seen = generation_;
    if (first || status != sent) {
      HealthCheckResponse response;
      response.set_status(status);
      lock.unlock();
      if (!writer->Write(response)) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "watch closed by the client");
      }
      lock.lock();
      first = false;
      sent = status;
      if (generation_ != seen) continue;  // changed while writing
    }
    if (ending) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down");
    }
    while (generation_ == seen) {
      if (context->IsCancelled()) {
        return grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled by the client");
      }
      changed_.wait_for(lock, watch_poll_);
    }
  }
}

}  // namespace lpdetr::server

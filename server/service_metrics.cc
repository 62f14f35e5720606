#include "server/service_metrics.h"

#include "server/model_runner.h"
#include "server/status_util.h"

namespace lpdetr::server {

ServiceMetrics::ServiceMetrics(std::shared_ptr<metrics::Registry> registry)
    : registry_(std::move(registry)) {
  metrics::Registry& r = *registry_;
  requests_ = &r.AddCounter("lpdetr_requests_total",
                            "RPCs (DetectStream: frames) by method and gRPC status code");
  request_duration_ = &r.AddHistogram("lpdetr_request_duration_seconds",
                                      "Server-side request latency by method",
                                      metrics::LatencyBuckets());
  queue_ = &r.AddHistogram("lpdetr_queue_duration_seconds",
                           "Time requests wait in the batching queue", metrics::LatencyBuckets())
                .Add({});
  inference_ = &r.AddHistogram("lpdetr_inference_duration_seconds",
                               "Model inference time per batch", metrics::LatencyBuckets())
                    .Add({});
  batch_size_ = &r.AddHistogram("lpdetr_batch_size", "Images per inference batch",
                                metrics::LinearBuckets(1, 1, 32))
                     .Add({});
  queue_depth_ = &r.AddGauge("lpdetr_queue_depth", "Requests waiting in the batching queue").Add({});
  queue_capacity_ = &r.AddGauge("lpdetr_queue_capacity",
                                "Most requests the batching queue holds; more get RESOURCE_EXHAUSTED")
                         .Add({});
  images_ = &r.AddCounter("lpdetr_images_processed_total", "Images run through the model").Add({});
  model_info_ = &r.AddGauge("lpdetr_model_info", "Model versions: 1 while serving, 0 once replaced");
}

void ServiceMetrics::SetModel(const ModelDescription& now, const ModelDescription* before) {
  auto labels = [](const ModelDescription& m) {
    return metrics::Labels{{"name", m.name}, {"variant", m.variant}, {"version", m.version}};
  };
  if (before != nullptr) model_info_->Add(labels(*before)).Set(0);
  model_info_->Add(labels(now)).Set(1);
}

void ServiceMetrics::CountRequest(const std::string& method, absl::StatusCode code,
                                  double seconds) {
  requests_->Add({{"method", method}, {"code", CodeName(code)}}).Increment();
  request_duration_->Add({{"method", method}}).Observe(seconds);
}

int64_t ServiceMetrics::RequestCount(const std::string& method, absl::StatusCode code) const {
  return static_cast<int64_t>(
      requests_->Add({{"method", method}, {"code", CodeName(code)}}).Value());
}

void ServiceMetrics::ObserveBatch(int images, double seconds) {
  inference_->Observe(seconds);
  batch_size_->Observe(images);
  images_->Increment(images);
}

}  // namespace lpdetr::server

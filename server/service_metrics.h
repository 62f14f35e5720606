// The service's Prometheus metrics (names and labels in one place):
//   lpdetr_requests_total{method,code}          counter, one per RPC (per frame
//                                                for DetectStream)
//   lpdetr_request_duration_seconds{method}     histogram, handler latency
//   lpdetr_queue_duration_seconds               histogram, time in the batcher
//   lpdetr_inference_duration_seconds           histogram, one per batch
//   lpdetr_batch_size                           histogram, images per batch
//   lpdetr_queue_depth                          gauge, requests waiting
//   lpdetr_queue_capacity                       gauge, most requests a model
//                                                version's queue holds
//   lpdetr_images_processed_total               counter
//   lpdetr_model_info{name,variant,version}     gauge: 1 for each serving
//                                                version, 0 once replaced
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "server/metrics/metrics.h"

namespace lpdetr::server {

struct ModelDescription;

class ServiceMetrics {
 public:
  explicit ServiceMetrics(std::shared_ptr<metrics::Registry> registry);

  // lpdetr_model_info follows a switch: `now` to 1, `before` (if any) to 0.
  void SetModel(const ModelDescription& now, const ModelDescription* before);

  void CountRequest(const std::string& method, absl::StatusCode code, double seconds);
  void ObserveQueue(double seconds) { queue_->Observe(seconds); }
  void ObserveBatch(int images, double seconds);
  void SetQueueDepth(int depth) { queue_depth_->Set(depth); }
  // The batcher's --max_queue_size, so alerts can compare the depth with it.
  void SetQueueCapacity(int capacity) { queue_capacity_->Set(capacity); }
  // lpdetr_requests_total of one method and code so far.
  int64_t RequestCount(const std::string& method, absl::StatusCode code) const;

  const std::shared_ptr<metrics::Registry>& registry() const { return registry_; }

 private:
  std::shared_ptr<metrics::Registry> registry_;
  metrics::Family<metrics::Counter>* requests_;
  metrics::Family<metrics::Histogram>* request_duration_;
  metrics::Histogram* queue_;
  metrics::Histogram* inference_;
  metrics::Histogram* batch_size_;
  metrics::Gauge* queue_depth_;
  metrics::Gauge* queue_capacity_;
  metrics::Counter* images_;
  metrics::Family<metrics::Gauge>* model_info_;
};

}  // namespace lpdetr::server

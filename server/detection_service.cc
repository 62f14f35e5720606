#include "server/detection_service.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/image_decoder.h"
#include "server/log.h"
#include "server/status_util.h"

namespace lpdetr::server {

using Clock = std::chrono::steady_clock;
using lpdetr::v1::DetectRequest;
using lpdetr::v1::DetectResponse;

namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

Clock::time_point DeadlineOf(const grpc::ServerContext* context) {
  const auto sys_deadline = context->deadline();
  if (sys_deadline >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365)) {
    return Clock::time_point::max();
  }
  return Clock::now() + (sys_deadline - std::chrono::system_clock::now());
}

// Per-request result filter from DetectOptions.
struct Filter {
  float score_threshold = 0.3f;
  int max_detections = 0;
  std::set<int> classes;  // empty = all
};

absl::StatusOr<Filter> ParseOptions(const lpdetr::v1::DetectOptions& o, const ModelDescription& m) {
  Filter f;
  if (o.has_score_threshold()) {
    const float t = o.score_threshold();
    if (!(t >= 0.f && t <= 1.f)) {  // also rejects NaN
      return absl::InvalidArgumentError(
          absl::StrCat("options.score_threshold must be in [0, 1], got ", t));
    }
    f.score_threshold = t;
  }
  if (o.max_detections() < 0 || o.max_detections() > m.num_select) {
    return absl::InvalidArgumentError(absl::StrCat("options.max_detections must be in [0, ",
                                                   m.num_select, "], got ", o.max_detections()));
  }
  f.max_detections = o.max_detections() == 0 ? m.num_select : o.max_detections();
  for (int id : o.class_ids()) {
    if (id < 0 || id >= m.num_classes) {
      return absl::InvalidArgumentError(absl::StrCat("options.class_ids: ", id, " is not in [0, ",
                                                     m.num_classes, ")"));
    }
    f.classes.insert(id);
  }
  for (const std::string& name : o.class_names()) {
    bool found = false;
    for (int i = 0; i < m.num_classes; ++i) {
      if (m.classes[i] == name) {
        f.classes.insert(i);
        found = true;
      }
    }
    if (!found) {
      return absl::InvalidArgumentError(
          absl::StrCat("options.class_names: unknown class '", name, "'"));
    }
  }
  return f;
}

absl::StatusOr<cv::Mat> DecodeOne(const lpdetr::v1::Image& image, int64_t max_pixels) {
  if (image.has_raw()) {
    const auto& raw = image.raw();
    RawFormat format;
    switch (raw.format()) {
      case lpdetr::v1::PIXEL_FORMAT_RGB8: format = RawFormat::kRgb8; break;
      case lpdetr::v1::PIXEL_FORMAT_BGR8: format = RawFormat::kBgr8; break;
      case lpdetr::v1::PIXEL_FORMAT_GRAY8: format = RawFormat::kGray8; break;
      case lpdetr::v1::PIXEL_FORMAT_RGBA8: format = RawFormat::kRgba8; break;
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("raw image has no valid pixel format (", raw.format(), ")"));
    }
    return DecodeRaw(raw.pixels(), raw.width(), raw.height(), format, max_pixels);
  }
  return DecodeImage(image.data(), max_pixels);
}

}  // namespace

// One request (or stream frame) travelling through the batcher.
struct DetectionServiceImpl::Job : Batcher::Task {
  // The version this job was admitted to: its preprocessing, filter, labels
  // and inference all come from it.
  std::shared_ptr<ServedModel> model;
  std::vector<PreparedImage> images;
  std::vector<std::string> image_ids;
  Filter filter;
  std::string request_id;

  // Completion, written by a worker or Drop.
  mutable std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  absl::Status status;
  DetectResponse response;
  // Cancellation: the handler's context, valid until `abandoned` is set.
  grpc::ServerContext* context = nullptr;
  bool abandoned = false;

  int size() const override { return static_cast<int>(images.size()); }
  int64_t bucket() const override { return images.front().bucket; }
  bool cancelled() const override {
    std::lock_guard<std::mutex> lock(mu);
    return abandoned || (context != nullptr && context->IsCancelled());
  }
  // A task the batcher drops as cancelled whose deadline has (all but)
  // passed was cancelled by gRPC for that deadline: DEADLINE_EXCEEDED.
  void Drop(const absl::Status& s) override {
    Complete(s.code() == absl::StatusCode::kCancelled && DeadlineReached() ? DeadlineError() : s);
  }
  // The handler no longer waits: never touch its context again.
  void Abandon() {
    std::lock_guard<std::mutex> lock(mu);
    abandoned = true;
  }

  void Complete(const absl::Status& s) {
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
      status = s;
    }
    cv.notify_all();
  }
  // A call is cancelled at its deadline from two sides: by the server's gRPC
  // timer (which may fire a little before this job's copy of the deadline),
  // and by the client, whose deadline started before the call arrived here,
  // so its cancel comes early by the transit time. A cancellation this close
  // to the deadline is the deadline, which is what the client sees, and is
  // reported (and counted) as DEADLINE_EXCEEDED.
  static constexpr std::chrono::milliseconds kDeadlineSlack{250};
  bool DeadlineReached() const { return Clock::now() + kDeadlineSlack >= deadline; }
  static absl::Status DeadlineError() {
    return absl::DeadlineExceededError("deadline exceeded before the result was ready");
  }
  // Waits for completion, the deadline or cancellation; afterwards the job no
  // longer touches the context.
  absl::Status Wait() {
    std::unique_lock<std::mutex> lock(mu);
    while (!done) {
      const Clock::time_point now = Clock::now();
      if (now >= deadline) {
        abandoned = true;
        return DeadlineError();
      }
      if (context->IsCancelled()) {
        abandoned = true;
        if (DeadlineReached()) return DeadlineError();
        return absl::CancelledError("request cancelled by the client");
      }
      cv.wait_until(lock, std::min(deadline, now + std::chrono::milliseconds(20)));
    }
    abandoned = true;
    return status;
  }
};

// Registers a DetectStream's lock and condition variable for the lifetime of
// the handler, so BeginShutdown can wake its writer.
struct DetectionServiceImpl::StreamRegistration {
  StreamRegistration(DetectionServiceImpl* s, std::mutex* mu, std::condition_variable* cv)
      : service(s), entry{mu, cv} {
    std::lock_guard<std::mutex> lock(service->streams_mu_);
    service->streams_.insert(&entry);
  }
  ~StreamRegistration() {
    std::lock_guard<std::mutex> lock(service->streams_mu_);
    service->streams_.erase(&entry);
  }
  DetectionServiceImpl* service;
  StreamWakeup entry;
};

void DetectionServiceImpl::BeginShutdown() {
  shutting_down_ = true;
  std::lock_guard<std::mutex> lock(streams_mu_);
  for (StreamWakeup* stream : streams_) {
    // Taking the stream's lock orders the flag before its writer's next check.
    { std::lock_guard<std::mutex> stream_lock(*stream->mu); }
    stream->cv->notify_all();
  }
}

absl::StatusOr<std::unique_ptr<DetectionServiceImpl>> DetectionServiceImpl::Create(
    const Options& options, std::shared_ptr<ModelHost> models,
    std::shared_ptr<ServiceMetrics> metrics) {
  if (options.max_images_per_request < 1) {
    return absl::InvalidArgumentError(absl::StrCat("max_images_per_request must be >= 1, got ",
                                                   options.max_images_per_request));
  }
  if (options.max_image_pixels < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_image_pixels must be >= 1, got ", options.max_image_pixels));
  }
  if (options.stream_window < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("stream_window must be >= 1, got ", options.stream_window));
  }
  if (!models || !metrics) {
    return absl::InvalidArgumentError("DetectionService needs a model host and metrics");
  }
  return std::unique_ptr<DetectionServiceImpl>(
      new DetectionServiceImpl(options, std::move(models), std::move(metrics)));
}

ServedModel::BatchFn DetectionServiceImpl::BatchFunction(std::shared_ptr<ServiceMetrics> metrics) {
  return [metrics](ServedModel& model, std::vector<Batcher::TaskPtr>& batch) {
    RunBatch(model, batch, *metrics);
  };
}

DetectionServiceImpl::DetectionServiceImpl(const Options& options,
                                           std::shared_ptr<ModelHost> models,
                                           std::shared_ptr<ServiceMetrics> metrics)
    : options_(options), models_(std::move(models)), metrics_(std::move(metrics)) {}

DetectionServiceImpl::~DetectionServiceImpl() = default;

absl::StatusOr<std::shared_ptr<DetectionServiceImpl::Job>> DetectionServiceImpl::Start(
    grpc::ServerContext* context, const DetectRequest& request) {
  if (shutting_down_) return absl::UnavailableError("server is shutting down");
  std::shared_ptr<ServedModel> served = models_->Find(request.model());
  if (!served) {
    if (request.model().empty()) return absl::UnavailableError("no model is loaded");
    return absl::NotFoundError(absl::StrCat("model '", request.model(),
                                            "' is not loaded (the default is '",
                                            models_->DefaultName(), "')"));
  }
  const ModelDescription& model = served->description();
  if (request.images_size() == 0) {
    return absl::InvalidArgumentError("request has no images");
  }
  if (request.images_size() > options_.max_images_per_request) {
    return absl::InvalidArgumentError(absl::StrCat("request has ", request.images_size(),
                                                   " images, more than the limit of ",
                                                   options_.max_images_per_request));
  }
  absl::StatusOr<Filter> filter = ParseOptions(request.options(), model);
  if (!filter.ok()) return filter.status();
  auto job = std::make_shared<Job>();
  job->model = served;
  job->filter = *filter;
  job->request_id = request.request_id();
  job->context = context;
  job->deadline = DeadlineOf(context);
  for (int i = 0; i < request.images_size(); ++i) {
    absl::StatusOr<cv::Mat> rgb = DecodeOne(request.images(i), options_.max_image_pixels);
    if (!rgb.ok()) {
      return absl::Status(rgb.status().code(),
                          absl::StrCat("image ", i, ": ", rgb.status().message()));
    }
    job->images.push_back(served->runner().Prepare(*rgb));
    job->image_ids.push_back(request.images(i).id());
  }
  absl::Status submitted = served->batcher().Submit(job);
  metrics_->SetQueueDepth(models_->QueueDepth());
  if (!submitted.ok()) return submitted;
  return job;
}

void DetectionServiceImpl::RunBatch(ServedModel& served, std::vector<Batcher::TaskPtr>& batch,
                                    ServiceMetrics& metrics) {
  const Clock::time_point start = Clock::now();
  metrics.SetQueueDepth(served.batcher().QueueDepth());
  std::vector<const PreparedImage*> images;
  for (const Batcher::TaskPtr& task : batch) {
    for (const PreparedImage& im : static_cast<Job&>(*task).images) images.push_back(&im);
  }
  auto result = served.runner().Run(images);
  const double inference = Seconds(Clock::now() - start);
  metrics.ObserveBatch(static_cast<int>(images.size()), inference);
  if (!result.ok()) {
    LogEvent(LogLevel::kError, "inference_error", {{"error", result.status().ToString()}});
  }
  const ModelDescription& model = served.description();
  size_t k = 0;
  for (const Batcher::TaskPtr& task : batch) {
    Job& job = static_cast<Job&>(*task);
    metrics.ObserveQueue(Seconds(start - job.enqueued));
    if (!result.ok()) {
      job.Complete(result.status());
      continue;
    }
    DetectResponse& r = job.response;
    r.set_request_id(job.request_id);
    r.set_model(model.name);
    r.set_model_version(model.version);
    r.mutable_timing()->set_queue_seconds(Seconds(start - job.enqueued));
    r.mutable_timing()->set_inference_seconds(inference);
    r.mutable_timing()->set_batch_size(static_cast<int>(images.size()));
    for (size_t i = 0; i < job.images.size(); ++i, ++k) {
      lpdetr::v1::ImageDetections* out = r.add_results();
      out->set_width(static_cast<int>(job.images[i].width));
      out->set_height(static_cast<int>(job.images[i].height));
      out->set_id(job.image_ids[i]);
      for (const RawDetection& d : (*result)[k]) {
        if (out->detections_size() >= job.filter.max_detections) break;
        if (d.score < job.filter.score_threshold) break;  // sorted by score
        if (!job.filter.classes.empty() && !job.filter.classes.count(d.label)) continue;
        lpdetr::v1::Detection* det = out->add_detections();
        det->mutable_box()->set_x_min(d.x_min);
        det->mutable_box()->set_y_min(d.y_min);
        det->mutable_box()->set_x_max(d.x_max);
        det->mutable_box()->set_y_max(d.y_max);
        det->set_score(d.score);
        det->set_label_id(d.label);
        det->set_label(d.label >= 0 && d.label < model.num_classes ? model.classes[d.label]
                                                                   : "class_" + std::to_string(d.label));
      }
    }
    job.Complete(absl::OkStatus());
  }
}

grpc::Status DetectionServiceImpl::Detect(grpc::ServerContext* context,
                                          const DetectRequest* request,
                                          DetectResponse* response) {
  const Clock::time_point t0 = Clock::now();
  absl::Status status;
  absl::StatusOr<std::shared_ptr<Job>> job = Start(context, *request);
  if (!job.ok()) {
    status = job.status();
  } else {
    status = (*job)->Wait();
    if (status.ok()) response->Swap(&(*job)->response);
  }
  metrics_->CountRequest("Detect", status.code(), Seconds(Clock::now() - t0));
  if (!status.ok()) {
    LogEvent(LogLevel::kWarning, "request_error",
             {{"method", "Detect"},
              {"request_id", request->request_id()},
              {"peer", context->peer()},
              {"code", CodeName(status.code())},
              {"error", std::string(status.message())}});
  }
  return ToGrpcStatus(status);
}

grpc::Status DetectionServiceImpl::DetectStream(
    grpc::ServerContext* context,
    grpc::ServerReaderWriter<DetectResponse, DetectRequest>* stream) {
  // On shutdown a stream answers the frames it has in flight and then ends:
  // with UNAVAILABLE when it is not waiting for a frame, else by cancelling
  // the call, because a synchronous Read cannot be interrupted otherwise (an
  // idle stream so never holds the exit).
  struct Slot {
    std::string request_id;
    bool stop_on_error = false;
    Clock::time_point t0;
    absl::Status immediate;     // failed before reaching the batcher
    std::shared_ptr<Job> job;   // else: the job
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Slot>> window;
  bool reading_done = false;
  bool in_read = false;         // the reader is blocked in stream->Read
  bool stop = false;            // writer hit a stop_on_error failure / write failed
  absl::Status end_status;      // the stream's final status when stopped
  StreamRegistration registration(this, &mu, &cv);

  // With mu held: drops every slot, detaching their jobs from the context.
  auto clear_window = [&] {
    for (auto& s : window) {
      if (s->job) s->job->Abandon();
    }
    window.clear();
  };
  auto finish_slot = [&](Slot& slot) -> absl::Status {
    if (!slot.immediate.ok()) return slot.immediate;
    return slot.job->Wait();
  };

  std::thread writer([&] {
    while (true) {
      std::shared_ptr<Slot> slot;
      {
        std::unique_lock<std::mutex> lock(mu);
        bool cancelled_for_drain = false;
        while (window.empty() && !reading_done) {
          if (shutting_down_ && in_read && !cancelled_for_drain) {
            // Draining and nothing in flight: unblock the reader.
            cancelled_for_drain = true;
            end_status = absl::UnavailableError("server is shutting down");
            context->TryCancel();
          }
          cv.wait(lock);
        }
        if (window.empty()) return;
        slot = window.front();
      }
      absl::Status s = finish_slot(*slot);
      metrics_->CountRequest("DetectStream", s.code(), Seconds(Clock::now() - slot->t0));
      bool ok_write = true;
      if (s.ok()) {
        ok_write = stream->Write(slot->job->response);
      } else {
        LogEvent(LogLevel::kWarning, "request_error",
                 {{"method", "DetectStream"},
                  {"request_id", slot->request_id},
                  {"peer", context->peer()},
                  {"code", CodeName(s.code())},
                  {"error", std::string(s.message())}});
        if (slot->stop_on_error || context->IsCancelled()) {
          std::lock_guard<std::mutex> lock(mu);
          stop = true;
          end_status = s;
          clear_window();
          cv.notify_all();
          return;
        }
        DetectResponse r;
        r.set_request_id(slot->request_id);
        r.mutable_error()->set_code(static_cast<int>(s.code()));
        r.mutable_error()->set_message(std::string(s.message()));
        ok_write = stream->Write(r);
      }
      std::lock_guard<std::mutex> lock(mu);
      window.pop_front();
      if (!ok_write) {
        stop = true;
        end_status = absl::CancelledError("stream closed by the client");
        clear_window();
      }
      cv.notify_all();
      if (stop) return;
    }
  });

  DetectRequest request;
  while (true) {
    {
      // Back-pressure: read the next frame only when the window has room.
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return stop || static_cast<int>(window.size()) < options_.stream_window; });
      if (stop) break;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      if (shutting_down_) {
        if (!stop) end_status = absl::UnavailableError("server is shutting down");
        break;
      }
      in_read = true;
    }
    cv.notify_all();
    const bool got = stream->Read(&request);
    {
      std::lock_guard<std::mutex> lock(mu);
      in_read = false;
    }
    if (!got) break;
    auto slot = std::make_shared<Slot>();
    slot->t0 = Clock::now();
    slot->request_id = request.request_id();
    slot->stop_on_error = request.stop_on_error();
    absl::StatusOr<std::shared_ptr<Job>> job = Start(context, request);
    if (job.ok()) {
      slot->job = *job;
    } else {
      slot->immediate = job.status();
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      window.push_back(slot);
    }
    cv.notify_all();
    if (slot->stop_on_error) {
      // Await this frame before reading on, so a failure ends the stream here.
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] {
        return stop || std::find(window.begin(), window.end(), slot) == window.end();
      });
      if (stop) break;
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    reading_done = true;
  }
  cv.notify_all();
  writer.join();
  return ToGrpcStatus(end_status);
}

}  // namespace lpdetr::server

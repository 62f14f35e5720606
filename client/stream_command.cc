// `lpdetr-client stream`: a video file, an image-sequence pattern
// (frames/%04d.png) or a folder of images through DetectStream. A writer
// thread sends frames (gRPC flow control blocks it when the server is behind);
// the main thread reads results and checks they come back in order with the
// frames' ids.
#include <cstdio>
#include <deque>
#include <filesystem>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <opencv2/imgcodecs.hpp>
#if LPDETR_CLIENT_HAS_VIDEOIO
#include <opencv2/videoio.hpp>
#endif

#include "commands.h"
#include "lpdetr/v1/detection.grpc.pb.h"

namespace lpdetr::client {
namespace {

// One frame to send: its id, the encoded bytes and, for drawing, where the
// pixels come from.
struct Frame {
  std::string id;
  std::string data;
  std::string path;  // folder frames: the file
  cv::Mat pixels;    // video frames (kept only when drawing)
};

// Frames of a folder of images or of anything cv::VideoCapture opens.
class FrameSource {
 public:
  FrameSource(const std::string& source, bool keep_pixels, int jpeg_quality)
      : keep_pixels_(keep_pixels), jpeg_quality_(jpeg_quality) {
    std::error_code ec;
    if (std::filesystem::is_directory(source, ec)) {
      files_ = ExpandImagePaths({source});
      if (files_.empty()) throw std::runtime_error("no image files in '" + source + "'");
      return;
    }
    if (HasImageExtension(source) && source.find('%') == std::string::npos) {
      files_ = {source};
      return;
    }
#if LPDETR_CLIENT_HAS_VIDEOIO
    if (!capture_.open(source)) {
      throw std::runtime_error("OpenCV cannot open video or image sequence '" + source + "'");
    }
#else
    throw std::runtime_error("this lpdetr-client was built without OpenCV videoio: '" +
                             source + "' must be a folder of images");
#endif
  }

  // False at the end of the source.
  bool Next(Frame* frame) {
    if (!IsVideo()) {
      if (index_ >= files_.size()) return false;
      frame->path = files_[index_];
      frame->id = std::filesystem::path(frame->path).filename().string();
      frame->data = ReadFileOrThrow(frame->path);
      ++index_;
      return true;
    }
#if LPDETR_CLIENT_HAS_VIDEOIO
    cv::Mat bgr;
    if (!capture_.read(bgr) || bgr.empty()) return false;
    char id[32];
    std::snprintf(id, sizeof(id), "frame-%06zu", index_++);
    frame->id = id;
    std::vector<uchar> encoded;
    if (!cv::imencode(".jpg", bgr, encoded, {cv::IMWRITE_JPEG_QUALITY, jpeg_quality_})) {
      throw std::runtime_error("cannot JPEG-encode " + frame->id);
    }
    frame->data.assign(encoded.begin(), encoded.end());
    if (keep_pixels_) frame->pixels = bgr;
    return true;
#else
    return false;
#endif
  }

 private:
  bool IsVideo() const {
#if LPDETR_CLIENT_HAS_VIDEOIO
    return capture_.isOpened();
#else
    return false;
#endif
  }

  bool keep_pixels_;
  int jpeg_quality_;
  std::vector<std::string> files_;
  size_t index_ = 0;
#if LPDETR_CLIENT_HAS_VIDEOIO
  cv::VideoCapture capture_;
#endif
};

}  // namespace

int RunStream(const ClientOptions& options, const std::string& source) {
  if (options.jpeg_quality < 1 || options.jpeg_quality > 100) {
    throw std::invalid_argument("--jpeg_quality must be in [1, 100], got " +
                                std::to_string(options.jpeg_quality));
  }
  lpdetr::v1::DetectOptions detect_options;
  FillDetectOptions(options.filter, &detect_options);
  const bool draw = !options.draw.empty();
  if (draw) std::filesystem::create_directories(options.draw);
  FrameSource frames(source, draw, options.jpeg_quality);
  // COCO results carry the model's dataset category ids: learn them first.
  const bool write_coco = !options.json.empty();
  const CategoryMap categories = write_coco ? FetchCategoryMap(options) : CategoryMap();

  auto channel = MakeChannel(options.connection);
  auto stub = lpdetr::v1::DetectionService::NewStub(channel);
  grpc::ClientContext context;
  ApplyDeadline(options.connection, &context);
  std::unique_ptr<grpc::ClientReaderWriter<lpdetr::v1::DetectRequest, lpdetr::v1::DetectResponse>>
      stream = stub->DetectStream(&context);

  // Frames sent and not yet answered, in send order.
  std::mutex mu;
  std::deque<Frame> in_flight;
  std::string source_error;
  size_t sent = 0;

  std::thread writer([&] {
    try {
      Frame frame;
      while ((options.max_frames <= 0 || sent < static_cast<size_t>(options.max_frames)) &&
             frames.Next(&frame)) {
        lpdetr::v1::DetectRequest request;
        *request.mutable_options() = detect_options;
        request.set_model(options.model);
        request.set_request_id(frame.id);
        request.set_stop_on_error(options.stop_on_error);
        auto* image = request.add_images();
        image->set_data(std::move(frame.data));
        image->set_id(frame.id);
        {
          std::lock_guard<std::mutex> lock(mu);
          frame.data.clear();
          in_flight.push_back(frame);
        }
        if (!stream->Write(request)) break;  // the stream ended (see Finish)
        ++sent;
        frame = Frame();
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(mu);
      source_error = e.what();
    }
    stream->WritesDone();
  });

  std::FILE* text = options.json == "-" ? stderr : stdout;
  nlohmann::json coco = nlohmann::json::array();
  std::set<std::string> used_names;
  size_t received = 0;
  int failed_frames = 0;
  bool out_of_order = false;
  lpdetr::v1::DetectResponse response;
  while (stream->Read(&response)) {
    Frame frame;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!in_flight.empty()) {
        frame = std::move(in_flight.front());
        in_flight.pop_front();
      }
    }
    const size_t index = received++;
    if (response.request_id() != frame.id) {
      std::fprintf(stderr, "error: response %zu has id '%s', expected '%s'\n", index,
                   response.request_id().c_str(), frame.id.c_str());
      out_of_order = true;
      continue;
    }
    if (response.has_error()) {
      ++failed_frames;
      std::fprintf(stderr, "%s: error: %s: %s\n", frame.id.c_str(),
                   StatusCodeName(static_cast<grpc::StatusCode>(response.error().code())),
                   response.error().message().c_str());
      continue;
    }
    if (response.results_size() != 1) {
      ++failed_frames;
      std::fprintf(stderr, "%s: error: %d results for one image\n", frame.id.c_str(),
                   response.results_size());
      continue;
    }
    if (const std::string mismatch = write_coco ? categories.MismatchWith(response) : "";
        !mismatch.empty()) {
      ++failed_frames;
      std::fprintf(stderr, "%s: error: %s\n", frame.id.c_str(), mismatch.c_str());
      continue;
    }
    const auto& result = response.results(0);
    if (!options.quiet) PrintDetections(text, frame.id, result);
    try {
      AppendCocoResults(static_cast<int64_t>(index), frame.id, result, categories, &coco);
    } catch (const std::out_of_range& e) {
      ++failed_frames;
      std::fprintf(stderr, "%s: error: %s\n", frame.id.c_str(), e.what());
    }
    if (draw) {
      cv::Mat bgr = frame.path.empty() ? frame.pixels : cv::imread(frame.path, cv::IMREAD_COLOR);
      if (!bgr.empty()) {
        DrawDetections(result, &bgr);
        const std::string name =
            frame.path.empty() ? frame.id + ".jpg" : frame.path;
        const std::string out = DrawOutputPath(options.draw, name, &used_names);
        if (!cv::imwrite(out, bgr)) std::fprintf(stderr, "cannot write '%s'\n", out.c_str());
      }
    }
  }
  writer.join();
  const grpc::Status status = stream->Finish();
  if (!options.json.empty()) WriteJson(coco, options.json);
  std::fprintf(text, "%zu frames sent, %zu results, %d failed\n", sent, received, failed_frames);
  int rc = 0;
  if (!source_error.empty()) {
    std::fprintf(stderr, "error reading frames: %s\n", source_error.c_str());
    rc = 1;
  }
  if (!status.ok()) {
    std::fprintf(stderr, "stream ended: %s\n", DescribeStatus(status).c_str());
    rc = 1;
  }
  if (out_of_order || received != sent || failed_frames > 0) rc = 1;
  return rc;
}

}  // namespace lpdetr::client

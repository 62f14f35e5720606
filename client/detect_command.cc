// `lpdetr-client detect`: files and folders through DetectionService.Detect,
// `concurrency` requests in flight, results listed in input order.
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <opencv2/imgcodecs.hpp>

#include "commands.h"
#include "lpdetr/v1/detection.grpc.pb.h"

namespace lpdetr::client {
namespace {

struct ImageOutcome {
  bool ok = false;
  std::string error;
  lpdetr::v1::ImageDetections detections;
  std::string drawn_path;
};

}  // namespace

int RunDetect(const ClientOptions& options, const std::vector<std::string>& paths) {
  const std::vector<std::string> files = ExpandImagePaths(paths);
  if (files.empty()) throw std::invalid_argument("detect: no image files found");
  lpdetr::v1::DetectOptions detect_options;
  FillDetectOptions(options.filter, &detect_options);
  if (!options.draw.empty()) std::filesystem::create_directories(options.draw);

  // Output names for drawings are decided up front so they don't depend on
  // which request finishes first.
  std::vector<std::string> draw_paths(files.size());
  if (!options.draw.empty()) {
    std::set<std::string> used;
    for (size_t i = 0; i < files.size(); ++i) {
      draw_paths[i] = DrawOutputPath(options.draw, files[i], &used);
    }
  }

  // COCO results carry the model's dataset category ids: learn them first.
  const bool write_coco = !options.json.empty();
  const CategoryMap categories = write_coco ? FetchCategoryMap(options) : CategoryMap();

  auto channel = MakeChannel(options.connection);
  auto stub = lpdetr::v1::DetectionService::NewStub(channel);
  const size_t per_request = static_cast<size_t>(options.images_per_request);
  const size_t num_requests = (files.size() + per_request - 1) / per_request;
  std::vector<ImageOutcome> outcomes(files.size());
  std::atomic<size_t> next{0};

  auto worker = [&] {
    for (size_t r = next++; r < num_requests; r = next++) {
      const size_t begin = r * per_request;
      const size_t end = std::min(files.size(), begin + per_request);
      lpdetr::v1::DetectRequest request;
      *request.mutable_options() = detect_options;
      request.set_model(options.model);
      request.set_request_id("detect-" + std::to_string(r));
      std::vector<size_t> sent;
      for (size_t i = begin; i < end; ++i) {
        try {
          auto* image = request.add_images();
          image->set_data(ReadFileOrThrow(files[i]));
          image->set_id(files[i]);
          sent.push_back(i);
        } catch (const std::exception& e) {
          request.mutable_images()->RemoveLast();
          outcomes[i].error = e.what();
        }
      }
      if (sent.empty()) continue;
      grpc::ClientContext context;
      ApplyDeadline(options.connection, &context);
      lpdetr::v1::DetectResponse response;
      const grpc::Status status = stub->Detect(&context, request, &response);
      if (!status.ok() || response.results_size() != static_cast<int>(sent.size())) {
        const std::string error =
            !status.ok() ? DescribeStatus(status)
                         : "server returned " + std::to_string(response.results_size()) +
                               " results for " + std::to_string(sent.size()) + " images";
        for (size_t i : sent) outcomes[i].error = error;
        continue;
      }
      if (const std::string mismatch = write_coco ? categories.MismatchWith(response) : "";
          !mismatch.empty()) {
        for (size_t i : sent) outcomes[i].error = mismatch;
        continue;
      }
      for (size_t k = 0; k < sent.size(); ++k) {
        ImageOutcome& out = outcomes[sent[k]];
        out.ok = true;
        out.detections = std::move(*response.mutable_results(static_cast<int>(k)));
        if (!options.draw.empty()) {
          cv::Mat bgr = cv::imread(files[sent[k]], cv::IMREAD_COLOR);
          if (bgr.empty()) {
            out.error = "drawing: OpenCV cannot decode '" + files[sent[k]] + "'";
            continue;
          }
          DrawDetections(out.detections, &bgr);
          if (cv::imwrite(draw_paths[sent[k]], bgr)) {
            out.drawn_path = draw_paths[sent[k]];
          } else {
            out.error = "cannot write '" + draw_paths[sent[k]] + "'";
          }
        }
      }
    }
  };
  const int num_threads =
      static_cast<int>(std::min<size_t>(static_cast<size_t>(options.concurrency), num_requests));
  std::vector<std::thread> threads;
  for (int t = 0; t < num_threads; ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();

  // Text goes to stdout unless stdout carries the JSON.
  std::FILE* text = options.json == "-" ? stderr : stdout;
  nlohmann::json coco = nlohmann::json::array();
  int failures = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    ImageOutcome& out = outcomes[i];
    if (out.ok) {
      if (!options.quiet) PrintDetections(text, files[i], out.detections);
      if (!out.drawn_path.empty() && !options.quiet) {
        std::fprintf(text, "  drawn: %s\n", out.drawn_path.c_str());
      }
      try {
        AppendCocoResults(CocoImageId(files[i], static_cast<int64_t>(i) + 1),
                          std::filesystem::path(files[i]).filename().string(), out.detections,
                          categories, &coco);
      } catch (const std::out_of_range& e) {
        out.error = e.what();
      }
    }
    if (!out.error.empty()) {
      ++failures;
      std::fprintf(stderr, "%s: error: %s\n", files[i].c_str(), out.error.c_str());
    }
  }
  if (!options.json.empty()) WriteJson(coco, options.json);
  std::fprintf(text, "%zu image%s, %d failed\n", files.size(), files.size() == 1 ? "" : "s",
               failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace lpdetr::client

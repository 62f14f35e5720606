// The lpdetr-client subcommands. Each returns the process exit status:
// 0 success, 1 a call or an image failed, 2 bad usage.
#pragma once

#include <string>
#include <vector>

#include "channel.h"
#include "images.h"

namespace lpdetr::client {

// Everything the subcommands read from the command line.
struct ClientOptions {
  ConnectionOptions connection;
  DetectionFilter filter;
  // Model name to ask for ("" = the server's active model).
  std::string model;
  // Parallel requests in flight (detect, bench).
  int concurrency = 1;
  // Images per Detect request (detect, bench).
  int images_per_request = 1;
  // COCO results / model info as JSON to this path ("-" = stdout); "" = text.
  std::string json;
  // Folder for images with boxes drawn ("" = no drawing).
  std::string draw;
  // stream: stop at this many frames (0 = all), end on the first failed frame,
  // JPEG quality for video frames.
  int max_frames = 0;
  bool stop_on_error = false;
  int jpeg_quality = 90;
  // health: service name; watch for changes until the deadline.
  std::string service;
  bool watch = false;
  // bench: measured requests, warm-up requests (-1 = concurrency), image.
  int requests = 100;
  int warmup = -1;
  std::string image;
  // Print less (detect: no per-image listing).
  bool quiet = false;
};

// The category map of the model `options.model` names ("" = the active one)
// from ModelService.GetModel. Throws std::runtime_error when the call fails.
CategoryMap FetchCategoryMap(const ClientOptions& options);

int RunDetect(const ClientOptions& options, const std::vector<std::string>& paths);
int RunStream(const ClientOptions& options, const std::string& source);
int RunHealth(const ClientOptions& options);
int RunModels(const ClientOptions& options);
int RunBench(const ClientOptions& options);

}  // namespace lpdetr::client

// The lpdetr-client subcommands. Each returns the process exit status:
// 0 success, 1 a call or an image failed, 2 bad usage.
#pragma once

#include <list>
#include <set>
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

// What lpdetr-client reads from argv itself before absl parses it.
struct RawArguments {
  // The arguments for absl::ParseCommandLine (nullptr-terminated, the
  // terminator not counted as an argument): flag names spelled with '-' are
  // rewritten in place to the '_' of a defined flag ("--output-model" ->
  // "--output_model"), every --param is taken out, and a flag followed by a
  // lone "-" value is joined with it.
  std::vector<char*> argv;
  // The values of every `--param KEY=VALUE` / `--param=KEY=VALUE`, in order.
  std::vector<std::string> params;
  // Names of the defined flags that appear on the command line.
  std::set<std::string> given;
  // Arguments rewritten into new strings ("--json -" -> "--json=-"); `argv`
  // points into them.
  std::list<std::string> storage;
};

// Throws std::invalid_argument for a --param without a value.
RawArguments PreparseArguments(int argc, char** argv);

// `admin SUBCOMMAND ARGS...` (args[0] is the subcommand): AdminService on the
// admin listener (127.0.0.1:50052 unless --address is given).
int RunAdmin(const ClientOptions& options, const RawArguments& raw,
             const std::vector<std::string>& args);

}  // namespace lpdetr::client

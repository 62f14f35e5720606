// lpdetr-client: command-line client of lpdetr-server (DetectionService,
// ModelService, grpc.health.v1, AdminService). See `lpdetr-client --help`.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <absl/flags/flag.h>
#include <absl/flags/parse.h>
#include <absl/flags/usage.h>
#include <absl/flags/usage_config.h>

#include "commands.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051", "Server address host:port.");
ABSL_FLAG(double, timeout, 30.0,
          "Deadline of each call in seconds (the whole stream for `stream`); 0 = none.");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA certificates of the server; enables TLS.");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate (mutual TLS).");
ABSL_FLAG(std::string, tls_key, "", "PEM client private key (mutual TLS).");
ABSL_FLAG(std::string, tls_server_name, "",
          "Server name expected in its certificate, when not the address host.");
ABSL_FLAG(std::string, model, "", "Model name (default: the server's active model).");
ABSL_FLAG(double, score_threshold, -1.0,
          "Keep detections with score >= this, in [0, 1]; < 0 = the server default.");
ABSL_FLAG(int, max_detections, 0, "At most this many detections per image; 0 = model's.");
ABSL_FLAG(std::string, classes, "",
          "Comma-separated class ids and/or names to keep (default: all).");
ABSL_FLAG(int, concurrency, 1, "detect/bench: requests in flight at once.");
ABSL_FLAG(int, images_per_request, 1, "detect/bench: images sent in one Detect request.");
ABSL_FLAG(std::string, json, "",
          "detect/stream: COCO results JSON ({image_id, category_id, bbox [x,y,w,h], "
          "score}; category_id = the model's dataset category id when it carries a "
          "category map, else the label id); models: model info JSON. Path, or - for "
          "stdout. admin: the response in the proto JSON mapping.");
ABSL_FLAG(std::string, draw, "", "detect/stream: write images with boxes drawn to this folder.");
ABSL_FLAG(int, max_frames, 0, "stream: stop after this many frames; 0 = all.");
ABSL_FLAG(bool, stop_on_error, false, "stream: end the stream on the first failed frame.");
ABSL_FLAG(int, jpeg_quality, 90, "stream: JPEG quality of video frames sent.");
ABSL_FLAG(std::string, service, "", "health: service name (\"\" = whole server).");
ABSL_FLAG(bool, watch, false,
          "health: print status changes until the deadline; admin start: then watch the job.");
ABSL_FLAG(int, requests, 100, "bench: measured requests.");
ABSL_FLAG(int, warmup, -1, "bench: warm-up requests before measuring; -1 = concurrency.");
ABSL_FLAG(std::string, image, "", "bench: image file sent by every request.");
ABSL_FLAG(bool, quiet, false, "detect/stream: no per-image listing.");

namespace {

constexpr char kUsage[] =
    "lpdetr-client COMMAND [flags] [args]\n"
    "Commands:\n"
    "  detect FILE_OR_FOLDER...  detect objects (--concurrency, --json, --draw,\n"
    "                            --score_threshold, --max_detections, --classes)\n"
    "  stream VIDEO_OR_FOLDER    send frames through DetectStream, results in order\n"
    "  health                    grpc.health.v1 Check (exit 0 when SERVING)\n"
    "  models                    list the server's models (ModelService)\n"
    "  bench --image F           load benchmark: --concurrency N --requests M;\n"
    "                            prints throughput (images/s) and p50/p99 latency\n"
    "  admin SUBCOMMAND          AdminService (token from --token_file or\n"
    "                            $LPDETR_ADMIN_TOKEN): start, watch, list, get, cancel,\n"
    "                            resume, log, models, activate, rollback, delete\n"
    "Connection: --address, --timeout, --tls_ca, --tls_cert, --tls_key, --tls_server_name";

lpdetr::client::ClientOptions OptionsFromFlags() {
  lpdetr::client::ClientOptions o;
  o.connection.address = absl::GetFlag(FLAGS_address);
  o.connection.timeout_seconds = absl::GetFlag(FLAGS_timeout);
  o.connection.tls_ca = absl::GetFlag(FLAGS_tls_ca);
  o.connection.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  o.connection.tls_key = absl::GetFlag(FLAGS_tls_key);
  o.connection.tls_server_name = absl::GetFlag(FLAGS_tls_server_name);
  o.model = absl::GetFlag(FLAGS_model);
  const double threshold = absl::GetFlag(FLAGS_score_threshold);
  if (threshold >= 0) o.filter.score_threshold = static_cast<float>(threshold);
  o.filter.max_detections = absl::GetFlag(FLAGS_max_detections);
  o.filter.classes = absl::GetFlag(FLAGS_classes);
  o.concurrency = absl::GetFlag(FLAGS_concurrency);
  o.images_per_request = absl::GetFlag(FLAGS_images_per_request);
  o.json = absl::GetFlag(FLAGS_json);
  o.draw = absl::GetFlag(FLAGS_draw);
  o.max_frames = absl::GetFlag(FLAGS_max_frames);
  o.stop_on_error = absl::GetFlag(FLAGS_stop_on_error);
  o.jpeg_quality = absl::GetFlag(FLAGS_jpeg_quality);
  o.service = absl::GetFlag(FLAGS_service);
  o.watch = absl::GetFlag(FLAGS_watch);
  o.requests = absl::GetFlag(FLAGS_requests);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.image = absl::GetFlag(FLAGS_image);
  o.quiet = absl::GetFlag(FLAGS_quiet);
  return o;
}

int Usage(const char* problem) {
  std::fprintf(stderr, "lpdetr-client: %s\n\n%s\n", problem, kUsage);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  absl::FlagsUsageConfig usage_config;
  usage_config.version_string = [] { return std::string("lpdetr-client " LPDETR_VERSION "\n"); };
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage(kUsage);
  lpdetr::client::RawArguments raw;
  try {
    raw = lpdetr::client::PreparseArguments(argc, argv);
  } catch (const std::invalid_argument& e) {
    return Usage(e.what());
  }
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(raw.argv.size()) - 1, raw.argv.data());
  if (positional.size() < 2) return Usage("missing COMMAND");
  const std::string command = positional[1];
  const std::vector<std::string> args(positional.begin() + 2, positional.end());
  try {
    const lpdetr::client::ClientOptions options = OptionsFromFlags();
    if (options.concurrency < 1) return Usage("--concurrency must be >= 1");
    if (options.images_per_request < 1) return Usage("--images_per_request must be >= 1");
    if (command == "admin") return lpdetr::client::RunAdmin(options, raw, args);
    if (!raw.params.empty()) return Usage("--param is an option of `admin start`");
    if (command == "detect") {
      if (args.empty()) return Usage("detect: give at least one image file or folder");
      return lpdetr::client::RunDetect(options, args);
    }
    if (command == "stream") {
      if (args.size() != 1) return Usage("stream: give exactly one video file or folder");
      return lpdetr::client::RunStream(options, args[0]);
    }
    if (!args.empty()) {
      return Usage(("unexpected argument '" + args[0] + "' for " + command).c_str());
    }
    if (command == "health") return lpdetr::client::RunHealth(options);
    if (command == "models") return lpdetr::client::RunModels(options);
    if (command == "bench") return lpdetr::client::RunBench(options);
    return Usage(("unknown command '" + command + "'").c_str());
  } catch (const std::invalid_argument& e) {
    return Usage(e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lpdetr-client: %s\n", e.what());
    return 1;
  }
}

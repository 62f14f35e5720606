// lpdetr-server: the LP-DETR detection service (SPEC 4).
//
//   lpdetr-server [--config FILE.json] [--flag=value ...]
//
// Serves lpdetr.v1.DetectionService and ModelService, grpc.health.v1.Health
// and server reflection on --grpc_address, Prometheus metrics on
// --metrics_address (/metrics). The optional --config JSON file holds the
// same keys as the flags ({"max_batch_size": 8, "tls_cert": "..."}); flags
// given on the command line win over it. SIGTERM / SIGINT: new requests get
// UNAVAILABLE, health turns NOT_SERVING, accepted work finishes, and the
// process exits within --shutdown_timeout_s. Logs: one JSON object per line
// on stderr.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "model/default_model.h"
#include "model/runtime.h"
#include "server/call_tracker.h"
#include "server/detection_service.h"
#include "server/health_service.h"
#include "server/log.h"
#include "server/metrics/metrics.h"
#include "server/model_runner.h"
#include "server/model_service.h"
#include "server/service_metrics.h"

ABSL_FLAG(std::string, config, "", "Optional JSON file with flag values (same keys as the flags)");
ABSL_FLAG(std::string, grpc_address, "0.0.0.0:50051", "gRPC listen address host:port (port 0: any)");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0:9464",
          "Prometheus /metrics listen address host:port (port 0: any; empty: off)");
ABSL_FLAG(std::string, model_dir, "",
          "Model directory (default: the embedded lp-detr-shapes model, found from the "
          "binary's location: <bin>/../share/lpdetr/models/lp-detr-shapes)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(int32_t, max_batch_size, 8, "Most images per inference batch");
ABSL_FLAG(int64_t, max_queue_delay_us, 2000,
          "Longest wait for a batch to fill, from its oldest request's arrival (0: no wait)");
ABSL_FLAG(int32_t, max_queue_size, 64, "Most requests queued; more get RESOURCE_EXHAUSTED");
ABSL_FLAG(int32_t, num_workers, 1, "Inference worker threads");
ABSL_FLAG(int32_t, intra_op_threads, 0, "LibTorch intra-op threads per batch (0: all cores)");
ABSL_FLAG(bool, bucket_by_size, false, "Batch only images of the same padded input size");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (TLS when set, with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA bundle: mutual TLS, clients must present a certificate it signed");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20,
          "Largest request message; larger ones get RESOURCE_EXHAUSTED");
ABSL_FLAG(int32_t, max_images_per_request, 16, "Most images in one DetectRequest");
ABSL_FLAG(int64_t, max_image_pixels, 50'000'000,
          "Largest width*height of one image, checked on its header before decoding");
ABSL_FLAG(int32_t, stream_window, 4, "DetectStream frames in flight per stream");
ABSL_FLAG(double, shutdown_timeout_s, 30.0,
          "On SIGTERM/SIGINT, how long accepted work may take before the process exits");

namespace lpdetr::server {
namespace {

using nlohmann::json;

// Names of the flags given on the command line (--name, --name=v, --noname).
std::set<std::string> ExplicitFlags(int argc, char** argv) {
  std::set<std::string> names;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") break;
    if (a.rfind("-", 0) != 0) continue;
    a = a.substr(a.rfind("--", 0) == 0 ? 2 : 1);
    a = a.substr(0, a.find('='));
    names.insert(a);
    if (a.rfind("no", 0) == 0) names.insert(a.substr(2));
  }
  return names;
}

// True for flags defined in this file (the server's own), false for Abseil's
// built-in ones such as --flagfile. Abseil reports a flag's file normalised
// (leading slashes stripped, and ccache may have made __FILE__ relative), so
// compare the trailing path rather than the whole string.
bool IsServerFlag(const absl::CommandLineFlag& flag) {
  return absl::EndsWith(flag.Filename(), "server/server_main.cc");
}

absl::Status ApplyConfigFile(const std::string& path, const std::set<std::string>& explicit_flags,
                             json* applied) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open --config file '", path, "'"));
  json j;
  try {
    in >> j;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("--config ", path, ": invalid JSON: ", e.what()));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("--config ", path, ": not a JSON object"));
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(key);
    if (key == "config" || flag == nullptr || !IsServerFlag(*flag)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--config ", path, ": unknown key '", key, "'"));
    }
    if (explicit_flags.count(key)) continue;  // the command line wins
    const std::string value = it->is_string() ? it->get<std::string>() : it->dump();
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--config ", path, ": bad value for '", key, "': ", error));
    }
    (*applied)[key] = *it;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadFile(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read --", flag, " file '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeCredentials() {
  const std::string cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key);
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  if (cert.empty() && key.empty() && ca.empty()) return grpc::InsecureServerCredentials();
  if (cert.empty() || key.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls_cert and --tls_key");
  }
  grpc::SslServerCredentialsOptions options(
      ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                 : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  absl::StatusOr<std::string> cert_pem = ReadFile(cert, "tls_cert");
  if (!cert_pem.ok()) return cert_pem.status();
  absl::StatusOr<std::string> key_pem = ReadFile(key, "tls_key");
  if (!key_pem.ok()) return key_pem.status();
  options.pem_key_cert_pairs.push_back({*key_pem, *cert_pem});
  if (!ca.empty()) {
    absl::StatusOr<std::string> ca_pem = ReadFile(ca, "tls_ca");
    if (!ca_pem.ok()) return ca_pem.status();
    options.pem_root_certs = *ca_pem;
  }
  return grpc::SslServerCredentials(options);
}

int Fail(const absl::Status& status, const char* stage) {
  LogEvent(LogLevel::kError, "startup_failed",
           {{"stage", stage}, {"error", std::string(status.message())},
            {"code", static_cast<int>(status.code())}});
  return 1;
}

// The graceful drain after SIGTERM / SIGINT, in this order:
//  1. health turns NOT_SERVING at once (every service name) and open health
//     Watch streams end after sending it;
//  2. new Detect calls and stream frames get UNAVAILABLE, accepted ones keep
//     running; each DetectStream answers its frames in flight, then ends (an
//     idle one at once);
//  3. the drain waits, until `deadline`, for every gRPC call to be finished
//     with its answer written out (CallTracker);
//  4. the gRPC server shuts down: what is left past the deadline is
//     cancelled (logged with a count), and idle client connections close
//     (waiting for clients to close them would hold the exit);
//  5. the batcher drains and its workers join.
void Drain(std::chrono::steady_clock::time_point deadline, HealthServiceImpl* health,
           DetectionServiceImpl* detection, const CallTracker& calls, grpc::Server* server) {
  health->Shutdown();
  detection->BeginShutdown();
  const int left = calls.WaitForNone(deadline);
  if (left > 0) LogEvent(LogLevel::kWarning, "shutdown_timeout", {{"calls_cancelled", left}});
  server->Shutdown(std::chrono::system_clock::now());
  detection->StopBatcher();
  server->Wait();
}

int Main(int argc, char** argv) {
  // Termination signals are handled by sigwait below; block them before any
  // thread starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::SetProgramUsageMessage("LP-DETR gRPC detection server. See --helpfull.");
  const std::set<std::string> explicit_flags = ExplicitFlags(argc, argv);
  absl::ParseCommandLine(argc, argv);
  json from_config = json::object();
  if (const std::string config = absl::GetFlag(FLAGS_config); !config.empty()) {
    if (absl::Status s = ApplyConfigFile(config, explicit_flags, &from_config); !s.ok()) {
      return Fail(s, "config");
    }
  }
  std::string model_dir = absl::GetFlag(FLAGS_model_dir);
  if (model_dir.empty()) {
    try {
      model_dir = FindDefaultModelDir();
    } catch (const std::exception& e) {
      return Fail(absl::NotFoundError(e.what()), "model");
    }
  }
  const int intra_op = absl::GetFlag(FLAGS_intra_op_threads);
  if (intra_op < 0) {
    return Fail(absl::InvalidArgumentError(
                    absl::StrCat("--intra_op_threads must be >= 0, got ", intra_op)), "config");
  }

  Batcher::Options batcher;
  batcher.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  batcher.max_queue_delay_us = absl::GetFlag(FLAGS_max_queue_delay_us);
  batcher.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  batcher.num_workers = absl::GetFlag(FLAGS_num_workers);
  batcher.bucket_by_size = absl::GetFlag(FLAGS_bucket_by_size);
  DetectionServiceImpl::Options service_options;
  service_options.max_images_per_request = absl::GetFlag(FLAGS_max_images_per_request);
  service_options.max_image_pixels = absl::GetFlag(FLAGS_max_image_pixels);
  service_options.stream_window = absl::GetFlag(FLAGS_stream_window);
  const int64_t max_message = absl::GetFlag(FLAGS_max_message_bytes);
  if (max_message < 1024 || max_message > (int64_t{1} << 31) - 1) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
                    "--max_message_bytes must be in [1024, 2^31-1], got ", max_message)),
                "config");
  }
  const double shutdown_timeout = absl::GetFlag(FLAGS_shutdown_timeout_s);
  if (!(shutdown_timeout >= 0)) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
                    "--shutdown_timeout_s must be >= 0, got ", shutdown_timeout)), "config");
  }

  LogEvent(LogLevel::kInfo, "config",
           {{"grpc_address", absl::GetFlag(FLAGS_grpc_address)},
            {"metrics_address", absl::GetFlag(FLAGS_metrics_address)},
            {"model_dir", model_dir},
            {"device", absl::GetFlag(FLAGS_device)},
            {"max_batch_size", batcher.max_batch_size},
            {"max_queue_delay_us", batcher.max_queue_delay_us},
            {"max_queue_size", batcher.max_queue_size},
            {"num_workers", batcher.num_workers},
            {"bucket_by_size", batcher.bucket_by_size},
            {"intra_op_threads", intra_op},
            {"tls", !absl::GetFlag(FLAGS_tls_cert).empty()},
            {"mutual_tls", !absl::GetFlag(FLAGS_tls_ca).empty()},
            {"max_message_bytes", max_message},
            {"max_images_per_request", service_options.max_images_per_request},
            {"max_image_pixels", service_options.max_image_pixels},
            {"stream_window", service_options.stream_window},
            {"shutdown_timeout_s", shutdown_timeout},
            {"from_config_file", from_config}});

  if (!std::filesystem::exists(std::filesystem::path(model_dir) / "config.json")) {
    return Fail(absl::NotFoundError(absl::StrCat(
                    "model directory '", model_dir,
                    "' has no config.json: pass --model_dir DIR (a model directory, see "
                    "lpdetr-model info), or leave it out to serve the embedded default model")),
                "model");
  }
  ApplyNumerics(Numerics::kFast, intra_op);
  const auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<ModelRunner>> runner =
      ModelRunner::Create(model_dir, absl::GetFlag(FLAGS_device));
  if (!runner.ok()) return Fail(runner.status(), "model");
  const ModelDescription& model = (*runner)->description();
  LogEvent(LogLevel::kInfo, "model_loaded",
           {{"name", model.name}, {"variant", model.variant}, {"version", model.version},
            {"backbone", model.backbone}, {"num_classes", model.num_classes},
            {"min_size", model.min_size}, {"max_size", model.max_size},
            {"device", model.device}, {"dir", model_dir},
            {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                      load_start).count()}});

  auto registry = std::make_shared<metrics::Registry>();
  ServiceMetrics service_metrics(registry, model);
  std::unique_ptr<metrics::Exposer> exposer;
  if (const std::string addr = absl::GetFlag(FLAGS_metrics_address); !addr.empty()) {
    absl::StatusOr<std::unique_ptr<metrics::Exposer>> e = metrics::Exposer::Create(addr, registry);
    if (!e.ok()) return Fail(e.status(), "metrics");
    exposer = std::move(*e);
  }

  absl::StatusOr<std::unique_ptr<DetectionServiceImpl>> detection =
      DetectionServiceImpl::Create(service_options, batcher, runner->get(), &service_metrics);
  if (!detection.ok()) return Fail(detection.status(), "config");
  ModelServiceImpl model_service(&model, &service_metrics);

  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeCredentials();
  if (!credentials.ok()) return Fail(credentials.status(), "tls");

  HealthServiceImpl health;
  CallTracker calls;
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int grpc_port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_grpc_address), *credentials, &grpc_port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message));
  builder.SetMaxSendMessageSize(static_cast<int>(max_message));
  builder.RegisterService(detection->get());
  builder.RegisterService(&model_service);
  builder.RegisterService(&health);
  {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> hooks;
    hooks.push_back(calls.MakeFactory());
    builder.experimental().SetInterceptorCreators(std::move(hooks));
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || grpc_port == 0) {
    return Fail(absl::UnavailableError(absl::StrCat("cannot listen on --grpc_address ",
                                                    absl::GetFlag(FLAGS_grpc_address))),
                "listen");
  }
  // The server as a whole ("") and each of its services by full name.
  health.SetServingStatus("", true);
  for (const char* service : {"lpdetr.v1.DetectionService", "lpdetr.v1.ModelService"}) {
    health.SetServingStatus(service, true);
  }
  LogEvent(LogLevel::kInfo, "startup",
           {{"grpc_address", absl::GetFlag(FLAGS_grpc_address)},
            {"grpc_port", grpc_port},
            {"metrics_port", exposer ? exposer->port() : 0},
            {"pid", static_cast<int>(getpid())},
            {"health", "SERVING"}});

  int sig = 0;
  sigwait(&signals, &sig);
  const auto stop_start = std::chrono::steady_clock::now();
  LogEvent(LogLevel::kInfo, "shutdown",
           {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"},
            {"queued", (*detection)->batcher().QueueDepth()},
            {"timeout_s", shutdown_timeout}});
  Drain(stop_start + std::chrono::microseconds(static_cast<int64_t>(shutdown_timeout * 1e6)),
        &health, detection->get(), calls, server.get());
  exposer.reset();
  LogEvent(LogLevel::kInfo, "shutdown_complete",
           {{"detect_ok", service_metrics.RequestCount("Detect", absl::StatusCode::kOk)},
            {"stream_frames_ok",
             service_metrics.RequestCount("DetectStream", absl::StatusCode::kOk)},
            {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                      stop_start).count()}});
  return 0;
}

}  // namespace
}  // namespace lpdetr::server

int main(int argc, char** argv) {
  lpdetr::ConfigureProcess(argv, lpdetr::Numerics::kFast);
  lpdetr::RetainFreedMemory();
  return lpdetr::server::Main(argc, argv);
}

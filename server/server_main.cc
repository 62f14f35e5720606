// lpdetr-server: the LP-DETR detection service (SPEC 4).
//
//   lpdetr-server [--config FILE.json] [--flag=value ...]
//
// Serves lpdetr.v1.DetectionService and ModelService, grpc.health.v1.Health
// and server reflection on --grpc_address, Prometheus metrics on
// --metrics_address (/metrics), and, when an admin token is configured,
// lpdetr.v1.AdminService (fine-tuning jobs, the model registry, hot swap) on
// --admin_address. The optional --config JSON file holds the
// same keys as the flags ({"max_batch_size": 8, "tls_cert": "..."}); flags
// given on the command line win over it. SIGTERM / SIGINT: new requests get
// UNAVAILABLE, health turns NOT_SERVING, accepted work finishes, and the
// process exits within --shutdown_timeout_s. Logs: one JSON object per line
// on stderr.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>
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
#include "model/precision.h"
#include "model/runtime.h"
#include "server/admin/admin_auth.h"
#include "server/admin/job_manager.h"
#include "server/admin/job_store.h"
#include "server/admin/model_registry.h"
#include "server/admin_service.h"
#include "server/call_tracker.h"
#include "server/detection_service.h"
#include "server/health_service.h"
#include "server/log.h"
#include "server/metrics/metrics.h"
#include "server/model_host.h"
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
ABSL_FLAG(std::string, precision, "auto",
          "fp32, bf16 or auto: bf16 runs the convolutions and matrix products in bfloat16; auto "
          "picks bf16 when the CPU has AMX-BF16 or AVX512-BF16 (CUDA: compute capability >= 8.0)");
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
ABSL_FLAG(std::string, registry_dir, "",
          "Model registry REGISTRY/<name>/<version>/ (fine-tuned versions; empty: none). Without "
          "--model_dir the server serves the registry's default model when it has one");
ABSL_FLAG(std::string, admin_address, "127.0.0.1:50052",
          "AdminService listen address host:port; the service runs only with an admin token");
ABSL_FLAG(std::string, admin_token_file, "",
          "File holding the admin bearer token (mode 600); else the LPDETR_ADMIN_TOKEN "
          "environment variable; neither: the admin service is off");
ABSL_FLAG(std::string, data_root, "",
          "Datasets named in StartFineTune must lie under this directory (admin)");
ABSL_FLAG(std::string, jobs_dir, "",
          "Fine-tuning jobs' run directories, logs and their SQLite database "
          "(default: <registry_dir>/.jobs)");
ABSL_FLAG(std::string, train_binary, "",
          "The lpdetr-train executable jobs run (default: beside this binary)");
ABSL_FLAG(int32_t, max_concurrent_jobs, 1, "Fine-tuning jobs running at once; others queue");
ABSL_FLAG(int32_t, job_threads, 0, "lpdetr-train --threads of each job (0: half the cores)");
ABSL_FLAG(int32_t, job_nice, 10, "Niceness added to each job's process (0..19)");
ABSL_FLAG(double, job_cancel_grace_s, 60.0,
          "CancelJob / shutdown: seconds a job gets to write its checkpoint before SIGKILL");

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

// The model host with the startup model loaded, warmed up and serving; each
// later switch is logged and moves lpdetr_model_info.
absl::StatusOr<std::shared_ptr<ModelHost>> StartModelHost(
    const Batcher::Options& batcher, const std::string& device,
    const std::shared_ptr<ServiceMetrics>& metrics, const ModelSource& source) {
  ModelHost::Options options;
  options.batcher = batcher;
  options.device = device;
  auto on_switch = [metrics](const ModelDescription& now, const ModelDescription* before) {
    metrics->SetModel(now, before);
    LogEvent(LogLevel::kInfo, "model_serving",
             {{"name", now.name}, {"version", now.version}, {"variant", now.variant},
              {"dir", now.dir}, {"replaced_version", before ? before->version : ""}});
  };
  absl::StatusOr<std::unique_ptr<ModelHost>> host = ModelHost::Create(
      options, DetectionServiceImpl::BatchFunction(metrics), nullptr, on_switch);
  if (!host.ok()) return host.status();
  std::shared_ptr<ModelHost> shared = *std::move(host);
  const auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::shared_ptr<ServedModel>> model = shared->Activate(source);
  if (!model.ok()) return model.status();
  const ModelDescription& m = (*model)->description();
  LogEvent(LogLevel::kInfo, "model_loaded",
           {{"name", m.name}, {"variant", m.variant}, {"version", m.version},
            {"backbone", m.backbone}, {"num_classes", m.num_classes},
            {"min_size", m.min_size}, {"max_size", m.max_size},
            {"device", m.device}, {"dir", source.dir},
            {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() -
                                                      load_start).count()}});
  return shared;
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
//  5. every model version's batcher drains and its workers join.
void Drain(std::chrono::steady_clock::time_point deadline, HealthServiceImpl* health,
           DetectionServiceImpl* detection, const CallTracker& calls, grpc::Server* server) {
  health->Shutdown();
  detection->BeginShutdown();
  const int left = calls.WaitForNone(deadline);
  if (left > 0) LogEvent(LogLevel::kWarning, "shutdown_timeout", {{"calls_cancelled", left}});
  server->Shutdown(std::chrono::system_clock::now());
  detection->StopBatchers();
  server->Wait();
}

// Everything the flags (and the --config file) say, checked once.
struct ServerConfig {
  std::string grpc_address, metrics_address, model_dir, device;
  PrecisionRequest precision = PrecisionRequest::kAuto;
  Batcher::Options batcher;
  DetectionServiceImpl::Options service;
  int intra_op_threads = 0;
  int64_t max_message_bytes = 0;
  double shutdown_timeout_s = 0;
  json from_config = json::object();
  // Admin: on when a token is configured.
  std::string admin_address, admin_token, registry_dir, data_root, jobs_dir, train_binary;
  std::string admin_off_reason;  // why the admin service is off (when no token)
  admin::JobManager::Options jobs;
};

// The directory of this executable ("" when /proc/self/exe is unreadable).
std::string ExecutableDir() {
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : exe.parent_path().string();
}

absl::Status ReadAdminConfig(ServerConfig* c) {
  const char* env = std::getenv("LPDETR_ADMIN_TOKEN");
  absl::StatusOr<std::string> token = admin::LoadAdminToken(absl::GetFlag(FLAGS_admin_token_file), env);
  if (!token.ok()) return token.status();
  c->admin_token = *std::move(token);
  c->admin_address = absl::GetFlag(FLAGS_admin_address);
  c->registry_dir = absl::GetFlag(FLAGS_registry_dir);
  c->data_root = absl::GetFlag(FLAGS_data_root);
  if (c->admin_token.empty()) {
    c->admin_off_reason = "no admin token: set --admin_token_file or LPDETR_ADMIN_TOKEN";
    return absl::OkStatus();
  }
  if (c->admin_address.empty()) {
    c->admin_off_reason = "--admin_address is empty";
    c->admin_token.clear();
    return absl::OkStatus();
  }
  if (c->registry_dir.empty() || c->data_root.empty()) {
    return absl::InvalidArgumentError(
        "the admin service (an admin token is configured) needs --registry_dir (where trained "
        "model versions go) and --data_root (the only place datasets may be read from)");
  }
  c->jobs_dir = absl::GetFlag(FLAGS_jobs_dir);
  if (c->jobs_dir.empty()) c->jobs_dir = (std::filesystem::path(c->registry_dir) / ".jobs").string();
  c->train_binary = absl::GetFlag(FLAGS_train_binary);
  if (c->train_binary.empty()) {
    c->train_binary = (std::filesystem::path(ExecutableDir()) / "lpdetr-train").string();
  }
  c->jobs.train_binary = c->train_binary;
  c->jobs.jobs_dir = c->jobs_dir;
  c->jobs.max_concurrent_jobs = absl::GetFlag(FLAGS_max_concurrent_jobs);
  c->jobs.threads_per_job = absl::GetFlag(FLAGS_job_threads);
  if (c->jobs.threads_per_job == 0) {
    c->jobs.threads_per_job = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / 2);
  }
  c->jobs.nice = absl::GetFlag(FLAGS_job_nice);
  const double grace = absl::GetFlag(FLAGS_job_cancel_grace_s);
  if (!(grace >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--job_cancel_grace_s must be >= 0, got ", grace));
  }
  c->jobs.cancel_grace = absl::Seconds(grace);
  return c->jobs.Validate();
}

// Resolves --precision for --device, sets the compute precision of every
// model this process serves and logs the choice and its reason.
absl::Status ApplyPrecision(const ServerConfig& c) {
  const c10::Device device = c.device == "cuda" ? c10::Device(c10::kCUDA, 0) : c10::kCPU;
  PrecisionChoice choice;
  try {
    choice = ResolvePrecision(c.precision, device);
  } catch (const std::invalid_argument& e) {
    return absl::InvalidArgumentError(e.what());
  }
  SetComputePrecision(choice.precision);
  LogEvent(LogLevel::kInfo, "precision",
           {{"precision", PrecisionName(choice.precision)}, {"reason", choice.reason}});
  return absl::OkStatus();
}

absl::StatusOr<ServerConfig> ReadConfig(int argc, char** argv) {
  ServerConfig c;
  const std::set<std::string> explicit_flags = ExplicitFlags(argc, argv);
  absl::ParseCommandLine(argc, argv);
  if (const std::string config = absl::GetFlag(FLAGS_config); !config.empty()) {
    if (absl::Status s = ApplyConfigFile(config, explicit_flags, &c.from_config); !s.ok()) return s;
  }
  c.grpc_address = absl::GetFlag(FLAGS_grpc_address);
  c.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  c.model_dir = absl::GetFlag(FLAGS_model_dir);
  c.device = absl::GetFlag(FLAGS_device);
  if (!ParsePrecisionRequest(absl::GetFlag(FLAGS_precision), &c.precision)) {
    return absl::InvalidArgumentError(absl::StrCat("--precision must be fp32, bf16 or auto, got '",
                                                   absl::GetFlag(FLAGS_precision), "'"));
  }
  c.intra_op_threads = absl::GetFlag(FLAGS_intra_op_threads);
  if (c.intra_op_threads < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--intra_op_threads must be >= 0, got ", c.intra_op_threads));
  }
  c.batcher.max_batch_size = absl::GetFlag(FLAGS_max_batch_size);
  c.batcher.max_queue_delay_us = absl::GetFlag(FLAGS_max_queue_delay_us);
  c.batcher.max_queue_size = absl::GetFlag(FLAGS_max_queue_size);
  c.batcher.num_workers = absl::GetFlag(FLAGS_num_workers);
  c.batcher.bucket_by_size = absl::GetFlag(FLAGS_bucket_by_size);
  c.service.max_images_per_request = absl::GetFlag(FLAGS_max_images_per_request);
  c.service.max_image_pixels = absl::GetFlag(FLAGS_max_image_pixels);
  c.service.stream_window = absl::GetFlag(FLAGS_stream_window);
  c.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  if (c.max_message_bytes < 1024 || c.max_message_bytes > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--max_message_bytes must be in [1024, 2^31-1], got ", c.max_message_bytes));
  }
  c.shutdown_timeout_s = absl::GetFlag(FLAGS_shutdown_timeout_s);
  if (!(c.shutdown_timeout_s >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shutdown_timeout_s must be >= 0, got ", c.shutdown_timeout_s));
  }
  if (absl::Status s = ReadAdminConfig(&c); !s.ok()) return s;
  return c;
}

void LogConfig(const ServerConfig& c) {
  LogEvent(LogLevel::kInfo, "config",
           {{"grpc_address", c.grpc_address},
            {"metrics_address", c.metrics_address},
            {"model_dir", c.model_dir},
            {"device", c.device},
            {"precision", PrecisionRequestName(c.precision)},
            {"max_batch_size", c.batcher.max_batch_size},
            {"max_queue_delay_us", c.batcher.max_queue_delay_us},
            {"max_queue_size", c.batcher.max_queue_size},
            {"num_workers", c.batcher.num_workers},
            {"bucket_by_size", c.batcher.bucket_by_size},
            {"intra_op_threads", c.intra_op_threads},
            {"tls", !absl::GetFlag(FLAGS_tls_cert).empty()},
            {"mutual_tls", !absl::GetFlag(FLAGS_tls_ca).empty()},
            {"max_message_bytes", c.max_message_bytes},
            {"max_images_per_request", c.service.max_images_per_request},
            {"max_image_pixels", c.service.max_image_pixels},
            {"stream_window", c.service.stream_window},
            {"shutdown_timeout_s", c.shutdown_timeout_s},
            {"registry_dir", c.registry_dir},
            {"data_root", c.data_root},
            {"admin", !c.admin_token.empty()},
            {"admin_address", c.admin_token.empty() ? "" : c.admin_address},
            {"jobs_dir", c.jobs_dir},
            {"max_concurrent_jobs", c.jobs.max_concurrent_jobs},
            {"job_threads", c.jobs.threads_per_job},
            {"job_nice", c.jobs.nice},
            {"from_config_file", c.from_config}});
  if (c.admin_token.empty()) {
    LogEvent(LogLevel::kInfo, "admin_disabled", {{"reason", c.admin_off_reason}});
  }
}

// Which model serves at startup: --model_dir when given; else the registry's
// default model (its ACTIVE version) when a registry has one; else the
// embedded default model.
absl::StatusOr<ModelSource> StartupModel(const ServerConfig& c,
                                         admin::ModelRegistry* registry) {
  if (!c.model_dir.empty()) {
    if (!std::filesystem::exists(std::filesystem::path(c.model_dir) / "config.json")) {
      return absl::NotFoundError(absl::StrCat(
          "model directory '", c.model_dir,
          "' has no config.json: pass --model_dir DIR (a model directory, see "
          "lpdetr-model info), or leave it out to serve the embedded default model"));
    }
    return ModelSource{c.model_dir, "", ""};
  }
  if (registry != nullptr) {
    absl::StatusOr<std::pair<std::string, std::string>> active = registry->DefaultModel();
    if (active.ok()) {
      absl::StatusOr<admin::ModelVersionInfo> v = registry->Get(active->first, active->second);
      if (!v.ok()) return v.status();
      return ModelSource{v->path, v->name, v->version};
    }
  }
  try {
    return ModelSource{FindDefaultModelDir(), "", ""};
  } catch (const std::exception& e) {
    return absl::NotFoundError(e.what());
  }
}

// The admin side: job store, job manager and the AdminService.
struct AdminParts {
  std::shared_ptr<admin::JobManager> jobs;
  std::unique_ptr<AdminServiceImpl> service;
};

absl::StatusOr<AdminParts> StartAdmin(const ServerConfig& c,
                                      std::shared_ptr<admin::ModelRegistry> registry,
                                      std::shared_ptr<ModelHost> models,
                                      std::shared_ptr<ServiceMetrics> metrics) {
  std::error_code ec;
  std::filesystem::create_directories(c.jobs_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create --jobs_dir ", c.jobs_dir, ": ", ec.message()));
  }
  absl::StatusOr<std::unique_ptr<admin::JobStore>> store =
      admin::JobStore::Open((std::filesystem::path(c.jobs_dir) / "jobs.db").string());
  if (!store.ok()) return store.status();
  absl::StatusOr<std::unique_ptr<admin::JobManager>> jobs = admin::JobManager::Create(
      c.jobs, std::shared_ptr<admin::JobStore>(*std::move(store)), registry);
  if (!jobs.ok()) return jobs.status();
  AdminParts parts;
  parts.jobs = *std::move(jobs);
  AdminServiceImpl::Options options;
  options.token = c.admin_token;
  options.data_root = c.data_root;
  absl::StatusOr<std::unique_ptr<AdminServiceImpl>> service =
      AdminServiceImpl::Create(options, parts.jobs, std::move(registry), std::move(models),
                               std::move(metrics));
  if (!service.ok()) return service.status();
  parts.service = *std::move(service);
  return parts;
}

// One gRPC server on one address with the given services.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& address, const std::shared_ptr<grpc::ServerCredentials>& credentials,
    int64_t max_message_bytes, const std::vector<grpc::Service*>& services, CallTracker* calls,
    int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, credentials, port);
  builder.SetMaxReceiveMessageSize(static_cast<int>(max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(max_message_bytes));
  for (grpc::Service* service : services) builder.RegisterService(service);
  if (calls != nullptr) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> hooks;
    hooks.push_back(calls->MakeFactory());
    builder.experimental().SetInterceptorCreators(std::move(hooks));
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || *port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", address));
  }
  return server;
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
  absl::StatusOr<ServerConfig> config = ReadConfig(argc, argv);
  if (!config.ok()) return Fail(config.status(), "config");
  const ServerConfig& c = *config;
  LogConfig(c);

  std::shared_ptr<admin::ModelRegistry> model_registry;
  if (!c.registry_dir.empty()) {
    absl::StatusOr<std::unique_ptr<admin::ModelRegistry>> r = admin::ModelRegistry::Open(c.registry_dir);
    if (!r.ok()) return Fail(r.status(), "registry");
    model_registry = *std::move(r);
  }
  absl::StatusOr<ModelSource> source = StartupModel(c, model_registry.get());
  if (!source.ok()) return Fail(source.status(), "model");

  ApplyNumerics(Numerics::kFast, c.intra_op_threads);
  if (absl::Status s = ApplyPrecision(c); !s.ok()) return Fail(s, "config");
  auto registry = std::make_shared<metrics::Registry>();
  auto service_metrics = std::make_shared<ServiceMetrics>(registry);
  service_metrics->SetQueueCapacity(c.batcher.max_queue_size);
  absl::StatusOr<std::shared_ptr<ModelHost>> models =
      StartModelHost(c.batcher, c.device, service_metrics, *source);
  if (!models.ok()) return Fail(models.status(), "model");

  std::unique_ptr<metrics::Exposer> exposer;
  if (!c.metrics_address.empty()) {
    absl::StatusOr<std::unique_ptr<metrics::Exposer>> e =
        metrics::Exposer::Create(c.metrics_address, registry);
    if (!e.ok()) return Fail(e.status(), "metrics");
    exposer = std::move(*e);
  }

  absl::StatusOr<std::unique_ptr<DetectionServiceImpl>> detection =
      DetectionServiceImpl::Create(c.service, *models, service_metrics);
  if (!detection.ok()) return Fail(detection.status(), "config");
  ModelServiceImpl model_service(*models, service_metrics, model_registry);

  AdminParts admin_parts;
  if (!c.admin_token.empty()) {
    absl::StatusOr<AdminParts> parts = StartAdmin(c, model_registry, *models, service_metrics);
    if (!parts.ok()) return Fail(parts.status(), "admin");
    admin_parts = *std::move(parts);
  }

  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials = MakeCredentials();
  if (!credentials.ok()) return Fail(credentials.status(), "tls");

  HealthServiceImpl health;
  CallTracker calls;
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  int grpc_port = 0;
  absl::StatusOr<std::unique_ptr<grpc::Server>> server = StartGrpcServer(
      c.grpc_address, *credentials, c.max_message_bytes,
      {detection->get(), &model_service, &health}, &calls, &grpc_port);
  if (!server.ok()) return Fail(server.status(), "listen");
  int admin_port = 0;
  std::unique_ptr<grpc::Server> admin_server;
  if (admin_parts.service) {
    absl::StatusOr<std::unique_ptr<grpc::Server>> s =
        StartGrpcServer(c.admin_address, *credentials, c.max_message_bytes,
                        {admin_parts.service.get()}, nullptr, &admin_port);
    if (!s.ok()) return Fail(s.status(), "listen");
    admin_server = *std::move(s);
  }
  // The server as a whole ("") and each of its services by full name.
  health.SetServingStatus("", true);
  for (const char* service : {"lpdetr.v1.DetectionService", "lpdetr.v1.ModelService"}) {
    health.SetServingStatus(service, true);
  }
  LogEvent(LogLevel::kInfo, "startup",
           {{"grpc_address", c.grpc_address},
            {"grpc_port", grpc_port},
            {"metrics_port", exposer ? exposer->port() : 0},
            {"admin_port", admin_port},
            {"pid", static_cast<int>(getpid())},
            {"health", "SERVING"}});

  int sig = 0;
  sigwait(&signals, &sig);
  const auto stop_start = std::chrono::steady_clock::now();
  LogEvent(LogLevel::kInfo, "shutdown",
           {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"},
            {"queued", (*models)->QueueDepth()},
            {"timeout_s", c.shutdown_timeout_s}});
  // Admin first: no new jobs or switches; running jobs checkpoint and become
  // INTERRUPTED (ResumeJob continues them on the next start).
  if (admin_server) {
    admin_parts.service->BeginShutdown();
    admin_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    admin_parts.jobs->Stop();
  }
  Drain(stop_start + std::chrono::microseconds(static_cast<int64_t>(c.shutdown_timeout_s * 1e6)),
        &health, detection->get(), calls, server->get());
  exposer.reset();
  LogEvent(LogLevel::kInfo, "shutdown_complete",
           {{"detect_ok", service_metrics->RequestCount("Detect", absl::StatusCode::kOk)},
            {"stream_frames_ok",
             service_metrics->RequestCount("DetectStream", absl::StatusCode::kOk)},
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

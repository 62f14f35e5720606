// `lpdetr-client admin SUBCOMMAND`: the server's AdminService (fine-tuning
// jobs and the versioned model registry) on its admin listener.
//
// Every call carries `authorization: Bearer <token>`; the token comes from
// --token_file or LPDETR_ADMIN_TOKEN. The admin flags are defined here and
// may be spelled with '-' or '_' (`--output-model`, `--output_model`);
// PreparseArguments does that rewriting and collects the repeatable --param
// before absl parses the command line. Single-threaded: one call per
// subcommand, one stream for `watch`.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <absl/flags/flag.h>
#include <absl/flags/reflection.h>
#include <absl/strings/ascii.h>
#include <absl/strings/numbers.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_join.h>
#include <absl/strings/str_split.h>
#include <google/protobuf/util/json_util.h>

#include "commands.h"
#include "lpdetr/v1/admin.grpc.pb.h"

ABSL_FLAG(std::string, token_file, "",
          "admin: file holding the admin bearer token (default: $LPDETR_ADMIN_TOKEN).");
ABSL_FLAG(std::string, train_annotations, "",
          "admin start: training COCO instances JSON, relative to the server's --data_root.");
ABSL_FLAG(std::string, train_images, "", "admin start: training image folder (data root).");
ABSL_FLAG(std::string, val_annotations, "", "admin start: validation COCO JSON (optional).");
ABSL_FLAG(std::string, val_images, "", "admin start: validation image folder (optional).");
ABSL_FLAG(std::string, output_model, "",
          "admin start: registry name the result is registered under.");
ABSL_FLAG(std::string, base_model, "",
          "admin start: registered model to start from (default: the server's default).");
ABSL_FLAG(std::string, base_version, "",
          "admin start: version of --base_model (default: its active version).");
ABSL_FLAG(std::string, description, "", "admin start: free text kept with the job.");
ABSL_FLAG(int, epochs, 0, "admin start: training epochs; 0 = lpdetr-train's default.");
ABSL_FLAG(int, batch_size, 0, "admin start: images per batch; 0 = default.");
ABSL_FLAG(double, lr, 0.0, "admin start: learning rate; 0 = default.");
ABSL_FLAG(double, weight_decay, 0.0, "admin start: weight decay; 0 = default.");
ABSL_FLAG(std::string, lr_milestones, "",
          "admin start: comma-separated epochs at which lr is multiplied by --lr_gamma.");
ABSL_FLAG(double, lr_gamma, 0.0, "admin start: lr factor at each milestone; 0 = default.");
ABSL_FLAG(int, lr_warmup_steps, 0, "admin start: linear warm-up steps; 0 = default.");
ABSL_FLAG(int, accumulate_steps, 0, "admin start: gradient accumulation steps; 0 = default.");
ABSL_FLAG(int, ema, 0, "admin start: 1 = keep and export an EMA of the weights.");
ABSL_FLAG(double, ema_decay, 0.0, "admin start: EMA decay; 0 = default.");
ABSL_FLAG(std::string, scales, "",
          "admin start: comma-separated training shortest sides (e.g. 320,352).");
ABSL_FLAG(int, max_size, 0, "admin start: training longest side; 0 = default.");
ABSL_FLAG(std::string, backbone_training, "", "admin start: finetune (default) or full.");
ABSL_FLAG(std::string, export_dtype, "", "admin start: fp32 (default), fp16 or bf16.");
ABSL_FLAG(int64_t, seed, 0, "admin start: random seed; 0 = default.");
ABSL_FLAG(int64_t, max_steps, 0, "admin start: stop after this many optimizer steps.");
ABSL_FLAG(std::string, param, "",
          "admin start: KEY=VALUE, a further lpdetr-train flag without dashes "
          "(repeatable: --param eval-every=1 --param clip-max-norm=0.1).");
ABSL_FLAG(std::string, state, "",
          "admin list: comma-separated job states (queued,running,...); default all.");
ABSL_FLAG(int, limit, 0, "admin list: at most this many jobs; 0 = the server's 100.");
ABSL_FLAG(int, tail, 0, "admin log: the last N lines; 0 = the server's 100.");
ABSL_FLAG(std::string, name, "", "admin models: only the versions of this model.");

namespace lpdetr::client {
namespace {

using lpdetr::v1::AdminService;
using lpdetr::v1::Job;
using lpdetr::v1::JobEvent;
using lpdetr::v1::JobProgress;
using lpdetr::v1::JobState;

constexpr char kDefaultAdminAddress[] = "127.0.0.1:50052";

constexpr char kAdminUsage[] =
    "lpdetr-client admin SUBCOMMAND [flags] [args]   (AdminService, admin listener)\n"
    "  start --train-annotations A --train-images I --output-model NAME\n"
    "        [--val-annotations V --val-images VI] [--base-model NAME [--base-version V]]\n"
    "        [--epochs N --batch-size N --lr X --weight-decay X --lr-milestones 2,3\n"
    "         --lr-gamma X --lr-warmup-steps N --accumulate-steps N --ema 0|1\n"
    "         --ema-decay X --scales 320,352 --max-size N --backbone-training finetune|full\n"
    "         --export-dtype fp32|fp16|bf16 --seed N --max-steps N]\n"
    "        [--param KEY=VALUE ...] [--description TEXT] [--watch]\n"
    "  watch JOB_ID            follow a job; exit 0 when it SUCCEEDED, 1 otherwise\n"
    "  list [--state running,queued,...] [--limit N]\n"
    "  get JOB_ID | cancel JOB_ID | resume JOB_ID\n"
    "  log JOB_ID [--tail N]\n"
    "  models [--name NAME]    registered versions (* = active)\n"
    "  activate NAME VERSION | rollback NAME | delete NAME VERSION\n"
    "Token: --token_file PATH or $LPDETR_ADMIN_TOKEN. --address defaults to "
    "127.0.0.1:50052.\n"
    "--json PATH (- = stdout): the response in the proto JSON mapping (watch: one\n"
    "JobEvent per line). --timeout bounds each call; watch has no deadline unless\n"
    "--timeout is given.";

// Everything one admin subcommand needs to make calls.
struct AdminSession {
  ConnectionOptions connection;
  std::string token;
  // --json path ("" = text).
  std::string json;
  // --timeout was given: it also bounds `watch`.
  bool watch_deadline = false;
  std::unique_ptr<AdminService::Stub> stub;

  // A context with the bearer token and, when `deadline`, the call deadline.
  void Prepare(grpc::ClientContext* context, bool deadline = true) const {
    context->AddMetadata("authorization", "Bearer " + token);
    if (deadline) ApplyDeadline(connection, context);
  }
};

// The token with surrounding whitespace removed, from `token_file` when set,
// else from $LPDETR_ADMIN_TOKEN. Throws std::invalid_argument when there is
// none.
std::string LoadToken(const std::string& token_file) {
  std::string token;
  if (!token_file.empty()) {
    try {
      token = ReadFileOrThrow(token_file);
    } catch (const std::runtime_error& e) {
      throw std::invalid_argument(std::string("--token_file: ") + e.what());
    }
    token = std::string(absl::StripAsciiWhitespace(token));
    if (token.empty()) throw std::invalid_argument("--token_file '" + token_file + "' is empty");
    return token;
  }
  const char* env = std::getenv("LPDETR_ADMIN_TOKEN");
  if (env != nullptr) token = std::string(absl::StripAsciiWhitespace(env));
  if (token.empty()) {
    throw std::invalid_argument(
        "admin commands need the admin token: give --token_file PATH or set "
        "LPDETR_ADMIN_TOKEN");
  }
  return token;
}

void ExpectArgs(const std::string& sub, const std::vector<std::string>& args, size_t count,
                const char* what) {
  if (args.size() != count) {
    throw std::invalid_argument("admin " + sub + ": expected " + what + ", got " +
                                std::to_string(args.size()) + " argument" +
                                (args.size() == 1 ? "" : "s"));
  }
}

// "320,352" -> {320, 352}; throws std::invalid_argument naming the flag and
// the bad element.
std::vector<int32_t> ParseIntList(const char* flag, const std::string& text) {
  std::vector<int32_t> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t value = 0;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &value) || value <= 0) {
      throw std::invalid_argument(std::string("--") + flag + ": '" + std::string(part) +
                                  "' is not a positive integer");
    }
    out.push_back(value);
  }
  return out;
}

void CheckChoice(const char* flag, const std::string& value,
                 const std::vector<std::string>& choices) {
  if (value.empty() || std::find(choices.begin(), choices.end(), value) != choices.end()) return;
  throw std::invalid_argument(std::string("--") + flag + ": '" + value + "' is not one of " +
                              absl::StrJoin(choices, ", "));
}

// The --param KEY=VALUE pairs as a map; throws std::invalid_argument for a
// malformed or repeated key.
std::map<std::string, std::string> ParseParams(const std::vector<std::string>& params) {
  std::map<std::string, std::string> out;
  for (const std::string& p : params) {
    const size_t eq = p.find('=');
    std::string key = eq == std::string::npos ? p : p.substr(0, eq);
    while (!key.empty() && key.front() == '-') key.erase(0, 1);
    if (eq == std::string::npos || key.empty()) {
      throw std::invalid_argument("--param '" + p + "': expected KEY=VALUE");
    }
    if (!out.emplace(key, p.substr(eq + 1)).second) {
      throw std::invalid_argument("--param: '" + key + "' given twice");
    }
  }
  return out;
}

// The StartFineTuneRequest of the admin start flags.
lpdetr::v1::StartFineTuneRequest BuildStartRequest(const std::vector<std::string>& params) {
  lpdetr::v1::StartFineTuneRequest r;
  r.set_train_annotations(absl::GetFlag(FLAGS_train_annotations));
  r.set_train_images(absl::GetFlag(FLAGS_train_images));
  r.set_val_annotations(absl::GetFlag(FLAGS_val_annotations));
  r.set_val_images(absl::GetFlag(FLAGS_val_images));
  r.set_output_model(absl::GetFlag(FLAGS_output_model));
  r.set_base_model(absl::GetFlag(FLAGS_base_model));
  r.set_base_version(absl::GetFlag(FLAGS_base_version));
  r.set_description(absl::GetFlag(FLAGS_description));
  if (r.train_annotations().empty() || r.train_images().empty()) {
    throw std::invalid_argument("admin start: --train-annotations and --train-images are required");
  }
  if (r.output_model().empty()) {
    throw std::invalid_argument("admin start: --output-model is required");
  }
  if (r.val_annotations().empty() != r.val_images().empty()) {
    throw std::invalid_argument(
        "admin start: give both --val-annotations and --val-images, or neither");
  }
  if (!r.base_version().empty() && r.base_model().empty()) {
    throw std::invalid_argument("admin start: --base-version needs --base-model");
  }

  lpdetr::v1::FineTuneParameters* p = r.mutable_parameters();
  auto non_negative = [](const char* flag, double value) {
    if (value < 0 || !std::isfinite(value)) {
      throw std::invalid_argument(std::string("--") + flag + ": " + std::to_string(value) +
                                  " must be >= 0");
    }
    return value;
  };
  p->set_epochs(static_cast<int32_t>(non_negative("epochs", absl::GetFlag(FLAGS_epochs))));
  p->set_batch_size(
      static_cast<int32_t>(non_negative("batch_size", absl::GetFlag(FLAGS_batch_size))));
  p->set_lr(non_negative("lr", absl::GetFlag(FLAGS_lr)));
  p->set_weight_decay(non_negative("weight_decay", absl::GetFlag(FLAGS_weight_decay)));
  for (int32_t m : ParseIntList("lr_milestones", absl::GetFlag(FLAGS_lr_milestones))) {
    p->add_lr_milestones(m);
  }
  p->set_lr_gamma(non_negative("lr_gamma", absl::GetFlag(FLAGS_lr_gamma)));
  p->set_lr_warmup_steps(
      static_cast<int32_t>(non_negative("lr_warmup_steps", absl::GetFlag(FLAGS_lr_warmup_steps))));
  p->set_accumulate_steps(static_cast<int32_t>(
      non_negative("accumulate_steps", absl::GetFlag(FLAGS_accumulate_steps))));
  const int ema = absl::GetFlag(FLAGS_ema);
  if (ema != 0 && ema != 1) {
    throw std::invalid_argument("--ema: " + std::to_string(ema) + " is not 0 or 1");
  }
  p->set_ema(ema == 1);
  p->set_ema_decay(non_negative("ema_decay", absl::GetFlag(FLAGS_ema_decay)));
  for (int32_t s : ParseIntList("scales", absl::GetFlag(FLAGS_scales))) p->add_scales(s);
  p->set_max_size(static_cast<int32_t>(non_negative("max_size", absl::GetFlag(FLAGS_max_size))));
  p->set_backbone_training(absl::GetFlag(FLAGS_backbone_training));
  CheckChoice("backbone_training", p->backbone_training(), {"finetune", "full"});
  p->set_export_dtype(absl::GetFlag(FLAGS_export_dtype));
  CheckChoice("export_dtype", p->export_dtype(), {"fp32", "fp16", "bf16"});
  p->set_seed(absl::GetFlag(FLAGS_seed));
  const int64_t max_steps = absl::GetFlag(FLAGS_max_steps);
  if (max_steps < 0) {
    throw std::invalid_argument("--max_steps: " + std::to_string(max_steps) + " must be >= 0");
  }
  p->set_max_steps(max_steps);
  for (const auto& [key, value] : ParseParams(params)) (*p->mutable_extra())[key] = value;
  return r;
}

std::vector<JobState> ParseStates(const std::string& text) {
  std::vector<JobState> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    const std::string name = absl::AsciiStrToUpper(absl::StripAsciiWhitespace(part));
    JobState state;
    if (!lpdetr::v1::JobState_Parse(name, &state) ||
        state == lpdetr::v1::JOB_STATE_UNSPECIFIED) {
      throw std::invalid_argument("--state: unknown job state '" + std::string(part) +
                                  "' (queued, running, cancelling, succeeded, failed, "
                                  "cancelled, interrupted)");
    }
    out.push_back(state);
  }
  return out;
}

// ---- output ---------------------------------------------------------------

std::string MessageJson(const google::protobuf::Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions print;
  print.add_whitespace = pretty;
  print.preserve_proto_field_names = true;
  print.always_print_primitive_fields = true;
  std::string json;
  if (!google::protobuf::util::MessageToJsonString(message, &json, print).ok()) {
    throw std::runtime_error("cannot convert " + message.GetTypeName() + " to JSON");
  }
  return json;
}

void WriteMessageJson(const google::protobuf::Message& message, const std::string& path) {
  WriteJson(nlohmann::json::parse(MessageJson(message, false)), path);
}

std::string StateName(JobState state) { return lpdetr::v1::JobState_Name(state); }

bool IsTerminal(JobState state) {
  return state == lpdetr::v1::SUCCEEDED || state == lpdetr::v1::FAILED ||
         state == lpdetr::v1::CANCELLED || state == lpdetr::v1::INTERRUPTED;
}

// "2026-12-01 21:58:00Z"; "-" for 0.
std::string FormatTime(int64_t unix_seconds) {
  if (unix_seconds <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%d %H:%M:%SZ", &tm);
  return text;
}

// "1h02m", "3m05s", "42s".
std::string FormatDuration(double seconds) {
  const int64_t s = static_cast<int64_t>(std::llround(std::max(0.0, seconds)));
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

// "epoch 2  step 120/400  loss 3.2140  lr 0.0001  12.3 img/s  ETA 3m12s  AP 0.412 (best 0.420)",
// with only the parts that are known.
std::string FormatProgress(const JobProgress& p) {
  std::vector<std::string> parts;
  parts.push_back(absl::StrFormat("epoch %d", p.epoch()));
  parts.push_back(p.total_steps() > 0 ? absl::StrFormat("step %d/%d", p.step(), p.total_steps())
                                      : absl::StrFormat("step %d", p.step()));
  if (p.has_losses()) parts.push_back(absl::StrFormat("loss %.4f", p.losses().total()));
  if (p.lr() > 0) parts.push_back(absl::StrFormat("lr %.3g", p.lr()));
  if (p.images_per_second() > 0) {
    parts.push_back(absl::StrFormat("%.1f img/s", p.images_per_second()));
  }
  if (p.eta_seconds() > 0) parts.push_back("ETA " + FormatDuration(p.eta_seconds()));
  if (p.eval_ap() >= 0) {
    std::string ap = absl::StrFormat("AP %.3f", p.eval_ap());
    if (p.best_ap() >= 0) ap += absl::StrFormat(" (best %.3f)", p.best_ap());
    parts.push_back(ap);
  }
  return absl::StrJoin(parts, "  ");
}

// "[#########---------------]  37%" of step / total_steps; "" without a total.
std::string ProgressBar(const JobProgress& p) {
  constexpr int kWidth = 24;
  if (p.total_steps() <= 0) return "";
  const double fraction =
      std::clamp(static_cast<double>(p.step()) / static_cast<double>(p.total_steps()), 0.0, 1.0);
  const int filled = static_cast<int>(std::lround(fraction * kWidth));
  return "[" + std::string(filled, '#') + std::string(kWidth - filled, '-') + "] " +
         absl::StrFormat("%3d%%", static_cast<int>(std::lround(fraction * 100)));
}

void PrintJob(const Job& job) {
  const auto& r = job.request();
  std::printf("job %s: %s\n", job.id().c_str(), StateName(job.state()).c_str());
  std::string base = r.base_model().empty() ? "(server default model)" : r.base_model();
  if (!r.base_version().empty()) base += " version " + r.base_version();
  std::printf("  output model: %s  base: %s\n", r.output_model().c_str(), base.c_str());
  std::printf("  train: %s  images: %s\n", r.train_annotations().c_str(),
              r.train_images().c_str());
  if (!r.val_annotations().empty()) {
    std::printf("  val: %s  images: %s\n", r.val_annotations().c_str(), r.val_images().c_str());
  }
  if (!r.description().empty()) std::printf("  description: %s\n", r.description().c_str());
  if (job.has_progress()) std::printf("  progress: %s\n", FormatProgress(job.progress()).c_str());
  if (!job.result_version().empty()) {
    std::printf("  result: %s version %s\n", r.output_model().c_str(),
                job.result_version().c_str());
  }
  if (!job.failure_reason().empty()) std::printf("  failure: %s\n", job.failure_reason().c_str());
  std::printf("  created %s  started %s  finished %s  attempts %d\n",
              FormatTime(job.created_at()).c_str(), FormatTime(job.started_at()).c_str(),
              FormatTime(job.finished_at()).c_str(), job.attempts());
}

void PrintJobLine(const Job& job) {
  std::string detail;
  if (!job.result_version().empty()) {
    detail = "version " + job.result_version();
  } else if (!job.failure_reason().empty()) {
    detail = job.failure_reason();
  } else if (job.has_progress()) {
    detail = FormatProgress(job.progress());
  }
  std::printf("%-20s %-11s %-20s created %s%s%s\n", job.id().c_str(),
              StateName(job.state()).c_str(), job.request().output_model().c_str(),
              FormatTime(job.created_at()).c_str(), detail.empty() ? "" : "  ", detail.c_str());
}

void PrintModelVersion(const lpdetr::v1::ModelVersion& v) {
  std::string classes;
  for (int i = 0; i < v.classes_size() && i < 12; ++i) classes += (i ? ", " : "") + v.classes(i);
  if (v.classes_size() > 12) classes += ", ...";
  std::printf("%s %s %s%s  job %s  AP %s  created %s  classes (%d): %s\n", v.active() ? "*" : " ",
              v.name().c_str(), v.version().c_str(), v.active() ? " (active)" : "",
              v.job_id().empty() ? "-" : v.job_id().c_str(),
              v.eval_ap() >= 0 ? absl::StrFormat("%.3f", v.eval_ap()).c_str() : "-",
              FormatTime(v.created_at()).c_str(), v.classes_size(), classes.c_str());
}

// WatchJob events on stdout: on a terminal one progress line redrawn with
// '\r' (events with a message are printed above it), else one line per event;
// with --json, one JobEvent JSON per line to the --json path instead.
class WatchPrinter {
 public:
  WatchPrinter(bool terminal, const std::string& json_path)
      : terminal_(terminal), json_path_(json_path) {
    if (json_path_.empty()) return;
    json_ = json_path_ == "-" ? stdout : std::fopen(json_path_.c_str(), "w");
    if (json_ == nullptr) throw std::runtime_error("cannot write '" + json_path_ + "'");
  }
  ~WatchPrinter() {
    if (json_ != nullptr && json_ != stdout) std::fclose(json_);
  }
  WatchPrinter(const WatchPrinter&) = delete;
  WatchPrinter& operator=(const WatchPrinter&) = delete;

  void Print(const JobEvent& event) {
    if (json_ != nullptr) {
      std::fprintf(json_, "%s\n", MessageJson(event, false).c_str());
      std::fflush(json_);
      if (json_ == stdout) return;
    }
    const Job& job = event.job();
    const std::string state = StateName(job.state());
    const std::string progress = job.has_progress() ? FormatProgress(job.progress()) : "";
    if (!terminal_) {
      std::printf("%s %s%s%s%s%s\n", event.kind().c_str(), state.c_str(),
                  progress.empty() ? "" : "  ", progress.c_str(),
                  event.message().empty() ? "" : "  ", event.message().c_str());
      std::fflush(stdout);
      return;
    }
    if (!event.message().empty() || event.kind() == "state") {
      std::printf("\r\x1b[K%s %s%s%s\n", event.kind().c_str(), state.c_str(),
                  event.message().empty() ? "" : ": ", event.message().c_str());
    }
    const std::string bar = job.has_progress() ? ProgressBar(job.progress()) : "";
    std::printf("\r\x1b[Kjob %s %s %s%s%s", job.id().c_str(), state.c_str(), bar.c_str(),
                bar.empty() ? "" : "  ", progress.c_str());
    std::fflush(stdout);
    line_open_ = true;
  }

  // Ends the redrawn line.
  void Finish() {
    if (line_open_) std::printf("\n");
    line_open_ = false;
    std::fflush(stdout);
  }

 private:
  const bool terminal_;
  const std::string json_path_;
  std::FILE* json_ = nullptr;
  bool line_open_ = false;
};

// ---- subcommands ----------------------------------------------------------

int CallFailed(const char* what, const grpc::Status& status) {
  std::fprintf(stderr, "admin %s failed: %s\n", what, DescribeStatus(status).c_str());
  return 1;
}

// Streams WatchJob until the job finishes; 0 when it SUCCEEDED.
int WatchJob(const AdminSession& s, const std::string& id) {
  grpc::ClientContext context;
  s.Prepare(&context, s.watch_deadline);
  lpdetr::v1::WatchJobRequest request;
  request.set_id(id);
  auto reader = s.stub->WatchJob(&context, request);
  WatchPrinter printer(isatty(fileno(stdout)) != 0, s.json);
  JobEvent event;
  Job last;
  bool any = false;
  while (reader->Read(&event)) {
    printer.Print(event);
    last = event.job();
    any = true;
  }
  printer.Finish();
  const grpc::Status status = reader->Finish();
  if (!status.ok()) return CallFailed("watch", status);
  // Summaries go to stderr when stdout carries JSON.
  std::FILE* out = s.json == "-" ? stderr : stdout;
  if (!any) {
    std::fprintf(stderr, "admin watch: the stream of job %s ended without an event\n",
                 id.c_str());
    return 1;
  }
  const std::string state = StateName(last.state());
  if (last.state() == lpdetr::v1::SUCCEEDED) {
    std::fprintf(out, "job %s SUCCEEDED: %s version %s\n", last.id().c_str(),
                 last.request().output_model().c_str(), last.result_version().c_str());
    return 0;
  }
  if (IsTerminal(last.state())) {
    std::fprintf(stderr, "job %s %s: %s\n", last.id().c_str(), state.c_str(),
                 last.failure_reason().empty() ? "(no reason given)"
                                               : last.failure_reason().c_str());
    return 1;
  }
  std::fprintf(stderr, "admin watch: the stream ended while job %s is %s\n", last.id().c_str(),
               state.c_str());
  return 1;
}

// Prints a Job response (text or JSON).
void ShowJob(const AdminSession& s, const Job& job) {
  if (!s.json.empty()) {
    WriteMessageJson(job, s.json);
  } else {
    PrintJob(job);
  }
}

int StartCommand(const AdminSession& s, const std::vector<std::string>& params, bool watch) {
  const lpdetr::v1::StartFineTuneRequest request = BuildStartRequest(params);
  grpc::ClientContext context;
  s.Prepare(&context);
  Job job;
  const grpc::Status status = s.stub->StartFineTune(&context, request, &job);
  if (!status.ok()) return CallFailed("start", status);
  if (watch && !s.json.empty()) {
    // The --json output carries the events (each with the job); the id goes
    // to stderr.
    std::fprintf(stderr, "job %s: %s\n", job.id().c_str(), StateName(job.state()).c_str());
  } else {
    ShowJob(s, job);
  }
  std::fflush(stdout);
  if (!watch) return 0;
  return WatchJob(s, job.id());
}

// GetJob, CancelJob and ResumeJob: one id in, the Job out.
int JobCommand(const AdminSession& s, const std::string& sub, const std::string& id) {
  grpc::ClientContext context;
  s.Prepare(&context);
  Job job;
  grpc::Status status;
  if (sub == "get") {
    lpdetr::v1::GetJobRequest request;
    request.set_id(id);
    status = s.stub->GetJob(&context, request, &job);
  } else if (sub == "cancel") {
    lpdetr::v1::CancelJobRequest request;
    request.set_id(id);
    status = s.stub->CancelJob(&context, request, &job);
  } else {
    lpdetr::v1::ResumeJobRequest request;
    request.set_id(id);
    status = s.stub->ResumeJob(&context, request, &job);
  }
  if (!status.ok()) return CallFailed(sub.c_str(), status);
  ShowJob(s, job);
  return 0;
}

int ListCommand(const AdminSession& s) {
  lpdetr::v1::ListJobsRequest request;
  for (JobState state : ParseStates(absl::GetFlag(FLAGS_state))) request.add_states(state);
  const int limit = absl::GetFlag(FLAGS_limit);
  if (limit < 0) throw std::invalid_argument("--limit: " + std::to_string(limit) + " is < 0");
  request.set_limit(limit);
  grpc::ClientContext context;
  s.Prepare(&context);
  lpdetr::v1::ListJobsResponse response;
  const grpc::Status status = s.stub->ListJobs(&context, request, &response);
  if (!status.ok()) return CallFailed("list", status);
  if (!s.json.empty()) {
    WriteMessageJson(response, s.json);
    return 0;
  }
  for (const Job& job : response.jobs()) PrintJobLine(job);
  if (response.jobs_size() == 0) std::printf("no jobs\n");
  return 0;
}

int LogCommand(const AdminSession& s, const std::string& id) {
  lpdetr::v1::GetJobLogRequest request;
  request.set_id(id);
  const int tail = absl::GetFlag(FLAGS_tail);
  if (tail < 0) throw std::invalid_argument("--tail: " + std::to_string(tail) + " is < 0");
  request.set_tail_lines(tail);
  grpc::ClientContext context;
  s.Prepare(&context);
  lpdetr::v1::GetJobLogResponse response;
  const grpc::Status status = s.stub->GetJobLog(&context, request, &response);
  if (!status.ok()) return CallFailed("log", status);
  if (!s.json.empty()) {
    WriteMessageJson(response, s.json);
    return 0;
  }
  if (response.truncated()) std::fprintf(stderr, "(older lines not shown)\n");
  for (const std::string& line : response.lines()) std::printf("%s\n", line.c_str());
  return 0;
}

int ModelsCommand(const AdminSession& s) {
  lpdetr::v1::ListModelVersionsRequest request;
  request.set_name(absl::GetFlag(FLAGS_name));
  grpc::ClientContext context;
  s.Prepare(&context);
  lpdetr::v1::ListModelVersionsResponse response;
  const grpc::Status status = s.stub->ListModelVersions(&context, request, &response);
  if (!status.ok()) return CallFailed("models", status);
  if (!s.json.empty()) {
    WriteMessageJson(response, s.json);
    return 0;
  }
  for (const auto& v : response.versions()) PrintModelVersion(v);
  if (response.versions_size() == 0) std::printf("no registered model versions\n");
  return 0;
}

int ActivateCommand(const AdminSession& s, const std::vector<std::string>& args) {
  grpc::ClientContext context;
  s.Prepare(&context);
  lpdetr::v1::ModelVersion version;
  grpc::Status status;
  const bool rollback = args.size() == 1;
  if (rollback) {
    lpdetr::v1::RollbackModelRequest request;
    request.set_name(args[0]);
    status = s.stub->RollbackModel(&context, request, &version);
  } else {
    lpdetr::v1::ActivateModelRequest request;
    request.set_name(args[0]);
    request.set_version(args[1]);
    status = s.stub->ActivateModel(&context, request, &version);
  }
  if (!status.ok()) return CallFailed(rollback ? "rollback" : "activate", status);
  if (!s.json.empty()) {
    WriteMessageJson(version, s.json);
    return 0;
  }
  std::printf("%s version %s is active\n", version.name().c_str(), version.version().c_str());
  PrintModelVersion(version);
  return 0;
}

int DeleteCommand(const AdminSession& s, const std::string& name, const std::string& version) {
  lpdetr::v1::DeleteModelVersionRequest request;
  request.set_name(name);
  request.set_version(version);
  grpc::ClientContext context;
  s.Prepare(&context);
  lpdetr::v1::DeleteModelVersionResponse response;
  const grpc::Status status = s.stub->DeleteModelVersion(&context, request, &response);
  if (!status.ok()) return CallFailed("delete", status);
  if (!s.json.empty()) {
    WriteMessageJson(request, s.json);
    return 0;
  }
  std::printf("deleted %s version %s\n", name.c_str(), version.c_str());
  return 0;
}

int Dispatch(const ClientOptions& options, const RawArguments& raw,
             const std::vector<std::string>& args) {
  if (args.empty()) throw std::invalid_argument("admin: missing SUBCOMMAND");
  const std::string sub = args[0];
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  static const std::vector<std::string> kSubcommands = {
      "start", "watch", "list", "get", "cancel", "resume", "log", "models", "activate",
      "rollback", "delete"};
  if (std::find(kSubcommands.begin(), kSubcommands.end(), sub) == kSubcommands.end()) {
    throw std::invalid_argument("admin: unknown subcommand '" + sub + "'");
  }
  if (!raw.params.empty() && sub != "start") {
    throw std::invalid_argument("admin " + sub + ": --param is an option of `admin start`");
  }
  if (sub == "start" || sub == "list" || sub == "models") {
    ExpectArgs(sub, rest, 0, "no arguments");
  } else if (sub == "activate" || sub == "delete") {
    ExpectArgs(sub, rest, 2, "NAME VERSION");
  } else if (sub == "rollback") {
    ExpectArgs(sub, rest, 1, "NAME");
  } else {
    ExpectArgs(sub, rest, 1, "JOB_ID");
  }

  AdminSession s;
  s.connection = options.connection;
  if (raw.given.count("address") == 0) s.connection.address = kDefaultAdminAddress;
  s.json = options.json;
  s.watch_deadline = raw.given.count("timeout") > 0;
  s.token = LoadToken(absl::GetFlag(FLAGS_token_file));
  s.stub = AdminService::NewStub(MakeChannel(s.connection));

  if (sub == "start") return StartCommand(s, raw.params, options.watch);
  if (sub == "watch") return WatchJob(s, rest[0]);
  if (sub == "list") return ListCommand(s);
  if (sub == "get" || sub == "cancel" || sub == "resume") return JobCommand(s, sub, rest[0]);
  if (sub == "log") return LogCommand(s, rest[0]);
  if (sub == "models") return ModelsCommand(s);
  if (sub == "activate" || sub == "rollback") return ActivateCommand(s, rest);
  return DeleteCommand(s, rest[0], rest[1]);
}

// "name" of "--name=value" / "-name" ("" when `arg` is not a flag).
std::string FlagName(const std::string& arg) {
  if (arg.size() < 2 || arg[0] != '-') return "";
  const size_t begin = arg[1] == '-' ? 2 : 1;
  const size_t end = arg.find('=');
  return arg.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

}  // namespace

RawArguments PreparseArguments(int argc, char** argv) {
  RawArguments raw;
  bool flags_ended = false;
  for (int i = 0; i < argc; ++i) {
    char* arg = argv[i];
    std::string name = i == 0 || flags_ended ? "" : FlagName(arg);
    if (!flags_ended && std::string(arg) == "--") flags_ended = true;
    if (name.empty()) {
      raw.argv.push_back(arg);
      continue;
    }
    std::string underscored = name;
    std::replace(underscored.begin(), underscored.end(), '-', '_');
    if (underscored != name && absl::FindCommandLineFlag(underscored) != nullptr) {
      // Rewrite the name in place: same length, so the value part stays put.
      char* dash = arg;
      while (*dash == '-') ++dash;
      for (size_t k = 0; k < name.size(); ++k) {
        if (dash[k] == '-') dash[k] = '_';
      }
      name = underscored;
    }
    if (name == "param") {
      const std::string text(arg);
      const size_t eq = text.find('=');
      if (eq != std::string::npos) {
        raw.params.push_back(text.substr(eq + 1));
      } else if (i + 1 < argc) {
        raw.params.push_back(argv[++i]);
      } else {
        throw std::invalid_argument("--param needs KEY=VALUE");
      }
      raw.given.insert(name);
      continue;
    }
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag != nullptr) raw.given.insert(name);
    if (flag != nullptr && !flag->IsOfType<bool>() && std::string(arg).find('=') ==
        std::string::npos && i + 1 < argc && std::string(argv[i + 1]) == "-") {
      // "--json -" -> "--json=-": absl warns about a separate value that
      // starts with '-'.
      raw.storage.push_back(std::string(arg) + "=-");
      raw.argv.push_back(raw.storage.back().data());
      ++i;
      continue;
    }
    raw.argv.push_back(arg);
  }
  raw.argv.push_back(nullptr);
  return raw;
}

int RunAdmin(const ClientOptions& options, const RawArguments& raw,
             const std::vector<std::string>& args) {
  try {
    return Dispatch(options, raw, args);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "lpdetr-client: %s\n\n%s\n", e.what(), kAdminUsage);
    return 2;
  }
}

}  // namespace lpdetr::client

// lpdetr-model: command-line front end of the model library.
//
//   lpdetr-model run-tensor --model DIR --input in.safetensors --output out.safetensors
//   lpdetr-model bench --config CONFIG.json --height H --width W --iters N [--batch B]
//   lpdetr-model detect [--model DIR] --image FILE [--score-threshold T] [--max-detections N]
//   lpdetr-model info (--model DIR | --config CONFIG.json)
//
// Common flags: --threads N (intra-op threads, default: all cores),
// --device cpu|cuda. Exit code 0 on success, 1 on runtime errors, 2 on usage errors.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <torch/cuda.h>

#include "model/config.h"
#include "model/detector.h"
#include "model/default_model.h"
#include "model/model_dir.h"
#include "model/ops/cpu_isa.h"
#include "model/precision.h"
#include "model/preprocess.h"
#include "model/runtime.h"
#include "model/safetensors.h"

#ifdef LPDETR_HAVE_OPENCV
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#endif

namespace lpdetr {
namespace {

constexpr const char* kUsage = R"(usage: lpdetr-model COMMAND [flags]

commands:
  run-tensor --model DIR --input IN.safetensors --output OUT.safetensors
      Runs the model on a pre-normalized, padded batch (images [B,3,H,W] f32,
      mask [B,H,W] bool, image_sizes [B,2] i64) and writes every output.
  bench --config CONFIG.json --height H --width W --iters N [--batch B] [--warmup K]
        [--stages 0|1] [--ops kernels|composed]
      Times inference with random weights; prints median seconds per image,
      peak resident memory and (CPU, unless --stages 0) the mean time of each
      stage of the forward pass. --ops overrides the operator backend of the
      numerics mode (composed: the reference float operations, no custom
      kernels, no folded/blocked inference paths) to compare the two.
  detect [--model DIR] --image FILE [--score-threshold T] [--max-detections N]
      Decodes, resizes, normalizes and detects; prints JSON detections.
  info (--model DIR | --config CONFIG.json)
      Prints the configuration, the parameter count and alpha per layer.

common flags:
  --threads N     intra-op threads (default: all cores)
  --device D      cpu (default) or cuda
  --numerics M    fast (default) or reference: the numerics of the official
                  parity fixtures (bit-exact outputs; default for run-tensor)
  --precision P   fp32, bf16 or auto (run-tensor, bench, detect): bf16 runs the
                  convolutions and matrix products in bfloat16 (fast numerics
                  only); auto (default for bench and detect) picks bf16 when
                  the CPU has AMX-BF16 or AVX512-BF16 (CUDA: compute
                  capability >= 8.0), else fp32. run-tensor defaults to fp32.
)";

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// --name value / --name=value flags after the command.
class Flags {
 public:
  Flags(int argc, char** argv, int first, const std::set<std::string>& known) {
    for (int i = first; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + arg + "'");
      std::string name = arg.substr(2), value;
      const size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else {
        if (i + 1 >= argc) throw UsageError("flag --" + name + " needs a value");
        value = argv[++i];
      }
      if (!known.count(name)) throw UsageError("unknown flag --" + name);
      values_[name] = value;
    }
    CheckNumerics();
  }
  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  void CheckNumerics() const {
    const std::string n = Str("numerics", "fast");
    if (n != "fast" && n != "reference") {
      throw UsageError("--numerics must be fast or reference, got '" + n + "'");
    }
  }
  std::string Str(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second;
  }
  std::string Required(const std::string& name) const {
    if (!Has(name)) throw UsageError("missing required flag --" + name);
    return values_.at(name);
  }
  int64_t Int(const std::string& name, int64_t fallback) const {
    return Number<int64_t>(name, fallback, "an integer",
                           [](const std::string& v, size_t* pos) { return std::stoll(v, pos); });
  }
  double Double(const std::string& name, double fallback) const {
    return Number<double>(name, fallback, "a number",
                          [](const std::string& v, size_t* pos) { return std::stod(v, pos); });
  }

 private:
  // Parses the whole value of --name with `parse`; a usage error otherwise.
  template <typename T, typename Parse>
  T Number(const std::string& name, T fallback, const char* what, Parse parse) const {
    if (!Has(name)) return fallback;
    const std::string& v = values_.at(name);
    try {
      size_t pos = 0;
      const T result = parse(v, &pos);
      if (pos == v.size()) return result;
    } catch (const std::exception&) {
    }
    throw UsageError("--" + name + " must be " + what + ", got '" + v + "'");
  }

  std::map<std::string, std::string> values_;
};

c10::Device ParseDevice(const Flags& flags) {
  const std::string d = flags.Str("device", "cpu");
  if (d == "cpu") return c10::kCPU;
  if (d == "cuda") {
    if (!torch::cuda::is_available()) throw std::runtime_error("--device cuda: no CUDA device");
    return c10::Device(c10::kCUDA, 0);
  }
  throw UsageError("--device must be cpu or cuda, got '" + d + "'");
}

Numerics g_numerics = Numerics::kFast;

void Setup(const Flags& flags) {
  ApplyNumerics(g_numerics, static_cast<int>(flags.Int("threads", 0)));
}

// Resolves --precision (default `fallback`) for `device`, sets the process's
// compute precision and says which on stderr.
Precision SetupPrecision(const Flags& flags, const c10::Device& device,
                         PrecisionRequest fallback) {
  PrecisionRequest request = fallback;
  if (flags.Has("precision") && !ParsePrecisionRequest(flags.Str("precision"), &request)) {
    throw UsageError("--precision must be fp32, bf16 or auto, got '" + flags.Str("precision") +
                     "'");
  }
  if (g_numerics == Numerics::kReference) {
    if (request == PrecisionRequest::kBf16) {
      throw UsageError("--precision bf16 needs --numerics fast (reference numerics are fp32)");
    }
    SetComputePrecision(Precision::kFp32);
    return Precision::kFp32;
  }
  PrecisionChoice choice;
  try {
    choice = ResolvePrecision(request, device);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  SetComputePrecision(choice.precision);
  std::fprintf(stderr, "lpdetr-model: precision %s: %s\n", PrecisionName(choice.precision),
               choice.reason.c_str());
  return choice.precision;
}

double PeakRssMiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB
}

// Resource usage of the whole process (all threads) so far, from one getrusage.
struct Usage {
  double cpu_seconds = 0;     // user + system
  double system_seconds = 0;  // kernel time: page faults, thread wake-ups
  double page_faults = 0;     // minor + major

  static Usage Now() {
    rusage r{};
    getrusage(RUSAGE_SELF, &r);
    auto sec = [](const timeval& t) { return t.tv_sec + 1e-6 * t.tv_usec; };
    return {sec(r.ru_utime) + sec(r.ru_stime), sec(r.ru_stime),
            static_cast<double>(r.ru_minflt + r.ru_majflt)};
  }
};

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int64_t ParameterCount(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

nlohmann::json AlphaJson(const at::Tensor& alpha) {
  nlohmann::json rows = nlohmann::json::array();
  if (!alpha.defined()) return rows;
  at::Tensor a = alpha.detach().to(at::kCPU, at::kFloat).contiguous();
  for (int64_t l = 0; l < a.size(0); ++l) {
    rows.push_back({a[l][0].item<float>(), a[l][1].item<float>(), a[l][2].item<float>()});
  }
  return rows;
}

// ---------------------------------------------------------------------------
int RunTensor(int argc, char** argv) {
  Flags flags(argc, argv, 2,
              {"model", "input", "output", "threads", "device", "numerics", "precision"});
  Setup(flags);
  const c10::Device device = ParseDevice(flags);
  SetupPrecision(flags, device, PrecisionRequest::kFp32);
  LoadedModel loaded = LoadModelDir(flags.Required("model"), device);
  SafetensorsContents in = ReadSafetensors(flags.Required("input"));
  for (const char* key : {"images", "mask", "image_sizes"}) {
    if (!in.Contains(key)) throw std::runtime_error(std::string("input has no tensor '") + key + "'");
  }
  ImageBatch batch;
  batch.images = in.Get("images").to(device, at::kFloat);
  batch.mask = in.Get("mask").to(device, at::kBool);
  const at::Tensor image_sizes = in.Get("image_sizes").to(at::kLong);
  TORCH_CHECK(image_sizes.dim() == 2 && image_sizes.size(1) == 2 &&
                  image_sizes.size(0) == batch.images.size(0),
              "image_sizes must be [B,2] with B = ", batch.images.size(0), ", got ",
              image_sizes.sizes());

  at::InferenceMode guard;
  DetectorOutput out = loaded.model(batch);
  NamedTensors result = {
      {"pred_logits", out.pred_logits}, {"pred_boxes", out.pred_boxes},
      {"layer_logits", out.layer_logits}, {"layer_boxes", out.layer_boxes},
      {"enc_logits", out.enc_logits}, {"enc_boxes", out.enc_boxes}};
  auto dets = LpDetrImpl::PostProcess(out.pred_logits, out.pred_boxes, image_sizes,
                                      loaded.config.num_select, loaded.config.nms_iou);
  for (size_t i = 0; i < dets.size(); ++i) {
    result.emplace_back("scores_" + std::to_string(i), dets[i].scores);
    result.emplace_back("labels_" + std::to_string(i), dets[i].labels);
    result.emplace_back("boxes_" + std::to_string(i), dets[i].boxes);
  }
  at::Tensor alpha = loaded.model->ScaleAlpha();
  if (alpha.defined()) result.emplace_back("scale_alpha", alpha);
  for (auto& [name, t] : result) t = t.detach().to(at::kCPU).contiguous();
  WriteSafetensors(flags.Required("output"), result,
                   {{"model", loaded.config.name},
                    {"variant", RelationVariantName(loaded.config.relation_variant)}});
  return 0;
}

// ---------------------------------------------------------------------------
int Bench(int argc, char** argv) {
  Flags flags(argc, argv, 2,
              {"config", "height", "width", "iters", "batch", "warmup", "stages", "ops", "threads",
               "device", "numerics", "precision"});
  Setup(flags);
  const std::string ops = flags.Str("ops", "");
  if (ops == "composed") {
    SetOpBackend(OpBackend::kComposed);
  } else if (ops == "kernels") {
    SetOpBackend(OpBackend::kKernels);
  } else if (!ops.empty()) {
    throw UsageError("--ops must be kernels or composed, got '" + ops + "'");
  }
  const c10::Device device = ParseDevice(flags);
  const bool composed = GetOpBackend() == OpBackend::kComposed;
  const Precision precision = SetupPrecision(
      flags, device, composed ? PrecisionRequest::kFp32 : PrecisionRequest::kAuto);
  if (precision == Precision::kBf16 && composed) {
    throw UsageError("--precision bf16 needs --ops kernels (the composed operators are fp32)");
  }
  ModelConfig config = ModelConfig::FromFile(flags.Required("config"));
  const int64_t height = flags.Int("height", 800), width = flags.Int("width", 1066);
  const int64_t iters = flags.Int("iters", 5), batch_size = flags.Int("batch", 1);
  const int64_t warmup = flags.Int("warmup", 1);
  if (height < 32 || width < 32 || iters < 1 || batch_size < 1 || warmup < 0) {
    throw UsageError("--height/--width must be >= 32, --iters/--batch >= 1, --warmup >= 0");
  }
  torch::manual_seed(0);
  LpDetr model(config);
  model->to(device);
  model->eval();
  // Random images of the requested size, padded to a multiple of 32.
  std::vector<at::Tensor> images;
  for (int64_t i = 0; i < batch_size; ++i) images.push_back(at::randn({3, height, width}));
  ImageBatch batch = BatchImages(images);
  batch.images = batch.images.to(device);
  batch.mask = batch.mask.to(device);

  at::InferenceMode guard;
  std::vector<double> seconds;
  // Per-stage breakdown (CPU only: on CUDA the stages would time kernel launches).
  const bool stages = flags.Int("stages", 1) != 0 && device.is_cpu();
  StageTimer timer;
  if (stages) SetStageTimer(&timer);
  std::vector<double> cpu_seconds;  // process CPU time (robust on a shared machine)
  std::vector<double> sys_seconds, faults;
  for (int64_t i = 0; i < warmup + iters; ++i) {
    if (i == warmup) timer.Clear();
    const Usage usage0 = Usage::Now();
    const auto t0 = std::chrono::steady_clock::now();
    DetectorOutput out = model(batch);
    std::vector<Detections> dets;
    {
      ScopedStage stage("post-process");
      dets = LpDetrImpl::PostProcess(out.pred_logits, out.pred_boxes,
                                     at::tensor({height, width}).repeat({batch_size, 1}),
                                     config.num_select, config.nms_iou);
      (void)dets[0].scores.sum().item<float>();  // synchronise
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= warmup) {
      seconds.push_back(dt / static_cast<double>(batch_size));
      const Usage usage = Usage::Now();
      const double images = static_cast<double>(batch_size);
      cpu_seconds.push_back((usage.cpu_seconds - usage0.cpu_seconds) / images);
      sys_seconds.push_back((usage.system_seconds - usage0.system_seconds) / images);
      faults.push_back((usage.page_faults - usage0.page_faults) / images);
    }
  }
  SetStageTimer(nullptr);
  const double total = std::accumulate(seconds.begin(), seconds.end(), 0.0) /
                       static_cast<double>(iters);
  const double median = Median(seconds);
  std::printf("model: %s (%s, %s, relation heads %d/%d)\n", config.name.c_str(),
              RelationVariantName(config.relation_variant), config.backbone.c_str(),
              config.relation_heads, config.num_heads);
  std::printf("input: %lld x %lld, batch %lld, device %s, intra-op threads %d, ops %s%s\n",
              static_cast<long long>(height), static_cast<long long>(width),
              static_cast<long long>(batch_size), device.str().c_str(), at::get_num_threads(),
              GetOpBackend() == OpBackend::kKernels ? "kernels" : "composed",
              GetOpBackend() == OpBackend::kKernels && device.is_cpu()
                  ? (std::string(" (CPU ") + ops::CpuIsaName(ops::CpuKernelIsa()) + ")").c_str()
                  : "");
  std::printf("precision: %s\n", PrecisionName(precision));
  std::printf("iterations: %lld (after %lld warm-up)\n", static_cast<long long>(iters),
              static_cast<long long>(warmup));
  std::printf("median seconds per image: %.3f\n", median);
  std::printf("min seconds per image: %.3f\n", *std::min_element(seconds.begin(), seconds.end()));
  std::printf("median process CPU seconds per image: %.3f\n", Median(cpu_seconds));
  std::printf("  of which system (kernel) seconds: %.3f\n", Median(sys_seconds));
  std::printf("median page faults per image: %.0f\n", Median(faults));
  std::printf("peak RSS MiB: %.1f\n", PeakRssMiB());
  if (stages) {
    // Mean seconds per image of each stage: wall clock, the main thread's
    // CPU time (all the work when --threads 1 and OPENBLAS_NUM_THREADS=1),
    // the whole process's CPU time and "busy" = process CPU / (wall x
    // intra-op threads), how well the stage keeps the cores working.
    // Nested stages are indented and included in their parent; "(other)" is
    // what no stage covers.
    PrintStageTable(timer, static_cast<double>(iters * batch_size), "image", total);
  }
  return 0;
}

// ---------------------------------------------------------------------------
int Detect(int argc, char** argv) {
  Flags flags(argc, argv, 2,
              {"model", "image", "score-threshold", "max-detections", "threads", "device", "numerics",
               "precision"});
  Setup(flags);
#ifndef LPDETR_HAVE_OPENCV
  throw std::runtime_error("detect needs OpenCV, which this build was made without");
#else
  const c10::Device device = ParseDevice(flags);
  const Precision precision = SetupPrecision(flags, device, PrecisionRequest::kAuto);
  const double threshold = flags.Double("score-threshold", 0.3);
  const int64_t max_det = flags.Int("max-detections", 100);
  if (!(threshold >= 0.0 && threshold <= 1.0)) {
    throw UsageError("--score-threshold must be in [0, 1]");
  }
  if (max_det < 0) throw UsageError("--max-detections must be >= 0");
  const std::string path = flags.Required("image");
  cv::Mat bgr = cv::imread(path, cv::IMREAD_COLOR);
  if (bgr.empty()) throw std::runtime_error("cannot decode image " + path);
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  at::Tensor pixels = at::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, at::kByte).clone();

  const std::string model_dir = flags.Has("model") ? flags.Str("model") : FindDefaultModelDir();
  LoadedModel loaded = LoadModelDir(model_dir, device);
  const ModelConfig& c = loaded.config;
  at::InferenceMode guard;
  ImageBatch batch = BatchImages({PreprocessImage(pixels, c.min_size, c.max_size)});
  batch.images = batch.images.to(device);
  batch.mask = batch.mask.to(device);
  const auto t0 = std::chrono::steady_clock::now();
  DetectorOutput out = loaded.model(batch);
  auto dets = LpDetrImpl::PostProcess(out.pred_logits, out.pred_boxes,
                                      at::tensor({int64_t{rgb.rows}, int64_t{rgb.cols}}).view({1, 2}),
                                      c.num_select, c.nms_iou)[0];
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  at::Tensor scores = dets.scores.to(at::kCPU), labels = dets.labels.to(at::kCPU);
  at::Tensor boxes = dets.boxes.to(at::kCPU);
  nlohmann::json list = nlohmann::json::array();
  for (int64_t i = 0; i < scores.size(0) && static_cast<int64_t>(list.size()) < max_det; ++i) {
    const float s = scores[i].item<float>();
    if (s < threshold) break;  // sorted by score
    const int label = static_cast<int>(labels[i].item<int64_t>());
    list.push_back({{"label_id", label},
                    {"label", c.ClassName(label)},
                    {"score", s},
                    {"box",
                     {{"x_min", boxes[i][0].item<float>()},
                      {"y_min", boxes[i][1].item<float>()},
                      {"x_max", boxes[i][2].item<float>()},
                      {"y_max", boxes[i][3].item<float>()}}}});
  }
  nlohmann::json result = {{"image", path},
                           {"width", rgb.cols},
                           {"height", rgb.rows},
                           {"model", c.name},
                           {"precision", PrecisionName(precision)},
                           {"inference_seconds", dt},
                           {"detections", list}};
  std::cout << result.dump(2) << std::endl;
  return 0;
#endif
}

// ---------------------------------------------------------------------------
int Info(int argc, char** argv) {
  Flags flags(argc, argv, 2, {"model", "config", "threads", "device", "numerics"});
  ModelConfig config;
  LpDetr model{nullptr};
  if (flags.Has("model")) {
    LoadedModel loaded = LoadModelDir(flags.Str("model"));
    config = loaded.config;
    model = loaded.model;
  } else if (flags.Has("config")) {
    config = ModelConfig::FromFile(flags.Str("config"));
    model = LpDetr(config);
  } else {
    throw UsageError("info needs --model DIR or --config FILE");
  }
  nlohmann::json j = config.ToJson();
  j.erase("classes");
  nlohmann::json info = {{"config", j},
                         {"parameters", ParameterCount(*model)},
                         {"num_classes_named", config.classes.size()},
                         {"scale_alpha", AlphaJson(model->ScaleAlpha())}};
  std::cout << info.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace lpdetr

int main(int argc, char** argv) {
  // run-tensor defaults to the parity fixtures' numerics, the rest to fast.
  lpdetr::g_numerics = lpdetr::NumericsFromArgs(
      argc, argv, 2,
      argc > 1 && std::string(argv[1]) == "run-tensor" ? lpdetr::Numerics::kReference
                                                       : lpdetr::Numerics::kFast);
  lpdetr::ConfigureProcess(argv, lpdetr::g_numerics);
  lpdetr::RetainFreedMemory();
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::fputs(lpdetr::kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  try {
    if (command == "run-tensor") return lpdetr::RunTensor(argc, argv);
    if (command == "bench") return lpdetr::Bench(argc, argv);
    if (command == "detect") return lpdetr::Detect(argc, argv);
    if (command == "info") return lpdetr::Info(argc, argv);
    throw lpdetr::UsageError("unknown command '" + command + "'");
  } catch (const lpdetr::UsageError& e) {
    std::fprintf(stderr, "lpdetr-model: %s\n\n%s", e.what(), lpdetr::kUsage);
    return 2;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "lpdetr-model %s: error: %s\n", command.c_str(),
                 e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lpdetr-model %s: error: %s\n", command.c_str(), e.what());
    return 1;
  }
}

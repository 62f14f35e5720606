// lpdetr-train bench: times full training steps of a randomly initialised
// model (SPEC 2.4).
//
//   lpdetr-train bench --config CONFIG.json --height H --width W --iters N
//       [--precision fp32|bf16|auto] [--threads T] [--warmup K] [--stages 0|1]
//       [--ops kernels|composed]
//
// One step = the training forward (contrastive denoising and the hybrid branch
// at the config's hybrid_num_proposals) + HybridSetCriterion + backward +
// gradient clipping (max norm 0.1) + AdamW step with the official parameter
// groups, on batch 1: a random image of H x W (padded to a multiple of 32) and
// three random boxes with random labels (fixed seed). K untimed warm-up steps
// (default 1), then N timed ones. Prints `median seconds per step: S`, the
// peak resident memory and (unless --stages 0) the mean time of each stage:
// forward (with the model's own stages nested), loss, backward, optimizer.
// main() configures the process for the fast numerics and keeps freed memory
// for reuse before this runs, as a training process does; Run() installs the
// training process's CPU caching allocator (model/cpu_caching_allocator.h)
// and prints its high-water marks.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "model/config.h"
#include "model/cpu_caching_allocator.h"
#include "model/detector.h"
#include "model/ops/cpu_isa.h"
#include "model/precision.h"
#include "model/preprocess.h"
#include "model/runtime.h"
#include "train/criterion.h"
#include "train/tools/commands.h"
#include "train/tools/flags.h"
#include "train/train_setup.h"

namespace lpdetr::train {
namespace {

constexpr const char* kUsage = R"(usage: lpdetr-train bench --config CONFIG.json --height H --width W --iters N
       [--precision fp32|bf16|auto] [--threads T] [--warmup K] [--stages 0|1] [--ops kernels|composed]

Times training steps of a random-weight model built from CONFIG: batch 1, a
random H x W image, three random boxes; each step is the training forward
(denoising, hybrid branch), the official loss, backward, gradient clipping
(max norm 0.1) and an AdamW step with the official parameter groups.
Prints `median seconds per step: S`, peak RSS and a per-stage breakdown.
  --iters     timed steps (required, >= 1)
  --warmup    untimed steps before them (default 1)
  --precision fp32 (default), bf16 (the training forward under bf16
              autocast, as lpdetr-train train --precision bf16; needs a CPU
              with AVX512-BF16 or AMX-BF16) or auto (bf16 where the CPU has it)
  --threads   intra-op threads (default: all cores)
  --stages    1 (default) prints the per-stage breakdown, 0 does not
  --ops       operator backend: kernels (default) or composed
)";

constexpr int64_t kNumBoxes = 3;

struct BenchOptions {
  std::string config_path;
  int64_t height = 0, width = 0, iters = 0, warmup = 1;
  int threads = 0;
  bool stages = true;
  std::string ops;  // empty: the numerics' default
  Precision precision = Precision::kFp32;
  std::string precision_reason;
};

BenchOptions ParseOptions(int argc, char** argv) {
  const auto flags = CommandFlags(
      argc, argv,
      {"config", "height", "width", "iters", "precision", "threads", "warmup", "stages", "ops"});
  for (const char* required : {"config", "height", "width", "iters"}) {
    if (!flags.Has(required)) throw UsageError(std::string("missing required flag --") + required);
  }
  BenchOptions o;
  try {
    const PrecisionChoice choice =
        ResolvePrecisionFlag(flags.Str("precision", "fp32"), c10::Device(c10::kCPU));
    o.precision = choice.precision;
    o.precision_reason = choice.reason;
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  o.config_path = flags.Required("config");
  o.height = flags.Int("height", 0);
  o.width = flags.Int("width", 0);
  o.iters = flags.Int("iters", 0);
  o.warmup = flags.Int("warmup", 1);
  o.threads = static_cast<int>(flags.Int("threads", 0));
  const int64_t stages = flags.Int("stages", 1);
  o.ops = flags.Str("ops", "");
  if (o.height < 32 || o.width < 32) {
    throw UsageError("--height and --width must be >= 32, got " + std::to_string(o.height) +
                     " x " + std::to_string(o.width));
  }
  if (o.iters < 1) throw UsageError("--iters must be >= 1, got " + std::to_string(o.iters));
  if (o.warmup < 0) throw UsageError("--warmup must be >= 0, got " + std::to_string(o.warmup));
  if (o.threads < 0) throw UsageError("--threads must be >= 0, got " + std::to_string(o.threads));
  if (stages != 0 && stages != 1) {
    throw UsageError("--stages must be 0 or 1, got " + std::to_string(stages));
  }
  o.stages = stages == 1;
  if (!o.ops.empty() && o.ops != "kernels" && o.ops != "composed") {
    throw UsageError("--ops must be kernels or composed, got '" + o.ops + "'");
  }
  if (o.precision == Precision::kBf16 && o.ops == "composed") {
    throw UsageError("--precision bf16 needs --ops kernels (the composed ops take no bf16 value)");
  }
  return o;
}

double PeakRssMiB() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB
}

// System (kernel) CPU time of the whole process so far.
double ProcessSystemSeconds() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return r.ru_stime.tv_sec + 1e-6 * r.ru_stime.tv_usec;
}

// CPU time (user + system) of the whole process so far.
double ProcessCpuSeconds() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  auto sec = [](const timeval& t) { return t.tv_sec + 1e-6 * t.tv_usec; };
  return sec(r.ru_utime) + sec(r.ru_stime);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Batch 1: a random image padded to a multiple of 32, run with the official
// semantics (the whole padded tensor is the image).
ImageBatch RandomBatch(int64_t height, int64_t width) {
  ImageBatch batch = BatchImages({at::randn({3, height, width})});
  batch.extents.clear();
  return batch;
}

// kNumBoxes random boxes well inside the image (normalized cxcywh) with random labels.
std::vector<TrainTarget> RandomTargets(int64_t num_classes) {
  TrainTarget t;
  at::Tensor centers = at::rand({kNumBoxes, 2}) * 0.5 + 0.25;  // 0.25..0.75
  at::Tensor sizes = at::rand({kNumBoxes, 2}) * 0.4 + 0.1;     // 0.1..0.5
  t.boxes = at::cat({centers, sizes}, 1).to(at::kFloat);
  t.labels = at::randint(num_classes, {kNumBoxes}, at::kLong);
  return {t};
}

struct BatchShape {
  int64_t height = 0, width = 0;  // of the padded batch tensor
};

struct StepResult {
  double loss = 0;
  double grad_norm = 0;
};

class TrainingStepBench {
 public:
  TrainingStepBench(const ModelConfig& config, int64_t height, int64_t width, bool bf16)
      : config_(config), model_(config), bf16_(bf16) {
    PrepareForTraining(*model_);
    groups_ = FinetuneBackboneAndLinearProjection(*model_);
    params_ = GroupTensors(groups_);
    optimizer_ = MakeAdamW(groups_, options_);
    CriterionOptions criterion_options;
    criterion_options.hybrid_assign = config.hybrid_assign;
    criterion_ = HybridSetCriterion(criterion_options);
    batch_ = RandomBatch(height, width);
    targets_ = RandomTargets(config.num_classes);
  }

  StepResult Step() {
    DetectorOutput out;
    {
      ScopedStage stage("forward");
      ScopedBf16Autocast autocast(bf16_, c10::DeviceType::CPU);
      out = model_->forward(batch_, &targets_);
    }
    CriterionResult loss;
    {
      ScopedStage stage("loss");
      loss = criterion_(out, targets_);
    }
    {
      ScopedStage stage("backward");
      loss.total.backward();
    }
    StepResult r;
    {
      ScopedStage stage("optimizer");
      r.grad_norm = ClipGradients(params_, options_.max_grad_norm);
      optimizer_->step();
      ClearGradients(params_);
    }
    r.loss = loss.total.item<double>();
    return r;
  }

  const std::vector<ParameterGroup>& groups() const { return groups_; }
  BatchShape shape() const { return {batch_.images.size(2), batch_.images.size(3)}; }

 private:
  ModelConfig config_;
  LpDetr model_;
  bool bf16_ = false;
  OptimizerOptions options_;
  std::vector<ParameterGroup> groups_;
  std::vector<at::Tensor> params_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  HybridSetCriterion criterion_;
  ImageBatch batch_;
  std::vector<TrainTarget> targets_;
};

void PrintGroups(const std::vector<ParameterGroup>& groups, double lr) {
  std::printf("parameter groups:");
  for (const ParameterGroup& g : groups) {
    int64_t n = 0;
    for (const NamedParameter& p : g.params) n += p.tensor.numel();
    std::printf(" %s %zu tensors/%lld values (lr %g%s)", ParameterGroupName(g.kind),
                g.params.size(), static_cast<long long>(n), lr * g.lr_scale,
                g.weight_decay ? "" : ", no decay");
    if (&g != &groups.back()) std::printf(";");
  }
  std::printf("\n");
}

// The caching allocator's high-water marks and reuse counts over the run.
void PrintAllocatorStats(const CpuCachingAllocator* allocator) {
  if (allocator == nullptr) {
    std::printf("CPU caching allocator: off\n");
    return;
  }
  const CpuCachingAllocatorStats s = allocator->stats();
  constexpr double kMiB = 1 << 20;
  std::printf("CPU caching allocator: peak in use %.1f MiB, peak reserved %.1f MiB, "
              "cached %.1f MiB, mapped %.1f MiB, %lld hits, %lld misses, %lld evictions, "
              "%lld small requests\n",
              s.peak_in_use_bytes / kMiB, s.peak_reserved_bytes / kMiB, s.cached_bytes / kMiB,
              s.mapped_bytes / kMiB,
              static_cast<long long>(s.hits), static_cast<long long>(s.misses),
              static_cast<long long>(s.evictions), static_cast<long long>(s.small_requests));
}

int Run(int argc, char** argv) {
  const BenchOptions o = ParseOptions(argc, argv);
  // A training process's allocator: large blocks stay mapped for the next step.
  CpuCachingAllocator* allocator = InstallCpuCachingAllocator();
  ApplyNumerics(Numerics::kFast, o.threads);
  if (o.ops == "composed") SetOpBackend(OpBackend::kComposed);
  if (o.ops == "kernels") SetOpBackend(OpBackend::kKernels);
  const ModelConfig config = ModelConfig::FromFile(o.config_path);

  at::manual_seed(0);
  TrainingStepBench bench(config, o.height, o.width, o.precision == Precision::kBf16);
  StageTimer timer;
  if (o.stages) SetStageTimer(&timer);
  std::vector<double> seconds, cpu_seconds, system_seconds;
  StepResult last;
  for (int64_t i = 0; i < o.warmup + o.iters; ++i) {
    if (i == o.warmup) timer.Clear();
    const double cpu0 = ProcessCpuSeconds(), system0 = ProcessSystemSeconds();
    const auto t0 = std::chrono::steady_clock::now();
    last = bench.Step();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i >= o.warmup) {
      seconds.push_back(dt);
      cpu_seconds.push_back(ProcessCpuSeconds() - cpu0);
      system_seconds.push_back(ProcessSystemSeconds() - system0);
    }
  }
  SetStageTimer(nullptr);
  if (!std::isfinite(last.loss)) {
    throw std::runtime_error("the last step's loss is not finite: " + std::to_string(last.loss));
  }

  const double mean = std::accumulate(seconds.begin(), seconds.end(), 0.0) /
                      static_cast<double>(o.iters);
  const BatchShape shape = bench.shape();
  std::printf("model: %s (%s, %s, relation heads %d/%d), %d queries, %d hybrid proposals, "
              "%d denoising queries\n",
              config.name.c_str(), RelationVariantName(config.relation_variant),
              config.backbone.c_str(), config.relation_heads, config.num_heads,
              config.num_queries, config.hybrid_num_proposals, config.denoising_nums);
  std::printf("input: %lld x %lld (padded %lld x %lld), batch 1, %lld boxes, precision %s "
              "(%s), intra-op threads %d, ops %s%s\n",
              static_cast<long long>(o.height), static_cast<long long>(o.width),
              static_cast<long long>(shape.height), static_cast<long long>(shape.width),
              static_cast<long long>(kNumBoxes), PrecisionName(o.precision),
              o.precision_reason.c_str(), at::get_num_threads(),
              GetOpBackend() == OpBackend::kKernels ? "kernels" : "composed",
              GetOpBackend() == OpBackend::kKernels
                  ? (std::string(" (CPU ") + ops::CpuIsaName(ops::CpuKernelIsa()) + ")").c_str()
                  : "");
  PrintGroups(bench.groups(), OptimizerOptions().lr);
  std::printf("iterations: %lld (after %lld warm-up)\n", static_cast<long long>(o.iters),
              static_cast<long long>(o.warmup));
  std::printf("loss (last step): %.6g, gradient norm before clipping: %.6g\n", last.loss,
              last.grad_norm);
  std::printf("median seconds per step: %.3f\n", Median(seconds));
  std::printf("min seconds per step: %.3f\n", *std::min_element(seconds.begin(), seconds.end()));
  std::printf("median process CPU seconds per step: %.3f\n", Median(cpu_seconds));
  std::printf("median process system CPU seconds per step: %.3f\n", Median(system_seconds));
  std::printf("peak RSS MiB: %.1f\n", PeakRssMiB());
  PrintAllocatorStats(allocator);
  if (o.stages) PrintStageTable(timer, static_cast<double>(o.iters), "step", mean);
  return 0;
}

}  // namespace

int RunBenchCommand(int argc, char** argv) {
  return RunSubcommand("bench", kUsage, argc, argv, Run);
}

}  // namespace lpdetr::train

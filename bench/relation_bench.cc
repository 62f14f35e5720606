// Relation weights: the fused op lpdetr::relation_weights against the composed
// ATen reference (model/relation.h), forward and forward+backward, median time
// and peak memory per configuration (each measured in a fresh child process).
//
// Usage: relation_bench [--variant lp-detr|relation-detr] [--sizes 300,900,1500,3000]
//                       [--batches 1,4] [--iters 5] [--heads 8]
//                       [--composed-limit-gib 6] [--threads 0]
// --threads sets the ATen intra-op threads of the measured runs (0: all
// cores); the math libraries are set up as in every binary (model/runtime.h).
// Composed runs whose extrapolated memory exceeds --composed-limit-gib are
// skipped and their estimated need is printed instead. Each configuration
// runs in two children: one times warm-up + --iters calls with the server's
// allocator policy (RetainFreedMemory), one makes a single call with peak RSS
// following live tensors (bench::TrackLiveMemory) for the memory columns.
// "op MiB" is that child's peak RSS minus its RSS right before the call
// (LibTorch, inputs): the fused forward's is exactly its [B, K, N, M] output.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>

#include "bench/bench_util.h"
#include "model/ops/cpu_isa.h"
#include "model/relation.h"
#include "model/runtime.h"

namespace lpdetr {
namespace {

struct Options {
  std::string variant = "lp-detr";
  std::vector<int64_t> sizes = {300, 900, 1500, 3000};
  std::vector<int64_t> batches = {1, 4};
  int iters = 5;
  int64_t heads = 8;
  double composed_limit_gib = 6.0;
  int threads = 0;
};

std::vector<int64_t> ParseList(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

// Child: one configuration; prints "<median seconds> <baseline MiB>".
// measure "time": the product's allocator policy (RetainFreedMemory), warm-up
// and `iters` calls; "memory": peak RSS follows live tensors
// (bench::TrackLiveMemory), one call.
int RunOne(const std::string& variant, const std::string& impl, int64_t n, int64_t b,
           const std::string& mode, int iters, int64_t heads, int threads,
           const std::string& measure) {
  const bool memory = measure == "memory";
  if (memory) {
    bench::TrackLiveMemory();
  } else {
    RetainFreedMemory();
  }
  ApplyNumerics(Numerics::kFast, threads);
  at::manual_seed(0);
  SetOpBackend(impl == "fused" ? OpBackend::kKernels : OpBackend::kComposed);
  const bool lp = variant == "lp-detr";
  const bool backward = mode == "fwd+bwd";
  at::Tensor xy = at::rand({b, n, 2}) * 0.8 + 0.1;
  at::Tensor wh = at::rand({b, n, 2}) * 0.3 + 0.01;
  at::Tensor boxes = at::cat({xy, wh}, -1);
  at::Tensor boxes2 = at::cat({xy + 0.01, wh * 1.1}, -1);
  MultiScaleRelation ms(heads, 6);
  PositionRelationEmbedding pr(heads);
  {
    at::NoGradGuard g;
    ms->scale_weights.normal_();
  }
  auto call = [&]() {
    at::Tensor out = lp ? ms(boxes, 3) : pr(boxes, boxes2);
    if (backward) {
      out.sum().backward();
    }
  };
  std::unique_ptr<at::NoGradGuard> no_grad;
  if (!backward) no_grad = std::make_unique<at::NoGradGuard>();
  const double baseline = bench::PeakRssMib();
  const double seconds = memory ? bench::MedianSeconds(call, 0, 1)
                                : bench::MedianSeconds(call, 1, iters);
  std::printf("%.6f %.1f\n", seconds, baseline);
  return 0;
}

struct Row {
  double seconds = 0, peak = 0, op = 0;
  bool ran = false;
  double estimate_gib = 0;
};

int RunAll(const Options& o) {
  ApplyNumerics(Numerics::kFast, o.threads);  // the children's setting, for the header
  std::printf(
      "relation_bench: variant %s, K = %lld heads, %d ATen threads, CPU kernels %s, median of "
      "%d\n",
      o.variant.c_str(), static_cast<long long>(o.heads),
      o.threads > 0 ? o.threads : at::get_num_threads(),
      lpdetr::ops::CpuIsaName(lpdetr::ops::CpuKernelIsa()), o.iters);
  std::printf("%6s %3s %-8s | %12s %12s %9s | %10s %10s %10s %10s | %8s %8s\n", "N", "B", "mode",
              "composed s", "fused s", "speedup", "comp peak", "fused peak", "comp op", "fused op",
              "peak x", "op x");
  for (const std::string mode : {"fwd", "fwd+bwd"}) {
    // Composed op memory per pair (MiB), from the largest composed run so far.
    double composed_mib_per_pair = 0;
    for (int64_t b : o.batches) {
      for (int64_t n : o.sizes) {
        std::map<std::string, Row> rows;
        for (const std::string impl : {"composed", "fused"}) {
          Row& r = rows[impl];
          const double pairs = static_cast<double>(b) * n * n;
          if (impl == "composed" && composed_mib_per_pair > 0) {
            r.estimate_gib = composed_mib_per_pair * pairs / 1024.0;
            if (r.estimate_gib > o.composed_limit_gib) continue;
          }
          const int iters = impl == "composed" && pairs > 2e6 ? std::min(o.iters, 3) : o.iters;
          // Time and memory in separate children (see RunOne).
          double seconds = 0, baseline = 0;  // from the time / memory child
          bench::ChildResult c;
          bool ok = true;
          for (const std::string measure : {"time", "memory"}) {
            c = bench::RunSelf({"--run", o.variant, impl, std::to_string(n), std::to_string(b),
                                mode, std::to_string(iters), std::to_string(o.heads),
                                std::to_string(o.threads), measure});
            double child_seconds = 0, child_baseline = 0;
            ok = c.exit_code == 0 && std::sscanf(c.output.c_str(), "%lf %lf", &child_seconds,
                                                 &child_baseline) == 2;
            if (!ok) break;
            if (measure == "time") {
              seconds = child_seconds;
            } else {
              baseline = child_baseline;
            }
          }
          if (!ok) {
            std::printf("  %s N=%lld B=%lld %s failed (exit %d)\n", impl.c_str(),
                        static_cast<long long>(n), static_cast<long long>(b), mode.c_str(),
                        c.exit_code);
            continue;
          }
          r.ran = true;
          r.seconds = seconds;
          r.peak = c.peak_rss_mib;  // the memory child's
          r.op = std::max(0.0, c.peak_rss_mib - baseline);
          if (impl == "composed") composed_mib_per_pair = std::max(composed_mib_per_pair, r.op / pairs);
        }
        const Row& c = rows["composed"];
        const Row& f = rows["fused"];
        char comp_s[32], speed[32], comp_peak[32], comp_op[32], peak_x[32], op_x[32];
        if (c.ran) {
          std::snprintf(comp_s, sizeof comp_s, "%.4f", c.seconds);
          std::snprintf(speed, sizeof speed, "%.1fx", f.ran ? c.seconds / f.seconds : 0.0);
          std::snprintf(comp_peak, sizeof comp_peak, "%.0f", c.peak);
          std::snprintf(comp_op, sizeof comp_op, "%.0f", c.op);
          std::snprintf(peak_x, sizeof peak_x, "%.1fx", f.ran ? c.peak / f.peak : 0.0);
          std::snprintf(op_x, sizeof op_x, "%.1fx", f.ran && f.op > 0 ? c.op / f.op : 0.0);
        } else {
          std::snprintf(comp_s, sizeof comp_s, "skipped");
          std::snprintf(speed, sizeof speed, "-");
          std::snprintf(comp_peak, sizeof comp_peak, "~%.1fGiB", c.estimate_gib);
          std::snprintf(comp_op, sizeof comp_op, "-");
          std::snprintf(peak_x, sizeof peak_x, "-");
          std::snprintf(op_x, sizeof op_x, "-");
        }
        std::printf("%6lld %3lld %-8s | %12s %12.4f %9s | %10s %10.0f %10s %10.0f | %8s %8s\n",
                    static_cast<long long>(n), static_cast<long long>(b), mode.c_str(), comp_s,
                    f.seconds, speed, comp_peak, f.peak, comp_op, f.op, peak_x, op_x);
        std::fflush(stdout);
      }
    }
  }
  std::printf("times in seconds (allocator keeps freed memory, as in the server); memory in MiB "
              "from a separate one-call child whose peak RSS follows live tensors (peak = its "
              "peak RSS; op = peak minus the RSS before the call); composed runs over %.1f GiB "
              "(extrapolated per pair) are skipped\n",
              o.composed_limit_gib);
  return 0;
}

}  // namespace
}  // namespace lpdetr

int main(int argc, char** argv) {
  lpdetr::ConfigureProcess(argv, lpdetr::Numerics::kFast);
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "--run" && args.size() == 10) {
    return lpdetr::RunOne(args[1], args[2], std::stoll(args[3]), std::stoll(args[4]), args[5],
                          std::stoi(args[6]), std::stoll(args[7]), std::stoi(args[8]), args[9]);
  }
  lpdetr::Options o;
  for (size_t i = 0; i + 1 < args.size(); i += 2) {
    const std::string& k = args[i];
    const std::string& v = args[i + 1];
    if (k == "--variant") {
      o.variant = v;
    } else if (k == "--sizes") {
      o.sizes = lpdetr::ParseList(v);
    } else if (k == "--batches") {
      o.batches = lpdetr::ParseList(v);
    } else if (k == "--iters") {
      o.iters = std::stoi(v);
    } else if (k == "--heads") {
      o.heads = std::stoll(v);
    } else if (k == "--threads") {
      o.threads = std::stoi(v);
    } else if (k == "--composed-limit-gib") {
      o.composed_limit_gib = std::stod(v);
    } else {
      std::fprintf(stderr, "relation_bench: unknown flag %s\n", k.c_str());
      return 2;
    }
  }
  if (args.size() % 2 != 0) {
    std::fprintf(stderr, "relation_bench: flag %s needs a value\n", args.back().c_str());
    return 2;
  }
  if (o.variant != "lp-detr" && o.variant != "relation-detr") {
    std::fprintf(stderr, "relation_bench: --variant must be lp-detr or relation-detr, got %s\n",
                 o.variant.c_str());
    return 2;
  }
  return lpdetr::RunAll(o);
}

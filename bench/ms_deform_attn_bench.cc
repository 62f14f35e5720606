// Multi-scale deformable attention: the fused op (lpdetr::ms_deform_attn)
// against the composed grid_sample reference at the R50 800x1066 shapes
// (padded 800x1088: levels 100x136, 50x68, 25x34, 13x17; H = 8, D = 32,
// L = 4, P = 4, B = 1), encoder (Nq = Nv = 18071) and decoder (Nq = 900).
//
// Each (shape, implementation, pass) runs in two child processes: one times
// warm-up + --iters calls with the server's allocator policy
// (RetainFreedMemory), one makes a warm-up and one timed call with peak RSS
// following live tensors (bench::TrackLiveMemory). Prints median times of forward and
// forward+backward, the composed/kernel ratio and the second child's peak RSS
// (inputs included).
// The `module` row times the whole MultiScaleDeformableAttention module at the
// encoder shapes (E = 256) with OpBackend::kComposed vs kKernels.
// A second table times the kernel with a bfloat16 value (float locations and
// weights, float output; the value converted before timing) against the float
// kernel, at the encoder and decoder shapes.
//
//   ms_deform_attn_bench [--iters N] [--threads T]
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "bench/bench_util.h"
#include "model/deform_attn.h"
#include "model/ops/ms_deform_attn.h"
#include "model/runtime.h"

namespace lpdetr {
namespace {

const SpatialShapes kShapes = {{{100, 136}}, {{50, 68}}, {{25, 34}}, {{13, 17}}};
constexpr int64_t kHeads = 8, kDim = 32, kPoints = 4;

struct Case {
  at::Tensor value, loc, attn, grad;
};

// Encoder: the queries are the value positions (reference points at pixel
// centres, level by level, as in the model); decoder: random boxes' centres.
// Sampling points scatter a few pixels around the reference.
Case MakeCase(bool encoder) {
  at::manual_seed(0);
  const int64_t levels = static_cast<int64_t>(kShapes.size());
  int64_t nv = 0;
  std::vector<at::Tensor> refs;
  for (const auto& s : kShapes) {
    nv += s[0] * s[1];
    at::Tensor ys = (at::arange(s[0], at::kFloat) + 0.5) / s[0];
    at::Tensor xs = (at::arange(s[1], at::kFloat) + 0.5) / s[1];
    auto grid = at::meshgrid({ys, xs}, "ij");
    refs.push_back(at::stack({grid[1].flatten(), grid[0].flatten()}, -1));
  }
  at::Tensor ref = encoder ? at::cat(refs, 0) : at::rand({900, 2});
  const int64_t nq = ref.size(0);
  Case c;
  c.value = at::randn({1, nv, kHeads, kDim});
  c.loc = ref.view({1, nq, 1, 1, 1, 2}) +
          at::randn({1, nq, kHeads, levels, kPoints, 2}) * 0.03;
  c.attn = at::randn({1, nq, kHeads, levels * kPoints})
               .softmax(-1)
               .view({1, nq, kHeads, levels, kPoints});
  c.grad = at::randn({1, nq, kHeads * kDim});
  return c;
}

at::Tensor Run(const std::string& impl, const at::Tensor& v, const at::Tensor& l,
               const at::Tensor& a) {
  return impl == "kernel" ? MsDeformAttnFused(v, kShapes, l, a)
                          : MsDeformAttnComposed(v, kShapes, l, a);
}

// The whole MultiScaleDeformableAttention module (projections, softmax,
// sampling-location arithmetic) at the encoder shapes, with the op backend
// `impl` selects.
double RunModule(const std::string& impl, const std::string& pass, int iters) {
  SetOpBackend(impl == "kernel" ? OpBackend::kKernels : OpBackend::kComposed);
  Case c = MakeCase(/*encoder=*/true);
  const int64_t nq = c.loc.size(1), embed = kHeads * kDim;
  MultiScaleDeformableAttention attn(embed, static_cast<int64_t>(kShapes.size()), kHeads,
                                     kPoints);
  at::Tensor query = at::randn({1, nq, embed});
  at::Tensor value = at::randn({1, nq, embed});
  at::Tensor ref = c.loc.select(2, 0).select(3, 0);  // [1, Nq, L, 2]
  if (pass == "fwd") {
    at::NoGradGuard no_grad;
    return bench::MedianSeconds(
        [&] { attn->forward(query, ref, value, kShapes, at::Tensor()); }, 1, iters);
  }
  query.requires_grad_(true);
  return bench::MedianSeconds(
      [&] {
        attn->zero_grad();
        query.mutable_grad() = at::Tensor();
        attn->forward(query, ref, value, kShapes, at::Tensor()).backward(c.grad);
      },
      1, iters);
}

// Child: one configuration; prints the median seconds.
int RunChild(const std::string& shape, const std::string& impl, const std::string& pass,
             int iters) {
  if (shape == "module") {
    std::printf("%.9f\n", RunModule(impl, pass, iters));
    return 0;
  }
  Case c = MakeCase(shape == "encoder");
  if (impl == "kernel_bf16") c.value = c.value.to(at::kBFloat16);
  const std::string op = impl == "kernel_bf16" ? "kernel" : impl;
  double seconds = 0;
  if (pass == "fwd") {
    at::NoGradGuard no_grad;
    seconds = bench::MedianSeconds([&] { Run(op, c.value, c.loc, c.attn); }, 1, iters);
  } else {
    at::Tensor v = c.value.clone().requires_grad_(true);
    at::Tensor l = c.loc.clone().requires_grad_(true);
    at::Tensor a = c.attn.clone().requires_grad_(true);
    seconds = bench::MedianSeconds(
        [&] {
          v.mutable_grad() = at::Tensor();
          l.mutable_grad() = at::Tensor();
          a.mutable_grad() = at::Tensor();
          Run(op, v, l, a).backward(c.grad);
        },
        1, iters);
  }
  std::printf("%.9f\n", seconds);
  return 0;
}

}  // namespace
}  // namespace lpdetr

int main(int argc, char** argv) {
  using namespace lpdetr;
  int iters = 5, threads = 0;
  std::vector<std::string> child;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--iters" && i + 1 < argc) {
      iters = std::atoi(argv[++i]);
    } else if (arg == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (arg == "--child" && i + 4 < argc) {
      child = {argv[i + 1], argv[i + 2], argv[i + 3], argv[i + 4]};
      i += 4;
    } else {
      std::fprintf(stderr, "usage: %s [--iters N] [--threads T]\n", argv[0]);
      return 2;
    }
  }
  // Fast numerics, as the product runs: `threads` ATen threads (0 = all cores).
  ConfigureProcess(argv, Numerics::kFast);
  ApplyNumerics(Numerics::kFast, threads);
  if (!child.empty()) {
    if (child[3] == "memory") {
      bench::TrackLiveMemory();
      iters = 1;
    } else {
      RetainFreedMemory();
    }
    return RunChild(child[0], child[1], child[2], iters);
  }

  std::printf("ms_deform_attn: fused kernel vs composed (grid_sample), R50 800x1066 shapes\n");
  std::printf("levels 100x136 50x68 25x34 13x17 (Nv = 18071), B = 1, H = 8, D = 32, L = 4, "
              "P = 4; %d ATen threads, median of %d\n\n",
              at::get_num_threads(), iters);
  // One table: implementations impls[0] and impls[1] over `shapes`.
  auto table = [&](const std::vector<std::string>& shapes, const char* const impls[2],
                   const char* const labels[4]) {
    std::printf("%-8s %6s | %11s %11s %6s | %13s %13s %6s | %s\n", "shape", "Nq", labels[0],
                labels[1], "ratio", labels[2], labels[3], "ratio",
                "peak RSS MiB (first/second fwd, first/second f+b)");
    const char* passes[] = {"fwd", "fwdbwd"};
    for (const std::string& shape : shapes) {
      double ms[2][2] = {}, rss[2][2] = {};
      for (int i = 0; i < 2; ++i) {
        for (int p = 0; p < 2; ++p) {
          for (const char* measure : {"time", "memory"}) {
            std::vector<std::string> args = {"--iters", std::to_string(iters), "--child", shape,
                                             impls[i], passes[p], measure};
            if (threads > 0) args.insert(args.end(), {"--threads", std::to_string(threads)});
            const bench::ChildResult r = bench::RunSelf(args);
            if (r.exit_code != 0) {
              std::fprintf(stderr, "%s %s %s failed (exit %d)\n", shape.c_str(), impls[i],
                           passes[p], r.exit_code);
              return false;
            }
            if (std::string(measure) == "time") {
              ms[i][p] = std::atof(r.output.c_str()) * 1e3;
            } else {
              rss[i][p] = r.peak_rss_mib;
            }
          }
        }
      }
      std::printf(
          "%-8s %6d | %11.2f %11.2f %5.1fx | %13.2f %13.2f %5.1fx | %.0f / %.0f, %.0f / %.0f\n",
          shape.c_str(), shape == "decoder" ? 900 : 18071, ms[0][0], ms[1][0],
          ms[0][0] / ms[1][0], ms[0][1], ms[1][1], ms[0][1] / ms[1][1], rss[0][0], rss[1][0],
          rss[0][1], rss[1][1]);
    }
    return true;
  };
  const char* composed_vs_kernel[] = {"composed", "kernel"};
  const char* composed_labels[] = {"composed ms", "kernel ms", "composed f+b", "kernel f+b"};
  if (!table({"encoder", "decoder", "module"}, composed_vs_kernel, composed_labels)) return 1;
  std::printf("\nkernel: float value vs bfloat16 value (float locations, weights and output)\n");
  const char* float_vs_bf16[] = {"kernel", "kernel_bf16"};
  const char* bf16_labels[] = {"fp32 ms", "bf16 ms", "fp32 f+b", "bf16 f+b"};
  if (!table({"encoder", "decoder"}, float_vs_bf16, bf16_labels)) return 1;
  return 0;
}

// bf16 vs fp32 matrix products at the model's shapes, through each route
// LibTorch 1.13 offers on CPU, to choose the bf16 inference path
// (model/precision.h) by measurement:
//   linear     at::linear (fp32: OpenBLAS sgemm; bf16: oneDNN matmul)
//   addmm      at::addmm with a transposed weight (the blocked FFN's call)
//   conv1x1    the same product as a 1x1 convolution on channels-last maps
//              (oneDNN convolution, the route that reaches AMX on some builds)
//   conv3x3    a 3x3 channels-last convolution (backbone and neck shapes)
// Prints, per shape and route, the median seconds and GFLOP/s of fp32 and
// bf16 and their ratio, and the CPU's bf16 instruction sets.
//
// Usage: bf16_routes_bench [--iters 5] [--threads 0]
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "bench/bench_util.h"
#include "model/precision.h"
#include "model/runtime.h"

namespace lpdetr {
namespace {

std::string CpuModelName() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

struct Product {
  const char* name;
  int64_t rows, in, out;  // [rows, in] x [in, out]
};

struct Conv {
  const char* name;
  int64_t in, out, height, width, kernel, stride;
};

void Report(const char* shape, const char* route, double flops, double fp32, double bf16) {
  std::printf("%-28s %-8s %9.4f %7.1f %9.4f %7.1f %6.2fx\n", shape, route, fp32,
              flops / fp32 * 1e-9, bf16, flops / bf16 * 1e-9, fp32 / bf16);
}

void TimeProduct(const Product& p, int iters) {
  const at::Tensor x = at::randn({p.rows, p.in}), w = at::randn({p.out, p.in}),
                   b = at::randn({p.out});
  const at::Tensor xb = x.to(at::kBFloat16), wb = w.to(at::kBFloat16), bb = b.to(at::kBFloat16);
  const double flops = 2.0 * p.rows * p.in * p.out;
  auto time = [&](const std::function<void()>& fn) { return bench::MedianSeconds(fn, 1, iters); };
  Report(p.name, "linear", flops, time([&] { (void)at::linear(x, w, b); }),
         time([&] { (void)at::linear(xb, wb, bb); }));
  const at::Tensor wt = w.t(), wbt = wb.t();
  Report(p.name, "addmm", flops, time([&] { (void)at::addmm(b, x, wt); }),
         time([&] { (void)at::addmm(bb, xb, wbt); }));
  // [rows, in] as a channels-last [1, in, 1, rows] map: no copy.
  const at::Tensor x4 = x.view({1, 1, p.rows, p.in}).permute({0, 3, 1, 2});
  const at::Tensor xb4 = xb.view({1, 1, p.rows, p.in}).permute({0, 3, 1, 2});
  const at::Tensor w4 = w.view({p.out, p.in, 1, 1}).contiguous(at::MemoryFormat::ChannelsLast);
  const at::Tensor wb4 = wb.view({p.out, p.in, 1, 1}).contiguous(at::MemoryFormat::ChannelsLast);
  Report(p.name, "conv1x1", flops, time([&] { (void)at::conv2d(x4, w4, b); }),
         time([&] { (void)at::conv2d(xb4, wb4, bb); }));
}

void TimeConv(const Conv& c, int iters) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const at::Tensor x = at::randn({1, c.in, c.height, c.width}).contiguous(cl);
  const at::Tensor w = at::randn({c.out, c.in, c.kernel, c.kernel}).contiguous(cl);
  const at::Tensor xb = x.to(at::kBFloat16).contiguous(cl), wb = w.to(at::kBFloat16).contiguous(cl);
  const int64_t pad = c.kernel / 2;
  const int64_t oh = (c.height + 2 * pad - c.kernel) / c.stride + 1;
  const int64_t ow = (c.width + 2 * pad - c.kernel) / c.stride + 1;
  const double flops = 2.0 * c.in * c.out * c.kernel * c.kernel * oh * ow;
  auto time = [&](const std::function<void()>& fn) { return bench::MedianSeconds(fn, 1, iters); };
  Report(c.name, "conv", flops, time([&] { (void)at::conv2d(x, w, {}, c.stride, pad); }),
         time([&] { (void)at::conv2d(xb, wb, {}, c.stride, pad); }));
}

int Main(int argc, char** argv) {
  int iters = 5, threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--iters") {
      iters = std::atoi(argv[i + 1]);
    } else if (flag == "--threads") {
      threads = std::atoi(argv[i + 1]);
    } else {
      std::fprintf(stderr, "usage: bf16_routes_bench [--iters N] [--threads T]\n");
      return 2;
    }
  }
  if (iters < 1 || threads < 0) {
    std::fprintf(stderr, "--iters must be >= 1 and --threads >= 0\n");
    return 2;
  }
  ApplyNumerics(Numerics::kFast, threads);
  std::printf("CPU: %s; bf16 instructions: %s; intra-op threads %d\n", CpuModelName().c_str(),
              DetectCpuBf16().Describe().c_str(), at::get_num_threads());
  std::printf("%-28s %-8s %9s %7s %9s %7s %7s\n", "shape", "route", "fp32 s", "GFLOP/s",
              "bf16 s", "GFLOP/s", "speedup");
  at::InferenceMode guard;
  // R50 at 800x1066: S = 17821 encoder positions, 900 decoder queries.
  for (const Product& p : {Product{"enc FFN1 17821x256->2048", 17821, 256, 2048},
                           Product{"enc FFN2 17821x2048->256", 17821, 2048, 256},
                           Product{"value_proj 17821x256->256", 17821, 256, 256},
                           Product{"fusion 17821x1792->256", 17821, 1792, 256},
                           Product{"dec FFN1 900x256->2048", 900, 256, 2048}}) {
    TimeProduct(p, iters);
  }
  for (const Conv& c : {Conv{"layer1 3x3 64 @200x267", 64, 64, 200, 267, 3, 1},
                        Conv{"layer3 3x3 256 @50x67", 256, 256, 50, 67, 3, 1},
                        Conv{"layer3 1x1 1024->256 @50x67", 1024, 256, 50, 67, 1, 1},
                        Conv{"neck 3x3s2 2048->256 @25x34", 2048, 256, 25, 34, 3, 2}}) {
    TimeConv(c, iters);
  }
  return 0;
}

}  // namespace
}  // namespace lpdetr

int main(int argc, char** argv) {
  lpdetr::ConfigureProcess(argv, lpdetr::Numerics::kFast);
  return lpdetr::Main(argc, argv);
}

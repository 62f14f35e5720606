// Hungarian matching speed: the linear assignment solver alone on random
// costs, and the full matcher (cost matrix + assignment) on random logits and
// boxes, at the one-to-one shape (900 queries x 50 targets) and the hybrid
// branch's (1500 queries x 300 targets: 50 targets tiled 6 times). Prints the
// median milliseconds of one image.
//
// Usage: matcher_bench [--iters 50] [--classes 91] [--threads 0]
// --threads sets the ATen intra-op threads of the cost computation (0: the
// LibTorch default); the solver is single-threaded. Freed memory is kept for
// reuse (RetainFreedMemory), as in a training process, whose large tensors
// raise glibc's mmap threshold anyway: otherwise every megabyte-sized
// temporary of the cost is a fresh mmap and its page faults dominate.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include "bench/bench_util.h"
#include "train/linear_assignment.h"
#include "model/runtime.h"
#include "train/matcher.h"

namespace lpdetr {
namespace {

struct Options {
  int iters = 50;
  int64_t classes = 91;
  int threads = 0;
};

struct Shape {
  const char* name;
  int64_t queries;
  int64_t targets;  // distinct targets
  int64_t tile;     // repeats of the target list
};

std::string CpuName() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

double SolverMs(const Shape& s, int iters) {
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  const int64_t cols = s.targets * s.tile;
  std::vector<double> cost(s.queries * cols);
  for (double& c : cost) c = uniform(rng);
  return 1e3 * bench::MedianSeconds(
                   [&] { train::SolveLinearAssignment(cost.data(), s.queries, cols); }, 3,
                   iters);
}

// Outputs scattered at random (early training) or jittered around the
// targets (late training, close costs).
struct MatcherInputs {
  at::Tensor logits, boxes;
  TrainTarget target;
};

MatcherInputs MakeInputs(const Shape& s, int64_t classes, bool near) {
  at::manual_seed(2);
  MatcherInputs in;
  const at::Tensor labels = at::randint(0, classes, {s.targets}, at::kLong);
  const at::Tensor target_boxes = at::rand({s.targets, 4}) * 0.5 + 0.05;
  in.target = {labels.repeat({s.tile}), target_boxes.repeat({s.tile, 1})};
  in.logits = at::randn({s.queries, classes}) * 2 - 4;
  if (near) {
    const at::Tensor owner = at::randint(0, s.targets, {s.queries}, at::kLong);
    in.boxes = (target_boxes.index_select(0, owner) + 0.02 * at::randn({s.queries, 4}))
                   .clamp(0.01, 0.99);
  } else {
    in.boxes = at::rand({s.queries, 4}) * 0.5 + 0.05;
  }
  return in;
}

void BenchShape(const Shape& s, const Options& o) {
  const train::HungarianMatcher matcher;
  std::printf("%s (%ld queries x %ld targets%s)\n", s.name, static_cast<long>(s.queries),
              static_cast<long>(s.targets * s.tile),
              s.tile > 1 ? (", " + std::to_string(s.targets) + " tiled " +
                            std::to_string(s.tile) + "x").c_str()
                         : "");
  std::printf("  solver, uniform random costs        %8.3f ms\n", SolverMs(s, o.iters));
  for (bool near : {false, true}) {
    const MatcherInputs in = MakeInputs(s, o.classes, near);
    const double cost_ms = 1e3 * bench::MedianSeconds(
                                     [&] { matcher.Cost(in.logits, in.boxes, in.target); }, 3,
                                     o.iters);
    const double match_ms = 1e3 * bench::MedianSeconds(
                                      [&] { matcher.MatchImage(in.logits, in.boxes, in.target); },
                                      3, o.iters);
    std::printf("  matcher, %-6s boxes: cost %7.3f ms, cost + assignment %7.3f ms\n",
                near ? "near" : "random", cost_ms, match_ms);
  }
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--iters" && has_value) {
      o.iters = std::atoi(argv[++i]);
    } else if (arg == "--classes" && has_value) {
      o.classes = std::atoll(argv[++i]);
    } else if (arg == "--threads" && has_value) {
      o.threads = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--iters N] [--classes C] [--threads T]\n", argv[0]);
      return 2;
    }
  }
  RetainFreedMemory();
  if (o.threads > 0) at::set_num_threads(o.threads);
  std::printf("CPU: %s; ATen threads %d; %ld classes; median of %d runs\n", CpuName().c_str(),
              at::get_num_threads(), static_cast<long>(o.classes), o.iters);
  BenchShape({"one-to-one", 900, 50, 1}, o);
  BenchShape({"hybrid", 1500, 50, 6}, o);
  return 0;
}

}  // namespace
}  // namespace lpdetr

int main(int argc, char** argv) { return lpdetr::Main(argc, argv); }

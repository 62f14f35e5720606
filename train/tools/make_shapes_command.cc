// `lpdetr-train make-shapes`: writes the synthetic shapes dataset
// (train/shapes.h) as COCO instances: DIR/images/NNNNNN.{png,jpg} and
// DIR/annotations.json. The same flags give the same bytes on the same
// machine whatever --threads is. Progress goes to stderr (a live line on a
// terminal, a line every 10 s otherwise) and a summary line at the end.
// Exit codes: 0 done, 1 failed (e.g. a non-empty DIR), 2 usage error.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <set>
#include <stdexcept>
#include <string>

#include "train/tools/commands.h"
#include "train/tools/flags.h"
#ifdef LPDETR_HAVE_OPENCV
#include "train/shapes.h"
#endif

namespace lpdetr::train {
namespace {

constexpr const char* kMakeShapesUsage =
    "usage: lpdetr-train make-shapes --output DIR --images N --seed S\n"
    "       [--min-size 320] [--max-size 640] [--jpeg-prob 0.3] [--threads 0]\n"
    "\n"
    "Writes the synthetic shapes dataset (classes circle, rectangle, triangle,\n"
    "star, hexagon, cross = category ids 1..6) in COCO format:\n"
    "DIR/images/NNNNNN.png or .jpg (NNNNNN = image id, from 1) and\n"
    "DIR/annotations.json. Train on it with --train-annotations\n"
    "DIR/annotations.json --train-images DIR/images.\n"
    "\n"
    "  --output DIR     dataset folder (must not exist or be empty; required)\n"
    "  --images N       number of images (required, >= 1)\n"
    "  --seed S         random seed (required, >= 0); the same flags give the\n"
    "                   same bytes whatever --threads is\n"
    "  --min-size PX    smallest image side (default 320)\n"
    "  --max-size PX    largest image side (default 640); width and height are\n"
    "                   each uniform in [min, max]\n"
    "  --jpeg-prob P    fraction of images written as JPEG, quality 70..95 (default 0.3)\n"
    "  --threads T      worker threads (default 0 = all cores)\n"
    "  --help           this text\n"
    "\n"
    "Exit codes: 0 done, 1 failed, 2 usage error.\n";

const std::set<std::string> kFlags = {"output",   "images",    "seed",   "min-size",
                                      "max-size", "jpeg-prob", "threads"};

int IntFlag(const CommandFlags& flags, const std::string& name, int64_t fallback, int64_t lo,
            int64_t hi) {
  const int64_t v = flags.Int(name, fallback);
  if (v < lo || v > hi) {
    throw UsageError("--" + name + " must be in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got " + std::to_string(v));
  }
  return static_cast<int>(v);
}

int Run(int argc, char** argv) {
  const CommandFlags flags(argc, argv, kFlags);
  const std::string output = flags.Required("output");
  if (output.empty()) throw UsageError("--output needs a non-empty value");
  flags.Required("images");
  flags.Required("seed");
#ifndef LPDETR_HAVE_OPENCV
  throw std::runtime_error("make-shapes needs OpenCV, which this build was made without");
#else
  ShapesOptions options;
  options.num_images = flags.Int("images", 0);
  const int64_t seed = flags.Int("seed", 0);
  if (seed < 0) throw UsageError("--seed must be >= 0, got " + std::to_string(seed));
  options.seed = static_cast<uint64_t>(seed);
  options.min_size = IntFlag(flags, "min-size", options.min_size, 1, 1 << 20);
  options.max_size = IntFlag(flags, "max-size", options.max_size, 1, 1 << 20);
  options.jpeg_prob = flags.Double("jpeg-prob", options.jpeg_prob);
  options.threads = IntFlag(flags, "threads", 0, 0, 1024);
  try {
    ValidateShapesOptions(options);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }

  const bool tty = isatty(fileno(stderr)) != 0;
  const auto start = std::chrono::steady_clock::now();
  auto last_report = start;
  const auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  const auto on_progress = [&](int64_t done, int64_t total) {
    const double interval = tty ? 0.2 : 10.0;
    if (done != total && seconds_since(last_report) < interval) return;
    if (!tty && done == total) return;  // the summary line follows
    last_report = std::chrono::steady_clock::now();
    const double elapsed = seconds_since(start);
    std::fprintf(stderr, "%slpdetr-train make-shapes: %lld / %lld images, %.1f images/s%s",
                 tty ? "\r" : "", static_cast<long long>(done), static_cast<long long>(total),
                 elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0,
                 tty && done != total ? "" : "\n");
  };
  const ShapesDatasetSummary summary = WriteShapesDataset(output, options, on_progress);
  const double elapsed = seconds_since(start);
  std::fprintf(stderr,
               "lpdetr-train make-shapes: wrote %lld images (%lld JPEG) with %lld shapes "
               "(%lld placements given up) to %s in %.2f s (%.1f images/s)\n",
               static_cast<long long>(summary.images), static_cast<long long>(summary.jpeg_images),
               static_cast<long long>(summary.annotations),
               static_cast<long long>(summary.skipped_shapes), output.c_str(), elapsed,
               elapsed > 0 ? static_cast<double>(summary.images) / elapsed : 0.0);
  return 0;
#endif
}

}  // namespace

int RunMakeShapesCommand(int argc, char** argv) {
  return RunSubcommand("make-shapes", kMakeShapesUsage, argc, argv, Run);
}

}  // namespace lpdetr::train

// lpdetr-train: training, evaluation and training-step tools of LP-DETR.
//
//   lpdetr-train train --train-annotations A --train-images I (--model DIR | --config C) --output RUN_DIR
//   lpdetr-train resume RUN_DIR
//   lpdetr-train make-shapes --output DIR --images N --seed S
//   lpdetr-train eval --annotations GT.json --detections DT.json
//   lpdetr-train eval --model DIR --annotations GT.json --images IMAGE_DIR
//   lpdetr-train step-tensor --model DIR --input in.safetensors --output out.safetensors
//   lpdetr-train bench --config CONFIG.json --height H --width W --iters N
//
// Exit codes: 0 done, 1 failed, 2 usage, 3 stopped by SIGTERM after writing a
// resumable checkpoint.
#include <cstdio>
#include <cstring>
#include <string>

#include "model/cpu_caching_allocator.h"
#include "train/tools/commands.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int argc, char** argv);
};

constexpr Command kCommands[] = {
    {"train", "trains a model on a COCO dataset (official recipe), writes a run directory",
     lpdetr::train::RunTrainCommand},
    {"resume", "continues a training run from its latest checkpoint",
     lpdetr::train::RunResumeCommand},
    {"eval", "COCO bbox evaluation of a detections file or a model (pycocotools semantics)",
     lpdetr::train::RunEvalCommand},
    {"step-tensor", "one training forward + backward with the official loss, tensors out",
     lpdetr::train::RunStepTensorCommand},
    {"bench", "times training steps (forward, loss, backward, AdamW) with random weights",
     lpdetr::train::RunBenchCommand},
    {"make-shapes", "writes the synthetic shapes dataset (COCO format)",
     lpdetr::train::RunMakeShapesCommand},
};

void PrintUsage(FILE* out) {
  std::fprintf(out, "usage: lpdetr-train COMMAND [options]   (COMMAND --help for its options)\n\n");
  for (const Command& c : kCommands) std::fprintf(out, "  %-12s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    PrintUsage(stderr);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    PrintUsage(stdout);
    return 0;
  }
  // step-tensor runs with the parity fixtures' numerics by default; the math
  // libraries read their settings at load time, so set them (re-exec) first.
  if (name == "step-tensor") {
    lpdetr::ConfigureProcess(argv, lpdetr::train::StepTensorNumerics(argc - 1, argv + 1));
  }
  // eval --model runs inference over a dataset, like lpdetr-model detect.
  if (name == "eval") {
    lpdetr::ConfigureProcess(argv, lpdetr::Numerics::kFast);
    lpdetr::RetainFreedMemory();
  }
  // Training and its benchmark run the fastest kernels and keep freed memory
  // for reuse (the steps allocate the same large buffers again and again).
  if (name == "bench" || name == "train" || name == "resume") {
    lpdetr::ConfigureProcess(argv, lpdetr::Numerics::kFast);
    lpdetr::RetainFreedMemory();
    // Large tensors come back from a bounded cache instead of fresh pages
    // (model/cpu_caching_allocator.h): a third less CPU per R50 step.
    lpdetr::InstallCpuCachingAllocator();
  }
  for (const Command& c : kCommands) {
    if (name == c.name) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "lpdetr-train: unknown command '%s'\n\n", name.c_str());
  PrintUsage(stderr);
  return 2;
}

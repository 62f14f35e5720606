// Subcommands of lpdetr-train. Each takes the arguments after its name
// (argv[0] is the subcommand) and returns the process exit code:
// 0 done, 1 failed, 2 usage error, 3 stopped by SIGTERM after a checkpoint.
#pragma once

#include "model/runtime.h"

namespace lpdetr::train {

// eval --annotations GT.json --detections DT.json: COCO bbox evaluation;
// eval --model DIR --annotations GT.json --images DIR: of a model's detections.
int RunEvalCommand(int argc, char** argv);

// step-tensor --model DIR --input in.safetensors --output out.safetensors:
// one training forward + backward with the official loss.
int RunStepTensorCommand(int argc, char** argv);

// bench --config CONFIG.json --height H --width W --iters N: times training
// steps (forward, loss, backward, AdamW) of a random-weight model. main()
// configures the process for the fast numerics before it runs.
int RunBenchCommand(int argc, char** argv);

// train --train-annotations A --train-images I (--model DIR | --config C)
// --output RUN_DIR [options]: the training engine.
int RunTrainCommand(int argc, char** argv);

// resume RUN_DIR: continues a run from its latest checkpoint.
int RunResumeCommand(int argc, char** argv);

// make-shapes --output DIR --images N --seed S: the synthetic shapes dataset.
int RunMakeShapesCommand(int argc, char** argv);

// The numerics step-tensor runs with (--numerics, default reference), read
// from its arguments before any library work so that main() can configure the
// process (ConfigureProcess) for it. Never throws; a bad value is reported by
// RunStepTensorCommand.
Numerics StepTensorNumerics(int argc, char** argv);

}  // namespace lpdetr::train

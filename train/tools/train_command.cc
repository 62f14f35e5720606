// lpdetr-train train / resume: the training engine (train/trainer.h) on the
// command line. SIGTERM or SIGINT asks for a stop: the step in progress
// finishes, a resumable checkpoint is written and the process exits 3. A
// second Ctrl-C (SIGINT) kills it at once; repeated SIGTERMs do not (a
// supervisor's parent-death signal can arrive several times as its threads
// exit; the supervisor sends SIGKILL itself after its grace period). SIGPIPE
// is ignored: the progress reader going away (a crashed server) must not
// kill the run before its checkpoint.
#include <signal.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <set>
#include <string>
#include <thread>

#include "model/precision.h"
#include "train/tools/commands.h"
#include "train/tools/flags.h"
#include "train/trainer.h"

namespace lpdetr::train {
namespace {

constexpr const char* kTrainUsage = R"(usage: lpdetr-train train --train-annotations A.json --train-images DIR
       [--val-annotations V.json --val-images DIR] (--model BASE_DIR | --config CONFIG.json)
       --output RUN_DIR [options]

Trains LP-DETR with the official Relation-DETR recipe on a COCO dataset and
writes a run directory: model/ (servable), metrics.json, progress.jsonl,
loss_curve.png, alpha.png, best/ and checkpoints/ for `lpdetr-train resume`.
The datasets are checked first; every problem is reported and nothing is
written.

Data and model:
  --train-annotations  COCO instances JSON of the training set (required)
  --train-images       folder of its images (required)
  --val-annotations    COCO instances JSON of the validation set (optional)
  --val-images         folder of its images (with --val-annotations)
  --model              a model directory to fine-tune; when its classes differ
                       from the dataset's, the class heads and the denoising
                       label encoder are re-initialised (listed in the log)
  --config             a model configuration JSON to train from scratch
  --output             the run directory (must not exist or be empty; required)
Schedule:
  --epochs             epochs (default 12)
  --batch-size         images per batch (default 2)
  --accumulate-steps   batches per optimizer step (default 1)
  --max-steps          end the run after this many optimizer steps (default 0: no limit)
  --lr                 base learning rate (default 1e-4; the attention's linear
                       projections, and a fine-tuned backbone, train at lr x 0.1)
  --weight-decay       AdamW weight decay (default 1e-4)
  --lr-schedule        step (default: x --lr-gamma at each --lr-milestones epoch)
                       or cosine (half a cosine from lr to lr x --lr-final-factor
                       over the steps after the warm-up)
  --lr-milestones      epochs where lr is multiplied by --lr-gamma (default 10)
  --lr-gamma           (default 0.1)
  --lr-final-factor    cosine: the last step's factor of lr (default 0.01)
  --lr-warmup-steps    linear warm-up over the first N steps (default 0: none)
  --backbone-training  finetune: stem and layer1 frozen, batch norms frozen,
                       backbone at lr x 0.1 (the official recipe; default with
                       --model); full: every layer trained, batch norms on batch
                       statistics, backbone at lr (default with --config)
  --max-grad-norm      gradient clipping (default 0.1; 0 disables)
  --ema                1: keep an exponential moving average of the weights,
                       evaluated and exported instead of the raw weights (default 0)
  --ema-decay          (default 0.9999)  --ema-warmup-steps (default 2000)
Evaluation and checkpoints:
  --eval-every         evaluate every N steps (default 0: after every epoch)
  --best-metric        COCO stat that picks best/ (default AP; ties keep the earlier)
  --eval-batch-size    images per evaluation batch (default 1)
  --checkpoint-every   checkpoint every N steps (default 0: after every epoch)
  --keep-checkpoints   checkpoints kept (default 2; best/ is separate and kept)
  --export-dtype       storage of model/ and best/ weights: fp32 (default),
                       fp16 or bf16 (half the size; computed in fp32)
Augmentation (the official presets.detr):
  --augment            detr (default) or none (resize to the model's size only)
  --scales             shortest-side sizes, comma-separated (default: the
                       official 480..800 scaled to the model's min_size)
  --max-size           longest side after resizing (default: the model's max_size)
Process:
  --seed               order, augmentation and initialisation seed (default 42)
  --workers            loader threads (default 2)
  --prefetch           batches prepared ahead (default 4)
  --threads            intra-op threads (default: all cores)
  --parallel-batches   run N of a step's --accumulate-steps batches at once,
                       each on its own model replica with threads / N intra-op
                       threads (default 1; same mean gradient, faster for small
                       models on few cores)
  --precision          fp32 (default), bf16 or auto: bf16 autocast of the
                       convolutions and matrix products (fp32 master weights,
                       optimizer state, norms, heads and losses); needs a CPU
                       with AVX512-BF16 or AMX-BF16. auto: bf16 where the CPU
                       has it. The run records the choice (resume keeps it)
  --progress           auto (bar on a terminal, JSON lines otherwise), bar, json, quiet
  --log-every          a step event every N steps (default 1)
  --stop-after-steps   stop after N steps of this invocation with a resumable
                       checkpoint (exit 3)

Exit codes: 0 done, 1 failed, 2 usage, 3 stopped (SIGTERM or --stop-after-steps)
after writing a resumable checkpoint.
)";

constexpr const char* kResumeUsage = R"(usage: lpdetr-train resume RUN_DIR [--max-steps N] [--threads T]
       [--parallel-batches N] [--progress auto|bar|json|quiet] [--stop-after-steps N]

Continues the run in RUN_DIR from its latest checkpoint, exactly as if it had
not stopped (same order, augmentation, random state, optimizer and EMA state).
  --max-steps         new step limit of the run (default: the run's own)
  --threads, --parallel-batches, --progress, --stop-after-steps   as for train
Exit codes as for train.
)";

std::atomic<bool> g_stop_requested{false};

void OnStopSignal(int signal) {
  g_stop_requested.store(true);
  if (signal == SIGINT) std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C ends the process
}

void InstallStopHandlers() {
  struct sigaction action {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  std::signal(SIGPIPE, SIG_IGN);  // a write to a closed pipe fails with EPIPE instead
}

ProgressReporter::Mode ParseProgressMode(const std::string& mode) {
  if (mode == "auto") return ProgressReporter::Mode::kAuto;
  if (mode == "bar") return ProgressReporter::Mode::kBar;
  if (mode == "json") return ProgressReporter::Mode::kJson;
  if (mode == "quiet") return ProgressReporter::Mode::kQuiet;
  throw UsageError("--progress must be auto, bar, json or quiet, got '" + mode + "'");
}

// --precision fp32 (default), bf16 or auto, resolved for this CPU (the run
// records the result). bf16 on a CPU without native bf16 is a usage error.
std::string TrainingPrecision(const CommandFlags& flags) {
  PrecisionChoice choice;
  try {
    choice = ResolvePrecisionFlag(flags.Str("precision", "fp32"), c10::Device(c10::kCPU));
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  std::fprintf(stderr, "lpdetr-train: training precision %s: %s\n",
               PrecisionName(choice.precision), choice.reason.c_str());
  return PrecisionName(choice.precision);
}

RunOptions ParseRunOptions(const CommandFlags& flags) {
  RunOptions o;
  o.threads = static_cast<int>(flags.Int("threads", 0));
  if (o.threads < 0) throw UsageError("--threads must be >= 0");
  o.parallel_batches = static_cast<int>(flags.Int("parallel-batches", 1));
  if (o.parallel_batches < 1) throw UsageError("--parallel-batches must be >= 1");
  o.stop_after_steps = flags.Int("stop-after-steps", 0);
  if (o.stop_after_steps < 0) throw UsageError("--stop-after-steps must be >= 0");
  o.progress_mode = ParseProgressMode(flags.Str("progress", "auto"));
  o.stop_requested = &g_stop_requested;
  return o;
}

TrainConfig ParseTrainConfig(const CommandFlags& flags) {
  TrainConfig c;
  c.train_annotations = flags.Required("train-annotations");
  c.train_images = flags.Required("train-images");
  c.val_annotations = flags.Str("val-annotations", "");
  c.val_images = flags.Str("val-images", "");
  c.base_model = flags.Str("model", "");
  c.model_config = flags.Str("config", "");
  if (c.base_model.empty() == c.model_config.empty()) {
    throw UsageError("give exactly one of --model BASE_DIR or --config CONFIG.json");
  }
  if (c.val_annotations.empty() != c.val_images.empty()) {
    throw UsageError("--val-annotations and --val-images go together");
  }
  c.epochs = flags.Int("epochs", c.epochs);
  c.batch_size = flags.Int("batch-size", c.batch_size);
  c.accumulate_steps = flags.Int("accumulate-steps", c.accumulate_steps);
  c.max_steps = flags.Int("max-steps", c.max_steps);
  c.optimizer.lr = flags.Double("lr", c.optimizer.lr);
  c.optimizer.weight_decay = flags.Double("weight-decay", c.optimizer.weight_decay);
  c.optimizer.max_grad_norm = flags.Double("max-grad-norm", c.optimizer.max_grad_norm);
  c.schedule.kind = flags.Str("lr-schedule", c.schedule.kind);
  c.schedule.final_factor = flags.Double("lr-final-factor", c.schedule.final_factor);
  c.schedule.milestones = flags.IntList("lr-milestones", c.schedule.milestones);
  c.schedule.gamma = flags.Double("lr-gamma", c.schedule.gamma);
  c.schedule.warmup_steps = flags.Int("lr-warmup-steps", c.schedule.warmup_steps);
  c.backbone_training = flags.Str("backbone-training", "");
  c.export_dtype = flags.Str("export-dtype", c.export_dtype);
  c.ema = flags.Bool("ema", c.ema);
  c.ema_options.decay = flags.Double("ema-decay", c.ema_options.decay);
  c.ema_options.warmup_steps = flags.Double("ema-warmup-steps", c.ema_options.warmup_steps);
  c.eval_every = flags.Int("eval-every", c.eval_every);
  c.best_metric = flags.Str("best-metric", c.best_metric);
  c.eval_batch_size = flags.Int("eval-batch-size", c.eval_batch_size);
  c.checkpoint_every = flags.Int("checkpoint-every", c.checkpoint_every);
  c.keep_checkpoints = flags.Int("keep-checkpoints", c.keep_checkpoints);
  const std::string augment = flags.Str("augment", "detr");
  if (augment != "detr" && augment != "none") {
    throw UsageError("--augment must be detr or none, got '" + augment + "'");
  }
  c.augment = augment == "detr";
  // Scales left empty are derived from the model's min/max size at start.
  c.augment_options.scales = flags.IntList("scales", {});
  if (flags.Has("max-size")) {
    c.augment_options.max_size = flags.Int("max-size", 0);
    if (!flags.Has("scales")) throw UsageError("--max-size goes with --scales");
  }
  c.seed = static_cast<uint64_t>(flags.Int("seed", static_cast<int64_t>(c.seed)));
  c.workers = flags.Int("workers", c.workers);
  c.prefetch = flags.Int("prefetch", c.prefetch);
  c.log_every = flags.Int("log-every", c.log_every);
  c.precision = TrainingPrecision(flags);
  try {
    c.Validate();
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  return c;
}

int RunTrain(int argc, char** argv) {
  const CommandFlags flags(
      argc, argv,
      {"train-annotations", "train-images", "val-annotations", "val-images", "model", "config",
       "output", "epochs", "batch-size", "accumulate-steps", "max-steps", "lr", "weight-decay",
       "lr-schedule", "lr-milestones", "lr-gamma", "lr-final-factor", "lr-warmup-steps", "backbone-training", "export-dtype", "max-grad-norm", "ema", "ema-decay", "ema-warmup-steps",
       "eval-every", "best-metric", "eval-batch-size", "checkpoint-every", "keep-checkpoints",
       "augment", "scales", "max-size", "seed", "workers", "prefetch", "threads",
       "parallel-batches", "precision", "progress", "log-every", "stop-after-steps"});
  const TrainConfig config = ParseTrainConfig(flags);
  const std::string output = flags.Required("output");
  const RunOptions options = ParseRunOptions(flags);
  if (options.parallel_batches > config.accumulate_steps) {
    throw UsageError("--parallel-batches " + std::to_string(options.parallel_batches) +
                     " needs --accumulate-steps >= it (it runs a step's accumulated batches at "
                     "once), got " + std::to_string(config.accumulate_steps));
  }
  InstallStopHandlers();
  return static_cast<int>(StartTraining(config, output, options));
}

int RunResume(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]).rfind("--", 0) == 0) {
    throw UsageError("resume needs the run directory");
  }
  const std::string run_dir = argv[1];
  // The flags follow the run directory: parse them as if it were the name.
  const CommandFlags flags(argc - 1, argv + 1,
                           {"max-steps", "threads", "parallel-batches", "progress",
                            "stop-after-steps"});
  const int64_t max_steps = flags.Int("max-steps", 0);
  if (max_steps < 0) throw UsageError("--max-steps must be >= 0");
  const RunOptions options = ParseRunOptions(flags);
  InstallStopHandlers();
  return static_cast<int>(ResumeTraining(run_dir, options, max_steps));
}

}  // namespace

int RunTrainCommand(int argc, char** argv) {
  return RunSubcommand("train", kTrainUsage, argc, argv, RunTrain);
}

int RunResumeCommand(int argc, char** argv) {
  return RunSubcommand("resume", kResumeUsage, argc, argv, RunResume);
}

}  // namespace lpdetr::train

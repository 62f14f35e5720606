// `lpdetr-train eval`: COCO bbox evaluation with pycocotools' semantics
// (train/coco_eval.h), in two forms:
//   --annotations GT.json --detections DT.json
//       evaluates a detections file;
//   --model DIR --annotations GT.json --images IMAGE_DIR [...]
//       runs the model over the images listed in GT.json (train/evaluate.h)
//       and evaluates its detections.
// Both print the same JSON object on stdout: the 12 COCOeval stats (AP AP50
// AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl, -1 where pycocotools gives -1)
// and per_category_AP, every double with round-trip precision.
// Exit codes: 0 done, 1 unreadable or malformed input or a failed run, 2 usage
// error.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model_dir.h"
#include "model/precision.h"
#include "model/runtime.h"
#include "train/coco_eval.h"
#include "train/tools/commands.h"
#include "train/tools/flags.h"
#ifdef LPDETR_HAVE_OPENCV
#include "train/evaluate.h"
#endif

namespace lpdetr::train {
namespace {

constexpr const char* kEvalUsage =
    "usage: lpdetr-train eval --annotations GT.json --detections DT.json\n"
    "       lpdetr-train eval --model DIR --annotations GT.json --images IMAGE_DIR\n"
    "                         [--batch-size N] [--threads T] [--detections-out DT.json]\n"
    "                         [--max-images K] [--precision fp32|bf16|auto]\n"
    "\n"
    "COCO bbox evaluation with pycocotools' semantics (IoU .50:.05:.95, area\n"
    "ranges from the annotations' `area`, crowd regions, at most 1/10/100\n"
    "detections per image and category), of a detections file (first form) or\n"
    "of a model's detections on the images GT.json lists (second form).\n"
    "\n"
    "  --annotations GT.json   COCO instances: images, categories, annotations\n"
    "  --detections DT.json    COCO results: a list of {image_id, category_id,\n"
    "                          bbox [x, y, w, h], score}; may be empty\n"
    "  --model DIR             model directory (config.json, weights.safetensors);\n"
    "                          its detections use config.json's category_ids\n"
    "                          (label -> dataset category id) when present\n"
    "  --images IMAGE_DIR      folder of the images' file_name\n"
    "  --batch-size N          images per forward (default 1); the detections are\n"
    "                          the same up to float rounding\n"
    "  --threads T             LibTorch intra-op threads (default 0 = all cores)\n"
    "  --detections-out DT.json  also write the model's detections (COCO results)\n"
    "  --max-images K          only the first K images of GT.json (default 0 = all);\n"
    "                          only their ground truth counts\n"
    "  --precision P           fp32 (default), bf16 or auto: the model's compute\n"
    "                          precision (bf16: convolutions and matrix products\n"
    "                          in bfloat16; auto: bf16 where the CPU has AMX-BF16\n"
    "                          or AVX512-BF16)\n"
    "  --help                  this text\n"
    "\n"
    "Prints one JSON object: AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl\n"
    "(-1 where no ground truth counts) and per_category_AP {\"<category id>\": AP}.\n"
    "With --model, progress goes to stderr when it is a terminal and a summary\n"
    "line (images, seconds) always.\n"
    "Exit codes: 0 done, 1 unreadable or malformed input or a failed run, 2 usage\n"
    "error.\n";

const std::set<std::string> kDetectionsFormFlags = {"annotations", "detections"};
const std::set<std::string> kModelFormFlags = {
    "model",          "annotations", "images",   "batch-size",
    "threads",        "detections-out", "max-images", "precision"};

// Usage errors CommandFlags leaves to its callers: a flag given twice.
void CheckNoRepeatedFlags(int argc, char** argv) {
  std::set<std::string> seen;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) continue;
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      arg = arg.substr(0, eq);
    } else {
      ++i;  // its value
    }
    if (!seen.insert(arg).second) throw UsageError(arg + " given twice");
  }
}

std::string RequiredPath(const CommandFlags& flags, const std::string& name) {
  const std::string value = flags.Required(name);
  if (value.empty()) throw UsageError("--" + name + " needs a non-empty value");
  return value;
}

int PrintResult(const CocoEvalResult& result) {
  std::printf("%s\n", CocoEvalResultToJsonString(result, 2).c_str());
  return std::fflush(stdout) == 0 ? 0 : 1;
}

int EvaluateDetectionsFile(const CommandFlags& flags) {
  const CocoGroundTruth gt = LoadCocoGroundTruth(RequiredPath(flags, "annotations"));
  const std::vector<CocoDetection> dets = LoadCocoDetections(RequiredPath(flags, "detections"), gt);
  return PrintResult(EvaluateBbox(gt, dets));
}

#ifdef LPDETR_HAVE_OPENCV
// config.json's `category_ids` (label -> dataset category id), empty when the
// model has none.
std::vector<int64_t> ReadCategoryIds(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  nlohmann::json config;
  try {
    in >> config;
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
  std::vector<int64_t> ids;
  const auto it = config.find("category_ids");
  if (it == config.end() || it->is_null()) return ids;
  if (!it->is_array()) throw std::runtime_error(path + ": category_ids must be an array");
  for (const auto& v : *it) {
    if (!v.is_number_integer()) {
      throw std::runtime_error(path + ": category_ids must hold integers, got " + v.dump());
    }
    ids.push_back(v.get<int64_t>());
  }
  return ids;
}

void WriteDetections(const std::vector<CocoDetection>& dets, const std::string& path) {
  std::ofstream out(path);
  if (!out) throw std::runtime_error("cannot write " + path);
  out << "[";
  for (size_t i = 0; i < dets.size(); ++i) {
    out << (i == 0 ? "\n" : ",\n") << CocoDetectionToJson(dets[i]).dump();
  }
  out << "\n]\n";
  out.close();
  if (!out) throw std::runtime_error("cannot write " + path);
}
#endif

int EvaluateModel(const CommandFlags& flags) {
  const std::string model_dir = RequiredPath(flags, "model");
  const std::string annotations = RequiredPath(flags, "annotations");
  const std::string images = RequiredPath(flags, "images");
  const int64_t batch_size = flags.Int("batch-size", 1);
  const int64_t threads = flags.Int("threads", 0);
  const int64_t max_images = flags.Int("max-images", 0);
  const std::string detections_out = flags.Str("detections-out", "");
  if (batch_size < 1)
    throw UsageError("--batch-size must be >= 1, got " + std::to_string(batch_size));
  if (threads < 0) throw UsageError("--threads must be >= 0, got " + std::to_string(threads));
  if (max_images < 0)
    throw UsageError("--max-images must be >= 0, got " + std::to_string(max_images));
  if (flags.Has("detections-out") && detections_out.empty()) {
    throw UsageError("--detections-out needs a non-empty value");
  }
#ifndef LPDETR_HAVE_OPENCV
  throw std::runtime_error("eval --model needs OpenCV, which this build was made without");
#else
  PrecisionChoice precision;
  try {
    precision = ResolvePrecisionFlag(flags.Str("precision", "fp32"), c10::kCPU);
  } catch (const std::invalid_argument& e) {
    throw UsageError(e.what());
  }
  ApplyNumerics(Numerics::kFast, static_cast<int>(threads));
  SetComputePrecision(precision.precision);
  std::fprintf(stderr, "lpdetr-train eval: precision %s: %s\n",
               PrecisionName(precision.precision), precision.reason.c_str());
  LoadedModel loaded = LoadModelDir(model_dir);
  const std::vector<int64_t> category_ids = ReadCategoryIds(model_dir);

  EvaluateOptions options;
  options.batch_size = batch_size;
  options.max_images = max_images;
  const bool tty = isatty(fileno(stderr)) != 0;
  if (tty) {
    options.on_progress = [](int64_t done, int64_t total) {
      std::fprintf(stderr, "\rlpdetr-train eval: %lld / %lld images", static_cast<long long>(done),
                   static_cast<long long>(total));
      if (done == total) std::fputc('\n', stderr);
    };
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<CocoDetection> dets;
  const CocoEvalResult result = EvaluateOnDataset(loaded.model, loaded.config, category_ids,
                                                  annotations, images, options, &dets);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!detections_out.empty()) WriteDetections(dets, detections_out);
  std::set<int64_t> image_ids;
  for (const CocoDetection& d : dets) image_ids.insert(d.image_id);
  std::fprintf(stderr, "lpdetr-train eval: %zu detections on %zu images in %.2f s\n", dets.size(),
               image_ids.size(), seconds);
  return PrintResult(result);
#endif
}

int Run(int argc, char** argv) {
  CheckNoRepeatedFlags(argc, argv);
  // The model form is chosen by its own flags; anything else is the
  // detections form, whose errors name its flags.
  bool model_form = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    for (const char* flag : {"--model", "--images"}) {
      const std::string f = flag;
      if (arg == f || arg.rfind(f + "=", 0) == 0) model_form = true;
    }
  }
  if (model_form) {
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--detections" || arg.rfind("--detections=", 0) == 0) {
        throw UsageError(
            "--detections evaluates a detections file; with --model the "
            "detections come from the model (--detections-out writes them)");
      }
    }
    return EvaluateModel(CommandFlags(argc, argv, kModelFormFlags));
  }
  return EvaluateDetectionsFile(CommandFlags(argc, argv, kDetectionsFormFlags));
}

}  // namespace

int RunEvalCommand(int argc, char** argv) {
  return RunSubcommand("eval", kEvalUsage, argc, argv, Run);
}

}  // namespace lpdetr::train

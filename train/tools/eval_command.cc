// `lpdetr-train eval`: COCO bbox evaluation of a detections file against a
// COCO instances file, with pycocotools' semantics (train/coco_eval.h).
// Prints one JSON object on stdout: the 12 COCOeval stats (AP AP50 AP75 APs
// APm APl AR1 AR10 AR100 ARs ARm ARl, -1 where pycocotools gives -1) and
// per_category_AP, every double with round-trip precision.
// Exit codes: 0 done, 1 unreadable or malformed input, 2 usage error.
#include <cstdio>
#include <cstring>
#include <exception>
#include <map>
#include <string>

#include "train/coco_eval.h"
#include "train/tools/commands.h"

namespace lpdetr::train {
namespace {

constexpr const char* kEvalUsage =
    "usage: lpdetr-train eval --annotations GT.json --detections DT.json\n"
    "\n"
    "COCO bbox evaluation with pycocotools' semantics (IoU .50:.05:.95, area\n"
    "ranges from the annotations' `area`, crowd regions, at most 1/10/100\n"
    "detections per image and category).\n"
    "\n"
    "  --annotations GT.json   COCO instances: images, categories, annotations\n"
    "  --detections DT.json    COCO results: a list of {image_id, category_id,\n"
    "                          bbox [x, y, w, h], score}; may be empty\n"
    "  --help                  this text\n"
    "\n"
    "Prints one JSON object: AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl\n"
    "(-1 where no ground truth counts) and per_category_AP {\"<category id>\": AP}.\n"
    "Exit codes: 0 done, 1 unreadable or malformed input, 2 usage error.\n";

int UsageError(const std::string& message) {
  std::fprintf(stderr, "lpdetr-train eval: %s\n\n%s", message.c_str(), kEvalUsage);
  return 2;
}

}  // namespace

int RunEvalCommand(int argc, char** argv) {
  std::map<std::string, std::string> values = {{"--annotations", ""}, {"--detections", ""}};
  std::map<std::string, bool> seen;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kEvalUsage, stdout);
      return 0;
    }
    std::string value;
    bool has_value = false;
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    auto it = values.find(arg);
    if (it == values.end()) {
      return UsageError(arg.rfind("--", 0) == 0 ? "unknown option '" + arg + "'"
                                                : "unexpected argument '" + arg + "'");
    }
    if (!has_value) {
      if (i + 1 >= argc) return UsageError(arg + " needs a value");
      value = argv[++i];
    }
    if (value.empty()) return UsageError(arg + " needs a non-empty value");
    if (seen[arg]) return UsageError(arg + " given twice");
    seen[arg] = true;
    it->second = value;
  }
  for (const auto& [flag, value] : values) {
    if (value.empty()) return UsageError("missing " + flag);
  }

  try {
    const CocoGroundTruth gt = LoadCocoGroundTruth(values["--annotations"]);
    const std::vector<CocoDetection> dets = LoadCocoDetections(values["--detections"], gt);
    const CocoEvalResult result = EvaluateBbox(gt, dets);
    std::printf("%s\n", CocoEvalResultToJsonString(result, 2).c_str());
    return std::fflush(stdout) == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lpdetr-train eval: %s\n", e.what());
    return 1;
  }
}

}  // namespace lpdetr::train

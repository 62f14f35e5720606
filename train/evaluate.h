// Runs a model over a COCO dataset (an instances JSON + its image folder) and
// evaluates its detections with COCO bbox semantics (train/coco_eval.h). The
// training loop calls EvaluateOnDataset after each epoch; `lpdetr-train eval
// --model DIR --annotations GT.json --images DIR` is the same code.
//
// The inference pipeline is the one of `lpdetr-model detect` and the server:
// OpenCV decodes each image as RGB, PreprocessImage resizes it with the
// config's min_size / max_size, BatchImages pads a batch (with per-image
// extents, so an image gets the same detections whatever it is batched with),
// the model runs in eval mode under at::NoGradGuard, and PostProcess keeps the
// config's num_select detections with boxes in the original image's pixels,
// clipped to the image as the server clips them.
//
// Images are the ground truth's `images` entries (`id`, `file_name`, and, if
// given, `width` / `height`, which must equal the decoded size: boxes are
// compared in that frame), in file order. Every listed file is checked to
// exist before the model runs; a missing, undecodable or wrongly sized image
// is a std::runtime_error naming the file.
//
// Knobs: EvaluateOptions (batch size, the first K images only, a progress
// callback). Threading: one call at a time per model (the model's mode is
// switched for the call); LibTorch's intra-op threads do the work. The model
// runs on the device of its parameters; preprocessing runs on the CPU.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/nn/module.h>

#include "model/config.h"
#include "model/detector.h"
#include "train/coco_eval.h"

namespace lpdetr::train {

struct EvaluateOptions {
  // Images per forward (>= 1).
  int64_t batch_size = 1;
  // Only the first max_images entries of `images` (0 = all); the evaluation
  // then counts only those images' ground truth.
  int64_t max_images = 0;
  // Called after each batch with the images done so far and the total.
  std::function<void(int64_t done, int64_t total)> on_progress;
};

// Puts a module and all its submodules in eval mode for its lifetime and
// restores each one's previous training flag afterwards (also when the scope
// is left by an exception), so a training loop's per-module modes survive.
class ScopedEvalMode {
 public:
  explicit ScopedEvalMode(torch::nn::Module& module);
  ~ScopedEvalMode();
  ScopedEvalMode(const ScopedEvalMode&) = delete;
  ScopedEvalMode& operator=(const ScopedEvalMode&) = delete;

 private:
  // Pre-order (a parent before its children), the order restoring needs.
  std::vector<std::pair<std::shared_ptr<torch::nn::Module>, bool>> modes_;
  torch::nn::Module* root_;
  bool root_training_;
};

// The model's detections on every image listed in `annotations_path` (or the
// first options.max_images), as COCO results: {image_id, category_id, bbox
// [x, y, w, h] in original pixels, score}, num_select per image in decreasing
// score. category_id is category_ids[label] when `category_ids` is non-empty
// (it must then have config.num_classes entries), else the label.
std::vector<CocoDetection> RunOnDataset(LpDetr& model, const ModelConfig& config,
                                        const std::vector<int64_t>& category_ids,
                                        const std::string& annotations_path,
                                        const std::string& image_dir,
                                        const EvaluateOptions& options);

// RunOnDataset's detections as a COCO results JSON array.
nlohmann::json DetectOnDataset(LpDetr& model, const ModelConfig& config,
                               const std::vector<int64_t>& category_ids,
                               const std::string& annotations_path, const std::string& image_dir,
                               const EvaluateOptions& options);

// COCO bbox evaluation of the model's detections against the annotations
// (restricted to the evaluated images when options.max_images is set). When
// `detections` is given it receives the detections that were evaluated.
CocoEvalResult EvaluateOnDataset(LpDetr& model, const ModelConfig& config,
                                 const std::vector<int64_t>& category_ids,
                                 const std::string& annotations_path, const std::string& image_dir,
                                 const EvaluateOptions& options,
                                 std::vector<CocoDetection>* detections = nullptr);

// One COCO results entry / the whole array.
nlohmann::json CocoDetectionToJson(const CocoDetection& detection);
nlohmann::json CocoDetectionsToJson(const std::vector<CocoDetection>& detections);

}  // namespace lpdetr::train

// ModelRunner: one loaded LP-DETR model directory behind the service. Turns
// decoded RGB images into model inputs (on the calling gRPC thread) and runs
// one padded batch through the detector (on a batcher worker), returning every
// image's post-processed detections in the pixels of the original image.
// Thread-safe: several workers may call Run concurrently (inference mode,
// the module is never mutated after loading).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <opencv2/core/mat.hpp>

#include "absl/status/statusor.h"

namespace lpdetr::server {

// What ModelService reports about a model.
struct ModelDescription {
  std::string name, version, variant, backbone, device, dir;
  std::vector<std::string> classes;  // index = label id; always num_classes long
  // Dataset category id of each label id (config.json `category_ids`); empty
  // when the model carries no map (the label ids are the category ids).
  std::vector<int64_t> category_ids;
  int num_classes = 0, min_size = 0, max_size = 0, num_queries = 0, num_select = 0;
  int decoder_layers = 0, relation_heads = 0;
  std::vector<std::array<float, 3>> scale_alpha;  // per decoder layer (lp-detr)
};

struct RawDetection {
  float x_min, y_min, x_max, y_max;  // original-image pixels
  float score;
  int label;
};

// A decoded image ready for batching.
struct PreparedImage {
  at::Tensor input;   // [3,h,w] float, normalized (on CPU)
  int64_t height = 0, width = 0;  // original size
  int64_t bucket = 0;  // padded (h, w) as one key, for size bucketing
};

class ModelRunner {
 public:
  // device: "cpu" or "cuda".
  static absl::StatusOr<std::unique_ptr<ModelRunner>> Create(const std::string& model_dir,
                                                             const std::string& device);
  ~ModelRunner();

  const ModelDescription& description() const { return description_; }
  // Serves under this name and version instead of those in its config.json
  // (a registry version); an empty value keeps the config's. Call before
  // the runner is shared.
  void SetIdentity(const std::string& name, const std::string& version);

  // One batch of a uniform gray image at the model's input size: loads the
  // kernels and caches before the first request does.
  absl::Status WarmUp();

  // rgb: CV_8UC3 RGB. Resize + normalize per the model's min/max size.
  PreparedImage Prepare(const cv::Mat& rgb) const;

  // Detections of each image (all num_select, best first).
  absl::StatusOr<std::vector<std::vector<RawDetection>>> Run(
      const std::vector<const PreparedImage*>& images);

 private:
  ModelRunner() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  ModelDescription description_;
};

}  // namespace lpdetr::server

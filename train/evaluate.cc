#include "train/evaluate.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <unordered_set>

#include <ATen/ATen.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "model/preprocess.h"

namespace lpdetr::train {
namespace {

using nlohmann::json;

constexpr size_t kMaxListedMissing = 20;

// One `images` entry to run the model on; width / height are -1 when the
// entry does not give them.
struct EvalImage {
  int64_t id = 0;
  std::string path;
  int64_t width = -1;
  int64_t height = -1;
};

json ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open '" + path + "': " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw std::runtime_error("cannot read '" + path + "'");
  try {
    return json::parse(text.str());
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(path + ": not valid JSON: " + e.what());
  }
}

// An integer JSON number (integral floats included), else invalid_argument.
int64_t IntegerField(const json& entry, const char* key, const std::string& where) {
  const auto it = entry.find(key);
  if (it == entry.end()) throw std::invalid_argument(where + " has no '" + key + "'");
  const json& v = *it;
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() &&
        v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      throw std::invalid_argument(where + ": '" + key + "' is out of range: " + v.dump());
    }
    return v.get<int64_t>();
  }
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) {
      return static_cast<int64_t>(d);
    }
  }
  throw std::invalid_argument(where + ": '" + key + "' must be an integer, got " + v.dump());
}

// The first `max_images` (0 = all) entries of the ground truth's `images`.
std::vector<EvalImage> ListImages(const json& gt, const std::string& source,
                                  const std::string& image_dir, int64_t max_images) {
  if (!gt.is_object()) throw std::invalid_argument(source + ": the ground truth must be an object");
  const auto images = gt.find("images");
  if (images == gt.end() || !images->is_array()) {
    throw std::invalid_argument(source + ": 'images' must be an array");
  }
  size_t count = images->size();
  if (max_images > 0) count = std::min(count, static_cast<size_t>(max_images));
  std::vector<EvalImage> out;
  out.reserve(count);
  std::unordered_set<int64_t> seen;
  for (size_t n = 0; n < count; ++n) {
    const json& entry = (*images)[n];
    const std::string where = source + ": images[" + std::to_string(n) + "]";
    if (!entry.is_object()) throw std::invalid_argument(where + " must be an object");
    EvalImage im;
    im.id = IntegerField(entry, "id", where);
    if (!seen.insert(im.id).second) {
      throw std::invalid_argument(where + ": image id " + std::to_string(im.id) +
                                  " is listed twice");
    }
    const auto file = entry.find("file_name");
    if (file == entry.end() || !file->is_string() || file->get<std::string>().empty()) {
      throw std::invalid_argument(where + ": 'file_name' must be a non-empty string");
    }
    im.path = (std::filesystem::path(image_dir) / file->get<std::string>()).string();
    if (entry.contains("width") && entry.contains("height")) {
      im.width = IntegerField(entry, "width", where);
      im.height = IntegerField(entry, "height", where);
    }
    out.push_back(std::move(im));
  }
  return out;
}

// Throws one error listing the image files that do not exist.
void CheckImagesExist(const std::vector<EvalImage>& images, const std::string& source) {
  std::vector<std::string> missing;
  for (const EvalImage& im : images) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(im.path, ec)) {
      missing.push_back(im.path + " (image id " + std::to_string(im.id) + ")");
    }
  }
  if (missing.empty()) return;
  std::string message = source + ": " + std::to_string(missing.size()) + " of " +
                        std::to_string(images.size()) + " image files are missing:";
  for (size_t i = 0; i < missing.size() && i < kMaxListedMissing; ++i) {
    message += "\n  " + missing[i];
  }
  if (missing.size() > kMaxListedMissing) {
    message += "\n  ... and " + std::to_string(missing.size() - kMaxListedMissing) + " more";
  }
  throw std::runtime_error(message);
}

// The decoded image as 8-bit RGB [H,W,3] (a tensor owning its pixels), in
// its stored pixel frame: an EXIF orientation is not applied, because COCO
// sizes and boxes refer to the stored pixels (as in training).
at::Tensor LoadRgb(const EvalImage& im, const std::string& source) {
  const cv::Mat bgr = cv::imread(im.path, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  if (bgr.empty()) {
    throw std::runtime_error("cannot decode image " + im.path + " (image id " +
                             std::to_string(im.id) + " of " + source + ")");
  }
  if (im.width >= 0 && (bgr.cols != im.width || bgr.rows != im.height)) {
    throw std::runtime_error("image " + im.path + " is " + std::to_string(bgr.cols) + "x" +
                             std::to_string(bgr.rows) + " (width x height) but " + source +
                             " says " + std::to_string(im.width) + "x" + std::to_string(im.height) +
                             " (image id " + std::to_string(im.id) + ")");
  }
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return at::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, at::kByte).clone();
}

c10::Device ModelDevice(const torch::nn::Module& model) {
  for (const auto& p : model.parameters()) return p.device();
  return c10::kCPU;
}

// Appends one image's post-processed detections, boxes clipped to the image
// and turned into [x, y, w, h].
void AppendDetections(const Detections& dets, int64_t image_id, int64_t height, int64_t width,
                      const std::vector<int64_t>& category_ids, std::vector<CocoDetection>* out) {
  const at::Tensor scores = dets.scores.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor labels = dets.labels.to(at::kCPU, at::kLong).contiguous();
  const at::Tensor boxes = dets.boxes.to(at::kCPU, at::kDouble).contiguous();
  const double* s = scores.data_ptr<double>();
  const int64_t* l = labels.data_ptr<int64_t>();
  const double* b = boxes.data_ptr<double>();
  const double w = static_cast<double>(width), h = static_cast<double>(height);
  auto clip = [](double v, double hi) { return std::min(std::max(v, 0.0), hi); };
  for (int64_t k = 0; k < scores.size(0); ++k) {
    CocoDetection d;
    d.image_id = image_id;
    if (category_ids.empty()) {
      d.category_id = l[k];
    } else {
      TORCH_CHECK(l[k] >= 0 && l[k] < static_cast<int64_t>(category_ids.size()), "label ", l[k],
                  " has no category id (", category_ids.size(), " given)");
      d.category_id = category_ids[l[k]];
    }
    const double x1 = clip(b[4 * k], w), y1 = clip(b[4 * k + 1], h);
    const double x2 = clip(b[4 * k + 2], w), y2 = clip(b[4 * k + 3], h);
    d.bbox = {x1, y1, std::max(x2 - x1, 0.0), std::max(y2 - y1, 0.0)};
    d.score = s[k];
    out->push_back(d);
  }
}

std::vector<CocoDetection> RunOnImages(LpDetr& model, const ModelConfig& config,
                                       const std::vector<int64_t>& category_ids,
                                       const std::vector<EvalImage>& images,
                                       const std::string& source, const EvaluateOptions& options) {
  if (options.batch_size < 1) {
    throw std::invalid_argument("batch size must be >= 1, got " +
                                std::to_string(options.batch_size));
  }
  if (options.max_images < 0) {
    throw std::invalid_argument("max_images must be >= 0, got " +
                                std::to_string(options.max_images));
  }
  if (!category_ids.empty() && static_cast<int64_t>(category_ids.size()) != config.num_classes) {
    throw std::invalid_argument("the category map has " + std::to_string(category_ids.size()) +
                                " ids but the model has " + std::to_string(config.num_classes) +
                                " classes");
  }
  CheckImagesExist(images, source);

  ScopedEvalMode eval_mode(*model);
  at::NoGradGuard no_grad;
  const c10::Device device = ModelDevice(*model);
  const int64_t total = static_cast<int64_t>(images.size());
  std::vector<CocoDetection> out;
  out.reserve(static_cast<size_t>(total * config.num_select));
  for (int64_t start = 0; start < total; start += options.batch_size) {
    const int64_t end = std::min(total, start + options.batch_size);
    std::vector<at::Tensor> inputs;
    std::vector<int64_t> sizes;
    for (int64_t i = start; i < end; ++i) {
      const at::Tensor rgb = LoadRgb(images[i], source);
      sizes.push_back(rgb.size(0));
      sizes.push_back(rgb.size(1));
      inputs.push_back(PreprocessImage(rgb, config.min_size, config.max_size));
    }
    ImageBatch batch = BatchImages(inputs);
    batch.images = batch.images.to(device);
    batch.mask = batch.mask.to(device);
    const DetectorOutput result = model->forward(batch);
    const at::Tensor image_sizes = at::tensor(sizes, at::kLong).view({end - start, 2});
    const std::vector<Detections> dets = LpDetrImpl::PostProcess(
        result.pred_logits, result.pred_boxes, image_sizes.to(device), config.num_select,
        config.nms_iou);
    for (int64_t i = start; i < end; ++i) {
      AppendDetections(dets[i - start], images[i].id, sizes[2 * (i - start)],
                       sizes[2 * (i - start) + 1], category_ids, &out);
    }
    if (options.on_progress) options.on_progress(end, total);
  }
  return out;
}

}  // namespace

ScopedEvalMode::ScopedEvalMode(torch::nn::Module& module)
    : root_(&module), root_training_(module.is_training()) {
  for (auto& child : module.modules(/*include_self=*/false)) {
    modes_.emplace_back(child, child->is_training());
  }
  module.eval();
}

ScopedEvalMode::~ScopedEvalMode() {
  // train() recurses, so the root goes first and each child (in pre-order)
  // then gets its own flag back.
  root_->train(root_training_);
  for (auto& [child, training] : modes_) child->train(training);
}

std::vector<CocoDetection> RunOnDataset(LpDetr& model, const ModelConfig& config,
                                        const std::vector<int64_t>& category_ids,
                                        const std::string& annotations_path,
                                        const std::string& image_dir,
                                        const EvaluateOptions& options) {
  const json gt = ReadJsonFile(annotations_path);
  const std::vector<EvalImage> images =
      ListImages(gt, annotations_path, image_dir, options.max_images);
  return RunOnImages(model, config, category_ids, images, annotations_path, options);
}

nlohmann::json DetectOnDataset(LpDetr& model, const ModelConfig& config,
                               const std::vector<int64_t>& category_ids,
                               const std::string& annotations_path, const std::string& image_dir,
                               const EvaluateOptions& options) {
  return CocoDetectionsToJson(
      RunOnDataset(model, config, category_ids, annotations_path, image_dir, options));
}

CocoEvalResult EvaluateOnDataset(LpDetr& model, const ModelConfig& config,
                                 const std::vector<int64_t>& category_ids,
                                 const std::string& annotations_path, const std::string& image_dir,
                                 const EvaluateOptions& options,
                                 std::vector<CocoDetection>* detections) {
  const json root = ReadJsonFile(annotations_path);
  // The whole ground truth is checked before the model runs.
  CocoGroundTruth gt = CocoGroundTruthFromJson(root, annotations_path);
  const std::vector<EvalImage> images =
      ListImages(root, annotations_path, image_dir, options.max_images);
  if (options.max_images > 0) {
    // Annotations on images outside the list are not evaluated.
    std::vector<int64_t> ids;
    ids.reserve(images.size());
    for (const EvalImage& im : images) ids.push_back(im.id);
    gt = CocoGroundTruth(std::move(ids), gt.category_ids(), gt.annotations());
  }
  std::vector<CocoDetection> dets =
      RunOnImages(model, config, category_ids, images, annotations_path, options);
  CocoEvalResult result = EvaluateBbox(gt, dets);
  if (detections != nullptr) *detections = std::move(dets);
  return result;
}

nlohmann::json CocoDetectionToJson(const CocoDetection& d) {
  return {{"image_id", d.image_id},
          {"category_id", d.category_id},
          {"bbox", {d.bbox[0], d.bbox[1], d.bbox[2], d.bbox[3]}},
          {"score", d.score}};
}

nlohmann::json CocoDetectionsToJson(const std::vector<CocoDetection>& detections) {
  json out = json::array();
  for (const CocoDetection& d : detections) out.push_back(CocoDetectionToJson(d));
  return out;
}

}  // namespace lpdetr::train

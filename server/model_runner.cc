#include "server/model_runner.h"

#include <algorithm>
#include <exception>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <opencv2/core.hpp>
#include <torch/cuda.h>

#include "absl/strings/str_cat.h"
#include "model/detector.h"
#include "model/model_dir.h"
#include "model/preprocess.h"

namespace lpdetr::server {

struct ModelRunner::Impl {
  LoadedModel loaded;
  c10::Device device{c10::kCPU};
};

ModelRunner::~ModelRunner() = default;

absl::StatusOr<std::unique_ptr<ModelRunner>> ModelRunner::Create(const std::string& model_dir,
                                                                 const std::string& device) {
  std::unique_ptr<ModelRunner> runner(new ModelRunner());
  runner->impl_ = std::make_unique<Impl>();
  if (device == "cuda") {
    if (!torch::cuda::is_available()) {
      return absl::FailedPreconditionError("--device cuda: no CUDA device is available");
    }
    runner->impl_->device = c10::Device(c10::kCUDA, 0);
  } else if (device != "cpu") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device must be cpu or cuda, got '", device, "'"));
  }
  try {
    runner->impl_->loaded = LoadModelDir(model_dir, runner->impl_->device);
  } catch (const std::exception& e) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot load model directory '", model_dir, "': ", e.what()));
  }
  const ModelConfig& c = runner->impl_->loaded.config;
  ModelDescription& d = runner->description_;
  d.name = c.name;
  d.version = c.version;
  d.variant = RelationVariantName(c.relation_variant);
  d.backbone = c.backbone;
  d.device = device;
  d.dir = model_dir;
  for (int i = 0; i < c.num_classes; ++i) d.classes.push_back(c.ClassName(i));
  d.category_ids = c.category_ids;
  d.num_classes = c.num_classes;
  d.min_size = c.min_size;
  d.max_size = c.max_size;
  d.num_queries = c.num_queries;
  d.num_select = c.num_select;
  d.decoder_layers = c.dec_layers;
  d.relation_heads = c.relation_heads;
  {
    c10::InferenceMode guard;
    at::Tensor alpha = runner->impl_->loaded.model->ScaleAlpha();
    if (alpha.defined()) {
      alpha = alpha.to(at::kCPU, at::kFloat).contiguous();
      for (int64_t l = 0; l < alpha.size(0); ++l) {
        const float* a = alpha[l].data_ptr<float>();
        d.scale_alpha.push_back({a[0], a[1], a[2]});
      }
    }
  }
  return runner;
}

void ModelRunner::SetIdentity(const std::string& name, const std::string& version) {
  if (!name.empty()) description_.name = name;
  if (!version.empty()) description_.version = version;
}

absl::Status ModelRunner::WarmUp() {
  const int side = std::max(description_.min_size, 32);
  cv::Mat gray(side, side, CV_8UC3, cv::Scalar(128, 128, 128));
  PreparedImage image = Prepare(gray);
  absl::StatusOr<std::vector<std::vector<RawDetection>>> out = Run({&image});
  if (!out.ok()) return out.status();
  return absl::OkStatus();
}

PreparedImage ModelRunner::Prepare(const cv::Mat& rgb) const {
  c10::InferenceMode guard;
  const ModelConfig& c = impl_->loaded.config;
  at::Tensor pixels = at::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, at::kByte);
  PreparedImage out;
  out.input = PreprocessImage(pixels, c.min_size, c.max_size);
  out.height = rgb.rows;
  out.width = rgb.cols;
  const int64_t h = (out.input.size(1) + kSizeDivisible - 1) / kSizeDivisible;
  const int64_t w = (out.input.size(2) + kSizeDivisible - 1) / kSizeDivisible;
  out.bucket = h * 100000 + w;
  return out;
}

absl::StatusOr<std::vector<std::vector<RawDetection>>> ModelRunner::Run(
    const std::vector<const PreparedImage*>& images) {
  try {
    c10::InferenceMode guard;
    std::vector<at::Tensor> inputs;
    std::vector<int64_t> sizes;
    for (const PreparedImage* im : images) {
      inputs.push_back(im->input);
      sizes.push_back(im->height);
      sizes.push_back(im->width);
    }
    ImageBatch batch = BatchImages(inputs);
    batch.images = batch.images.to(impl_->device);
    batch.mask = batch.mask.to(impl_->device);
    DetectorOutput out = impl_->loaded.model(batch);
    const at::Tensor image_sizes =
        at::tensor(sizes, at::kLong).view({static_cast<int64_t>(images.size()), 2});
    std::vector<Detections> dets = LpDetrImpl::PostProcess(
        out.pred_logits, out.pred_boxes, image_sizes.to(impl_->device),
        impl_->loaded.config.num_select, impl_->loaded.config.nms_iou);
    std::vector<std::vector<RawDetection>> result(images.size());
    for (size_t i = 0; i < images.size(); ++i) {
      const at::Tensor scores = dets[i].scores.to(at::kCPU, at::kFloat).contiguous();
      const at::Tensor labels = dets[i].labels.to(at::kCPU, at::kLong).contiguous();
      const at::Tensor boxes = dets[i].boxes.to(at::kCPU, at::kFloat).contiguous();
      const float* s = scores.data_ptr<float>();
      const int64_t* l = labels.data_ptr<int64_t>();
      const float* b = boxes.data_ptr<float>();
      const float w = static_cast<float>(images[i]->width);
      const float h = static_cast<float>(images[i]->height);
      auto clip = [](float v, float hi) { return v < 0.f ? 0.f : (v > hi ? hi : v); };
      for (int64_t k = 0; k < scores.size(0); ++k) {
        result[i].push_back({clip(b[4 * k], w), clip(b[4 * k + 1], h), clip(b[4 * k + 2], w),
                             clip(b[4 * k + 3], h), s[k], static_cast<int>(l[k])});
      }
    }
    return result;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("inference failed: ", e.what()));
  }
}

}  // namespace lpdetr::server

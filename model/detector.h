// The complete detector: ResNet backbone -> ChannelMapper neck -> sine
// position embedding -> RelationTransformer, plus the training-time
// contrastive denoising generator and the post-processing (top-k over
// queries x classes, cxcywh -> xyxy in image pixels).
//
// Batching: images of different sizes share one padded tensor. With
// ImageBatch::extents empty every image spans the whole padded batch, which is
// exactly the official semantics (parity with the reference implementation).
// With extents given (each image's own size rounded up to 32, what the image
// would have if it were batched alone), the backbone and neck run per group of
// equal extents and padding added by batching is never selected as a query,
// so an image gets the same detections whatever it is batched with.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <ATen/core/Generator.h>
#include <c10/util/Optional.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>

#include "model/config.h"
#include "model/layers.h"
#include "model/transformer.h"

namespace lpdetr {

struct ImageBatch {
  at::Tensor images;  // [B,3,H,W] float, normalized, zero padded
  at::Tensor mask;    // [B,H,W] bool, true = padding
  std::vector<std::array<int64_t, 2>> extents;  // optional per-image (h, w), see above
};

// Ground truth of one image for training: labels [n] int64, boxes [n,4]
// normalized cxcywh.
struct TrainTarget {
  at::Tensor labels;
  at::Tensor boxes;
};

struct DetectorOutput {
  at::Tensor pred_logits, pred_boxes;    // last layer [B,Q,C], [B,Q,4]
  at::Tensor layer_logits, layer_boxes;  // [L,B,Q,C], [L,B,Q,4]
  at::Tensor enc_logits, enc_boxes;      // encoder top-k [B,Q,C], [B,Q,4]
  // Training only: denoising outputs [L,B,Ndn,...] with Ndn = dn_groups * dn_group_size.
  at::Tensor dn_layer_logits, dn_layer_boxes;
  int64_t dn_groups = 0, dn_group_size = 0;
  // Training only: hybrid branch.
  at::Tensor hybrid_layer_logits, hybrid_layer_boxes, hybrid_enc_logits, hybrid_enc_boxes;
};

// Post-processed detections of one image, sorted by decreasing score.
struct Detections {
  at::Tensor scores;  // [K] float
  at::Tensor labels;  // [K] int64
  at::Tensor boxes;   // [K,4] xyxy in the pixels of the given image size
};

// Contrastive denoising queries (official GenerateCDNQueries): label_encoder
// is the only parameter.
class DenoisingGeneratorImpl : public torch::nn::Module {
 public:
  DenoisingGeneratorImpl(int64_t num_queries, int64_t num_classes, int64_t embed_dim,
                         int64_t denoising_nums, double label_noise_prob = 0.5,
                         double box_noise_scale = 1.0);
  struct Result {
    at::Tensor label_query;  // [B, Ndn, E]
    at::Tensor box_query;    // [B, Ndn, 4] logit space
    at::Tensor attn_mask;    // [Ndn + Q, Ndn + Q] bool, true = blocked
    int64_t groups = 0;
    int64_t group_size = 0;  // 2 * max ground truths per image
  };
  Result forward(const std::vector<TrainTarget>& targets);

  // The generator the noise is drawn from; none (the default): LibTorch's
  // default generator. A trainer running replicas of the model on several
  // threads gives each its own, so that the draws do not depend on the
  // threads' timing.
  void set_generator(c10::optional<at::Generator> generator) { generator_ = std::move(generator); }

  torch::nn::Embedding label_encoder{nullptr};

 private:
  int64_t num_queries_, num_classes_, embed_dim_, denoising_nums_;
  double label_noise_prob_, box_noise_scale_;
  c10::optional<at::Generator> generator_;
};
TORCH_MODULE(DenoisingGenerator);

class LpDetrImpl : public torch::nn::Module {
 public:
  explicit LpDetrImpl(const ModelConfig& config);

  // Inference (eval mode) or training forward (train mode, with targets: adds
  // denoising and hybrid outputs).
  DetectorOutput forward(const ImageBatch& batch,
                         const std::vector<TrainTarget>* targets = nullptr);

  // Top `num_select` (query, class) pairs per image by sigmoid score; boxes
  // scaled to image_sizes [B,2] (h, w). With nms_iou > 0, a pair whose box
  // overlaps a higher-scoring pair of the same class by IoU > nms_iou is
  // dropped (ModelConfig::nms_iou; 0 keeps all num_select, the official
  // post-processing).
  static std::vector<Detections> PostProcess(const at::Tensor& logits, const at::Tensor& boxes,
                                             const at::Tensor& image_sizes, int64_t num_select,
                                             double nms_iou = 0.0);

  // alpha per decoder layer [L,3] (lp-detr with relation heads) or undefined.
  at::Tensor ScaleAlpha() const;
  const ModelConfig& config() const { return config_; }

  ResNet backbone{nullptr};
  ChannelMapper neck{nullptr};
  RelationTransformer transformer{nullptr};
  DenoisingGenerator denoising_generator{nullptr};

 private:
  MultiLevelInput Features(const ImageBatch& batch);

  ModelConfig config_;
};
TORCH_MODULE(LpDetr);

}  // namespace lpdetr

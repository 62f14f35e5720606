#include "model/relation.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/conv.h>

#include "model/box_ops.h"
#include "model/layers.h"
#include "model/ops/relation_weights.h"
#include "model/runtime.h"

namespace lpdetr {

at::Tensor BoxRelationFeatures(const at::Tensor& src, const at::Tensor& tgt) {
  at::Tensor xy1 = src.narrow(-1, 0, 2).unsqueeze(-2), wh1 = src.narrow(-1, 2, 2).unsqueeze(-2);
  at::Tensor xy2 = tgt.narrow(-1, 0, 2).unsqueeze(-3), wh2 = tgt.narrow(-1, 2, 2).unsqueeze(-3);
  at::Tensor delta_xy = at::log((xy1 - xy2).abs() / (wh1 + kRelationEps) + 1.0);
  at::Tensor delta_wh = at::log((wh1 + kRelationEps) / (wh2 + kRelationEps));
  return at::cat({delta_xy, delta_wh}, -1);
}

double LayerScale(int64_t layer, int64_t num_layers) {
  if (num_layers <= 1) return 1.0;
  return 1.0 + 2.0 * static_cast<double>(layer) / static_cast<double>(num_layers - 1);
}

at::Tensor LpRelationFeatures(const at::Tensor& boxes, int scale, double s_l) {
  at::Tensor giou = PairwiseGiou(boxes, boxes).unsqueeze(-1);
  if (scale == 2) {
    auto shape = giou.sizes().vec();
    shape.back() = 4;
    return at::cat({at::ones(shape, giou.options()), giou}, -1);
  }
  at::Tensor xy1 = boxes.narrow(-1, 0, 2).unsqueeze(-2);
  at::Tensor wh1 = boxes.narrow(-1, 2, 2).unsqueeze(-2);
  at::Tensor xy2 = boxes.narrow(-1, 0, 2).unsqueeze(-3);
  at::Tensor wh2 = boxes.narrow(-1, 2, 2).unsqueeze(-3);
  at::Tensor ratio = (xy1 - xy2).abs() / (wh1 + kRelationEps);
  at::Tensor log_wh = at::log((wh1 + kRelationEps) / (wh2 + kRelationEps));
  if (scale == 1) {
    ratio = ratio / s_l;
    log_wh = log_wh / s_l;
  }
  return at::cat({at::log(ratio + 1.0), log_wh, giou}, -1);
}

at::Tensor RelationSineEmbed(const at::Tensor& features) {
  return SineEmbed(features, kRelationEmbedDim, kRelationTemperature, kRelationScale,
                   /*exchange_xy=*/false);
}

namespace {

torch::nn::Sequential RelationProjection(int64_t in, int64_t heads) {
  return torch::nn::Sequential(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, heads, 1)),
                               torch::nn::ReLU());
}

at::Tensor ProjectionWeight(const torch::nn::Sequential& proj) {
  auto conv = proj->ptr<torch::nn::Conv2dImpl>(0);
  return conv->weight.flatten(1);
}

at::Tensor ProjectionBias(const torch::nn::Sequential& proj) {
  return proj->ptr<torch::nn::Conv2dImpl>(0)->bias;
}

// [B,N,M,D] embedding -> ReLU(W e + b) as [B,K,N,M].
at::Tensor Project(const at::Tensor& embedding, const at::Tensor& weight,
                   const at::Tensor& bias) {
  return at::relu(at::linear(embedding, weight, bias)).permute({0, 3, 1, 2});
}

}  // namespace

PositionRelationEmbeddingImpl::PositionRelationEmbeddingImpl(int64_t num_heads) {
  pos_proj = register_module("pos_proj", RelationProjection(4 * kRelationEmbedDim, num_heads));
}

at::Tensor PositionRelationEmbeddingImpl::Weight() const { return ProjectionWeight(pos_proj); }
at::Tensor PositionRelationEmbeddingImpl::Bias() const { return ProjectionBias(pos_proj); }

at::Tensor PositionRelationEmbeddingImpl::forward(const at::Tensor& src, const at::Tensor& tgt) {
  if (GetOpBackend() == OpBackend::kComposed) return ForwardComposed(src, tgt);
  return ops::RelationWeights(src.detach(), tgt.detach(), Weight(), Bias(), c10::nullopt,
                              /*s_l=*/1.0, ops::RelationVariant::kRelationDetr);
}

at::Tensor PositionRelationEmbeddingImpl::ForwardComposed(const at::Tensor& src,
                                                          const at::Tensor& tgt) {
  at::Tensor embedding;
  {
    at::NoGradGuard no_grad;
    embedding = RelationSineEmbed(BoxRelationFeatures(src, tgt));
  }
  return Project(embedding, Weight(), Bias());
}

MultiScaleRelationImpl::MultiScaleRelationImpl(int64_t num_heads, int64_t num_layers)
    : num_layers_(num_layers) {
  pos_proj = register_module("pos_proj", RelationProjection(5 * kRelationEmbedDim, num_heads));
  scale_weights = register_parameter("scale_weights", at::ones({num_layers, 3}));
}

at::Tensor MultiScaleRelationImpl::Weight() const { return ProjectionWeight(pos_proj); }
at::Tensor MultiScaleRelationImpl::Bias() const { return ProjectionBias(pos_proj); }

at::Tensor MultiScaleRelationImpl::Alpha() const { return scale_weights.softmax(1); }

at::Tensor MultiScaleRelationImpl::forward(const at::Tensor& boxes, int64_t layer) {
  if (GetOpBackend() == OpBackend::kComposed) return ForwardComposed(boxes, layer);
  TORCH_CHECK(layer >= 0 && layer < num_layers_, "relation layer ", layer, " out of range 0..",
              num_layers_ - 1);
  at::Tensor b = boxes.detach();
  return ops::RelationWeights(b, b, Weight(), Bias(), Alpha().select(0, layer),
                              LayerScale(layer, num_layers_), ops::RelationVariant::kLpDetr);
}

at::Tensor MultiScaleRelationImpl::ForwardComposed(const at::Tensor& boxes, int64_t layer) {
  TORCH_CHECK(layer >= 0 && layer < num_layers_, "relation layer ", layer, " out of range 0..",
              num_layers_ - 1);
  const double s_l = LayerScale(layer, num_layers_);
  std::array<at::Tensor, 3> embeddings;
  {
    at::NoGradGuard no_grad;
    at::Tensor b = boxes.detach();
    for (int s = 0; s < 3; ++s) embeddings[s] = RelationSineEmbed(LpRelationFeatures(b, s, s_l));
  }
  at::Tensor alpha = Alpha().select(0, layer);
  at::Tensor mixed = embeddings[0] * alpha[0] + embeddings[1] * alpha[1] +
                     embeddings[2] * alpha[2];
  return Project(mixed, Weight(), Bias());
}

}  // namespace lpdetr

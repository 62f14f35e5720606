// Spatial relation between decoder queries (SPEC 2.2), composed from ATen ops.
//
// relation-detr: cross-layer relation from the boxes of layer l-2 (rows i) to
//   those of layer l-1 (columns j), 4 features, sine-embedded (16 dims each),
//   1x1 conv 64 -> K + ReLU; the result is added to the attention logits.
// lp-detr: self-relation of the boxes feeding layer l at three scales (local,
//   medium with s_l = 1 + 2l/(L-1), global), 5 features each (the 4 above and
//   GIoU), embedded to 80 dims, mixed by alpha_l = softmax(Lambda[l]),
//   w_p = ReLU(W_G . mix + b_G); the attention adds log(w_p + 1e-6).
// The modules' forward runs the fused op lpdetr::relation_weights
// (model/ops/relation_weights.h) when GetOpBackend() is kKernels and the
// composed ATen version otherwise (ForwardComposed, also callable directly).
// The composed versions materialise the [B, N, M, 64|80] embedding; they are
// the bit-exact reference for parity and for the fused kernels' tests.
#pragma once

#include <cstdint>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>

namespace lpdetr {

constexpr double kRelationEps = 1e-5;
constexpr int64_t kRelationEmbedDim = 16;     // sine dims per feature
constexpr double kRelationTemperature = 10000.0;
constexpr double kRelationScale = 100.0;
constexpr double kRelationLogEps = 1e-6;      // log(w_p + 1e-6)

// The 4 relation-detr features log(|dx|/(w_i+e)+1), log(|dy|/(h_i+e)+1),
// log((w_i+e)/(w_j+e)), log((h_i+e)/(h_j+e)) of src i and tgt j: [B,N,M,4].
at::Tensor BoxRelationFeatures(const at::Tensor& src, const at::Tensor& tgt);

// The 5 lp-detr features of one scale (`scale` = 0 local, 1 medium, 2 global)
// of the self-relation of `boxes` [B,N,4] at layer scale s_l: [B,N,N,5].
at::Tensor LpRelationFeatures(const at::Tensor& boxes, int scale, double s_l);

// s_l = 1 + 2 l / (L - 1) (1 when L == 1).
double LayerScale(int64_t layer, int64_t num_layers);

// Sine embedding of each relation feature: [..., F] -> [..., 16 F].
at::Tensor RelationSineEmbed(const at::Tensor& features);

// relation-detr's PositionRelationEmbedding: pos_proj.0 = Conv2d(64, K, 1).
class PositionRelationEmbeddingImpl : public torch::nn::Module {
 public:
  explicit PositionRelationEmbeddingImpl(int64_t num_heads);
  // src [B,N,4], tgt [B,M,4] (cxcywh) -> [B,K,N,M] relation weights (>= 0).
  at::Tensor forward(const at::Tensor& src, const at::Tensor& tgt);
  at::Tensor ForwardComposed(const at::Tensor& src, const at::Tensor& tgt);
  at::Tensor Weight() const;  // [K, 64]
  at::Tensor Bias() const;    // [K]

 private:
  torch::nn::Sequential pos_proj{nullptr};
};
TORCH_MODULE(PositionRelationEmbedding);

// lp-detr's multi-scale self-relation: pos_proj.0 = Conv2d(80, K, 1) (W_G,
// b_G) and scale_weights Lambda [L, 3] (initialised to ones).
class MultiScaleRelationImpl : public torch::nn::Module {
 public:
  MultiScaleRelationImpl(int64_t num_heads, int64_t num_layers);
  // boxes [B,N,4] feeding decoder layer `layer` -> w_p [B,K,N,N] (>= 0).
  at::Tensor forward(const at::Tensor& boxes, int64_t layer);
  at::Tensor ForwardComposed(const at::Tensor& boxes, int64_t layer);
  // alpha = softmax(Lambda, dim 1): [L, 3].
  at::Tensor Alpha() const;
  at::Tensor Weight() const;  // [K, 80]
  at::Tensor Bias() const;    // [K]

  at::Tensor scale_weights;

 private:
  int64_t num_layers_;
  torch::nn::Sequential pos_proj{nullptr};
};
TORCH_MODULE(MultiScaleRelation);

}  // namespace lpdetr

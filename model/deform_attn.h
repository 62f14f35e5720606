// Multi-scale deformable attention (Deformable DETR), official semantics:
// bilinear sampling, zeros outside the map, align_corners = false.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

#include "model/layers.h"

namespace lpdetr {

// (height, width) of each feature level, in flattening order.
using SpatialShapes = std::vector<std::array<int64_t, 2>>;

// Composed reference implementation (grid_sample per level).
//   value               [B, Nv, H, D]   Nv = sum of h*w over levels
//   sampling_locations  [B, Nq, H, L, P, 2]  (x, y) in [0, 1] of each level map
//   attention_weights   [B, Nq, H, L, P]
// returns [B, Nq, H*D].
at::Tensor MsDeformAttnComposed(const at::Tensor& value, const SpatialShapes& shapes,
                                const at::Tensor& sampling_locations,
                                const at::Tensor& attention_weights);

// The same computation through the fused custom op lpdetr::ms_deform_attn
// (model/ops/ms_deform_attn.h); `shapes` become its int64 shape tensors.
at::Tensor MsDeformAttnFused(const at::Tensor& value, const SpatialShapes& shapes,
                             const at::Tensor& sampling_locations,
                             const at::Tensor& attention_weights);

// The attention module with the official parameter names
// (sampling_offsets, attention_weights, value_proj, output_proj). The sampling
// runs through the fused op when GetOpBackend() is OpBackend::kKernels
// (model/runtime.h) and through MsDeformAttnComposed, with the official float
// operations, when it is kComposed.
class MultiScaleDeformableAttentionImpl : public torch::nn::Module {
 public:
  MultiScaleDeformableAttentionImpl(int64_t embed_dim, int64_t num_levels, int64_t num_heads,
                                    int64_t num_points);

  // query [B,Nq,E]; reference_points [B,Nq,L,2] (points) or [B,Nq,L,4] (boxes
  // cxcywh), normalized to each level map; value [B,Nv,E]; key_padding_mask
  // [B,Nv] bool (true = padding, zeroed in the value) or undefined.
  at::Tensor forward(const at::Tensor& query, const at::Tensor& reference_points,
                     const at::Tensor& value, const SpatialShapes& shapes,
                     const at::Tensor& key_padding_mask);

  // The official initial values, for training from scratch (a loaded
  // checkpoint overwrites them): sampling_offsets weight zero and bias the
  // fixed pattern where head h points along angle 2*pi*h/H (the direction
  // scaled so its larger coordinate is 1) and point p lies p + 1 times as far,
  // the same on every level; attention_weights zero (uniform attention over
  // the points); value_proj and output_proj Xavier-uniform weights, zero
  // biases. Draws from LibTorch's default generator.
  void ResetParameters();

  torch::nn::Linear sampling_offsets{nullptr}, attention_weights{nullptr},
      value_proj{nullptr}, output_proj{nullptr};

 private:
  int64_t embed_dim_, num_levels_, num_heads_, num_points_;
  Bf16Weights bf16_;  // projections on the bf16 path
};
TORCH_MODULE(MultiScaleDeformableAttention);

}  // namespace lpdetr

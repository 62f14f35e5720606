// Multi-scale deformable attention as a custom operator (lpdetr::ms_deform_attn),
// with the interface of the official MSDeformAttnFunction and its semantics:
// bilinear sampling, zeros outside each level map, align_corners = false
// (pixel coordinate = location * size - 0.5).
//
// Kernels: CPU (float, double; AVX2 + FMA build), CUDA (float, double, half,
// bfloat16 with float accumulation) when LibTorch has CUDA. Autograd gives
// gradients to value, sampling_locations and attention_weights.
#pragma once

#include <ATen/core/Tensor.h>

namespace lpdetr::ops {

//   value               [B, Nv, H, D]        Nv = sum over levels of h * w
//   spatial_shapes      [L, 2] int64         (h, w) of each level
//   level_start_index   [L] int64            offset of each level in Nv
//   sampling_locations  [B, Nq, H, L, P, 2]  (x, y), in [0, 1] inside a map
//   attention_weights   [B, Nq, H, L, P]
// returns [B, Nq, H * D]. value, sampling_locations and attention_weights
// share one floating dtype; any strides are accepted.
at::Tensor MsDeformAttn(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index,
                        const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights);

namespace detail {

// Shape, dtype and device checks shared by the kernels; failures name the bad
// value. `grad_output` is checked against the output shape when defined.
// Shapes on the CPU are also checked against Nv and level_start_index.
void MsDeformAttnCheckInputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                             const at::Tensor& level_start_index,
                             const at::Tensor& sampling_locations,
                             const at::Tensor& attention_weights,
                             const at::Tensor& grad_output);

}  // namespace detail
}  // namespace lpdetr::ops

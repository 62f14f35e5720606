// Multi-scale deformable attention as a custom operator (lpdetr::ms_deform_attn),
// with the interface of the official MSDeformAttnFunction and its semantics:
// bilinear sampling, zeros outside each level map, align_corners = false
// (pixel coordinate = location * size - 0.5).
//
// Kernels: CPU (AVX2 + FMA build; float, double, bfloat16) and, when LibTorch
// has CUDA, CUDA (float, double, half, bfloat16). Autograd gives gradients to
// value, sampling_locations and attention_weights.
//
// Dtypes. value is float, double or bfloat16 (CUDA: also half).
// sampling_locations and attention_weights share one dtype: the value's, or
// float32 when value is bfloat16 / half (mixed: e.g. a bf16 value projection
// with fp32 offsets and softmax). Any other combination fails with a message
// naming the dtypes. bfloat16 / half values are read in their own dtype (no
// float copy) and everything accumulates in float (double for double); for a
// bfloat16 value the result equals the float kernel on value.to(float)
// (bit for bit on the CPU). The output has the dtype of attention_weights.
// Backward: grad_output has the output's dtype; grad_value has the value's
// dtype (accumulated in float, rounded once); grad_locations and grad_weights
// have the dtype of sampling_locations / attention_weights.
#pragma once

#include <ATen/core/Tensor.h>

namespace lpdetr::ops {

//   value               [B, Nv, H, D]        Nv = sum over levels of h * w
//   spatial_shapes      [L, 2] int64         (h, w) of each level
//   level_start_index   [L] int64            offset of each level in Nv
//   sampling_locations  [B, Nq, H, L, P, 2]  (x, y), in [0, 1] inside a map
//   attention_weights   [B, Nq, H, L, P]
// returns [B, Nq, H * D] in the dtype of attention_weights (see Dtypes
// above); any strides are accepted. Empty inputs give empty (or zero) results.
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

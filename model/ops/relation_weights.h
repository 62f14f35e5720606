// Fused relation weights (SPEC 2.2): boxes -> per-head relation weights,
// computed pair by pair without materialising the [B, N, M, 64|80] sine
// embedding that the composed reference (model/relation.h) builds.
//
// Registered as the custom op `lpdetr::relation_weights` (CPU, CUDA when the
// LibTorch has it, and Autograd kernels) with its backward
// `lpdetr::_relation_weights_backward`. Gradients flow to `weight`, `bias` and
// `alpha` (and, through a softmax the caller applies, to Lambda); the boxes are
// treated as constants, as in the composed modules.
#pragma once

#include <array>
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

namespace lpdetr::ops {

// Which relation the op computes (the op's `variant` argument).
//   kRelationDetr  cross-layer relation, 4 features per pair (src i, tgt j),
//                  weight [K, 64], alpha must be absent.
//   kLpDetr        multi-scale relation, local/medium/global scales of 5
//                  features each mixed by alpha [3] (alpha = softmax of the
//                  layer's Lambda row), weight [K, 80], medium scale s_l.
enum class RelationVariant : int64_t { kRelationDetr = 0, kLpDetr = 1 };

// src [B, N, 4], tgt [B, M, 4] (cxcywh; for lp-detr's self-relation pass the
// same boxes twice), weight [K, F], bias [K], alpha [3] or nullopt, s_l the
// medium-scale factor (ignored by relation-detr) -> ReLU(W . e_ij + b) as
// [B, K, N, M]. float32 or float64 (all inputs the same dtype, same device).
at::Tensor RelationWeights(const at::Tensor& src, const at::Tensor& tgt,
                           const at::Tensor& weight, const at::Tensor& bias,
                           const c10::optional<at::Tensor>& alpha, double s_l,
                           RelationVariant variant);

// The backward op: grad_output and the forward's output [B, K, N, M] (its sign
// is the ReLU mask) -> (grad_weight [K, F], grad_bias [K], grad_alpha [3], or
// an empty tensor for relation-detr).
std::tuple<at::Tensor, at::Tensor, at::Tensor> RelationWeightsBackward(
    const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& src,
    const at::Tensor& tgt, const at::Tensor& weight, const c10::optional<at::Tensor>& alpha,
    double s_l, RelationVariant variant);

namespace detail {

constexpr int kRelationFreqs = 8;  // 16 embedding dims per feature: (sin, cos) x 8

// The per-frequency divisors dim_t[k] = 10000^(2k/16), computed exactly as the
// composed SineEmbed does (float32), so kernels can reproduce its arguments.
const std::array<float, kRelationFreqs>& RelationDimT();

// Validates the op's inputs (shapes, dtypes, devices, variant) with messages
// that name the offending value; returns the variant.
RelationVariant CheckRelationInputs(const char* op, const at::Tensor& src, const at::Tensor& tgt,
                                    const at::Tensor& weight, const at::Tensor* bias,
                                    const c10::optional<at::Tensor>& alpha, double s_l,
                                    int64_t variant);

// Validates grad_output / output of the backward against the inputs.
void CheckRelationGrad(const at::Tensor& grad_output, const at::Tensor& output,
                       const at::Tensor& src, const at::Tensor& tgt, const at::Tensor& weight);

}  // namespace detail
}  // namespace lpdetr::ops

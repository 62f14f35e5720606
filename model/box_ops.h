// Box geometry shared by the model (relation features, denoising,
// post-processing) and the training library (matcher, losses). Boxes are
// cxcywh or xyxy on the last dimension; every function is differentiable
// ATen and keeps the float operations of the reference implementation
// (areas from w * h of the cxcywh form).
#pragma once

#include <ATen/core/Tensor.h>

namespace lpdetr {

// cxcywh -> xyxy on the last dim.
at::Tensor BoxCxcywhToXyxy(const at::Tensor& boxes);

// Pairwise generalized IoU of cxcywh boxes: [..., N, 4] x [..., M, 4] -> [..., N, M].
at::Tensor PairwiseGiou(const at::Tensor& boxes1, const at::Tensor& boxes2);

}  // namespace lpdetr

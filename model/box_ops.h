// Box geometry shared by the model (relation features, denoising,
// post-processing) and the training library (matcher, losses). Boxes are
// cxcywh or xyxy on the last dimension; every function is differentiable
// ATen and keeps the float operations of the reference implementation it
// stands for (PairwiseGiou: areas from w * h of the cxcywh form;
// PairwiseGiouXyxy: torchvision's, areas from the corners).
#pragma once

#include <ATen/core/Tensor.h>

namespace lpdetr {

// cxcywh -> xyxy on the last dim.
at::Tensor BoxCxcywhToXyxy(const at::Tensor& boxes);

// Pairwise generalized IoU of cxcywh boxes: [..., N, 4] x [..., M, 4] -> [..., N, M].
at::Tensor PairwiseGiou(const at::Tensor& boxes1, const at::Tensor& boxes2);

// Pairwise generalized IoU of xyxy boxes: [..., N, 4] x [..., M, 4] -> [..., N, M],
// with the float operations of torchvision's generalized_box_iou (what the
// Hungarian matcher uses): areas from (x2 - x1) * (y2 - y1), no clamping of
// the union or the enclosing area (degenerate boxes give inf / NaN there).
at::Tensor PairwiseGiouXyxy(const at::Tensor& boxes1, const at::Tensor& boxes2);

// Greedy same-class suppression of xyxy boxes [K,4] with labels [K] already
// sorted by descending score: box i is kept unless a kept box j < i of the
// same label overlaps it by IoU > iou_threshold. Returns the kept indices
// [K'] (ascending, int64, on the boxes' device). Runs on the CPU (K is the
// post-processing's few hundred); not differentiable.
at::Tensor SameClassNmsKeep(const at::Tensor& boxes, const at::Tensor& labels,
                            double iou_threshold);

}  // namespace lpdetr

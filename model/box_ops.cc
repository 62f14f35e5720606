#include "model/box_ops.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

namespace lpdetr {

at::Tensor BoxCxcywhToXyxy(const at::Tensor& boxes) {
  auto parts = boxes.unbind(-1);
  const at::Tensor& cx = parts[0];
  const at::Tensor& cy = parts[1];
  const at::Tensor& w = parts[2];
  const at::Tensor& h = parts[3];
  return at::stack({cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h}, -1);
}

at::Tensor PairwiseGiou(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  // Areas from the cxcywh sizes (w * h), as the reference implementation.
  at::Tensor area1 = (boxes1.select(-1, 2) * boxes1.select(-1, 3)).unsqueeze(-1);  // [B,N,1]
  at::Tensor area2 = (boxes2.select(-1, 2) * boxes2.select(-1, 3)).unsqueeze(-2);  // [B,1,M]
  at::Tensor a = BoxCxcywhToXyxy(boxes1).unsqueeze(-2);  // [B,N,1,4]
  at::Tensor b = BoxCxcywhToXyxy(boxes2).unsqueeze(-3);  // [B,1,M,4]
  at::Tensor lt = at::maximum(a.narrow(-1, 0, 2), b.narrow(-1, 0, 2));
  at::Tensor rb = at::minimum(a.narrow(-1, 2, 2), b.narrow(-1, 2, 2));
  at::Tensor wh = (rb - lt).clamp_min(0);
  at::Tensor inter = wh.select(-1, 0) * wh.select(-1, 1);
  at::Tensor uni = area1 + area2 - inter;
  at::Tensor iou = inter / uni.clamp_min(1e-12);
  at::Tensor lt_c = at::minimum(a.narrow(-1, 0, 2), b.narrow(-1, 0, 2));
  at::Tensor rb_c = at::maximum(a.narrow(-1, 2, 2), b.narrow(-1, 2, 2));
  at::Tensor wh_c = (rb_c - lt_c).clamp_min(0);
  at::Tensor enclose = wh_c.select(-1, 0) * wh_c.select(-1, 1);
  return iou - (enclose - uni) / enclose.clamp_min(1e-12);
}

at::Tensor PairwiseGiouXyxy(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  at::Tensor area1 = ((boxes1.select(-1, 2) - boxes1.select(-1, 0)) *
                      (boxes1.select(-1, 3) - boxes1.select(-1, 1)))
                         .unsqueeze(-1);  // [...,N,1]
  at::Tensor area2 = ((boxes2.select(-1, 2) - boxes2.select(-1, 0)) *
                      (boxes2.select(-1, 3) - boxes2.select(-1, 1)))
                         .unsqueeze(-2);  // [...,1,M]
  at::Tensor a = boxes1.unsqueeze(-2);    // [...,N,1,4]
  at::Tensor b = boxes2.unsqueeze(-3);    // [...,1,M,4]
  at::Tensor lt = at::maximum(a.narrow(-1, 0, 2), b.narrow(-1, 0, 2));
  at::Tensor rb = at::minimum(a.narrow(-1, 2, 2), b.narrow(-1, 2, 2));
  at::Tensor wh = (rb - lt).clamp_min(0);
  at::Tensor inter = wh.select(-1, 0) * wh.select(-1, 1);
  at::Tensor uni = area1 + area2 - inter;
  at::Tensor iou = inter / uni;
  at::Tensor lt_c = at::minimum(a.narrow(-1, 0, 2), b.narrow(-1, 0, 2));
  at::Tensor rb_c = at::maximum(a.narrow(-1, 2, 2), b.narrow(-1, 2, 2));
  at::Tensor wh_c = (rb_c - lt_c).clamp_min(0);
  at::Tensor enclose = wh_c.select(-1, 0) * wh_c.select(-1, 1);
  return iou - (enclose - uni) / enclose;
}

at::Tensor SameClassNmsKeep(const at::Tensor& boxes, const at::Tensor& labels,
                            double iou_threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "SameClassNmsKeep expects boxes [K,4], got ",
              boxes.sizes());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == boxes.size(0),
              "SameClassNmsKeep expects labels [K] matching boxes [K,4], got ", labels.sizes(),
              " and ", boxes.sizes());
  TORCH_CHECK(iou_threshold >= 0.0 && iou_threshold <= 1.0,
              "SameClassNmsKeep: iou_threshold must be in [0, 1], got ", iou_threshold);
  const int64_t k = boxes.size(0);
  const at::Tensor b = boxes.to(at::kCPU, at::kFloat).contiguous();
  const at::Tensor l = labels.to(at::kCPU, at::kLong).contiguous();
  const float* box = b.data_ptr<float>();
  const int64_t* label = l.data_ptr<int64_t>();
  std::vector<int64_t> kept;
  kept.reserve(k);
  for (int64_t i = 0; i < k; ++i) {
    const float* bi = box + 4 * i;
    const float area_i = std::max(bi[2] - bi[0], 0.f) * std::max(bi[3] - bi[1], 0.f);
    bool keep = true;
    for (const int64_t j : kept) {
      if (label[j] != label[i]) continue;
      const float* bj = box + 4 * j;
      const float w = std::min(bi[2], bj[2]) - std::max(bi[0], bj[0]);
      const float h = std::min(bi[3], bj[3]) - std::max(bi[1], bj[1]);
      if (w <= 0.f || h <= 0.f) continue;
      const float inter = w * h;
      const float area_j = std::max(bj[2] - bj[0], 0.f) * std::max(bj[3] - bj[1], 0.f);
      if (inter > iou_threshold * (area_i + area_j - inter)) {
        keep = false;
        break;
      }
    }
    if (keep) kept.push_back(i);
  }
  return at::tensor(kept, at::kLong).to(boxes.device());
}

}  // namespace lpdetr

#include "model/box_ops.h"

#include <ATen/ATen.h>

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

}  // namespace lpdetr

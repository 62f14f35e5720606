#include "train/matcher.h"

#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include "model/box_ops.h"
#include "train/linear_assignment.h"

namespace lpdetr::train {
namespace {

void CheckImageInputs(const at::Tensor& logits, const at::Tensor& boxes,
                      const TrainTarget& target) {
  TORCH_CHECK(logits.defined() && logits.dim() == 2,
              "HungarianMatcher: logits must be [Q, C], got ",
              logits.defined() ? logits.sizes() : at::IntArrayRef{});
  TORCH_CHECK(boxes.defined() && boxes.dim() == 2 && boxes.size(1) == 4 &&
                  boxes.size(0) == logits.size(0),
              "HungarianMatcher: boxes must be [Q, 4] with Q = ", logits.size(0), ", got ",
              boxes.defined() ? boxes.sizes() : at::IntArrayRef{});
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()) && at::isFloatingType(boxes.scalar_type()),
              "HungarianMatcher: logits and boxes must be floating point, got ",
              logits.scalar_type(), " and ", boxes.scalar_type());
  TORCH_CHECK(target.labels.defined() && target.labels.dim() == 1 &&
                  target.labels.scalar_type() == at::kLong,
              "HungarianMatcher: target labels must be int64 [n]");
  TORCH_CHECK(target.boxes.defined() && target.boxes.dim() == 2 && target.boxes.size(1) == 4 &&
                  target.boxes.size(0) == target.labels.size(0),
              "HungarianMatcher: target boxes must be [n, 4] with n = ", target.labels.size(0),
              " labels, got ", target.boxes.defined() ? target.boxes.sizes() : at::IntArrayRef{});
  if (target.labels.numel() > 0) {
    const int64_t lowest = target.labels.min().item<int64_t>();
    const int64_t highest = target.labels.max().item<int64_t>();
    TORCH_CHECK(lowest >= 0 && highest < logits.size(1), "HungarianMatcher: target labels in [",
                lowest, ", ", highest, "] but the logits have ", logits.size(1), " classes");
  }
}

// Focal class cost [Q, n]: pos - neg at each target's label. The terms are
// computed over all classes first, as the reference implementation does.
at::Tensor FocalClassCost(const at::Tensor& logits, const at::Tensor& labels, double alpha,
                          double gamma) {
  const at::Tensor prob = logits.sigmoid();
  const at::Tensor neg =
      at::pow(prob, gamma).mul(-(1.0 - alpha)).mul(at::rsub(prob, 1).add(1e-6).log());
  const at::Tensor pos = at::pow(at::rsub(prob, 1), gamma).mul(-alpha).mul(prob.add(1e-6).log());
  return pos.index_select(1, labels) - neg.index_select(1, labels);
}

// -GIoU of xyxy boxes [Q, 4] x [n, 4] on the CPU in one pass, with the
// per-element operations of PairwiseGiouXyxy in its order: all are correctly
// rounded IEEE operations (and no FMA: the library is compiled without it),
// so finite inputs give the composed result bit for bit. (at::maximum and
// at::minimum propagate NaN where std::max / std::min may not; a NaN box
// makes the L1 term, hence the cost, NaN anyway.) The target side is laid
// out by coordinate so the inner loop vectorises.
template <typename T>
at::Tensor NegativeGiouCpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  const at::Tensor a = boxes1.contiguous();
  const at::Tensor b = boxes2.t().contiguous();  // [4, n]: x1, y1, x2, y2 rows
  const int64_t rows = a.size(0), cols = b.size(1);
  at::Tensor out = at::empty({rows, cols}, a.options());
  const T* pa = a.data_ptr<T>();
  const T* bx1 = b.data_ptr<T>();
  const T* by1 = bx1 + cols;
  const T* bx2 = by1 + cols;
  const T* by2 = bx2 + cols;
  std::vector<T> area2(cols);
  for (int64_t j = 0; j < cols; ++j) area2[j] = (bx2[j] - bx1[j]) * (by2[j] - by1[j]);
  const T* pa2 = area2.data();
  T* po = out.data_ptr<T>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T ax1 = pa[4 * i], ay1 = pa[4 * i + 1], ax2 = pa[4 * i + 2], ay2 = pa[4 * i + 3];
      const T area1 = (ax2 - ax1) * (ay2 - ay1);
      T* row = po + i * cols;
      for (int64_t j = 0; j < cols; ++j) {
        const T inter = std::max(std::min(ax2, bx2[j]) - std::max(ax1, bx1[j]), T(0)) *
                        std::max(std::min(ay2, by2[j]) - std::max(ay1, by1[j]), T(0));
        const T uni = area1 + pa2[j] - inter;
        const T iou = inter / uni;
        const T enclose = std::max(std::max(ax2, bx2[j]) - std::min(ax1, bx1[j]), T(0)) *
                          std::max(std::max(ay2, by2[j]) - std::min(ay1, by1[j]), T(0));
        row[j] = -(iou - (enclose - uni) / enclose);
      }
    }
  });
  return out;
}

// -GIoU of cxcywh boxes [Q, 4] x [n, 4]: the one-pass loop for CPU float and
// double, the composed ATen form elsewhere.
at::Tensor NegativeGiou(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  const at::Tensor xyxy1 = BoxCxcywhToXyxy(boxes1), xyxy2 = BoxCxcywhToXyxy(boxes2);
  if (xyxy1.is_cpu() && xyxy1.scalar_type() == at::kFloat) {
    return NegativeGiouCpu<float>(xyxy1, xyxy2);
  }
  if (xyxy1.is_cpu() && xyxy1.scalar_type() == at::kDouble) {
    return NegativeGiouCpu<double>(xyxy1, xyxy2);
  }
  return PairwiseGiouXyxy(xyxy1, xyxy2).neg();
}

// The matching cost of one image with checked inputs.
at::Tensor ComputeCost(const MatcherOptions& options, const at::Tensor& logits,
                       const at::Tensor& boxes, const TrainTarget& target) {
  at::NoGradGuard no_grad;
  const at::Tensor labels = target.labels.to(logits.device());
  const at::Tensor target_boxes = target.boxes.to(boxes.device(), boxes.scalar_type());
  const at::Tensor cost_class =
      FocalClassCost(logits, labels, options.focal_alpha, options.focal_gamma);
  const at::Tensor cost_bbox = at::cdist(boxes, target_boxes, 1.0);
  const at::Tensor cost_giou = NegativeGiou(boxes, target_boxes);
  return cost_bbox.mul(options.cost_bbox) + cost_class.mul(options.cost_class) +
         cost_giou.mul(options.cost_giou);
}

Match ToMatch(const AssignmentPairs& pairs) {
  const int64_t k = static_cast<int64_t>(pairs.size());
  Match match{at::empty({k}, at::kLong), at::empty({k}, at::kLong)};
  int64_t* query = match.query.data_ptr<int64_t>();
  int64_t* target = match.target.data_ptr<int64_t>();
  for (int64_t i = 0; i < k; ++i) {
    query[i] = pairs[i].first;
    target[i] = pairs[i].second;
  }
  return match;
}

// Solves the cost matrix in double; float32 entries are converted exactly.
AssignmentPairs Solve(const at::Tensor& cost) {
  at::Tensor host = cost.to(at::kCPU).contiguous();
  const int64_t rows = host.size(0), cols = host.size(1);
  if (host.scalar_type() == at::kDouble) {
    return SolveLinearAssignment(host.data_ptr<double>(), rows, cols);
  }
  host = host.to(at::kFloat).contiguous();
  return SolveLinearAssignment(host.data_ptr<float>(), rows, cols);
}

}  // namespace

HungarianMatcher::HungarianMatcher(MatcherOptions options) : options_(options) {
  TORCH_CHECK(options_.cost_class != 0 || options_.cost_bbox != 0 || options_.cost_giou != 0,
              "HungarianMatcher: all cost weights are 0");
}

at::Tensor HungarianMatcher::Cost(const at::Tensor& logits, const at::Tensor& boxes,
                                  const TrainTarget& target) const {
  CheckImageInputs(logits, boxes, target);
  return ComputeCost(options_, logits, boxes, target);
}

Match HungarianMatcher::MatchImage(const at::Tensor& logits, const at::Tensor& boxes,
                                   const TrainTarget& target) const {
  CheckImageInputs(logits, boxes, target);
  if (logits.size(0) == 0 || target.labels.size(0) == 0) return ToMatch({});
  return ToMatch(Solve(ComputeCost(options_, logits, boxes, target)));
}

std::vector<Match> HungarianMatcher::Match(const at::Tensor& logits, const at::Tensor& boxes,
                                           const std::vector<TrainTarget>& targets) const {
  TORCH_CHECK(logits.defined() && logits.dim() == 3,
              "HungarianMatcher: batch logits must be [B, Q, C], got ",
              logits.defined() ? logits.sizes() : at::IntArrayRef{});
  TORCH_CHECK(boxes.defined() && boxes.dim() == 3 && boxes.size(0) == logits.size(0),
              "HungarianMatcher: batch boxes must be [B, Q, 4] with B = ", logits.size(0),
              ", got ", boxes.defined() ? boxes.sizes() : at::IntArrayRef{});
  TORCH_CHECK(static_cast<int64_t>(targets.size()) == logits.size(0), "HungarianMatcher: ",
              targets.size(), " targets for a batch of ", logits.size(0));
  std::vector<train::Match> matches;
  matches.reserve(targets.size());
  for (size_t b = 0; b < targets.size(); ++b) {
    const auto i = static_cast<int64_t>(b);
    matches.push_back(MatchImage(logits[i], boxes[i], targets[b]));
  }
  return matches;
}

}  // namespace lpdetr::train

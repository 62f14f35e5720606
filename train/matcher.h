// Hungarian matcher of the official (Relation-DETR) set criterion: per image,
// an optimal one-to-one assignment between queries and ground-truth boxes
// under the cost
//   cost_bbox * L1(cxcywh) + cost_class * focal class cost - cost_giou * GIoU,
// focal class cost = pos - neg at the target's label, with p = sigmoid(logit),
//   pos = alpha * (1 - p)^gamma * -log(p + 1e-6),
//   neg = (1 - alpha) * p^gamma * -log(1 - p + 1e-6).
// The cost is computed without autograd, with the reference implementation's
// tensor operations in its order and dtype (float32 in training), then
// solved exactly in double (SolveLinearAssignment), as scipy does with the
// float32 matrix.
//
// Every query is matched when there are more targets than queries (the
// surplus targets stay unmatched); with no targets, or no queries, the match
// is empty. Results are int64 CPU tensors, queries ascending.
//
// Threading: the matcher is immutable; its methods can be called
// concurrently. Knobs: MatcherOptions (the weights and focal parameters).
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

#include "model/detector.h"

namespace lpdetr::train {

struct MatcherOptions {
  double cost_class = 2.0;    // weight of the focal class cost
  double cost_bbox = 5.0;     // weight of the L1 distance of the cxcywh boxes
  double cost_giou = 2.0;     // weight of -GIoU
  double focal_alpha = 0.25;  // focal alpha of the class cost
  double focal_gamma = 2.0;   // focal gamma of the class cost
};

// The assignment of one image: query[k] is matched to target[k].
struct Match {
  at::Tensor query;   // int64 [k], ascending, indices into the queries
  at::Tensor target;  // int64 [k], indices into the image's targets
};

class HungarianMatcher {
 public:
  explicit HungarianMatcher(MatcherOptions options = {});

  const MatcherOptions& options() const { return options_; }

  // Cost matrix of one image, [Q, n] in the dtype of `logits` / `boxes`, on
  // their device. logits [Q, C], boxes [Q, 4] normalized cxcywh; the target's
  // labels must lie in [0, C).
  at::Tensor Cost(const at::Tensor& logits, const at::Tensor& boxes,
                  const TrainTarget& target) const;

  // Optimal assignment of one image (logits [Q, C], boxes [Q, 4]).
  // (The struct is spelled train::Match inside the class, where Match names
  // the method below.)
  train::Match MatchImage(const at::Tensor& logits, const at::Tensor& boxes,
                          const TrainTarget& target) const;

  // One assignment per image: logits [B, Q, C], boxes [B, Q, 4], B targets.
  std::vector<train::Match> Match(const at::Tensor& logits, const at::Tensor& boxes,
                                  const std::vector<TrainTarget>& targets) const;

 private:
  MatcherOptions options_;
};

}  // namespace lpdetr::train

// HybridSetCriterion: the training loss of Relation-DETR / LP-DETR.
//
// For one training forward (DetectorOutput in train mode with targets) it
// computes every weighted term of the official loss dict, in the official
// order, and their sum:
//   one-to-one   loss_{class,bbox,giou} (last decoder layer), _0.._{L-2}
//                (auxiliary layers), _enc (encoder top-k); each matched with
//                the Hungarian matcher against the targets;
//   denoising    _dn (last layer), _dn_0.._dn_{L-2}; fixed pairs: the
//                positive query of group g for target t is g * group_size + t;
//   hybrid       every one-to-one name + "_hybrid", matched against the
//                targets tiled `hybrid_assign` times.
// Terms per branch (unweighted, normalised by num_boxes):
//   class  IoU-aware varifocal BCE: target score = detached box IoU of the
//          matched prediction at its target class, weight
//          (1 - alpha) p^gamma (1 - onehot) + score with p = sigmoid(logit)
//          detached, summed over queries and classes;
//   bbox   sum of |pred - target| over the cxcywh of matched pairs;
//   giou   sum of 1 - GIoU over matched pairs.
// num_boxes = total target count (at least 1), times the denoising group
// count for the denoising terms and times hybrid_assign for the hybrid ones.
// The float operations follow the official code (torchvision box ops, the
// mean-over-queries-times-query-count reduction), so values agree with it to
// rounding.
//
// Threading: a criterion is immutable after construction; calls from several
// threads on different outputs are safe. Knobs: CriterionOptions.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/detector.h"
#include "train/matcher.h"

namespace lpdetr::train {

// Constants of the loss; the defaults are the official R50 configuration.
struct CriterionOptions {
  double focal_alpha = 0.25;  // negative weight is (1 - alpha) p^gamma
  double focal_gamma = 2.0;
  int64_t weight_class = 1;   // weight_dict: every class term
  int64_t weight_bbox = 5;    // every L1 term
  int64_t weight_giou = 2;    // every GIoU term
  int64_t hybrid_assign = 6;  // target repeats of the one-to-many branch
  MatcherOptions matcher;     // Hungarian matching costs
};

// One assignment per image: int64 query indices (ascending) and the target
// index each is matched to (same length).
using ImageMatch = Match;

// Named scalar losses in order.
using NamedLosses = std::vector<std::pair<std::string, at::Tensor>>;

struct CriterionResult {
  NamedLosses losses;  // weighted terms in the official order
  at::Tensor total;    // their sum, added in that order
  std::vector<ImageMatch> final_matches;  // last decoder layer, one-to-one branch
  double num_boxes = 0, num_boxes_dn = 0, num_boxes_hybrid = 0;
  int64_t dn_groups = 0;
};

// The three unweighted terms of one branch.
struct BranchLosses {
  at::Tensor loss_class, loss_bbox, loss_giou;
};

class HybridSetCriterion {
 public:
  explicit HybridSetCriterion(CriterionOptions options = {});

  // All terms of one training forward. `out` must hold the one-to-one layer
  // outputs and encoder top-k; denoising terms come when out.dn_groups > 0,
  // hybrid terms when out.hybrid_layer_logits is defined. Throws
  // std::invalid_argument on inconsistent shapes or targets.
  CriterionResult operator()(const DetectorOutput& out,
                             const std::vector<TrainTarget>& targets) const;

  // The three terms of one branch given its assignment: logits [B,Q,C],
  // boxes [B,Q,4] (cxcywh), one match per image.
  BranchLosses BranchLoss(const at::Tensor& logits, const at::Tensor& boxes,
                          const std::vector<TrainTarget>& targets,
                          const std::vector<ImageMatch>& matches, double num_boxes) const;

  // Hungarian assignment of one branch (no gradient).
  std::vector<ImageMatch> MatchBranch(const at::Tensor& logits, const at::Tensor& boxes,
                                      const std::vector<TrainTarget>& targets) const;

  // The fixed denoising pairs: for image i with n_i targets, queries
  // g * group_size + t (g < groups, t < n_i, g major) to targets t.
  static std::vector<ImageMatch> DenoisingMatches(const std::vector<TrainTarget>& targets,
                                                  int64_t groups, int64_t group_size);

  // Each image's targets repeated `times` times ([t0..tn-1, t0..tn-1, ...]).
  static std::vector<TrainTarget> TileTargets(const std::vector<TrainTarget>& targets,
                                              int64_t times);

  // Total target count clamped to at least 1 (as float32, like the official code).
  static double NumBoxes(const std::vector<TrainTarget>& targets);

  const CriterionOptions& options() const { return options_; }

 private:
  // Appends the weighted terms of `b` under `suffix` to `out`.
  void AddWeighted(const BranchLosses& b, const std::string& suffix, NamedLosses* out) const;
  // The one-to-one style branch: last layer, auxiliary layers, encoder.
  void SetBranch(const at::Tensor& layer_logits, const at::Tensor& layer_boxes,
                 const at::Tensor& enc_logits, const at::Tensor& enc_boxes,
                 const std::vector<TrainTarget>& targets, const std::string& suffix,
                 NamedLosses* out, std::vector<ImageMatch>* final_matches) const;

  CriterionOptions options_;
  HungarianMatcher matcher_;
};

// Loss functions of the criterion (public for tests). `batch_index` and
// `query_index` [n] int64 select the matched predictions, in the order of
// `target_boxes` [n,4] / `target_labels` [n].
//
// IoU of each matched pair (torchvision box_iou on the diagonal), detached.
at::Tensor MatchedBoxIou(const at::Tensor& pred_boxes, const at::Tensor& target_boxes);
// GIoU of each matched pair (torchvision generalized_box_iou on the diagonal).
at::Tensor MatchedGiou(const at::Tensor& pred_boxes, const at::Tensor& target_boxes);
// The varifocal class term of logits [B,Q,C].
at::Tensor VarifocalClassLoss(const at::Tensor& logits, const at::Tensor& batch_index,
                              const at::Tensor& query_index, const at::Tensor& target_labels,
                              const at::Tensor& iou_score, double num_boxes, double alpha,
                              double gamma);

}  // namespace lpdetr::train

#include "train/criterion.h"

#include <algorithm>
#include <stdexcept>

#include <ATen/ATen.h>

#include "model/box_ops.h"

namespace lpdetr::train {
namespace {

void Require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument("criterion: " + message);
}

std::string Shape(const at::Tensor& t) {
  if (!t.defined()) return "undefined";
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? "," : "") + std::to_string(t.size(i));
  return s + "]";
}

void CheckTargets(const std::vector<TrainTarget>& targets, int64_t batch) {
  Require(static_cast<int64_t>(targets.size()) == batch,
          "got " + std::to_string(targets.size()) + " targets for a batch of " +
              std::to_string(batch));
  for (size_t i = 0; i < targets.size(); ++i) {
    const TrainTarget& t = targets[i];
    Require(t.labels.defined() && t.boxes.defined() && t.labels.dim() == 1 &&
                t.boxes.dim() == 2 && t.boxes.size(1) == 4 &&
                t.boxes.size(0) == t.labels.size(0),
            "target " + std::to_string(i) + " must hold labels [n] and boxes [n,4], got " +
                Shape(t.labels) + " and " + Shape(t.boxes));
  }
}

void CheckBranch(const at::Tensor& logits, const at::Tensor& boxes, const char* what) {
  Require(logits.defined() && boxes.defined() && logits.dim() == 3 && boxes.dim() == 3 &&
              boxes.size(2) == 4 && logits.size(0) == boxes.size(0) &&
              logits.size(1) == boxes.size(1),
          std::string(what) + ": expected logits [B,Q,C] and boxes [B,Q,4], got " +
              Shape(logits) + " and " + Shape(boxes));
}

// torchvision box_area of xyxy boxes.
at::Tensor BoxArea(const at::Tensor& xyxy) {
  return (xyxy.select(-1, 2) - xyxy.select(-1, 0)) * (xyxy.select(-1, 3) - xyxy.select(-1, 1));
}

// torchvision _box_inter_union on pairs (row i with row i): inter, union.
std::pair<at::Tensor, at::Tensor> InterUnion(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor area1 = BoxArea(a), area2 = BoxArea(b);
  at::Tensor lt = at::max(a.narrow(-1, 0, 2), b.narrow(-1, 0, 2));
  at::Tensor rb = at::min(a.narrow(-1, 2, 2), b.narrow(-1, 2, 2));
  at::Tensor wh = (rb - lt).clamp(0);
  at::Tensor inter = wh.select(-1, 0) * wh.select(-1, 1);
  at::Tensor uni = area1 + area2 - inter;
  return {inter, uni};
}

}  // namespace

at::Tensor MatchedBoxIou(const at::Tensor& pred_boxes, const at::Tensor& target_boxes) {
  at::NoGradGuard no_grad;
  auto [inter, uni] = InterUnion(BoxCxcywhToXyxy(pred_boxes.detach()),
                                 BoxCxcywhToXyxy(target_boxes.detach()));
  return inter / uni;
}

at::Tensor MatchedGiou(const at::Tensor& pred_boxes, const at::Tensor& target_boxes) {
  at::Tensor a = BoxCxcywhToXyxy(pred_boxes), b = BoxCxcywhToXyxy(target_boxes);
  auto [inter, uni] = InterUnion(a, b);
  at::Tensor iou = inter / uni;
  at::Tensor lti = at::min(a.narrow(-1, 0, 2), b.narrow(-1, 0, 2));
  at::Tensor rbi = at::max(a.narrow(-1, 2, 2), b.narrow(-1, 2, 2));
  at::Tensor whi = (rbi - lti).clamp(0);
  at::Tensor areai = whi.select(-1, 0) * whi.select(-1, 1);
  return iou - (areai - uni) / areai;
}

at::Tensor VarifocalClassLoss(const at::Tensor& logits, const at::Tensor& batch_index,
                              const at::Tensor& query_index, const at::Tensor& target_labels,
                              const at::Tensor& iou_score, double num_boxes, double alpha,
                              double gamma) {
  const int64_t batch = logits.size(0), queries = logits.size(1), classes = logits.size(2);
  const auto long_opts = logits.options().dtype(at::kLong);
  // Class index per query, `classes` = background; one-hot without the background column.
  at::Tensor target_classes = at::full({batch, queries}, classes, long_opts);
  target_classes.index_put_({batch_index, query_index}, target_labels.to(at::kLong));
  at::Tensor onehot = at::one_hot(target_classes, classes + 1).narrow(-1, 0, classes);
  at::Tensor score = at::zeros({batch, queries}, iou_score.options());
  score.index_put_({batch_index, query_index}, iou_score);

  at::Tensor prob = logits.sigmoid().detach();
  at::Tensor target_score = onehot * score.unsqueeze(-1);
  at::Tensor weight = prob.pow(gamma).mul(1.0 - alpha) * (1 - onehot) + target_score;
  at::Tensor loss = at::binary_cross_entropy_with_logits(logits, target_score, weight, {},
                                                         at::Reduction::None);
  // Mean over queries, summed, / num_boxes, times the query count (official order).
  return (loss.sum(1) / std::max<int64_t>(queries, 1)).sum() / num_boxes * queries;
}

// ---------------------------------------------------------------------------
HybridSetCriterion::HybridSetCriterion(CriterionOptions options)
    : options_(options), matcher_(options.matcher) {
  Require(options_.hybrid_assign >= 1,
          "hybrid_assign must be >= 1, got " + std::to_string(options_.hybrid_assign));
}

double HybridSetCriterion::NumBoxes(const std::vector<TrainTarget>& targets) {
  int64_t n = 0;
  for (const auto& t : targets) n += t.labels.size(0);
  // float32, clamped to >= 1, then read back as a Python float.
  return static_cast<double>(std::max(static_cast<float>(n), 1.0f));
}

std::vector<TrainTarget> HybridSetCriterion::TileTargets(const std::vector<TrainTarget>& targets,
                                                         int64_t times) {
  std::vector<TrainTarget> out;
  out.reserve(targets.size());
  for (const auto& t : targets) out.push_back({t.labels.repeat({times}), t.boxes.repeat({times, 1})});
  return out;
}

std::vector<ImageMatch> HybridSetCriterion::DenoisingMatches(
    const std::vector<TrainTarget>& targets, int64_t groups, int64_t group_size) {
  std::vector<ImageMatch> out;
  for (const auto& t : targets) {
    const int64_t n = t.labels.size(0);
    Require(n <= group_size || groups == 0,
            "denoising group size " + std::to_string(group_size) + " is smaller than " +
                std::to_string(n) + " targets");
    std::vector<int64_t> q, tg;
    for (int64_t g = 0; g < groups; ++g) {
      for (int64_t k = 0; k < n; ++k) {
        q.push_back(g * group_size + k);
        tg.push_back(k);
      }
    }
    ImageMatch m;
    m.query = at::tensor(q, at::TensorOptions().dtype(at::kLong)).reshape({-1});
    m.target = at::tensor(tg, at::TensorOptions().dtype(at::kLong)).reshape({-1});
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<ImageMatch> HybridSetCriterion::MatchBranch(
    const at::Tensor& logits, const at::Tensor& boxes,
    const std::vector<TrainTarget>& targets) const {
  at::NoGradGuard no_grad;
  return matcher_.Match(logits.detach(), boxes.detach(), targets);
}

BranchLosses HybridSetCriterion::BranchLoss(const at::Tensor& logits, const at::Tensor& boxes,
                                            const std::vector<TrainTarget>& targets,
                                            const std::vector<ImageMatch>& matches,
                                            double num_boxes) const {
  CheckBranch(logits, boxes, "BranchLoss");
  CheckTargets(targets, logits.size(0));
  Require(matches.size() == targets.size(),
          "got " + std::to_string(matches.size()) + " matches for " +
              std::to_string(targets.size()) + " images");
  const auto device = logits.device();
  const auto long_opts = at::TensorOptions().dtype(at::kLong).device(device);
  std::vector<at::Tensor> batch_idx, query_idx, tgt_boxes, tgt_labels;
  for (size_t i = 0; i < matches.size(); ++i) {
    const ImageMatch& m = matches[i];
    Require(m.query.dim() == 1 && m.target.dim() == 1 && m.query.size(0) == m.target.size(0),
            "match " + std::to_string(i) + " must hold query [n] and target [n], got " +
                Shape(m.query) + " and " + Shape(m.target));
    at::Tensor q = m.query.to(long_opts), t = m.target.to(long_opts);
    batch_idx.push_back(at::full_like(q, static_cast<int64_t>(i)));
    query_idx.push_back(q);
    tgt_boxes.push_back(targets[i].boxes.to(device, logits.scalar_type()).index_select(0, t));
    tgt_labels.push_back(targets[i].labels.to(long_opts).index_select(0, t));
  }
  at::Tensor bi = at::cat(batch_idx), qi = at::cat(query_idx);
  at::Tensor target_boxes = at::cat(tgt_boxes), target_labels = at::cat(tgt_labels);
  at::Tensor src_boxes = boxes.index({bi, qi});

  BranchLosses out;
  at::Tensor iou = MatchedBoxIou(src_boxes, target_boxes);
  out.loss_class = VarifocalClassLoss(logits, bi, qi, target_labels, iou, num_boxes,
                                      options_.focal_alpha, options_.focal_gamma);
  out.loss_bbox = at::l1_loss(src_boxes, target_boxes, at::Reduction::None).sum() / num_boxes;
  out.loss_giou = (1 - MatchedGiou(src_boxes, target_boxes)).sum() / num_boxes;
  return out;
}

void HybridSetCriterion::AddWeighted(const BranchLosses& b, const std::string& suffix,
                                     NamedLosses* out) const {
  out->emplace_back("loss_class" + suffix, b.loss_class * options_.weight_class);
  out->emplace_back("loss_bbox" + suffix, b.loss_bbox * options_.weight_bbox);
  out->emplace_back("loss_giou" + suffix, b.loss_giou * options_.weight_giou);
}

void HybridSetCriterion::SetBranch(const at::Tensor& layer_logits, const at::Tensor& layer_boxes,
                                   const at::Tensor& enc_logits, const at::Tensor& enc_boxes,
                                   const std::vector<TrainTarget>& targets,
                                   const std::string& suffix, NamedLosses* out,
                                   std::vector<ImageMatch>* final_matches) const {
  Require(layer_logits.defined() && layer_logits.dim() == 4 && layer_boxes.defined() &&
              layer_boxes.dim() == 4 && layer_logits.size(0) >= 1 &&
              layer_boxes.size(0) == layer_logits.size(0),
          "layer outputs must be [L,B,Q,C] and [L,B,Q,4], got " + Shape(layer_logits) +
              " and " + Shape(layer_boxes));
  const double num_boxes = NumBoxes(targets);
  const int64_t layers = layer_logits.size(0);
  auto run = [&](const at::Tensor& logits, const at::Tensor& boxes, const std::string& name,
                 std::vector<ImageMatch>* keep) {
    CheckBranch(logits, boxes, name.c_str());
    std::vector<ImageMatch> matches = MatchBranch(logits, boxes, targets);
    AddWeighted(BranchLoss(logits, boxes, targets, matches, num_boxes), name, out);
    if (keep) *keep = std::move(matches);
  };
  run(layer_logits[layers - 1], layer_boxes[layers - 1], suffix, final_matches);
  for (int64_t l = 0; l + 1 < layers; ++l) {
    run(layer_logits[l], layer_boxes[l], "_" + std::to_string(l) + suffix, nullptr);
  }
  if (enc_logits.defined()) run(enc_logits, enc_boxes, "_enc" + suffix, nullptr);
}

CriterionResult HybridSetCriterion::operator()(const DetectorOutput& out,
                                               const std::vector<TrainTarget>& targets) const {
  CheckBranch(out.pred_logits, out.pred_boxes, "pred");
  CheckTargets(targets, out.pred_logits.size(0));
  CriterionResult r;
  r.num_boxes = NumBoxes(targets);

  // One-to-one: last layer, auxiliary layers, encoder top-k.
  SetBranch(out.layer_logits, out.layer_boxes, out.enc_logits, out.enc_boxes, targets, "",
            &r.losses, &r.final_matches);

  // Denoising: fixed pairs, num_boxes x groups.
  if (out.dn_groups > 0) {
    r.dn_groups = out.dn_groups;
    r.num_boxes_dn = r.num_boxes * static_cast<double>(out.dn_groups);
    const int64_t layers = out.layer_logits.size(0);
    at::Tensor logits = out.dn_layer_logits, boxes = out.dn_layer_boxes;
    if (!logits.defined()) {  // no denoising queries (no targets): empty outputs
      const int64_t b = out.pred_logits.size(0), c = out.pred_logits.size(2);
      logits = at::zeros({layers, b, 0, c}, out.pred_logits.options());
      boxes = at::zeros({layers, b, 0, 4}, out.pred_boxes.options());
    }
    Require(logits.dim() == 4 && logits.size(0) == layers &&
                logits.size(2) == out.dn_groups * out.dn_group_size,
            "denoising outputs " + Shape(logits) + " do not hold " +
                std::to_string(out.dn_groups) + " groups of " +
                std::to_string(out.dn_group_size) + " queries for " + std::to_string(layers) +
                " layers");
    std::vector<ImageMatch> dn = DenoisingMatches(targets, out.dn_groups, out.dn_group_size);
    AddWeighted(BranchLoss(logits[layers - 1], boxes[layers - 1], targets, dn, r.num_boxes_dn),
                "_dn", &r.losses);
    for (int64_t l = 0; l + 1 < layers; ++l) {
      AddWeighted(BranchLoss(logits[l], boxes[l], targets, dn, r.num_boxes_dn),
                  "_dn_" + std::to_string(l), &r.losses);
    }
  }

  // Hybrid one-to-many branch: the one-to-one terms against tiled targets.
  if (out.hybrid_layer_logits.defined()) {
    std::vector<TrainTarget> tiled = TileTargets(targets, options_.hybrid_assign);
    r.num_boxes_hybrid = NumBoxes(tiled);
    SetBranch(out.hybrid_layer_logits, out.hybrid_layer_boxes, out.hybrid_enc_logits,
              out.hybrid_enc_boxes, tiled, "_hybrid", &r.losses, nullptr);
  }

  // Sum in order (Python's sum over the loss dict).
  for (const auto& [name, value] : r.losses) {
    r.total = r.total.defined() ? r.total + value : value;
  }
  return r;
}

}  // namespace lpdetr::train

// Tests of HybridSetCriterion (train/criterion.h): each loss term against a
// plain double computation of its formula on small cases, the gradient the
// class term passes to the logits (and not to the boxes), the normalisers
// (num_boxes clamped to 1, x groups for denoising, x hybrid_assign for the
// hybrid branch), the fixed denoising pairs, target tiling, and the names
// and order of the full loss dict.
#include "train/criterion.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace lpdetr::train {
namespace {

struct Box {
  double cx, cy, w, h;
};

double At(const at::Tensor& t, std::vector<int64_t> idx) {
  at::Tensor v = t.detach().to(at::kDouble);
  for (int64_t i : idx) v = v[i];
  return v.item<double>();
}

Box BoxAt(const at::Tensor& boxes, std::vector<int64_t> idx) {
  at::Tensor v = boxes.detach().to(at::kDouble);
  for (int64_t i : idx) v = v[i];
  return {v[0].item<double>(), v[1].item<double>(), v[2].item<double>(), v[3].item<double>()};
}

// IoU and GIoU of two cxcywh boxes in double, straight from the definitions.
double Iou(const Box& a, const Box& b) {
  const double ax0 = a.cx - a.w / 2, ax1 = a.cx + a.w / 2, ay0 = a.cy - a.h / 2,
               ay1 = a.cy + a.h / 2;
  const double bx0 = b.cx - b.w / 2, bx1 = b.cx + b.w / 2, by0 = b.cy - b.h / 2,
               by1 = b.cy + b.h / 2;
  const double iw = std::max(0.0, std::min(ax1, bx1) - std::max(ax0, bx0));
  const double ih = std::max(0.0, std::min(ay1, by1) - std::max(ay0, by0));
  const double inter = iw * ih;
  return inter / (a.w * a.h + b.w * b.h - inter);
}

double Giou(const Box& a, const Box& b) {
  const double ax0 = a.cx - a.w / 2, ax1 = a.cx + a.w / 2, ay0 = a.cy - a.h / 2,
               ay1 = a.cy + a.h / 2;
  const double bx0 = b.cx - b.w / 2, bx1 = b.cx + b.w / 2, by0 = b.cy - b.h / 2,
               by1 = b.cy + b.h / 2;
  const double iw = std::max(0.0, std::min(ax1, bx1) - std::max(ax0, bx0));
  const double ih = std::max(0.0, std::min(ay1, by1) - std::max(ay0, by0));
  const double inter = iw * ih, uni = a.w * a.h + b.w * b.h - inter;
  const double cw = std::max(ax1, bx1) - std::min(ax0, bx0);
  const double ch = std::max(ay1, by1) - std::min(ay0, by0);
  return inter / uni - (cw * ch - uni) / (cw * ch);
}

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// BCE with logits of x against target s.
double Bce(double x, double s) {
  return std::max(x, 0.0) - x * s + std::log1p(std::exp(-std::abs(x)));
}

// One matched (image, query) -> (label, score) assignment for the double reference.
struct Positive {
  int64_t image, query, label;
  double score;
};

// The varifocal class term in double: sum over images, queries, classes of
// BCE(x, s) * (0.75 p^2 (1 - onehot) + s), / num_boxes.
double VarifocalReference(const at::Tensor& logits, const std::vector<Positive>& pos,
                          double num_boxes) {
  const int64_t b = logits.size(0), q = logits.size(1), c = logits.size(2);
  double total = 0;
  for (int64_t i = 0; i < b; ++i) {
    for (int64_t j = 0; j < q; ++j) {
      for (int64_t k = 0; k < c; ++k) {
        double onehot = 0, s = 0;
        for (const auto& p : pos) {
          if (p.image == i && p.query == j && p.label == k) {
            onehot = 1;
            s = p.score;
          }
        }
        const double x = At(logits, {i, j, k}), prob = Sigmoid(x);
        total += Bce(x, s) * (0.75 * prob * prob * (1 - onehot) + s);
      }
    }
  }
  return total / num_boxes;
}

at::Tensor Long(std::vector<int64_t> v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong)).reshape({-1});
}

at::Tensor BoxesOf(const std::vector<Box>& boxes) {
  at::Tensor t = at::empty({static_cast<int64_t>(boxes.size()), 4}, at::kFloat);
  for (size_t i = 0; i < boxes.size(); ++i) {
    t[i][0] = boxes[i].cx;
    t[i][1] = boxes[i].cy;
    t[i][2] = boxes[i].w;
    t[i][3] = boxes[i].h;
  }
  return t;
}

// Random valid cxcywh boxes of shape `sizes` + [4].
at::Tensor RandomBoxes(std::vector<int64_t> sizes) {
  sizes.push_back(4);
  at::Tensor r = at::rand(sizes);
  at::Tensor centre = r.narrow(-1, 0, 2) * 0.5 + 0.25;
  at::Tensor size = r.narrow(-1, 2, 2) * 0.3 + 0.1;
  return at::cat({centre, size}, -1);
}

TrainTarget Target(std::vector<int64_t> labels, const std::vector<Box>& boxes) {
  return {Long(labels), BoxesOf(boxes)};
}

// ---------------------------------------------------------------------------
TEST(CriterionBoxOps, IouAndGiouOfMatchedPairsMatchTheDefinitions) {
  const std::vector<Box> a = {{0.5, 0.5, 0.4, 0.2},   // overlaps b0
                              {0.2, 0.2, 0.1, 0.1},   // disjoint from b1
                              {0.5, 0.5, 0.6, 0.6},   // contains b2
                              {0.3, 0.6, 0.2, 0.4}};  // identical to b3
  const std::vector<Box> b = {{0.6, 0.55, 0.3, 0.3},
                              {0.8, 0.7, 0.2, 0.3},
                              {0.45, 0.5, 0.2, 0.1},
                              {0.3, 0.6, 0.2, 0.4}};
  at::Tensor iou = MatchedBoxIou(BoxesOf(a), BoxesOf(b));
  at::Tensor giou = MatchedGiou(BoxesOf(a), BoxesOf(b));
  ASSERT_EQ(iou.sizes(), (std::vector<int64_t>{4}));
  ASSERT_EQ(giou.sizes(), (std::vector<int64_t>{4}));
  for (int64_t i = 0; i < 4; ++i) {
    SCOPED_TRACE(i);
    EXPECT_NEAR(At(iou, {i}), Iou(a[i], b[i]), 1e-6);
    EXPECT_NEAR(At(giou, {i}), Giou(a[i], b[i]), 1e-6);
  }
  EXPECT_EQ(At(iou, {1}), 0.0);
  EXPECT_LT(At(giou, {1}), 0.0);
  EXPECT_NEAR(At(iou, {3}), 1.0, 1e-6);
  EXPECT_NEAR(At(giou, {3}), 1.0, 1e-6);
}

TEST(CriterionBoxOps, IouIsDetachedAndGiouIsDifferentiable) {
  at::Tensor pred = BoxesOf({{0.5, 0.5, 0.4, 0.2}}).requires_grad_(true);
  at::Tensor tgt = BoxesOf({{0.6, 0.55, 0.3, 0.3}});
  EXPECT_FALSE(MatchedBoxIou(pred, tgt).requires_grad());
  MatchedGiou(pred, tgt).sum().backward();
  ASSERT_TRUE(pred.grad().defined());
  EXPECT_GT(pred.grad().abs().sum().item<double>(), 0.0);
}

// ---------------------------------------------------------------------------
TEST(CriterionClassLoss, VarifocalTermMatchesTheDoubleFormula) {
  at::manual_seed(3);
  at::Tensor logits = (at::randn({2, 3, 4}) * 2).requires_grad_(true);
  const std::vector<Positive> pos = {{0, 2, 1, 0.6}, {1, 0, 3, 0.25}, {1, 1, 0, 0.9}};
  const double num_boxes = 3;
  at::Tensor loss = VarifocalClassLoss(logits, Long({0, 1, 1}), Long({2, 0, 1}),
                                       Long({1, 3, 0}), at::tensor({0.6f, 0.25f, 0.9f}),
                                       num_boxes, 0.25, 2.0);
  const double want = VarifocalReference(logits, pos, num_boxes);
  EXPECT_NEAR(loss.item<double>(), want, 1e-5 * want);

  // p is detached inside the weight: d/dx = w (sigmoid(x) - s) / num_boxes.
  loss.backward();
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 3; ++j) {
      for (int64_t k = 0; k < 4; ++k) {
        double onehot = 0, s = 0;
        for (const auto& p : pos) {
          if (p.image == i && p.query == j && p.label == k) onehot = 1, s = p.score;
        }
        const double x = At(logits, {i, j, k}), prob = Sigmoid(x);
        const double w = 0.75 * prob * prob * (1 - onehot) + s;
        EXPECT_NEAR(At(logits.grad(), {i, j, k}), w * (prob - s) / num_boxes, 1e-6)
            << i << "," << j << "," << k;
      }
    }
  }
}

TEST(CriterionClassLoss, OnlyBackgroundRowsWithoutMatches) {
  at::Tensor logits = at::tensor({-1.0f, 0.5f, 2.0f, -3.0f}).reshape({1, 2, 2});
  at::Tensor loss = VarifocalClassLoss(logits, Long({}), Long({}), Long({}),
                                       at::zeros({0}), 1.0, 0.25, 2.0);
  EXPECT_NEAR(loss.item<double>(), VarifocalReference(logits, {}, 1.0), 1e-6);
}

// ---------------------------------------------------------------------------
TEST(CriterionBranch, TermsOfOneBranchMatchTheDoubleFormulas) {
  at::manual_seed(5);
  const int64_t b = 2, q = 4, c = 3;
  at::Tensor logits = at::randn({b, q, c}).requires_grad_(true);
  at::Tensor boxes = RandomBoxes({b, q}).requires_grad_(true);
  std::vector<TrainTarget> targets = {
      Target({2, 0}, {{0.4, 0.5, 0.3, 0.2}, {0.6, 0.3, 0.2, 0.2}}),
      Target({1}, {{0.5, 0.5, 0.4, 0.4}})};
  std::vector<ImageMatch> matches = {{Long({1, 3}), Long({1, 0})}, {Long({2}), Long({0})}};
  const double num_boxes = 3;
  HybridSetCriterion criterion;
  BranchLosses got = criterion.BranchLoss(logits, boxes, targets, matches, num_boxes);

  // Matched pairs: (image, query, target).
  const std::vector<std::array<int64_t, 3>> pairs = {{0, 1, 1}, {0, 3, 0}, {1, 2, 0}};
  double l1 = 0, giou = 0;
  std::vector<Positive> pos;
  for (const auto& [i, j, t] : pairs) {
    const Box p = BoxAt(boxes, {i, j}), g = BoxAt(targets[i].boxes, {t});
    l1 += std::abs(p.cx - g.cx) + std::abs(p.cy - g.cy) + std::abs(p.w - g.w) +
          std::abs(p.h - g.h);
    giou += 1 - Giou(p, g);
    pos.push_back({i, j, static_cast<int64_t>(At(targets[i].labels, {t})), Iou(p, g)});
  }
  EXPECT_NEAR(got.loss_bbox.item<double>(), l1 / num_boxes, 1e-6);
  EXPECT_NEAR(got.loss_giou.item<double>(), giou / num_boxes, 1e-6);
  const double cls = VarifocalReference(logits, pos, num_boxes);
  EXPECT_NEAR(got.loss_class.item<double>(), cls, 1e-5 * cls);

  // The IoU target is detached: the class term sends no gradient to the boxes.
  got.loss_class.backward();
  EXPECT_TRUE(!boxes.grad().defined() || boxes.grad().abs().sum().item<double>() == 0.0);
  EXPECT_GT(logits.grad().abs().sum().item<double>(), 0.0);
}

TEST(CriterionBranch, ImagesWithoutTargetsContributeOnlyBackground) {
  at::manual_seed(6);
  at::Tensor logits = at::randn({2, 3, 2});
  at::Tensor boxes = RandomBoxes({2, 3});
  std::vector<TrainTarget> targets = {Target({}, {}), Target({}, {})};
  HybridSetCriterion criterion;
  std::vector<ImageMatch> matches = criterion.MatchBranch(logits, boxes, targets);
  ASSERT_EQ(matches.size(), 2u);
  EXPECT_EQ(matches[0].query.numel(), 0);
  const double nb = HybridSetCriterion::NumBoxes(targets);
  EXPECT_EQ(nb, 1.0);
  BranchLosses got = criterion.BranchLoss(logits, boxes, targets, matches, nb);
  EXPECT_EQ(got.loss_bbox.item<double>(), 0.0);
  EXPECT_EQ(got.loss_giou.item<double>(), 0.0);
  const double cls = VarifocalReference(logits, {}, 1.0);
  EXPECT_NEAR(got.loss_class.item<double>(), cls, 1e-5 * cls);
}

// ---------------------------------------------------------------------------
TEST(CriterionHelpers, NumBoxesCountsAllTargetsClampedToOne) {
  EXPECT_EQ(HybridSetCriterion::NumBoxes({Target({}, {})}), 1.0);
  EXPECT_EQ(HybridSetCriterion::NumBoxes(
                {Target({1, 2}, {{0.5, 0.5, 0.1, 0.1}, {0.5, 0.5, 0.2, 0.2}}),
                 Target({0}, {{0.5, 0.5, 0.1, 0.1}})}),
            3.0);
}

TEST(CriterionHelpers, TileTargetsRepeatsTheWholeList) {
  std::vector<TrainTarget> t = {
      Target({4, 7}, {{0.1, 0.2, 0.3, 0.4}, {0.5, 0.6, 0.2, 0.1}}), Target({}, {})};
  std::vector<TrainTarget> tiled = HybridSetCriterion::TileTargets(t, 3);
  ASSERT_EQ(tiled.size(), 2u);
  ASSERT_EQ(tiled[0].labels.size(0), 6);
  ASSERT_EQ(tiled[0].boxes.sizes(), (std::vector<int64_t>{6, 4}));
  for (int64_t k = 0; k < 6; ++k) {
    EXPECT_EQ(At(tiled[0].labels, {k}), k % 2 == 0 ? 4 : 7);
    EXPECT_EQ(At(tiled[0].boxes, {k, 0}), At(t[0].boxes, {k % 2, 0}));
  }
  EXPECT_EQ(tiled[1].labels.size(0), 0);
  EXPECT_EQ(HybridSetCriterion::NumBoxes(tiled), 6.0);
}

TEST(CriterionHelpers, DenoisingPairsArePositivesOfEachGroup) {
  std::vector<TrainTarget> t = {
      Target({1, 2, 3}, {{0.5, 0.5, 0.1, 0.1}, {0.5, 0.5, 0.2, 0.2}, {0.4, 0.4, 0.1, 0.1}}),
      Target({0}, {{0.5, 0.5, 0.1, 0.1}}), Target({}, {})};
  // max_gt = 3: groups of 6 queries (3 positives, 3 negatives).
  std::vector<ImageMatch> m = HybridSetCriterion::DenoisingMatches(t, 2, 6);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_TRUE(m[0].query.equal(Long({0, 1, 2, 6, 7, 8})));
  EXPECT_TRUE(m[0].target.equal(Long({0, 1, 2, 0, 1, 2})));
  EXPECT_TRUE(m[1].query.equal(Long({0, 6})));
  EXPECT_TRUE(m[1].target.equal(Long({0, 0})));
  EXPECT_EQ(m[2].query.numel(), 0);
  EXPECT_THROW(HybridSetCriterion::DenoisingMatches(t, 2, 2), std::invalid_argument);
}

// ---------------------------------------------------------------------------
// A synthetic training output: L layers, B = 2 images with 1 and 2 targets,
// Q one-to-one queries, G denoising groups of 2 * max_gt queries, a hybrid
// branch of P queries.
struct Synthetic {
  DetectorOutput out;
  std::vector<TrainTarget> targets;
};

Synthetic MakeSynthetic(int64_t layers, int64_t q, int64_t c, int64_t groups, int64_t p) {
  at::manual_seed(11);
  Synthetic s;
  s.targets = {Target({2}, {{0.45, 0.5, 0.3, 0.25}}),
               Target({0, 1}, {{0.3, 0.35, 0.2, 0.3}, {0.65, 0.6, 0.25, 0.2}})};
  const int64_t b = 2, group_size = 4;
  DetectorOutput& o = s.out;
  o.layer_logits = at::randn({layers, b, q, c});
  o.layer_boxes = RandomBoxes({layers, b, q});
  o.pred_logits = o.layer_logits[layers - 1];
  o.pred_boxes = o.layer_boxes[layers - 1];
  o.enc_logits = at::randn({b, q, c});
  o.enc_boxes = RandomBoxes({b, q});
  o.dn_groups = groups;
  o.dn_group_size = group_size;
  o.dn_layer_logits = at::randn({layers, b, groups * group_size, c});
  o.dn_layer_boxes = RandomBoxes({layers, b, groups * group_size});
  o.hybrid_layer_logits = at::randn({layers, b, p, c});
  o.hybrid_layer_boxes = RandomBoxes({layers, b, p});
  o.hybrid_enc_logits = at::randn({b, p, c});
  o.hybrid_enc_boxes = RandomBoxes({b, p});
  return s;
}

// Sum of |pred - target| over matched pairs, in double.
double L1Sum(const at::Tensor& boxes, const std::vector<TrainTarget>& targets,
             const std::vector<ImageMatch>& matches) {
  double sum = 0;
  for (size_t i = 0; i < matches.size(); ++i) {
    for (int64_t k = 0; k < matches[i].query.numel(); ++k) {
      const int64_t j = static_cast<int64_t>(At(matches[i].query, {k}));
      const int64_t t = static_cast<int64_t>(At(matches[i].target, {k}));
      const Box a = BoxAt(boxes, {static_cast<int64_t>(i), j}), g = BoxAt(targets[i].boxes, {t});
      sum += std::abs(a.cx - g.cx) + std::abs(a.cy - g.cy) + std::abs(a.w - g.w) +
             std::abs(a.h - g.h);
    }
  }
  return sum;
}

TEST(CriterionAllTerms, NamesAndOrderFollowTheOfficialLossDict) {
  Synthetic s = MakeSynthetic(/*layers=*/3, /*q=*/6, /*c=*/3, /*groups=*/2, /*p=*/20);
  HybridSetCriterion criterion;
  CriterionResult r = criterion(s.out, s.targets);
  std::vector<std::string> want;
  const std::vector<std::string> one_to_one = {"", "_0", "_1", "_enc"};
  for (const auto& suffix : one_to_one) {
    for (const char* term : {"loss_class", "loss_bbox", "loss_giou"}) want.push_back(term + suffix);
  }
  for (const std::string suffix : {"_dn", "_dn_0", "_dn_1"}) {
    for (const char* term : {"loss_class", "loss_bbox", "loss_giou"}) want.push_back(term + suffix);
  }
  for (const auto& suffix : one_to_one) {
    for (const char* term : {"loss_class", "loss_bbox", "loss_giou"}) {
      want.push_back(term + suffix + "_hybrid");
    }
  }
  std::vector<std::string> got;
  for (const auto& [name, value] : r.losses) {
    got.push_back(name);
    EXPECT_EQ(value.dim(), 0) << name;
    EXPECT_TRUE(std::isfinite(value.item<double>())) << name;
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(got.size(), 33u);

  // The total is the sum of the weighted terms.
  double sum = 0;
  for (const auto& [name, value] : r.losses) sum += value.item<double>();
  EXPECT_NEAR(r.total.item<double>(), sum, 1e-5 * sum);
}

TEST(CriterionAllTerms, WeightsAndNormalisersOfEachBranch) {
  Synthetic s = MakeSynthetic(/*layers=*/2, /*q=*/7, /*c=*/3, /*groups=*/3, /*p=*/20);
  CriterionOptions options;
  options.hybrid_assign = 4;
  HybridSetCriterion criterion(options);
  CriterionResult r = criterion(s.out, s.targets);
  std::map<std::string, double> loss;
  for (const auto& [name, value] : r.losses) loss[name] = value.item<double>();
  EXPECT_EQ(r.num_boxes, 3.0);
  EXPECT_EQ(r.num_boxes_dn, 9.0);       // x 3 groups
  EXPECT_EQ(r.num_boxes_hybrid, 12.0);  // x hybrid_assign
  EXPECT_EQ(r.dn_groups, 3);

  // One-to-one last layer: weight 5 on L1 / 3 boxes, with the matcher's assignment,
  // which is also the reported final match.
  std::vector<ImageMatch> m = criterion.MatchBranch(s.out.pred_logits, s.out.pred_boxes, s.targets);
  ASSERT_EQ(r.final_matches.size(), 2u);
  for (size_t i = 0; i < m.size(); ++i) {
    EXPECT_TRUE(r.final_matches[i].query.equal(m[i].query));
    EXPECT_TRUE(r.final_matches[i].target.equal(m[i].target));
    EXPECT_EQ(m[i].query.numel(), s.targets[i].labels.numel());
  }
  EXPECT_NEAR(loss["loss_bbox"], 5 * L1Sum(s.out.pred_boxes, s.targets, m) / 3, 1e-5);

  // Auxiliary layer 0 and encoder: own matching.
  std::vector<ImageMatch> m0 =
      criterion.MatchBranch(s.out.layer_logits[0], s.out.layer_boxes[0], s.targets);
  EXPECT_NEAR(loss["loss_bbox_0"], 5 * L1Sum(s.out.layer_boxes[0], s.targets, m0) / 3, 1e-5);
  std::vector<ImageMatch> me = criterion.MatchBranch(s.out.enc_logits, s.out.enc_boxes, s.targets);
  EXPECT_NEAR(loss["loss_bbox_enc"], 5 * L1Sum(s.out.enc_boxes, s.targets, me) / 3, 1e-5);

  // Denoising: fixed positives g * 4 + t, normalised by 3 boxes x 3 groups.
  std::vector<ImageMatch> dn = HybridSetCriterion::DenoisingMatches(s.targets, 3, 4);
  EXPECT_NEAR(loss["loss_bbox_dn"], 5 * L1Sum(s.out.dn_layer_boxes[1], s.targets, dn) / 9, 1e-5);
  EXPECT_NEAR(loss["loss_bbox_dn_0"], 5 * L1Sum(s.out.dn_layer_boxes[0], s.targets, dn) / 9,
              1e-5);
  BranchLosses dn_terms =
      criterion.BranchLoss(s.out.dn_layer_logits[1], s.out.dn_layer_boxes[1], s.targets, dn, 9);
  EXPECT_NEAR(loss["loss_class_dn"], dn_terms.loss_class.item<double>(), 1e-6);
  EXPECT_NEAR(loss["loss_giou_dn"], 2 * dn_terms.loss_giou.item<double>(), 1e-6);

  // Hybrid: targets tiled 4 times, every tiled target matched, / 12.
  std::vector<TrainTarget> tiled = HybridSetCriterion::TileTargets(s.targets, 4);
  std::vector<ImageMatch> mh =
      criterion.MatchBranch(s.out.hybrid_layer_logits[1], s.out.hybrid_layer_boxes[1], tiled);
  EXPECT_EQ(mh[1].query.numel(), 8);
  EXPECT_NEAR(loss["loss_bbox_hybrid"],
              5 * L1Sum(s.out.hybrid_layer_boxes[1], tiled, mh) / 12, 1e-5);
  std::vector<ImageMatch> mhe =
      criterion.MatchBranch(s.out.hybrid_enc_logits, s.out.hybrid_enc_boxes, tiled);
  EXPECT_NEAR(loss["loss_bbox_enc_hybrid"],
              5 * L1Sum(s.out.hybrid_enc_boxes, tiled, mhe) / 12, 1e-5);
  EXPECT_EQ(loss.count("loss_bbox_dn_hybrid"), 0u);
}

TEST(CriterionAllTerms, WithoutDenoisingOrHybridOutputsThoseTermsAreAbsent) {
  Synthetic s = MakeSynthetic(2, 5, 3, 2, 10);
  s.out.dn_groups = 0;
  s.out.dn_layer_logits = s.out.dn_layer_boxes = at::Tensor();
  s.out.hybrid_layer_logits = at::Tensor();
  CriterionResult r = HybridSetCriterion()(s.out, s.targets);
  EXPECT_EQ(r.losses.size(), 9u);  // last layer, 1 auxiliary layer, encoder
  EXPECT_EQ(r.losses.back().first, "loss_giou_enc");
}

TEST(CriterionAllTerms, GradientsReachEveryBranch) {
  Synthetic s = MakeSynthetic(2, 6, 3, 2, 12);
  for (at::Tensor* t : {&s.out.layer_logits, &s.out.layer_boxes, &s.out.enc_logits,
                        &s.out.enc_boxes, &s.out.dn_layer_logits, &s.out.dn_layer_boxes,
                        &s.out.hybrid_layer_logits, &s.out.hybrid_layer_boxes,
                        &s.out.hybrid_enc_logits, &s.out.hybrid_enc_boxes}) {
    t->requires_grad_(true);
  }
  s.out.pred_logits = s.out.layer_logits[1];
  s.out.pred_boxes = s.out.layer_boxes[1];
  CriterionResult r = HybridSetCriterion()(s.out, s.targets);
  r.total.backward();
  for (at::Tensor* t : {&s.out.layer_logits, &s.out.layer_boxes, &s.out.enc_logits,
                        &s.out.enc_boxes, &s.out.dn_layer_logits, &s.out.dn_layer_boxes,
                        &s.out.hybrid_layer_logits, &s.out.hybrid_layer_boxes,
                        &s.out.hybrid_enc_logits, &s.out.hybrid_enc_boxes}) {
    ASSERT_TRUE(t->grad().defined());
    EXPECT_GT(t->grad().abs().sum().item<double>(), 0.0);
  }
  // Denoising negatives (second half of each group) get only background gradient
  // on the logits and no box gradient.
  at::Tensor neg_box_grad = s.out.dn_layer_boxes.grad().narrow(2, 2, 2);
  EXPECT_EQ(neg_box_grad.abs().sum().item<double>(), 0.0);
}

TEST(CriterionAllTerms, InconsistentInputsAreRejected) {
  Synthetic s = MakeSynthetic(2, 5, 3, 2, 10);
  HybridSetCriterion criterion;
  std::vector<TrainTarget> one = {s.targets[0]};
  try {
    criterion(s.out, one);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("1 targets for a batch of 2"), std::string::npos)
        << e.what();
  }
  std::vector<TrainTarget> bad = s.targets;
  bad[1].boxes = at::zeros({2, 3});
  EXPECT_THROW(criterion(s.out, bad), std::invalid_argument);
  Synthetic t = MakeSynthetic(2, 5, 3, 2, 10);
  t.out.dn_group_size = 3;  // does not match the denoising outputs
  EXPECT_THROW(criterion(t.out, t.targets), std::invalid_argument);
  CriterionOptions options;
  options.hybrid_assign = 0;
  EXPECT_THROW(HybridSetCriterion{options}, std::invalid_argument);
}

}  // namespace
}  // namespace lpdetr::train

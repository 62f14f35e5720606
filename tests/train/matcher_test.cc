// Tests of the Hungarian matcher: its cost against a plain double
// computation of the formula, the torchvision-style GIoU of model/box_ops.h,
// the assignments it picks (obvious cases, brute force, empty and
// rectangular cases, batches, bad inputs), and (MatcherParity.*) the cost and
// assignment of the reference matcher written in Python torch + scipy on the
// cases tests/train/official_matcher_cases.py writes; ctest runs that script
// first and passes the file in LPDETR_MATCHER_CASES.
#include "train/matcher.h"

#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/box_ops.h"

namespace lpdetr::train {
namespace {

using Matrix = std::vector<std::vector<double>>;

at::Tensor FromRows(const Matrix& rows, at::ScalarType dtype) {
  const int64_t n = static_cast<int64_t>(rows.size());
  const int64_t m = n > 0 ? static_cast<int64_t>(rows[0].size()) : 0;
  at::Tensor t = at::empty({n, m}, at::kDouble);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < m; ++j) t[i][j] = rows[i][j];
  }
  return t.to(dtype);
}

TrainTarget MakeTarget(const std::vector<int64_t>& labels, const Matrix& boxes,
                       at::ScalarType dtype = at::kFloat) {
  TrainTarget target;
  target.labels = at::tensor(labels, at::kLong);
  target.boxes = boxes.empty() ? at::empty({0, 4}, dtype) : FromRows(boxes, dtype);
  return target;
}

std::vector<int64_t> ToVector(const at::Tensor& t) {
  at::Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// ---- the cost formula in plain double arithmetic --------------------------

double Sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

double FocalCost(double logit, double alpha, double gamma) {
  const double p = Sigmoid(logit);
  const double pos = alpha * std::pow(1 - p, gamma) * -std::log(p + 1e-6);
  const double neg = (1 - alpha) * std::pow(p, gamma) * -std::log(1 - p + 1e-6);
  return pos - neg;
}

// GIoU of two cxcywh boxes through their corners.
double Giou(const std::vector<double>& a, const std::vector<double>& b) {
  const double ax1 = a[0] - a[2] / 2, ay1 = a[1] - a[3] / 2, ax2 = a[0] + a[2] / 2,
               ay2 = a[1] + a[3] / 2;
  const double bx1 = b[0] - b[2] / 2, by1 = b[1] - b[3] / 2, bx2 = b[0] + b[2] / 2,
               by2 = b[1] + b[3] / 2;
  const double iw = std::max(0.0, std::min(ax2, bx2) - std::max(ax1, bx1));
  const double ih = std::max(0.0, std::min(ay2, by2) - std::max(ay1, by1));
  const double inter = iw * ih;
  const double uni = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter;
  const double ew = std::max(ax2, bx2) - std::min(ax1, bx1);
  const double eh = std::max(ay2, by2) - std::min(ay1, by1);
  return inter / uni - (ew * eh - uni) / (ew * eh);
}

Matrix ReferenceCost(const Matrix& logits, const Matrix& boxes,
                     const std::vector<int64_t>& labels, const Matrix& target_boxes,
                     const MatcherOptions& o) {
  Matrix cost(logits.size(), std::vector<double>(labels.size()));
  for (size_t q = 0; q < logits.size(); ++q) {
    for (size_t t = 0; t < labels.size(); ++t) {
      double l1 = 0;
      for (int k = 0; k < 4; ++k) l1 += std::abs(boxes[q][k] - target_boxes[t][k]);
      cost[q][t] = o.cost_bbox * l1 +
                   o.cost_class * FocalCost(logits[q][labels[t]], o.focal_alpha, o.focal_gamma) -
                   o.cost_giou * Giou(boxes[q], target_boxes[t]);
    }
  }
  return cost;
}

// Three queries, four classes, two targets.
struct SmallCase {
  Matrix logits = {{-2.0, 0.5, 1.5, -0.3},  //
                   {3.0, -1.0, 0.0, 2.2},   //
                   {-0.7, -4.0, 2.5, 0.1}};
  Matrix boxes = {{0.30, 0.40, 0.20, 0.30},  //
                  {0.55, 0.50, 0.40, 0.35},  //
                  {0.70, 0.20, 0.10, 0.15}};
  std::vector<int64_t> labels = {2, 0};
  Matrix target_boxes = {{0.32, 0.38, 0.25, 0.28},  //
                         {0.80, 0.75, 0.30, 0.20}};
};

TEST(MatcherCost, EqualsTheFormulaInDouble) {
  const SmallCase c;
  const MatcherOptions options;
  const Matrix expected = ReferenceCost(c.logits, c.boxes, c.labels, c.target_boxes, options);
  const HungarianMatcher matcher(options);
  for (at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    SCOPED_TRACE(c10::toString(dtype));
    const at::Tensor cost = matcher.Cost(FromRows(c.logits, dtype), FromRows(c.boxes, dtype),
                                         MakeTarget(c.labels, c.target_boxes, dtype));
    ASSERT_EQ(cost.sizes(), (at::IntArrayRef{3, 2}));
    EXPECT_EQ(cost.scalar_type(), dtype);
    // float32 rounds each of ~30 operations; the 1e-6 inside the logs is
    // applied in float32 too.
    const double tolerance = dtype == at::kDouble ? 1e-12 : 2e-5;
    for (int q = 0; q < 3; ++q) {
      for (int t = 0; t < 2; ++t) {
        EXPECT_NEAR(cost[q][t].item<double>(), expected[q][t], tolerance) << q << "," << t;
      }
    }
  }
}

TEST(MatcherCost, OptionsWeighTheTerms) {
  const SmallCase c;
  MatcherOptions options;
  options.cost_class = 0.5;
  options.cost_bbox = 1.0;
  options.cost_giou = 3.0;
  options.focal_alpha = 0.4;
  options.focal_gamma = 1.5;
  const Matrix expected = ReferenceCost(c.logits, c.boxes, c.labels, c.target_boxes, options);
  const at::Tensor cost =
      HungarianMatcher(options).Cost(FromRows(c.logits, at::kDouble), FromRows(c.boxes, at::kDouble),
                                     MakeTarget(c.labels, c.target_boxes, at::kDouble));
  for (int q = 0; q < 3; ++q) {
    for (int t = 0; t < 2; ++t) EXPECT_NEAR(cost[q][t].item<double>(), expected[q][t], 1e-12);
  }
}

TEST(MatcherCost, GiouTermIsTheComposedGiouBitForBit) {
  // Only the GIoU term weighs (0 * x + 0 * y + z is z exactly): the matcher's
  // one-pass CPU loop against the composed ATen form of model/box_ops.h.
  at::manual_seed(17);
  MatcherOptions options;
  options.cost_class = 0;
  options.cost_bbox = 0;
  options.cost_giou = 1;
  for (at::ScalarType dtype : {at::kFloat, at::kDouble}) {
    SCOPED_TRACE(c10::toString(dtype));
    const at::Tensor logits = at::randn({300, 5}, dtype);
    at::Tensor boxes = (at::rand({300, 4}, dtype) * 0.6 + 0.05);
    TrainTarget target{at::randint(0, 5, {37}, at::kLong), at::rand({37, 4}, dtype) * 0.6 + 0.05};
    boxes.narrow(0, 0, 37).copy_(target.boxes);  // identical boxes too
    const at::Tensor expected =
        PairwiseGiouXyxy(BoxCxcywhToXyxy(boxes), BoxCxcywhToXyxy(target.boxes)).neg();
    EXPECT_TRUE(at::equal(HungarianMatcher(options).Cost(logits, boxes, target), expected));
  }
}

TEST(MatcherCost, DefaultsAreTheOfficialWeights) {
  const MatcherOptions options;
  EXPECT_EQ(options.cost_class, 2.0);
  EXPECT_EQ(options.cost_bbox, 5.0);
  EXPECT_EQ(options.cost_giou, 2.0);
  EXPECT_EQ(options.focal_alpha, 0.25);
  EXPECT_EQ(options.focal_gamma, 2.0);
}

TEST(MatcherCost, IsComputedWithoutAutograd) {
  const SmallCase c;
  at::Tensor logits = FromRows(c.logits, at::kFloat).requires_grad_(true);
  at::Tensor boxes = FromRows(c.boxes, at::kFloat).requires_grad_(true);
  const at::Tensor cost = HungarianMatcher().Cost(logits, boxes, MakeTarget(c.labels, c.target_boxes));
  EXPECT_FALSE(cost.requires_grad());
}

TEST(MatcherCost, NoTargetsGiveAnEmptyMatrix) {
  const SmallCase c;
  const at::Tensor cost = HungarianMatcher().Cost(FromRows(c.logits, at::kFloat),
                                                  FromRows(c.boxes, at::kFloat), MakeTarget({}, {}));
  EXPECT_EQ(cost.sizes(), (at::IntArrayRef{3, 0}));
}

// ---- GIoU of xyxy boxes ----------------------------------------------------

TEST(PairwiseGiouXyxy, HandComputedValues) {
  // [0,0,2,2] vs [1,1,3,3]: intersection 1, union 7, enclosing 9.
  // [0,0,2,2] vs [3,0,4,1]: disjoint, union 5, enclosing 8.
  const at::Tensor a = at::tensor({0.0, 0.0, 2.0, 2.0}, at::kDouble).view({1, 4});
  const at::Tensor b = at::tensor({1.0, 1.0, 3.0, 3.0, 3.0, 0.0, 4.0, 1.0, 0.0, 0.0, 2.0, 2.0},
                                  at::kDouble)
                           .view({3, 4});
  const at::Tensor giou = PairwiseGiouXyxy(a, b);
  ASSERT_EQ(giou.sizes(), (at::IntArrayRef{1, 3}));
  EXPECT_NEAR(giou[0][0].item<double>(), 1.0 / 7.0 - 2.0 / 9.0, 1e-15);
  EXPECT_NEAR(giou[0][1].item<double>(), 0.0 - 3.0 / 8.0, 1e-15);
  EXPECT_NEAR(giou[0][2].item<double>(), 1.0, 1e-15);
}

TEST(PairwiseGiouXyxy, AgreesWithTheCxcywhFormOnRandomBoxes) {
  at::manual_seed(3);
  const at::Tensor centers1 = at::rand({7, 2}, at::kDouble), sizes1 = at::rand({7, 2}, at::kDouble) * 0.5 + 0.01;
  const at::Tensor centers2 = at::rand({5, 2}, at::kDouble), sizes2 = at::rand({5, 2}, at::kDouble) * 0.5 + 0.01;
  const at::Tensor boxes1 = at::cat({centers1, sizes1}, 1), boxes2 = at::cat({centers2, sizes2}, 1);
  const at::Tensor xyxy = PairwiseGiouXyxy(BoxCxcywhToXyxy(boxes1), BoxCxcywhToXyxy(boxes2));
  EXPECT_TRUE(at::allclose(xyxy, PairwiseGiou(boxes1, boxes2), 1e-12, 1e-12));
  // Batched leading dimension.
  const at::Tensor batched =
      PairwiseGiouXyxy(BoxCxcywhToXyxy(boxes1).unsqueeze(0), BoxCxcywhToXyxy(boxes2).unsqueeze(0));
  EXPECT_TRUE(at::equal(batched[0], xyxy));
}

// ---- assignments -------------------------------------------------------------

// Queries 1, 4 and 5 sit exactly on targets 1, 0 and 2 and score their labels
// high; the other queries are far away with low scores.
TEST(MatcherAssignment, PicksTheObviousPairs) {
  const Matrix target_boxes = {{0.2, 0.2, 0.1, 0.1}, {0.5, 0.6, 0.3, 0.2}, {0.8, 0.3, 0.2, 0.4}};
  const std::vector<int64_t> labels = {3, 0, 1};
  Matrix boxes(6, {0.95, 0.95, 0.05, 0.05});
  Matrix logits(6, std::vector<double>(5, -4.0));
  boxes[4] = target_boxes[0];
  logits[4][3] = 4.0;
  boxes[1] = target_boxes[1];
  logits[1][0] = 4.0;
  boxes[5] = target_boxes[2];
  logits[5][1] = 4.0;
  const Match match = HungarianMatcher().MatchImage(
      FromRows(logits, at::kFloat), FromRows(boxes, at::kFloat), MakeTarget(labels, target_boxes));
  EXPECT_EQ(match.query.scalar_type(), at::kLong);
  EXPECT_EQ(match.target.scalar_type(), at::kLong);
  EXPECT_EQ(ToVector(match.query), (std::vector<int64_t>{1, 4, 5}));
  EXPECT_EQ(ToVector(match.target), (std::vector<int64_t>{1, 0, 2}));
}

TEST(MatcherAssignment, BoxesDecideWhenScoresAreEqual) {
  // Equal logits everywhere: the class cost is the same for every pair, so
  // query 0 (on target 1) and query 2 (on target 0) win.
  const Matrix target_boxes = {{0.7, 0.7, 0.2, 0.2}, {0.2, 0.3, 0.1, 0.2}};
  const Matrix boxes = {{0.2, 0.3, 0.1, 0.2}, {0.5, 0.1, 0.05, 0.05}, {0.7, 0.7, 0.2, 0.2}};
  const Matrix logits(3, std::vector<double>(2, 0.0));
  const Match match = HungarianMatcher().MatchImage(
      FromRows(logits, at::kFloat), FromRows(boxes, at::kFloat), MakeTarget({0, 1}, target_boxes));
  EXPECT_EQ(ToVector(match.query), (std::vector<int64_t>{0, 2}));
  EXPECT_EQ(ToVector(match.target), (std::vector<int64_t>{1, 0}));
}

TEST(MatcherAssignment, IsOptimalForItsCost) {
  at::manual_seed(11);
  const int64_t queries = 7, classes = 4, n = 4;
  const at::Tensor logits = at::randn({queries, classes});
  const at::Tensor boxes = at::rand({queries, 4}) * 0.5 + 0.1;
  TrainTarget target{at::randint(0, classes, {n}, at::kLong), at::rand({n, 4}) * 0.5 + 0.1};
  const HungarianMatcher matcher;
  const at::Tensor cost = matcher.Cost(logits, boxes, target).to(at::kDouble);
  const Match match = matcher.MatchImage(logits, boxes, target);
  const std::vector<int64_t> q = ToVector(match.query), t = ToVector(match.target);
  ASSERT_EQ(q.size(), static_cast<size_t>(n));
  double got = 0;
  for (size_t k = 0; k < q.size(); ++k) got += cost[q[k]][t[k]].item<double>();
  // Brute force over every injective map from targets to queries.
  std::vector<bool> used(queries, false);
  double best = std::numeric_limits<double>::infinity();
  std::function<void(int64_t, double)> extend = [&](int64_t k, double sum) {
    if (k == n) {
      best = std::min(best, sum);
      return;
    }
    for (int64_t j = 0; j < queries; ++j) {
      if (used[j]) continue;
      used[j] = true;
      extend(k + 1, sum + cost[j][k].item<double>());
      used[j] = false;
    }
  };
  extend(0, 0.0);
  EXPECT_NEAR(got, best, 1e-9);
  EXPECT_TRUE(std::is_sorted(q.begin(), q.end()));
}

TEST(MatcherAssignment, NoTargetsGiveAnEmptyMatch) {
  const SmallCase c;
  const Match match = HungarianMatcher().MatchImage(
      FromRows(c.logits, at::kFloat), FromRows(c.boxes, at::kFloat), MakeTarget({}, {}));
  EXPECT_EQ(match.query.numel(), 0);
  EXPECT_EQ(match.target.numel(), 0);
  EXPECT_EQ(match.query.scalar_type(), at::kLong);
}

TEST(MatcherAssignment, MoreTargetsThanQueriesMatchEveryQuery) {
  // Two queries, four targets: query 0 sits on target 3, query 1 on target 1;
  // targets 0 and 2 stay unmatched.
  const Matrix target_boxes = {{0.1, 0.1, 0.1, 0.1},
                               {0.4, 0.5, 0.2, 0.2},
                               {0.9, 0.9, 0.1, 0.1},
                               {0.6, 0.2, 0.3, 0.1}};
  const Matrix boxes = {target_boxes[3], target_boxes[1]};
  const Matrix logits(2, std::vector<double>(3, 0.0));
  const Match match = HungarianMatcher().MatchImage(
      FromRows(logits, at::kFloat), FromRows(boxes, at::kFloat),
      MakeTarget({0, 1, 2, 0}, target_boxes));
  EXPECT_EQ(ToVector(match.query), (std::vector<int64_t>{0, 1}));
  EXPECT_EQ(ToVector(match.target), (std::vector<int64_t>{3, 1}));
}

TEST(MatcherAssignment, BatchMatchesEachImage) {
  at::manual_seed(5);
  const at::Tensor logits = at::randn({3, 10, 6});
  const at::Tensor boxes = at::rand({3, 10, 4}) * 0.5 + 0.1;
  std::vector<TrainTarget> targets = {
      {at::tensor({1, 5, 2}, at::kLong), at::rand({3, 4}) * 0.5 + 0.1},
      {at::empty({0}, at::kLong), at::empty({0, 4})},
      {at::tensor({0}, at::kLong), at::rand({1, 4}) * 0.5 + 0.1}};
  const HungarianMatcher matcher;
  const std::vector<Match> matches = matcher.Match(logits, boxes, targets);
  ASSERT_EQ(matches.size(), 3u);
  const std::vector<int64_t> sizes = {3, 0, 1};
  for (int64_t b = 0; b < 3; ++b) {
    SCOPED_TRACE(b);
    const Match single = matcher.MatchImage(logits[b], boxes[b], targets[b]);
    EXPECT_EQ(matches[b].query.numel(), sizes[b]);
    EXPECT_EQ(ToVector(matches[b].query), ToVector(single.query));
    EXPECT_EQ(ToVector(matches[b].target), ToVector(single.target));
  }
}

TEST(MatcherAssignment, BadInputsAreErrors) {
  const HungarianMatcher matcher;
  const at::Tensor logits = at::zeros({4, 3});
  const at::Tensor boxes = at::full({4, 4}, 0.5);
  const TrainTarget good = MakeTarget({2}, {{0.5, 0.5, 0.2, 0.2}});
  EXPECT_THROW(matcher.MatchImage(logits, boxes, MakeTarget({3}, {{0.5, 0.5, 0.2, 0.2}})),
               c10::Error);  // label 3 with 3 classes
  EXPECT_THROW(matcher.MatchImage(logits, boxes.narrow(0, 0, 3), good), c10::Error);
  EXPECT_THROW(matcher.MatchImage(logits, boxes, TrainTarget{at::tensor({1, 2}, at::kLong),
                                                             at::full({1, 4}, 0.5)}),
               c10::Error);
  EXPECT_THROW(matcher.Match(logits.unsqueeze(0), boxes.unsqueeze(0), {good, good}),
               c10::Error);
  MatcherOptions zero;
  zero.cost_class = zero.cost_bbox = zero.cost_giou = 0;
  EXPECT_THROW(HungarianMatcher{zero}, c10::Error);
}

// ---- parity with the reference matcher --------------------------------------

struct OfficialCase {
  std::string name;
  at::Tensor logits, boxes, target_boxes, labels, cost, rows, cols;
};

struct OfficialCases {
  std::string torch_version;
  int threads = 0;
  std::vector<OfficialCase> cases;
};

at::Tensor ReadTensor(std::istream& in, at::IntArrayRef shape, at::ScalarType dtype,
                      const std::string& what) {
  at::Tensor t = at::empty(shape, dtype);
  in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  if (!in) throw std::runtime_error("matcher cases: file ends inside " + what);
  return t;
}

OfficialCases ReadOfficialCases(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("matcher cases: cannot open " + path);
  std::string line, magic;
  int format = 0;
  OfficialCases result;
  std::getline(in, line);
  std::istringstream header(line);
  if (!(header >> magic >> format >> result.torch_version >> result.threads) ||
      magic != "MATCHERCASES" || format != 1) {
    throw std::runtime_error("matcher cases: bad header '" + line + "'");
  }
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    OfficialCase c;
    int64_t q = 0, classes = 0, n = 0;
    if (!(fields >> c.name >> q >> classes >> n)) {
      throw std::runtime_error("matcher cases: bad record line '" + line + "'");
    }
    c.logits = ReadTensor(in, {q, classes}, at::kFloat, c.name);
    c.boxes = ReadTensor(in, {q, 4}, at::kFloat, c.name);
    c.target_boxes = ReadTensor(in, {n, 4}, at::kFloat, c.name);
    c.labels = ReadTensor(in, {n}, at::kLong, c.name);
    c.cost = ReadTensor(in, {q, n}, at::kFloat, c.name);
    c.rows = ReadTensor(in, {std::min(q, n)}, at::kLong, c.name);
    c.cols = ReadTensor(in, {std::min(q, n)}, at::kLong, c.name);
    result.cases.push_back(std::move(c));
  }
  return result;
}

// The same LibTorch build as the Python torch that wrote the cases gives the
// same float32 cost bit for bit (same operations, order and thread count).
bool SameTorchRelease(const std::string& python_version) {
  const std::string ours =
      std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + ".";
  return python_version.rfind(ours, 0) == 0;
}

TEST(MatcherParity, CostAndAssignmentEqualTheReference) {
  const char* path = std::getenv("LPDETR_MATCHER_CASES");
  ASSERT_TRUE(path != nullptr && *path != '\0')
      << "LPDETR_MATCHER_CASES is not set: run through ctest, which writes the cases with "
         "tests/train/official_matcher_cases.py first";
  const OfficialCases data = ReadOfficialCases(path);
  ASSERT_GE(data.cases.size(), 6u);
  const bool bitwise = SameTorchRelease(data.torch_version);
  const int threads_before = at::get_num_threads();
  at::set_num_threads(data.threads);
  const HungarianMatcher matcher;
  for (const OfficialCase& c : data.cases) {
    SCOPED_TRACE(c.name + (bitwise ? " (same torch release: bitwise)" : " (other torch release)"));
    const TrainTarget target{c.labels, c.target_boxes};
    const at::Tensor cost = matcher.Cost(c.logits, c.boxes, target);
    ASSERT_EQ(cost.sizes(), c.cost.sizes());
    if (bitwise) {
      EXPECT_EQ(at::ne(cost, c.cost).sum().item<int64_t>(), 0)
          << "largest difference " << (cost - c.cost).abs().max().item<double>();
    } else {
      EXPECT_TRUE(at::allclose(cost, c.cost, 1e-5, 1e-5));
    }
    const Match match = matcher.MatchImage(c.logits, c.boxes, target);
    EXPECT_TRUE(at::equal(match.query, c.rows));
    EXPECT_TRUE(at::equal(match.target, c.cols));
  }
  at::set_num_threads(threads_before);
}

}  // namespace
}  // namespace lpdetr::train

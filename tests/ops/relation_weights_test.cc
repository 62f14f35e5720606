// lpdetr::relation_weights (model/ops/relation_weights.h) against the composed
// reference modules of model/relation.h: forward, gradients, finite
// differences in float64, edge sizes, layouts and input checks.
#include "model/ops/relation_weights.h"

#include <functional>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "model/relation.h"
#include "model/runtime.h"
#include "tests/backend_scope.h"

namespace lpdetr {
namespace {

using ops::RelationVariant;
using ops::RelationWeights;

// Boxes in (0, 1) like the decoder's sigmoid outputs: sizes 0.02 .. 0.52.
at::Tensor RandomBoxes(int64_t b, int64_t n, at::ScalarType dtype = at::kFloat) {
  at::Tensor xy = at::rand({b, n, 2}) * 0.8 + 0.1;
  at::Tensor wh = at::rand({b, n, 2}) * 0.5 + 0.02;
  return at::cat({xy, wh}, -1).to(dtype);
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// A module with random (non-default) parameters; bias shifted so that some
// outputs are positive and some are clipped by the ReLU.
MultiScaleRelation LpModule(int64_t heads, int64_t layers, at::ScalarType dtype) {
  MultiScaleRelation rel(heads, layers);
  {
    at::NoGradGuard g;
    rel->scale_weights.normal_();
    rel->Bias().uniform_(-0.1, 0.3);
  }
  rel->to(dtype);
  return rel;
}

PositionRelationEmbedding DetrModule(int64_t heads, at::ScalarType dtype) {
  PositionRelationEmbedding rel(heads);
  {
    at::NoGradGuard g;
    rel->Bias().uniform_(-0.1, 0.3);
  }
  rel->to(dtype);
  return rel;
}

// ---------------------------------------------------------------- forward

TEST(RelationWeightsOp, LpDetrForwardMatchesComposedFloat) {
  at::manual_seed(10);
  for (int64_t layer : {0, 2, 5}) {
    MultiScaleRelation rel = LpModule(8, 6, at::kFloat);
    at::Tensor boxes = RandomBoxes(2, 45);
    at::Tensor want = rel->ForwardComposed(boxes, layer);
    at::Tensor got;
    {
      BackendScope k(OpBackend::kKernels);
      got = rel(boxes, layer);
    }
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_LT(MaxAbsDiff(got, want), 1e-5) << "layer " << layer;
    EXPECT_GT(want.gt(0).sum().item<int64_t>(), 0);
    EXPECT_GT(want.eq(0).sum().item<int64_t>(), 0) << "the test should exercise the ReLU";
  }
}

TEST(RelationWeightsOp, RelationDetrForwardMatchesComposedFloat) {
  at::manual_seed(11);
  PositionRelationEmbedding rel = DetrModule(8, at::kFloat);
  at::Tensor src = RandomBoxes(3, 37), tgt = RandomBoxes(3, 29);
  at::Tensor want = rel->ForwardComposed(src, tgt);
  at::Tensor got = RelationWeights(src, tgt, rel->Weight(), rel->Bias(), c10::nullopt, 1.0,
                                   RelationVariant::kRelationDetr);
  ASSERT_EQ(got.sizes(), (at::IntArrayRef{3, 8, 37, 29}));
  EXPECT_LT(MaxAbsDiff(got, want), 1e-5);
}

TEST(RelationWeightsOp, Float64ForwardMatchesComposedTightly) {
  at::manual_seed(12);
  MultiScaleRelation lp = LpModule(4, 3, at::kDouble);
  at::Tensor boxes = RandomBoxes(2, 19, at::kDouble);
  BackendScope k(OpBackend::kKernels);
  EXPECT_LT(MaxAbsDiff(lp(boxes, 1), lp->ForwardComposed(boxes, 1)), 1e-12);
  PositionRelationEmbedding rd = DetrModule(4, at::kDouble);
  at::Tensor tgt = RandomBoxes(2, 7, at::kDouble);
  EXPECT_LT(MaxAbsDiff(rd(boxes, tgt), rd->ForwardComposed(boxes, tgt)), 1e-12);
}

TEST(RelationWeightsOp, LargeSizeRatiosStayAccurate) {
  // Tiny and large boxes push the sine arguments to ~100 * log(5e4): the range
  // reduction of sin/cos must hold there.
  at::manual_seed(13);
  at::Tensor boxes = RandomBoxes(1, 40);
  {
    at::NoGradGuard g;
    boxes.narrow(1, 0, 10).narrow(2, 2, 2).fill_(1e-4);
    boxes.narrow(1, 10, 10).narrow(2, 2, 2).fill_(0.9);
  }
  MultiScaleRelation rel = LpModule(8, 6, at::kFloat);
  BackendScope k(OpBackend::kKernels);
  at::Tensor got = rel(boxes, 4), want = rel->ForwardComposed(boxes, 4);
  // Float32 sine arguments near 1000 carry ~6e-5 of rounding in both versions;
  // compare relative to that scale.
  EXPECT_LT(MaxAbsDiff(got, want), 2e-4);
  EXPECT_LT(MaxAbsDiff(got.narrow(2, 20, 20).narrow(3, 20, 20),
                       want.narrow(2, 20, 20).narrow(3, 20, 20)),
            1e-5);
}

// ---------------------------------------------------------------- gradients

TEST(RelationWeightsOp, LpDetrGradientsMatchComposed) {
  at::manual_seed(20);
  MultiScaleRelation rel = LpModule(8, 6, at::kFloat);
  at::Tensor boxes = RandomBoxes(2, 33);
  at::Tensor probe = at::randn({2, 8, 33, 33});
  auto grads = [&](bool kernels) {
    rel->zero_grad();
    BackendScope s(kernels ? OpBackend::kKernels : OpBackend::kComposed);
    (rel(boxes, 3) * probe).sum().backward();
    std::vector<at::Tensor> g;
    for (const auto& p : rel->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  std::vector<at::Tensor> want = grads(false), got = grads(true);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    const double scale = std::max(1.0, want[i].abs().max().item<double>());
    EXPECT_LT(MaxAbsDiff(got[i], want[i]) / scale, 1e-4) << "parameter " << i;
    EXPECT_GT(want[i].abs().sum().item<double>(), 0.0) << "parameter " << i;
  }
}

TEST(RelationWeightsOp, RelationDetrGradientsMatchComposed) {
  at::manual_seed(21);
  PositionRelationEmbedding rel = DetrModule(8, at::kFloat);
  at::Tensor src = RandomBoxes(2, 21), tgt = RandomBoxes(2, 26);
  at::Tensor probe = at::randn({2, 8, 21, 26});
  auto grads = [&](bool kernels) {
    rel->zero_grad();
    BackendScope s(kernels ? OpBackend::kKernels : OpBackend::kComposed);
    (rel(src, tgt) * probe).sum().backward();
    std::vector<at::Tensor> g;
    for (const auto& p : rel->parameters()) g.push_back(p.grad().clone());
    return g;
  };
  std::vector<at::Tensor> want = grads(false), got = grads(true);
  ASSERT_EQ(got.size(), 2u);
  for (size_t i = 0; i < got.size(); ++i) {
    const double scale = std::max(1.0, want[i].abs().max().item<double>());
    EXPECT_LT(MaxAbsDiff(got[i], want[i]) / scale, 1e-4) << "parameter " << i;
  }
}

TEST(RelationWeightsOp, BoxesGetNoGradient) {
  at::manual_seed(22);
  MultiScaleRelation rel = LpModule(4, 2, at::kFloat);
  at::Tensor boxes = RandomBoxes(1, 6).requires_grad_(true);
  at::Tensor alpha = rel->Alpha().select(0, 1);
  at::Tensor out = RelationWeights(boxes, boxes, rel->Weight(), rel->Bias(), alpha, 3.0,
                                   RelationVariant::kLpDetr);
  out.sum().backward();
  EXPECT_FALSE(boxes.grad().defined());
  EXPECT_TRUE(rel->scale_weights.grad().defined());
}

// Central differences of L = sum(out * probe) in float64 against the
// backward, for every element of weight, bias and alpha (gradcheck).
void GradCheck(RelationVariant variant) {
  const bool lp = variant == RelationVariant::kLpDetr;
  at::manual_seed(lp ? 30 : 31);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  at::Tensor src = RandomBoxes(2, 4, at::kDouble);
  at::Tensor tgt = lp ? src : RandomBoxes(2, 5, at::kDouble);
  const int64_t k = 3, f = lp ? 80 : 64;
  at::Tensor weight = (at::randn({k, f}, f64) * 0.2).requires_grad_(true);
  at::Tensor bias = (at::rand({k}, f64) * 0.4 - 0.1).requires_grad_(true);
  at::Tensor alpha = at::softmax(at::randn({3}, f64), 0).requires_grad_(true);
  c10::optional<at::Tensor> a = lp ? c10::optional<at::Tensor>(alpha) : c10::nullopt;
  const double s_l = 1.8;
  at::Tensor probe = at::randn({2, k, src.size(1), tgt.size(1)}, f64);
  auto loss = [&]() {
    return (RelationWeights(src, tgt, weight, bias, a, s_l, variant) * probe).sum();
  };
  at::Tensor out = RelationWeights(src, tgt, weight, bias, a, s_l, variant);
  ASSERT_GT(out.gt(0).sum().item<int64_t>(), 0);
  loss().backward();
  std::vector<at::Tensor> params = {weight, bias};
  if (lp) params.push_back(alpha);
  const double h = 1e-6;
  for (at::Tensor& p : params) {
    at::Tensor analytic = p.grad().clone();
    at::Tensor numeric = at::zeros_like(p);
    at::NoGradGuard g;
    for (int64_t i = 0; i < p.numel(); ++i) {
      at::Tensor e = p.view({-1})[i];
      const double v = e.item<double>();
      e.fill_(v + h);
      const double up = loss().item<double>();
      e.fill_(v - h);
      const double down = loss().item<double>();
      e.fill_(v);
      numeric.view({-1})[i] = (up - down) / (2 * h);
    }
    EXPECT_LT(MaxAbsDiff(analytic, numeric), 1e-6)
        << "parameter of shape " << p.sizes() << "\nanalytic " << analytic << "\nnumeric "
        << numeric;
  }
}

TEST(RelationWeightsOp, GradCheckLpDetrFloat64) { GradCheck(RelationVariant::kLpDetr); }
TEST(RelationWeightsOp, GradCheckRelationDetrFloat64) {
  GradCheck(RelationVariant::kRelationDetr);
}

TEST(RelationWeightsOp, BackwardIsDeterministicAcrossThreadCounts) {
  at::manual_seed(23);
  MultiScaleRelation rel = LpModule(8, 6, at::kFloat);
  at::Tensor boxes = RandomBoxes(2, 150);
  at::Tensor probe = at::randn({2, 8, 150, 150});
  const int saved = at::get_num_threads();
  auto grads = [&](int threads) {
    at::set_num_threads(threads);
    rel->zero_grad();
    BackendScope s(OpBackend::kKernels);
    (rel(boxes, 2) * probe).sum().backward();
    return rel->scale_weights.grad().clone();
  };
  at::Tensor one = grads(1), two = grads(2);
  at::set_num_threads(saved);
  EXPECT_TRUE(at::equal(one, two));
}

// ---------------------------------------------------------------- edge sizes

TEST(RelationWeightsOp, EmptyBatchAndEmptyQueries) {
  MultiScaleRelation rel = LpModule(8, 6, at::kFloat);
  BackendScope k(OpBackend::kKernels);
  for (auto [b, n] : std::vector<std::pair<int64_t, int64_t>>{{0, 5}, {2, 0}, {0, 0}}) {
    at::Tensor boxes = at::rand({b, n, 4});
    at::Tensor out = rel(boxes, 1);
    EXPECT_EQ(out.sizes(), (at::IntArrayRef{b, 8, n, n}));
    rel->zero_grad();
    out.sum().backward();
    EXPECT_EQ(rel->scale_weights.grad().abs().sum().item<double>(), 0.0);
  }
  PositionRelationEmbedding rd = DetrModule(8, at::kFloat);
  at::Tensor out = rd(at::rand({2, 3, 4}), at::rand({2, 0, 4}));
  EXPECT_EQ(out.sizes(), (at::IntArrayRef{2, 8, 3, 0}));
}

TEST(RelationWeightsOp, SingleQuery) {
  at::manual_seed(40);
  MultiScaleRelation rel = LpModule(8, 6, at::kFloat);
  at::Tensor boxes = RandomBoxes(3, 1);
  BackendScope k(OpBackend::kKernels);
  at::Tensor got = rel(boxes, 5);
  ASSERT_EQ(got.sizes(), (at::IntArrayRef{3, 8, 1, 1}));
  EXPECT_LT(MaxAbsDiff(got, rel->ForwardComposed(boxes, 5)), 1e-5);
}

TEST(RelationWeightsOp, ZeroSizeBoxesMatchComposed) {
  at::manual_seed(41);
  at::Tensor boxes = RandomBoxes(1, 12);
  {
    at::NoGradGuard g;
    boxes.narrow(1, 0, 4).narrow(2, 2, 2).zero_();  // w = h = 0
    boxes.narrow(1, 4, 2).select(2, 2).zero_();     // w = 0 only
    boxes[0][6].copy_(boxes[0][0]);                 // two identical empty boxes
  }
  MultiScaleRelation rel = LpModule(8, 6, at::kFloat);
  BackendScope k(OpBackend::kKernels);
  at::Tensor got = rel(boxes, 2), want = rel->ForwardComposed(boxes, 2);
  EXPECT_TRUE(got.isfinite().all().item<bool>());
  EXPECT_LT(MaxAbsDiff(got, want), 2e-4);  // ratios up to 1e5: arguments ~1000
  PositionRelationEmbedding rd = DetrModule(8, at::kFloat);
  at::Tensor g2 = rd(boxes, boxes), w2 = rd->ForwardComposed(boxes, boxes);
  EXPECT_TRUE(g2.isfinite().all().item<bool>());
  EXPECT_LT(MaxAbsDiff(g2, w2), 2e-4);
}

TEST(RelationWeightsOp, ThreeThousandQueriesFitInMemory) {
  // The composed op would need > 10 GB here; the fused op only its output
  // (8 x 3000 x 3000 floats = 288 MB). Rows are checked against small runs.
  at::manual_seed(42);
  const int64_t n = 3000;
  MultiScaleRelation rel = LpModule(8, 6, at::kFloat);
  at::Tensor boxes = RandomBoxes(1, n);
  at::Tensor alpha = rel->Alpha().select(0, 3).detach();
  at::Tensor w = rel->Weight().detach(), b = rel->Bias().detach();
  at::Tensor out = RelationWeights(boxes, boxes, w, b, alpha, LayerScale(3, 6),
                                   RelationVariant::kLpDetr);
  ASSERT_EQ(out.sizes(), (at::IntArrayRef{1, 8, n, n}));
  EXPECT_TRUE(out.isfinite().all().item<bool>());
  for (int64_t i : {0, 1234, 2999}) {
    at::Tensor row = RelationWeights(boxes.narrow(1, i, 1), boxes, w, b, alpha,
                                     LayerScale(3, 6), RelationVariant::kLpDetr);
    EXPECT_TRUE(at::equal(row, out.narrow(2, i, 1))) << "row " << i;
  }
  // The leading 200 x 200 block against the composed op.
  at::Tensor small = boxes.narrow(1, 0, 200);
  at::Tensor want = rel->ForwardComposed(small, 3);
  EXPECT_LT(MaxAbsDiff(out.narrow(2, 0, 200).narrow(3, 0, 200), want), 1e-5);
  // Backward at full size.
  auto [gw, gb, ga] = ops::RelationWeightsBackward(at::ones_like(out), out, boxes, boxes, w,
                                                   alpha, LayerScale(3, 6),
                                                   RelationVariant::kLpDetr);
  EXPECT_TRUE(gw.isfinite().all().item<bool>());
  EXPECT_NEAR(gb.sum().item<double>(), out.gt(0).sum().item<double>(), 1.0)
      << "grad_bias with grad_output = 1 counts the positive outputs";
}

// ---------------------------------------------------------------- layouts

TEST(RelationWeightsOp, NonContiguousInputsGiveTheSameResult) {
  at::manual_seed(50);
  at::Tensor boxes = RandomBoxes(2, 23);
  at::Tensor weight = at::randn({8, 80}) * 0.1, bias = at::rand({8}) * 0.2;
  at::Tensor alpha = at::softmax(at::randn({3}), 0);
  at::Tensor want = RelationWeights(boxes, boxes, weight, bias, alpha, 2.0,
                                    RelationVariant::kLpDetr);
  // Boxes as a transposed view, weight as a transposed view, alpha strided.
  at::Tensor boxes_t = boxes.transpose(1, 2).contiguous().transpose(1, 2);
  at::Tensor weight_t = weight.t().contiguous().t();
  at::Tensor alpha_s = at::stack({alpha, alpha}, 1).select(1, 0);
  at::Tensor bias_s = at::stack({bias, bias}, 1).select(1, 1);
  ASSERT_FALSE(boxes_t.is_contiguous());
  ASSERT_FALSE(weight_t.is_contiguous());
  ASSERT_FALSE(alpha_s.is_contiguous());
  at::Tensor got = RelationWeights(boxes_t, boxes_t, weight_t, bias_s, alpha_s, 2.0,
                                   RelationVariant::kLpDetr);
  EXPECT_TRUE(at::equal(got, want));
  // A non-contiguous grad_output in the backward.
  at::Tensor g = at::randn({2, 8, 23, 23});
  at::Tensor g_t = g.transpose(2, 3).contiguous().transpose(2, 3);
  auto a = ops::RelationWeightsBackward(g, want, boxes, boxes, weight, alpha, 2.0,
                                        RelationVariant::kLpDetr);
  auto b = ops::RelationWeightsBackward(g_t, want, boxes_t, boxes_t, weight_t, alpha_s, 2.0,
                                        RelationVariant::kLpDetr);
  EXPECT_TRUE(at::equal(std::get<0>(a), std::get<0>(b)));
  EXPECT_TRUE(at::equal(std::get<2>(a), std::get<2>(b)));
}

// ---------------------------------------------------------------- checks

void ExpectError(const std::function<void()>& fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what_without_backtrace() << "' lacks '" << needle << "'";
  }
}

TEST(RelationWeightsOp, BadInputsNameTheBadValue) {
  at::Tensor boxes = RandomBoxes(1, 5);
  at::Tensor w80 = at::randn({8, 80}), w64 = at::randn({8, 64}), b = at::zeros({8});
  at::Tensor alpha = at::full({3}, 1.0 / 3);
  const auto lp = RelationVariant::kLpDetr, rd = RelationVariant::kRelationDetr;
  ExpectError([&] { RelationWeights(at::rand({1, 5, 3}), boxes, w80, b, alpha, 1, lp); },
              "[1, 5, 3]");
  ExpectError([&] { RelationWeights(boxes, at::rand({2, 5, 4}), w80, b, alpha, 1, lp); },
              "[2, 5, 4]");
  ExpectError([&] { RelationWeights(boxes, boxes, w64, b, alpha, 1, lp); }, "[8, 64]");
  ExpectError([&] { RelationWeights(boxes, boxes, w80, b, c10::nullopt, 1, rd); }, "[8, 80]");
  ExpectError([&] { RelationWeights(boxes, boxes, w80, at::zeros({7}), alpha, 1, lp); }, "[7]");
  ExpectError([&] { RelationWeights(boxes, boxes, w80, b, at::ones({4}), 1, lp); }, "[4]");
  ExpectError([&] { RelationWeights(boxes, boxes, w80, b, c10::nullopt, 1, lp); }, "alpha");
  ExpectError([&] { RelationWeights(boxes, boxes, w64, b, alpha, 1, rd); }, "no alpha");
  ExpectError([&] { RelationWeights(boxes.to(at::kInt), boxes, w80, b, alpha, 1, lp); }, "Int");
  ExpectError([&] { RelationWeights(boxes, boxes, w80.to(at::kDouble), b, alpha, 1, lp); },
              "Double");
  ExpectError([&] { RelationWeights(boxes, boxes, w80, b, alpha, -2.5, lp); }, "-2.5");
  ExpectError(
      [&] {
        RelationWeights(boxes, boxes, w80, b, alpha, 1, static_cast<RelationVariant>(7));
      },
      "got 7");
  at::Tensor out = RelationWeights(boxes, boxes, w80, b, alpha, 1, lp);
  ExpectError(
      [&] {
        ops::RelationWeightsBackward(at::ones({1, 8, 5, 4}), out, boxes, boxes, w80, alpha, 1, lp);
      },
      "[1, 8, 5, 4]");
}

}  // namespace
}  // namespace lpdetr

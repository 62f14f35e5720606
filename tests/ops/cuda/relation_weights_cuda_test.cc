// lpdetr::relation_weights on CUDA against the CPU kernel (itself tested
// against the composed reference). Skipped when no GPU is visible.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include "model/ops/relation_weights.h"

namespace lpdetr::ops {
namespace {

at::Tensor RandomBoxes(int64_t b, int64_t n) {
  at::Tensor xy = at::rand({b, n, 2}) * 0.8 + 0.1;
  at::Tensor wh = at::rand({b, n, 2}) * 0.5 + 0.02;
  return at::cat({xy, wh}, -1);
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return 0.0;
  return (a.cpu().to(at::kDouble) - b.cpu().to(at::kDouble)).abs().max().item<double>();
}

class RelationWeightsCuda : public ::testing::TestWithParam<RelationVariant> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(RelationWeightsCuda, ForwardAndBackwardMatchCpu) {
  const RelationVariant v = GetParam();
  const bool lp = v == RelationVariant::kLpDetr;
  at::manual_seed(1);
  at::Tensor src = RandomBoxes(2, 130);
  at::Tensor tgt = lp ? src : RandomBoxes(2, 77);
  at::Tensor weight = at::randn({8, lp ? 80 : 64}) * 0.1;
  at::Tensor bias = at::rand({8}) * 0.4 - 0.1;
  at::Tensor alpha = at::softmax(at::randn({3}), 0);
  c10::optional<at::Tensor> a = lp ? c10::optional<at::Tensor>(alpha) : c10::nullopt;
  c10::optional<at::Tensor> a_cuda =
      lp ? c10::optional<at::Tensor>(alpha.cuda()) : c10::nullopt;
  at::Tensor want = RelationWeights(src, tgt, weight, bias, a, 2.2, v);
  at::Tensor got = RelationWeights(src.cuda(), tgt.cuda(), weight.cuda(), bias.cuda(), a_cuda,
                                   2.2, v);
  ASSERT_TRUE(got.is_cuda());
  EXPECT_LT(MaxAbsDiff(got, want), 1e-5);
  at::Tensor grad = at::randn(want.sizes());
  auto cpu = RelationWeightsBackward(grad, want, src, tgt, weight, a, 2.2, v);
  auto gpu = RelationWeightsBackward(grad.cuda(), got, src.cuda(), tgt.cuda(), weight.cuda(),
                                     a_cuda, 2.2, v);
  for (auto [x, y] : {std::pair{std::get<0>(cpu), std::get<0>(gpu)},
                      std::pair{std::get<1>(cpu), std::get<1>(gpu)},
                      std::pair{std::get<2>(cpu), std::get<2>(gpu)}}) {
    const double scale = std::max(1.0, x.abs().max().item<double>());
    EXPECT_LT(MaxAbsDiff(x, y) / scale, 1e-4);
  }
}

TEST_P(RelationWeightsCuda, EdgeSizesAndLargeN) {
  const RelationVariant v = GetParam();
  const bool lp = v == RelationVariant::kLpDetr;
  at::Tensor weight = (at::randn({8, lp ? 80 : 64}) * 0.1).cuda();
  at::Tensor bias = at::zeros({8}).cuda();
  c10::optional<at::Tensor> a =
      lp ? c10::optional<at::Tensor>(at::full({3}, 1.0 / 3).cuda()) : c10::nullopt;
  for (int64_t n : {0, 1, 3000}) {
    at::Tensor boxes = RandomBoxes(1, n).cuda();
    at::Tensor out = RelationWeights(boxes, boxes, weight, bias, a, 1.4, v);
    EXPECT_EQ(out.sizes(), (at::IntArrayRef{1, 8, n, n}));
    if (n > 0) {
      EXPECT_TRUE(out.isfinite().all().item<bool>());
    }
  }
  at::Tensor empty = at::rand({0, 5, 4}).cuda();
  EXPECT_EQ(RelationWeights(empty, empty, weight, bias, a, 1.4, v).numel(), 0);
}

TEST_P(RelationWeightsCuda, AutogradAndNonContiguousInputs) {
  const RelationVariant v = GetParam();
  const bool lp = v == RelationVariant::kLpDetr;
  at::manual_seed(2);
  at::Tensor boxes = RandomBoxes(2, 40).cuda();
  at::Tensor boxes_t = boxes.transpose(1, 2).contiguous().transpose(1, 2);
  at::Tensor weight = (at::randn({8, lp ? 80 : 64}) * 0.1).cuda().requires_grad_(true);
  at::Tensor bias = at::zeros({8}).cuda().requires_grad_(true);
  at::Tensor lambda = at::randn({3}).cuda().requires_grad_(true);
  c10::optional<at::Tensor> a =
      lp ? c10::optional<at::Tensor>(at::softmax(lambda, 0)) : c10::nullopt;
  at::Tensor out = RelationWeights(boxes_t, boxes_t, weight, bias, a, 1.0, v);
  EXPECT_TRUE(at::equal(out, RelationWeights(boxes, boxes, weight, bias, a, 1.0, v)));
  out.sum().backward();
  EXPECT_TRUE(weight.grad().defined());
  EXPECT_TRUE(bias.grad().defined());
  if (lp) {
    EXPECT_TRUE(lambda.grad().defined());
  }
}

TEST_P(RelationWeightsCuda, RejectsFloat64) {
  const RelationVariant v = GetParam();
  const bool lp = v == RelationVariant::kLpDetr;
  at::Tensor boxes = RandomBoxes(1, 4).to(at::kDouble).cuda();
  at::Tensor weight = at::randn({2, lp ? 80 : 64}, at::kDouble).cuda();
  c10::optional<at::Tensor> a =
      lp ? c10::optional<at::Tensor>(at::full({3}, 1.0 / 3, at::kDouble).cuda()) : c10::nullopt;
  try {
    RelationWeights(boxes, boxes, weight, at::zeros({2}, at::kDouble).cuda(), a, 1.0, v);
    ADD_FAILURE() << "float64 on CUDA should be rejected";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("Double"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, RelationWeightsCuda,
                         ::testing::Values(RelationVariant::kLpDetr,
                                           RelationVariant::kRelationDetr),
                         [](const auto& info) {
                           return info.param == RelationVariant::kLpDetr ? "LpDetr"
                                                                         : "RelationDetr";
                         });

}  // namespace
}  // namespace lpdetr::ops

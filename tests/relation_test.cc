// Relation features, embedding and the relation-aware attention (SPEC 2.2).
#include "model/box_ops.h"
#include "model/relation.h"

#include <cmath>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/transformer.h"

namespace lpdetr {
namespace {

constexpr double kE = 1e-5;

at::Tensor Boxes(std::initializer_list<std::array<float, 4>> rows) {
  std::vector<float> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  return at::tensor(flat).view({1, static_cast<int64_t>(rows.size()), 4});
}

TEST(RelationFeaturesTest, DiagonalHasZeroDistanceAndUnitGiou) {
  at::manual_seed(0);
  at::Tensor boxes = at::rand({2, 7, 4}) * 0.8 + 0.1;
  for (int scale = 0; scale < 3; ++scale) {
    at::Tensor f = LpRelationFeatures(boxes, scale, LayerScale(2, 6));
    ASSERT_EQ(f.sizes(), (at::IntArrayRef{2, 7, 7, 5}));
    at::Tensor diag = f.diagonal(0, 1, 2);  // [B, 5, N]
    EXPECT_TRUE(at::allclose(diag.select(1, 4), at::ones({2, 7}), 0, 1e-6)) << "giou(i,i) = 1";
    if (scale < 2) {
      EXPECT_TRUE(at::allclose(diag.narrow(1, 0, 4), at::zeros({2, 4, 7}), 0, 1e-7));
    }
  }
}

TEST(RelationFeaturesTest, KnownDisjointPair) {
  // i = (0.5, 0.5, 0.2, 0.4) -> xyxy (0.4, 0.3, 0.6, 0.7)
  // j = (0.7, 0.4, 0.1, 0.2) -> xyxy (0.65, 0.3, 0.75, 0.5): disjoint,
  // enclosing box 0.35 x 0.4 = 0.14, union 0.08 + 0.02 = 0.1.
  at::Tensor b = Boxes({{0.5f, 0.5f, 0.2f, 0.4f}, {0.7f, 0.4f, 0.1f, 0.2f}});
  const double giou = 0.0 - (0.14 - 0.1) / 0.14;
  const double s = 2.0;
  at::Tensor local = LpRelationFeatures(b, 0, s)[0][0][1];
  at::Tensor medium = LpRelationFeatures(b, 1, s)[0][0][1];
  at::Tensor global = LpRelationFeatures(b, 2, s)[0][0][1];
  const double f0 = std::log(0.2 / (0.2 + kE) + 1), f1 = std::log(0.1 / (0.4 + kE) + 1);
  const double f2 = std::log((0.2 + kE) / (0.1 + kE)), f3 = std::log((0.4 + kE) / (0.2 + kE));
  const double m0 = std::log(0.2 / (0.2 + kE) / s + 1), m1 = std::log(0.1 / (0.4 + kE) / s + 1);
  std::vector<std::pair<at::Tensor, std::vector<double>>> cases = {
      {local, {f0, f1, f2, f3, giou}},
      {medium, {m0, m1, f2 / s, f3 / s, giou}},
      {global, {1, 1, 1, 1, giou}}};
  for (auto& [got, want] : cases) {
    for (int k = 0; k < 5; ++k) EXPECT_NEAR(got[k].item<double>(), want[k], 2e-6) << "feature " << k;
  }
  // The relation is directional: features of (j, i) normalize by j's size.
  at::Tensor back = LpRelationFeatures(b, 0, s)[0][1][0];
  EXPECT_NEAR(back[0].item<double>(), std::log(0.2 / (0.1 + kE) + 1), 2e-6);
  EXPECT_NEAR(back[2].item<double>(), -f2, 2e-6);
  EXPECT_NEAR(back[4].item<double>(), giou, 2e-6);
}

TEST(RelationFeaturesTest, KnownOverlappingPairGiou) {
  // (0.3,0.3,0.7,0.7) and (0.4,0.3,0.8,0.7): inter 0.12, union 0.2, enclose 0.2.
  at::Tensor b = Boxes({{0.5f, 0.5f, 0.4f, 0.4f}, {0.6f, 0.5f, 0.4f, 0.4f}});
  EXPECT_NEAR(PairwiseGiou(b, b)[0][0][1].item<double>(), 0.6, 1e-6);
  // Contained box: inter = small area, enclose = big area -> giou = iou.
  at::Tensor c = Boxes({{0.5f, 0.5f, 0.4f, 0.4f}, {0.5f, 0.5f, 0.2f, 0.2f}});
  EXPECT_NEAR(PairwiseGiou(c, c)[0][0][1].item<double>(), 0.04 / 0.16, 1e-6);
}

TEST(RelationFeaturesTest, RelationDetrFeaturesMatchHandComputation) {
  at::Tensor src = Boxes({{0.5f, 0.5f, 0.2f, 0.4f}});
  at::Tensor tgt = Boxes({{0.7f, 0.4f, 0.1f, 0.2f}, {0.5f, 0.5f, 0.2f, 0.4f}});
  at::Tensor f = BoxRelationFeatures(src, tgt);
  ASSERT_EQ(f.sizes(), (at::IntArrayRef{1, 1, 2, 4}));
  EXPECT_NEAR(f[0][0][0][0].item<double>(), std::log(0.2 / (0.2 + kE) + 1), 2e-6);
  EXPECT_NEAR(f[0][0][0][3].item<double>(), std::log((0.4 + kE) / (0.2 + kE)), 2e-6);
  EXPECT_TRUE(at::allclose(f[0][0][1], at::zeros({4}), 0, 1e-7));
}

TEST(RelationFeaturesTest, LayerScaleGrowsFromOneToThree) {
  EXPECT_DOUBLE_EQ(LayerScale(0, 6), 1.0);
  EXPECT_DOUBLE_EQ(LayerScale(5, 6), 3.0);
  EXPECT_NEAR(LayerScale(2, 6), 1.8, 1e-12);
  EXPECT_DOUBLE_EQ(LayerScale(0, 1), 1.0);
}

TEST(RelationFeaturesTest, SineEmbeddingLayout) {
  at::Tensor x = at::tensor({0.37f, -1.2f}).view({1, 2});
  at::Tensor e = RelationSineEmbed(x);
  ASSERT_EQ(e.sizes(), (at::IntArrayRef{1, 32}));
  for (int f = 0; f < 2; ++f) {
    const double v = x[0][f].item<double>();
    for (int k = 0; k < 8; ++k) {
      const double arg = v * 100.0 / std::pow(10000.0, 2.0 * k / 16.0);
      EXPECT_NEAR(e[0][16 * f + 2 * k].item<double>(), std::sin(arg), 2e-4);
      EXPECT_NEAR(e[0][16 * f + 2 * k + 1].item<double>(), std::cos(arg), 2e-4);
    }
  }
}

TEST(MultiScaleRelationTest, AlphaIsSoftmaxOfLambdaPerLayer) {
  MultiScaleRelation rel(8, 4);
  at::Tensor alpha0 = rel->Alpha();
  EXPECT_TRUE(at::allclose(alpha0, at::full({4, 3}, 1.0 / 3.0), 0, 1e-7)) << "equal init";
  {
    at::NoGradGuard g;
    rel->scale_weights.copy_(at::tensor({0.f, 1.f, 2.f, -1.f, 0.5f, 3.f, 2.f, 2.f, 2.f,
                                         10.f, 0.f, -10.f}).view({4, 3}));
  }
  at::Tensor a = rel->Alpha();
  for (int l = 0; l < 4; ++l) {
    double sum = 0;
    std::vector<double> ex(3);
    for (int s = 0; s < 3; ++s) sum += ex[s] = std::exp(rel->scale_weights[l][s].item<double>());
    for (int s = 0; s < 3; ++s) EXPECT_NEAR(a[l][s].item<double>(), ex[s] / sum, 1e-6);
  }
}

TEST(MultiScaleRelationTest, MixesTheThreeScaleEmbeddings) {
  at::manual_seed(1);
  MultiScaleRelation rel(4, 3);
  at::Tensor boxes = at::rand({1, 5, 4}) * 0.5 + 0.2;
  at::Tensor w = rel(boxes, 1);
  ASSERT_EQ(w.sizes(), (at::IntArrayRef{1, 4, 5, 5}));
  at::Tensor alpha = rel->Alpha()[1];
  at::Tensor mixed = at::zeros({1, 5, 5, 80});
  for (int s = 0; s < 3; ++s) {
    mixed += alpha[s] * RelationSineEmbed(LpRelationFeatures(boxes, s, LayerScale(1, 3)));
  }
  at::Tensor want = at::relu(at::linear(mixed, rel->Weight(), rel->Bias())).permute({0, 3, 1, 2});
  EXPECT_TRUE(at::allclose(w, want, 1e-5, 1e-6));
  EXPECT_GE(w.min().item<float>(), 0.0f);
}

TEST(MultiScaleRelationTest, GradientsReachWeightsBiasAndLambdaNotBoxes) {
  at::manual_seed(2);
  MultiScaleRelation rel(8, 6);
  {
    at::NoGradGuard g;
    rel->scale_weights.normal_();
    rel->Bias().fill_(0.1);
  }
  at::Tensor boxes = (at::rand({2, 9, 4}) * 0.5 + 0.2).requires_grad_(true);
  at::Tensor w = rel(boxes, 3);
  (w * at::randn_like(w)).sum().backward();
  for (const auto& p : rel->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
    EXPECT_TRUE(p.value().grad().isfinite().all().item<bool>()) << p.key();
  }
  EXPECT_FALSE(boxes.grad().defined()) << "boxes are not differentiated";
}

TEST(MultiScaleRelationTest, ZeroSizeBoxesStayFinite) {
  MultiScaleRelation rel(8, 2);
  at::Tensor boxes = Boxes({{0.5f, 0.5f, 0.f, 0.f}, {0.5f, 0.5f, 0.f, 0.f}, {0.2f, 0.3f, 0.1f, 0.f}});
  at::Tensor w = rel(boxes, 1);
  EXPECT_TRUE(w.isfinite().all().item<bool>());
}

// The relation-aware attention equals softmax(QK^T/sqrt(d) + log(w_p + 1e-6))
// on the last K heads and plain softmax(QK^T/sqrt(d)) on the others.
TEST(RelationAttentionTest, MatchesTheFormulaOnRandomInputs) {
  at::manual_seed(3);
  ModelConfig c = ModelConfig::FromJson({{"backbone", "resnet18"}, {"embed_dim", 64},
                                         {"num_heads", 4}, {"dec_layers", 2},
                                         {"relation", {{"variant", "lp-detr"}, {"heads", 3}}}});
  Decoder decoder(c);
  {
    at::NoGradGuard g;
    decoder->multi_scale_relation->Bias().fill_(0.05);
    decoder->multi_scale_relation->scale_weights.normal_();
  }
  const int64_t n = 6, e = 64, h = 4, d = e / h;
  at::Tensor boxes = at::rand({2, n, 4}) * 0.5 + 0.2;
  at::Tensor x = at::randn({2, n, e}), pos = at::randn({2, n, e});
  at::Tensor bias = decoder->LpRelationBias(boxes, 1);
  ASSERT_EQ(bias.sizes(), (at::IntArrayRef{2, h, n, n}));
  EXPECT_TRUE(at::equal(bias.narrow(1, 0, 1), at::zeros({2, 1, n, n}))) << "first H-K heads";

  SelfAttention attn = decoder->Layers()[1]->self_attn;
  attn->record_weights = true;
  attn(x + pos, x, bias, at::Tensor());
  at::Tensor got = attn->last_weights;

  at::Tensor w_p = decoder->multi_scale_relation(boxes, 1);  // [2, K, n, n]
  auto w = attn->in_proj_weight.chunk(3);
  auto b = attn->in_proj_bias.chunk(3);
  at::Tensor q = at::linear(x + pos, w[0], b[0]).view({2, n, h, d}).transpose(1, 2);
  at::Tensor k = at::linear(x + pos, w[1], b[1]).view({2, n, h, d}).transpose(1, 2);
  at::Tensor logits = at::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(d));
  at::Tensor rel = at::cat({at::zeros({2, 1, n, n}), at::log(w_p + 1e-6)}, 1);
  at::Tensor want = (logits + rel).softmax(-1);
  EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-6));
  // Paper form: w_p exp(w_c) / sum(w_p exp(w_c)) on the relation heads.
  at::Tensor paper = (w_p + 1e-6) * logits.narrow(1, 1, 3).exp();
  paper = paper / paper.sum(-1, true);
  EXPECT_TRUE(at::allclose(got.narrow(1, 1, 3), paper, 1e-4, 1e-6));
}

// With K = 0 the decoder self-attention is plain multi-head attention: compare
// with LibTorch's own MultiheadAttention holding the same weights.
TEST(RelationAttentionTest, ZeroRelationHeadsIsPlainMultiHeadAttention) {
  at::manual_seed(4);
  ModelConfig c = ModelConfig::FromJson({{"backbone", "resnet18"}, {"embed_dim", 64},
                                         {"num_heads", 8}, {"dec_layers", 1},
                                         {"relation", {{"variant", "lp-detr"}, {"heads", 0}}}});
  Decoder decoder(c);
  EXPECT_FALSE(decoder->multi_scale_relation) << "no relation parameters with K = 0";
  SelfAttention attn = decoder->Layers()[0]->self_attn;
  torch::nn::MultiheadAttention reference(torch::nn::MultiheadAttentionOptions(64, 8));
  {
    at::NoGradGuard g;
    attn->in_proj_bias.normal_();
    reference->in_proj_weight.copy_(attn->in_proj_weight);
    reference->in_proj_bias.copy_(attn->in_proj_bias);
    reference->out_proj->weight.copy_(attn->out_proj->weight);
    reference->out_proj->bias.copy_(attn->out_proj->bias);
  }
  at::Tensor x = at::randn({3, 10, 64}), pos = at::randn({3, 10, 64});
  at::Tensor got = attn(x + pos, x, at::Tensor(), at::Tensor());
  // LibTorch's module is sequence-first.
  at::Tensor qk = (x + pos).transpose(0, 1), v = x.transpose(0, 1);
  at::Tensor want = std::get<0>(reference(qk, qk, v)).transpose(0, 1);
  EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-5));
}

}  // namespace
}  // namespace lpdetr

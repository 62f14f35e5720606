// Tests of train/train_setup.h: the official frozen parts of a model, its
// trainable parameters, the finetune_backbone_and_linear_projection groups,
// the AdamW optimizer built from them, gradient clipping and clearing.
#include "train/train_setup.h"

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "model/config.h"
#include "model/detector.h"

namespace lpdetr::train {
namespace {

ModelConfig TinyConfig() {
  ModelConfig c;
  c.backbone = "resnet18";
  c.embed_dim = 64;
  c.num_heads = 4;
  c.relation_heads = 4;
  c.dim_feedforward = 128;
  c.enc_layers = 2;
  c.dec_layers = 3;
  c.num_queries = 20;
  c.hybrid_num_proposals = 20;
  c.num_classes = 5;
  c.num_select = 10;
  return c;
}

std::map<std::string, at::Tensor> AllParameters(const torch::nn::Module& m) {
  std::map<std::string, at::Tensor> all;
  for (const auto& item : m.named_parameters(/*recurse=*/true)) all[item.key()] = item.value();
  return all;
}

bool Frozen(const std::string& name) {
  return name == "backbone.conv1.weight" || name.rfind("backbone.layer1.", 0) == 0;
}

class PreparedModel : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::manual_seed(0);
    model_ = LpDetr(TinyConfig());
    model_->eval();
    PrepareForTraining(*model_);
  }
  LpDetr model_{nullptr};
};

TEST_F(PreparedModel, TrainModeWithStemAndLayer1Frozen) {
  EXPECT_TRUE(model_->is_training());
  for (const auto& child : model_->modules(/*include_self=*/false)) {
    EXPECT_TRUE(child->is_training()) << child->name();
  }
  const auto all = AllParameters(*model_);
  ASSERT_TRUE(all.count("backbone.conv1.weight"));
  ASSERT_TRUE(all.count("backbone.layer1.0.conv1.weight"));
  ASSERT_TRUE(all.count("backbone.layer2.0.conv1.weight"));
  int frozen = 0;
  for (const auto& [name, p] : all) {
    EXPECT_EQ(p.requires_grad(), !Frozen(name)) << name;
    frozen += Frozen(name);
    // Batch norms are frozen: none of their tensors is a parameter.
    EXPECT_EQ(name.find(".bn"), std::string::npos) << name;
    EXPECT_EQ(name.find("downsample.1"), std::string::npos) << name;
  }
  // conv1 + layer1 of resnet18: two blocks of two convolutions.
  EXPECT_EQ(frozen, 5);
}

TEST_F(PreparedModel, TrainableParametersAreTheUnfrozenOnesInOrder) {
  std::vector<std::string> expected;
  for (const auto& item : model_->named_parameters(/*recurse=*/true)) {
    if (!Frozen(item.key())) expected.push_back(item.key());
  }
  const std::vector<NamedParameter> trainable = TrainableParameters(*model_);
  ASSERT_EQ(trainable.size(), expected.size());
  const auto all = AllParameters(*model_);
  for (size_t i = 0; i < trainable.size(); ++i) {
    EXPECT_EQ(trainable[i].name, expected[i]);
    EXPECT_TRUE(trainable[i].tensor.is_same(all.at(expected[i]))) << expected[i];
  }
}

TEST_F(PreparedModel, GroupsPartitionTheTrainableParameters) {
  const std::vector<ParameterGroup> groups = FinetuneBackboneAndLinearProjection(*model_);
  ASSERT_EQ(groups.size(), 6u);
  // Official order, learning-rate factors and weight decay of the six groups.
  const std::vector<std::tuple<ParameterGroupKind, double, bool>> expected = {
      {ParameterGroupKind::kOther, 1.0, true},
      {ParameterGroupKind::kBackbone, 0.1, true},
      {ParameterGroupKind::kBackboneNorm, 0.1, false},
      {ParameterGroupKind::kLinearProjection, 0.1, true},
      {ParameterGroupKind::kLinearProjectionNorm, 0.1, false},
      {ParameterGroupKind::kOtherNorm, 1.0, false},
  };
  std::set<std::string> seen;
  for (size_t i = 0; i < groups.size(); ++i) {
    EXPECT_EQ(groups[i].kind, std::get<0>(expected[i])) << i;
    EXPECT_DOUBLE_EQ(groups[i].lr_scale, std::get<1>(expected[i])) << i;
    EXPECT_EQ(groups[i].weight_decay, std::get<2>(expected[i])) << i;
    for (const NamedParameter& p : groups[i].params) {
      EXPECT_TRUE(seen.insert(p.name).second) << p.name << " is in two groups";
      EXPECT_TRUE(p.tensor.requires_grad()) << p.name;
    }
  }
  std::set<std::string> trainable;
  for (const NamedParameter& p : TrainableParameters(*model_)) trainable.insert(p.name);
  EXPECT_EQ(seen, trainable);
  EXPECT_FALSE(seen.count("backbone.conv1.weight"));
  EXPECT_FALSE(seen.count("backbone.layer1.0.conv1.weight"));
  EXPECT_EQ(GroupTensors(groups).size(), trainable.size());
}

TEST_F(PreparedModel, ParametersLandInTheOfficialGroups) {
  const std::vector<ParameterGroup> groups = FinetuneBackboneAndLinearProjection(*model_);
  std::map<std::string, ParameterGroupKind> group_of;
  for (const ParameterGroup& g : groups) {
    for (const NamedParameter& p : g.params) group_of[p.name] = g.kind;
  }
  const std::map<std::string, ParameterGroupKind> expected = {
      {"backbone.layer2.0.conv1.weight", ParameterGroupKind::kBackbone},
      {"backbone.layer4.1.conv2.weight", ParameterGroupKind::kBackbone},
      {"backbone.layer3.0.downsample.0.weight", ParameterGroupKind::kBackbone},
      {"transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
       ParameterGroupKind::kLinearProjection},
      {"transformer.encoder.layers.0.self_attn.sampling_offsets.bias",
       ParameterGroupKind::kLinearProjectionNorm},
      {"transformer.decoder.layers.2.cross_attn.sampling_offsets.weight",
       ParameterGroupKind::kLinearProjection},
      // The other projections of deformable attention are not "linear
      // projections" under the official keywords.
      {"transformer.encoder.layers.0.self_attn.value_proj.weight", ParameterGroupKind::kOther},
      {"transformer.decoder.layers.0.cross_attn.attention_weights.weight",
       ParameterGroupKind::kOther},
      {"transformer.decoder.layers.0.cross_attn.output_proj.bias", ParameterGroupKind::kOtherNorm},
      {"transformer.decoder.layers.0.self_attn.in_proj_weight", ParameterGroupKind::kOther},
      {"transformer.decoder.layers.0.self_attn.in_proj_bias", ParameterGroupKind::kOtherNorm},
      {"transformer.decoder.layers.1.norm2.weight", ParameterGroupKind::kOtherNorm},
      {"transformer.enc_output_norm.weight", ParameterGroupKind::kOtherNorm},
      // The neck's GroupNorm is named by position, without "norm": decayed.
      {"neck.convs.0.1.weight", ParameterGroupKind::kOther},
      {"neck.convs.0.1.bias", ParameterGroupKind::kOtherNorm},
      {"transformer.level_embeds", ParameterGroupKind::kOther},
      {"transformer.tgt_embed.weight", ParameterGroupKind::kOther},
      {"denoising_generator.label_encoder.weight", ParameterGroupKind::kOther},
  };
  for (const auto& [name, kind] : expected) {
    ASSERT_TRUE(group_of.count(name)) << name << " is in no group";
    EXPECT_EQ(group_of.at(name), kind)
        << name << ": " << ParameterGroupName(group_of.at(name)) << " instead of "
        << ParameterGroupName(kind);
  }
  // The backbone has no bias and its norms are buffers.
  EXPECT_TRUE(groups[static_cast<int>(ParameterGroupKind::kBackboneNorm)].params.empty());
  // One sampling_offsets weight and bias per encoder and decoder layer.
  const ModelConfig c = TinyConfig();
  EXPECT_EQ(groups[static_cast<int>(ParameterGroupKind::kLinearProjection)].params.size(),
            static_cast<size_t>(c.enc_layers + c.dec_layers));
  EXPECT_EQ(groups[static_cast<int>(ParameterGroupKind::kLinearProjectionNorm)].params.size(),
            static_cast<size_t>(c.enc_layers + c.dec_layers));
}

TEST(ClassifyParameter, KeywordRules) {
  EXPECT_EQ(ClassifyParameter("backbone.layer2.0.conv1.weight"), ParameterGroupKind::kBackbone);
  EXPECT_EQ(ClassifyParameter("backbone.layer2.0.bn1.bias"), ParameterGroupKind::kBackboneNorm);
  EXPECT_EQ(ClassifyParameter("backbone.norm.weight"), ParameterGroupKind::kBackboneNorm);
  EXPECT_EQ(ClassifyParameter("head.reference_points.weight"),
            ParameterGroupKind::kLinearProjection);
  EXPECT_EQ(ClassifyParameter("head.reference_points.bias"),
            ParameterGroupKind::kLinearProjectionNorm);
  EXPECT_EQ(ClassifyParameter("a.sampling_offsets.weight"), ParameterGroupKind::kLinearProjection);
  EXPECT_EQ(ClassifyParameter("a.layernorm.weight"), ParameterGroupKind::kOtherNorm);
  EXPECT_EQ(ClassifyParameter("a.linear.bias"), ParameterGroupKind::kOtherNorm);
  EXPECT_EQ(ClassifyParameter("a.linear.weight"), ParameterGroupKind::kOther);
  // A backbone parameter with a linear-projection keyword matches neither
  // special rule and falls through.
  EXPECT_EQ(ClassifyParameter("backbone.sampling_offsets.weight"), ParameterGroupKind::kOther);
  EXPECT_EQ(ClassifyParameter("backbone.sampling_offsets.bias"), ParameterGroupKind::kOtherNorm);
  // Keywords are substrings, as in the official code.
  EXPECT_EQ(ClassifyParameter("mybackbone2.w"), ParameterGroupKind::kBackbone);
}

TEST(ParameterGroupName, EveryKindHasItsName) {
  const std::vector<std::string> names = {"other", "backbone", "backbone_norm",
                                          "linear_projection", "linear_projection_norm",
                                          "other_norm"};
  for (int i = 0; i < kNumParameterGroups; ++i) {
    EXPECT_EQ(ParameterGroupName(static_cast<ParameterGroupKind>(i)), names[i]);
  }
}

// One group per kind, each with one parameter of known values and gradient.
std::vector<ParameterGroup> HandGroups(std::vector<at::Tensor>* grads) {
  std::vector<ParameterGroup> groups;
  for (int i = 0; i < kNumParameterGroups; ++i) {
    ParameterGroup g;
    g.kind = static_cast<ParameterGroupKind>(i);
    g.lr_scale = (i % 2) ? 0.1 : 1.0;
    g.weight_decay = i < 3;
    at::Tensor p = at::arange(1, 5, at::kFloat).mul(0.1 + 0.05 * i).requires_grad_(true);
    at::Tensor grad = at::tensor({0.3f, -2.0f, 1e-3f, 0.0f}) * (i + 1);
    p.mutable_grad() = grad.clone();
    grads->push_back(grad);
    g.params.push_back({"p" + std::to_string(i), p});
    groups.push_back(std::move(g));
  }
  return groups;
}

TEST(MakeAdamW, GroupsCarryTheirLearningRateAndWeightDecay) {
  std::vector<at::Tensor> grads;
  const std::vector<ParameterGroup> groups = HandGroups(&grads);
  OptimizerOptions options;
  options.lr = 2e-3;
  options.weight_decay = 0.05;
  auto optimizer = MakeAdamW(groups, options);
  ASSERT_EQ(optimizer->param_groups().size(), groups.size());
  for (size_t i = 0; i < groups.size(); ++i) {
    const auto& o = static_cast<const torch::optim::AdamWOptions&>(
        optimizer->param_groups()[i].options());
    EXPECT_DOUBLE_EQ(o.lr(), options.lr * groups[i].lr_scale) << i;
    EXPECT_DOUBLE_EQ(o.weight_decay(), groups[i].weight_decay ? options.weight_decay : 0.0) << i;
    EXPECT_DOUBLE_EQ(std::get<0>(o.betas()), 0.9);
    EXPECT_DOUBLE_EQ(std::get<1>(o.betas()), 0.999);
    EXPECT_DOUBLE_EQ(o.eps(), 1e-8);
    EXPECT_FALSE(o.amsgrad());
  }
}

TEST(MakeAdamW, FirstStepIsDecoupledDecayPlusSignedStep) {
  std::vector<at::Tensor> grads;
  const std::vector<ParameterGroup> groups = HandGroups(&grads);
  std::vector<at::Tensor> before;
  for (const ParameterGroup& g : groups) before.push_back(g.params[0].tensor.detach().clone());
  // Large enough that the decay and the step show in float32 (the official
  // lr x weight decay, 1e-8, is below float32 resolution at these values).
  OptimizerOptions options;
  options.lr = 1e-2;
  options.weight_decay = 0.5;
  auto optimizer = MakeAdamW(groups, options);
  optimizer->step();
  for (size_t i = 0; i < groups.size(); ++i) {
    // First Adam step with bias correction: m = g, v = g^2, so the update is
    // lr * g / (|g| + eps), after the decoupled decay p *= 1 - lr * wd.
    const double lr = options.lr * groups[i].lr_scale;
    const double wd = groups[i].weight_decay ? options.weight_decay : 0.0;
    const at::Tensor p0 = before[i].to(at::kDouble), g = grads[i].to(at::kDouble);
    const at::Tensor expected = p0 * (1 - lr * wd) - lr * g / (g.abs() + options.eps);
    const at::Tensor got = groups[i].params[0].tensor.detach().to(at::kDouble);
    EXPECT_TRUE(at::allclose(got, expected, /*rtol=*/0, /*atol=*/2e-6))
        << "group " << i << ": got " << got << " expected " << expected;
  }
}

TEST(MakeAdamW, EmptyGroupsAreAllowed) {
  std::vector<ParameterGroup> groups(kNumParameterGroups);
  at::Tensor p = at::ones({3}).requires_grad_(true);
  p.mutable_grad() = at::ones({3});
  groups[0].params.push_back({"p", p});
  auto optimizer = MakeAdamW(groups, OptimizerOptions());
  optimizer->step();
  EXPECT_LT(p.detach().max().item<float>(), 1.0f);
}

TEST(MakeAdamW, RejectsANegativeLearningRate) {
  OptimizerOptions options;
  options.lr = -1;
  EXPECT_THROW(MakeAdamW({}, options), std::invalid_argument);
}

TEST(ClipGradients, ScalesToTheMaximumNormAndReturnsTheNormBefore) {
  at::Tensor a = at::zeros({2}).requires_grad_(true), b = at::zeros({1}).requires_grad_(true);
  at::Tensor c = at::zeros({1}).requires_grad_(true);  // no gradient: skipped
  a.mutable_grad() = at::tensor({3.0f, 0.0f});
  b.mutable_grad() = at::tensor({4.0f});
  const double norm = ClipGradients({a, b, c}, 0.1);
  EXPECT_NEAR(norm, 5.0, 1e-6);
  const double factor = 0.1 / (5.0 + 1e-6);
  EXPECT_NEAR(a.grad()[0].item<float>(), 3.0 * factor, 1e-7);
  EXPECT_NEAR(b.grad()[0].item<float>(), 4.0 * factor, 1e-7);
  EXPECT_FALSE(c.grad().defined());
}

TEST(ClipGradients, SmallGradientsAndDisabledClippingAreLeftAlone) {
  at::Tensor a = at::zeros({2}).requires_grad_(true);
  a.mutable_grad() = at::tensor({0.03f, 0.04f});
  EXPECT_NEAR(ClipGradients({a}, 0.1), 0.05, 1e-7);
  EXPECT_NEAR(a.grad()[1].item<float>(), 0.04f, 1e-9);
  a.mutable_grad() = at::tensor({30.0f, 40.0f});
  EXPECT_NEAR(ClipGradients({a}, 0.0), 50.0, 1e-5);
  EXPECT_FLOAT_EQ(a.grad()[1].item<float>(), 40.0f);
  EXPECT_EQ(ClipGradients({at::zeros({1}).requires_grad_(true)}, 0.1), 0.0);
}

TEST(ClearGradients, DropsEveryGradient) {
  at::Tensor a = at::ones({2}).requires_grad_(true);
  (a * 3).sum().backward();
  ASSERT_TRUE(a.grad().defined());
  ClearGradients({a});
  EXPECT_FALSE(a.grad().defined());
  (a * 2).sum().backward();  // a fresh gradient, not accumulated onto the old one
  EXPECT_FLOAT_EQ(a.grad()[0].item<float>(), 2.0f);
}

}  // namespace
}  // namespace lpdetr::train

// Tests of train/train_setup.h: the official frozen parts of a model, its
// trainable parameters, the finetune_backbone_and_linear_projection groups,
// the AdamW optimizer built from them, gradient clipping and clearing.
#include "train/train_setup.h"

#include <algorithm>
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
#include "model/deform_attn.h"
#include "model/layers.h"

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

bool EndsWithName(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
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

// Training from scratch: nothing frozen, the backbone's batch norms trainable
// (in backbone_norm, full lr, no decay), batch statistics in training mode
// that move the running ones, and the frozen form in evaluation mode.
TEST(FullBackboneTraining, EveryLayerTrainsAndBatchNormsUseBatchStatistics) {
  torch::manual_seed(0);
  ModelConfig config = TinyConfig();
  config.backbone_width = 16;
  LpDetr model(config);
  PrepareForTraining(*model, BackboneTraining::kFull);
  for (const auto& [name, p] : AllParameters(*model)) EXPECT_TRUE(p.requires_grad()) << name;
  int64_t norms = 0;
  std::set<std::string> norm_names;
  for (const auto& item : model->named_buffers()) {
    const bool affine = item.key().rfind("backbone.", 0) == 0 &&
                        (EndsWithName(item.key(), ".weight") || EndsWithName(item.key(), ".bias"));
    EXPECT_EQ(item.value().requires_grad(), affine) << item.key();
    if (affine) norm_names.insert(item.key()), ++norms;
  }
  // resnet18: the stem's norm, 8 blocks x 2 and 3 downsample norms; weight + bias.
  EXPECT_EQ(norms, 2 * (1 + 16 + 3));

  const auto groups = FinetuneBackboneAndLinearProjection(*model, BackboneTraining::kFull);
  const ParameterGroup& bn = groups[static_cast<int>(ParameterGroupKind::kBackboneNorm)];
  const ParameterGroup& conv = groups[static_cast<int>(ParameterGroupKind::kBackbone)];
  EXPECT_EQ(bn.params.size(), norm_names.size());
  for (const NamedParameter& p : bn.params) EXPECT_TRUE(norm_names.count(p.name)) << p.name;
  EXPECT_DOUBLE_EQ(bn.lr_scale, 1.0);
  EXPECT_FALSE(bn.weight_decay);
  EXPECT_DOUBLE_EQ(conv.lr_scale, 1.0);
  EXPECT_DOUBLE_EQ(groups[static_cast<int>(ParameterGroupKind::kLinearProjection)].lr_scale, 0.1);
  // Fine-tuning keeps the official x0.1.
  LpDetr finetuned(config);
  PrepareForTraining(*finetuned);
  EXPECT_DOUBLE_EQ(FinetuneBackboneAndLinearProjection(*finetuned)[static_cast<int>(
                       ParameterGroupKind::kBackbone)].lr_scale, 0.1);

  // Training mode: batch statistics (zero-mean output per channel whatever
  // the running ones), running statistics pulled towards the batch's.
  auto& stem = *model->backbone->named_modules()["bn1"]->as<FrozenBatchNorm2dImpl>();
  const at::Tensor x = at::randn({2, config.backbone_width, 6, 6}) * 3 + 5;
  const at::Tensor y = stem.forward(x);
  EXPECT_LT(y.mean({0, 2, 3}).abs().max().item<double>(), 1e-4);
  EXPECT_GT(stem.running_mean.min().item<double>(), 0.1);  // 0.1 x ~5 after one step
  y.sum().backward();
  EXPECT_TRUE(stem.weight.grad().defined());
  // Evaluation mode: the frozen formula with the running statistics.
  stem.eval();
  at::NoGradGuard no_grad;
  const auto [scale, shift] = stem.ScaleShift();
  EXPECT_TRUE(at::allclose(stem.forward(x), x * scale.view({1, -1, 1, 1}) + shift.view({1, -1, 1, 1})));
  EXPECT_THROW(ParseBackboneTraining("frozen"), std::invalid_argument);
  EXPECT_EQ(ParseBackboneTraining(BackboneTrainingName(BackboneTraining::kFull)),
            BackboneTraining::kFull);
}

// From a configuration every deformable attention gets the official init:
// zero offset weights and the directional pattern as bias, uniform attention,
// Xavier projections with zero biases; FFN weights Xavier-uniform.
TEST(InitializeForTraining, OfficialDeformableAttentionAndFeedForwardInit) {
  torch::manual_seed(0);
  const ModelConfig config = TinyConfig();
  LpDetr model(config);
  InitializeForTraining(*model);
  const int64_t heads = config.num_heads, levels = config.num_feature_levels,
                points = config.num_points;
  int modules = 0;
  for (const auto& item : model->named_modules()) {
    auto* attn = item.value()->as<MultiScaleDeformableAttentionImpl>();
    if (attn == nullptr) continue;
    ++modules;
    SCOPED_TRACE(item.key());
    EXPECT_EQ(attn->sampling_offsets->weight.abs().max().item<float>(), 0.0f);
    EXPECT_EQ(attn->attention_weights->weight.abs().max().item<float>(), 0.0f);
    EXPECT_EQ(attn->attention_weights->bias.abs().max().item<float>(), 0.0f);
    EXPECT_EQ(attn->value_proj->bias.abs().max().item<float>(), 0.0f);
    const at::Tensor bias = attn->sampling_offsets->bias.view({heads, levels, points, 2});
    for (int64_t h = 0; h < heads; ++h) {
      const double angle = 2 * M_PI * static_cast<double>(h) / static_cast<double>(heads);
      const double c = std::cos(angle), s = std::sin(angle);
      const double norm = std::max(std::abs(c), std::abs(s));
      for (int64_t l = 0; l < levels; ++l) {
        for (int64_t p = 0; p < points; ++p) {
          EXPECT_NEAR(bias[h][l][p][0].item<double>(), c / norm * (p + 1), 1e-5);
          EXPECT_NEAR(bias[h][l][p][1].item<double>(), s / norm * (p + 1), 1e-5);
        }
      }
    }
    const at::Tensor& w = attn->output_proj->weight;
    const double bound = std::sqrt(6.0 / static_cast<double>(w.size(0) + w.size(1)));
    EXPECT_LE(w.abs().max().item<double>(), bound);
    EXPECT_GT(w.abs().max().item<double>(), 0.9 * bound);
  }
  EXPECT_EQ(modules, config.enc_layers + config.dec_layers);
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    if (name.find(".linear1.weight") == std::string::npos || name.rfind("transformer.", 0) != 0) {
      continue;
    }
    const at::Tensor& w = item.value();
    const double bound = std::sqrt(6.0 / static_cast<double>(w.size(0) + w.size(1)));
    EXPECT_LE(w.abs().max().item<double>(), bound) << name;
    EXPECT_GT(w.abs().max().item<double>(), 0.9 * bound) << name;
  }
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

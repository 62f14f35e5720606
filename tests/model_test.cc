// Detector-level tests on small random models: parameter names, shapes,
// padding invariance, training paths, gradients, post-processing, model
// directories and preprocessing.
#include <filesystem>
#include <fstream>
#include <map>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/box_ops.h"
#include "model/deform_attn.h"
#include "model/detector.h"
#include "model/model_dir.h"
#include "model/preprocess.h"
#include "model/runtime.h"
#include "model/transformer.h"
#include "tests/backend_scope.h"

namespace lpdetr {
namespace {

namespace fs = std::filesystem;

ModelConfig TinyConfig(const std::string& variant, int heads = 4) {
  return ModelConfig::FromJson({{"backbone", "resnet18"},
                                {"embed_dim", 64},
                                {"num_heads", 4},
                                {"dim_feedforward", 128},
                                {"enc_layers", 1},
                                {"dec_layers", 3},
                                {"num_queries", 20},
                                {"hybrid_num_proposals", 12},
                                {"denoising_nums", 10},
                                {"num_classes", 5},
                                {"num_select", 15},
                                {"relation", {{"variant", variant}, {"heads", heads}}}});
}

std::map<std::string, std::vector<int64_t>> Shapes(const torch::nn::Module& m) {
  std::map<std::string, std::vector<int64_t>> out;
  for (const auto& [name, t] : StateDict(m)) out[name] = t.sizes().vec();
  return out;
}

// Random weights with non-trivial heads (the official init zeroes box heads).
LpDetr RandomModel(const ModelConfig& c, uint64_t seed) {
  at::manual_seed(seed);
  LpDetr model(c);
  at::NoGradGuard g;
  for (auto& p : model->parameters()) {
    if (p.dim() >= 2) p.normal_(0, 0.5 / std::sqrt(static_cast<double>(p.size(1))));
  }
  model->eval();
  return model;
}

TEST(DetectorTest, OfficialParameterNames) {
  LpDetr lp(TinyConfig("lp-detr", 3));
  auto s = Shapes(*lp);
  EXPECT_EQ(s.at("backbone.conv1.weight"), (std::vector<int64_t>{64, 3, 7, 7}));
  EXPECT_EQ(s.at("backbone.bn1.running_var"), (std::vector<int64_t>{64}));
  EXPECT_EQ(s.at("backbone.layer2.0.downsample.0.weight"), (std::vector<int64_t>{128, 64, 1, 1}));
  EXPECT_EQ(s.at("neck.convs.3.0.weight"), (std::vector<int64_t>{64, 512, 3, 3}));
  EXPECT_EQ(s.at("neck.convs.0.1.weight"), (std::vector<int64_t>{64}));
  EXPECT_EQ(s.at("transformer.encoder.memory_fusion.0.weight"), (std::vector<int64_t>{64, 128}));
  EXPECT_EQ(s.at("transformer.decoder.layers.2.self_attn.in_proj_weight"),
            (std::vector<int64_t>{192, 64}));
  EXPECT_EQ(s.at("transformer.decoder.multi_scale_relation.pos_proj.0.weight"),
            (std::vector<int64_t>{3, 80, 1, 1}));
  EXPECT_EQ(s.at("transformer.decoder.multi_scale_relation.pos_proj.0.bias"),
            (std::vector<int64_t>{3}));
  EXPECT_EQ(s.at("transformer.decoder.multi_scale_relation.scale_weights"),
            (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(s.at("denoising_generator.label_encoder.weight"), (std::vector<int64_t>{5, 64}));
  EXPECT_EQ(s.at("transformer.hybrid_tgt_embed.weight"), (std::vector<int64_t>{12, 64}));
  EXPECT_EQ(s.count("transformer.decoder.position_relation_embedding.pos_proj.0.weight"), 0u);

  LpDetr rel(TinyConfig("relation-detr", 4));
  auto r = Shapes(*rel);
  EXPECT_EQ(r.at("transformer.decoder.position_relation_embedding.pos_proj.0.weight"),
            (std::vector<int64_t>{4, 64, 1, 1}));
  // Every other name and shape is shared, so a Relation-DETR checkpoint
  // initialises an LP-DETR model except the relation parameters.
  for (const auto& [name, shape] : s) {
    if (name.find("multi_scale_relation") != std::string::npos) continue;
    ASSERT_TRUE(r.count(name)) << name;
    EXPECT_EQ(r.at(name), shape) << name;
  }
  ModelConfig r50 = ModelConfig::FromJson({{"backbone", "resnet50"}, {"embed_dim", 64}});
  auto b = Shapes(*LpDetr(r50));
  EXPECT_EQ(b.at("backbone.layer1.0.conv3.weight"), (std::vector<int64_t>{256, 64, 1, 1}));
  EXPECT_EQ(b.at("backbone.layer4.2.bn3.weight"), (std::vector<int64_t>{2048}));
  EXPECT_EQ(b.at("neck.convs.2.0.weight"), (std::vector<int64_t>{64, 2048, 1, 1}));
}

TEST(DetectorTest, InferenceShapes) {
  ModelConfig c = TinyConfig("lp-detr");
  LpDetr model = RandomModel(c, 1);
  at::InferenceMode guard;
  ImageBatch batch = BatchImages({at::randn({3, 96, 128}), at::randn({3, 64, 70})});
  DetectorOutput out = model(batch);
  EXPECT_EQ(out.pred_logits.sizes(), (at::IntArrayRef{2, 20, 5}));
  EXPECT_EQ(out.pred_boxes.sizes(), (at::IntArrayRef{2, 20, 4}));
  EXPECT_EQ(out.layer_logits.sizes(), (at::IntArrayRef{3, 2, 20, 5}));
  EXPECT_EQ(out.enc_boxes.sizes(), (at::IntArrayRef{2, 20, 4}));
  EXPECT_TRUE(out.pred_boxes.isfinite().all().item<bool>());
  EXPECT_FALSE(out.hybrid_layer_logits.defined()) << "no hybrid branch in eval";
  EXPECT_FALSE(out.dn_layer_logits.defined());
}

// An image alone and the same image batched next to a larger one give the
// same detections: batching must never change a user's results.
void ExpectPaddingInvariant(const std::string& variant) {
  ModelConfig c = TinyConfig(variant);
  LpDetr model = RandomModel(c, 7);
  at::InferenceMode guard;
  at::manual_seed(11);
  at::Tensor small = at::randn({3, 70, 90}), large = at::randn({3, 130, 200});
  at::Tensor sizes_small = at::tensor({int64_t{70}, int64_t{90}}).view({1, 2});
  DetectorOutput alone = model(BatchImages({small}));
  DetectorOutput both = model(BatchImages({large, small}));
  const double box_err = (alone.pred_boxes[0] - both.pred_boxes[1]).abs().max().item<double>();
  const double logit_err =
      (alone.pred_logits[0] - both.pred_logits[1]).abs().max().item<double>();
  EXPECT_LT(box_err, 1e-4);
  EXPECT_LT(logit_err, 1e-4);
  auto d_alone = LpDetrImpl::PostProcess(alone.pred_logits, alone.pred_boxes, sizes_small, 15)[0];
  auto d_both = LpDetrImpl::PostProcess(both.pred_logits.narrow(0, 1, 1),
                                        both.pred_boxes.narrow(0, 1, 1), sizes_small, 15)[0];
  EXPECT_TRUE(at::allclose(d_alone.scores, d_both.scores, 0, 1e-4));
  EXPECT_TRUE(at::equal(d_alone.labels, d_both.labels));
  EXPECT_LT((d_alone.boxes - d_both.boxes).abs().max().item<double>(), 1e-4 * 200);
}

TEST(DetectorTest, PaddingInvarianceLpDetr) { ExpectPaddingInvariant("lp-detr"); }
TEST(DetectorTest, PaddingInvarianceRelationDetr) { ExpectPaddingInvariant("relation-detr"); }

std::vector<TrainTarget> Targets() {
  return {{at::tensor({int64_t{1}, int64_t{3}}),
           at::tensor({0.3f, 0.4f, 0.2f, 0.3f, 0.6f, 0.6f, 0.3f, 0.2f}).view({2, 4})},
          {at::tensor({int64_t{0}}), at::tensor({0.5f, 0.5f, 0.4f, 0.4f}).view({1, 4})}};
}

TEST(DetectorTest, TrainingForwardHasDenoisingAndHybridOutputs) {
  ModelConfig c = TinyConfig("lp-detr");
  LpDetr model = RandomModel(c, 2);
  model->train();
  ImageBatch batch = BatchImages({at::randn({3, 96, 96}), at::randn({3, 64, 96})});
  auto targets = Targets();
  DetectorOutput out = model(batch, &targets);
  // max 2 GT per image -> groups = 10 * 2 / 4 = 5, group size 2 * 2.
  EXPECT_EQ(out.dn_groups, 5);
  EXPECT_EQ(out.dn_group_size, 4);
  EXPECT_EQ(out.dn_layer_logits.sizes(), (at::IntArrayRef{3, 2, 20, 5}));
  EXPECT_EQ(out.pred_logits.sizes(), (at::IntArrayRef{2, 20, 5}));
  EXPECT_EQ(out.hybrid_layer_boxes.sizes(), (at::IntArrayRef{3, 2, 12, 4}));
  EXPECT_EQ(out.hybrid_enc_logits.sizes(), (at::IntArrayRef{2, 12, 5}));

  // Gradients of the detection outputs reach W_G, b_G and Lambda.
  at::Tensor loss = out.pred_logits.sigmoid().sum() + out.layer_boxes.sum() +
                    out.dn_layer_logits.sigmoid().sum();
  loss.backward();
  auto rel = model->transformer->decoder->multi_scale_relation;
  for (const auto& p : rel->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0) << p.key();
  }
  EXPECT_TRUE(model->denoising_generator->label_encoder->weight.grad().defined());
}

TEST(DetectorTest, DenoisingAttentionMask) {
  DenoisingGenerator gen(20, 5, 64, 10);
  auto r = gen(Targets());
  ASSERT_EQ(r.groups, 5);
  const int64_t num_dn = r.groups * r.group_size;  // 20
  ASSERT_EQ(r.attn_mask.sizes(), (at::IntArrayRef{num_dn + 20, num_dn + 20}));
  // Matching queries never see denoising queries, but see each other.
  EXPECT_TRUE(r.attn_mask.narrow(0, num_dn, 20).narrow(1, 0, num_dn).all().item<bool>());
  EXPECT_FALSE(r.attn_mask.narrow(0, num_dn, 20).narrow(1, num_dn, 20).any().item<bool>());
  // A denoising group sees itself and the matching queries, not other groups.
  at::Tensor g1 = r.attn_mask.narrow(0, 4, 4);
  EXPECT_FALSE(g1.narrow(1, 4, 4).any().item<bool>());
  EXPECT_TRUE(g1.narrow(1, 0, 4).all().item<bool>());
  EXPECT_TRUE(g1.narrow(1, 8, num_dn - 8).all().item<bool>());
  EXPECT_FALSE(g1.narrow(1, num_dn, 20).any().item<bool>());
  // Padding slots of the image with fewer GT stay zero.
  EXPECT_EQ(r.label_query[1][1].abs().sum().item<float>(), 0.0f);
  EXPECT_GT(r.label_query[1][0].abs().sum().item<float>(), 0.0f);
}

TEST(DetectorTest, PostProcessSelectsTopScoresAndScalesBoxes) {
  at::Tensor logits = at::full({1, 3, 2}, -10.0);
  logits[0][1][0] = 2.0;  // best
  logits[0][2][1] = 1.0;  // second
  at::Tensor boxes = at::tensor({0.5f, 0.5f, 1.f, 1.f, 0.25f, 0.5f, 0.5f, 0.2f, 0.5f, 0.5f,
                                 0.1f, 0.1f}).view({1, 3, 4});
  auto d = LpDetrImpl::PostProcess(logits, boxes, at::tensor({int64_t{100}, int64_t{200}}).view({1, 2}), 2)[0];
  ASSERT_EQ(d.scores.size(0), 2);
  EXPECT_NEAR(d.scores[0].item<float>(), 1.0 / (1.0 + std::exp(-2.0)), 1e-6);
  EXPECT_EQ(d.labels[0].item<int64_t>(), 0);
  EXPECT_EQ(d.labels[1].item<int64_t>(), 1);
  // (0.25, 0.5, 0.5, 0.2) cxcywh in a 100x200 (h x w) image.
  EXPECT_TRUE(at::allclose(d.boxes[0], at::tensor({0.0f, 40.0f, 100.0f, 60.0f}), 0, 1e-4));
  // num_select larger than queries x classes is clamped.
  EXPECT_EQ(LpDetrImpl::PostProcess(logits, boxes, at::tensor({int64_t{1}, int64_t{1}}).view({1, 2}), 100)[0]
                .scores.size(0),
            6);
}

TEST(DetectorTest, SameClassNmsKeepsTheBestOfOverlappingBoxesOfOneClass) {
  // Sorted by descending score: 0 and 1 overlap by IoU 0.9 (same class), 2
  // overlaps 0 as much but has another class, 3 is its own object, 4 overlaps
  // the suppressed 1 by IoU 0.9 but the kept 0 only by IoU 0.81.
  const at::Tensor boxes = at::tensor({0.f, 0.f, 10.f, 10.f,  //
                                       1.f, 0.f, 10.f, 10.f,  //
                                       0.f, 0.f, 10.f, 9.f,   //
                                       50.f, 50.f, 60.f, 60.f,  //
                                       1.f, 0.f, 10.f, 9.f}).view({5, 4});
  const at::Tensor labels = at::tensor({int64_t{3}, int64_t{3}, int64_t{1}, int64_t{3}, int64_t{3}});
  at::Tensor keep = SameClassNmsKeep(boxes, labels, 0.85);
  EXPECT_TRUE(at::equal(keep, at::tensor({int64_t{0}, int64_t{2}, int64_t{3}, int64_t{4}})));
  keep = SameClassNmsKeep(boxes, labels, 0.8);
  EXPECT_TRUE(at::equal(keep, at::tensor({int64_t{0}, int64_t{2}, int64_t{3}})));
  // A threshold of 1 suppresses nothing; no boxes give no indices.
  EXPECT_EQ(SameClassNmsKeep(boxes, labels, 1.0).size(0), 5);
  EXPECT_EQ(SameClassNmsKeep(at::zeros({0, 4}), at::zeros({0}, at::kLong), 0.5).size(0), 0);
  EXPECT_THROW(SameClassNmsKeep(boxes, labels.narrow(0, 0, 4), 0.5), c10::Error);
}

TEST(DetectorTest, PostProcessWithNmsDropsSameClassDuplicatesOnly) {
  // Queries 0 and 1 are the same box; 0 scores higher. Query 2 is elsewhere.
  at::Tensor logits = at::full({1, 3, 2}, -10.0);
  logits[0][0][0] = 3.0;
  logits[0][1][0] = 2.0;
  logits[0][1][1] = 1.5;  // the duplicate box under another class survives
  logits[0][2][0] = 1.0;
  const at::Tensor boxes = at::tensor({0.5f, 0.5f, 0.4f, 0.4f, 0.5f, 0.5f, 0.4f, 0.4f, 0.2f,
                                       0.2f, 0.1f, 0.1f}).view({1, 3, 4});
  const at::Tensor sizes = at::tensor({int64_t{100}, int64_t{100}}).view({1, 2});
  const Detections plain = LpDetrImpl::PostProcess(logits, boxes, sizes, 4)[0];
  ASSERT_EQ(plain.scores.size(0), 4);
  const Detections nms = LpDetrImpl::PostProcess(logits, boxes, sizes, 4, 0.5)[0];
  ASSERT_EQ(nms.scores.size(0), 3);
  EXPECT_TRUE(at::equal(nms.labels, at::tensor({int64_t{0}, int64_t{1}, int64_t{0}})));
  EXPECT_NEAR(nms.scores[0].item<float>(), 1.0 / (1.0 + std::exp(-3.0)), 1e-6);
  EXPECT_NEAR(nms.scores[1].item<float>(), 1.0 / (1.0 + std::exp(-1.5)), 1e-6);
  EXPECT_TRUE(at::allclose(nms.boxes[2], at::tensor({15.f, 15.f, 25.f, 25.f}), 0, 1e-4));
}

TEST(ModelDirTest, SaveLoadRoundTripAndStrictErrors) {
  ModelConfig c = TinyConfig("lp-detr");
  c.classes = {"a", "b", "c", "d", "e"};
  LpDetr model = RandomModel(c, 5);
  const std::string dir = testing::TempDir() + "/model_dir_test";
  fs::remove_all(dir);
  SaveModelDir(dir, c, *model, at::kHalf);
  LoadedModel loaded = LoadModelDir(dir);
  EXPECT_EQ(loaded.config.classes, c.classes);
  auto a = StateDict(*model), b = StateDict(*loaded.model);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(at::allclose(a[i].second.to(at::kHalf).to(at::kFloat), b[i].second))
        << a[i].first;
  }
  // labels.txt overrides the names; a wrong count is an error.
  std::ofstream(dir + "/labels.txt") << "v\nw\nx\ny\nz\n";
  EXPECT_EQ(LoadModelDir(dir).config.classes[4], "z");
  std::ofstream(dir + "/labels.txt") << "only\none\n";
  EXPECT_THROW(LoadModelDir(dir), ModelLoadError);
  fs::remove(dir + "/labels.txt");

  // Missing and unexpected keys are listed by name.
  NamedTensors weights = StateDict(*model);
  weights.erase(weights.begin());
  weights.emplace_back("transformer.decoder.position_relation_embedding.pos_proj.0.weight",
                       at::zeros({4, 64, 1, 1}));
  LpDetr fresh(c);
  try {
    LoadStateDict(*fresh, weights);
    FAIL() << "expected ModelLoadError";
  } catch (const ModelLoadError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("missing keys (1): backbone.conv1.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("unexpected keys (1): transformer.decoder.position_relation_embedding"),
              std::string::npos)
        << msg;
  }
  NamedTensors bad_shape = StateDict(*model);
  bad_shape[0].second = at::zeros({1});
  try {
    LoadStateDict(*fresh, bad_shape);
    FAIL() << "expected ModelLoadError";
  } catch (const ModelLoadError& e) {
    EXPECT_NE(std::string(e.what()).find("shape mismatches"), std::string::npos) << e.what();
  }
  EXPECT_THROW(LoadModelDir(dir + "/nope"), ModelLoadError);
}

TEST(PreprocessTest, ResizeRuleAndNormalisation) {
  EXPECT_EQ(ResizedSize(480, 640, 800, 1333), (std::array<int64_t, 2>{800, 1066}));
  EXPECT_EQ(ResizedSize(1000, 100, 800, 1333), (std::array<int64_t, 2>{1333, 133}));
  EXPECT_EQ(ResizedSize(800, 800, 800, 1333), (std::array<int64_t, 2>{800, 800}));
  at::Tensor gray = at::full({40, 60, 3}, 128, at::kByte);
  at::Tensor x = PreprocessImage(gray, 80, 200);
  ASSERT_EQ(x.sizes(), (at::IntArrayRef{3, 80, 120}));
  EXPECT_NEAR(x[0][10][10].item<float>(), (128 / 255.0 - 0.485) / 0.229, 1e-5);
  EXPECT_NEAR(x[2][50][100].item<float>(), (128 / 255.0 - 0.406) / 0.225, 1e-5);

  ImageBatch b = BatchImages({at::ones({3, 50, 70}), at::ones({3, 33, 100})});
  EXPECT_EQ(b.images.sizes(), (at::IntArrayRef{2, 3, 64, 128}));
  EXPECT_EQ(b.extents[0], (std::array<int64_t, 2>{64, 96}));
  EXPECT_EQ(b.extents[1], (std::array<int64_t, 2>{64, 128}));
  EXPECT_FALSE(b.mask[0][49][69].item<bool>());
  EXPECT_TRUE(b.mask[0][50][0].item<bool>());
  EXPECT_EQ(b.images[0][0][50][0].item<float>(), 0.0f);
}

// ---------------------------------------------------------------------------
// Inference fast path (kKernels backend, eval, no grad): folded batch norm,
// channels-last backbone, row-blocked encoder feed-forward.

// Non-trivial frozen statistics so that folding has something to fold.
void RandomizeFrozenBatchNorm(torch::nn::Module& m) {
  at::NoGradGuard g;
  for (auto& item : m.named_buffers()) {
    const std::string& name = item.key();
    at::Tensor& t = item.value();
    if (name.size() >= 11 && name.compare(name.size() - 11, 11, "running_var") == 0) {
      t.uniform_(0.5, 2.0);
    } else if (name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0) {
      t.uniform_(0.5, 1.5);
    } else {
      t.normal_(0, 0.2);
    }
  }
}

double RelativeError(const at::Tensor& a, const at::Tensor& b) {
  return (a - b).abs().max().item<double>() / b.abs().max().clamp_min(1e-12).item<double>();
}

TEST(FastPathTest, OnlyForKernelsBackendEvalAndNoGrad) {
  torch::nn::Linear m(2, 2);
  m->eval();
  BackendScope kernels(OpBackend::kKernels);
  {
    at::NoGradGuard g;
    EXPECT_TRUE(UseInferenceFastPath(*m));
    m->train();
    EXPECT_FALSE(UseInferenceFastPath(*m)) << "train mode";
    m->eval();
    BackendScope composed(OpBackend::kComposed);
    EXPECT_FALSE(UseInferenceFastPath(*m)) << "reference numerics";
  }
  EXPECT_FALSE(UseInferenceFastPath(*m)) << "autograd recording";
}

TEST(FastPathTest, FoldedBackboneMatchesUnfolded) {
  at::manual_seed(3);
  ResNet net("resnet50", std::vector<int>{1, 2, 3});
  RandomizeFrozenBatchNorm(*net);
  net->eval();
  at::Tensor x = at::randn({1, 3, 96, 128});
  at::NoGradGuard g;
  std::vector<at::Tensor> ref, fast;
  {
    BackendScope b(OpBackend::kComposed);
    ref = net(x);
  }
  {
    BackendScope b(OpBackend::kKernels);
    fast = net(x);
  }
  ASSERT_EQ(ref.size(), 3u);
  ASSERT_EQ(fast.size(), 3u);
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_EQ(fast[i].sizes(), ref[i].sizes());
    EXPECT_TRUE(fast[i].is_contiguous(at::MemoryFormat::ChannelsLast)) << "level " << i;
    EXPECT_LT(RelativeError(fast[i], ref[i]), 1e-4) << "level " << i;
  }
  EXPECT_FALSE(at::equal(fast[0], ref[0])) << "the fast path did not run";

  // Fine-tuning updates conv weights in place: the next folded forward must
  // use the new weights, not a stale fold.
  for (auto& item : net->named_parameters()) {
    if (item.key() == "layer2.0.conv1.weight" || item.key() == "conv1.weight") {
      item.value().mul_(-0.5);
    }
  }
  {
    BackendScope b(OpBackend::kComposed);
    ref = net(x);
  }
  {
    BackendScope b(OpBackend::kKernels);
    fast = net(x);
  }
  for (size_t i = 0; i < ref.size(); ++i) {
    EXPECT_LT(RelativeError(fast[i], ref[i]), 1e-4) << "after the update, level " << i;
  }
}

TEST(FastPathTest, FoldIsCachedAndRebuiltWhenSourcesChange) {
  at::manual_seed(5);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(8, 16, 3).stride(2).padding(1).bias(false));
  FrozenBatchNorm2d bn(16);
  RandomizeFrozenBatchNorm(*bn);
  at::Tensor x = at::randn({2, 8, 11, 12});
  at::NoGradGuard g;
  ConvBnFold fold;
  auto check = [&](const char* what) {
    EXPECT_LT(RelativeError(fold.Forward(*conv, *bn, x), bn(conv(x))), 1e-5) << what;
  };
  check("first");
  EXPECT_EQ(fold.builds(), 1);
  check("cached");
  EXPECT_EQ(fold.builds(), 1) << "unchanged sources must reuse the fold";
  conv->weight.add_(0.25);  // in-place update, e.g. an optimizer step
  check("conv weight changed");
  EXPECT_EQ(fold.builds(), 2);
  bn->running_var.mul_(3.0);
  check("running_var changed");
  EXPECT_EQ(fold.builds(), 3);
  conv->weight.set_data(at::randn({16, 8, 3, 3}));  // new storage, same tensor
  check("conv weight storage replaced");
  EXPECT_EQ(fold.builds(), 4);
}

TEST(FastPathTest, BlockedEncoderMatchesReference) {
  ModelConfig c = ModelConfig::FromJson({{"embed_dim", 32},
                                         {"num_heads", 4},
                                         {"dim_feedforward", 96},
                                         {"enc_layers", 2},
                                         {"num_feature_levels", 4},
                                         {"num_points", 2}});
  at::manual_seed(9);
  Encoder encoder(c);
  encoder->eval();
  // 1920 + 480 + 120 + 30 = 2550 positions: one full 2048-row block and a
  // partial one.
  const SpatialShapes shapes = {{48, 40}, {24, 20}, {12, 10}, {6, 5}};
  const int64_t s = 2550;
  at::Tensor query = at::randn({1, s, 32}), pos = at::randn({1, s, 32});
  at::Tensor ref = at::rand({1, s, 4, 2});
  at::Tensor mask = at::zeros({1, s}, at::kBool);
  at::NoGradGuard g;
  at::Tensor expected, got;
  {
    BackendScope b(OpBackend::kComposed);
    expected = encoder(query, pos, ref, shapes, mask);
  }
  {
    BackendScope b(OpBackend::kKernels);
    got = encoder(query, pos, ref, shapes, mask);
  }
  ASSERT_EQ(got.sizes(), expected.sizes());
  EXPECT_LT(RelativeError(got, expected), 1e-4);
}

// The fast path computes the sampling locations in one loop instead of
// ATen's broadcasting expressions: points (encoder) and boxes (decoder),
// batch 2, against the composed backend.
TEST(FastPathTest, DeformableAttentionMatchesReferenceForPointsAndBoxes) {
  at::manual_seed(11);
  MultiScaleDeformableAttention attn(32, 3, 4, 2);
  attn->eval();
  const SpatialShapes shapes = {{12, 10}, {6, 5}, {3, 3}};
  const int64_t nv = 120 + 30 + 9, nq = 37;
  at::Tensor value = at::randn({2, nv, 32}), query = at::randn({2, nq, 32});
  at::Tensor mask = at::rand({2, nv}) > 0.8;
  at::Tensor points = at::rand({2, nq, 3, 2});
  at::Tensor boxes = at::cat({at::rand({2, nq, 3, 2}), at::rand({2, nq, 3, 2}) * 0.5 + 0.05}, -1);
  at::NoGradGuard g;
  for (const at::Tensor& ref : {points, boxes}) {
    at::Tensor expected, got;
    {
      BackendScope b(OpBackend::kComposed);
      expected = attn(query, ref, value, shapes, mask);
    }
    {
      BackendScope b(OpBackend::kKernels);
      ASSERT_TRUE(UseInferenceFastPath(*attn));
      got = attn(query, ref, value, shapes, mask);
    }
    ASSERT_EQ(got.sizes(), expected.sizes());
    EXPECT_LT(RelativeError(got, expected), 1e-5) << "reference dim " << ref.size(-1);
  }
}

}  // namespace
}  // namespace lpdetr

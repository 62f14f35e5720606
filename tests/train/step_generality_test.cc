// `lpdetr-train step-tensor` beyond the two training fixtures: random-weight
// model directories of many shapes (batch sizes, decoder layer counts,
// relation head counts, both variants, images of different sizes, images
// without targets, denoising budgets, hybrid_assign, denoising noise), some of
// them made through tools/convert_checkpoint.py from a .pth like the fixtures'.
//
// Every step must run, give finite losses under exactly the official loss
// keys (9 L + 6 terms for L decoder layers), a finite gradient for every
// trainable parameter and none for the frozen stem and layer1, and a
// one-to-one assignment of min(n_i, num_queries) pairs per image. Where the
// official code fixes a value it is asserted: the denoising group count
// max(denoising_nums * m // max(m^2, 1), 1) for the largest target count m
// (so one group for denoising_nums = 0 or no targets at all), the num_boxes
// normalisers (target count clamped to 1, times the groups for denoising;
// the tiled count clamped to 1 for the hybrid branch), zero box terms when no
// pair is matched and zero denoising terms when there is no denoising query.
// The attention mask's consequence is checked too: matching queries never
// see denoising queries, so the one-to-one and hybrid terms do not depend on
// the denoising noise (same values for other seeds) and the one-to-one and
// denoising terms do not depend on hybrid_assign.
//
// Tiny models (ResNet-18, embed 64, 96x128 images); the binary is run as
// tests outside the repository run it.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/serialize.h>

#include "model/config.h"
#include "model/detector.h"
#include "model/model_dir.h"
#include "model/safetensors.h"
#include "tests/test_paths.h"

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A small configuration; `overrides` replace its keys.
ModelConfig TinyConfig(const json& overrides = json::object()) {
  json j = {{"backbone", "resnet18"},
            {"embed_dim", 64},
            {"num_heads", 8},
            {"dim_feedforward", 128},
            {"enc_layers", 1},
            {"dec_layers", 3},
            {"num_queries", 20},
            {"hybrid_num_proposals", 30},
            {"num_classes", 7},
            {"num_select", 10},
            {"denoising_nums", 100},
            {"label_noise_prob", 0.0},
            {"box_noise_scale", 0.0},
            {"hybrid_assign", 6},
            {"relation", {{"variant", "lp-detr"}, {"heads", 8}}}};
  for (const auto& item : overrides.items()) j[item.key()] = item.value();
  return ModelConfig::FromJson(j);
}

// Random weights with non-trivial heads and relation scales (the official
// initialisation zeroes the box heads), rounded to float16 like the fixtures'
// checkpoints so that a float16 .pth holds them exactly.
LpDetr RandomModel(const ModelConfig& c, uint64_t seed) {
  at::manual_seed(seed);
  LpDetr model(c);
  at::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) {
    at::Tensor p = item.value();
    if (p.dim() >= 2) p.normal_(0, 0.5 / std::sqrt(static_cast<double>(p.size(1))));
    if (item.key().find("scale_weights") != std::string::npos) p.normal_(1.0, 0.5);
    if (item.key().find("pos_proj.0.bias") != std::string::npos) p.uniform_(0.0, 0.2);
    p.copy_(p.to(at::kHalf).to(at::kFloat));
  }
  return model;
}

// Fresh empty directory under the test temp dir.
fs::path FreshDir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / "step_generality" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

fs::path MakeModelDir(const ModelConfig& c, const std::string& name, uint64_t seed = 1) {
  const fs::path dir = FreshDir(name) / "model";
  LpDetr model = RandomModel(c, seed);
  SaveModelDir(dir.string(), c, *model, at::kHalf);
  return dir;
}

// One image of a step input: its unpadded size and its targets.
struct ImageSpec {
  int64_t height, width;
  int64_t targets;
};

struct StepInput {
  fs::path path;
  std::vector<int64_t> counts;  // targets per image
};

// images [B,3,H,W] (random inside each image, zero padding; H, W the largest
// sizes rounded up to 32), mask, image_sizes and random targets.
StepInput WriteStepInput(const fs::path& path, const std::vector<ImageSpec>& images,
                         int64_t num_classes, uint64_t seed) {
  at::manual_seed(seed);
  int64_t h = 0, w = 0;
  for (const auto& im : images) {
    h = std::max(h, im.height);
    w = std::max(w, im.width);
  }
  h = (h + 31) / 32 * 32;
  w = (w + 31) / 32 * 32;
  const int64_t b = static_cast<int64_t>(images.size());
  at::Tensor pixels = at::zeros({b, 3, h, w});
  at::Tensor mask = at::ones({b, h, w}, at::kBool);
  at::Tensor sizes = at::empty({b, 2}, at::kLong);
  NamedTensors tensors;
  StepInput in{path, {}};
  for (int64_t i = 0; i < b; ++i) {
    const ImageSpec& im = images[i];
    pixels[i].narrow(1, 0, im.height).narrow(2, 0, im.width).normal_();
    mask[i].narrow(0, 0, im.height).narrow(1, 0, im.width).fill_(false);
    sizes[i][0] = im.height;
    sizes[i][1] = im.width;
    at::Tensor wh = at::rand({im.targets, 2}) * 0.35 + 0.05;
    at::Tensor centre = wh / 2 + at::rand({im.targets, 2}) * (1 - wh);
    tensors.emplace_back("target_boxes_" + std::to_string(i), at::cat({centre, wh}, 1));
    tensors.emplace_back("target_labels_" + std::to_string(i),
                         at::randint(0, num_classes, {im.targets}, at::kLong));
    in.counts.push_back(im.targets);
  }
  tensors.emplace_back("images", pixels);
  tensors.emplace_back("mask", mask);
  tensors.emplace_back("image_sizes", sizes);
  WriteSafetensors(path.string(), tensors);
  return in;
}

std::string Quote(const fs::path& p) { return "'" + p.string() + "'"; }

// Runs the command; the output file's contents.
SafetensorsContents RunStep(const fs::path& model_dir, const StepInput& in, const fs::path& out,
                            int64_t seed = 0) {
  fs::remove(out);
  const std::string cmd = Quote(fs::path(testing_paths::BinDir()) / "lpdetr-train") +
                          " step-tensor --model " + Quote(model_dir) + " --input " +
                          Quote(in.path) + " --output " + Quote(out) + " --seed " +
                          std::to_string(seed) + " > /dev/null";
  const int rc = std::system(cmd.c_str());
  EXPECT_EQ(rc, 0) << cmd;
  if (rc != 0) return {};
  return ReadSafetensors(out.string());
}

// The official loss dict keys for L decoder layers (weight_dict entries that
// the loss dict holds): one-to-one, denoising, hybrid.
std::set<std::string> OfficialLossKeys(int64_t layers) {
  std::vector<std::string> matched = {""}, denoising = {"_dn"};
  for (int64_t l = 0; l + 1 < layers; ++l) {
    matched.push_back("_" + std::to_string(l));
    denoising.push_back("_dn_" + std::to_string(l));
  }
  matched.push_back("_enc");
  std::vector<std::string> suffixes = matched;
  suffixes.insert(suffixes.end(), denoising.begin(), denoising.end());
  for (const std::string& s : matched) suffixes.push_back(s + "_hybrid");
  std::set<std::string> keys;
  for (const std::string& s : suffixes) {
    for (const char* term : {"loss_class", "loss_bbox", "loss_giou"}) keys.insert(term + s);
  }
  return keys;
}

bool IsDenoisingKey(const std::string& key) { return key.find("_dn") != std::string::npos; }
bool IsHybridKey(const std::string& key) { return key.find("_hybrid") != std::string::npos; }
bool IsBoxKey(const std::string& key) {
  return key.rfind("loss_bbox", 0) == 0 || key.rfind("loss_giou", 0) == 0;
}

// Official group count: denoising_nums * m // max(m * m, 1), at least 1.
int64_t OfficialGroups(int64_t denoising_nums, const std::vector<int64_t>& counts) {
  const int64_t m = *std::max_element(counts.begin(), counts.end());
  return std::max<int64_t>(denoising_nums * m / std::max<int64_t>(m * m, 1), 1);
}

bool IsFrozen(const std::string& name) {
  return name == "backbone.conv1.weight" || name.rfind("backbone.layer1.", 0) == 0;
}

double Metadata(const SafetensorsContents& out, const std::string& key) {
  auto it = out.metadata.find(key);
  if (it == out.metadata.end()) {
    ADD_FAILURE() << "output metadata has no " << key;
    return NAN;
  }
  return std::stod(it->second);
}

// Losses "loss.<key>" -> value.
std::map<std::string, double> Losses(const SafetensorsContents& out) {
  std::map<std::string, double> losses;
  for (const auto& [name, t] : out.tensors) {
    if (name.rfind("loss.", 0) == 0) losses[name.substr(5)] = t.item<double>();
  }
  return losses;
}

// Every property that holds for any step, and the official constants.
void CheckStep(const SafetensorsContents& out, const ModelConfig& c, const StepInput& in,
               const fs::path& model_dir) {
  ASSERT_TRUE(out.Contains("loss_total"));
  const int64_t layers = c.dec_layers;
  const std::map<std::string, double> losses = Losses(out);
  std::set<std::string> keys;
  for (const auto& [k, v] : losses) keys.insert(k);
  const std::set<std::string> want = OfficialLossKeys(layers);
  EXPECT_EQ(want.size(), static_cast<size_t>(9 * layers + 6));
  EXPECT_EQ(keys, want);

  // Finite terms; the total is their sum.
  double sum = 0;
  for (const auto& [k, v] : losses) {
    EXPECT_TRUE(std::isfinite(v)) << k << " = " << v;
    EXPECT_GE(v, 0.0) << k;
    sum += v;
  }
  const double total = out.Get("loss_total").item<double>();
  EXPECT_TRUE(std::isfinite(total));
  EXPECT_NEAR(total, sum, 1e-5 * std::max(1.0, std::abs(sum)));

  // Normalisers and the denoising group count.
  int64_t n = 0;
  for (int64_t k : in.counts) n += k;
  const int64_t groups = OfficialGroups(c.denoising_nums, in.counts);
  const double num_boxes = std::max<int64_t>(n, 1);
  EXPECT_EQ(Metadata(out, "denoising_groups"), groups);
  EXPECT_EQ(Metadata(out, "num_boxes"), num_boxes);
  EXPECT_EQ(Metadata(out, "num_boxes_dn"), num_boxes * groups);
  EXPECT_EQ(Metadata(out, "num_boxes_hybrid"), std::max<int64_t>(n * c.hybrid_assign, 1));

  // No matched pair: every box term is exactly 0; no denoising query: every
  // denoising term is 0 (the class term sums over zero queries).
  for (const auto& [k, v] : losses) {
    if (n > 0) {
      EXPECT_GT(v, 0.0) << k;
    } else if (IsBoxKey(k) || IsDenoisingKey(k)) {
      EXPECT_EQ(v, 0.0) << k;
    }
  }

  // A finite gradient for every trainable parameter, none for the frozen ones.
  LoadedModel loaded = LoadModelDir(model_dir.string());
  int64_t trainable = 0;
  for (const auto& item : loaded.model->named_parameters()) {
    const std::string& name = item.key();
    const std::string key = "grad." + name;
    if (IsFrozen(name)) {
      EXPECT_FALSE(out.Contains(key)) << key;
      continue;
    }
    ++trainable;
    ASSERT_TRUE(out.Contains(key)) << key;
    const at::Tensor& g = out.Get(key);
    EXPECT_EQ(g.sizes(), item.value().sizes()) << key;
    EXPECT_TRUE(at::isfinite(g).all().item<bool>()) << key;
  }
  int64_t grads = 0;
  for (const auto& [name, t] : out.tensors) grads += name.rfind("grad.", 0) == 0 ? 1 : 0;
  EXPECT_EQ(grads, trainable);
  // The label encoder is trained exactly when a denoising query exists.
  const at::Tensor& label_grad = out.Get("grad.denoising_generator.label_encoder.weight");
  EXPECT_EQ(label_grad.abs().sum().item<double>() > 0, n > 0);

  // The final layer's assignment: min(n_i, Q) pairs, ascending queries,
  // distinct targets.
  const int64_t batch = static_cast<int64_t>(in.counts.size());
  for (int64_t i = 0; i < batch; ++i) {
    const std::string k = std::to_string(i);
    ASSERT_TRUE(out.Contains("match_query_" + k) && out.Contains("match_target_" + k)) << k;
    const at::Tensor q = out.Get("match_query_" + k), t = out.Get("match_target_" + k);
    EXPECT_EQ(q.scalar_type(), at::kLong);
    EXPECT_EQ(t.scalar_type(), at::kLong);
    const int64_t pairs = std::min<int64_t>(in.counts[i], c.num_queries);
    ASSERT_EQ(q.numel(), pairs) << "image " << i;
    ASSERT_EQ(t.numel(), pairs) << "image " << i;
    if (pairs == 0) continue;
    EXPECT_TRUE((q.slice(0, 1) > q.slice(0, 0, pairs - 1)).all().item<bool>()) << q;
    EXPECT_GE(q.min().item<int64_t>(), 0);
    EXPECT_LT(q.max().item<int64_t>(), c.num_queries);
    EXPECT_GE(t.min().item<int64_t>(), 0);
    EXPECT_LT(t.max().item<int64_t>(), in.counts[i]);
    EXPECT_EQ(std::get<0>(at::_unique(t)).numel(), pairs) << t;
  }
  EXPECT_FALSE(out.Contains("match_query_" + std::to_string(batch)));
}

// Relation parameter gradients: present and non-zero exactly when a relation
// feeds some decoder layer (lp-detr: every layer; relation-detr: from layer 1).
void CheckRelationGradients(const SafetensorsContents& out, const ModelConfig& c) {
  const bool lp = c.relation_variant == RelationVariant::kLpDetr;
  const std::string prefix = lp ? "grad.transformer.decoder.multi_scale_relation."
                                : "grad.transformer.decoder.position_relation_embedding.";
  std::vector<std::string> names = {prefix + "pos_proj.0.weight", prefix + "pos_proj.0.bias"};
  if (lp) names.push_back(prefix + "scale_weights");
  int64_t relation_grads = 0;
  for (const auto& [name, t] : out.tensors) {
    if (name.find("multi_scale_relation.") != std::string::npos ||
        name.find("position_relation_embedding.") != std::string::npos) {
      ++relation_grads;
    }
  }
  if (c.relation_heads == 0) {
    EXPECT_EQ(relation_grads, 0);
    return;
  }
  EXPECT_EQ(relation_grads, static_cast<int64_t>(names.size()));
  const bool used = lp || c.dec_layers >= 2;
  for (const std::string& name : names) {
    ASSERT_TRUE(out.Contains(name)) << name;
    EXPECT_EQ(out.Get(name).size(0), name.find("scale_weights") != std::string::npos
                                         ? c.dec_layers
                                         : c.relation_heads)
        << name;
    EXPECT_EQ(out.Get(name).abs().sum().item<double>() > 0, used) << name;
  }
}

const std::vector<ImageSpec> kTwoImages = {{96, 128, 3}, {128, 96, 5}};

struct StepRun {
  SafetensorsContents out;
  StepInput in;
};

// One step of config `c` on `images`, checked.
StepRun CheckedStep(const std::string& name, const ModelConfig& c,
                const std::vector<ImageSpec>& images, int64_t seed = 0) {
  const fs::path model_dir = MakeModelDir(c, name);
  StepInput in = WriteStepInput(model_dir.parent_path() / "in.safetensors", images,
                                c.num_classes, 11);
  SafetensorsContents out = RunStep(model_dir, in, model_dir.parent_path() / "out.safetensors",
                                    seed);
  {
    SCOPED_TRACE(name);
    CheckStep(out, c, in, model_dir);
    CheckRelationGradients(out, c);
  }
  return {std::move(out), std::move(in)};
}

TEST(StepGenerality, BatchSizesAndImageSizes) {
  CheckedStep("batch1", TinyConfig(), {{96, 128, 4}});
  // Three images of different sizes, padded to 128x160.
  CheckedStep("batch3", TinyConfig(), {{96, 128, 2}, {128, 96, 4}, {100, 150, 1}});
}

TEST(StepGenerality, DecoderLayers) {
  for (int layers : {1, 2, 4, 6}) {
    CheckedStep("lp_layers" + std::to_string(layers), TinyConfig({{"dec_layers", layers}}),
                kTwoImages);
  }
  for (int layers : {1, 4}) {
    CheckedStep("rel_layers" + std::to_string(layers),
                TinyConfig({{"dec_layers", layers},
                            {"relation", {{"variant", "relation-detr"}, {"heads", 8}}}}),
                kTwoImages);
  }
}

TEST(StepGenerality, RelationHeads) {
  for (int heads : {4, 0}) {
    CheckedStep("lp_heads" + std::to_string(heads),
                TinyConfig({{"relation", {{"variant", "lp-detr"}, {"heads", heads}}}}),
                kTwoImages);
  }
  for (int heads : {4, 0}) {
    CheckedStep("rel_heads" + std::to_string(heads),
                TinyConfig({{"relation", {{"variant", "relation-detr"}, {"heads", heads}}}}),
                kTwoImages);
  }
}

TEST(StepGenerality, ImagesWithoutTargets) {
  // One image without targets: no pair for it, its denoising slots are padding.
  StepRun one = CheckedStep("one_empty", TinyConfig(), {{96, 128, 0}, {96, 128, 3}});
  EXPECT_EQ(Metadata(one.out, "denoising_groups"), 33);
  for (const char* variant : {"lp-detr", "relation-detr"}) {
    const ModelConfig c = TinyConfig({{"relation", {{"variant", variant}, {"heads", 8}}}});
    // No targets at all: one denoising group of zero queries (the official
    // 0 // max(0, 1) = 0 -> 1), num_boxes 1 everywhere, only class terms.
    StepRun none = CheckedStep(std::string(variant) + "_all_empty", c, {{96, 128, 0}, {128, 96, 0}});
    EXPECT_EQ(Metadata(none.out, "denoising_groups"), 1);
    for (const auto& [k, v] : Losses(none.out)) {
      if (!IsBoxKey(k) && !IsDenoisingKey(k)) {
        EXPECT_GT(v, 0.0) << k;
      }
    }
  }
}

TEST(StepGenerality, DenoisingGroupCounts) {
  // max_gt 7: 100 // 7 = 14 groups; 5 // 7 = 0 -> 1 group; 0 -> 1 group (the
  // official model always runs denoising in training).
  const std::vector<ImageSpec> images = {{96, 128, 7}, {96, 128, 2}};
  std::map<int, std::map<std::string, double>> losses;
  for (int nums : {100, 5, 0}) {
    StepRun r = CheckedStep("dn" + std::to_string(nums), TinyConfig({{"denoising_nums", nums}}),
                        images);
    EXPECT_EQ(Metadata(r.out, "denoising_groups"), nums == 100 ? 14 : 1) << nums;
    losses[nums] = Losses(r.out);
  }
  // The matching queries do not see the denoising queries: the one-to-one
  // terms do not depend on how many there are (up to the rounding of longer
  // attention rows), nor do the hybrid ones.
  for (const auto& [k, v] : losses[100]) {
    if (IsDenoisingKey(k)) continue;
    for (int nums : {5, 0}) {
      EXPECT_NEAR(losses[nums].at(k), v, 1e-4 * v) << k << " with denoising_nums " << nums;
    }
  }
}

TEST(StepGenerality, MoreTargetsThanQueries) {
  // 7 targets for 5 queries: 5 one-to-one pairs; the hybrid branch matches
  // 42 tiled targets to 30 proposals.
  CheckedStep("few_queries", TinyConfig({{"num_queries", 5}}), {{96, 128, 7}, {96, 128, 3}});
}

TEST(StepGenerality, HybridAssign) {
  std::map<int, std::map<std::string, double>> losses;
  for (int assign : {1, 6}) {
    StepRun r = CheckedStep("hybrid" + std::to_string(assign),
                        TinyConfig({{"hybrid_assign", assign}}), kTwoImages);
    losses[assign] = Losses(r.out);
  }
  // The hybrid branch runs on its own queries: the one-to-one and denoising
  // terms are the same whatever hybrid_assign is.
  for (const auto& [k, v] : losses[6]) {
    if (IsHybridKey(k)) continue;
    EXPECT_EQ(losses[1].at(k), v) << k;
  }
}

TEST(StepGenerality, DenoisingNoiseIsSeededAndSeenOnlyByDenoisingTerms) {
  {
    const ModelConfig c = TinyConfig({{"label_noise_prob", 0.5}, {"box_noise_scale", 1.0}});
    const std::string name = "noise";
    StepRun first = CheckedStep(name, c, kTwoImages, /*seed=*/3);
    const fs::path dir = fs::path(::testing::TempDir()) / "step_generality" / name;
    SafetensorsContents again = RunStep(dir / "model", first.in, dir / "again.safetensors", 3);
    SafetensorsContents other = RunStep(dir / "model", first.in, dir / "other.safetensors", 4);
    CheckStep(other, c, first.in, dir / "model");
    // Same seed: the same step bit for bit.
    ASSERT_EQ(again.tensors.size(), first.out.tensors.size());
    for (const auto& [tensor_name, t] : first.out.tensors) {
      ASSERT_TRUE(again.Contains(tensor_name)) << tensor_name;
      EXPECT_TRUE(again.Get(tensor_name).equal(t)) << tensor_name;
    }
    // Another seed: other denoising queries; the other terms are unchanged.
    const auto a = Losses(first.out), b = Losses(other);
    int changed = 0;
    for (const auto& [k, v] : a) {
      if (IsDenoisingKey(k)) {
        changed += b.at(k) != v ? 1 : 0;
      } else {
        EXPECT_EQ(b.at(k), v) << k;
      }
    }
    EXPECT_GT(changed, 0);
  }
  {
    // relation-detr: the relation bias is masked like the attention.
    const ModelConfig c = TinyConfig({{"label_noise_prob", 0.5},
                                      {"box_noise_scale", 1.0},
                                      {"relation", {{"variant", "relation-detr"}, {"heads", 8}}}});
    StepRun first = CheckedStep("noise_rel", c, kTwoImages, 3);
    const fs::path dir = fs::path(::testing::TempDir()) / "step_generality" / "noise_rel";
    SafetensorsContents other = RunStep(dir / "model", first.in, dir / "other.safetensors", 4);
    const auto a = Losses(first.out), b = Losses(other);
    int changed = 0;
    for (const auto& [k, v] : a) {
      if (IsDenoisingKey(k)) {
        changed += b.at(k) != v ? 1 : 0;
      } else {
        EXPECT_EQ(b.at(k), v) << k;
      }
    }
    EXPECT_GT(changed, 0);
  }
  // Without noise the seed changes nothing.
  const ModelConfig quiet = TinyConfig();
  StepRun first = CheckedStep("quiet", quiet, kTwoImages, 3);
  const fs::path dir = fs::path(::testing::TempDir()) / "step_generality" / "quiet";
  SafetensorsContents other = RunStep(dir / "model", first.in, dir / "other.safetensors", 4);
  for (const auto& [tensor_name, t] : first.out.tensors) {
    ASSERT_TRUE(other.Contains(tensor_name)) << tensor_name;
    EXPECT_TRUE(other.Get(tensor_name).equal(t)) << tensor_name;
  }
}

// The fixtures' path: a float16 state-dict .pth and a reference config,
// converted by tools/convert_checkpoint.py.
json ReferenceConfig(const ModelConfig& c) {
  return {{"variant", RelationVariantName(c.relation_variant)},
          {"backbone", c.backbone},
          {"return_indices", c.return_indices},
          {"embed_dim", c.embed_dim},
          {"num_heads", c.num_heads},
          {"dim_feedforward", c.dim_feedforward},
          {"enc_layers", c.enc_layers},
          {"dec_layers", c.dec_layers},
          {"num_feature_levels", c.num_feature_levels},
          {"num_points", c.num_points},
          {"num_queries", c.num_queries},
          {"hybrid_num_proposals", c.hybrid_num_proposals},
          {"num_classes", c.num_classes},
          {"num_select", c.num_select},
          {"relation_heads", c.relation_heads},
          {"denoising_nums", c.denoising_nums},
          {"label_noise_prob", c.label_noise_prob},
          {"box_noise_scale", c.box_noise_scale},
          {"hybrid_assign", c.hybrid_assign}};
}

fs::path ConvertedModelDir(const ModelConfig& c, const std::string& name, LpDetr* model_out) {
  const fs::path root = FreshDir(name);
  LpDetr model = RandomModel(c, 2);
  c10::Dict<std::string, at::Tensor> state;
  for (const auto& [key, t] : StateDict(*model)) state.insert(key, t.to(at::kHalf).contiguous());
  // LibTorch's pickler tags typed dicts (torch.jit._pickle.restore_type_tag),
  // which torch.load(weights_only=True) refuses: hence --allow-pickle below.
  const std::vector<char> bytes = torch::pickle_save(state);
  std::ofstream(root / "checkpoint.pth", std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  std::ofstream(root / "reference_config.json") << ReferenceConfig(c).dump(2);
  const std::string cmd =
      std::string(LPDETR_SYSTEM_PYTHON) + " " +
      Quote(fs::path(testing_paths::SourceDir()) / "tools" / "convert_checkpoint.py") +
      " --allow-pickle --checkpoint " + Quote(root / "checkpoint.pth") + " --reference-config " +
      Quote(root / "reference_config.json") + " --output " + Quote(root / "model") +
      " > /dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  *model_out = model;
  return root / "model";
}

TEST(StepGenerality, ConvertedCheckpoints) {
  const std::vector<ModelConfig> configs = {
      TinyConfig({{"dec_layers", 2}, {"relation", {{"variant", "lp-detr"}, {"heads", 4}}}}),
      TinyConfig({{"dec_layers", 4},
                  {"relation", {{"variant", "relation-detr"}, {"heads", 8}}},
                  {"denoising_nums", 0},
                  {"hybrid_assign", 1}}),
      TinyConfig({{"dec_layers", 1},
                  {"relation", {{"variant", "lp-detr"}, {"heads", 0}}},
                  {"denoising_nums", 40},
                  {"label_noise_prob", 0.2},
                  {"box_noise_scale", 0.4}}),
  };
  for (size_t i = 0; i < configs.size(); ++i) {
    const ModelConfig& c = configs[i];
    const std::string name = "converted" + std::to_string(i);
    SCOPED_TRACE(name);
    LpDetr model{nullptr};
    const fs::path dir = ConvertedModelDir(c, name, &model);
    LoadedModel loaded = LoadModelDir(dir.string());
    // The converter keeps the architecture, the training keys and every weight.
    EXPECT_EQ(loaded.config.ToJson().dump(), [&] {
      ModelConfig want = c;
      want.name = RelationVariantName(c.relation_variant);
      return want.ToJson().dump();
    }());
    const NamedTensors want = StateDict(*model), got = StateDict(*loaded.model);
    ASSERT_EQ(got.size(), want.size());
    for (size_t k = 0; k < want.size(); ++k) {
      EXPECT_EQ(got[k].first, want[k].first);
      EXPECT_TRUE(got[k].second.equal(want[k].second)) << want[k].first;
    }
    StepInput in = WriteStepInput(dir.parent_path() / "in.safetensors", kTwoImages,
                                  c.num_classes, 5);
    SafetensorsContents out = RunStep(dir, in, dir.parent_path() / "out.safetensors");
    CheckStep(out, c, in, dir);
    CheckRelationGradients(out, c);
  }
}

}  // namespace
}  // namespace lpdetr::train

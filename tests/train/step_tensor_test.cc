// Training-step parity with the official implementation on every training
// fixture: each folder of the fixtures directory that holds meta.json and an
// expected.safetensors with `loss_total` (relation-detr-tiny-train,
// lp-detr-tiny-train, and any other of the same format). The fixture
// checkpoint goes through tools/convert_checkpoint.py (ctest fixture
// convert_fixture_models), `lpdetr-train step-tensor` runs on the fixture
// input, and every loss term, the total, the selected gradients and the
// final-layer assignment are compared within the fixtures' README tolerances
// for the fixture's variant (meta.json `variant`).
// A second test runs the step in this process once with the composed
// operators and once with the fused kernels, and checks that the relation
// parameters' gradients through the fused relation op agree with the
// composed ones (and both with the official ones).
// The fixture folders are listed when the tests are registered (run time);
// tests/train/CMakeLists.txt lists them the same way at configure time to
// register one ctest per fixture and test.
// The process runs with the reference numerics the fixtures were made with.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/detector.h"
#include "model/model_dir.h"
#include "model/runtime.h"
#include "model/safetensors.h"
#include "tests/backend_scope.h"
#include "tests/test_paths.h"
#include "train/criterion.h"

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;

// README tolerances per variant.
struct Tolerances {
  double loss_rel;
  double grad_cos, grad_rel_norm;
  double relation_cos, relation_rel_norm;
};

Tolerances TolerancesFor(const std::string& variant) {
  if (variant == "relation-detr") return {2e-5, 0.99995, 1e-2, 0.9998, 2e-2};
  if (variant == "lp-detr") return {5e-4, 0.9998, 2e-2, 0.98, 0.2};
  throw std::invalid_argument("unknown variant '" + variant + "'");
}

nlohmann::json ReadJson(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return nlohmann::json::parse(in);
}

// The JSON header of a safetensors file (without reading the tensors).
nlohmann::json SafetensorsHeader(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  unsigned char len_bytes[8] = {};
  if (!in.read(reinterpret_cast<char*>(len_bytes), 8)) return nlohmann::json();
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | len_bytes[i];
  if (len > (uint64_t{1} << 26)) return nlohmann::json();
  std::string header(len, '\0');
  if (!in.read(header.data(), static_cast<std::streamsize>(len))) return nlohmann::json();
  return nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
}

// A training-step fixture: meta.json and expected.safetensors holding loss_total.
bool IsTrainingFixture(const fs::path& dir) {
  if (!fs::is_regular_file(dir / "meta.json")) return false;
  const fs::path expected = dir / "expected.safetensors";
  if (!fs::is_regular_file(expected)) return false;
  const nlohmann::json header = SafetensorsHeader(expected);
  return header.is_object() && header.contains("loss_total");
}

// Every training-step fixture folder name, sorted.
std::vector<std::string> TrainingFixtures() {
  std::vector<std::string> names;
  const fs::path root = testing_paths::FixturesDir();
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return names;
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    if (entry.is_directory() && IsTrainingFixture(entry.path())) {
      names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The test name of a fixture folder: CMake's string(MAKE_C_IDENTIFIER), so
// that tests/train/CMakeLists.txt derives the same names.
std::string TestName(const std::string& folder) {
  std::string name = folder;
  for (char& c : name) {
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum) c = '_';
  }
  if (!name.empty() && name[0] >= '0' && name[0] <= '9') name = "_" + name;
  return name;
}

bool IsRelationParameter(const std::string& name) {
  return name.find("position_relation_embedding.") != std::string::npos ||
         name.find("multi_scale_relation.") != std::string::npos;
}

struct Agreement {
  double cos, rel_norm;
};

Agreement Compare(const at::Tensor& got, const at::Tensor& want) {
  at::Tensor g = got.to(at::kDouble).flatten(), w = want.to(at::kDouble).flatten();
  const double nw = w.norm().item<double>(), ng = g.norm().item<double>();
  return {(g * w).sum().item<double>() / std::max(nw * ng, 1e-300),
          (g - w).norm().item<double>() / std::max(nw, 1e-300)};
}

std::string Quote(const fs::path& p) { return "'" + p.string() + "'"; }

class StepTensorParity : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    fixture_ = fs::path(testing_paths::FixturesDir()) / GetParam();
    model_dir_ = fs::path(testing_paths::TestModelsDir()) / GetParam();
    ASSERT_TRUE(fs::exists(model_dir_ / "weights.safetensors"))
        << "converted model missing (ctest fixture convert_fixture_models): " << model_dir_;
    expected_ = ReadSafetensors((fixture_ / "expected.safetensors").string());
    const nlohmann::json meta = ReadJson(fixture_ / "meta.json");
    if (meta.contains("variant")) {
      variant_ = meta.at("variant").get<std::string>();
    } else if (expected_.metadata.count("variant")) {
      variant_ = expected_.metadata.at("variant");
    } else {
      variant_ = ReadJson(fixture_ / "reference_config.json").value("variant", "lp-detr");
    }
    tol_ = TolerancesFor(variant_);
  }

  fs::path fixture_, model_dir_;
  SafetensorsContents expected_;
  std::string variant_;
  Tolerances tol_{};
};

TEST_P(StepTensorParity, CommandMatchesTheOfficialStep) {
  const fs::path out = fs::path(::testing::TempDir()) / (GetParam() + "_step.safetensors");
  fs::remove(out);
  const std::string cmd = Quote(fs::path(testing_paths::BinDir()) / "lpdetr-train") +
                          " step-tensor --model " + Quote(model_dir_) + " --input " +
                          Quote(fixture_ / "input.safetensors") + " --output " + Quote(out);
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  SafetensorsContents got = ReadSafetensors(out.string());

  // Every loss term of the official dict and the total, and nothing else.
  std::set<std::string> want_losses, got_losses;
  for (const auto& [name, t] : expected_.tensors) {
    if (name.rfind("loss", 0) == 0) want_losses.insert(name);
  }
  for (const auto& [name, t] : got.tensors) {
    if (name.rfind("loss", 0) == 0) got_losses.insert(name);
  }
  EXPECT_EQ(got_losses, want_losses);
  double worst_loss = 0;
  for (const std::string& name : want_losses) {
    if (!got.Contains(name)) continue;
    const double want = expected_.Get(name).item<double>();
    const double rel = std::abs(got.Get(name).item<double>() - want) / std::abs(want);
    worst_loss = std::max(worst_loss, rel);
    EXPECT_LE(rel, tol_.loss_rel) << name << ": got " << got.Get(name).item<double>()
                                  << ", official " << want;
  }

  // The selected gradients (relation parameters with the looser bounds).
  double worst_cos = 1, worst_norm = 0;
  for (const auto& [name, want] : expected_.tensors) {
    if (name.rfind("grad.", 0) != 0) continue;
    ASSERT_TRUE(got.Contains(name)) << name;
    ASSERT_EQ(got.Get(name).sizes(), want.sizes()) << name;
    const Agreement a = Compare(got.Get(name), want);
    const bool relation = IsRelationParameter(name);
    EXPECT_GE(a.cos, relation ? tol_.relation_cos : tol_.grad_cos) << name;
    EXPECT_LE(a.rel_norm, relation ? tol_.relation_rel_norm : tol_.grad_rel_norm) << name;
    worst_cos = std::min(worst_cos, a.cos);
    worst_norm = std::max(worst_norm, a.rel_norm);
  }
  std::printf("%s: worst loss rel %.3g, worst gradient cos %.9f, rel norm %.3g\n",
              GetParam().c_str(), worst_loss, worst_cos, worst_norm);

  // The final layer's assignment, exactly.
  for (int64_t i = 0; expected_.Contains("match_query_" + std::to_string(i)); ++i) {
    for (const char* key : {"match_query_", "match_target_"}) {
      const std::string name = key + std::to_string(i);
      ASSERT_TRUE(got.Contains(name)) << name;
      EXPECT_TRUE(got.Get(name).equal(expected_.Get(name)))
          << name << ": got " << got.Get(name) << ", official " << expected_.Get(name);
    }
  }

  // A gradient for every trainable parameter; none for the frozen stem and layer1.
  LoadedModel loaded = LoadModelDir(model_dir_.string());
  int64_t trainable = 0;
  for (const auto& item : loaded.model->named_parameters()) {
    const std::string& name = item.key();
    const bool frozen = name == "backbone.conv1.weight" || name.rfind("backbone.layer1.", 0) == 0;
    EXPECT_EQ(got.Contains("grad." + name), !frozen) << name;
    trainable += frozen ? 0 : 1;
  }
  int64_t grads = 0;
  for (const auto& [name, t] : got.tensors) grads += name.rfind("grad.", 0) == 0 ? 1 : 0;
  EXPECT_EQ(grads, trainable);
}

// One training step in this process under the current operator backend:
// the gradients of the relation parameters.
std::map<std::string, at::Tensor> RelationGradients(LpDetr& model,
                                                    const SafetensorsContents& input) {
  ImageBatch batch{input.Get("images"), input.Get("mask"), {}};
  std::vector<TrainTarget> targets;
  for (int64_t i = 0; i < batch.images.size(0); ++i) {
    targets.push_back({input.Get("target_labels_" + std::to_string(i)),
                       input.Get("target_boxes_" + std::to_string(i))});
  }
  model->zero_grad();
  DetectorOutput out = model->forward(batch, &targets);
  CriterionOptions options;
  options.hybrid_assign = model->config().hybrid_assign;
  HybridSetCriterion criterion(options);
  criterion(out, targets).total.backward();
  std::map<std::string, at::Tensor> grads;
  for (const auto& item : model->named_parameters()) {
    if (IsRelationParameter(item.key()) && item.value().grad().defined()) {
      grads[item.key()] = item.value().grad().clone();
    }
  }
  return grads;
}

TEST_P(StepTensorParity, FusedRelationOpGradientsAgreeWithComposed) {
  LoadedModel loaded = LoadModelDir(model_dir_.string());
  loaded.model->train();
  SafetensorsContents input = ReadSafetensors((fixture_ / "input.safetensors").string());
  std::map<std::string, at::Tensor> composed, fused;
  {
    BackendScope scope(OpBackend::kComposed);
    composed = RelationGradients(loaded.model, input);
  }
  {
    BackendScope scope(OpBackend::kKernels);
    fused = RelationGradients(loaded.model, input);
  }
  // W_G and b_G (and Lambda for lp-detr); none without relation heads.
  size_t want_count = 0;
  for (const auto& item : loaded.model->named_parameters()) {
    want_count += IsRelationParameter(item.key()) ? 1 : 0;
  }
  const ModelConfig& config = loaded.model->config();
  EXPECT_EQ(want_count, config.relation_heads == 0 ? 0u
                        : config.relation_variant == RelationVariant::kLpDetr ? 3u
                                                                              : 2u);
  ASSERT_EQ(composed.size(), want_count);
  ASSERT_EQ(fused.size(), want_count);
  for (const auto& [name, c] : composed) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(fused.count(name));
    const Agreement a = Compare(fused.at(name), c);
    std::printf("%s %s: fused vs composed cos %.9f rel norm %.3g\n", GetParam().c_str(),
                name.c_str(), a.cos, a.rel_norm);
    EXPECT_GE(a.cos, tol_.relation_cos);
    EXPECT_LE(a.rel_norm, tol_.relation_rel_norm);
    const std::string key = "grad." + name;
    if (expected_.Contains(key)) {
      const Agreement official = Compare(fused.at(name), expected_.Get(key));
      EXPECT_GE(official.cos, tol_.relation_cos);
      EXPECT_LE(official.rel_norm, tol_.relation_rel_norm);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, StepTensorParity, ::testing::ValuesIn(TrainingFixtures()),
                         [](const auto& info) { return TestName(info.param); });
// No training fixture (e.g. an empty fixtures directory): nothing to run.
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(StepTensorParity);

}  // namespace
}  // namespace lpdetr::train

int main(int argc, char** argv) {
  lpdetr::ConfigureProcess(argv, lpdetr::Numerics::kReference);
  lpdetr::ApplyNumerics(lpdetr::Numerics::kReference, 0);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

// bf16 inference (model/precision.h) against fp32 on the converted fixture
// models, both on the fast numerics path. The fixtures have random weights:
// their query selection and decoder are chaotic (fp32 itself, given the
// input plus noise of 1e-3, keeps only ~40% of lp-detr-tiny's top 100
// detections), so the final outputs' drift and the detections shared are
// reported, not asserted; the trained default model's detections are
// (tests/train/default_model_test.cc). What is asserted here is the part
// before the chaos: the backbone and neck features within bf16 rounding.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "model/detector.h"
#include "model/model_dir.h"
#include "model/precision.h"
#include "model/runtime.h"
#include "model/safetensors.h"
#include "tests/test_paths.h"

namespace lpdetr {
namespace {

namespace fs = std::filesystem;

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

// How many of `ref`'s detections `other` reproduces: same label, every box
// coordinate and the score within `tol`. Boxes are normalised (the images'
// size is 1 x 1), each of `other`'s detections matches at most once.
int64_t SharedDetections(const Detections& ref, const Detections& other, double tol) {
  std::vector<bool> used(other.scores.size(0), false);
  int64_t shared = 0;
  for (int64_t i = 0; i < ref.scores.size(0); ++i) {
    const at::Tensor close = (other.labels == ref.labels[i]) &
                             ((other.boxes - ref.boxes[i]).abs().amax(1) <= tol) &
                             ((other.scores - ref.scores[i]).abs() <= tol);
    const at::Tensor candidates = close.nonzero().flatten();
    for (int64_t k = 0; k < candidates.size(0); ++k) {
      const int64_t j = candidates[k].item<int64_t>();
      if (used[j]) continue;
      used[j] = true;
      ++shared;
      break;
    }
  }
  return shared;
}

struct PrecisionRun {
  DetectorOutput out;
  std::vector<Detections> top100;
};

PrecisionRun Forward(LpDetr& model, const ImageBatch& batch, Precision precision) {
  SetComputePrecision(precision);
  PrecisionRun r;
  r.out = model(batch);
  SetComputePrecision(Precision::kFp32);
  const int64_t b = batch.images.size(0);
  const at::Tensor unit = at::ones({b, 2}, at::kLong);
  r.top100 = LpDetrImpl::PostProcess(r.out.pred_logits, r.out.pred_boxes, unit, 100);
  return r;
}

class Bf16Test : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    fixture_ = fs::path(testing_paths::FixturesDir()) / GetParam();
    model_dir_ = fs::path(testing_paths::TestModelsDir()) / GetParam();
    if (!fs::exists(fixture_ / "input.safetensors")) {
      GTEST_SKIP() << "fixture not found: " << fixture_;
    }
    ASSERT_TRUE(fs::exists(model_dir_ / "weights.safetensors"))
        << "converted model missing (ctest fixture convert_fixture_models): " << model_dir_;
  }
  fs::path fixture_, model_dir_;
};

TEST_P(Bf16Test, ReportsOutputDriftFromFp32) {
  LoadedModel loaded = LoadModelDir(model_dir_.string());
  SafetensorsContents input = ReadSafetensors((fixture_ / "input.safetensors").string());
  at::InferenceMode guard;
  ImageBatch batch{input.Get("images"), input.Get("mask"), {}};
  const PrecisionRun fp32 = Forward(loaded.model, batch, Precision::kFp32);
  const PrecisionRun bf16 = Forward(loaded.model, batch, Precision::kBf16);

  std::cout << GetParam() << " bf16 drift from fp32 (max abs): enc_boxes "
            << MaxAbsDiff(bf16.out.enc_boxes, fp32.out.enc_boxes) << ", enc_logits "
            << MaxAbsDiff(bf16.out.enc_logits, fp32.out.enc_logits) << ", pred_boxes "
            << MaxAbsDiff(bf16.out.pred_boxes, fp32.out.pred_boxes) << ", pred_logits "
            << MaxAbsDiff(bf16.out.pred_logits, fp32.out.pred_logits) << std::endl;
  EXPECT_FALSE(bf16.out.pred_logits.equal(fp32.out.pred_logits)) << "bf16 did not run";
  for (size_t i = 0; i < fp32.top100.size(); ++i) {
    std::cout << "  image " << i << ": " << SharedDetections(fp32.top100[i], bf16.top100[i], 2e-2)
              << " of fp32's top 100 detections shared" << std::endl;
  }
}

// The features the transformer starts from: backbone (bf16 throughout) and
// neck (bf16 convolutions, fp32 group norms) within bf16 rounding of fp32,
// relative to each map's largest value.
TEST_P(Bf16Test, FeaturesStayWithinBf16RoundingOfFp32) {
  LoadedModel loaded = LoadModelDir(model_dir_.string());
  SafetensorsContents input = ReadSafetensors((fixture_ / "input.safetensors").string());
  at::InferenceMode guard;
  const at::Tensor images = input.Get("images");
  auto features = [&](Precision precision) {
    SetComputePrecision(precision);
    std::vector<at::Tensor> backbone = loaded.model->backbone(images);
    std::vector<at::Tensor> neck = loaded.model->neck(backbone);
    SetComputePrecision(Precision::kFp32);
    backbone.insert(backbone.end(), neck.begin(), neck.end());
    return backbone;
  };
  const std::vector<at::Tensor> fp32 = features(Precision::kFp32);
  const std::vector<at::Tensor> bf16 = features(Precision::kBf16);
  ASSERT_EQ(fp32.size(), bf16.size());
  const size_t backbone_maps = fp32.size() - loaded.config.num_feature_levels;
  for (size_t i = 0; i < fp32.size(); ++i) {
    EXPECT_EQ(bf16[i].scalar_type(), i < backbone_maps ? at::kBFloat16 : at::kFloat) << i;
    const double relative =
        MaxAbsDiff(bf16[i], fp32[i]) / fp32[i].abs().max().item<double>();
    std::cout << (i < backbone_maps ? "  backbone map " : "  neck map ") << i
              << ": max |bf16 - fp32| / max |fp32| = " << relative << std::endl;
    EXPECT_LT(relative, 0.03) << "map " << i;
    EXPECT_GT(relative, 0.0) << "map " << i << " did not run in bf16";
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Bf16Test,
                         ::testing::Values("lp-detr-tiny", "relation-detr-tiny"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace lpdetr

int main(int argc, char** argv) {
  lpdetr::ConfigureProcess(argv, lpdetr::Numerics::kFast);
  lpdetr::ApplyNumerics(lpdetr::Numerics::kFast, 0);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

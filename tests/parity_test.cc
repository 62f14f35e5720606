// Parity with the official Relation-DETR implementation: the shared fixtures
// hold a checkpoint, an input batch and the official outputs. The checkpoint
// goes through tools/convert_checkpoint.py (ctest fixture), the model
// directory is loaded and run, and every output is compared within the
// tolerances of the fixtures' README. The process runs with the reference
// numerics the fixtures were produced with (model/runtime.h): LP-DETR's
// decoder turns 1e-7 differences into visible ones, so parity is bitwise.
#include <cstdlib>
#include <filesystem>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "model/detector.h"
#include "model/model_dir.h"
#include "model/runtime.h"
#include "model/safetensors.h"
#include "tests/test_paths.h"

namespace lpdetr {
namespace {

namespace fs = std::filesystem;

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

class ParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    fixture_ = fs::path(testing_paths::FixturesDir()) / GetParam();
    model_dir_ = fs::path(testing_paths::TestModelsDir()) / GetParam();
    if (!fs::exists(fixture_ / "expected.safetensors")) {
      GTEST_SKIP() << "fixture not found: " << fixture_;
    }
    ASSERT_TRUE(fs::exists(model_dir_ / "weights.safetensors"))
        << "converted model missing (ctest fixture convert_fixture_models): " << model_dir_;
  }
  fs::path fixture_, model_dir_;
};

TEST_P(ParityTest, MatchesOfficialOutputs) {
  LoadedModel loaded = LoadModelDir(model_dir_.string());
  SafetensorsContents input = ReadSafetensors((fixture_ / "input.safetensors").string());
  SafetensorsContents expected = ReadSafetensors((fixture_ / "expected.safetensors").string());

  at::InferenceMode guard;
  ImageBatch batch{input.Get("images"), input.Get("mask"), {}};
  DetectorOutput out = loaded.model(batch);

  // Boxes within 1e-4, logits within 5e-4 (fixtures README); query order exact.
  EXPECT_LT(MaxAbsDiff(out.enc_boxes, expected.Get("enc_boxes")), 1e-4);
  EXPECT_LT(MaxAbsDiff(out.enc_logits, expected.Get("enc_logits")), 5e-4);
  EXPECT_LT(MaxAbsDiff(out.layer_boxes, expected.Get("layer_boxes")), 1e-4);
  EXPECT_LT(MaxAbsDiff(out.layer_logits, expected.Get("layer_logits")), 5e-4);
  EXPECT_LT(MaxAbsDiff(out.pred_boxes, expected.Get("pred_boxes")), 1e-4);
  EXPECT_LT(MaxAbsDiff(out.pred_logits, expected.Get("pred_logits")), 5e-4);
  for (int64_t l = 0; l < out.layer_boxes.size(0); ++l) {
    SCOPED_TRACE("decoder layer " + std::to_string(l));
    EXPECT_LT(MaxAbsDiff(out.layer_boxes[l], expected.Get("layer_boxes")[l]), 1e-4);
  }

  // Post-processing: near-tied scores may swap places, so compare sorted
  // scores and match each expected (label, box) to one of ours.
  const at::Tensor image_sizes = input.Get("image_sizes");
  auto dets = LpDetrImpl::PostProcess(out.pred_logits, out.pred_boxes, image_sizes,
                                      loaded.config.num_select);
  for (size_t i = 0; i < dets.size(); ++i) {
    SCOPED_TRACE("image " + std::to_string(i));
    const std::string k = std::to_string(i);
    at::Tensor exp_scores = expected.Get("scores_" + k);
    at::Tensor exp_labels = expected.Get("labels_" + k);
    at::Tensor exp_boxes = expected.Get("boxes_" + k);
    ASSERT_EQ(dets[i].scores.size(0), exp_scores.size(0));
    EXPECT_LT(MaxAbsDiff(std::get<0>(dets[i].scores.sort(0, true)),
                         std::get<0>(exp_scores.sort(0, true))),
              1e-4);
    // Box tolerance in pixels: 1e-4 relative box error times the image size.
    const double tol = 1e-4 * image_sizes[i].max().item<double>() * 2;
    for (int64_t j = 0; j < exp_scores.size(0); ++j) {
      at::Tensor same_label = dets[i].labels == exp_labels[j];
      at::Tensor dist = (dets[i].boxes - exp_boxes[j]).abs().amax(1);
      dist = dist.masked_fill(same_label.logical_not(), 1e9);
      EXPECT_LT(dist.min().item<double>(), tol)
          << "expected detection " << j << " (label " << exp_labels[j].item<int64_t>()
          << ") has no match";
    }
  }

  if (expected.Contains("scale_alpha")) {
    ASSERT_TRUE(loaded.model->ScaleAlpha().defined());
    EXPECT_LT(MaxAbsDiff(loaded.model->ScaleAlpha(), expected.Get("scale_alpha")), 1e-6);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ParityTest,
                         ::testing::Values("lp-detr-tiny", "relation-detr-tiny"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (char& c : name) {
                             if (c == '-') c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace lpdetr

int main(int argc, char** argv) {
  lpdetr::ConfigureProcess(argv, lpdetr::Numerics::kReference);
  lpdetr::ApplyNumerics(lpdetr::Numerics::kReference, 0);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}

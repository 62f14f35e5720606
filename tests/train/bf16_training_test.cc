// bf16 training (autocast): the scopes, and a training forward / backward of
// the default model under bf16 autocast against the same step in fp32. Autocast
// runs on any CPU (oneDNN emulates bf16 where the CPU lacks it), so these
// tests run everywhere; only the speed needs AVX512-BF16 or AMX.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include "model/config.h"
#include "model/detector.h"
#include "model/model_dir.h"
#include "model/precision.h"
#include "model/preprocess.h"
#include "tests/test_paths.h"
#include "train/criterion.h"
#include "train/shapes.h"
#include "train/train_setup.h"

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;

TEST(Bf16Autocast, ScopesEnableSuspendAndRestore) {
  torch::nn::Linear linear(8, 4);
  const at::Tensor x = at::randn({2, 8});
  ASSERT_FALSE(AutocastActive());
  {
    ScopedBf16Autocast off(false, c10::DeviceType::CPU);
    EXPECT_FALSE(AutocastActive());
    EXPECT_EQ(linear(x).scalar_type(), at::kFloat);
  }
  {
    ScopedBf16Autocast on(true, c10::DeviceType::CPU);
    EXPECT_TRUE(AutocastActive());
    const at::Tensor y = linear(x);
    EXPECT_EQ(y.scalar_type(), at::kBFloat16);
    EXPECT_EQ(Fp32(y).scalar_type(), at::kFloat);
    {
      ScopedFp32 fp32;
      EXPECT_FALSE(AutocastActive());
      EXPECT_EQ(linear(Fp32(y).narrow(1, 0, 4).repeat({1, 2})).scalar_type(), at::kFloat);
    }
    EXPECT_TRUE(AutocastActive());
    {
      ScopedBf16Autocast nested(true, c10::DeviceType::CPU);
      EXPECT_EQ(linear(x).scalar_type(), at::kBFloat16);
    }
    EXPECT_TRUE(AutocastActive());  // the nested scope restored the outer state
    EXPECT_EQ(at::autocast::get_autocast_cpu_dtype(), at::kBFloat16);
  }
  EXPECT_FALSE(AutocastActive());
  EXPECT_EQ(linear(x).scalar_type(), at::kFloat);
  // Fp32 leaves fp32 and integer tensors alone.
  EXPECT_TRUE(Fp32(x).is_same(x));
  const at::Tensor ints = at::arange(3);
  EXPECT_TRUE(Fp32(ints).is_same(ints));
}

struct StepOutcome {
  DetectorOutput out;
  double loss = 0;
  std::vector<at::Tensor> grads;  // of `params`, in order
};

// One training forward (under bf16 autocast when `bf16`), the fp32 loss and
// the backward, with a fixed denoising seed.
StepOutcome TrainingStep(LpDetr& model, const std::vector<NamedParameter>& params,
                         const ImageBatch& batch, const std::vector<TrainTarget>& targets,
                         bool bf16) {
  for (const NamedParameter& p : params) p.tensor.mutable_grad() = at::Tensor();
  model->denoising_generator->set_generator(at::make_generator<at::CPUGeneratorImpl>(7));
  StepOutcome s;
  {
    ScopedBf16Autocast autocast(bf16, c10::DeviceType::CPU);
    s.out = model->forward(batch, &targets);
  }
  CriterionOptions options;
  options.hybrid_assign = model->config().hybrid_assign;
  HybridSetCriterion criterion(options);
  CriterionResult loss = criterion(s.out, targets);
  s.loss = loss.total.item<double>();
  loss.total.backward();
  for (const NamedParameter& p : params) s.grads.push_back(p.tensor.grad());
  return s;
}

// The embedded default model fine-tuned on generated shapes images: a
// trained model, so that its query selection and matching are the same in
// fp32 and bf16 and the two steps can be compared (a random-weight model's
// near-tied scores select different queries at the slightest change).
class Bf16TrainingStepTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const fs::path dir = fs::path(testing_paths::SourceDir()) / "models" / "lp-detr-shapes";
    LoadedModel loaded = LoadModelDir(dir.string());
    model_ = loaded.model;
    PrepareForTraining(*model_, BackboneTraining::kFinetune);
    params_ = TrainableParameters(*model_);
    ShapesOptions options;
    options.seed = 11;
    options.min_size = 320;
    options.max_size = 400;
    options.num_images = 2;
    std::vector<at::Tensor> images;
    for (int64_t i = 0; i < options.num_images; ++i) {
      ShapesImage im = GenerateShapesImage(i, options);
      const at::Tensor pixels =
          at::from_blob(im.rgb.data, {im.rgb.rows, im.rgb.cols, 3}, at::kByte).clone();
      images.push_back(
          PreprocessImage(pixels, loaded.config.min_size, loaded.config.max_size));
      std::vector<float> boxes;
      std::vector<int64_t> labels;
      for (const ShapeAnnotation& a : im.shapes) {
        const auto& b = a.bbox_xywh;
        if (b[2] < 2 || b[3] < 2) continue;
        boxes.insert(boxes.end(), {static_cast<float>((b[0] + b[2] / 2) / im.rgb.cols),
                                   static_cast<float>((b[1] + b[3] / 2) / im.rgb.rows),
                                   static_cast<float>(b[2] / im.rgb.cols),
                                   static_cast<float>(b[3] / im.rgb.rows)});
        labels.push_back(static_cast<int64_t>(a.geometry.shape_class));
      }
      ASSERT_FALSE(labels.empty());
      TrainTarget t;
      t.boxes = at::tensor(boxes).view({-1, 4});
      t.labels = at::tensor(labels, at::kLong);
      targets_.push_back(t);
    }
    batch_ = BatchImages(images);
  }

  LpDetr model_{nullptr};
  std::vector<NamedParameter> params_;
  ImageBatch batch_;
  std::vector<TrainTarget> targets_;
};

TEST_F(Bf16TrainingStepTest, OutputsLossesAndGradientsStayFp32AndAgreeWithFp32) {
  const StepOutcome fp32 = TrainingStep(model_, params_, batch_, targets_, /*bf16=*/false);
  const StepOutcome bf16 = TrainingStep(model_, params_, batch_, targets_, /*bf16=*/true);
  EXPECT_FALSE(AutocastActive());

  // The heads, box refinement and selection run in fp32 under autocast.
  for (const at::Tensor* t : {&bf16.out.pred_logits, &bf16.out.pred_boxes,
                              &bf16.out.layer_logits, &bf16.out.layer_boxes,
                              &bf16.out.enc_logits, &bf16.out.enc_boxes,
                              &bf16.out.dn_layer_logits, &bf16.out.dn_layer_boxes,
                              &bf16.out.hybrid_layer_logits, &bf16.out.hybrid_layer_boxes}) {
    ASSERT_TRUE(t->defined());
    EXPECT_EQ(t->scalar_type(), at::kFloat);
  }
  ASSERT_TRUE(std::isfinite(bf16.loss));
  const double rel = std::abs(bf16.loss - fp32.loss) / std::abs(fp32.loss);
  std::printf("loss fp32 %.6f bf16 %.6f (relative difference %.4f)\n", fp32.loss, bf16.loss, rel);
  EXPECT_LT(rel, 0.02);

  // fp32 master weights get fp32 gradients, for the same tensors; the whole
  // gradient points the same way as in fp32.
  double dot = 0, n32 = 0, n16 = 0;
  int64_t with_grad = 0;
  for (size_t i = 0; i < params_.size(); ++i) {
    EXPECT_EQ(params_[i].tensor.scalar_type(), at::kFloat) << params_[i].name;
    ASSERT_EQ(fp32.grads[i].defined(), bf16.grads[i].defined()) << params_[i].name;
    if (!bf16.grads[i].defined()) continue;
    ++with_grad;
    EXPECT_EQ(bf16.grads[i].scalar_type(), at::kFloat) << params_[i].name;
    ASSERT_TRUE(bf16.grads[i].isfinite().all().item<bool>()) << params_[i].name;
    const at::Tensor g32 = fp32.grads[i].to(at::kDouble), g16 = bf16.grads[i].to(at::kDouble);
    dot += (g32 * g16).sum().item<double>();
    n32 += g32.pow(2).sum().item<double>();
    n16 += g16.pow(2).sum().item<double>();
  }
  EXPECT_GT(with_grad, 50);
  const double cosine = dot / std::sqrt(n32 * n16);
  std::printf("gradient cosine similarity bf16 vs fp32: %.4f over %lld tensors\n", cosine,
              static_cast<long long>(with_grad));
  EXPECT_GT(cosine, 0.9);
}

TEST_F(Bf16TrainingStepTest, TheMatrixProductsRunInBf16) {
  // The same step in fp32 and bf16 must differ (bf16 autocast really changes
  // the products, so the test above does not compare fp32 with itself), by
  // bf16 rounding only: the confident detections keep their boxes.
  const StepOutcome fp32 = TrainingStep(model_, params_, batch_, targets_, false);
  const StepOutcome bf16 = TrainingStep(model_, params_, batch_, targets_, true);
  EXPECT_FALSE(at::equal(fp32.out.pred_boxes, bf16.out.pred_boxes));
  // Each confident fp32 detection has a bf16 query with nearly the same box
  // (queries may swap places in the top-k selection, so not by index).
  const at::Tensor confident = fp32.out.pred_logits.sigmoid().amax(-1) > 0.5;  // [B,Q]
  ASSERT_GT(confident.sum().item<int64_t>(), 0);
  double worst = 0;
  for (int64_t b = 0; b < confident.size(0); ++b) {
    const at::Tensor wanted = fp32.out.pred_boxes[b].index({confident[b]});      // [K,4]
    const at::Tensor got = bf16.out.pred_boxes[b];                               // [Q,4]
    const at::Tensor distance = (wanted.unsqueeze(1) - got.unsqueeze(0)).abs().amax(-1);
    if (wanted.size(0) > 0) {
      worst = std::max(worst, std::get<0>(distance.min(1)).max().item<double>());
    }
  }
  std::printf("confident detections: %lld, largest distance to a bf16 box %.4f\n",
              static_cast<long long>(confident.sum().item<int64_t>()), worst);
  EXPECT_LT(worst, 0.02);
}

}  // namespace
}  // namespace lpdetr::train

// Tests of the compute precision choice (model/precision.h) and the bf16
// building blocks of the inference path: cached bf16 weights, LinearIn, the
// bf16 folded convolution and the bf16 forward of the whole detector.
#include "model/precision.h"

#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>

#include "model/config.h"
#include "model/detector.h"
#include "model/layers.h"
#include "model/runtime.h"
#include "tests/backend_scope.h"

namespace lpdetr {
namespace {

// Sets the compute precision for one scope.
class PrecisionScope {
 public:
  explicit PrecisionScope(Precision p) : previous_(GetComputePrecision()) {
    SetComputePrecision(p);
  }
  ~PrecisionScope() { SetComputePrecision(previous_); }

 private:
  Precision previous_;
};

TEST(Precision, ParsesTheThreeRequests) {
  PrecisionRequest r = PrecisionRequest::kFp32;
  EXPECT_TRUE(ParsePrecisionRequest("bf16", &r));
  EXPECT_EQ(r, PrecisionRequest::kBf16);
  EXPECT_TRUE(ParsePrecisionRequest("auto", &r));
  EXPECT_EQ(r, PrecisionRequest::kAuto);
  EXPECT_TRUE(ParsePrecisionRequest("fp32", &r));
  EXPECT_EQ(r, PrecisionRequest::kFp32);
  for (const char* bad : {"", "BF16", "fp16", "bfloat16", "auto "}) {
    EXPECT_FALSE(ParsePrecisionRequest(bad, &r)) << bad;
    EXPECT_EQ(r, PrecisionRequest::kFp32) << "left untouched";
  }
}

TEST(Precision, AutoOnACpuWithoutBf16GivesFp32) {
  const CpuBf16Support none;
  const PrecisionChoice c = ResolvePrecision(PrecisionRequest::kAuto, c10::kCPU, none);
  EXPECT_EQ(c.precision, Precision::kFp32);
  EXPECT_NE(c.reason.find("none"), std::string::npos) << c.reason;
}

TEST(Precision, AutoPicksBf16WithEitherInstructionSet) {
  CpuBf16Support avx512;
  avx512.avx512_bf16 = true;
  CpuBf16Support amx;
  amx.amx_bf16 = true;
  for (const CpuBf16Support& cpu : {avx512, amx}) {
    const PrecisionChoice c = ResolvePrecision(PrecisionRequest::kAuto, c10::kCPU, cpu);
    EXPECT_EQ(c.precision, Precision::kBf16) << c.reason;
    EXPECT_NE(c.reason.find(cpu.Describe()), std::string::npos) << c.reason;
  }
  EXPECT_EQ(ResolvePrecision(PrecisionRequest::kFp32, c10::kCPU, avx512).precision,
            Precision::kFp32);
}

TEST(Precision, ForcingBf16WithoutItIsAClearError) {
  const CpuBf16Support none;
  try {
    ResolvePrecision(PrecisionRequest::kBf16, c10::kCPU, none);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("AVX512-BF16"), std::string::npos) << m;
    EXPECT_NE(m.find("--precision fp32"), std::string::npos) << m;
  }
  CpuBf16Support amx;
  amx.amx_bf16 = true;
  EXPECT_EQ(ResolvePrecision(PrecisionRequest::kBf16, c10::kCPU, amx).precision,
            Precision::kBf16);
}

// The flags the kernel reports for CPU 0 (empty when unreadable).
std::set<std::string> CpuInfoFlags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  std::set<std::string> flags;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    for (std::string w; words >> w;) flags.insert(w);
    break;
  }
  return flags;
}

TEST(Precision, FlagValuesResolveOrNameTheBadValue) {
  EXPECT_EQ(ResolvePrecisionFlag("fp32", c10::kCPU).precision, Precision::kFp32);
  const Precision native = DetectCpuBf16().any() ? Precision::kBf16 : Precision::kFp32;
  EXPECT_EQ(ResolvePrecisionFlag("auto", c10::kCPU).precision, native);
  if (native == Precision::kFp32) {
    EXPECT_THROW(ResolvePrecisionFlag("bf16", c10::kCPU), std::invalid_argument);
  } else {
    EXPECT_EQ(ResolvePrecisionFlag("bf16", c10::kCPU).precision, Precision::kBf16);
  }
  try {
    ResolvePrecisionFlag("half", c10::kCPU);
    FAIL() << "no error for 'half'";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'half'"), std::string::npos) << e.what();
  }
}

TEST(Precision, DetectionAgreesWithTheKernelsCpuFlags) {
  const std::set<std::string> flags = CpuInfoFlags();
  if (flags.empty()) GTEST_SKIP() << "no /proc/cpuinfo flags";
  const CpuBf16Support s = DetectCpuBf16();
  std::cout << "CPU bf16: " << s.Describe() << std::endl;
  // The kernel lists a feature only when the OS has enabled its state.
  EXPECT_EQ(s.avx512_bf16, flags.count("avx512_bf16") > 0);
  EXPECT_EQ(s.amx_bf16, flags.count("amx_bf16") > 0 && flags.count("amx_tile") > 0);
}

TEST(Bf16Weights, ConvertsOnceAndFollowsUpdates) {
  at::Tensor w = at::randn({8, 4});
  Bf16Weights cache;
  const at::Tensor a = cache.Get(w);
  EXPECT_EQ(a.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(a, w.to(at::kBFloat16)));
  EXPECT_TRUE(cache.Get(w).is_same(a));
  EXPECT_EQ(cache.conversions(), 1);

  w.mul_(2);  // in place: the version counter moves
  const at::Tensor b = cache.Get(w);
  EXPECT_EQ(cache.conversions(), 2);
  EXPECT_TRUE(at::equal(b, w.to(at::kBFloat16)));

  w.set_data(at::randn({8, 4}));  // new storage, same tensor
  EXPECT_TRUE(at::equal(cache.Get(w), w.to(at::kBFloat16)));
  EXPECT_EQ(cache.conversions(), 3);

  at::Tensor other = at::randn({3});
  EXPECT_TRUE(at::equal(cache.Get(other), other.to(at::kBFloat16)));
  EXPECT_EQ(cache.conversions(), 4);
  EXPECT_FALSE(cache.Get(at::Tensor()).defined());
}

TEST(Bf16Weights, LinearInMatchesTheFloatLayerToBf16Accuracy) {
  torch::manual_seed(3);
  torch::nn::Linear layer(64, 48);
  at::NoGradGuard no_grad;
  const at::Tensor x = at::randn({37, 64});
  const at::Tensor ref = Linear(layer, x);
  EXPECT_TRUE(LinearIn(layer, x, nullptr).equal(ref)) << "no cache: the fp32 layer";
  Bf16Weights cache;
  const at::Tensor y = LinearIn(layer, x, &cache);
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  const at::Tensor yb = LinearIn(layer, x, &cache, at::kBFloat16);
  EXPECT_EQ(yb.scalar_type(), at::kBFloat16);
  // Inputs and weights rounded to 8 mantissa bits: relative error ~2^-8 of
  // the products' magnitude, summed over 64 terms.
  const double scale = ref.abs().max().item<double>();
  EXPECT_LT((y - ref).abs().max().item<double>(), 0.02 * scale);
  EXPECT_GT((y - ref).abs().max().item<double>(), 0.0) << "it did run in bf16";
  EXPECT_EQ(cache.conversions(), 2);  // weight and bias, once
}

TEST(Bf16Path, FoldedConvolutionRunsInBf16) {
  torch::manual_seed(4);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(8, 16, 3).padding(1).bias(false));
  FrozenBatchNorm2d bn(16);
  at::NoGradGuard no_grad;
  bn->running_mean.uniform_(-0.5, 0.5);
  bn->running_var.uniform_(0.5, 2.0);
  bn->weight.uniform_(0.5, 1.5);
  const at::Tensor x = at::randn({2, 8, 12, 10}).contiguous(at::MemoryFormat::ChannelsLast);
  ConvBnFold fold;
  const at::Tensor ref = fold.Forward(*conv, *bn, x);
  const at::Tensor y = fold.Forward(*conv, *bn, x.to(at::kBFloat16));
  EXPECT_EQ(y.scalar_type(), at::kBFloat16);
  EXPECT_EQ(fold.builds(), 1) << "the bf16 copy reuses the fold";
  const double scale = ref.abs().max().item<double>();
  EXPECT_LT((y.to(at::kFloat) - ref).abs().max().item<double>(), 0.03 * scale);
}

TEST(Bf16Path, OnlyTheInferenceFastPathUsesBf16) {
  torch::nn::Linear layer(4, 4);
  PrecisionScope bf16(Precision::kBf16);
  {
    at::NoGradGuard no_grad;
    layer->eval();
    EXPECT_TRUE(UseBf16(*layer));
    BackendScope composed(OpBackend::kComposed);
    EXPECT_FALSE(UseBf16(*layer)) << "reference numerics stay fp32";
  }
  EXPECT_FALSE(UseBf16(*layer)) << "autograd recording: training stays fp32 here";
  {
    at::NoGradGuard no_grad;
    layer->train();
    EXPECT_FALSE(UseBf16(*layer));
  }
  PrecisionScope fp32(Precision::kFp32);
  at::NoGradGuard no_grad;
  layer->eval();
  EXPECT_FALSE(UseBf16(*layer));
}

// A small lp-detr with random weights, in bf16 and fp32 on the same batch:
// the bf16 path runs (outputs differ) and stays close to fp32 in the encoder
// proposals' scores, which precede the decoder's amplification of small
// differences.
TEST(Bf16Path, DetectorForwardStaysCloseToFp32) {
  ModelConfig c;
  c.backbone = "resnet18";
  c.backbone_width = 16;
  c.embed_dim = 64;
  c.num_heads = 4;
  c.dim_feedforward = 128;
  c.enc_layers = 1;
  c.dec_layers = 2;
  c.num_queries = 30;
  c.num_classes = 3;
  c.num_select = 20;
  c.relation_heads = 2;
  c.relation_variant = RelationVariant::kLpDetr;
  torch::manual_seed(5);
  LpDetr model(c);
  model->eval();
  at::InferenceMode guard;
  ImageBatch batch{at::randn({1, 3, 128, 160}), at::zeros({1, 128, 160}, at::kBool), {}};
  DetectorOutput fp32 = model(batch);
  DetectorOutput bf16;
  {
    PrecisionScope scope(Precision::kBf16);
    bf16 = model(batch);
  }
  EXPECT_EQ(bf16.pred_boxes.scalar_type(), at::kFloat);
  EXPECT_EQ(bf16.pred_logits.scalar_type(), at::kFloat);
  EXPECT_FALSE(bf16.enc_logits.equal(fp32.enc_logits)) << "the bf16 path did not run";
  // The selected proposals' best logits, sorted: near-ties may swap which
  // positions are selected, not the values.
  auto best = [](const at::Tensor& logits) {
    return std::get<0>(std::get<0>(logits.max(-1)).flatten().sort(0, /*descending=*/true));
  };
  const double logit_drift = (best(bf16.enc_logits) - best(fp32.enc_logits)).abs().max().item<double>();
  const double logit_scale = fp32.enc_logits.abs().max().item<double>();
  std::cout << "encoder top-k best logits, sorted: max |bf16 - fp32| " << logit_drift
            << " (scale " << logit_scale << ")" << std::endl;
  EXPECT_LT(logit_drift, 0.1 * logit_scale + 0.05);
  EXPECT_TRUE(at::isfinite(bf16.pred_boxes).all().item<bool>());
}

}  // namespace
}  // namespace lpdetr

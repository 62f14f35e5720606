// lpdetr::ms_deform_attn CUDA kernels against the CPU kernel and the composed
// reference (built with a CUDA LibTorch only; skipped without a GPU).
#include "model/ops/ms_deform_attn.h"

#include <algorithm>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "model/deform_attn.h"

namespace lpdetr {
namespace {

const SpatialShapes kShapes = {{{7, 9}}, {{4, 5}}, {{2, 3}}, {{1, 1}}};

struct Inputs {
  at::Tensor value, spatial_shapes, level_start_index, loc, attn;
};

Inputs MakeInputs(int64_t batch, int64_t num_query, int64_t heads, int64_t dim,
                  at::ScalarType dtype) {
  std::vector<int64_t> flat, starts;
  int64_t total = 0;
  for (const auto& s : kShapes) {
    flat.insert(flat.end(), {s[0], s[1]});
    starts.push_back(total);
    total += s[0] * s[1];
  }
  const int64_t levels = static_cast<int64_t>(kShapes.size());
  Inputs in;
  in.spatial_shapes = at::tensor(flat, at::kLong).view({levels, 2});
  in.level_start_index = at::tensor(starts, at::kLong);
  const auto opts = at::TensorOptions().dtype(dtype);
  in.value = at::randn({batch, total, heads, dim}, opts);
  in.loc = at::rand({batch, num_query, heads, levels, 4, 2}, opts) * 1.2 - 0.1;
  in.attn = at::rand({batch, num_query, heads, levels, 4}, opts);
  return in;
}

Inputs To(const Inputs& in, at::Device device, at::ScalarType dtype, bool shapes_too) {
  Inputs out = in;
  out.value = in.value.to(device, dtype);
  out.loc = in.loc.to(device, dtype);
  out.attn = in.attn.to(device, dtype);
  if (shapes_too) {
    out.spatial_shapes = in.spatial_shapes.to(device);
    out.level_start_index = in.level_start_index.to(device);
  }
  return out;
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return 0;
  return (a.cpu().to(at::kDouble) - b.cpu().to(at::kDouble)).abs().max().item<double>();
}

// Output and the three gradients for grad_output `grad`.
std::vector<at::Tensor> RunWithGrads(const Inputs& in, const at::Tensor& grad) {
  at::Tensor v = in.value.detach().clone().requires_grad_(true);
  at::Tensor l = in.loc.detach().clone().requires_grad_(true);
  at::Tensor a = in.attn.detach().clone().requires_grad_(true);
  at::Tensor out = ops::MsDeformAttn(v, in.spatial_shapes, in.level_start_index, l, a);
  out.backward(grad.to(out.device(), out.scalar_type()));
  return {out.detach(), v.grad(), l.grad(), a.grad()};
}

class MsDeformAttnCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
  const at::Device cuda_{at::kCUDA, 0};
};

TEST_F(MsDeformAttnCudaTest, FloatMatchesCpuKernelAndComposed) {
  at::manual_seed(1);
  for (int64_t dim : {32, 40, 5}) {
    Inputs cpu = MakeInputs(2, 11, 3, dim, at::kFloat);
    at::Tensor grad = at::randn({2, 11, 3 * dim});
    for (bool shapes_on_device : {false, true}) {
      const auto expected = RunWithGrads(cpu, grad);
      const auto got = RunWithGrads(To(cpu, cuda_, at::kFloat, shapes_on_device), grad);
      EXPECT_LT(MaxAbsDiff(got[0], expected[0]), 1e-5) << "dim " << dim;
      for (int i = 1; i < 4; ++i) EXPECT_LT(MaxAbsDiff(got[i], expected[i]), 1e-4) << i;
    }
    Inputs gpu = To(cpu, cuda_, at::kFloat, false);
    EXPECT_LT(MaxAbsDiff(ops::MsDeformAttn(gpu.value, gpu.spatial_shapes, gpu.level_start_index,
                                           gpu.loc, gpu.attn),
                         MsDeformAttnComposed(gpu.value, kShapes, gpu.loc, gpu.attn)),
              1e-5);
  }
}

TEST_F(MsDeformAttnCudaTest, DoubleMatchesCpuKernel) {
  at::manual_seed(2);
  Inputs cpu = MakeInputs(2, 5, 2, 8, at::kDouble);
  at::Tensor grad = at::randn({2, 5, 16}, at::kDouble);
  const auto expected = RunWithGrads(cpu, grad);
  const auto got = RunWithGrads(To(cpu, cuda_, at::kDouble, false), grad);
  for (int i = 0; i < 4; ++i) EXPECT_LT(MaxAbsDiff(got[i], expected[i]), 1e-10) << i;
}

TEST_F(MsDeformAttnCudaTest, HalfAndBfloat16AccumulateInFloat) {
  at::manual_seed(3);
  Inputs cpu = MakeInputs(1, 64, 8, 32, at::kFloat);
  at::Tensor grad = at::randn({1, 64, 256});
  for (at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
    // Reference: float computation on the inputs rounded to `dtype`.
    Inputs rounded = To(To(cpu, at::kCPU, dtype, false), at::kCPU, at::kFloat, false);
    const auto expected = RunWithGrads(rounded, grad.to(dtype).to(at::kFloat));
    const auto got = RunWithGrads(To(cpu, cuda_, dtype, false), grad);
    const double tol = dtype == at::kHalf ? 1e-2 : 6e-2;
    ASSERT_EQ(got[0].scalar_type(), dtype);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(got[i].scalar_type(), dtype) << i;
      const double scale = std::max(1.0, expected[i].abs().max().item<double>());
      EXPECT_LT(MaxAbsDiff(got[i], expected[i]) / scale, tol) << "dtype " << dtype << " " << i;
    }
  }
}

// A half / bfloat16 value with float locations and weights: float output and
// float location / weight gradients, grad_value in the value's dtype; the
// reference is the CPU float kernel on the value rounded to `dtype`.
TEST_F(MsDeformAttnCudaTest, HalfAndBfloat16ValueWithFloatParameters) {
  at::manual_seed(4);
  Inputs cpu = MakeInputs(2, 64, 8, 32, at::kFloat);
  at::Tensor grad = at::randn({2, 64, 256});
  for (at::ScalarType dtype : {at::kHalf, at::kBFloat16}) {
    Inputs rounded = cpu;
    rounded.value = cpu.value.to(dtype).to(at::kFloat);
    const auto expected = RunWithGrads(rounded, grad);
    Inputs gpu = To(cpu, cuda_, at::kFloat, false);
    gpu.value = cpu.value.to(cuda_, dtype);
    const auto got = RunWithGrads(gpu, grad);
    EXPECT_EQ(got[0].scalar_type(), at::kFloat);
    EXPECT_EQ(got[1].scalar_type(), dtype);
    EXPECT_EQ(got[2].scalar_type(), at::kFloat);
    EXPECT_EQ(got[3].scalar_type(), at::kFloat);
    // Float arithmetic on the same inputs: summation-order rounding only.
    EXPECT_LT(MaxAbsDiff(got[0], expected[0]), 1e-5) << dtype;
    EXPECT_LT(MaxAbsDiff(got[2], expected[2]), 1e-4) << dtype;
    EXPECT_LT(MaxAbsDiff(got[3], expected[3]), 1e-4) << dtype;
    // grad_value: float sums (atomics, any order) rounded to `dtype` once.
    const double scale = std::max(1.0, expected[1].abs().max().item<double>());
    const double tol = dtype == at::kHalf ? 2e-3 : 1e-2;
    EXPECT_LT(MaxAbsDiff(got[1], expected[1]) / scale, tol) << dtype;
  }
  // A float value with bfloat16 parameters is refused, naming the dtypes.
  Inputs bad = To(cpu, cuda_, at::kFloat, false);
  bad.loc = bad.loc.to(at::kBFloat16);
  bad.attn = bad.attn.to(at::kBFloat16);
  try {
    ops::MsDeformAttn(bad.value, bad.spatial_shapes, bad.level_start_index, bad.loc, bad.attn);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("sampling_locations is BFloat16 but value is Float"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(MsDeformAttnCudaTest, EmptyBatchNoQueriesAndNonContiguous) {
  Inputs empty = To(MakeInputs(0, 4, 2, 8, at::kFloat), cuda_, at::kFloat, false);
  EXPECT_EQ(ops::MsDeformAttn(empty.value, empty.spatial_shapes, empty.level_start_index,
                              empty.loc, empty.attn)
                .sizes(),
            (at::IntArrayRef{0, 4, 16}));
  Inputs none = To(MakeInputs(2, 0, 2, 8, at::kFloat), cuda_, at::kFloat, false);
  EXPECT_EQ(ops::MsDeformAttn(none.value, none.spatial_shapes, none.level_start_index, none.loc,
                              none.attn)
                .sizes(),
            (at::IntArrayRef{2, 0, 16}));

  Inputs in = To(MakeInputs(2, 6, 4, 32, at::kFloat), cuda_, at::kFloat, false);
  at::Tensor expected =
      ops::MsDeformAttn(in.value, in.spatial_shapes, in.level_start_index, in.loc, in.attn);
  Inputs strided = in;
  strided.value = in.value.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
  strided.attn = in.attn.transpose(1, 2).contiguous().transpose(1, 2);
  ASSERT_FALSE(strided.value.is_contiguous());
  EXPECT_LT(MaxAbsDiff(ops::MsDeformAttn(strided.value, strided.spatial_shapes,
                                         strided.level_start_index, strided.loc, strided.attn),
                       expected),
            1e-6);
}

TEST_F(MsDeformAttnCudaTest, MixedDevicesAreRejected) {
  Inputs in = To(MakeInputs(1, 3, 2, 8, at::kFloat), cuda_, at::kFloat, false);
  in.attn = in.attn.cpu();
  try {
    ops::MsDeformAttn(in.value, in.spatial_shapes, in.level_start_index, in.loc, in.attn);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention_weights is on cpu"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace lpdetr

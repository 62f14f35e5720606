// lpdetr::ms_deform_attn (CPU kernel + autograd) against the composed
// grid_sample reference, finite differences in double, edge cases and input
// checks; a bfloat16 value (with float or bfloat16 locations and weights)
// against the float kernel on the widened value.
#include "model/ops/ms_deform_attn.h"

#include <functional>
#include <tuple>
#include <utility>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "model/deform_attn.h"
#include "model/runtime.h"

namespace lpdetr {
namespace {

struct Inputs {
  at::Tensor value, spatial_shapes, level_start_index, loc, attn;
  SpatialShapes shapes;
};

// Random inputs; locations uniform in [lo, hi] (outside [0, 1] = partly or
// wholly outside the map).
Inputs MakeInputs(int64_t batch, int64_t num_query, int64_t heads, int64_t dim,
                  const SpatialShapes& shapes, int64_t points, at::ScalarType dtype,
                  double lo = -0.1, double hi = 1.1) {
  Inputs in;
  in.shapes = shapes;
  const int64_t levels = static_cast<int64_t>(shapes.size());
  std::vector<int64_t> flat, starts;
  int64_t total = 0;
  for (const auto& s : shapes) {
    flat.insert(flat.end(), {s[0], s[1]});
    starts.push_back(total);
    total += s[0] * s[1];
  }
  in.spatial_shapes = at::tensor(flat, at::kLong).view({levels, 2});
  in.level_start_index = at::tensor(starts, at::kLong);
  const auto opts = at::TensorOptions().dtype(dtype);
  in.value = at::randn({batch, total, heads, dim}, opts);
  in.loc = at::rand({batch, num_query, heads, levels, points, 2}, opts) * (hi - lo) + lo;
  in.attn = at::rand({batch, num_query, heads, levels, points}, opts);
  return in;
}

at::Tensor Kernel(const Inputs& in) {
  return ops::MsDeformAttn(in.value, in.spatial_shapes, in.level_start_index, in.loc, in.attn);
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return 0;
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

std::string ErrorOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "<no error>";
}

// Expects fn() to throw a c10::Error whose message contains `needle`.
void ExpectError(const std::function<void()>& fn, const std::string& needle) {
  const std::string message = ErrorOf(fn);
  EXPECT_NE(message.find(needle), std::string::npos)
      << "expected \"" << needle << "\" in: " << message;
}

const SpatialShapes kShapes = {{{7, 9}}, {{4, 5}}, {{2, 3}}, {{1, 1}}};

class ForwardVsComposed : public ::testing::TestWithParam<int64_t> {};

TEST_P(ForwardVsComposed, MatchesWithin1e5) {
  at::manual_seed(1);
  const int64_t dim = GetParam();  // 8/16/32/64 run the AVX2 path, others the generic one
  Inputs in = MakeInputs(2, 13, 3, dim, kShapes, 4, at::kFloat);
  at::Tensor out = Kernel(in);
  at::Tensor ref = MsDeformAttnComposed(in.value, in.shapes, in.loc, in.attn);
  ASSERT_EQ(out.sizes(), ref.sizes());
  EXPECT_LT(MaxAbsDiff(out, ref), 1e-5);
  EXPECT_GT(out.abs().max().item<double>(), 0.1) << "output should not be trivially zero";
}

INSTANTIATE_TEST_SUITE_P(Dims, ForwardVsComposed, ::testing::Values(5, 8, 16, 32, 64, 40));

TEST(MsDeformAttnTest, GradientsMatchComposedWithin1e4) {
  at::manual_seed(2);
  for (int64_t dim : {32, 6}) {
    Inputs in = MakeInputs(2, 9, 2, dim, kShapes, 3, at::kFloat);
    at::Tensor grad = at::randn({2, 9, 2 * dim});
    std::vector<at::Tensor> grads[2];
    for (int k = 0; k < 2; ++k) {
      at::Tensor v = in.value.clone().requires_grad_(true);
      at::Tensor l = in.loc.clone().requires_grad_(true);
      at::Tensor a = in.attn.clone().requires_grad_(true);
      at::Tensor out = k == 0 ? ops::MsDeformAttn(v, in.spatial_shapes, in.level_start_index, l, a)
                              : MsDeformAttnComposed(v, in.shapes, l, a);
      out.backward(grad);
      grads[k] = {v.grad(), l.grad(), a.grad()};
    }
    const char* names[] = {"value", "sampling_locations", "attention_weights"};
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(grads[0][i].defined()) << names[i];
      EXPECT_LT(MaxAbsDiff(grads[0][i], grads[1][i]), 1e-4) << names[i] << " dim " << dim;
      EXPECT_GT(grads[1][i].abs().max().item<double>(), 1e-2) << names[i];
    }
  }
}

// Central differences of sum(out * grad) in double against the analytic
// backward, element by element (a C++ gradcheck).
TEST(MsDeformAttnTest, DoublePrecisionGradcheck) {
  at::manual_seed(3);
  const SpatialShapes shapes = {{{3, 4}}, {{2, 2}}};
  Inputs in = MakeInputs(2, 3, 2, 3, shapes, 2, at::kDouble, 0.05, 0.95);
  at::Tensor grad = at::randn({2, 3, 6}, at::kDouble);
  at::Tensor v = in.value.clone().requires_grad_(true);
  at::Tensor l = in.loc.clone().requires_grad_(true);
  at::Tensor a = in.attn.clone().requires_grad_(true);
  ops::MsDeformAttn(v, in.spatial_shapes, in.level_start_index, l, a).backward(grad);
  const at::Tensor analytic[] = {v.grad(), l.grad(), a.grad()};
  at::Tensor* tensors[] = {&in.value, &in.loc, &in.attn};
  const double eps = 1e-6;
  auto objective = [&] { return (Kernel(in) * grad).sum().item<double>(); };
  for (int t = 0; t < 3; ++t) {
    at::Tensor flat = tensors[t]->view(-1);
    at::Tensor expected = analytic[t].reshape(-1);
    for (int64_t i = 0; i < flat.numel(); ++i) {
      const double x = flat[i].item<double>();
      flat[i] = x + eps;
      const double up = objective();
      flat[i] = x - eps;
      const double down = objective();
      flat[i] = x;
      const double numeric = (up - down) / (2 * eps);
      EXPECT_NEAR(expected[i].item<double>(), numeric, 1e-6 + 1e-5 * std::abs(numeric))
          << "input " << t << " element " << i;
    }
  }
}

TEST(MsDeformAttnTest, EmptyBatch) {
  Inputs in = MakeInputs(0, 5, 2, 8, kShapes, 2, at::kFloat);
  at::Tensor v = in.value.clone().requires_grad_(true);
  at::Tensor out = ops::MsDeformAttn(v, in.spatial_shapes, in.level_start_index, in.loc, in.attn);
  EXPECT_EQ(out.sizes(), (at::IntArrayRef{0, 5, 16}));
  out.sum().backward();
  EXPECT_EQ(v.grad().sizes(), v.sizes());
}

TEST(MsDeformAttnTest, NoQueries) {
  Inputs in = MakeInputs(2, 0, 2, 8, kShapes, 2, at::kFloat);
  at::Tensor v = in.value.clone().requires_grad_(true);
  at::Tensor out = ops::MsDeformAttn(v, in.spatial_shapes, in.level_start_index, in.loc, in.attn);
  EXPECT_EQ(out.sizes(), (at::IntArrayRef{2, 0, 16}));
  out.sum().backward();
  ASSERT_TRUE(v.grad().defined());
  EXPECT_EQ(v.grad().abs().sum().item<double>(), 0.0);
}

TEST(MsDeformAttnTest, SingleQuery) {
  at::manual_seed(4);
  Inputs in = MakeInputs(1, 1, 1, 32, kShapes, 1, at::kFloat, 0.0, 1.0);
  EXPECT_LT(MaxAbsDiff(Kernel(in), MsDeformAttnComposed(in.value, in.shapes, in.loc, in.attn)),
            1e-5);
}

TEST(MsDeformAttnTest, PointsOutsideTheMapGiveZerosAndZeroGradients) {
  Inputs in = MakeInputs(1, 4, 2, 8, kShapes, 2, at::kFloat);
  in.loc.select(-1, 0).fill_(1.6);  // x beyond the right edge of every level
  at::Tensor l = in.loc.clone().requires_grad_(true);
  at::Tensor a = in.attn.clone().requires_grad_(true);
  at::Tensor out = ops::MsDeformAttn(in.value, in.spatial_shapes, in.level_start_index, l, a);
  EXPECT_EQ(out.abs().max().item<double>(), 0.0);
  out.sum().backward();
  EXPECT_EQ(l.grad().abs().max().item<double>(), 0.0);
  EXPECT_EQ(a.grad().abs().max().item<double>(), 0.0);
}

TEST(MsDeformAttnTest, NonContiguousInputs) {
  at::manual_seed(5);
  Inputs in = MakeInputs(2, 7, 4, 32, kShapes, 3, at::kFloat);
  at::Tensor ref = MsDeformAttnComposed(in.value, in.shapes, in.loc, in.attn);
  Inputs strided = in;
  // Same values, other strides: permuted storage, and a slice of a larger tensor.
  strided.value = in.value.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
  strided.loc = at::cat({in.loc, in.loc}, -1).narrow(-1, 2, 2);
  strided.attn = in.attn.transpose(1, 2).contiguous().transpose(1, 2);
  ASSERT_FALSE(strided.value.is_contiguous());
  ASSERT_FALSE(strided.loc.is_contiguous());
  ASSERT_FALSE(strided.attn.is_contiguous());
  ASSERT_TRUE(at::equal(strided.loc, in.loc));
  EXPECT_LT(MaxAbsDiff(Kernel(strided), ref), 1e-5);
}

TEST(MsDeformAttnTest, InferenceModeAndNoGrad) {
  Inputs in = MakeInputs(1, 3, 2, 8, kShapes, 2, at::kFloat);
  at::Tensor expected = Kernel(in);
  {
    c10::InferenceMode guard;
    EXPECT_TRUE(at::equal(Kernel(in), expected));
  }
  {
    torch::NoGradGuard guard;
    at::Tensor v = in.value.clone().requires_grad_(true);
    EXPECT_FALSE(
        ops::MsDeformAttn(v, in.spatial_shapes, in.level_start_index, in.loc, in.attn)
            .requires_grad());
  }
}

TEST(MsDeformAttnTest, BadInputsNameTheValue) {
  Inputs in = MakeInputs(2, 3, 2, 8, kShapes, 2, at::kFloat);
  auto call = [](const Inputs& x) { return [x] { Kernel(x); }; };
  Inputs bad = in;
  bad.value = in.value.flatten(2);
  ExpectError(call(bad), "value must be [B, Nv, H, D], got shape [2, 90, 16]");
  bad = in;
  bad.value = in.value.narrow(1, 0, 89);
  ExpectError(call(bad), "spatial_shapes cover 90 positions but value has Nv = 89");
  bad = in;
  bad.loc = in.loc.to(at::kDouble);
  ExpectError(call(bad), "sampling_locations is Double but value is Float");
  bad = in;
  bad.attn = in.attn.narrow(-1, 0, 1);
  ExpectError(call(bad), "attention_weights has shape [2, 3, 2, 4, 1]");
  bad = in;
  bad.loc = in.loc.narrow(2, 0, 1);
  ExpectError(call(bad), "sampling_locations has 1 heads but value has 2");
  bad = in;
  bad.spatial_shapes = in.spatial_shapes.to(at::kInt);
  ExpectError(call(bad), "spatial_shapes must be int64, got Int");
  bad = in;
  bad.level_start_index = in.level_start_index + 1;
  ExpectError(call(bad), "level_start_index[0] is 1, expected 0");
  bad = in;
  bad.value = in.value.to(at::kInt);
  bad.loc = in.loc.to(at::kInt);
  bad.attn = in.attn.to(at::kInt);
  ExpectError(call(bad), "value must be a floating tensor, got Int");
  bad = in;
  bad.value = in.value.to(at::kHalf);
  bad.loc = in.loc.to(at::kHalf);
  bad.attn = in.attn.to(at::kHalf);
  ExpectError(call(bad), "CPU kernel supports float and double, got Half");
}

// Forward rows and backward (batch, head, level) tasks are independent, so the
// results do not depend on the thread count, bit for bit.
TEST(MsDeformAttnTest, ThreadCountDoesNotChangeResults) {
  at::manual_seed(7);
  Inputs in = MakeInputs(2, 300, 4, 32, kShapes, 4, at::kFloat);
  at::Tensor grad = at::randn({2, 300, 128});
  auto run = [&] {
    at::Tensor v = in.value.clone().requires_grad_(true);
    at::Tensor l = in.loc.clone().requires_grad_(true);
    at::Tensor a = in.attn.clone().requires_grad_(true);
    at::Tensor out = ops::MsDeformAttn(v, in.spatial_shapes, in.level_start_index, l, a);
    out.backward(grad);
    return std::vector<at::Tensor>{out.detach(), v.grad(), l.grad(), a.grad()};
  };
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  const auto serial = run();
  at::set_num_threads(3);
  const auto parallel = run();
  at::set_num_threads(saved);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(at::equal(serial[i], parallel[i])) << i;
}

TEST(MsDeformAttnTest, DoubleBackwardSaysUnsupported) {
  Inputs in = MakeInputs(1, 3, 2, 8, kShapes, 2, at::kDouble, 0.1, 0.9);
  at::Tensor l = in.loc.clone().requires_grad_(true);
  at::Tensor out = ops::MsDeformAttn(in.value, in.spatial_shapes, in.level_start_index, l, in.attn);
  at::Tensor grad_loc =
      torch::autograd::grad({out.sum()}, {l}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  ASSERT_TRUE(grad_loc.requires_grad());
  ExpectError([&] { grad_loc.sum().backward(); }, "double backward is not supported");
}

// The module gives the same result through the kernel and the composed path.
TEST(MsDeformAttnTest, ModuleKernelsMatchComposed) {
  at::manual_seed(6);
  MultiScaleDeformableAttention attn(32, 4, 4, 4);
  const int64_t nv = 7 * 9 + 4 * 5 + 2 * 3 + 1;
  at::Tensor query = at::randn({2, 10, 32});
  at::Tensor value = at::randn({2, nv, 32});
  at::Tensor mask = at::rand({2, nv}) > 0.8;
  torch::NoGradGuard no_grad;
  for (int64_t ref_dim : {2, 4}) {
    at::Tensor ref_points = at::rand({2, 10, 4, ref_dim});
    const OpBackend saved = GetOpBackend();
    SetOpBackend(OpBackend::kComposed);
    at::Tensor composed = attn->forward(query, ref_points, value, kShapes, mask);
    SetOpBackend(OpBackend::kKernels);
    at::Tensor fused = attn->forward(query, ref_points, value, kShapes, mask);
    SetOpBackend(saved);
    EXPECT_LT(MaxAbsDiff(fused, composed), 1e-5) << "reference dim " << ref_dim;
  }
}

// ---- bfloat16 value -------------------------------------------------------
// bfloat16 widens to float exactly, so a bfloat16 value must give the float
// kernel's results on value.to(float), bit for bit (same arithmetic, same
// order). These run on any CPU: the widening is integer shifts.

std::tuple<at::Tensor, at::Tensor, at::Tensor> KernelBackward(const at::Tensor& value,
                                                              const Inputs& in,
                                                              const at::Tensor& loc,
                                                              const at::Tensor& attn,
                                                              const at::Tensor& grad_output) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lpdetr::_ms_deform_attn_backward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
  return op.call(value, in.spatial_shapes, in.level_start_index, loc, attn, grad_output);
}

// D = 8, 16, 32, 64 take the AVX2 vectors (bfloat16 widened in registers),
// the others the generic loop.
class Bf16Value : public ::testing::TestWithParam<int64_t> {};

TEST_P(Bf16Value, ForwardEqualsFloatKernelOnWidenedValue) {
  at::manual_seed(11);
  const int64_t dim = GetParam();
  Inputs in = MakeInputs(2, 13, 3, dim, kShapes, 4, at::kFloat);
  const at::Tensor value_bf16 = in.value.to(at::kBFloat16);
  const at::Tensor widened = value_bf16.to(at::kFloat);
  ASSERT_FALSE(at::equal(widened, in.value)) << "rounding to bfloat16 should change the value";
  const at::Tensor out =
      ops::MsDeformAttn(value_bf16, in.spatial_shapes, in.level_start_index, in.loc, in.attn);
  ASSERT_EQ(out.scalar_type(), at::kFloat);
  ASSERT_EQ(out.sizes(), (at::IntArrayRef{2, 13, 3 * dim}));
  const at::Tensor expected =
      ops::MsDeformAttn(widened, in.spatial_shapes, in.level_start_index, in.loc, in.attn);
  EXPECT_TRUE(at::equal(out, expected)) << "max diff " << MaxAbsDiff(out, expected);
  EXPECT_GT(out.abs().max().item<double>(), 0.1) << "output should not be trivially zero";
  // The composed reference on the same (widened) value: float rounding only.
  EXPECT_LT(MaxAbsDiff(out, MsDeformAttnComposed(widened, in.shapes, in.loc, in.attn)), 1e-5);
  // Against the unrounded float value: bfloat16's 8-bit mantissa (relative
  // error <= 2^-9 per value, averaged by the weights).
  const at::Tensor exact = MsDeformAttnComposed(in.value, in.shapes, in.loc, in.attn);
  const double scale = exact.abs().max().item<double>();
  EXPECT_LT(MaxAbsDiff(out, exact), 4e-3 * scale) << "dim " << dim;
  EXPECT_GT(MaxAbsDiff(out, exact), 0.0) << "the bfloat16 value should be read, not a float copy";
}

TEST_P(Bf16Value, BackwardEqualsFloatKernelOnWidenedValue) {
  at::manual_seed(12);
  const int64_t dim = GetParam();
  Inputs in = MakeInputs(2, 9, 2, dim, kShapes, 3, at::kFloat);
  const at::Tensor value_bf16 = in.value.to(at::kBFloat16);
  const at::Tensor widened = value_bf16.to(at::kFloat);
  const at::Tensor grad = at::randn({2, 9, 2 * dim});
  std::vector<at::Tensor> got, expected;
  for (const at::Tensor* value : {&value_bf16, &widened}) {
    at::Tensor v = value->clone().requires_grad_(true);
    at::Tensor l = in.loc.clone().requires_grad_(true);
    at::Tensor a = in.attn.clone().requires_grad_(true);
    ops::MsDeformAttn(v, in.spatial_shapes, in.level_start_index, l, a).backward(grad);
    (value == &value_bf16 ? got : expected) = {v.grad(), l.grad(), a.grad()};
  }
  ASSERT_TRUE(got[0].defined() && got[1].defined() && got[2].defined());
  EXPECT_EQ(got[0].scalar_type(), at::kBFloat16);
  EXPECT_EQ(got[1].scalar_type(), at::kFloat);
  EXPECT_EQ(got[2].scalar_type(), at::kFloat);
  // grad_value accumulates in float and is rounded to bfloat16 once.
  EXPECT_TRUE(at::equal(got[0], expected[0].to(at::kBFloat16)))
      << "max diff " << MaxAbsDiff(got[0], expected[0]);
  EXPECT_TRUE(at::equal(got[1], expected[1])) << "max diff " << MaxAbsDiff(got[1], expected[1]);
  EXPECT_TRUE(at::equal(got[2], expected[2])) << "max diff " << MaxAbsDiff(got[2], expected[2]);
  for (int i = 0; i < 3; ++i) EXPECT_GT(expected[i].abs().max().item<double>(), 1e-2) << i;

  // The composed reference's gradients on the widened value.
  at::Tensor v = widened.clone().requires_grad_(true);
  at::Tensor l = in.loc.clone().requires_grad_(true);
  at::Tensor a = in.attn.clone().requires_grad_(true);
  MsDeformAttnComposed(v, in.shapes, l, a).backward(grad);
  const double value_scale = v.grad().abs().max().item<double>();
  EXPECT_LT(MaxAbsDiff(got[0], v.grad()), 4e-3 * value_scale);  // bfloat16 rounding
  EXPECT_LT(MaxAbsDiff(got[1], l.grad()), 1e-4);
  EXPECT_LT(MaxAbsDiff(got[2], a.grad()), 1e-4);
}

// Everything in bfloat16: float arithmetic on the widened inputs, the output
// and gradients rounded to bfloat16 once.
TEST_P(Bf16Value, AllBfloat16EqualsRoundedFloatKernel) {
  at::manual_seed(13);
  const int64_t dim = GetParam();
  Inputs in = MakeInputs(2, 7, 2, dim, kShapes, 3, at::kFloat);
  Inputs bf = in;
  bf.value = in.value.to(at::kBFloat16);
  bf.loc = in.loc.to(at::kBFloat16);
  bf.attn = in.attn.to(at::kBFloat16);
  Inputs widened = bf;
  widened.value = bf.value.to(at::kFloat);
  widened.loc = bf.loc.to(at::kFloat);
  widened.attn = bf.attn.to(at::kFloat);
  const at::Tensor out = Kernel(bf);
  ASSERT_EQ(out.scalar_type(), at::kBFloat16);
  const at::Tensor expected = Kernel(widened);
  EXPECT_TRUE(at::equal(out, expected.to(at::kBFloat16)))
      << "max diff " << MaxAbsDiff(out, expected);

  const at::Tensor grad = at::randn({2, 7, 2 * dim}).to(at::kBFloat16);
  auto [gv, gl, ga] = KernelBackward(bf.value, bf, bf.loc, bf.attn, grad);
  auto [ev, el, ea] =
      KernelBackward(widened.value, widened, widened.loc, widened.attn, grad.to(at::kFloat));
  EXPECT_EQ(gv.scalar_type(), at::kBFloat16);
  EXPECT_EQ(gl.scalar_type(), at::kBFloat16);
  EXPECT_EQ(ga.scalar_type(), at::kBFloat16);
  EXPECT_TRUE(at::equal(gv, ev.to(at::kBFloat16))) << MaxAbsDiff(gv, ev);
  EXPECT_TRUE(at::equal(gl, el.to(at::kBFloat16))) << MaxAbsDiff(gl, el);
  EXPECT_TRUE(at::equal(ga, ea.to(at::kBFloat16))) << MaxAbsDiff(ga, ea);
}

INSTANTIATE_TEST_SUITE_P(Dims, Bf16Value, ::testing::Values(8, 16, 32, 64, 12, 5));

TEST(MsDeformAttnBf16Test, NonContiguousValue) {
  at::manual_seed(14);
  Inputs in = MakeInputs(2, 7, 4, 32, kShapes, 3, at::kFloat);
  const at::Tensor value_bf16 = in.value.to(at::kBFloat16);
  const at::Tensor strided = value_bf16.permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3});
  ASSERT_FALSE(strided.is_contiguous());
  EXPECT_TRUE(at::equal(
      ops::MsDeformAttn(strided, in.spatial_shapes, in.level_start_index, in.loc, in.attn),
      ops::MsDeformAttn(value_bf16.to(at::kFloat), in.spatial_shapes, in.level_start_index,
                        in.loc, in.attn)));
}

TEST(MsDeformAttnBf16Test, EmptyInputs) {
  for (auto [batch, queries] : {std::pair<int64_t, int64_t>{0, 5}, {2, 0}}) {
    Inputs in = MakeInputs(batch, queries, 2, 8, kShapes, 2, at::kFloat);
    at::Tensor v = in.value.to(at::kBFloat16).requires_grad_(true);
    at::Tensor l = in.loc.clone().requires_grad_(true);
    at::Tensor out = ops::MsDeformAttn(v, in.spatial_shapes, in.level_start_index, l, in.attn);
    EXPECT_EQ(out.sizes(), (at::IntArrayRef{batch, queries, 16}));
    EXPECT_EQ(out.scalar_type(), at::kFloat);
    out.sum().backward();
    ASSERT_TRUE(v.grad().defined());
    EXPECT_EQ(v.grad().sizes(), v.sizes());
    EXPECT_EQ(v.grad().scalar_type(), at::kBFloat16);
    EXPECT_EQ(l.grad().scalar_type(), at::kFloat);
    if (v.numel() > 0) {
      EXPECT_EQ(v.grad().abs().sum().item<double>(), 0.0);
    }
  }
}

TEST(MsDeformAttnBf16Test, ThreadCountDoesNotChangeResults) {
  at::manual_seed(15);
  Inputs in = MakeInputs(2, 300, 4, 32, kShapes, 4, at::kFloat);
  const at::Tensor value_bf16 = in.value.to(at::kBFloat16);
  at::Tensor grad = at::randn({2, 300, 128});
  auto run = [&] {
    at::Tensor v = value_bf16.clone().requires_grad_(true);
    at::Tensor l = in.loc.clone().requires_grad_(true);
    at::Tensor a = in.attn.clone().requires_grad_(true);
    at::Tensor out = ops::MsDeformAttn(v, in.spatial_shapes, in.level_start_index, l, a);
    out.backward(grad);
    return std::vector<at::Tensor>{out.detach(), v.grad(), l.grad(), a.grad()};
  };
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  const auto serial = run();
  at::set_num_threads(3);
  const auto parallel = run();
  at::set_num_threads(saved);
  for (int i = 0; i < 4; ++i) EXPECT_TRUE(at::equal(serial[i], parallel[i])) << i;
}

TEST(MsDeformAttnBf16Test, BadDtypeMixesNameTheDtypes) {
  Inputs in = MakeInputs(2, 3, 2, 8, kShapes, 2, at::kFloat);
  auto call = [](const Inputs& x) { return [x] { Kernel(x); }; };
  Inputs bad = in;
  // A float value takes float parameters only.
  bad.loc = in.loc.to(at::kBFloat16);
  bad.attn = in.attn.to(at::kBFloat16);
  ExpectError(call(bad), "sampling_locations is BFloat16 but value is Float");
  bad = in;
  bad.attn = in.attn.to(at::kBFloat16);
  ExpectError(call(bad), "attention_weights is BFloat16 but value is Float");
  // A bfloat16 value: parameters bfloat16 or float, never double, and one dtype.
  bad = in;
  bad.value = in.value.to(at::kBFloat16);
  bad.loc = in.loc.to(at::kDouble);
  bad.attn = in.attn.to(at::kDouble);
  ExpectError(call(bad), "sampling_locations is Double but value is BFloat16");
  bad = in;
  bad.value = in.value.to(at::kBFloat16);
  bad.attn = in.attn.to(at::kBFloat16);
  ExpectError(call(bad), "attention_weights is BFloat16 but sampling_locations is Float");
  bad = in;
  bad.value = in.value.to(at::kDouble);
  ExpectError(call(bad), "sampling_locations is Float but value is Double");
  // Half passes the shared checks (the CUDA kernel takes it) but not the CPU's.
  bad = in;
  bad.value = in.value.to(at::kHalf);
  ExpectError(call(bad), "CPU kernel supports float and double, got Half");
  // grad_output has the output's dtype: float in the mixed case.
  const at::Tensor value_bf16 = in.value.to(at::kBFloat16);
  const at::Tensor grad = at::randn({2, 3, 16});
  ExpectError([&] { KernelBackward(value_bf16, in, in.loc, in.attn, grad.to(at::kBFloat16)); },
              "grad_output is BFloat16 but the output is Float");
  auto grads = KernelBackward(value_bf16, in, in.loc, in.attn, grad);
  EXPECT_EQ(std::get<0>(grads).scalar_type(), at::kBFloat16);
}

}  // namespace
}  // namespace lpdetr

// ATen wrapper of the CUDA kernels of lpdetr::ms_deform_attn (built only with
// a CUDA LibTorch). Checks inputs, makes them contiguous, reads the level
// table on the host and launches on the current stream. grad_value is
// accumulated in float (double for double) and cast back. A half / bfloat16
// value may come with float sampling_locations and attention_weights (then
// the output and their gradients are float).
#include <type_traits>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "model/ops/cuda/ms_deform_attn_kernel.cuh"
#include "model/ops/ms_deform_attn.h"

namespace lpdetr::ops {
namespace {

cuda::MsDeformAttnDims GetDims(const at::Tensor& value, const at::Tensor& loc) {
  return cuda::MsDeformAttnDims{value.size(0), value.size(1), value.size(2), value.size(3),
                                loc.size(1),   loc.size(3),   loc.size(4)};
}

// Common checks; returns the level table on the host.
std::pair<at::Tensor, at::Tensor> CheckCuda(const at::Tensor& value,
                                            const at::Tensor& spatial_shapes,
                                            const at::Tensor& level_start_index,
                                            const at::Tensor& sampling_locations,
                                            const at::Tensor& attention_weights,
                                            const at::Tensor& grad_output) {
  TORCH_CHECK(value.is_cuda(), "ms_deform_attn: CUDA kernel called with value on ",
              value.device());
  const at::Tensor shapes = spatial_shapes.to(at::kCPU).contiguous();
  const at::Tensor starts = level_start_index.to(at::kCPU).contiguous();
  detail::MsDeformAttnCheckInputs(value, shapes, starts, sampling_locations, attention_weights,
                                  grad_output);
  const auto dtype = value.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "ms_deform_attn: the CUDA kernel supports float, double, half and bfloat16, got ",
              dtype);
  TORCH_CHECK(shapes.size(0) <= cuda::kMsDeformAttnMaxLevels, "ms_deform_attn: ",
              shapes.size(0), " levels, the CUDA kernel supports at most ",
              cuda::kMsDeformAttnMaxLevels);
  return {shapes, starts};
}

// Calls fn(T* tag) with the kernel scalar type of `dtype`.
template <typename Fn>
void DispatchCudaType(at::ScalarType dtype, Fn&& fn) {
  switch (dtype) {
    case at::kFloat: return fn(static_cast<float*>(nullptr));
    case at::kDouble: return fn(static_cast<double*>(nullptr));
    case at::kHalf: return fn(static_cast<__half*>(nullptr));
    case at::kBFloat16: return fn(static_cast<__nv_bfloat16*>(nullptr));
    default: TORCH_CHECK(false, "ms_deform_attn: unsupported dtype ", dtype);
  }
}

// Calls fn(T* tag, P* tag) with the value's kernel type T and the parameters'
// P: T, or float for a half / bfloat16 value with float parameters (the
// shared checks allow nothing else).
template <typename Fn>
void DispatchCudaTypes(at::ScalarType value_type, at::ScalarType param_type, Fn&& fn) {
  DispatchCudaType(value_type, [&](auto* value_tag) {
    using T = std::remove_pointer_t<decltype(value_tag)>;
    if constexpr (std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>) {
      if (param_type == at::kFloat) return fn(value_tag, static_cast<float*>(nullptr));
    }
    fn(value_tag, value_tag);
  });
}

template <typename T>
const T* Ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.data_ptr());
}
template <typename T>
T* MutPtr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

at::Tensor MsDeformAttnForwardCudaAten(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                       const at::Tensor& level_start_index,
                                       const at::Tensor& sampling_locations,
                                       const at::Tensor& attention_weights) {
  auto [shapes, starts] = CheckCuda(value, spatial_shapes, level_start_index,
                                    sampling_locations, attention_weights, at::Tensor());
  const c10::cuda::CUDAGuard guard(value.device());
  const auto n = GetDims(value, sampling_locations);
  at::Tensor out = at::empty({n.batch, n.num_query, n.heads * n.dim},
                             value.options().dtype(attention_weights.scalar_type()));
  if (out.numel() == 0) return out;
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(),
                   attn = attention_weights.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  DispatchCudaTypes(value.scalar_type(), attn.scalar_type(), [&](auto* value_tag,
                                                                 auto* param_tag) {
    using T = std::remove_pointer_t<decltype(value_tag)>;
    using P = std::remove_pointer_t<decltype(param_tag)>;
    C10_CUDA_CHECK((cuda::MsDeformAttnForwardCuda<T, P>(
        n, Ptr<T>(v), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), Ptr<P>(loc),
        Ptr<P>(attn), MutPtr<P>(out), stream)));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> MsDeformAttnBackwardCudaAten(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  auto [shapes, starts] = CheckCuda(value, spatial_shapes, level_start_index,
                                    sampling_locations, attention_weights, grad_output);
  const c10::cuda::CUDAGuard guard(value.device());
  const auto n = GetDims(value, sampling_locations);
  const at::ScalarType acc_type =
      value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_value_acc = at::zeros(value.sizes(), value.options().dtype(acc_type));
  const at::TensorOptions param_options = value.options().dtype(attention_weights.scalar_type());
  at::Tensor grad_loc = at::empty(sampling_locations.sizes(), param_options);
  at::Tensor grad_attn = at::empty(attention_weights.sizes(), param_options);
  if (grad_attn.numel() > 0) {
    const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(),
                     attn = attention_weights.contiguous(), g = grad_output.contiguous();
    const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    DispatchCudaTypes(value.scalar_type(), attn.scalar_type(), [&](auto* value_tag,
                                                                   auto* param_tag) {
      using T = std::remove_pointer_t<decltype(value_tag)>;
      using P = std::remove_pointer_t<decltype(param_tag)>;
      C10_CUDA_CHECK((cuda::MsDeformAttnBackwardCuda<T, P>(
          n, Ptr<T>(v), shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), Ptr<P>(loc),
          Ptr<P>(attn), Ptr<P>(g), MutPtr<cuda::AccT<T>>(grad_value_acc), MutPtr<P>(grad_loc),
          MutPtr<P>(grad_attn), stream)));
    });
  }
  return {grad_value_acc.to(value.scalar_type()), grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(lpdetr, CUDA, m) {
  m.impl("ms_deform_attn", TORCH_FN(MsDeformAttnForwardCudaAten));
  m.impl("_ms_deform_attn_backward", TORCH_FN(MsDeformAttnBackwardCudaAten));
}

}  // namespace lpdetr::ops

// CUDA kernels of lpdetr::ms_deform_attn on raw pointers and a stream (no
// torch headers: nvcc compiles ms_deform_attn_kernel.cu alone). The ATen
// wrapper is ms_deform_attn_cuda.cpp.
//
// Layouts (all contiguous): value [B, Nv, H, D], sampling_locations
// [B, Nq, H, L, P, 2], attention_weights [B, Nq, H, L, P], output and
// grad_output [B, Nq, H * D]. The level table (h, w of each level and its
// start in Nv) is read from host memory and passed to the kernels by value.
// T, the value's type, is float, double, __half or __nv_bfloat16; P, the type
// of sampling_locations, attention_weights, output, grad_output,
// grad_locations and grad_weights, is T, or float with a __half /
// __nv_bfloat16 value (mixed). Arithmetic accumulates in AccT<T> (float, or
// double for double).
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

namespace lpdetr::ops::cuda {

// Most levels a call may have (the level table travels as a kernel argument).
constexpr int kMsDeformAttnMaxLevels = 16;

struct MsDeformAttnDims {
  int64_t batch, num_value, heads, dim, num_query, levels, points;
};

template <typename T>
struct MsDeformAttnAcc {
  using type = float;
};
template <>
struct MsDeformAttnAcc<double> {
  using type = double;
};
template <typename T>
using AccT = typename MsDeformAttnAcc<T>::type;

// output [B, Nq, H*D] = sampled values. spatial_shapes_host [L, 2] and
// level_start_index_host [L] are host pointers. Returns the launch error.
template <typename T, typename P = T>
cudaError_t MsDeformAttnForwardCuda(const MsDeformAttnDims& dims, const T* value,
                                    const int64_t* spatial_shapes_host,
                                    const int64_t* level_start_index_host,
                                    const P* sampling_locations, const P* attention_weights,
                                    P* output, cudaStream_t stream);

// grad_value (AccT<T>, [B, Nv, H, D]) must be zero-filled: it is accumulated
// with atomics. grad_locations and grad_weights are fully written.
template <typename T, typename P = T>
cudaError_t MsDeformAttnBackwardCuda(const MsDeformAttnDims& dims, const T* value,
                                     const int64_t* spatial_shapes_host,
                                     const int64_t* level_start_index_host,
                                     const P* sampling_locations, const P* attention_weights,
                                     const P* grad_output, AccT<T>* grad_value,
                                     P* grad_locations, P* grad_weights, cudaStream_t stream);

}  // namespace lpdetr::ops::cuda

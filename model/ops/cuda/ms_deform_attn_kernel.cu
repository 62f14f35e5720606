// CUDA kernels of lpdetr::ms_deform_attn: one warp per (batch, query, head),
// lanes over the D channels (coalesced reads of value[b, pos, h, :]).
// T is the value's type, P that of the locations, weights, output and their
// gradients (T, or float with a half / bfloat16 value).
// Forward accumulates the bilinear corners of all levels and points in AccT;
// backward scatters grad_value with atomics and reduces the per-sample dot
// products for grad_locations / grad_weights across the warp.
#include "model/ops/cuda/ms_deform_attn_kernel.cuh"
#include "model/ops/ms_deform_attn_corners.h"

namespace lpdetr::ops::cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 8;

struct LevelTable {
  int64_t h[kMsDeformAttnMaxLevels];
  int64_t w[kMsDeformAttnMaxLevels];
  int64_t start[kMsDeformAttnMaxLevels];
};

template <typename T>
__device__ __forceinline__ AccT<T> Load(const T* p) {
  return static_cast<AccT<T>>(*p);
}
template <>
__device__ __forceinline__ float Load<__half>(const __half* p) {
  return __half2float(*p);
}
template <>
__device__ __forceinline__ float Load<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

template <typename T>
__device__ __forceinline__ T Cast(AccT<T> v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half Cast<__half>(float v) {
  return __float2half(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 Cast<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}


template <typename T, typename P>
__global__ void ForwardKernel(MsDeformAttnDims n, LevelTable levels, const T* __restrict__ value,
                              const P* __restrict__ loc, const P* __restrict__ attn,
                              P* __restrict__ out) {
  using A = AccT<T>;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t total = n.batch * n.num_query * n.heads;
  if (warp >= total) return;
  const int64_t h = warp % n.heads;
  const int64_t b = warp / (n.heads * n.num_query);
  const int64_t sample0 = warp * n.levels * n.points;
  const int64_t pos_stride = n.heads * n.dim;
  for (int64_t d = lane; d < n.dim; d += kWarp) {
    A acc = 0;
    for (int64_t l = 0; l < n.levels; ++l) {
      const T* base = value + ((b * n.num_value + levels.start[l]) * n.heads + h) * n.dim + d;
      for (int64_t p = 0; p < n.points; ++p) {
        const int64_t s = sample0 + l * n.points + p;
        Corners<A> c;
        if (!MakeCorners<A>(Load(loc + 2 * s), Load(loc + 2 * s + 1), levels.h[l], levels.w[l],
                            &c)) {
          continue;
        }
        const A a = Load(attn + s);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.pos[k] >= 0) acc += a * c.weight[k] * Load(base + c.pos[k] * pos_stride);
        }
      }
    }
    out[warp * n.dim + d] = Cast<P>(acc);
  }
}

template <typename A>
__device__ __forceinline__ A WarpSum(A v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

template <typename T, typename P>
__global__ void BackwardKernel(MsDeformAttnDims n, LevelTable levels,
                               const T* __restrict__ value, const P* __restrict__ loc,
                               const P* __restrict__ attn, const P* __restrict__ grad_out,
                               AccT<T>* __restrict__ grad_value, P* __restrict__ grad_loc,
                               P* __restrict__ grad_attn) {
  using A = AccT<T>;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t total = n.batch * n.num_query * n.heads;
  if (warp >= total) return;  // whole warps leave together: shuffles stay full
  const int64_t h = warp % n.heads;
  const int64_t b = warp / (n.heads * n.num_query);
  const int64_t sample0 = warp * n.levels * n.points;
  const int64_t pos_stride = n.heads * n.dim;
  const P* g = grad_out + warp * n.dim;
  for (int64_t l = 0; l < n.levels; ++l) {
    const int64_t level_offset = ((b * n.num_value + levels.start[l]) * n.heads + h) * n.dim;
    for (int64_t p = 0; p < n.points; ++p) {
      const int64_t s = sample0 + l * n.points + p;
      Corners<A> c;
      if (!MakeCorners<A>(Load(loc + 2 * s), Load(loc + 2 * s + 1), levels.h[l], levels.w[l],
                          &c)) {
        if (lane == 0) {
          grad_attn[s] = Cast<P>(A(0));
          grad_loc[2 * s] = Cast<P>(A(0));
          grad_loc[2 * s + 1] = Cast<P>(A(0));
        }
        continue;
      }
      const A a = Load(attn + s);
      A dots[4] = {0, 0, 0, 0};
      for (int64_t d = lane; d < n.dim; d += kWarp) {
        const A gd = Load(g + d);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.pos[k] < 0) continue;
          const int64_t off = level_offset + c.pos[k] * pos_stride + d;
          dots[k] += Load(value + off) * gd;
          atomicAdd(grad_value + off, a * c.weight[k] * gd);
        }
      }
#pragma unroll
      for (int k = 0; k < 4; ++k) dots[k] = WarpSum(dots[k]);
      if (lane == 0) {
        grad_attn[s] = Cast<P>(c.weight[0] * dots[0] + c.weight[1] * dots[1] +
                               c.weight[2] * dots[2] + c.weight[3] * dots[3]);
        const A d_fx = (A(1) - c.fy) * (dots[1] - dots[0]) + c.fy * (dots[3] - dots[2]);
        const A d_fy = (A(1) - c.fx) * (dots[2] - dots[0]) + c.fx * (dots[3] - dots[1]);
        grad_loc[2 * s] = Cast<P>(a * static_cast<A>(levels.w[l]) * d_fx);
        grad_loc[2 * s + 1] = Cast<P>(a * static_cast<A>(levels.h[l]) * d_fy);
      }
    }
  }
}

bool MakeLevelTable(const MsDeformAttnDims& n, const int64_t* shapes, const int64_t* starts,
                    LevelTable* table) {
  if (n.levels < 0 || n.levels > kMsDeformAttnMaxLevels) return false;
  for (int64_t l = 0; l < n.levels; ++l) {
    table->h[l] = shapes[2 * l];
    table->w[l] = shapes[2 * l + 1];
    table->start[l] = starts[l];
  }
  return true;
}

unsigned int NumBlocks(const MsDeformAttnDims& n) {
  const int64_t warps = n.batch * n.num_query * n.heads;
  return static_cast<unsigned int>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

}  // namespace

template <typename T, typename P>
cudaError_t MsDeformAttnForwardCuda(const MsDeformAttnDims& dims, const T* value,
                                    const int64_t* spatial_shapes_host,
                                    const int64_t* level_start_index_host,
                                    const P* sampling_locations, const P* attention_weights,
                                    P* output, cudaStream_t stream) {
  LevelTable table{};
  if (!MakeLevelTable(dims, spatial_shapes_host, level_start_index_host, &table)) {
    return cudaErrorInvalidValue;
  }
  if (dims.batch * dims.num_query * dims.heads == 0 || dims.dim == 0) return cudaSuccess;
  ForwardKernel<T, P><<<NumBlocks(dims), kWarp * kWarpsPerBlock, 0, stream>>>(
      dims, table, value, sampling_locations, attention_weights, output);
  return cudaGetLastError();
}

template <typename T, typename P>
cudaError_t MsDeformAttnBackwardCuda(const MsDeformAttnDims& dims, const T* value,
                                     const int64_t* spatial_shapes_host,
                                     const int64_t* level_start_index_host,
                                     const P* sampling_locations, const P* attention_weights,
                                     const P* grad_output, AccT<T>* grad_value,
                                     P* grad_locations, P* grad_weights, cudaStream_t stream) {
  LevelTable table{};
  if (!MakeLevelTable(dims, spatial_shapes_host, level_start_index_host, &table)) {
    return cudaErrorInvalidValue;
  }
  if (dims.batch * dims.num_query * dims.heads == 0) return cudaSuccess;
  BackwardKernel<T, P><<<NumBlocks(dims), kWarp * kWarpsPerBlock, 0, stream>>>(
      dims, table, value, sampling_locations, attention_weights, grad_output, grad_value,
      grad_locations, grad_weights);
  return cudaGetLastError();
}

// (value type, parameter type): one dtype, or a half / bfloat16 value with
// float parameters.
#define LPDETR_MSDA_INSTANTIATE(T, P)                                                         \
  template cudaError_t MsDeformAttnForwardCuda<T, P>(const MsDeformAttnDims&, const T*,      \
                                                     const int64_t*, const int64_t*, const P*, \
                                                     const P*, P*, cudaStream_t);            \
  template cudaError_t MsDeformAttnBackwardCuda<T, P>(                                       \
      const MsDeformAttnDims&, const T*, const int64_t*, const int64_t*, const P*, const P*, \
      const P*, AccT<T>*, P*, P*, cudaStream_t);

LPDETR_MSDA_INSTANTIATE(float, float)
LPDETR_MSDA_INSTANTIATE(double, double)
LPDETR_MSDA_INSTANTIATE(__half, __half)
LPDETR_MSDA_INSTANTIATE(__nv_bfloat16, __nv_bfloat16)
LPDETR_MSDA_INSTANTIATE(__half, float)
LPDETR_MSDA_INSTANTIATE(__nv_bfloat16, float)
#undef LPDETR_MSDA_INSTANTIATE

}  // namespace lpdetr::ops::cuda

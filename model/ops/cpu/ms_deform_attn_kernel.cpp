// CPU kernels of lpdetr::ms_deform_attn (float and double).
//
// Forward: parallel over (batch, query) rows; for each (query, head) a D-wide
// accumulator (float D in {8, 16, 32, 64}: AVX2 registers) gathers the four
// bilinear corners of every level and point, each a contiguous D-vector
// value[b, position, h, :].
// Backward: grad_value is a scatter, so the work is split over (batch, head,
// level) triples, whose grad_value slices are disjoint: no races and no
// buffers; every triple has Nq * P samples, so the split is balanced.
// grad_locations and grad_weights are dot products of the corner values with
// grad_output[b, q, h, :].
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "model/ops/cpu_isa.h"
#include "model/ops/ms_deform_attn.h"
#include "model/ops/ms_deform_attn_corners.h"

namespace lpdetr::ops {
namespace {

// Sizes of one call.
struct Dims {
  int64_t batch, num_value, heads, dim, num_query, levels, points;
};

// D-vector arithmetic for any D (scalar loops the compiler may vectorize).
template <typename T>
class GenericVec {
 public:
  explicit GenericVec(int64_t dim) : dim_(dim), acc_(dim) {}
  void Zero() { std::fill(acc_.begin(), acc_.end(), T(0)); }
  void Fma(const T* v, T w) {
    for (int64_t d = 0; d < dim_; ++d) acc_[d] += w * v[d];
  }
  void Store(T* out) const { std::copy(acc_.begin(), acc_.end(), out); }
  // Backward of one sampling point for grad_output g (SetGrad): for each
  // corner k with value[k] != nullptr, dots[k] = <value[k], g> and
  // grad_value[k] += weight[k] * g; dots[k] = 0 for the others.
  void SetGrad(const T* g) { grad_ = g; }
  void Backward4(const T* const value[4], T* const grad_value[4], const T weight[4],
                 T dots[4]) const {
    for (int k = 0; k < 4; ++k) {
      T s = 0;
      if (value[k] != nullptr) {
        for (int64_t d = 0; d < dim_; ++d) {
          s += value[k][d] * grad_[d];
          grad_value[k][d] += weight[k] * grad_[d];
        }
      }
      dots[k] = s;
    }
  }

 private:
  int64_t dim_;
  std::vector<T> acc_;
  const T* grad_ = nullptr;
};

#if defined(__AVX2__) && defined(__FMA__)
// D = 8 * kRegs floats held in AVX2 registers.
template <int kRegs>
class Avx2Vec {
 public:
  explicit Avx2Vec(int64_t /*dim*/) {}
  void Zero() {
    for (int r = 0; r < kRegs; ++r) acc_[r] = _mm256_setzero_ps();
  }
  void Fma(const float* v, float w) {
    const __m256 wv = _mm256_set1_ps(w);
    for (int r = 0; r < kRegs; ++r) acc_[r] = _mm256_fmadd_ps(_mm256_loadu_ps(v + 8 * r), wv, acc_[r]);
  }
  void Store(float* out) const {
    for (int r = 0; r < kRegs; ++r) _mm256_storeu_ps(out + 8 * r, acc_[r]);
  }
  // grad_output stays in registers across the samples of one query.
  void SetGrad(const float* g) {
    for (int r = 0; r < kRegs; ++r) grad_[r] = _mm256_loadu_ps(g + 8 * r);
  }
  void Backward4(const float* const value[4], float* const grad_value[4], const float weight[4],
                 float dots[4]) const {
    __m256 s[4];
    for (int k = 0; k < 4; ++k) {
      s[k] = _mm256_setzero_ps();
      if (value[k] == nullptr) continue;
      const __m256 wv = _mm256_set1_ps(weight[k]);
      for (int r = 0; r < kRegs; ++r) {
        s[k] = _mm256_fmadd_ps(_mm256_loadu_ps(value[k] + 8 * r), grad_[r], s[k]);
        float* gv = grad_value[k] + 8 * r;
        _mm256_storeu_ps(gv, _mm256_fmadd_ps(grad_[r], wv, _mm256_loadu_ps(gv)));
      }
    }
    // Four horizontal sums at once: hadd pairs, then fold the 128-bit halves.
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
    _mm_storeu_ps(dots, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }

 private:
  __m256 acc_[kRegs];
  __m256 grad_[kRegs];
};
#endif


template <typename T, typename Vec>
void ForwardRows(const Dims& n, const int64_t* shapes, const int64_t* starts, const T* value,
                 const T* loc, const T* attn, T* out, int64_t row_begin, int64_t row_end) {
  Vec acc(n.dim);
  const int64_t pos_stride = n.heads * n.dim;  // between value positions
  for (int64_t row = row_begin; row < row_end; ++row) {  // row = b * Nq + q
    const int64_t b = row / n.num_query;
    for (int64_t h = 0; h < n.heads; ++h) {
      acc.Zero();
      const int64_t sample0 = (row * n.heads + h) * n.levels * n.points;
      for (int64_t l = 0; l < n.levels; ++l) {
        const int64_t lh = shapes[2 * l], lw = shapes[2 * l + 1];
        const T* base = value + ((b * n.num_value + starts[l]) * n.heads + h) * n.dim;
        for (int64_t p = 0; p < n.points; ++p) {
          const int64_t s = sample0 + l * n.points + p;
          Corners<T> c;
          if (!MakeCorners(loc[2 * s], loc[2 * s + 1], lh, lw, &c)) continue;
          const T a = attn[s];
          for (int k = 0; k < 4; ++k) {
            if (c.pos[k] >= 0) acc.Fma(base + c.pos[k] * pos_stride, a * c.weight[k]);
          }
        }
      }
      acc.Store(out + (row * n.heads + h) * n.dim);
    }
  }
}

// Backward of the samples of one (batch, head, level): they read and write
// only that level's slice of value / grad_value for head h, so distinct
// (b, h, l) never touch the same memory.
template <typename T, typename Vec>
void BackwardLevel(const Dims& n, const int64_t* shapes, const int64_t* starts, const T* value,
                   const T* loc, const T* attn, const T* grad_out, T* grad_value, T* grad_loc,
                   T* grad_attn, int64_t b, int64_t h, int64_t l) {
  Vec ops(n.dim);
  const int64_t pos_stride = n.heads * n.dim;
  const int64_t lh = shapes[2 * l], lw = shapes[2 * l + 1];
  const int64_t level_offset = ((b * n.num_value + starts[l]) * n.heads + h) * n.dim;
  const T* base = value + level_offset;
  T* grad_base = grad_value + level_offset;
  // Consecutive queries of one (b, h, l) are H*L*P samples apart in loc, attn
  // and their gradients (and H*D apart in grad_output): strides the hardware
  // prefetcher misses, so fetch a few queries ahead.
  constexpr int64_t kAhead = 6;
  for (int64_t q = 0; q < n.num_query; ++q) {
    const int64_t row = b * n.num_query + q;
    if (q + kAhead < n.num_query) {
      const int64_t ahead = ((row + kAhead) * n.heads + h) * n.levels * n.points + l * n.points;
      __builtin_prefetch(loc + 2 * ahead);
      __builtin_prefetch(loc + 2 * (ahead + n.points) - 1);
      __builtin_prefetch(attn + ahead);
      __builtin_prefetch(grad_loc + 2 * ahead, 1);
      __builtin_prefetch(grad_attn + ahead, 1);
      const T* g_ahead = grad_out + ((row + kAhead) * n.heads + h) * n.dim;
      for (int64_t d = 0; d < n.dim; d += 64 / static_cast<int64_t>(sizeof(T))) {
        __builtin_prefetch(g_ahead + d);
      }
    }
    ops.SetGrad(grad_out + (row * n.heads + h) * n.dim);
    const int64_t sample0 = ((row * n.heads + h) * n.levels + l) * n.points;
    for (int64_t p = 0; p < n.points; ++p) {
      const int64_t s = sample0 + p;
      Corners<T> c;
      if (!MakeCorners(loc[2 * s], loc[2 * s + 1], lh, lw, &c)) continue;
      const T a = attn[s];
      const T* corner_value[4];
      T* corner_grad[4];
      T scaled[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t off = c.pos[k] * pos_stride;
        corner_value[k] = c.pos[k] >= 0 ? base + off : nullptr;
        corner_grad[k] = c.pos[k] >= 0 ? grad_base + off : nullptr;
        scaled[k] = a * c.weight[k];
      }
      T dots[4];  // <corner value, grad_output>
      ops.Backward4(corner_value, corner_grad, scaled, dots);
      grad_attn[s] = c.weight[0] * dots[0] + c.weight[1] * dots[1] + c.weight[2] * dots[2] +
                     c.weight[3] * dots[3];
      // d(weights)/d(fx), d(weights)/d(fy); pixel = loc * size - 0.5.
      const T d_fx = (1 - c.fy) * (dots[1] - dots[0]) + c.fy * (dots[3] - dots[2]);
      const T d_fy = (1 - c.fx) * (dots[2] - dots[0]) + c.fx * (dots[3] - dots[1]);
      grad_loc[2 * s] = a * static_cast<T>(lw) * d_fx;
      grad_loc[2 * s + 1] = a * static_cast<T>(lh) * d_fy;
    }
  }
}

// Calls fn.template operator()<Vec>() with the fastest Vec for (T, dim).
template <typename T, typename Fn>
void WithVec(int64_t dim, Fn&& fn) {
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    switch (dim) {
      case 8: return fn(static_cast<Avx2Vec<1>*>(nullptr));
      case 16: return fn(static_cast<Avx2Vec<2>*>(nullptr));
      case 32: return fn(static_cast<Avx2Vec<4>*>(nullptr));
      case 64: return fn(static_cast<Avx2Vec<8>*>(nullptr));
      default: break;
    }
  }
#endif
  fn(static_cast<GenericVec<T>*>(nullptr));
}

Dims GetDims(const at::Tensor& value, const at::Tensor& loc) {
  return Dims{value.size(0), value.size(1), value.size(2), value.size(3),
              loc.size(1),   loc.size(3),   loc.size(4)};
}

void CheckCpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
              const at::Tensor& level_start_index) {
  CheckCpuKernelsSupported("ms_deform_attn");
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "ms_deform_attn: the CPU kernel supports float and double, got ",
              value.scalar_type());
  TORCH_CHECK(spatial_shapes.device().is_cpu() && level_start_index.device().is_cpu(),
              "ms_deform_attn: CPU kernel needs spatial_shapes and level_start_index on the CPU");
}

at::Tensor MsDeformAttnForwardCpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index,
                                  const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights) {
  detail::MsDeformAttnCheckInputs(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, at::Tensor());
  CheckCpu(value, spatial_shapes, level_start_index);
  const Dims n = GetDims(value, sampling_locations);
  at::Tensor out = at::empty({n.batch, n.num_query, n.heads * n.dim}, value.options());
  if (out.numel() == 0) return out;
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(),
                   attn = attention_weights.contiguous(), shapes = spatial_shapes.contiguous(),
                   starts = level_start_index.contiguous();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    WithVec<scalar_t>(n.dim, [&](auto* vec_tag) {
      using Vec = std::remove_pointer_t<decltype(vec_tag)>;
      const int64_t grain = std::max<int64_t>(1, 2048 / (n.heads * n.levels * n.points));
      at::parallel_for(0, n.batch * n.num_query, grain, [&](int64_t begin, int64_t end) {
        ForwardRows<scalar_t, Vec>(n, shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
                                   v.data_ptr<scalar_t>(), loc.data_ptr<scalar_t>(),
                                   attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), begin,
                                   end);
      });
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> MsDeformAttnBackwardCpu(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  detail::MsDeformAttnCheckInputs(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, grad_output);
  CheckCpu(value, spatial_shapes, level_start_index);
  const Dims n = GetDims(value, sampling_locations);
  at::Tensor grad_value = at::zeros(value.sizes(), value.options());
  at::Tensor grad_loc = at::zeros(sampling_locations.sizes(), value.options());
  at::Tensor grad_attn = at::zeros(attention_weights.sizes(), value.options());
  if (grad_attn.numel() == 0 || value.numel() == 0) return {grad_value, grad_loc, grad_attn};
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(),
                   attn = attention_weights.contiguous(), g = grad_output.contiguous(),
                   shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    WithVec<scalar_t>(n.dim, [&](auto* vec_tag) {
      using Vec = std::remove_pointer_t<decltype(vec_tag)>;
      at::parallel_for(0, n.batch * n.heads * n.levels, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t l = task % n.levels, bh = task / n.levels;
          BackwardLevel<scalar_t, Vec>(
              n, shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), v.data_ptr<scalar_t>(),
              loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
              grad_value.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(),
              grad_attn.data_ptr<scalar_t>(), bh / n.heads, bh % n.heads, l);
        }
      });
    });
  });
  return {grad_value, grad_loc, grad_attn};
}

}  // namespace

TORCH_LIBRARY_IMPL(lpdetr, CPU, m) {
  m.impl("ms_deform_attn", TORCH_FN(MsDeformAttnForwardCpu));
  m.impl("_ms_deform_attn_backward", TORCH_FN(MsDeformAttnBackwardCpu));
}

}  // namespace lpdetr::ops

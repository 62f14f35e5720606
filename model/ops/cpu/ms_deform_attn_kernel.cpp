// CPU kernels of lpdetr::ms_deform_attn: value float, double or bfloat16;
// sampling_locations / attention_weights (the "parameters") in the value's
// dtype, or float with a bfloat16 value. Arithmetic is in float (double for
// double); bfloat16 is widened on load (a 16-bit shift, exact), so a bfloat16
// value gives the float kernel's result on value.to(float), bit for bit.
//
// Forward: parallel over (batch, query) rows; for each (query, head) a D-wide
// accumulator (float accumulation and D in {8, 16, 32, 64}: AVX2 registers,
// bfloat16 widened 8 lanes at a time; a bfloat16 value with D in {32, 64} on
// AVX-512 CPUs: AVX-512 registers, 16 lanes, ~5-15% faster) gathers the
// four bilinear corners of every level and point, each a contiguous D-vector
// value[b, position, h, :]. LPDETR_CPU_ISA=avx2 rules the AVX-512 path out
// (model/ops/cpu_isa.h).
// Backward: grad_value is a scatter, so the work is split over (batch, head,
// level) triples, whose grad_value slices are disjoint: no races and no
// buffers; every triple has Nq * P samples, so the split is balanced. A
// bfloat16 value's gradient accumulates in a float tensor, rounded once at
// the end. grad_locations and grad_weights are dot products of the corner
// values with grad_output[b, q, h, :].
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#include "model/ops/cpu_isa.h"
#if (defined(__AVX2__) && defined(__FMA__)) || defined(LPDETR_CPU_AVX512_VARIANTS)
#include <immintrin.h>
#endif

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include "model/ops/ms_deform_attn.h"
#include "model/ops/ms_deform_attn_corners.h"

namespace lpdetr::ops {
namespace {

using c10::BFloat16;

// Sizes of one call.
struct Dims {
  int64_t batch, num_value, heads, dim, num_query, levels, points;
};

// Accumulation type of a storage type: float, or double for double.
template <typename T>
using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Backward of one sampling point over D = dim channels: for each corner k with
// value[k] != nullptr, dots[k] = <value[k], g> and grad_value[k] += weight[k]
// * g; dots[k] = 0 for the others.
template <typename A>
void GenericBackward4(int64_t dim, const A* const value[4], const A* g, A* const grad_value[4],
                      const A weight[4], A dots[4]) {
  for (int k = 0; k < 4; ++k) {
    A s = 0;
    if (value[k] != nullptr) {
      for (int64_t d = 0; d < dim; ++d) {
        s += value[k][d] * g[d];
        grad_value[k][d] += weight[k] * g[d];
      }
    }
    dots[k] = s;
  }
}

// D-vector arithmetic for any D (scalar loops the compiler may vectorize).
// V: value storage type; A: accumulation type. A narrower V (bfloat16) is
// widened to A before the backward's dot products, which then run the same
// code as for an A value (the compiler vectorizes that reduction in its own
// way, so the same code keeps the results equal).
template <typename V, typename A>
class GenericVec {
 public:
  explicit GenericVec(int64_t dim) : dim_(dim), acc_(dim) {}
  void Zero() { std::fill(acc_.begin(), acc_.end(), A(0)); }
  void Fma(const V* v, A w) {
    for (int64_t d = 0; d < dim_; ++d) acc_[d] += w * static_cast<A>(v[d]);
  }
  template <typename P>
  void Store(P* out) const {
    for (int64_t d = 0; d < dim_; ++d) out[d] = static_cast<P>(acc_[d]);
  }
  // Backward4 of one sampling point (GenericBackward4) for grad_output g.
  template <typename P>
  void SetGrad(const P* g) {
    if constexpr (std::is_same_v<P, A>) {
      grad_ = g;
    } else {
      grad_copy_.resize(dim_);
      for (int64_t d = 0; d < dim_; ++d) grad_copy_[d] = static_cast<A>(g[d]);
      grad_ = grad_copy_.data();
    }
  }
  void Backward4(const V* const value[4], A* const grad_value[4], const A weight[4],
                 A dots[4]) {
    if constexpr (std::is_same_v<V, A>) {
      GenericBackward4(dim_, value, grad_, grad_value, weight, dots);
    } else {
      widened_.resize(4 * dim_);
      const A* rows[4];
      for (int k = 0; k < 4; ++k) {
        rows[k] = nullptr;
        if (value[k] == nullptr) continue;
        A* row = widened_.data() + k * dim_;
        for (int64_t d = 0; d < dim_; ++d) row[d] = static_cast<A>(value[k][d]);
        rows[k] = row;
      }
      GenericBackward4(dim_, rows, grad_, grad_value, weight, dots);
    }
  }

 private:
  int64_t dim_;
  std::vector<A> acc_;
  const A* grad_ = nullptr;
  std::vector<A> grad_copy_;  // grad_output widened to A when stored narrower
  std::vector<A> widened_;    // the four corner rows widened to A
};

#if defined(__AVX2__) && defined(__FMA__)
// Eight lanes of float or bfloat16 as one AVX2 float register; bfloat16 is
// the high half of a float, so widening is a zero-extension and a shift.
LPDETR_ALWAYS_INLINE __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
LPDETR_ALWAYS_INLINE __m256 Load8(const BFloat16* p) {
  const __m128i bits = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bits), 16));
}
LPDETR_ALWAYS_INLINE void Store8(float* p, __m256 x) { _mm256_storeu_ps(p, x); }
// Rounds to nearest even, as at::Tensor::to(kBFloat16).
LPDETR_ALWAYS_INLINE void Store8(BFloat16* p, __m256 x) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, x);
  for (int i = 0; i < 8; ++i) p[i] = BFloat16(lanes[i]);
}

// D = 8 * kRegs float accumulators in AVX2 registers; V (float or bfloat16)
// is the value's storage type.
template <int kRegs, typename V>
class Avx2Vec {
 public:
  explicit Avx2Vec(int64_t /*dim*/) {}
  void Zero() {
    for (int r = 0; r < kRegs; ++r) acc_[r] = _mm256_setzero_ps();
  }
  void Fma(const V* v, float w) {
    const __m256 wv = _mm256_set1_ps(w);
    for (int r = 0; r < kRegs; ++r) acc_[r] = _mm256_fmadd_ps(Load8(v + 8 * r), wv, acc_[r]);
  }
  template <typename P>
  void Store(P* out) const {
    for (int r = 0; r < kRegs; ++r) Store8(out + 8 * r, acc_[r]);
  }
  // grad_output stays in registers across the samples of one query.
  template <typename P>
  void SetGrad(const P* g) {
    for (int r = 0; r < kRegs; ++r) grad_[r] = Load8(g + 8 * r);
  }
  void Backward4(const V* const value[4], float* const grad_value[4], const float weight[4],
                 float dots[4]) const {
    __m256 s[4];
    for (int k = 0; k < 4; ++k) {
      s[k] = _mm256_setzero_ps();
      if (value[k] == nullptr) continue;
      const __m256 wv = _mm256_set1_ps(weight[k]);
      for (int r = 0; r < kRegs; ++r) {
        s[k] = _mm256_fmadd_ps(Load8(value[k] + 8 * r), grad_[r], s[k]);
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

#if defined(LPDETR_CPU_AVX512_VARIANTS)
// D = 16 * kRegs float accumulators in AVX-512 registers for a bfloat16
// value, 16 lanes widened at a time: the forward only (lanes are independent,
// so the results equal Avx2Vec's; the backward's dot products keep Avx2Vec's
// summation order). The methods carry the AVX-512 target; they are compiled
// into ForwardRowsBf16Avx512 below. (The maskz conversion and the vector
// shift avoid GCC 12's uninitialized-value warnings of the plain intrinsics.)
typedef uint32_t U32x16 __attribute__((vector_size(64)));
template <int kRegs>
class Avx512Bf16Vec {
 public:
  explicit Avx512Bf16Vec(int64_t /*dim*/) {}
  LPDETR_TARGET_AVX512 void Zero() {
    for (int r = 0; r < kRegs; ++r) acc_[r] = _mm512_setzero_ps();
  }
  LPDETR_TARGET_AVX512 void Fma(const BFloat16* v, float w) {
    const __m512 wv = _mm512_set1_ps(w);
    for (int r = 0; r < kRegs; ++r) {
      const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 16 * r));
      const U32x16 wide = reinterpret_cast<U32x16>(_mm512_maskz_cvtepu16_epi32(0xFFFF, bits)) << 16;
      acc_[r] = _mm512_fmadd_ps(reinterpret_cast<__m512>(wide), wv, acc_[r]);
    }
  }
  template <typename P>
  LPDETR_TARGET_AVX512 void Store(P* out) const {
    for (int r = 0; r < kRegs; ++r) {
      if constexpr (std::is_same_v<P, float>) {
        _mm512_storeu_ps(out + 16 * r, acc_[r]);
      } else {
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, acc_[r]);
        for (int i = 0; i < 16; ++i) out[16 * r + i] = BFloat16(lanes[i]);
      }
    }
  }

 private:
  __m512 acc_[kRegs];
};
#endif

// V: value storage type; P: storage type of sampling_locations,
// attention_weights and the output.
template <typename V, typename P, typename Vec>
void ForwardRows(const Dims& n, const int64_t* shapes, const int64_t* starts, const V* value,
                 const P* loc, const P* attn, P* out, int64_t row_begin, int64_t row_end) {
  using A = Acc<V>;
  Vec acc(n.dim);
  const int64_t pos_stride = n.heads * n.dim;  // between value positions
  for (int64_t row = row_begin; row < row_end; ++row) {  // row = b * Nq + q
    const int64_t b = row / n.num_query;
    for (int64_t h = 0; h < n.heads; ++h) {
      acc.Zero();
      const int64_t sample0 = (row * n.heads + h) * n.levels * n.points;
      for (int64_t l = 0; l < n.levels; ++l) {
        const int64_t lh = shapes[2 * l], lw = shapes[2 * l + 1];
        const V* base = value + ((b * n.num_value + starts[l]) * n.heads + h) * n.dim;
        for (int64_t p = 0; p < n.points; ++p) {
          const int64_t s = sample0 + l * n.points + p;
          Corners<A> c;
          if (!MakeCorners(static_cast<A>(loc[2 * s]), static_cast<A>(loc[2 * s + 1]), lh, lw,
                           &c)) {
            continue;
          }
          const A a = static_cast<A>(attn[s]);
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
// (b, h, l) never touch the same memory. grad_value is in the accumulation
// type; grad_out, grad_loc and grad_attn in P.
template <typename V, typename P, typename Vec>
void BackwardLevel(const Dims& n, const int64_t* shapes, const int64_t* starts, const V* value,
                   const P* loc, const P* attn, const P* grad_out, Acc<V>* grad_value,
                   P* grad_loc, P* grad_attn, int64_t b, int64_t h, int64_t l) {
  using A = Acc<V>;
  Vec ops(n.dim);
  const int64_t pos_stride = n.heads * n.dim;
  const int64_t lh = shapes[2 * l], lw = shapes[2 * l + 1];
  const int64_t level_offset = ((b * n.num_value + starts[l]) * n.heads + h) * n.dim;
  const V* base = value + level_offset;
  A* grad_base = grad_value + level_offset;
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
      const P* g_ahead = grad_out + ((row + kAhead) * n.heads + h) * n.dim;
      for (int64_t d = 0; d < n.dim; d += 64 / static_cast<int64_t>(sizeof(P))) {
        __builtin_prefetch(g_ahead + d);
      }
    }
    ops.SetGrad(grad_out + (row * n.heads + h) * n.dim);
    const int64_t sample0 = ((row * n.heads + h) * n.levels + l) * n.points;
    for (int64_t p = 0; p < n.points; ++p) {
      const int64_t s = sample0 + p;
      Corners<A> c;
      if (!MakeCorners(static_cast<A>(loc[2 * s]), static_cast<A>(loc[2 * s + 1]), lh, lw, &c)) {
        continue;
      }
      const A a = static_cast<A>(attn[s]);
      const V* corner_value[4];
      A* corner_grad[4];
      A scaled[4];
      for (int k = 0; k < 4; ++k) {
        const int64_t off = c.pos[k] * pos_stride;
        corner_value[k] = c.pos[k] >= 0 ? base + off : nullptr;
        corner_grad[k] = c.pos[k] >= 0 ? grad_base + off : nullptr;
        scaled[k] = a * c.weight[k];
      }
      A dots[4];  // <corner value, grad_output>
      ops.Backward4(corner_value, corner_grad, scaled, dots);
      grad_attn[s] = static_cast<P>(c.weight[0] * dots[0] + c.weight[1] * dots[1] +
                                    c.weight[2] * dots[2] + c.weight[3] * dots[3]);
      // d(weights)/d(fx), d(weights)/d(fy); pixel = loc * size - 0.5.
      const A d_fx = (1 - c.fy) * (dots[1] - dots[0]) + c.fy * (dots[3] - dots[2]);
      const A d_fy = (1 - c.fx) * (dots[2] - dots[0]) + c.fx * (dots[3] - dots[1]);
      grad_loc[2 * s] = static_cast<P>(a * static_cast<A>(lw) * d_fx);
      grad_loc[2 * s + 1] = static_cast<P>(a * static_cast<A>(lh) * d_fy);
    }
  }
}

template <typename V, typename P>
using ForwardRowsFn = void(const Dims&, const int64_t*, const int64_t*, const V*, const P*,
                           const P*, P*, int64_t, int64_t);

#if defined(LPDETR_CPU_AVX512_VARIANTS)
// flatten inlines ForwardRows and, into this AVX-512 function, the vector
// class's AVX-512 methods (always_inline ones would be refused in ForwardRows).
template <int kRegs, typename P>
LPDETR_TARGET_AVX512 __attribute__((flatten)) void ForwardRowsBf16Avx512(
    const Dims& n, const int64_t* shapes, const int64_t* starts, const BFloat16* value,
    const P* loc, const P* attn, P* out, int64_t row_begin, int64_t row_end) {
  ForwardRows<BFloat16, P, Avx512Bf16Vec<kRegs>>(n, shapes, starts, value, loc, attn, out,
                                                 row_begin, row_end);
}
#endif

// The AVX-512 forward for a bfloat16 value and D in {32, 64} when the
// kernels use AVX-512 (CpuKernelIsa: call outside parallel regions), else
// nullptr. (At D = 16 one 512-bit register per row was ~10% slower than two
// 256-bit ones on Zen 4.)
template <typename V, typename P>
ForwardRowsFn<V, P>* Avx512ForwardRows(int64_t dim) {
#if defined(LPDETR_CPU_AVX512_VARIANTS)
  if constexpr (std::is_same_v<V, BFloat16>) {
    if (CpuKernelIsa() == CpuIsa::kAvx512) {
      switch (dim) {
        case 32: return &ForwardRowsBf16Avx512<2, P>;
        case 64: return &ForwardRowsBf16Avx512<4, P>;
        default: break;
      }
    }
  }
#endif
  return nullptr;
}

// Calls fn(static_cast<Vec*>(nullptr)) with the fastest Vec for value storage
// type V and `dim`.
template <typename V, typename Fn>
void WithVec(int64_t dim, Fn&& fn) {
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<V, float> || std::is_same_v<V, BFloat16>) {
    switch (dim) {
      case 8: return fn(static_cast<Avx2Vec<1, V>*>(nullptr));
      case 16: return fn(static_cast<Avx2Vec<2, V>*>(nullptr));
      case 32: return fn(static_cast<Avx2Vec<4, V>*>(nullptr));
      case 64: return fn(static_cast<Avx2Vec<8, V>*>(nullptr));
      default: break;
    }
  }
#endif
  fn(static_cast<GenericVec<V, Acc<V>>*>(nullptr));
}

// Calls fn(static_cast<V*>(nullptr), static_cast<P*>(nullptr)) with the
// value storage type V and the parameter storage type P of a checked call:
// (float, float), (double, double), (bfloat16, float) or (bfloat16, bfloat16).
template <typename Fn>
void DispatchTypes(at::ScalarType value_type, at::ScalarType param_type, Fn&& fn) {
  switch (value_type) {
    case at::kFloat: return fn(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
    case at::kDouble: return fn(static_cast<double*>(nullptr), static_cast<double*>(nullptr));
    case at::kBFloat16:
      if (param_type == at::kFloat) {
        return fn(static_cast<BFloat16*>(nullptr), static_cast<float*>(nullptr));
      }
      return fn(static_cast<BFloat16*>(nullptr), static_cast<BFloat16*>(nullptr));
    default: TORCH_CHECK(false, "ms_deform_attn: no CPU kernel for value ", value_type);
  }
}

template <typename T>
const T* Ptr(const at::Tensor& t) {
  return static_cast<const T*>(t.data_ptr());
}
template <typename T>
T* MutPtr(const at::Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

Dims GetDims(const at::Tensor& value, const at::Tensor& loc) {
  return Dims{value.size(0), value.size(1), value.size(2), value.size(3),
              loc.size(1),   loc.size(3),   loc.size(4)};
}

// After detail::MsDeformAttnCheckInputs, which limits the parameters' dtype
// to the value's or float.
void CheckCpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
              const at::Tensor& level_start_index) {
  CheckCpuKernelsSupported("ms_deform_attn");
  const at::ScalarType type = value.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kBFloat16,
              "ms_deform_attn: the CPU kernel supports float and double, got ", type,
              " (and a BFloat16 value with BFloat16 or Float sampling_locations and "
              "attention_weights)");
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
  at::Tensor out = at::empty({n.batch, n.num_query, n.heads * n.dim},
                             value.options().dtype(attention_weights.scalar_type()));
  if (out.numel() == 0) return out;
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(),
                   attn = attention_weights.contiguous(), shapes = spatial_shapes.contiguous(),
                   starts = level_start_index.contiguous();
  DispatchTypes(value.scalar_type(), attn.scalar_type(), [&](auto* value_tag, auto* param_tag) {
    using V = std::remove_pointer_t<decltype(value_tag)>;
    using P = std::remove_pointer_t<decltype(param_tag)>;
    const int64_t grain = std::max<int64_t>(1, 2048 / (n.heads * n.levels * n.points));
    auto run = [&](ForwardRowsFn<V, P>* rows) {
      at::parallel_for(0, n.batch * n.num_query, grain, [&](int64_t begin, int64_t end) {
        rows(n, shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), Ptr<V>(v), Ptr<P>(loc),
             Ptr<P>(attn), MutPtr<P>(out), begin, end);
      });
    };
    if (ForwardRowsFn<V, P>* rows = Avx512ForwardRows<V, P>(n.dim)) return run(rows);
    WithVec<V>(n.dim, [&](auto* vec_tag) {
      run(&ForwardRows<V, P, std::remove_pointer_t<decltype(vec_tag)>>);
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
  // A bfloat16 value's gradient accumulates in float and is rounded once.
  const bool widened_grad_value = value.scalar_type() == at::kBFloat16;
  const at::TensorOptions param_options = value.options().dtype(attention_weights.scalar_type());
  at::Tensor grad_value = at::zeros(
      value.sizes(), widened_grad_value ? value.options().dtype(at::kFloat) : value.options());
  at::Tensor grad_loc = at::zeros(sampling_locations.sizes(), param_options);
  at::Tensor grad_attn = at::zeros(attention_weights.sizes(), param_options);
  auto result = [&] {
    return std::make_tuple(
        widened_grad_value ? grad_value.to(value.scalar_type()) : grad_value, grad_loc,
        grad_attn);
  };
  if (grad_attn.numel() == 0 || value.numel() == 0) return result();
  const at::Tensor v = value.contiguous(), loc = sampling_locations.contiguous(),
                   attn = attention_weights.contiguous(), g = grad_output.contiguous(),
                   shapes = spatial_shapes.contiguous(), starts = level_start_index.contiguous();
  DispatchTypes(value.scalar_type(), attn.scalar_type(), [&](auto* value_tag, auto* param_tag) {
    using V = std::remove_pointer_t<decltype(value_tag)>;
    using P = std::remove_pointer_t<decltype(param_tag)>;
    WithVec<V>(n.dim, [&](auto* vec_tag) {
      using Vec = std::remove_pointer_t<decltype(vec_tag)>;
      at::parallel_for(0, n.batch * n.heads * n.levels, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t l = task % n.levels, bh = task / n.levels;
          BackwardLevel<V, P, Vec>(n, shapes.data_ptr<int64_t>(), starts.data_ptr<int64_t>(),
                                   Ptr<V>(v), Ptr<P>(loc), Ptr<P>(attn), Ptr<P>(g),
                                   MutPtr<Acc<V>>(grad_value), MutPtr<P>(grad_loc),
                                   MutPtr<P>(grad_attn), bh / n.heads, bh % n.heads, l);
        }
      });
    });
  });
  return result();
}

}  // namespace

TORCH_LIBRARY_IMPL(lpdetr, CPU, m) {
  m.impl("ms_deform_attn", TORCH_FN(MsDeformAttnForwardCpu));
  m.impl("_ms_deform_attn_backward", TORCH_FN(MsDeformAttnBackwardCpu));
}

}  // namespace lpdetr::ops

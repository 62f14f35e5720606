// CPU kernels of lpdetr::relation_weights and its backward.
//
// Work is split over rows (b, i) with at::parallel_for; inside a row the pairs
// (i, j) are processed in tiles of kTile columns held in small arrays
// ([feature or embedding dim][tile]), so the per-pair arithmetic (log, range-
// reduced polynomial sin/cos, the K x F projection) auto-vectorises over j
// with -O3 -mavx2 -mfma. Each parallel task runs one of two instantiations of
// the row loops: AVX2 (8-lane projection) or, for float on CPUs with AVX-512,
// a LPDETR_TARGET_AVX512 one (16 lanes, 512-bit auto-vectorisation; ~1.7x);
// the helpers are always-inline so that each is compiled into both
// (model/ops/cpu_isa.h). The embedding of a pair lives only in the tile
// buffers: memory is the [B, K, N, M] output (plus O(M) box data per batch).
//
// The float arithmetic follows the composed reference (model/relation.cc):
// the same feature formulas and operation order, the sine argument
// (x * 100) / dim_t[k] with the same float32 dim_t; only log/sin/cos are this
// file's own (~1 ulp), so results agree to ~1e-6 relative. float64 inputs use
// std::log/sin/cos (for gradcheck and tight reference comparisons).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "model/ops/cpu_isa.h"
#include "model/ops/relation_weights.h"

namespace lpdetr::ops {
namespace {

constexpr int kTile = 32;                       // pairs per tile (4 AVX2 float vectors)
constexpr int kFreqs = detail::kRelationFreqs;  // 8 frequencies per feature
constexpr int kDims = 2 * kFreqs;               // 16 embedding dims per feature
constexpr double kEps = 1e-5;
constexpr double kSineScale = 100.0;

LPDETR_ALWAYS_INLINE float Fma(float a, float b, float c) {
#if defined(__FMA__)
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// Natural log for x > 0 (finite), ~1 ulp: x = 2^k m with m in [sqrt(1/2),
// sqrt(2)), log(1 + f) through s = f / (2 + f) and a degree-8 even
// polynomial in s. Branch-free so that loops over it vectorise.
LPDETR_ALWAYS_INLINE float Log(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  int32_t ix = bits + (0x3f800000 - 0x3f3504f3);
  const int32_t k = (ix >> 23) - 0x7f;
  ix = (ix & 0x007fffff) + 0x3f3504f3;
  float m;
  std::memcpy(&m, &ix, sizeof m);
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float w = z * z;
  const float t1 = w * Fma(w, 0.24279078841f, 0.40000972152f);
  const float t2 = z * Fma(w, 0.28498786688f, 0.66666662693f);
  const float hfsq = 0.5f * f * f;
  const float dk = static_cast<float>(k);
  const float y = s * (hfsq + (t1 + t2)) + dk * 9.0580006145e-06f - hfsq + f + dk * 6.9313812256e-01f;
  // x <= 0 or NaN -> NaN, +inf -> +inf. Integer masks rather than selects:
  // GCC does not if-convert float selects here, which would stop vectorisation.
  const int32_t finite_positive = -static_cast<int32_t>(static_cast<uint32_t>(bits) - 1u < 0x7f7fffffu);
  const int32_t is_inf = -static_cast<int32_t>(bits == 0x7f800000);
  int32_t out;
  std::memcpy(&out, &y, sizeof out);
  out = (out & finite_positive) | (0x7fc00000 & ~finite_positive);
  out = (out & ~is_inf) | (bits & is_inf);
  float result;
  std::memcpy(&result, &out, sizeof result);
  return result;
}
LPDETR_ALWAYS_INLINE double Log(double x) { return std::log(x); }

// sin and cos, ~1e-7 absolute for |x| < 2^20: n = round(x * 2/pi), r = x - n pi/2
// (three-part Cody-Waite with FMA), minimax polynomials on [-pi/4, pi/4], the
// quadrant n mod 4 picks and signs them. NaN / inf give NaN.
LPDETR_ALWAYS_INLINE void SinCos(float x, float& sin_out, float& cos_out) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: x + kRound - kRound rounds x
  const float n = (x * 0.636619772367581343f + kRound) - kRound;
  float r = Fma(n, -1.5703125f, x);
  r = Fma(n, -4.837512969970703125e-4f, r);
  r = Fma(n, -7.549789948768648e-8f, r);
  const float z = r * r;
  const float sp = Fma(Fma(Fma(z, -1.9515295891e-4f, 8.3321608736e-3f), z, -1.6666654611e-1f),
                       z * r, r);
  const float cp = Fma(Fma(Fma(z, 2.443315711809948e-5f, -1.388731625493765e-3f), z,
                           4.166664568298827e-2f),
                       z * z, Fma(-0.5f, z, 1.0f));
  const int q = static_cast<int>(n);
  const bool odd = (q & 1) != 0;
  const float sv = odd ? cp : sp;
  const float cv = odd ? sp : cp;
  sin_out = (q & 2) ? -sv : sv;
  cos_out = ((q + 1) & 2) ? -cv : cv;
}
LPDETR_ALWAYS_INLINE void SinCos(double x, double& sin_out, double& cos_out) {
  sin_out = std::sin(x);
  cos_out = std::cos(x);
}

// Boxes of one batch element as structure-of-arrays, padded to whole tiles
// (the padding repeats a unit box; padded columns are never stored).
template <typename T>
struct BoxesSoA {
  std::vector<T> cx, cy, we, he, area, x0, y0, x1, y1;  // we/he = w/h + eps

  void Load(const T* boxes, int64_t n) {
    const int64_t padded = (n + kTile - 1) / kTile * kTile;
    for (auto* v : {&cx, &cy, &we, &he, &area, &x0, &y0, &x1, &y1}) v->assign(padded, T(0.5));
    const T eps = static_cast<T>(kEps);
    for (int64_t j = 0; j < n; ++j) {
      const T* b = boxes + 4 * j;
      cx[j] = b[0];
      cy[j] = b[1];
      we[j] = b[2] + eps;
      he[j] = b[3] + eps;
      area[j] = b[2] * b[3];
      x0[j] = b[0] - T(0.5) * b[2];
      y0[j] = b[1] - T(0.5) * b[3];
      x1[j] = b[0] + T(0.5) * b[2];
      y1[j] = b[1] + T(0.5) * b[3];
    }
  }
};

// One src box (row i) with the derived values the features use.
template <typename T>
struct RowBox {
  T cx, cy, we, he, area, x0, y0, x1, y1;
  explicit RowBox(const T* b) {
    const T eps = static_cast<T>(kEps);
    cx = b[0];
    cy = b[1];
    we = b[2] + eps;
    he = b[3] + eps;
    area = b[2] * b[3];
    x0 = b[0] - T(0.5) * b[2];
    y0 = b[1] - T(0.5) * b[3];
    x1 = b[0] + T(0.5) * b[2];
    y1 = b[1] + T(0.5) * b[3];
  }
};

// Everything a row needs, shared by all rows.
template <typename T>
struct Problem {
  int64_t batch = 0, n = 0, m = 0, heads = 0, features = 0;  // features 64 | 80
  bool lp = false;
  T s_l = 1;
  T alpha[3] = {0, 0, 0};
  T dim_t[kFreqs];
  T global_embed[4 * kDims];  // lp-detr: E(1) of the global scale's 4 unit features
  const T* src = nullptr;     // [B, N, 4]
  const T* weight = nullptr;  // [K, F]
  const T* bias = nullptr;    // [K]
  std::vector<BoxesSoA<T>> tgt;  // per batch element

  void Init(const at::Tensor& src_c, const at::Tensor& tgt_c, const at::Tensor& weight_c,
            const c10::optional<at::Tensor>& alpha_t, double s, RelationVariant variant) {
    batch = src_c.size(0);
    n = src_c.size(1);
    m = tgt_c.size(1);
    heads = weight_c.size(0);
    features = weight_c.size(1);
    lp = variant == RelationVariant::kLpDetr;
    s_l = static_cast<T>(s);
    const auto& d = detail::RelationDimT();
    for (int k = 0; k < kFreqs; ++k) dim_t[k] = static_cast<T>(d[k]);
    if (lp) {
      at::Tensor a = alpha_t->contiguous();
      for (int i = 0; i < 3; ++i) alpha[i] = a.data_ptr<T>()[i];
      for (int k = 0; k < kFreqs; ++k) {
        T sv, cv;
        SinCos(static_cast<T>(T(1) * static_cast<T>(kSineScale)) / dim_t[k], sv, cv);
        for (int f = 0; f < 4; ++f) {
          global_embed[f * kDims + 2 * k] = sv;
          global_embed[f * kDims + 2 * k + 1] = cv;
        }
      }
    }
    src = src_c.data_ptr<T>();
    weight = weight_c.data_ptr<T>();
    tgt.resize(batch);
    const T* t = tgt_c.data_ptr<T>();
    for (int64_t b = 0; b < batch; ++b) tgt[b].Load(t + b * m * 4, m);
  }
};

// Relation features of row box `bi` with columns j0 .. j0 + kTile:
// f[0..3] the local features (relation-detr's 4), lp-detr adds the medium
// scale's f[4..7] and the GIoU f[8].
template <typename T>
LPDETR_ALWAYS_INLINE void TileFeatures(const Problem<T>& p, const BoxesSoA<T>& tg,
                                       const RowBox<T>& bi, int64_t j0, T (*f)[kTile]) {
  const T one = 1;
  const T* cx = tg.cx.data() + j0;
  const T* cy = tg.cy.data() + j0;
  const T* we = tg.we.data() + j0;
  const T* he = tg.he.data() + j0;
  for (int t = 0; t < kTile; ++t) {
    const T rx = std::abs(bi.cx - cx[t]) / bi.we;
    const T ry = std::abs(bi.cy - cy[t]) / bi.he;
    f[0][t] = Log(rx + one);
    f[1][t] = Log(ry + one);
    f[2][t] = Log(bi.we / we[t]);
    f[3][t] = Log(bi.he / he[t]);
    f[4][t] = rx;
    f[5][t] = ry;
  }
  if (!p.lp) return;
  const T s = p.s_l;
  for (int t = 0; t < kTile; ++t) {
    f[4][t] = Log(f[4][t] / s + one);
    f[5][t] = Log(f[5][t] / s + one);
    f[6][t] = f[2][t] / s;
    f[7][t] = f[3][t] / s;
  }
  const T* area = tg.area.data() + j0;
  const T* x0 = tg.x0.data() + j0;
  const T* y0 = tg.y0.data() + j0;
  const T* x1 = tg.x1.data() + j0;
  const T* y1 = tg.y1.data() + j0;
  const T tiny = static_cast<T>(1e-12);
  for (int t = 0; t < kTile; ++t) {
    const T iw = std::max(std::min(bi.x1, x1[t]) - std::max(bi.x0, x0[t]), T(0));
    const T ih = std::max(std::min(bi.y1, y1[t]) - std::max(bi.y0, y0[t]), T(0));
    const T inter = iw * ih;
    const T uni = bi.area + area[t] - inter;
    const T iou = inter / std::max(uni, tiny);
    const T cw = std::max(std::max(bi.x1, x1[t]) - std::min(bi.x0, x0[t]), T(0));
    const T ch = std::max(std::max(bi.y1, y1[t]) - std::min(bi.y0, y0[t]), T(0));
    const T enclose = cw * ch;
    f[8][t] = iou - (enclose - uni) / std::max(enclose, tiny);
  }
}

// Sine embedding of one feature row x: e[2k] = sin(x * 100 / dim_t[k]),
// e[2k + 1] = cos(...), 16 rows of kTile.
template <typename T>
LPDETR_ALWAYS_INLINE void EmbedFeature(const Problem<T>& p, const T* x, T (*e)[kTile]) {
  const T scale = static_cast<T>(kSineScale);
  for (int k = 0; k < kFreqs; ++k) {
    const T d = p.dim_t[k];
    T* es = e[2 * k];
    T* ec = e[2 * k + 1];
    for (int t = 0; t < kTile; ++t) SinCos((x[t] * scale) / d, es[t], ec[t]);
  }
}

// W lanes of T as a GCC vector (float, W = 8: one AVX2 register; W = 16:
// one AVX-512 register, used only inside LPDETR_TARGET_AVX512 functions).
template <typename T, int W = 8>
struct Lanes {
  typedef T V __attribute__((vector_size(W * sizeof(T))));
};

// Per-task scratch. The embedding rows are contiguous in the order local 64,
// medium 64, giou 16 (the backward's H order).
template <typename T>
struct Scratch {
  alignas(64) T feat[9][kTile];
  alignas(64) T emb[9 * kDims][kTile];    // E(R_l) (relation-detr's E), E(R_m), E(giou)
  alignas(64) T mixed[5 * kDims][kTile];  // lp-detr: forward input of the projection
  T (*local())[kTile] { return emb; }
  T (*medium())[kTile] { return emb + 4 * kDims; }
  T (*giou())[kTile] { return emb + 8 * kDims; }
};

// Embeddings of the tile: local (and medium, giou for lp-detr).
template <typename T>
LPDETR_ALWAYS_INLINE void TileEmbed(const Problem<T>& p, Scratch<T>& s) {
  for (int f = 0; f < 4; ++f) EmbedFeature(p, s.feat[f], s.local() + f * kDims);
  if (!p.lp) return;
  for (int f = 0; f < 4; ++f) EmbedFeature(p, s.feat[4 + f], s.medium() + f * kDims);
  EmbedFeature(p, s.feat[8], s.giou());
}

// W: lanes of the projection's accumulators (8 or 16).
template <typename T, int W>
LPDETR_ALWAYS_INLINE void ForwardRow(const Problem<T>& p, int64_t b, int64_t i, Scratch<T>& s,
                                     T* out) {
  const RowBox<T> bi(p.src + (b * p.n + i) * 4);
  const BoxesSoA<T>& tg = p.tgt[b];
  const int64_t plane = p.n * p.m;
  T* row_out = out + b * p.heads * plane + i * p.m;
  for (int64_t j0 = 0; j0 < p.m; j0 += kTile) {
    TileFeatures(p, tg, bi, j0, s.feat);
    TileEmbed(p, s);
    const T(*x)[kTile] = s.local();
    if (p.lp) {
      // alpha0 E(R_l) + alpha1 E(R_m) + alpha2 E(R_g), in the composed order.
      const T a0 = p.alpha[0], a1 = p.alpha[1], a2 = p.alpha[2];
      for (int d = 0; d < 4 * kDims; ++d) {
        const T g = a2 * p.global_embed[d];
        const T* el = s.local()[d];
        const T* em = s.medium()[d];
        for (int t = 0; t < kTile; ++t) s.mixed[d][t] = (el[t] * a0 + em[t] * a1) + g;
      }
      for (int d = 0; d < kDims; ++d) {
        for (int t = 0; t < kTile; ++t) {
          const T e = s.giou()[d][t];
          s.mixed[4 * kDims + d][t] = (e * a0 + e * a1) + e * a2;
        }
      }
      x = s.mixed;
    }
    const int64_t valid = std::min<int64_t>(kTile, p.m - j0);
    // Two heads at a time, accumulators in registers (W-lane vectors).
    using V = typename Lanes<T, W>::V;
    constexpr int kVecs = kTile / W;
    for (int64_t k = 0; k < p.heads; k += 2) {
      const bool pair = k + 1 < p.heads;
      const T* w0 = p.weight + k * p.features;
      const T* w1 = pair ? w0 + p.features : w0;
      V acc0[kVecs], acc1[kVecs];
#pragma GCC unroll 4
      for (int c = 0; c < kVecs; ++c) {
        acc0[c] = V{} + p.bias[k];
        acc1[c] = V{} + p.bias[pair ? k + 1 : k];
      }
      for (int64_t d = 0; d < p.features; ++d) {
        const T a = w0[d], b = w1[d];
#pragma GCC unroll 4
        for (int c = 0; c < kVecs; ++c) {
          V xv;
          std::memcpy(&xv, x[d] + W * c, sizeof(V));
          acc0[c] += a * xv;
          acc1[c] += b * xv;
        }
      }
      for (int h = 0; h < (pair ? 2 : 1); ++h) {
        alignas(64) T res[kTile];
        std::memcpy(res, h == 0 ? acc0 : acc1, sizeof(res));
        T* o = row_out + (k + h) * plane + j0;
        for (int64_t t = 0; t < valid; ++t) o[t] = res[t] < T(0) ? T(0) : res[t];
      }
    }
  }
}

template <typename T, int W>
LPDETR_ALWAYS_INLINE void ForwardRows(const Problem<T>& p, int64_t begin, int64_t end, T* out) {
  std::unique_ptr<Scratch<T>> s(new Scratch<T>);
  for (int64_t r = begin; r < end; ++r) ForwardRow<T, W>(p, r / p.n, r % p.n, *s, out);
}

template <typename T>
void ForwardRowsAvx2(const Problem<T>& p, int64_t begin, int64_t end, T* out) {
  ForwardRows<T, 8>(p, begin, end, out);
}

#if defined(LPDETR_CPU_AVX512_VARIANTS)
LPDETR_TARGET_AVX512 void ForwardRowsAvx512(const Problem<float>& p, int64_t begin, int64_t end,
                                            float* out) {
  ForwardRows<float, 16>(p, begin, end, out);
}
#endif

// Whether float kernels take their AVX-512 variants (throws on a bad
// LPDETR_CPU_ISA; call outside parallel regions).
template <typename T>
bool UseAvx512() {
#if defined(LPDETR_CPU_AVX512_VARIANTS)
  return std::is_same_v<T, float> && CpuKernelIsa() == CpuIsa::kAvx512;
#else
  return false;
#endif
}

template <typename T>
at::Tensor Forward(const at::Tensor& src, const at::Tensor& tgt, const at::Tensor& weight,
                   const at::Tensor& bias, const c10::optional<at::Tensor>& alpha, double s_l,
                   RelationVariant variant) {
  at::Tensor src_c = src.contiguous(), tgt_c = tgt.contiguous();
  at::Tensor weight_c = weight.contiguous(), bias_c = bias.contiguous();
  const int64_t B = src.size(0), N = src.size(1), M = tgt.size(1), K = weight.size(0);
  at::Tensor out = at::empty({B, K, N, M}, src.options());
  if (out.numel() == 0) return out;
  Problem<T> p;
  p.Init(src_c, tgt_c, weight_c, alpha, s_l, variant);
  p.bias = bias_c.data_ptr<T>();
  T* out_ptr = out.data_ptr<T>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(M, 1));
  const bool avx512 = UseAvx512<T>();
  (void)avx512;  // unused without AVX-512 variants
  at::parallel_for(0, B * N, grain, [&](int64_t begin, int64_t end) {
#if defined(LPDETR_CPU_AVX512_VARIANTS)
    if constexpr (std::is_same_v<T, float>) {
      if (avx512) return ForwardRowsAvx512(p, begin, end, out_ptr);
    }
#endif
    ForwardRowsAvx2(p, begin, end, out_ptr);
  });
  return out;
}

// Backward. With gm = grad_out * (out > 0) the sums over pairs
//   H_l[k][d] = sum gm_k E(R_l)_d, H_m (medium), H_g (giou), S[k] = sum gm_k
// give every gradient:
//   grad_b = S; relation-detr: grad_W = H_l;
//   lp-detr: grad_W[:, :64] = a0 H_l + a1 H_m + a2 E(1) S, grad_W[:, 64:] = (a0+a1+a2) H_g,
//   grad_a0 = <W[:, :64], H_l> + <W[:, 64:], H_g>, grad_a1 likewise with H_m,
//   grad_a2 = sum_k S_k <W[k, :64], E(1)> + <W[:, 64:], H_g>.
// Sums run per row in float lanes, per chunk of rows in double, then over
// chunks in a fixed order (deterministic for any thread count).
template <typename T>
struct GradAccumulator {
  int64_t heads = 0, dims = 0;  // dims = 64 (relation-detr) or 144 (lp-detr: l, m, g)
  std::vector<T> lanes;          // [K][dims][8] per row
  std::vector<T> lane_sum;       // [K][8]
  std::vector<double> h;         // [K][dims]
  std::vector<double> sum;       // [K]

  void Init(int64_t k, int64_t d) {
    heads = k;
    dims = d;
    lanes.assign(k * d * 8, T(0));
    lane_sum.assign(k * 8, T(0));
    h.assign(k * d, 0.0);
    sum.assign(k, 0.0);
  }
  void FlushRow() {
    for (int64_t i = 0; i < heads * dims; ++i) {
      double acc = 0;
      for (int l = 0; l < 8; ++l) acc += lanes[i * 8 + l];
      h[i] += acc;
    }
    for (int64_t k = 0; k < heads; ++k) {
      double acc = 0;
      for (int l = 0; l < 8; ++l) acc += lane_sum[k * 8 + l];
      sum[k] += acc;
    }
    std::fill(lanes.begin(), lanes.end(), T(0));
    std::fill(lane_sum.begin(), lane_sum.end(), T(0));
  }
};

template <typename T>
LPDETR_ALWAYS_INLINE void BackwardRow(const Problem<T>& p, int64_t b, int64_t i, const T* grad,
                                      const T* out, Scratch<T>& s, std::vector<T>& gm,
                                      GradAccumulator<T>& acc) {
  const RowBox<T> bi(p.src + (b * p.n + i) * 4);
  const BoxesSoA<T>& tg = p.tgt[b];
  const int64_t plane = p.n * p.m;
  const int64_t offset = b * p.heads * plane + i * p.m;
  const int64_t dims = acc.dims;
  for (int64_t j0 = 0; j0 < p.m; j0 += kTile) {
    const int64_t valid = std::min<int64_t>(kTile, p.m - j0);
    bool any = false;
    for (int64_t k = 0; k < p.heads; ++k) {
      T* g = gm.data() + k * kTile;
      const T* go = grad + offset + k * plane + j0;
      const T* o = out + offset + k * plane + j0;
      for (int64_t t = 0; t < valid; ++t) {
        g[t] = o[t] > T(0) ? go[t] : T(0);
        any |= g[t] != T(0);
      }
      for (int64_t t = valid; t < kTile; ++t) g[t] = 0;
    }
    if (!any) continue;
    TileFeatures(p, tg, bi, j0, s.feat);
    TileEmbed(p, s);
    // lanes[k][d][l] += sum over the tile's columns c = l (mod 8) of gm_k e_d,
    // in 8-lane vectors (GCC vector extension; float: one AVX2 register).
    using V = typename Lanes<T>::V;
    for (int64_t k = 0; k < p.heads; ++k) {
      const T* g = gm.data() + k * kTile;
      V gv[kTile / 8];
      for (int c = 0; c < kTile / 8; ++c) std::memcpy(&gv[c], g + 8 * c, sizeof(V));
      V total;
      std::memcpy(&total, acc.lane_sum.data() + k * 8, sizeof(V));
      for (int c = 0; c < kTile / 8; ++c) total += gv[c];
      std::memcpy(acc.lane_sum.data() + k * 8, &total, sizeof(V));
      T* lanes = acc.lanes.data() + k * dims * 8;
      for (int64_t d = 0; d < dims; ++d) {
        const T* e = s.emb[d];
        V v;
        std::memcpy(&v, lanes + d * 8, sizeof(V));
        for (int c = 0; c < kTile / 8; ++c) {
          V ev;
          std::memcpy(&ev, e + 8 * c, sizeof(V));
          v += gv[c] * ev;
        }
        std::memcpy(lanes + d * 8, &v, sizeof(V));
      }
    }
  }
  acc.FlushRow();
}

// Chunks [begin, end) of `chunk_rows` rows each: per-chunk sums into acc.
template <typename T>
struct BackwardArgs {
  const Problem<T>* p;
  const T* grad;
  const T* out;
  int64_t rows, chunk_rows, dims;
  GradAccumulator<T>* acc;
};

template <typename T>
LPDETR_ALWAYS_INLINE void BackwardChunks(const BackwardArgs<T>& a, int64_t begin, int64_t end) {
  const Problem<T>& p = *a.p;
  std::unique_ptr<Scratch<T>> s(new Scratch<T>);
  std::vector<T> gm(p.heads * kTile);
  for (int64_t c = begin; c < end; ++c) {
    GradAccumulator<T>& acc = a.acc[c];
    acc.Init(p.heads, a.dims);
    const int64_t r1 = std::min(a.rows, (c + 1) * a.chunk_rows);
    for (int64_t r = c * a.chunk_rows; r < r1; ++r) {
      BackwardRow(p, r / p.n, r % p.n, a.grad, a.out, *s, gm, acc);
    }
    acc.lanes.clear();
    acc.lanes.shrink_to_fit();
  }
}

template <typename T>
void BackwardChunksAvx2(const BackwardArgs<T>& a, int64_t begin, int64_t end) {
  BackwardChunks(a, begin, end);
}

#if defined(LPDETR_CPU_AVX512_VARIANTS)
LPDETR_TARGET_AVX512 void BackwardChunksAvx512(const BackwardArgs<float>& a, int64_t begin,
                                               int64_t end) {
  BackwardChunks(a, begin, end);
}
#endif

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> Backward(
    const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& src,
    const at::Tensor& tgt, const at::Tensor& weight, const c10::optional<at::Tensor>& alpha,
    double s_l, RelationVariant variant) {
  const bool lp = variant == RelationVariant::kLpDetr;
  const int64_t K = weight.size(0), F = weight.size(1);
  at::Tensor grad_weight = at::zeros({K, F}, weight.options());
  at::Tensor grad_bias = at::zeros({K}, weight.options());
  at::Tensor grad_alpha = at::zeros({lp ? 3 : 0}, weight.options());
  const int64_t B = src.size(0), N = src.size(1), M = tgt.size(1);
  if (B * N * M == 0 || K == 0) return {grad_weight, grad_bias, grad_alpha};

  at::Tensor src_c = src.contiguous(), tgt_c = tgt.contiguous(), weight_c = weight.contiguous();
  at::Tensor grad_c = grad_output.contiguous(), out_c = output.contiguous();
  Problem<T> p;
  p.Init(src_c, tgt_c, weight_c, alpha, s_l, variant);
  const T* grad = grad_c.data_ptr<T>();
  const T* out = out_c.data_ptr<T>();
  const int64_t dims = lp ? 9 * kDims : 4 * kDims;

  const int64_t rows = B * N;
  const int64_t chunk_rows = std::max<int64_t>(1, (rows + 63) / 64);
  const int64_t chunks = (rows + chunk_rows - 1) / chunk_rows;
  std::vector<GradAccumulator<T>> acc(chunks);
  const BackwardArgs<T> args{&p, grad, out, rows, chunk_rows, dims, acc.data()};
  const bool avx512 = UseAvx512<T>();
  (void)avx512;  // unused without AVX-512 variants
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
#if defined(LPDETR_CPU_AVX512_VARIANTS)
    if constexpr (std::is_same_v<T, float>) {
      if (avx512) return BackwardChunksAvx512(args, begin, end);
    }
#endif
    BackwardChunksAvx2(args, begin, end);
  });
  std::vector<double> h(K * dims, 0.0), sum(K, 0.0);
  for (const auto& a : acc) {
    for (int64_t x = 0; x < K * dims; ++x) h[x] += a.h[x];
    for (int64_t k = 0; k < K; ++k) sum[k] += a.sum[k];
  }

  T* gw = grad_weight.data_ptr<T>();
  T* gb = grad_bias.data_ptr<T>();
  const T* w = p.weight;
  for (int64_t k = 0; k < K; ++k) gb[k] = static_cast<T>(sum[k]);
  if (!lp) {
    for (int64_t x = 0; x < K * F; ++x) gw[x] = static_cast<T>(h[x]);
    return {grad_weight, grad_bias, grad_alpha};
  }
  const double a0 = p.alpha[0], a1 = p.alpha[1], a2 = p.alpha[2];
  double ga[3] = {0, 0, 0};
  constexpr int64_t kLocal = 4 * kDims;
  for (int64_t k = 0; k < K; ++k) {
    const double* hk = h.data() + k * dims;
    double giou_term = 0, global_dot = 0;
    for (int64_t d = 0; d < kLocal; ++d) {
      const double e1 = p.global_embed[d];
      gw[k * F + d] = static_cast<T>(a0 * hk[d] + a1 * hk[kLocal + d] + a2 * e1 * sum[k]);
      ga[0] += w[k * F + d] * hk[d];
      ga[1] += w[k * F + d] * hk[kLocal + d];
      global_dot += w[k * F + d] * e1;
    }
    for (int64_t d = 0; d < kDims; ++d) {
      const double hg = hk[2 * kLocal + d];
      gw[k * F + kLocal + d] = static_cast<T>((a0 + a1 + a2) * hg);
      giou_term += w[k * F + kLocal + d] * hg;
    }
    ga[0] += giou_term;
    ga[1] += giou_term;
    ga[2] += sum[k] * global_dot + giou_term;
  }
  T* gap = grad_alpha.data_ptr<T>();
  for (int s = 0; s < 3; ++s) gap[s] = static_cast<T>(ga[s]);
  return {grad_weight, grad_bias, grad_alpha};
}

at::Tensor RelationWeightsCpu(const at::Tensor& src, const at::Tensor& tgt,
                              const at::Tensor& weight, const at::Tensor& bias,
                              const c10::optional<at::Tensor>& alpha, double s_l,
                              int64_t variant) {
  const RelationVariant v = detail::CheckRelationInputs("lpdetr::relation_weights", src, tgt,
                                                        weight, &bias, alpha, s_l, variant);
  CheckCpuKernelsSupported("lpdetr::relation_weights");
  return AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "relation_weights_cpu", [&] {
    return Forward<scalar_t>(src, tgt, weight, bias, alpha, s_l, v);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> RelationWeightsBackwardCpu(
    const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& src,
    const at::Tensor& tgt, const at::Tensor& weight, const c10::optional<at::Tensor>& alpha,
    double s_l, int64_t variant) {
  const RelationVariant v = detail::CheckRelationInputs(
      "lpdetr::_relation_weights_backward", src, tgt, weight, nullptr, alpha, s_l, variant);
  detail::CheckRelationGrad(grad_output, output, src, tgt, weight);
  CheckCpuKernelsSupported("lpdetr::relation_weights");
  return AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "relation_weights_backward_cpu", [&] {
    return Backward<scalar_t>(grad_output, output, src, tgt, weight, alpha, s_l, v);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(lpdetr, CPU, m) {
  m.impl("relation_weights", TORCH_FN(RelationWeightsCpu));
  m.impl("_relation_weights_backward", TORCH_FN(RelationWeightsBackwardCpu));
}

}  // namespace lpdetr::ops

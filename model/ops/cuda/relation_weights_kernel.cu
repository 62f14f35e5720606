// CUDA kernels of lpdetr::relation_weights (see relation_weights_kernel.cuh).
#include "model/ops/cuda/relation_weights_kernel.cuh"

#include <cstdint>

namespace lpdetr::cuda {
namespace {

constexpr float kEps = 1e-5f;
constexpr float kSineScale = 100.0f;
constexpr int kFreqs = 8;
constexpr int kDims = 16;               // embedding dims per feature
constexpr int kForwardThreads = 128;
constexpr int kTilePairs = 64;          // backward: pairs per shared-memory tile
constexpr int kTileStride = kTilePairs + 1;  // padded rows: no bank conflicts
constexpr int kBackwardThreads = 256;
constexpr int kMaxEmbed = 144;          // lp-detr: local 64 + medium 64 + giou 16

struct Consts {
  float dim_t[kFreqs];
  float alpha[3];
  float s_l;
  int lp;
};

// Features of the pair (src box a, tgt box b): f[0..3] local (relation-detr's
// 4), lp-detr adds f[4..7] medium and f[8] GIoU. Same float operations as the
// composed reference.
__device__ __forceinline__ void PairFeatures(const float* a, const float* b, const Consts& c,
                                             float f[9]) {
  const float awe = a[2] + kEps, ahe = a[3] + kEps;
  const float rx = fabsf(a[0] - b[0]) / awe;
  const float ry = fabsf(a[1] - b[1]) / ahe;
  f[0] = logf(rx + 1.0f);
  f[1] = logf(ry + 1.0f);
  f[2] = logf(awe / (b[2] + kEps));
  f[3] = logf(ahe / (b[3] + kEps));
  if (!c.lp) return;
  f[4] = logf(rx / c.s_l + 1.0f);
  f[5] = logf(ry / c.s_l + 1.0f);
  f[6] = f[2] / c.s_l;
  f[7] = f[3] / c.s_l;
  const float ax0 = a[0] - 0.5f * a[2], ay0 = a[1] - 0.5f * a[3];
  const float ax1 = a[0] + 0.5f * a[2], ay1 = a[1] + 0.5f * a[3];
  const float bx0 = b[0] - 0.5f * b[2], by0 = b[1] - 0.5f * b[3];
  const float bx1 = b[0] + 0.5f * b[2], by1 = b[1] + 0.5f * b[3];
  const float iw = fmaxf(fminf(ax1, bx1) - fmaxf(ax0, bx0), 0.0f);
  const float ih = fmaxf(fminf(ay1, by1) - fmaxf(ay0, by0), 0.0f);
  const float inter = iw * ih;
  const float uni = a[2] * a[3] + b[2] * b[3] - inter;
  const float iou = inter / fmaxf(uni, 1e-12f);
  const float cw = fmaxf(fmaxf(ax1, bx1) - fminf(ax0, bx0), 0.0f);
  const float ch = fmaxf(fmaxf(ay1, by1) - fminf(ay0, by0), 0.0f);
  const float enclose = cw * ch;
  f[8] = iou - (enclose - uni) / fmaxf(enclose, 1e-12f);
}

__device__ __forceinline__ void Embed(float x, float dim_t, float* s, float* c) {
  sincosf((x * kSineScale) / dim_t, s, c);
}

// Embedding dim d of the projection input (the mixed embedding for lp-detr).
template <int kMaxK>
__global__ void ForwardKernel(const float* __restrict__ src, const float* __restrict__ tgt,
                              const float* __restrict__ weight, const float* __restrict__ bias,
                              float* __restrict__ out, int batch, int n, int m, int heads,
                              int64_t col_blocks, Consts c) {
  extern __shared__ float smem[];
  const int features = c.lp ? 80 : 64;
  float* w = smem;                       // [K, F]
  float* global_mix = w + heads * features;  // [64] alpha2 * E(1) (lp-detr)
  for (int x = threadIdx.x; x < heads * features; x += blockDim.x) w[x] = weight[x];
  if (c.lp) {
    for (int d = threadIdx.x; d < 64; d += blockDim.x) {
      float s, co;
      Embed(1.0f, c.dim_t[(d % kDims) / 2], &s, &co);
      global_mix[d] = c.alpha[2] * ((d & 1) ? co : s);
    }
  }
  __syncthreads();
  const int64_t row = blockIdx.x / col_blocks;  // b * n + i
  const int64_t j = (blockIdx.x % col_blocks) * blockDim.x + threadIdx.x;
  if (row >= static_cast<int64_t>(batch) * n || j >= m) return;
  const int64_t b = row / n, i = row % n;
  float f[9];
  PairFeatures(src + row * 4, tgt + (b * m + j) * 4, c, f);
  float acc[kMaxK];
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) acc[k] = k < heads ? bias[k] : 0.0f;
  for (int fi = 0; fi < 4; ++fi) {
    for (int q = 0; q < kFreqs; ++q) {
      float sl, cl;
      Embed(f[fi], c.dim_t[q], &sl, &cl);
      const int d = fi * kDims + 2 * q;
      if (c.lp) {
        float sm, cm;
        Embed(f[4 + fi], c.dim_t[q], &sm, &cm);
        sl = (sl * c.alpha[0] + sm * c.alpha[1]) + global_mix[d];
        cl = (cl * c.alpha[0] + cm * c.alpha[1]) + global_mix[d + 1];
      }
#pragma unroll
      for (int k = 0; k < kMaxK; ++k) {
        if (k < heads) acc[k] += w[k * features + d] * sl + w[k * features + d + 1] * cl;
      }
    }
  }
  if (c.lp) {
    for (int q = 0; q < kFreqs; ++q) {
      float s, co;
      Embed(f[8], c.dim_t[q], &s, &co);
      s = (s * c.alpha[0] + s * c.alpha[1]) + s * c.alpha[2];
      co = (co * c.alpha[0] + co * c.alpha[1]) + co * c.alpha[2];
      const int d = 64 + 2 * q;
#pragma unroll
      for (int k = 0; k < kMaxK; ++k) {
        if (k < heads) acc[k] += w[k * features + d] * s + w[k * features + d + 1] * co;
      }
    }
  }
  const int64_t plane = static_cast<int64_t>(n) * m;
#pragma unroll
  for (int k = 0; k < kMaxK; ++k) {
    if (k < heads) {
      const float v = acc[k];
      out[(b * heads + k) * plane + i * m + j] = v < 0.0f ? 0.0f : v;
    }
  }
}

// Accumulates H[k][d] and S[k] (workspace [K][dims + 1], S in the last column).
template <int kMaxPerThread>
__global__ void BackwardKernel(const float* __restrict__ grad_out, const float* __restrict__ out,
                               const float* __restrict__ src, const float* __restrict__ tgt,
                               float* __restrict__ workspace, int batch, int n, int m, int heads,
                               Consts c) {
  __shared__ float emb[kMaxEmbed * kTileStride];
  __shared__ float gm[kRelationMaxHeads * kTileStride];
  const int dims = c.lp ? kMaxEmbed : 64;
  const int entries = heads * (dims + 1);
  const int64_t pairs = static_cast<int64_t>(batch) * n * m;
  const int64_t plane = static_cast<int64_t>(n) * m;
  const int64_t tiles = (pairs + kTilePairs - 1) / kTilePairs;
  float acc[kMaxPerThread];
#pragma unroll
  for (int e = 0; e < kMaxPerThread; ++e) acc[e] = 0.0f;
  const int t = threadIdx.x % kTilePairs, part = threadIdx.x / kTilePairs;
  const int parts = blockDim.x / kTilePairs;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t pair = tile * kTilePairs + t;
    const bool valid = pair < pairs;
    int64_t b = 0, i = 0, j = 0;
    if (valid) {
      b = pair / plane;
      i = (pair % plane) / m;
      j = pair % m;
    }
    float f[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};
    if (valid) PairFeatures(src + (b * n + i) * 4, tgt + (b * m + j) * 4, c, f);
    const int nfeat = c.lp ? 9 : 4;
    for (int fi = part; fi < nfeat; fi += parts) {
      // Embedding rows in H order: local 0..63, medium 64..127, giou 128..143.
      const int base = fi < 4 ? fi * kDims : (fi < 8 ? 64 + (fi - 4) * kDims : 128);
      for (int q = 0; q < kFreqs; ++q) {
        float s = 0, co = 0;
        if (valid) Embed(f[fi], c.dim_t[q], &s, &co);
        emb[(base + 2 * q) * kTileStride + t] = s;
        emb[(base + 2 * q + 1) * kTileStride + t] = co;
      }
    }
    for (int k = part; k < heads; k += parts) {
      float g = 0.0f;
      if (valid) {
        const int64_t idx = (b * heads + k) * plane + i * m + j;
        g = out[idx] > 0.0f ? grad_out[idx] : 0.0f;
      }
      gm[k * kTileStride + t] = g;
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kMaxPerThread; ++e) {
      const int entry = threadIdx.x + e * blockDim.x;
      if (entry < entries) {
        const int k = entry / (dims + 1), d = entry % (dims + 1);
        const float* g = gm + k * kTileStride;
        float sum = 0.0f;
        if (d == dims) {
          for (int p = 0; p < kTilePairs; ++p) sum += g[p];
        } else {
          const float* row = emb + d * kTileStride;
          for (int p = 0; p < kTilePairs; ++p) sum += g[p] * row[p];
        }
        acc[e] += sum;
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int e = 0; e < kMaxPerThread; ++e) {
    const int entry = threadIdx.x + e * blockDim.x;
    if (entry < entries) atomicAdd(workspace + entry, acc[e]);
  }
}

// Gradients from H and S (one block).
__global__ void FinalizeKernel(const float* __restrict__ workspace,
                               const float* __restrict__ weight, float* __restrict__ grad_weight,
                               float* __restrict__ grad_bias, float* __restrict__ grad_alpha,
                               int heads, Consts c) {
  __shared__ float partial[3][256];
  const int dims = c.lp ? kMaxEmbed : 64;
  const int features = c.lp ? 80 : 64;
  float ga[3] = {0, 0, 0};
  for (int x = threadIdx.x; x < heads * features; x += blockDim.x) {
    const int k = x / features, d = x % features;
    const float* h = workspace + k * (dims + 1);
    const float sum = h[dims];
    if (!c.lp) {
      grad_weight[x] = h[d];
      continue;
    }
    const float w = weight[x];
    if (d < 64) {
      float s, co;
      Embed(1.0f, c.dim_t[(d % kDims) / 2], &s, &co);
      const float e1 = (d & 1) ? co : s;
      grad_weight[x] = c.alpha[0] * h[d] + c.alpha[1] * h[64 + d] + c.alpha[2] * e1 * sum;
      ga[0] += w * h[d];
      ga[1] += w * h[64 + d];
      ga[2] += w * e1 * sum;
    } else {
      const float hg = h[128 + d - 64];
      grad_weight[x] = (c.alpha[0] + c.alpha[1] + c.alpha[2]) * hg;
      for (int s = 0; s < 3; ++s) ga[s] += w * hg;
    }
  }
  for (int k = threadIdx.x; k < heads; k += blockDim.x) grad_bias[k] = workspace[k * (dims + 1) + dims];
  if (!c.lp) return;
  for (int s = 0; s < 3; ++s) partial[s][threadIdx.x] = ga[s];
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      for (int s = 0; s < 3; ++s) partial[s][threadIdx.x] += partial[s][threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x < 3) grad_alpha[threadIdx.x] = partial[threadIdx.x][0];
}

Consts MakeConsts(const RelationParams& p) {
  Consts c{};
  for (int q = 0; q < kFreqs; ++q) c.dim_t[q] = p.dim_t[q];
  for (int s = 0; s < 3; ++s) c.alpha[s] = p.alpha[s];
  c.s_l = p.s_l;
  c.lp = p.lp;
  return c;
}

}  // namespace

cudaError_t RelationWeightsForward(const float* src, const float* tgt, const float* weight,
                                   const float* bias, float* out, const RelationParams& p,
                                   cudaStream_t stream) {
  if (p.heads <= 0 || p.heads > kRelationMaxHeads) return cudaErrorInvalidValue;
  const int64_t rows = static_cast<int64_t>(p.batch) * p.n;
  if (rows == 0 || p.m == 0) return cudaSuccess;
  const int64_t col_blocks = (p.m + kForwardThreads - 1) / kForwardThreads;
  const int64_t blocks = rows * col_blocks;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  const int features = p.lp ? 80 : 64;
  const size_t shared = sizeof(float) * (p.heads * features + 64);
  const Consts c = MakeConsts(p);
  const dim3 grid(static_cast<unsigned>(blocks));
  if (p.heads <= 8) {
    ForwardKernel<8><<<grid, kForwardThreads, shared, stream>>>(src, tgt, weight, bias, out,
                                                                 p.batch, p.n, p.m, p.heads,
                                                                 col_blocks, c);
  } else if (p.heads <= 16) {
    ForwardKernel<16><<<grid, kForwardThreads, shared, stream>>>(src, tgt, weight, bias, out,
                                                                  p.batch, p.n, p.m, p.heads,
                                                                  col_blocks, c);
  } else {
    ForwardKernel<32><<<grid, kForwardThreads, shared, stream>>>(src, tgt, weight, bias, out,
                                                                  p.batch, p.n, p.m, p.heads,
                                                                  col_blocks, c);
  }
  return cudaGetLastError();
}

cudaError_t RelationWeightsBackward(const float* grad_out, const float* out, const float* src,
                                    const float* tgt, const float* weight, float* workspace,
                                    float* grad_weight, float* grad_bias, float* grad_alpha,
                                    const RelationParams& p, cudaStream_t stream) {
  if (p.heads <= 0 || p.heads > kRelationMaxHeads) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(
      workspace, 0, sizeof(float) * RelationBackwardWorkspaceSize(p.heads), stream);
  if (err != cudaSuccess) return err;
  const Consts c = MakeConsts(p);
  const int64_t pairs = static_cast<int64_t>(p.batch) * p.n * p.m;
  if (pairs > 0) {
    const int64_t tiles = (pairs + kTilePairs - 1) / kTilePairs;
    const unsigned blocks = static_cast<unsigned>(tiles < 1024 ? tiles : 1024);
    // entries = K * (dims + 1) <= 32 * 145 = 4640 -> at most 19 per thread.
    BackwardKernel<(kRelationMaxHeads * (kMaxEmbed + 1) + kBackwardThreads - 1) /
                   kBackwardThreads><<<blocks, kBackwardThreads, 0, stream>>>(
        grad_out, out, src, tgt, workspace, p.batch, p.n, p.m, p.heads, c);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  FinalizeKernel<<<1, 256, 0, stream>>>(workspace, weight, grad_weight, grad_bias, grad_alpha,
                                        p.heads, c);
  return cudaGetLastError();
}

}  // namespace lpdetr::cuda

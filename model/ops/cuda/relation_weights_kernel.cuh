// CUDA kernels of lpdetr::relation_weights on raw pointers and a stream
// (float32, contiguous tensors). No torch headers: this compiles with nvcc
// alone; model/ops/cuda/relation_weights_cuda.cpp wraps it for ATen.
//
// Forward: one thread per pair (b, i, j) computes the relation features, their
// sine embedding and the K projections on the fly (K <= kRelationMaxHeads).
// Backward: blocks take tiles of 64 pairs, recompute their embeddings into
// shared memory and accumulate H[k][d] = sum gm_k e_d and S[k] = sum gm_k
// (gm = grad_out * (out > 0)) into a float workspace; a final kernel turns
// them into grad_weight, grad_bias and grad_alpha (see the CPU kernel for the
// formulas).
#pragma once

#include <cuda_runtime.h>

namespace lpdetr::cuda {

constexpr int kRelationMaxHeads = 32;

struct RelationParams {
  int batch = 0;   // B
  int n = 0;       // src boxes per batch element (rows i)
  int m = 0;       // tgt boxes per batch element (columns j)
  int heads = 0;   // K <= kRelationMaxHeads
  int lp = 0;      // 1: lp-detr (weight [K, 80], alpha), 0: relation-detr (weight [K, 64])
  float s_l = 1;   // lp-detr medium scale
  float alpha[3] = {0, 0, 0};  // lp-detr: alpha on the host (the op's alpha tensor)
  float dim_t[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // 10000^(2k/16), float32 as the reference
};

// Floats of the backward's workspace for `heads` heads.
inline int RelationBackwardWorkspaceSize(int heads) { return heads * (144 + 1); }

// out [B, K, N, M] = ReLU(W e_ij + b); src [B, N, 4], tgt [B, M, 4] cxcywh,
// weight [K, F], bias [K].
cudaError_t RelationWeightsForward(const float* src, const float* tgt, const float* weight,
                                   const float* bias, float* out, const RelationParams& p,
                                   cudaStream_t stream);

// grad_weight [K, F], grad_bias [K], grad_alpha [3] (lp-detr; may be null
// otherwise) are overwritten; workspace holds RelationBackwardWorkspaceSize
// floats (cleared here).
cudaError_t RelationWeightsBackward(const float* grad_out, const float* out, const float* src,
                                    const float* tgt, const float* weight, float* workspace,
                                    float* grad_weight, float* grad_bias, float* grad_alpha,
                                    const RelationParams& p, cudaStream_t stream);

}  // namespace lpdetr::cuda

// CUDA kernels of lpdetr::relation_weights for the dispatcher: a thin ATen
// wrapper around the raw-pointer kernels of relation_weights_kernel.cu
// (float32; compiled only with a CUDA LibTorch). alpha is read to the host (3
// values) because the kernels take it by value.
#include <climits>

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "model/ops/cuda/relation_weights_kernel.cuh"
#include "model/ops/relation_weights.h"

namespace lpdetr::ops {
namespace {

void CheckCudaInputs(const char* op, const at::Tensor& src, const at::Tensor& tgt,
                     const at::Tensor& weight) {
  TORCH_CHECK(src.is_cuda(), op, ": expected CUDA tensors, src is on ", src.device());
  TORCH_CHECK(src.scalar_type() == at::kFloat, op,
              ": the CUDA kernels take float32 only, got src dtype ", src.scalar_type());
  TORCH_CHECK(weight.size(0) <= cuda::kRelationMaxHeads, op, ": the CUDA kernels take at most ",
              cuda::kRelationMaxHeads, " heads, got weight shape ", weight.sizes());
  for (int64_t v : {src.size(0), src.size(1), tgt.size(1)}) {
    TORCH_CHECK(v <= INT_MAX, op, ": size ", v, " exceeds the CUDA kernels' int range");
  }
}

cuda::RelationParams Params(const at::Tensor& src, const at::Tensor& tgt,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& alpha,
                            double s_l, RelationVariant variant) {
  cuda::RelationParams p;
  p.batch = static_cast<int>(src.size(0));
  p.n = static_cast<int>(src.size(1));
  p.m = static_cast<int>(tgt.size(1));
  p.heads = static_cast<int>(weight.size(0));
  p.lp = variant == RelationVariant::kLpDetr ? 1 : 0;
  p.s_l = static_cast<float>(s_l);
  if (p.lp) {
    at::Tensor a = alpha->detach().to(at::kCPU).contiguous();
    for (int i = 0; i < 3; ++i) p.alpha[i] = a.data_ptr<float>()[i];
  }
  const auto& dim_t = detail::RelationDimT();
  for (int k = 0; k < detail::kRelationFreqs; ++k) p.dim_t[k] = dim_t[k];
  return p;
}

at::Tensor RelationWeightsCuda(const at::Tensor& src, const at::Tensor& tgt,
                               const at::Tensor& weight, const at::Tensor& bias,
                               const c10::optional<at::Tensor>& alpha, double s_l,
                               int64_t variant) {
  constexpr const char* kOp = "lpdetr::relation_weights";
  const RelationVariant v =
      detail::CheckRelationInputs(kOp, src, tgt, weight, &bias, alpha, s_l, variant);
  CheckCudaInputs(kOp, src, tgt, weight);
  c10::cuda::CUDAGuard guard(src.device());
  at::Tensor out = at::empty({src.size(0), weight.size(0), src.size(1), tgt.size(1)},
                             src.options());
  if (out.numel() == 0) return out;
  at::Tensor src_c = src.contiguous(), tgt_c = tgt.contiguous();
  at::Tensor weight_c = weight.contiguous(), bias_c = bias.contiguous();
  const cuda::RelationParams p = Params(src, tgt, weight, alpha, s_l, v);
  const cudaError_t err = cuda::RelationWeightsForward(
      src_c.data_ptr<float>(), tgt_c.data_ptr<float>(), weight_c.data_ptr<float>(),
      bias_c.data_ptr<float>(), out.data_ptr<float>(), p, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kOp, ": CUDA forward kernel failed: ", cudaGetErrorString(err));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> RelationWeightsBackwardCuda(
    const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& src,
    const at::Tensor& tgt, const at::Tensor& weight, const c10::optional<at::Tensor>& alpha,
    double s_l, int64_t variant) {
  constexpr const char* kOp = "lpdetr::_relation_weights_backward";
  const RelationVariant v =
      detail::CheckRelationInputs(kOp, src, tgt, weight, nullptr, alpha, s_l, variant);
  detail::CheckRelationGrad(grad_output, output, src, tgt, weight);
  CheckCudaInputs(kOp, src, tgt, weight);
  c10::cuda::CUDAGuard guard(src.device());
  const bool lp = v == RelationVariant::kLpDetr;
  const int64_t k = weight.size(0);
  at::Tensor grad_weight = at::zeros(weight.sizes(), weight.options());
  at::Tensor grad_bias = at::zeros({k}, weight.options());
  at::Tensor grad_alpha = at::zeros({lp ? 3 : 0}, weight.options());
  if (k == 0) return {grad_weight, grad_bias, grad_alpha};
  at::Tensor workspace =
      at::empty({cuda::RelationBackwardWorkspaceSize(static_cast<int>(k))}, weight.options());
  at::Tensor grad_c = grad_output.contiguous(), out_c = output.contiguous();
  at::Tensor src_c = src.contiguous(), tgt_c = tgt.contiguous(), weight_c = weight.contiguous();
  const cuda::RelationParams p = Params(src, tgt, weight, alpha, s_l, v);
  const cudaError_t err = cuda::RelationWeightsBackward(
      grad_c.data_ptr<float>(), out_c.data_ptr<float>(), src_c.data_ptr<float>(),
      tgt_c.data_ptr<float>(), weight_c.data_ptr<float>(), workspace.data_ptr<float>(),
      grad_weight.data_ptr<float>(), grad_bias.data_ptr<float>(),
      lp ? grad_alpha.data_ptr<float>() : nullptr, p, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, kOp, ": CUDA backward kernel failed: ", cudaGetErrorString(err));
  return {grad_weight, grad_bias, grad_alpha};
}

}  // namespace

TORCH_LIBRARY_IMPL(lpdetr, CUDA, m) {
  m.impl("relation_weights", TORCH_FN(RelationWeightsCuda));
  m.impl("_relation_weights_backward", TORCH_FN(RelationWeightsBackwardCuda));
}

}  // namespace lpdetr::ops

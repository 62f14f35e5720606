// Autograd kernel of lpdetr::relation_weights: a torch::autograd::Function
// that runs the device kernel below autograd, saves its output (the ReLU
// mask) and calls lpdetr::_relation_weights_backward for the gradients of
// weight, bias and alpha. The boxes get no gradient (they are constants of the
// relation, as in the composed modules); double backward is not supported.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "model/ops/relation_weights.h"

namespace lpdetr::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class RelationWeightsFunction : public torch::autograd::Function<RelationWeightsFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& src, const Variable& tgt,
                          const Variable& weight, const Variable& bias,
                          const c10::optional<Variable>& alpha, double s_l, int64_t variant) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = RelationWeights(src, tgt, weight, bias, alpha,
                                     s_l, static_cast<RelationVariant>(variant));
    const bool has_alpha = alpha.has_value() && alpha->defined();
    ctx->save_for_backward({out, src, tgt, weight, has_alpha ? *alpha : at::Tensor()});
    ctx->saved_data["s_l"] = s_l;
    ctx->saved_data["variant"] = variant;
    ctx->saved_data["has_alpha"] = has_alpha;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const bool has_alpha = ctx->saved_data["has_alpha"].toBool();
    c10::optional<at::Tensor> alpha;
    if (has_alpha) alpha = saved[4];
    at::Tensor grad = grad_outputs[0];
    if (!grad.defined()) return {Variable(), Variable(), Variable(), Variable(), Variable(),
                                 Variable(), Variable()};
    auto [grad_weight, grad_bias, grad_alpha] = RelationWeightsBackward(
        grad, saved[0], saved[1], saved[2], saved[3], alpha, ctx->saved_data["s_l"].toDouble(),
        static_cast<RelationVariant>(ctx->saved_data["variant"].toInt()));
    return {Variable(), Variable(), grad_weight, grad_bias,
            has_alpha ? grad_alpha : Variable(), Variable(), Variable()};
  }
};

at::Tensor RelationWeightsAutograd(const at::Tensor& src, const at::Tensor& tgt,
                                   const at::Tensor& weight, const at::Tensor& bias,
                                   const c10::optional<at::Tensor>& alpha, double s_l,
                                   int64_t variant) {
  return RelationWeightsFunction::apply(src, tgt, weight, bias, alpha, s_l, variant);
}

}  // namespace

TORCH_LIBRARY_IMPL(lpdetr, Autograd, m) {
  m.impl("relation_weights", TORCH_FN(RelationWeightsAutograd));
}

}  // namespace lpdetr::ops

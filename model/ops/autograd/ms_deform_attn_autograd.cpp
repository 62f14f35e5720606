// Autograd of lpdetr::ms_deform_attn: the forward saves its inputs and the
// backward calls lpdetr::_ms_deform_attn_backward (gradients to value,
// sampling_locations and attention_weights; none to the integer shapes).
// Double backward is not supported and says so.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include "model/ops/ms_deform_attn.h"

namespace lpdetr::ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> CallBackward(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lpdetr::_ms_deform_attn_backward", "")
                       .typed<decltype(CallBackward)>();
  return op.call(value, spatial_shapes, level_start_index, sampling_locations,
                 attention_weights, grad_output);
}

class MsDeformAttnFunction : public torch::autograd::Function<MsDeformAttnFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& value,
                            const at::Tensor& spatial_shapes,
                            const at::Tensor& level_start_index,
                            const at::Tensor& sampling_locations,
                            const at::Tensor& attention_weights) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out =
        MsDeformAttn(value, spatial_shapes, level_start_index, sampling_locations,
                     attention_weights);
    ctx->save_for_backward(
        {value, spatial_shapes, level_start_index, sampling_locations, attention_weights});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto [grad_value, grad_loc, grad_attn] =
        CallBackward(saved[0], saved[1], saved[2], saved[3], saved[4], grad_outputs[0]);
    return {grad_value, at::Tensor(), at::Tensor(), grad_loc, grad_attn};
  }
};

// Registered for the backward op so that differentiating through it fails
// loudly instead of silently returning tensors without history.
class MsDeformAttnBackwardFunction
    : public torch::autograd::Function<MsDeformAttnBackwardFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const at::Tensor& value,
      const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
      const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
      const at::Tensor& grad_output) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [grad_value, grad_loc, grad_attn] =
        CallBackward(value, spatial_shapes, level_start_index, sampling_locations,
                     attention_weights, grad_output);
    return {grad_value, grad_loc, grad_attn};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    TORCH_CHECK(false, "lpdetr::ms_deform_attn: double backward is not supported");
  }
};

at::Tensor MsDeformAttnAutograd(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                const at::Tensor& level_start_index,
                                const at::Tensor& sampling_locations,
                                const at::Tensor& attention_weights) {
  return MsDeformAttnFunction::apply(value, spatial_shapes, level_start_index,
                                     sampling_locations, attention_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> MsDeformAttnBackwardAutograd(
    const at::Tensor& value, const at::Tensor& spatial_shapes,
    const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights, const at::Tensor& grad_output) {
  auto grads = MsDeformAttnBackwardFunction::apply(value, spatial_shapes, level_start_index,
                                                   sampling_locations, attention_weights,
                                                   grad_output);
  return {grads[0], grads[1], grads[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(lpdetr, Autograd, m) {
  m.impl("ms_deform_attn", TORCH_FN(MsDeformAttnAutograd));
  m.impl("_ms_deform_attn_backward", TORCH_FN(MsDeformAttnBackwardAutograd));
}

}  // namespace lpdetr::ops

// Schema of lpdetr::relation_weights and its backward, the dispatcher-calling
// entry points, and the input checks shared by the CPU and CUDA kernels.
#include "model/ops/relation_weights.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/pow.h>
#include <torch/library.h>

namespace lpdetr::ops {

TORCH_LIBRARY_FRAGMENT(lpdetr, m) {
  m.def(
      "relation_weights(Tensor src, Tensor tgt, Tensor weight, Tensor bias, Tensor? alpha, "
      "float s_l, int variant) -> Tensor");
  m.def(
      "_relation_weights_backward(Tensor grad_output, Tensor output, Tensor src, Tensor tgt, "
      "Tensor weight, Tensor? alpha, float s_l, int variant) -> (Tensor, Tensor, Tensor)");
}

at::Tensor RelationWeights(const at::Tensor& src, const at::Tensor& tgt,
                           const at::Tensor& weight, const at::Tensor& bias,
                           const c10::optional<at::Tensor>& alpha, double s_l,
                           RelationVariant variant) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lpdetr::relation_weights", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const c10::optional<at::Tensor>&,
                                         double, int64_t)>();
  return op.call(src, tgt, weight, bias, alpha, s_l, static_cast<int64_t>(variant));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> RelationWeightsBackward(
    const at::Tensor& grad_output, const at::Tensor& output, const at::Tensor& src,
    const at::Tensor& tgt, const at::Tensor& weight, const c10::optional<at::Tensor>& alpha,
    double s_l, RelationVariant variant) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("lpdetr::_relation_weights_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const c10::optional<at::Tensor>&, double, int64_t)>();
  return op.call(grad_output, output, src, tgt, weight, alpha, s_l,
                 static_cast<int64_t>(variant));
}

namespace detail {

const std::array<float, kRelationFreqs>& RelationDimT() {
  // Same float32 arithmetic as SineEmbed's dim_t (model/layers.cc):
  // 10000 ** (arange(8) * 2.0 / 16).
  static const std::array<float, kRelationFreqs> dim_t = [] {
    at::Tensor k = at::arange(kRelationFreqs, at::TensorOptions().dtype(at::kFloat));
    at::Tensor d = at::pow(10000.0, k * 2.0 / static_cast<double>(2 * kRelationFreqs))
                       .contiguous();
    std::array<float, kRelationFreqs> out{};
    for (int i = 0; i < kRelationFreqs; ++i) out[i] = d.data_ptr<float>()[i];
    return out;
  }();
  return dim_t;
}

namespace {

void CheckBoxes(const char* op, const char* name, const at::Tensor& boxes) {
  TORCH_CHECK(boxes.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(boxes.dim() == 3 && boxes.size(2) == 4, op, ": ", name,
              " must be [B, N, 4] cxcywh boxes, got shape ", boxes.sizes());
}

}  // namespace

RelationVariant CheckRelationInputs(const char* op, const at::Tensor& src, const at::Tensor& tgt,
                                    const at::Tensor& weight, const at::Tensor* bias,
                                    const c10::optional<at::Tensor>& alpha, double s_l,
                                    int64_t variant) {
  TORCH_CHECK(variant == static_cast<int64_t>(RelationVariant::kRelationDetr) ||
                  variant == static_cast<int64_t>(RelationVariant::kLpDetr),
              op, ": variant must be 0 (relation-detr) or 1 (lp-detr), got ", variant);
  const auto v = static_cast<RelationVariant>(variant);
  const bool lp = v == RelationVariant::kLpDetr;
  CheckBoxes(op, "src", src);
  CheckBoxes(op, "tgt", tgt);
  TORCH_CHECK(src.size(0) == tgt.size(0), op, ": src and tgt batch sizes differ: src ",
              src.sizes(), ", tgt ", tgt.sizes());
  const at::ScalarType dtype = src.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, op,
              ": boxes must be float32 or float64, got src dtype ", dtype);
  const int64_t features = lp ? 80 : 64;
  TORCH_CHECK(weight.defined() && weight.dim() == 2 && weight.size(1) == features, op,
              ": weight must be [K, ", features, "] for ", lp ? "lp-detr" : "relation-detr",
              ", got shape ", weight.defined() ? weight.sizes() : at::IntArrayRef{});
  const int64_t k = weight.size(0);
  std::vector<std::pair<const char*, const at::Tensor*>> tensors = {{"tgt", &tgt},
                                                                    {"weight", &weight}};
  if (bias != nullptr) {
    TORCH_CHECK(bias->defined() && bias->dim() == 1 && bias->size(0) == k, op,
                ": bias must be [K] = [", k, "], got shape ",
                bias->defined() ? bias->sizes() : at::IntArrayRef{});
    tensors.emplace_back("bias", bias);
  }
  const bool has_alpha = alpha.has_value() && alpha->defined();
  if (lp) {
    TORCH_CHECK(has_alpha, op, ": lp-detr needs alpha [3] (softmax of the layer's Lambda)");
    TORCH_CHECK(alpha->dim() == 1 && alpha->size(0) == 3, op,
                ": alpha must be [3], got shape ", alpha->sizes());
    tensors.emplace_back("alpha", &*alpha);
    TORCH_CHECK(s_l > 0, op, ": s_l must be positive, got ", s_l);
  } else {
    TORCH_CHECK(!has_alpha, op, ": relation-detr takes no alpha, got shape ", alpha->sizes());
  }
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK(t->scalar_type() == dtype, op, ": ", name, " dtype ", t->scalar_type(),
                " differs from src dtype ", dtype);
    TORCH_CHECK(t->device() == src.device(), op, ": ", name, " is on ", t->device(),
                " but src is on ", src.device());
  }
  return v;
}

void CheckRelationGrad(const at::Tensor& grad_output, const at::Tensor& output,
                       const at::Tensor& src, const at::Tensor& tgt, const at::Tensor& weight) {
  const std::vector<int64_t> shape = {src.size(0), weight.size(0), src.size(1), tgt.size(1)};
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(shape),
              "lpdetr::_relation_weights_backward: grad_output must be ", at::IntArrayRef(shape),
              ", got ", grad_output.sizes());
  TORCH_CHECK(output.sizes() == at::IntArrayRef(shape),
              "lpdetr::_relation_weights_backward: output must be ", at::IntArrayRef(shape),
              ", got ", output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == src.scalar_type() &&
                  output.scalar_type() == src.scalar_type(),
              "lpdetr::_relation_weights_backward: grad_output dtype ",
              grad_output.scalar_type(), " / output dtype ", output.scalar_type(),
              " differ from src dtype ", src.scalar_type());
}

}  // namespace detail
}  // namespace lpdetr::ops

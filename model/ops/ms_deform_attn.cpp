// Schema of lpdetr::ms_deform_attn and its backward, the C++ entry point and
// the input checks shared by the CPU and CUDA kernels.
#include "model/ops/ms_deform_attn.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace lpdetr::ops {

TORCH_LIBRARY_FRAGMENT(lpdetr, m) {
  m.def(
      "ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "_ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, "
      "Tensor level_start_index, Tensor sampling_locations, Tensor attention_weights, "
      "Tensor grad_output) -> (Tensor, Tensor, Tensor)");
}

at::Tensor MsDeformAttn(const at::Tensor& value, const at::Tensor& spatial_shapes,
                        const at::Tensor& level_start_index,
                        const at::Tensor& sampling_locations,
                        const at::Tensor& attention_weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("lpdetr::ms_deform_attn", "")
                       .typed<decltype(MsDeformAttn)>();
  return op.call(value, spatial_shapes, level_start_index, sampling_locations,
                 attention_weights);
}

namespace detail {

void MsDeformAttnCheckInputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                             const at::Tensor& level_start_index,
                             const at::Tensor& sampling_locations,
                             const at::Tensor& attention_weights,
                             const at::Tensor& grad_output) {
  TORCH_CHECK(value.defined() && value.dim() == 4,
              "ms_deform_attn: value must be [B, Nv, H, D], got shape ",
              value.defined() ? value.sizes() : at::IntArrayRef{});
  TORCH_CHECK(sampling_locations.defined() && sampling_locations.dim() == 6 &&
                  sampling_locations.size(5) == 2,
              "ms_deform_attn: sampling_locations must be [B, Nq, H, L, P, 2], got shape ",
              sampling_locations.defined() ? sampling_locations.sizes() : at::IntArrayRef{});
  TORCH_CHECK(attention_weights.defined() && attention_weights.dim() == 5,
              "ms_deform_attn: attention_weights must be [B, Nq, H, L, P], got shape ",
              attention_weights.defined() ? attention_weights.sizes() : at::IntArrayRef{});
  TORCH_CHECK(spatial_shapes.defined() && spatial_shapes.dim() == 2 &&
                  spatial_shapes.size(1) == 2,
              "ms_deform_attn: spatial_shapes must be [L, 2], got shape ",
              spatial_shapes.defined() ? spatial_shapes.sizes() : at::IntArrayRef{});
  TORCH_CHECK(spatial_shapes.scalar_type() == at::kLong,
              "ms_deform_attn: spatial_shapes must be int64, got ", spatial_shapes.scalar_type());
  TORCH_CHECK(level_start_index.defined() && level_start_index.dim() == 1,
              "ms_deform_attn: level_start_index must be [L], got shape ",
              level_start_index.defined() ? level_start_index.sizes() : at::IntArrayRef{});
  TORCH_CHECK(level_start_index.scalar_type() == at::kLong,
              "ms_deform_attn: level_start_index must be int64, got ",
              level_start_index.scalar_type());

  const int64_t batch = value.size(0), num_value = value.size(1), heads = value.size(2);
  const int64_t levels = spatial_shapes.size(0);
  const auto& loc = sampling_locations;
  TORCH_CHECK(loc.size(0) == batch, "ms_deform_attn: sampling_locations has batch ",
              loc.size(0), " but value has batch ", batch);
  TORCH_CHECK(loc.size(2) == heads, "ms_deform_attn: sampling_locations has ", loc.size(2),
              " heads but value has ", heads);
  TORCH_CHECK(loc.size(3) == levels, "ms_deform_attn: sampling_locations has ", loc.size(3),
              " levels but spatial_shapes has ", levels);
  TORCH_CHECK(level_start_index.size(0) == levels, "ms_deform_attn: level_start_index has ",
              level_start_index.size(0), " entries but spatial_shapes has ", levels, " levels");
  const at::IntArrayRef expected_weights = loc.sizes().slice(0, 5);
  TORCH_CHECK(attention_weights.sizes() == expected_weights,
              "ms_deform_attn: attention_weights has shape ", attention_weights.sizes(),
              ", expected ", expected_weights, " from sampling_locations");

  const at::ScalarType value_type = value.scalar_type();
  TORCH_CHECK(at::isFloatingType(value_type),
              "ms_deform_attn: value must be a floating tensor, got ", value_type);
  // sampling_locations and attention_weights share one dtype: the value's, or
  // float32 with a bfloat16 / half value (the mixed case: the kernels read the
  // value in its own dtype and compute in float).
  const bool low_precision_value = value_type == at::kBFloat16 || value_type == at::kHalf;
  auto check_param_type = [&](const char* name, at::ScalarType type) {
    TORCH_CHECK(type == value_type || (low_precision_value && type == at::kFloat),
                "ms_deform_attn: ", name, " is ", type, " but value is ", value_type,
                " (sampling_locations and attention_weights must have the value's dtype, or "
                "Float with a BFloat16 or Half value)");
  };
  check_param_type("sampling_locations", loc.scalar_type());
  check_param_type("attention_weights", attention_weights.scalar_type());
  TORCH_CHECK(attention_weights.scalar_type() == loc.scalar_type(),
              "ms_deform_attn: attention_weights is ", attention_weights.scalar_type(),
              " but sampling_locations is ", loc.scalar_type(), "; they must share one dtype");
  TORCH_CHECK(loc.device() == value.device(), "ms_deform_attn: sampling_locations is on ",
              loc.device(), " but value is on ", value.device());
  TORCH_CHECK(attention_weights.device() == value.device(),
              "ms_deform_attn: attention_weights is on ", attention_weights.device(),
              " but value is on ", value.device());
  for (const at::Tensor* t : {&spatial_shapes, &level_start_index}) {
    TORCH_CHECK(t->device().is_cpu() || t->device() == value.device(),
                "ms_deform_attn: spatial_shapes and level_start_index must be on the CPU or on ",
                value.device(), ", got ", t->device());
  }

  if (spatial_shapes.device().is_cpu()) {
    const at::Tensor shapes = spatial_shapes.contiguous();
    const int64_t* s = shapes.data_ptr<int64_t>();
    const at::Tensor starts =
        level_start_index.device().is_cpu() ? level_start_index.contiguous() : at::Tensor();
    int64_t total = 0;
    for (int64_t l = 0; l < levels; ++l) {
      TORCH_CHECK(s[2 * l] > 0 && s[2 * l + 1] > 0, "ms_deform_attn: level ", l, " has shape (",
                  s[2 * l], ", ", s[2 * l + 1], "); sizes must be positive");
      if (starts.defined()) {
        TORCH_CHECK(starts.data_ptr<int64_t>()[l] == total, "ms_deform_attn: level_start_index[",
                    l, "] is ", starts.data_ptr<int64_t>()[l], ", expected ", total);
      }
      total += s[2 * l] * s[2 * l + 1];
    }
    TORCH_CHECK(total == num_value, "ms_deform_attn: spatial_shapes cover ", total,
                " positions but value has Nv = ", num_value);
  }

  if (grad_output.defined()) {
    const int64_t expected[] = {batch, loc.size(1), heads * value.size(3)};
    TORCH_CHECK(grad_output.sizes() == at::IntArrayRef(expected),
                "ms_deform_attn backward: grad_output has shape ", grad_output.sizes(),
                ", expected ", at::IntArrayRef(expected));
    TORCH_CHECK(grad_output.scalar_type() == attention_weights.scalar_type(),
                "ms_deform_attn backward: grad_output is ", grad_output.scalar_type(),
                " but the output is ", attention_weights.scalar_type(),
                " (the dtype of attention_weights)");
    TORCH_CHECK(grad_output.device() == value.device(), "ms_deform_attn backward: grad_output is on ",
                grad_output.device(), " but value is on ", value.device());
  }
}

}  // namespace detail
}  // namespace lpdetr::ops

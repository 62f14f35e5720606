#include "model/deform_attn.h"

#include <cmath>

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <torch/nn/init.h>
#include <ATen/Parallel.h>

#include "model/layers.h"
#include "model/ops/ms_deform_attn.h"
#include "model/precision.h"
#include "model/runtime.h"

namespace lpdetr {

at::Tensor MsDeformAttnComposed(const at::Tensor& value, const SpatialShapes& shapes,
                                const at::Tensor& sampling_locations,
                                const at::Tensor& attention_weights) {
  const int64_t batch = value.size(0), heads = value.size(2), dim = value.size(3);
  const int64_t num_query = sampling_locations.size(1);
  const int64_t levels = sampling_locations.size(3), points = sampling_locations.size(4);
  TORCH_CHECK(static_cast<int64_t>(shapes.size()) == levels, "expected ", levels,
              " spatial shapes, got ", shapes.size());
  at::Tensor grids = sampling_locations * 2 - 1;
  std::vector<at::Tensor> sampled;
  sampled.reserve(levels);
  int64_t start = 0;
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t h = shapes[l][0], w = shapes[l][1];
    // [B, hw, H, D] -> [B*H, D, h, w]
    at::Tensor value_l = value.narrow(1, start, h * w)
                             .flatten(2)
                             .transpose(1, 2)
                             .reshape({batch * heads, dim, h, w});
    // [B, Nq, H, P, 2] -> [B*H, Nq, P, 2]
    at::Tensor grid_l = grids.select(3, l).transpose(1, 2).flatten(0, 1);
    sampled.push_back(at::grid_sampler(value_l, grid_l, /*bilinear*/ 0, /*zeros*/ 0,
                                       /*align_corners=*/false));
    start += h * w;
  }
  at::Tensor weights = attention_weights.transpose(1, 2).reshape(
      {batch * heads, 1, num_query, levels * points});
  at::Tensor out = (at::stack(sampled, -2).flatten(-2) * weights).sum(-1);
  return out.view({batch, heads * dim, num_query}).transpose(1, 2).contiguous();
}

at::Tensor MsDeformAttnFused(const at::Tensor& value, const SpatialShapes& shapes,
                             const at::Tensor& sampling_locations,
                             const at::Tensor& attention_weights) {
  const int64_t levels = static_cast<int64_t>(shapes.size());
  at::Tensor spatial_shapes = at::empty({levels, 2}, at::kLong);
  at::Tensor level_start_index = at::empty({levels}, at::kLong);
  int64_t* s = spatial_shapes.data_ptr<int64_t>();
  int64_t* start = level_start_index.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t l = 0; l < levels; ++l) {
    s[2 * l] = shapes[l][0];
    s[2 * l + 1] = shapes[l][1];
    start[l] = total;
    total += shapes[l][0] * shapes[l][1];
  }
  return ops::MsDeformAttn(value, spatial_shapes, level_start_index, sampling_locations,
                           attention_weights);
}

namespace {

// Inference fast path of the sampling locations (float CPU tensors): one
// pass over the offsets, parallel over queries, instead of ATen's broadcasting
// addcmul over [B, Nq, H, L, P, 2] (~14 ms -> ~2 ms per R50 encoder layer).
// Same arithmetic as the fused-backend ATen expressions below:
//   points [.., L, 2]: ref + offset * (1 / (w, h) of the level)
//   boxes  [.., L, 4]: ref_xy + offset * (ref_wh * (0.5 / P))
at::Tensor SamplingLocationsCpu(const at::Tensor& reference_points, const at::Tensor& offsets,
                                const SpatialShapes& shapes) {
  const at::Tensor ref = reference_points.contiguous(), off = offsets.contiguous();
  const int64_t rows = off.size(0) * off.size(1), heads = off.size(2), levels = off.size(3),
                points = off.size(4), ref_dim = ref.size(-1);
  std::vector<float> inv(2 * levels);
  for (int64_t l = 0; l < levels; ++l) {
    inv[2 * l] = 1.0f / static_cast<float>(shapes[l][1]);
    inv[2 * l + 1] = 1.0f / static_cast<float>(shapes[l][0]);
  }
  const float box_scale = static_cast<float>(0.5 / static_cast<double>(points));
  at::Tensor out = at::empty_like(off);
  const float* r = ref.data_ptr<float>();
  const float* o = off.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const int64_t row_size = heads * levels * points * 2;
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const float* rr = r + row * levels * ref_dim;
      for (int64_t h = 0; h < heads; ++h) {
        for (int64_t l = 0; l < levels; ++l) {
          const float* rl = rr + l * ref_dim;
          float sx, sy;
          if (ref_dim == 2) {
            sx = inv[2 * l];
            sy = inv[2 * l + 1];
          } else {
            sx = rl[2] * box_scale;
            sy = rl[3] * box_scale;
          }
          const int64_t base = row * row_size + ((h * levels + l) * points) * 2;
          for (int64_t p = 0; p < points; ++p) {
            y[base + 2 * p] = rl[0] + o[base + 2 * p] * sx;
            y[base + 2 * p + 1] = rl[1] + o[base + 2 * p + 1] * sy;
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

MultiScaleDeformableAttentionImpl::MultiScaleDeformableAttentionImpl(int64_t embed_dim,
                                                                     int64_t num_levels,
                                                                     int64_t num_heads,
                                                                     int64_t num_points)
    : embed_dim_(embed_dim),
      num_levels_(num_levels),
      num_heads_(num_heads),
      num_points_(num_points) {
  TORCH_CHECK(embed_dim % num_heads == 0, "embed_dim ", embed_dim,
              " is not divisible by num_heads ", num_heads);
  sampling_offsets = register_module(
      "sampling_offsets", torch::nn::Linear(embed_dim, num_heads * num_levels * num_points * 2));
  attention_weights = register_module(
      "attention_weights", torch::nn::Linear(embed_dim, num_heads * num_levels * num_points));
  value_proj = register_module("value_proj", torch::nn::Linear(embed_dim, embed_dim));
  output_proj = register_module("output_proj", torch::nn::Linear(embed_dim, embed_dim));
}

void MultiScaleDeformableAttentionImpl::ResetParameters() {
  at::NoGradGuard no_grad;
  sampling_offsets->weight.zero_();
  const at::Tensor angles =
      at::arange(num_heads_, at::kFloat) * static_cast<float>(2.0 * M_PI / num_heads_);
  at::Tensor directions = at::stack({angles.cos(), angles.sin()}, -1);  // [H, 2]
  directions = directions / std::get<0>(directions.abs().max(-1, /*keepdim=*/true));
  const at::Tensor steps = at::arange(1, num_points_ + 1, at::kFloat).view({1, 1, -1, 1});
  const at::Tensor pattern =
      directions.view({num_heads_, 1, 1, 2}).expand({-1, num_levels_, num_points_, -1}) * steps;
  sampling_offsets->bias.copy_(pattern.reshape({-1}));
  attention_weights->weight.zero_();
  attention_weights->bias.zero_();
  for (torch::nn::Linear* proj : {&value_proj, &output_proj}) {
    torch::nn::init::xavier_uniform_((*proj)->weight);
    (*proj)->bias.zero_();
  }
}

at::Tensor MultiScaleDeformableAttentionImpl::forward(const at::Tensor& query,
                                                      const at::Tensor& reference_points,
                                                      const at::Tensor& value,
                                                      const SpatialShapes& shapes,
                                                      const at::Tensor& key_padding_mask) {
  const int64_t batch = query.size(0), num_query = query.size(1), num_value = value.size(1);
  int64_t total = 0;
  for (const auto& s : shapes) total += s[0] * s[1];
  TORCH_CHECK(total == num_value, "spatial shapes cover ", total, " positions but value has ",
              num_value);
  // bf16 path: the projections run in bf16; the value stays bf16 (the fused
  // op reads it and accumulates in fp32), everything else is fp32.
  Bf16Weights* bf16 = UseBf16(*this) ? &bf16_ : nullptr;
  at::Tensor v = LinearIn(value_proj, value, bf16, at::kBFloat16);
  if (key_padding_mask.defined()) v = v.masked_fill(key_padding_mask.unsqueeze(-1), 0.0);
  v = v.view({batch, num_value, num_heads_, embed_dim_ / num_heads_});

  // Fp32: the offsets and the attention-weight logits come out of bf16
  // products under training autocast; locations and the softmax are fp32.
  at::Tensor offsets = Fp32(LinearIn(sampling_offsets, query, bf16))
                           .view({batch, num_query, num_heads_, num_levels_, num_points_, 2});
  at::Tensor weights = Fp32(LinearIn(attention_weights, query, bf16))
                           .view({batch, num_query, num_heads_, num_levels_ * num_points_})
                           .softmax(-1)
                           .view({batch, num_query, num_heads_, num_levels_, num_points_});
  const bool fused = GetOpBackend() == OpBackend::kKernels;
  at::Tensor locations;
  using at::indexing::None;
  using at::indexing::Slice;
  TORCH_CHECK(reference_points.size(-1) == 2 || reference_points.size(-1) == 4,
              "last dim of reference_points must be 2 or 4, got ", reference_points.size(-1));
  const bool fast_locations =
      UseInferenceFastPath(*this) && query.is_cpu() && offsets.scalar_type() == at::kFloat &&
      reference_points.scalar_type() == at::kFloat && reference_points.dim() == 4 &&
      reference_points.size(0) == batch && reference_points.size(1) == num_query &&
      reference_points.size(2) == num_levels_;
  if (fast_locations) {
    locations = SamplingLocationsCpu(reference_points, offsets, shapes);
  } else if (reference_points.size(-1) == 2) {
    std::vector<float> norm;
    for (const auto& s : shapes) {
      norm.insert(norm.end(), {static_cast<float>(s[1]), static_cast<float>(s[0])});
    }
    at::Tensor normalizer =
        at::tensor(norm, query.options()).view({1, 1, 1, num_levels_, 1, 2});
    at::Tensor ref = reference_points.index({Slice(), Slice(), None, Slice(), None, Slice()});
    // Fused path: one broadcast pass (ref + offsets * 1/size) instead of two
    // [B, Nq, H, L, P, 2] temporaries.
    locations = fused ? at::addcmul(ref, offsets, normalizer.reciprocal())
                      : ref + offsets / normalizer;
  } else {
    at::Tensor ref = reference_points.index({Slice(), Slice(), None, Slice(), None});
    if (fused) {
      at::Tensor scale = ref.narrow(-1, 2, 2) * (0.5 / static_cast<double>(num_points_));
      locations = at::addcmul(ref.narrow(-1, 0, 2), offsets, scale);
    } else {
      locations = ref.narrow(-1, 0, 2) + offsets / static_cast<double>(num_points_) *
                                             ref.narrow(-1, 2, 2) * 0.5;
    }
  }
  at::Tensor sampled = fused ? MsDeformAttnFused(v, shapes, locations, weights)
                             : MsDeformAttnComposed(v, shapes, locations, weights);
  return LinearIn(output_proj, sampled, bf16);
}

}  // namespace lpdetr

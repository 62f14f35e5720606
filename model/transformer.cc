#include "model/transformer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>

#include "model/precision.h"
#include "model/runtime.h"

namespace lpdetr {

using at::indexing::None;
using at::indexing::Slice;

// ---------------------------------------------------------------------------
SelfAttentionImpl::SelfAttentionImpl(int64_t embed_dim, int64_t num_heads)
    : embed_dim_(embed_dim), num_heads_(num_heads) {
  in_proj_weight = register_parameter("in_proj_weight", at::empty({3 * embed_dim, embed_dim}));
  in_proj_bias = register_parameter("in_proj_bias", at::zeros({3 * embed_dim}));
  out_proj = register_module("out_proj", torch::nn::Linear(embed_dim, embed_dim));
  torch::nn::init::xavier_uniform_(in_proj_weight);
}

at::Tensor SelfAttentionImpl::forward(const at::Tensor& qk, const at::Tensor& v_in,
                                      const at::Tensor& logit_bias, const at::Tensor& mask) {
  // Same layout and op order as nn.MultiheadAttention(batch_first=True):
  // sequence-first projections, [B*H, N, d] heads, q / sqrt(d), baddbmm with
  // the additive mask, softmax, bmm, out_proj on [N*B, E].
  const int64_t batch = qk.size(0), n = qk.size(1), head_dim = embed_dim_ / num_heads_;
  auto w = in_proj_weight.chunk(3, 0);
  auto b = in_proj_bias.chunk(3, 0);
  const at::Tensor x = qk.transpose(0, 1), xv = v_in.transpose(0, 1);  // [N,B,E]
  auto heads = [&](const at::Tensor& t) {
    return t.contiguous().view({n, batch * num_heads_, head_dim}).transpose(0, 1);
  };
  // bf16 path: the projections in bf16 (results in fp32); the attention
  // logits, the relation bias and the softmax stay fp32.
  const bool bf16 = UseBf16(*this);
  const at::Tensor wb = bf16 ? bf16_.Get(in_proj_weight) : at::Tensor();
  const at::Tensor bb = bf16 ? bf16_.Get(in_proj_bias) : at::Tensor();
  auto project = [&](const at::Tensor& t, int i) {
    if (!bf16) return at::linear(t, w[i], b[i]);
    const int64_t e = embed_dim_;
    return at::linear(t.to(at::kBFloat16), wb.narrow(0, i * e, e), bb.narrow(0, i * e, e))
        .to(at::kFloat);
  };
  at::Tensor q = heads(project(x, 0));
  at::Tensor k = heads(project(x, 1));
  at::Tensor v = heads(project(xv, 2));

  at::Tensor attn;
  {
    // Under training autocast the projections come out in bf16; the logits,
    // the relation bias and the softmax are computed in fp32 all the same.
    ScopedFp32 fp32;
    q = Fp32(q);
    k = Fp32(k);
    at::Tensor additive;  // [B*H, N, N] or [1, N, N]
    if (logit_bias.defined()) {
      additive = logit_bias.reshape({batch * num_heads_, n, n});
      if (mask.defined()) {
        additive = additive.masked_fill(mask, -std::numeric_limits<float>::infinity());
      }
    } else if (mask.defined()) {
      additive = at::zeros({1, n, n}, q.options())
                     .masked_fill_(mask, -std::numeric_limits<float>::infinity());
    }
    q = q / std::sqrt(static_cast<double>(head_dim));
    attn = additive.defined() ? at::baddbmm(additive, q, k.transpose(-2, -1))
                              : at::bmm(q, k.transpose(-2, -1));
    attn = attn.softmax(-1);
  }
  if (record_weights) last_weights = attn.detach().view({batch, num_heads_, n, n});
  at::Tensor out = at::bmm(attn, v).transpose(0, 1).contiguous().view({n * batch, embed_dim_});
  out = LinearIn(out_proj, out, bf16 ? &bf16_ : nullptr);
  return out.view({n, batch, embed_dim_}).transpose(0, 1);
}

// ---------------------------------------------------------------------------
EncoderLayerImpl::EncoderLayerImpl(const ModelConfig& c) {
  self_attn = register_module("self_attn", MultiScaleDeformableAttention(
                                               c.embed_dim, c.num_feature_levels, c.num_heads,
                                               c.num_points));
  norm1 = register_module("norm1", torch::nn::LayerNorm(
                                       torch::nn::LayerNormOptions({c.embed_dim})));
  linear1 = register_module("linear1", torch::nn::Linear(c.embed_dim, c.dim_feedforward));
  linear2 = register_module("linear2", torch::nn::Linear(c.dim_feedforward, c.embed_dim));
  norm2 = register_module("norm2", torch::nn::LayerNorm(
                                       torch::nn::LayerNormOptions({c.embed_dim})));
}

at::Tensor EncoderLayerImpl::forward(const at::Tensor& query, const at::Tensor& query_pos,
                                     const at::Tensor& reference_points,
                                     const SpatialShapes& shapes, const at::Tensor& padding_mask) {
  at::Tensor attn;
  {
    ScopedStage stage("deformable attention");
    attn = self_attn(query + query_pos, reference_points, query, shapes, padding_mask);
  }
  ScopedStage stage("norm + ffn");
  if (UseInferenceFastPath(*this)) return BlockedNormFfn(query, attn);
  at::Tensor x = norm1(query + attn);
  return norm2(x + Linear(linear2, at::relu(Linear(linear1, x))));
}

namespace {

// Rows per block of the blocked feed-forward and memory fusion. OpenBLAS's
// sgemm (2 threads, K or N = 256) runs at ~250 GFLOP/s with 512 rows and
// ~270 with 1024-2048; 2048 rows (a 16 MiB hidden block) measured best for
// the R50 encoder (norm + FFN 1.16 s with 512 rows, 0.97 s with 2048, 0.98 s
// with 4096).
constexpr int64_t kRowBlock = 2048;

at::Tensor LayerNormOf(const torch::nn::LayerNorm& norm, const at::Tensor& x) {
  return at::layer_norm(x, norm->options.normalized_shape(), norm->weight, norm->bias,
                        norm->options.eps());
}

}  // namespace

at::Tensor EncoderLayerImpl::BlockedNormFfn(const at::Tensor& query, const at::Tensor& attn) {
  const int64_t e = query.size(-1);
  const at::Tensor q = query.reshape({-1, e}), a = attn.reshape({-1, e});
  const int64_t rows = q.size(0);
  at::Tensor out = at::empty({rows, e}, query.options());
  if (UseBf16(*this)) {
    // bf16 products, fp32 residual sums and layer norms.
    const at::Tensor w1 = bf16_.Get(linear1->weight).t(), w2 = bf16_.Get(linear2->weight).t();
    const at::Tensor b1 = bf16_.Get(linear1->bias), b2 = bf16_.Get(linear2->bias);
    for (int64_t start = 0; start < rows; start += kRowBlock) {
      const int64_t n = std::min(kRowBlock, rows - start);
      at::Tensor x = LayerNormOf(norm1, q.narrow(0, start, n) + a.narrow(0, start, n));
      at::Tensor h = at::addmm(b1, x.to(at::kBFloat16), w1).relu_();
      at::Tensor y = at::addmm(b2, h, w2).to(at::kFloat).add_(x);
      out.narrow(0, start, n).copy_(LayerNormOf(norm2, y));
    }
    return out.view(query.sizes());
  }
  const at::Tensor w1 = linear1->weight.t(), w2 = linear2->weight.t();
  for (int64_t start = 0; start < rows; start += kRowBlock) {
    const int64_t n = std::min(kRowBlock, rows - start);
    at::Tensor x = LayerNormOf(norm1, q.narrow(0, start, n) + a.narrow(0, start, n));
    at::Tensor h = at::addmm(linear1->bias, x, w1).relu_();
    at::Tensor y = at::addmm(x, h, w2).add_(linear2->bias);
    out.narrow(0, start, n).copy_(LayerNormOf(norm2, y));
  }
  return out.view(query.sizes());
}

EncoderImpl::EncoderImpl(const ModelConfig& c) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < c.enc_layers; ++i) {
    layers_.emplace_back(c);
    layers->push_back(layers_.back());
  }
  fusion_in_ = torch::nn::Linear((c.enc_layers + 1) * c.embed_dim, c.embed_dim);
  fusion_out_ = torch::nn::Linear(c.embed_dim, c.embed_dim);
  fusion_norm_ = torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.embed_dim}));
  // Official layout: Sequential(Linear, ReLU, Linear, LayerNorm) -> .0, .2, .3
  memory_fusion = register_module(
      "memory_fusion",
      torch::nn::Sequential(fusion_in_, torch::nn::ReLU(), fusion_out_, fusion_norm_));
}

at::Tensor EncoderImpl::forward(at::Tensor query, const at::Tensor& query_pos,
                                const at::Tensor& reference_points, const SpatialShapes& shapes,
                                const at::Tensor& padding_mask) {
  std::vector<at::Tensor> outputs = {query};
  for (auto& layer : layers_) {
    query = layer(query, query_pos, reference_points, shapes, padding_mask);
    outputs.push_back(query);
  }
  ScopedStage stage("memory fusion");
  if (UseInferenceFastPath(*this)) return BlockedMemoryFusion(outputs);
  at::Tensor x = at::cat(outputs, -1);
  x = at::relu(Linear(fusion_in_, x));
  return fusion_norm_(Fp32(Linear(fusion_out_, x)));
}

at::Tensor EncoderImpl::BlockedMemoryFusion(const std::vector<at::Tensor>& outputs) {
  const at::Tensor& first = outputs.front();
  const int64_t e = first.size(-1);
  std::vector<at::Tensor> flat;
  for (const auto& o : outputs) flat.push_back(o.reshape({-1, e}));
  const int64_t rows = flat.front().size(0);
  at::Tensor out = at::empty({rows, fusion_out_->weight.size(0)}, first.options());
  const bool bf16 = UseBf16(*this);
  Bf16Weights& c = bf16_;
  const at::Tensor w_in = (bf16 ? c.Get(fusion_in_->weight) : fusion_in_->weight).t();
  const at::Tensor w_out = (bf16 ? c.Get(fusion_out_->weight) : fusion_out_->weight).t();
  const at::Tensor b_in = bf16 ? c.Get(fusion_in_->bias) : fusion_in_->bias;
  const at::Tensor b_out = bf16 ? c.Get(fusion_out_->bias) : fusion_out_->bias;
  std::vector<at::Tensor> parts(flat.size());
  for (int64_t start = 0; start < rows; start += kRowBlock) {
    const int64_t n = std::min(kRowBlock, rows - start);
    for (size_t i = 0; i < flat.size(); ++i) {
      parts[i] = flat[i].narrow(0, start, n);
      if (bf16) parts[i] = parts[i].to(at::kBFloat16);
    }
    at::Tensor h = at::addmm(b_in, at::cat(parts, 1), w_in).relu_();
    at::Tensor y = at::addmm(b_out, h, w_out);
    if (bf16) y = y.to(at::kFloat);
    out.narrow(0, start, n).copy_(LayerNormOf(fusion_norm_, y));
  }
  auto shape = first.sizes().vec();
  shape.back() = out.size(1);
  return out.view(shape);
}

// ---------------------------------------------------------------------------
DecoderLayerImpl::DecoderLayerImpl(const ModelConfig& c) {
  auto ln = [&] { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.embed_dim})); };
  cross_attn = register_module("cross_attn", MultiScaleDeformableAttention(
                                                 c.embed_dim, c.num_feature_levels,
                                                 c.num_heads, c.num_points));
  norm1 = register_module("norm1", ln());
  self_attn = register_module("self_attn", SelfAttention(c.embed_dim, c.num_heads));
  norm2 = register_module("norm2", ln());
  linear1 = register_module("linear1", torch::nn::Linear(c.embed_dim, c.dim_feedforward));
  linear2 = register_module("linear2", torch::nn::Linear(c.dim_feedforward, c.embed_dim));
  norm3 = register_module("norm3", ln());
}

at::Tensor DecoderLayerImpl::forward(const at::Tensor& query, const at::Tensor& query_pos,
                                     const at::Tensor& reference_points, const at::Tensor& value,
                                     const SpatialShapes& shapes, const at::Tensor& padding_mask,
                                     const at::Tensor& logit_bias, const at::Tensor& attn_mask) {
  at::Tensor x;
  {
    ScopedStage stage("self-attention");
    x = norm2(query + self_attn(query + query_pos, query, logit_bias, attn_mask));
  }
  {
    ScopedStage stage("deformable attention");
    x = norm1(x + cross_attn(x + query_pos, reference_points, value, shapes, padding_mask));
  }
  ScopedStage stage("norm + ffn");
  Bf16Weights* bf16 = UseBf16(*this) ? &bf16_ : nullptr;
  return norm3(x + LinearIn(linear2,
                            at::relu(LinearIn(linear1, x, bf16, at::kBFloat16)), bf16));
}

// ---------------------------------------------------------------------------
DecoderImpl::DecoderImpl(const ModelConfig& c) : config_(c) {
  const int64_t e = c.embed_dim;
  layers = register_module("layers", torch::nn::ModuleList());
  for (int i = 0; i < c.dec_layers; ++i) {
    layers_.emplace_back(c);
    layers->push_back(layers_.back());
  }
  ref_point_head = register_module("ref_point_head", MLP(2 * e, e, e, 2));
  query_scale = register_module("query_scale", MLP(e, e, e, 2));
  class_head = register_module("class_head", torch::nn::ModuleList());
  bbox_head = register_module("bbox_head", torch::nn::ModuleList());
  for (int i = 0; i < c.dec_layers; ++i) {
    class_heads_.emplace_back(e, c.num_classes);
    class_head->push_back(class_heads_.back());
    bbox_heads_.emplace_back(e, e, 4, 3);
    bbox_head->push_back(bbox_heads_.back());
  }
  norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({e})));
  if (c.relation_heads > 0) {
    if (c.relation_variant == RelationVariant::kLpDetr) {
      multi_scale_relation = register_module(
          "multi_scale_relation", MultiScaleRelation(c.relation_heads, c.dec_layers));
    } else {
      position_relation_embedding = register_module(
          "position_relation_embedding", PositionRelationEmbedding(c.relation_heads));
    }
  }
}

at::Tensor DecoderImpl::PadHeads(const at::Tensor& relation) const {
  const int64_t k = relation.size(1);
  if (k == config_.num_heads) return relation;
  auto shape = relation.sizes().vec();
  shape[1] = config_.num_heads - k;
  return at::cat({at::zeros(shape, relation.options()), relation}, 1);
}

at::Tensor DecoderImpl::LpRelationBias(const at::Tensor& boxes, int64_t layer) {
  TORCH_CHECK(multi_scale_relation, "LpRelationBias needs an lp-detr model with relation heads");
  return PadHeads(at::log(multi_scale_relation(boxes, layer) + kRelationLogEps));
}

at::Tensor DecoderImpl::ScaleAlpha() const {
  if (!multi_scale_relation) return at::Tensor();
  return multi_scale_relation->Alpha();
}

DecoderOutput DecoderImpl::forward(at::Tensor query, at::Tensor reference_points,
                                   const at::Tensor& value, const SpatialShapes& shapes,
                                   const at::Tensor& valid_ratios,
                                   const at::Tensor& sine_valid_ratio,
                                   const at::Tensor& padding_mask, const at::Tensor& attn_mask,
                                   bool skip_relation) {
  const bool lp = config_.relation_variant == RelationVariant::kLpDetr;
  const int64_t num_layers = static_cast<int64_t>(layers_.size());
  at::Tensor ratio_scale = at::cat({valid_ratios, valid_ratios}, -1).unsqueeze(1);  // [B,1,Lv,4]
  at::Tensor sine_scale = at::cat({sine_valid_ratio, sine_valid_ratio}, -1).unsqueeze(1);
  std::vector<at::Tensor> classes, coords;
  at::Tensor relation_bias;  // relation-detr: bias for the next layer
  at::Tensor prev_boxes;     // relation-detr: boxes of layer l-2 / lp-detr: of layer l-1
  for (int64_t l = 0; l < num_layers; ++l) {
    at::Tensor ref = reference_points.detach();
    at::Tensor ref_input = ref.unsqueeze(2) * ratio_scale;
    at::Tensor sine = SineEmbed(ref * sine_scale, config_.embed_dim / 2, 10000.0,
                                2.0 * M_PI, /*exchange_xy=*/true);
    at::Tensor query_pos = ref_point_head(sine);
    if (l != 0) query_pos = query_pos * query_scale(query);

    at::Tensor bias;
    if (!skip_relation) {
      if (lp && multi_scale_relation) {
        ScopedStage stage("relation");
        ScopedFp32 fp32;
        bias = LpRelationBias(l == 0 ? ref : prev_boxes, l);
      } else if (!lp) {
        bias = relation_bias;
      }
    }
    query = layers_[l](query, query_pos, ref_input, value, shapes, padding_mask, bias, attn_mask);

    at::Tensor output_coord;
    {
      ScopedStage stage("heads");
      ScopedFp32 fp32;  // heads and box refinement in fp32 under training autocast
      at::Tensor normed = norm(Fp32(query));
      classes.push_back(Linear(class_heads_[l], normed));
      output_coord = (bbox_heads_[l](normed) + InverseSigmoid(reference_points)).sigmoid();
      coords.push_back(output_coord);
    }
    if (l == num_layers - 1) break;

    if (!skip_relation && position_relation_embedding) {
      ScopedStage stage("relation");
      ScopedFp32 fp32;
      at::Tensor src = l >= 1 ? prev_boxes : reference_points;
      relation_bias = PadHeads(position_relation_embedding(src.detach(), output_coord.detach()));
    }
    prev_boxes = output_coord.detach();
    ScopedFp32 fp32;
    reference_points = (bbox_heads_[l](Fp32(query)) + InverseSigmoid(ref)).sigmoid();
  }
  return {at::stack(classes), at::stack(coords)};
}

// ---------------------------------------------------------------------------
RelationTransformerImpl::RelationTransformerImpl(const ModelConfig& c) : config_(c) {
  const int64_t e = c.embed_dim;
  level_embeds = register_parameter("level_embeds", at::randn({c.num_feature_levels, e}));
  enc_output = register_module("enc_output", torch::nn::Linear(e, e));
  enc_output_norm = register_module("enc_output_norm",
                                    torch::nn::LayerNorm(torch::nn::LayerNormOptions({e})));
  encoder = register_module("encoder", Encoder(c));
  decoder = register_module("decoder", Decoder(c));
  tgt_embed = register_module("tgt_embed", torch::nn::Embedding(c.num_queries, e));
  encoder_class_head = register_module("encoder_class_head", torch::nn::Linear(e, c.num_classes));
  encoder_bbox_head = register_module("encoder_bbox_head", MLP(e, e, 4, 3));
  hybrid_tgt_embed =
      register_module("hybrid_tgt_embed", torch::nn::Embedding(c.hybrid_num_proposals, e));
  hybrid_class_head = register_module("hybrid_class_head", torch::nn::Linear(e, c.num_classes));
  hybrid_bbox_head = register_module("hybrid_bbox_head", MLP(e, e, 4, 3));
}

namespace {

// Valid fraction (x, y) of each map: [B, 2] from a padding mask [B, h, w].
at::Tensor ValidRatio(const at::Tensor& mask) {
  const int64_t h = mask.size(1), w = mask.size(2);
  at::Tensor valid_h = mask.select(2, 0).logical_not().sum(1).to(at::kFloat);
  at::Tensor valid_w = mask.select(1, 0).logical_not().sum(1).to(at::kFloat);
  return at::stack({valid_w / static_cast<double>(w), valid_h / static_cast<double>(h)}, -1);
}

}  // namespace

TransformerOutput RelationTransformerImpl::forward(const MultiLevelInput& in,
                                                   const at::Tensor& noised_label_query,
                                                   const at::Tensor& noised_box_query,
                                                   const at::Tensor& attn_mask) {
  const int64_t levels = static_cast<int64_t>(in.feats.size());
  TORCH_CHECK(levels == config_.num_feature_levels, "expected ", config_.num_feature_levels,
              " feature levels, got ", levels);
  const int64_t batch = in.feats[0].size(0);
  auto input_stage = std::make_unique<ScopedStage>("encoder input");
  SpatialShapes shapes;
  std::vector<at::Tensor> feats, masks, pos, ratios, full_refs, level_wh;
  // Fast path: [B,h*w,E] per level (a view of channels-last maps), joined
  // into contiguous [B,S,E]; otherwise the official [B,E,S] join, transposed.
  const bool fast = UseInferenceFastPath(*this);
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t h = in.feats[l].size(2), w = in.feats[l].size(3);
    shapes.push_back({h, w});
    at::Tensor p = in.pos_embeds[l] + level_embeds[l].view({1, -1, 1, 1});
    feats.push_back(fast ? in.feats[l].flatten(2).transpose(1, 2) : in.feats[l].flatten(2));
    pos.push_back(fast ? p.flatten(2).transpose(1, 2) : p.flatten(2));
    masks.push_back(in.masks[l].flatten(1));
    ratios.push_back(ValidRatio(in.masks[l]));
  }
  at::Tensor feat_flatten = fast ? at::cat(feats, 1) : at::cat(feats, -1).transpose(1, 2);
  at::Tensor pos_flatten = fast ? at::cat(pos, 1) : at::cat(pos, -1).transpose(1, 2);
  at::Tensor mask_flatten = at::cat(masks, 1);  // [B,S]
  at::Tensor valid_ratios = at::stack(ratios, 1);                 // [B,Lv,2]

  // Reference points (normalized by each image's valid size) and proposals.
  const auto opts = feat_flatten.options();
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t h = shapes[l][0], w = shapes[l][1];
    at::Tensor ys = at::arange(0.5, h + 0.5, 1.0, opts);
    at::Tensor xs = at::arange(0.5, w + 0.5, 1.0, opts);
    auto grid = at::meshgrid({ys, xs}, "ij");
    at::Tensor ref_y = grid[0].reshape({1, -1}) /
                       (valid_ratios.index({Slice(), l, 1}).unsqueeze(1) * static_cast<double>(h));
    at::Tensor ref_x = grid[1].reshape({1, -1}) /
                       (valid_ratios.index({Slice(), l, 0}).unsqueeze(1) * static_cast<double>(w));
    full_refs.push_back(at::stack({ref_x, ref_y}, -1));
    level_wh.push_back(at::full({h * w, 1}, 0.05 * std::pow(2.0, l), opts));
  }
  at::Tensor full_ref = at::cat(full_refs, 1);                                // [B,S,2]
  at::Tensor enc_reference = full_ref.unsqueeze(2) * valid_ratios.unsqueeze(1);  // [B,S,Lv,2]
  at::Tensor proposals =
      at::cat({full_ref, at::cat(level_wh, 0).expand({batch, -1, 2})}, -1);  // [B,S,4]

  input_stage.reset();
  at::Tensor memory;
  {
    ScopedStage stage("encoder");
    memory = encoder(feat_flatten, pos_flatten, enc_reference, shapes, mask_flatten);
  }
  auto selection_stage = std::make_unique<ScopedStage>("query selection");

  // Encoder output: masked memory, proposals in logit space (+inf where invalid).
  at::Tensor proposals_valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, true);
  at::Tensor proposal_logits = at::log(proposals / (1 - proposals));
  at::Tensor invalid = mask_flatten.unsqueeze(-1) | proposals_valid.logical_not();
  proposal_logits.masked_fill_(invalid, std::numeric_limits<float>::infinity());
  at::Tensor output_memory =
      memory * mask_flatten.logical_not().unsqueeze(-1) * proposals_valid;
  output_memory = enc_output_norm(
      Fp32(LinearIn(enc_output, output_memory, UseBf16(*this) ? &bf16_ : nullptr)));

  const int64_t positions = feat_flatten.size(1);
  auto select_topk = [&](const at::Tensor& logits_all, const at::Tensor& coords_all,
                         int64_t k, at::Tensor* logits, at::Tensor* coords) {
    TORCH_CHECK(positions >= k, "the input is too small: its feature maps have ", positions,
                " positions but the model selects ", k,
                " queries; use a larger image (min_size) or fewer queries");
    at::Tensor score = std::get<0>(logits_all.max(-1));
    if (in.topk_exclude.defined()) {
      score = score.masked_fill(in.topk_exclude, -std::numeric_limits<float>::infinity());
    }
    at::Tensor index = std::get<1>(score.topk(k, 1)).unsqueeze(-1);
    *logits = logits_all.gather(1, index.expand({-1, -1, logits_all.size(-1)}));
    *coords = coords_all.gather(1, index.expand({-1, -1, 4}));
  };

  TransformerOutput out;
  {
    ScopedFp32 fp32;  // the heads and the selection in fp32 under training autocast
    at::Tensor enc_class_all = Linear(encoder_class_head, output_memory);
    at::Tensor enc_coord_all = (encoder_bbox_head(output_memory) + proposal_logits).sigmoid();
    select_topk(enc_class_all, enc_coord_all, config_.num_queries, &out.enc_logits,
                &out.enc_boxes);
  }

  at::Tensor reference = out.enc_boxes.detach();
  at::Tensor target = tgt_embed->weight.unsqueeze(0).expand({batch, -1, -1});
  if (noised_label_query.defined() && noised_box_query.defined()) {
    target = at::cat({noised_label_query, target}, 1);
    reference = at::cat({noised_box_query.sigmoid(), reference}, 1);
  }
  at::Tensor sine_ratio =
      in.sine_valid_ratio.defined() ? in.sine_valid_ratio : valid_ratios.select(1, 0);
  selection_stage.reset();
  {
    ScopedStage stage("decoder");
    out.decoder = decoder(target, reference, memory, shapes, valid_ratios, sine_ratio,
                          mask_flatten, attn_mask, /*skip_relation=*/false);
  }

  if (is_training()) {
    {
      ScopedFp32 fp32;
      at::Tensor hybrid_class_all = Linear(hybrid_class_head, output_memory);
      at::Tensor hybrid_coord_all =
          (hybrid_bbox_head(output_memory) + proposal_logits).sigmoid();
      select_topk(hybrid_class_all, hybrid_coord_all, config_.hybrid_num_proposals,
                  &out.hybrid_enc_logits, &out.hybrid_enc_boxes);
    }
    at::Tensor hybrid_target = hybrid_tgt_embed->weight.unsqueeze(0).expand({batch, -1, -1});
    ScopedStage stage("hybrid decoder");
    out.hybrid = decoder(hybrid_target, out.hybrid_enc_boxes.detach(), memory, shapes,
                         valid_ratios, sine_ratio, mask_flatten, at::Tensor(),
                         /*skip_relation=*/true);
  }
  return out;
}

}  // namespace lpdetr

// The Relation-DETR / LP-DETR transformer: deformable encoder with memory
// fusion, two-stage query selection, relation-biased decoder with iterative
// box refinement, and the training-only hybrid (one-to-many) branch.
// Module and parameter names follow the official implementation.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "model/config.h"
#include "model/deform_attn.h"
#include "model/layers.h"
#include "model/relation.h"

namespace lpdetr {

// Multi-head self-attention with nn.MultiheadAttention's parameter names
// (in_proj_weight, in_proj_bias, out_proj) and an optional additive
// per-head bias on the logits.
class SelfAttentionImpl : public torch::nn::Module {
 public:
  SelfAttentionImpl(int64_t embed_dim, int64_t num_heads);
  // qk [B,N,E] (queries and keys, with position), v [B,N,E];
  // logit_bias [B,H,N,N] or undefined; mask [N,N] bool (true = blocked) or undefined.
  at::Tensor forward(const at::Tensor& qk, const at::Tensor& v, const at::Tensor& logit_bias,
                     const at::Tensor& mask);
  // Attention probabilities of the last forward call when recording is on (tests).
  bool record_weights = false;
  at::Tensor last_weights;

  at::Tensor in_proj_weight, in_proj_bias;
  torch::nn::Linear out_proj{nullptr};

 private:
  int64_t embed_dim_, num_heads_;
  Bf16Weights bf16_;  // projections on the bf16 path
};
TORCH_MODULE(SelfAttention);

class EncoderLayerImpl : public torch::nn::Module {
 public:
  EncoderLayerImpl(const ModelConfig& c);
  at::Tensor forward(const at::Tensor& query, const at::Tensor& query_pos,
                     const at::Tensor& reference_points, const SpatialShapes& shapes,
                     const at::Tensor& padding_mask);

 private:
  // norm2(x + linear2(relu(linear1(x)))) with x = norm1(query + attn), one
  // block of rows at a time so the [rows, dim_feedforward] hidden activations
  // stay in cache (inference fast path).
  at::Tensor BlockedNormFfn(const at::Tensor& query, const at::Tensor& attn);

  MultiScaleDeformableAttention self_attn{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Linear linear1{nullptr}, linear2{nullptr};
  Bf16Weights bf16_;  // feed-forward on the bf16 path
};
TORCH_MODULE(EncoderLayer);

class EncoderImpl : public torch::nn::Module {
 public:
  EncoderImpl(const ModelConfig& c);
  at::Tensor forward(at::Tensor query, const at::Tensor& query_pos,
                     const at::Tensor& reference_points, const SpatialShapes& shapes,
                     const at::Tensor& padding_mask);

 private:
  // memory_fusion(cat(outputs, -1)) one block of rows at a time (inference
  // fast path: the [rows, (L+1) E] concatenation stays in cache).
  at::Tensor BlockedMemoryFusion(const std::vector<at::Tensor>& outputs);

  std::vector<EncoderLayer> layers_;
  torch::nn::ModuleList layers{nullptr};
  torch::nn::Sequential memory_fusion{nullptr};
  torch::nn::Linear fusion_in_{nullptr}, fusion_out_{nullptr};
  torch::nn::LayerNorm fusion_norm_{nullptr};
  Bf16Weights bf16_;  // memory fusion on the bf16 path
};
TORCH_MODULE(Encoder);

class DecoderLayerImpl : public torch::nn::Module {
 public:
  DecoderLayerImpl(const ModelConfig& c);
  at::Tensor forward(const at::Tensor& query, const at::Tensor& query_pos,
                     const at::Tensor& reference_points, const at::Tensor& value,
                     const SpatialShapes& shapes, const at::Tensor& padding_mask,
                     const at::Tensor& logit_bias, const at::Tensor& attn_mask);
  SelfAttention self_attn{nullptr};

 private:
  MultiScaleDeformableAttention cross_attn{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr}, norm3{nullptr};
  torch::nn::Linear linear1{nullptr}, linear2{nullptr};
  Bf16Weights bf16_;  // feed-forward on the bf16 path
};
TORCH_MODULE(DecoderLayer);

struct DecoderOutput {
  at::Tensor logits;  // [L, B, N, C]
  at::Tensor boxes;   // [L, B, N, 4] cxcywh in [0, 1]
};

class DecoderImpl : public torch::nn::Module {
 public:
  DecoderImpl(const ModelConfig& c);
  // query [B,N,E]; reference_points [B,N,4] (sigmoid space); value = memory
  // [B,S,E]; valid_ratios [B,Lv,2] (x, y) of each level; sine_valid_ratio
  // [B,2] scales the boxes whose sine embedding gives the query position;
  // attn_mask [N,N] bool (denoising) or undefined; skip_relation for the
  // hybrid branch.
  DecoderOutput forward(at::Tensor query, at::Tensor reference_points, const at::Tensor& value,
                        const SpatialShapes& shapes, const at::Tensor& valid_ratios,
                        const at::Tensor& sine_valid_ratio, const at::Tensor& padding_mask,
                        const at::Tensor& attn_mask, bool skip_relation);

  // Per-head additive logit bias [B,H,N,N] of lp-detr layer `layer` from the
  // boxes that feed it (public for tests).
  at::Tensor LpRelationBias(const at::Tensor& boxes, int64_t layer);
  // alpha per layer [L,3] (lp-detr) or undefined.
  at::Tensor ScaleAlpha() const;

  const std::vector<DecoderLayer>& Layers() const { return layers_; }
  MultiScaleRelation multi_scale_relation{nullptr};
  PositionRelationEmbedding position_relation_embedding{nullptr};

 private:
  at::Tensor PadHeads(const at::Tensor& relation) const;

  ModelConfig config_;
  std::vector<DecoderLayer> layers_;
  std::vector<torch::nn::Linear> class_heads_;
  std::vector<MLP> bbox_heads_;
  torch::nn::ModuleList layers{nullptr}, class_head{nullptr}, bbox_head{nullptr};
  MLP ref_point_head{nullptr}, query_scale{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};
TORCH_MODULE(Decoder);

// Inputs of the transformer, one entry per feature level.
struct MultiLevelInput {
  std::vector<at::Tensor> feats;       // [B, E, h, w]
  std::vector<at::Tensor> masks;       // [B, h, w] bool, true = padding
  std::vector<at::Tensor> pos_embeds;  // [B, E, h, w]
  at::Tensor sine_valid_ratio;         // [B, 2]; undefined = valid ratio of level 0
  at::Tensor topk_exclude;             // [B, S] bool; positions never selected, or undefined
};

struct TransformerOutput {
  DecoderOutput decoder;      // includes the denoising queries first, if any
  at::Tensor enc_logits;      // [B, Q, C] of the selected proposals
  at::Tensor enc_boxes;       // [B, Q, 4]
  DecoderOutput hybrid;       // training only
  at::Tensor hybrid_enc_logits, hybrid_enc_boxes;
};

class RelationTransformerImpl : public torch::nn::Module {
 public:
  RelationTransformerImpl(const ModelConfig& c);
  // noised_label_query [B,Ndn,E] and noised_box_query [B,Ndn,4] (logit space)
  // with attn_mask [Ndn+Q, Ndn+Q] in training with denoising; undefined otherwise.
  TransformerOutput forward(const MultiLevelInput& input, const at::Tensor& noised_label_query,
                            const at::Tensor& noised_box_query, const at::Tensor& attn_mask);

  Encoder encoder{nullptr};
  Decoder decoder{nullptr};

 private:
  ModelConfig config_;
  at::Tensor level_embeds;
  torch::nn::Linear enc_output{nullptr};
  torch::nn::LayerNorm enc_output_norm{nullptr};
  torch::nn::Embedding tgt_embed{nullptr}, hybrid_tgt_embed{nullptr};
  torch::nn::Linear encoder_class_head{nullptr}, hybrid_class_head{nullptr};
  MLP encoder_bbox_head{nullptr}, hybrid_bbox_head{nullptr};
  Bf16Weights bf16_;  // enc_output on the bf16 path
};
TORCH_MODULE(RelationTransformer);

}  // namespace lpdetr

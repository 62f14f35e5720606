#include "model/detector.h"

#include <algorithm>
#include <map>
#include <numeric>

#include <ATen/ATen.h>

#include "model/box_ops.h"
#include "model/runtime.h"

namespace lpdetr {

// ---------------------------------------------------------------------------
DenoisingGeneratorImpl::DenoisingGeneratorImpl(int64_t num_queries, int64_t num_classes,
                                               int64_t embed_dim, int64_t denoising_nums,
                                               double label_noise_prob, double box_noise_scale)
    : num_queries_(num_queries),
      num_classes_(num_classes),
      embed_dim_(embed_dim),
      denoising_nums_(denoising_nums),
      label_noise_prob_(label_noise_prob),
      box_noise_scale_(box_noise_scale) {
  label_encoder = register_module("label_encoder", torch::nn::Embedding(num_classes, embed_dim));
}

DenoisingGeneratorImpl::Result DenoisingGeneratorImpl::forward(
    const std::vector<TrainTarget>& targets) {
  TORCH_CHECK(!targets.empty(), "denoising needs at least one target");
  const auto device = label_encoder->weight.device();
  const int64_t batch = static_cast<int64_t>(targets.size());
  std::vector<int64_t> counts;
  std::vector<at::Tensor> labels_list, boxes_list;
  for (const auto& t : targets) {
    TORCH_CHECK(t.labels.dim() == 1 && t.boxes.dim() == 2 && t.boxes.size(1) == 4 &&
                    t.boxes.size(0) == t.labels.size(0),
                "target must hold labels [n] and boxes [n,4], got ", t.labels.sizes(), " and ",
                t.boxes.sizes());
    counts.push_back(t.labels.size(0));
    labels_list.push_back(t.labels.to(device, at::kLong));
    boxes_list.push_back(t.boxes.to(device, at::kFloat));
  }
  const int64_t max_gt = *std::max_element(counts.begin(), counts.end());
  const int64_t groups =
      std::max<int64_t>(denoising_nums_ * max_gt / std::max<int64_t>(max_gt * max_gt, 1), 1);
  const int64_t repeats = groups * 2;
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});

  at::Tensor gt_labels = at::cat(labels_list).repeat({repeats});
  at::Tensor gt_boxes = at::cat(boxes_list).repeat({repeats, 1});

  // Label noise: half the official label_noise_prob, uniformly random classes.
  // Without label noise no random number is drawn (so the box noise draws
  // the same numbers as the official generator for the same seed).
  at::Tensor noised_labels = gt_labels;
  if (label_noise_prob_ > 0) {
    at::Tensor flip =
        at::rand(gt_labels.sizes(), generator_, gt_boxes.options()) < label_noise_prob_ * 0.5;
    noised_labels = at::where(
        flip, at::randint(0, num_classes_, gt_labels.sizes(), generator_, gt_labels.options()),
        gt_labels);
  }

  // Box noise: positives move by < half their size, negatives by 1x..2x.
  at::Tensor noised_boxes = gt_boxes;
  if (box_noise_scale_ > 0 && gt_boxes.size(0) > 0) {
    at::Tensor half_wh = gt_boxes.narrow(1, 2, 2) / 2;
    at::Tensor diff = at::cat({half_wh, half_wh}, 1);
    at::Tensor sign = at::randint(0, 2, gt_boxes.sizes(), generator_, gt_boxes.options()) * 2.0 - 1.0;
    at::Tensor part = at::rand(gt_boxes.sizes(), generator_, gt_boxes.options());
    // Within each group of 2 * total boxes, the second half are negatives.
    at::Tensor is_negative =
        (at::arange(gt_boxes.size(0), gt_labels.options()).remainder(2 * total) >= total)
            .unsqueeze(1);
    part = (part + is_negative.to(at::kFloat)) * sign;
    at::Tensor xyxy = BoxCxcywhToXyxy(gt_boxes) + part * diff * box_noise_scale_;
    xyxy = xyxy.clamp(0.0, 1.0);
    at::Tensor x0 = xyxy.select(1, 0), y0 = xyxy.select(1, 1);
    at::Tensor x1 = xyxy.select(1, 2), y1 = xyxy.select(1, 3);
    noised_boxes = at::stack({(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0}, 1);
  }
  noised_boxes = InverseSigmoid(noised_boxes);
  at::Tensor label_embedding = label_encoder(noised_labels);

  Result r;
  r.groups = groups;
  r.group_size = 2 * max_gt;
  const int64_t num_noised = max_gt * repeats;
  r.label_query = at::zeros({batch, num_noised, embed_dim_}, label_embedding.options());
  r.box_query = at::zeros({batch, num_noised, 4}, noised_boxes.options());
  if (total > 0) {
    std::vector<int64_t> batch_idx, slot_idx;
    for (int64_t g = 0; g < repeats; ++g) {
      for (int64_t b = 0; b < batch; ++b) {
        for (int64_t k = 0; k < counts[b]; ++k) {
          batch_idx.push_back(b);
          slot_idx.push_back(max_gt * g + k);
        }
      }
    }
    auto idx_opts = at::TensorOptions().dtype(at::kLong).device(device);
    at::Tensor bi = at::tensor(batch_idx, idx_opts), si = at::tensor(slot_idx, idx_opts);
    r.label_query.index_put_({bi, si}, label_embedding);
    r.box_query.index_put_({bi, si}, noised_boxes);
  }
  // Matching queries cannot see denoising ones; denoising groups cannot see each other.
  const int64_t size = num_noised + num_queries_;
  r.attn_mask = at::zeros({size, size}, at::TensorOptions().dtype(at::kBool).device(device));
  r.attn_mask.narrow(0, num_noised, num_queries_).narrow(1, 0, num_noised).fill_(true);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t start = r.group_size * g, end = r.group_size * (g + 1);
    at::Tensor rows = r.attn_mask.narrow(0, start, r.group_size);
    rows.narrow(1, 0, start).fill_(true);
    rows.narrow(1, end, num_noised - end).fill_(true);
  }
  return r;
}

// ---------------------------------------------------------------------------
LpDetrImpl::LpDetrImpl(const ModelConfig& config) : config_(config) {
  config_.Validate();
  backbone = register_module("backbone", ResNet(config_.backbone, config_.return_indices, config_.backbone_width));
  std::vector<int64_t> channels = backbone->OutChannels();
  neck = register_module("neck", ChannelMapper(channels, config_.embed_dim,
                                               config_.num_feature_levels));
  transformer = register_module("transformer", RelationTransformer(config_));
  denoising_generator = register_module(
      "denoising_generator",
      DenoisingGenerator(config_.num_queries, config_.num_classes, config_.embed_dim,
                         config_.denoising_nums, config_.label_noise_prob,
                         config_.box_noise_scale));
}

at::Tensor LpDetrImpl::ScaleAlpha() const { return transformer->decoder->ScaleAlpha(); }

namespace {

at::Tensor ResizeMask(const at::Tensor& mask, int64_t h, int64_t w) {
  return at::upsample_nearest2d(mask.unsqueeze(0).to(at::kFloat), {h, w}).squeeze(0).to(at::kBool);
}

}  // namespace

MultiLevelInput LpDetrImpl::Features(const ImageBatch& batch) {
  const at::Tensor& images = batch.images;
  TORCH_CHECK(images.dim() == 4 && images.size(1) == 3, "images must be [B,3,H,W], got ",
              images.sizes());
  TORCH_CHECK(batch.mask.dim() == 3 && batch.mask.size(0) == images.size(0) &&
                  batch.mask.size(1) == images.size(2) && batch.mask.size(2) == images.size(3),
              "mask must be [B,H,W] matching images ", images.sizes(), ", got ",
              batch.mask.sizes());
  const int64_t num = images.size(0), height = images.size(2), width = images.size(3);
  const int64_t pos_feats = config_.embed_dim / 2;
  const at::Tensor mask = batch.mask.to(at::kBool);
  MultiLevelInput in;

  bool full = batch.extents.empty();
  if (!full) {
    TORCH_CHECK(static_cast<int64_t>(batch.extents.size()) == num, "got ",
                batch.extents.size(), " extents for ", num, " images");
    full = true;
    for (const auto& e : batch.extents) {
      TORCH_CHECK(e[0] > 0 && e[1] > 0 && e[0] <= height && e[1] <= width, "extent (", e[0],
                  ", ", e[1], ") outside the batch of ", height, "x", width);
      full = full && e[0] == height && e[1] == width;
    }
  }
  if (full) {
    std::vector<at::Tensor> backbone_feats;
    {
      ScopedStage stage("backbone");
      backbone_feats = backbone(images);
    }
    {
      ScopedStage stage("neck");
      in.feats = neck(backbone_feats);
    }
    ScopedStage stage("masks + position embedding");
    for (const auto& f : in.feats) {
      in.masks.push_back(ResizeMask(mask, f.size(2), f.size(3)));
      in.pos_embeds.push_back(SinePositionEmbedding(in.masks.back(), pos_feats));
    }
    return in;
  }

  // Group images by extent; run backbone and neck per group at that extent.
  std::map<std::array<int64_t, 2>, std::vector<int64_t>> groups;
  for (int64_t i = 0; i < num; ++i) groups[batch.extents[i]].push_back(i);
  struct Group {
    at::Tensor index;
    std::vector<at::Tensor> feats, masks;
  };
  std::vector<Group> done;
  const int64_t levels = config_.num_feature_levels;
  std::vector<int64_t> level_h(levels, 0), level_w(levels, 0);
  for (const auto& [extent, members] : groups) {
    Group g;
    g.index = at::tensor(members, at::TensorOptions().dtype(at::kLong).device(images.device()));
    at::Tensor imgs = images.index_select(0, g.index)
                          .narrow(2, 0, extent[0])
                          .narrow(3, 0, extent[1]);
    at::Tensor msk = mask.index_select(0, g.index).narrow(1, 0, extent[0]).narrow(2, 0, extent[1]);
    g.feats = neck(backbone(imgs));
    for (int64_t l = 0; l < levels; ++l) {
      const auto& f = g.feats[l];
      g.masks.push_back(ResizeMask(msk, f.size(2), f.size(3)));
      level_h[l] = std::max(level_h[l], f.size(2));
      level_w[l] = std::max(level_w[l], f.size(3));
    }
    done.push_back(std::move(g));
  }
  std::vector<at::Tensor> outside(levels);
  at::Tensor own_h0 = at::empty({num}, images.options());
  at::Tensor own_w0 = at::empty({num}, images.options());
  for (int64_t l = 0; l < levels; ++l) {
    at::Tensor feat = at::zeros({num, config_.embed_dim, level_h[l], level_w[l]},
                                images.options());
    at::Tensor msk = at::ones({num, level_h[l], level_w[l]}, mask.options());
    at::Tensor out = at::ones({num, level_h[l], level_w[l]}, mask.options());
    for (const auto& g : done) {
      const int64_t h = g.feats[l].size(2), w = g.feats[l].size(3);
      feat.narrow(2, 0, h).narrow(3, 0, w).index_copy_(0, g.index, g.feats[l]);
      msk.narrow(1, 0, h).narrow(2, 0, w).index_copy_(0, g.index, g.masks[l]);
      out.narrow(1, 0, h).narrow(2, 0, w).index_fill_(0, g.index, false);
      if (l == 0) {
        own_h0.index_fill_(0, g.index, static_cast<double>(h));
        own_w0.index_fill_(0, g.index, static_cast<double>(w));
      }
    }
    in.feats.push_back(feat);
    in.masks.push_back(msk);
    in.pos_embeds.push_back(SinePositionEmbedding(msk, pos_feats));
    outside[l] = out.flatten(1);
  }
  const at::Tensor& m0 = in.masks[0];
  at::Tensor valid_h = m0.select(2, 0).logical_not().sum(1).to(images.scalar_type());
  at::Tensor valid_w = m0.select(1, 0).logical_not().sum(1).to(images.scalar_type());
  in.sine_valid_ratio = at::stack({valid_w / own_w0, valid_h / own_h0}, -1);
  in.topk_exclude = at::cat(outside, 1);
  return in;
}

DetectorOutput LpDetrImpl::forward(const ImageBatch& batch,
                                   const std::vector<TrainTarget>* targets) {
  MultiLevelInput in = Features(batch);
  DenoisingGenerator::ContainedType::Result dn;
  // Training always runs the denoising queries, as the official model does:
  // denoising_nums only sets the group count max(denoising_nums / max_gt, 1),
  // so denoising_nums = 0 still gives one group.
  const bool denoise = is_training() && targets != nullptr;
  if (denoise) {
    TORCH_CHECK(static_cast<int64_t>(targets->size()) == batch.images.size(0), "got ",
                targets->size(), " targets for ", batch.images.size(0), " images");
    dn = denoising_generator(*targets);
  }
  TransformerOutput t = transformer(in, dn.label_query, dn.box_query, dn.attn_mask);

  DetectorOutput out;
  at::Tensor logits = t.decoder.logits, boxes = t.decoder.boxes;
  const int64_t num_dn = dn.groups * dn.group_size;
  if (denoise && num_dn > 0) {
    out.dn_layer_logits = logits.narrow(2, 0, num_dn);
    out.dn_layer_boxes = boxes.narrow(2, 0, num_dn);
    logits = logits.narrow(2, num_dn, logits.size(2) - num_dn);
    boxes = boxes.narrow(2, num_dn, boxes.size(2) - num_dn);
  }
  out.dn_groups = dn.groups;
  out.dn_group_size = dn.group_size;
  out.layer_logits = logits;
  out.layer_boxes = boxes;
  out.pred_logits = logits[-1];
  out.pred_boxes = boxes[-1];
  out.enc_logits = t.enc_logits;
  out.enc_boxes = t.enc_boxes;
  if (t.hybrid.logits.defined()) {
    out.hybrid_layer_logits = t.hybrid.logits;
    out.hybrid_layer_boxes = t.hybrid.boxes;
    out.hybrid_enc_logits = t.hybrid_enc_logits;
    out.hybrid_enc_boxes = t.hybrid_enc_boxes;
  }
  return out;
}

std::vector<Detections> LpDetrImpl::PostProcess(const at::Tensor& logits, const at::Tensor& boxes,
                                                const at::Tensor& image_sizes,
                                                int64_t num_select, double nms_iou) {
  TORCH_CHECK(logits.dim() == 3 && boxes.dim() == 3 && boxes.size(-1) == 4 &&
                  logits.size(0) == boxes.size(0) && logits.size(1) == boxes.size(1),
              "PostProcess expects logits [B,Q,C] and boxes [B,Q,4], got ", logits.sizes(),
              " and ", boxes.sizes());
  TORCH_CHECK(image_sizes.dim() == 2 && image_sizes.size(0) == logits.size(0) &&
                  image_sizes.size(1) == 2,
              "image_sizes must be [B,2], got ", image_sizes.sizes());
  const int64_t batch = logits.size(0), classes = logits.size(2);
  const int64_t k = std::min<int64_t>(num_select, logits.size(1) * classes);
  at::Tensor prob = logits.sigmoid().reshape({batch, -1});
  auto [scores, index] = prob.topk(k, 1);
  at::Tensor query = at::div(index, classes, "trunc");
  at::Tensor labels = index.remainder(classes);
  at::Tensor xyxy = BoxCxcywhToXyxy(boxes).gather(1, query.unsqueeze(-1).expand({-1, -1, 4}));
  at::Tensor sizes = image_sizes.to(boxes.device(), boxes.scalar_type());
  at::Tensor h = sizes.select(1, 0), w = sizes.select(1, 1);
  at::Tensor scale = at::stack({w, h, w, h}, 1).unsqueeze(1);
  xyxy = xyxy * scale;
  std::vector<Detections> out;
  for (int64_t i = 0; i < batch; ++i) {
    Detections d{scores[i], labels[i], xyxy[i]};
    if (nms_iou > 0.0) {
      const at::Tensor keep = SameClassNmsKeep(d.boxes, d.labels, nms_iou);
      d = {d.scores.index_select(0, keep), d.labels.index_select(0, keep),
           d.boxes.index_select(0, keep)};
    }
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace lpdetr

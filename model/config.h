// Model configuration: the architecture hyper-parameters of an LP-DETR /
// Relation-DETR model, read from the `config.json` of a model directory
// (SPEC 2.3) or from model/configs/*.json.
//
// JSON layout (every key optional except where noted; unknown keys are an
// error so that a typo never silently falls back to a default):
//   name              string   model name shown by ModelService ("lp-detr")
//   version           string   model version ("1")
//   backbone          string   resnet18 | resnet34 | resnet50 | resnet101
//   backbone_width    int      the ResNet's stem channels, stage s has
//                              width << s planes (64, torchvision's; 8..256)
//   return_indices    [int]    ResNet stages fed to the neck (default [1,2,3])
//   embed_dim         int      transformer width (256)
//   num_heads         int      attention heads H (8)
//   dim_feedforward   int      FFN hidden width (2048)
//   enc_layers        int      encoder layers (6)
//   dec_layers        int      decoder layers L (6)
//   num_feature_levels int     neck outputs (4)
//   num_points        int      deformable sampling points per level/head (4)
//   num_queries       int      two-stage queries (900)
//   hybrid_num_proposals int   one-to-many queries used in training (1500)
//   hybrid_assign     int      GT repeats of the hybrid branch (6)
//   denoising_nums    int      contrastive denoising budget (100): training runs
//                              max(denoising_nums / max_gt, 1) groups, so 0 is one
//   label_noise_prob  number   denoising label noise, in [0, 1] (0.5); each
//                              label is swapped with probability half of it
//   box_noise_scale   number   denoising box jitter scale, >= 0 (1.0); 0 makes
//                              every denoising box its ground truth
//   num_classes       int      classifier width (91)
//   num_select        int      detections kept by post-processing (300)
//   nms_iou           number   post-processing suppression, in [0, 1) (0: off,
//                              the official top-k only): a detection whose box
//                              overlaps a higher-scoring one of the same class
//                              by IoU > nms_iou is dropped
//   min_size, max_size int     inference resize (800, 1333)
//   relation          object   {"variant": "lp-detr" | "relation-detr",
//                               "heads": K in 0..H (default H)}
//   classes           [string] class names, index = label id (optional)
//   category_ids      [int]    dataset category id of each label, index = label
//                              id (optional; num_classes distinct ids >= 0). A
//                              model trained on a COCO dataset with sparse ids
//                              has labels 0..C-1 = its ids sorted ascending;
//                              results go back to users in these ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace lpdetr {

enum class RelationVariant { kLpDetr, kRelationDetr };

const char* RelationVariantName(RelationVariant v);

struct ModelConfig {
  std::string name = "lp-detr";
  std::string version = "1";
  std::string backbone = "resnet50";
  int backbone_width = 64;
  std::vector<int> return_indices = {1, 2, 3};
  int embed_dim = 256;
  int num_heads = 8;
  int dim_feedforward = 2048;
  int enc_layers = 6;
  int dec_layers = 6;
  int num_feature_levels = 4;
  int num_points = 4;
  int num_queries = 900;
  int hybrid_num_proposals = 1500;
  int hybrid_assign = 6;
  int denoising_nums = 100;
  double label_noise_prob = 0.5;
  double box_noise_scale = 1.0;
  int num_classes = 91;
  int num_select = 300;
  double nms_iou = 0.0;
  int min_size = 800;
  int max_size = 1333;
  RelationVariant relation_variant = RelationVariant::kLpDetr;
  int relation_heads = 8;
  std::vector<std::string> classes;
  // Empty: the dataset ids are the label ids themselves.
  std::vector<int64_t> category_ids;

  // Parses and validates; throws std::invalid_argument naming the bad key.
  static ModelConfig FromJson(const nlohmann::json& j);
  static ModelConfig FromFile(const std::string& path);
  nlohmann::json ToJson() const;
  // Throws std::invalid_argument when a value is out of range.
  void Validate() const;

  // Class name of a label id ("class_<id>" when no names are configured).
  std::string ClassName(int label) const;
  // Dataset category id of a label id (the label itself when the model has no
  // category map).
  int64_t CategoryId(int label) const;
};

}  // namespace lpdetr

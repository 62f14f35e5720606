#include "model/config.h"

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace lpdetr {
namespace {

using nlohmann::json;

const std::set<std::string>& KnownKeys() {
  static const std::set<std::string> keys = {
      "name",           "version",     "backbone",           "backbone_width",
      "return_indices",
      "embed_dim",      "num_heads",   "dim_feedforward",    "enc_layers",
      "dec_layers",     "num_feature_levels", "num_points",  "num_queries",
      "hybrid_num_proposals", "hybrid_assign", "denoising_nums", "label_noise_prob",
      "box_noise_scale", "num_classes",
      "num_select",     "nms_iou",     "min_size",    "max_size",           "relation",
      "classes",        "category_ids"};
  return keys;
}

int GetInt(const json& j, const char* key, int fallback) {
  if (!j.contains(key)) return fallback;
  const json& v = j.at(key);
  if (!v.is_number_integer()) {
    throw std::invalid_argument(std::string("config: '") + key +
                                "' must be an integer, got " + v.dump());
  }
  return v.get<int>();
}

double GetDouble(const json& j, const char* key, double fallback) {
  if (!j.contains(key)) return fallback;
  const json& v = j.at(key);
  if (!v.is_number()) {
    throw std::invalid_argument(std::string("config: '") + key + "' must be a number, got " +
                                v.dump());
  }
  return v.get<double>();
}

std::string GetString(const json& j, const char* key, const std::string& fallback) {
  if (!j.contains(key)) return fallback;
  const json& v = j.at(key);
  if (!v.is_string()) {
    throw std::invalid_argument(std::string("config: '") + key +
                                "' must be a string, got " + v.dump());
  }
  return v.get<std::string>();
}

void Require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument("config: " + message);
}

// category_ids: empty, or num_classes distinct non-negative ids.
void ValidateCategoryIds(const std::vector<int64_t>& category_ids, int num_classes) {
  if (category_ids.empty()) return;
  Require(static_cast<int>(category_ids.size()) == num_classes,
          "'category_ids' has " + std::to_string(category_ids.size()) +
              " ids but num_classes is " + std::to_string(num_classes));
  std::map<int64_t, size_t> first_index;
  for (size_t i = 0; i < category_ids.size(); ++i) {
    Require(category_ids[i] >= 0, "'category_ids' entry " + std::to_string(i) +
                                      " is negative (" + std::to_string(category_ids[i]) + ")");
    const auto [it, inserted] = first_index.emplace(category_ids[i], i);
    Require(inserted, "'category_ids' entries " + std::to_string(it->second) + " and " +
                          std::to_string(i) + " are both " + std::to_string(category_ids[i]) +
                          " (ids must be distinct)");
  }
}

}  // namespace

const char* RelationVariantName(RelationVariant v) {
  return v == RelationVariant::kLpDetr ? "lp-detr" : "relation-detr";
}

ModelConfig ModelConfig::FromJson(const json& j) {
  Require(j.is_object(), "top level must be a JSON object");
  for (const auto& item : j.items()) {
    Require(KnownKeys().count(item.key()) > 0, "unknown key '" + item.key() + "'");
  }
  ModelConfig c;
  c.name = GetString(j, "name", c.name);
  c.version = GetString(j, "version", c.version);
  c.backbone = GetString(j, "backbone", c.backbone);
  c.backbone_width = GetInt(j, "backbone_width", c.backbone_width);
  if (j.contains("return_indices")) {
    const json& r = j.at("return_indices");
    Require(r.is_array(), "'return_indices' must be an array of integers");
    c.return_indices.clear();
    for (const json& v : r) {
      Require(v.is_number_integer(), "'return_indices' must be an array of integers");
      c.return_indices.push_back(v.get<int>());
    }
  }
  c.embed_dim = GetInt(j, "embed_dim", c.embed_dim);
  c.num_heads = GetInt(j, "num_heads", c.num_heads);
  c.dim_feedforward = GetInt(j, "dim_feedforward", c.dim_feedforward);
  c.enc_layers = GetInt(j, "enc_layers", c.enc_layers);
  c.dec_layers = GetInt(j, "dec_layers", c.dec_layers);
  c.num_feature_levels = GetInt(j, "num_feature_levels", c.num_feature_levels);
  c.num_points = GetInt(j, "num_points", c.num_points);
  c.num_queries = GetInt(j, "num_queries", c.num_queries);
  c.hybrid_num_proposals = GetInt(j, "hybrid_num_proposals", c.hybrid_num_proposals);
  c.hybrid_assign = GetInt(j, "hybrid_assign", c.hybrid_assign);
  c.denoising_nums = GetInt(j, "denoising_nums", c.denoising_nums);
  c.label_noise_prob = GetDouble(j, "label_noise_prob", c.label_noise_prob);
  c.box_noise_scale = GetDouble(j, "box_noise_scale", c.box_noise_scale);
  c.num_classes = GetInt(j, "num_classes", c.num_classes);
  c.num_select = GetInt(j, "num_select", c.num_select);
  c.nms_iou = GetDouble(j, "nms_iou", c.nms_iou);
  c.min_size = GetInt(j, "min_size", c.min_size);
  c.max_size = GetInt(j, "max_size", c.max_size);
  c.relation_heads = c.num_heads;
  if (j.contains("relation")) {
    const json& r = j.at("relation");
    Require(r.is_object(), "'relation' must be an object {\"variant\", \"heads\"}");
    for (const auto& item : r.items()) {
      Require(item.key() == "variant" || item.key() == "heads",
              "unknown key 'relation." + item.key() + "'");
    }
    const std::string variant = GetString(r, "variant", "lp-detr");
    if (variant == "lp-detr") {
      c.relation_variant = RelationVariant::kLpDetr;
    } else if (variant == "relation-detr") {
      c.relation_variant = RelationVariant::kRelationDetr;
    } else {
      Require(false, "'relation.variant' must be \"lp-detr\" or \"relation-detr\", got \"" +
                         variant + "\"");
    }
    c.relation_heads = GetInt(r, "heads", c.num_heads);
  }
  if (j.contains("classes")) {
    const json& names = j.at("classes");
    Require(names.is_array(), "'classes' must be an array of strings");
    for (const json& v : names) {
      Require(v.is_string(), "'classes' must be an array of strings");
      c.classes.push_back(v.get<std::string>());
    }
  }
  if (j.contains("category_ids")) {
    const json& ids = j.at("category_ids");
    Require(ids.is_array(), "'category_ids' must be an array of integers");
    for (size_t i = 0; i < ids.size(); ++i) {
      Require(ids[i].is_number_integer(), "'category_ids' must be an array of integers, entry " +
                                              std::to_string(i) + " is " + ids[i].dump());
      c.category_ids.push_back(ids[i].get<int64_t>());
    }
  }
  c.Validate();
  return c;
}

ModelConfig ModelConfig::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("config: cannot open " + path);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw std::invalid_argument("config: " + path + " is not valid JSON: " + e.what());
  }
  try {
    return FromJson(j);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(path + ": " + e.what());
  }
}

json ModelConfig::ToJson() const {
  json j;
  j["name"] = name;
  j["version"] = version;
  j["backbone"] = backbone;
  j["backbone_width"] = backbone_width;
  j["return_indices"] = return_indices;
  j["embed_dim"] = embed_dim;
  j["num_heads"] = num_heads;
  j["dim_feedforward"] = dim_feedforward;
  j["enc_layers"] = enc_layers;
  j["dec_layers"] = dec_layers;
  j["num_feature_levels"] = num_feature_levels;
  j["num_points"] = num_points;
  j["num_queries"] = num_queries;
  j["hybrid_num_proposals"] = hybrid_num_proposals;
  j["hybrid_assign"] = hybrid_assign;
  j["denoising_nums"] = denoising_nums;
  j["label_noise_prob"] = label_noise_prob;
  j["box_noise_scale"] = box_noise_scale;
  j["num_classes"] = num_classes;
  j["num_select"] = num_select;
  if (nms_iou > 0.0) j["nms_iou"] = nms_iou;  // absent: off, as in official configs
  j["min_size"] = min_size;
  j["max_size"] = max_size;
  j["relation"] = {{"variant", RelationVariantName(relation_variant)},
                   {"heads", relation_heads}};
  if (!classes.empty()) j["classes"] = classes;
  if (!category_ids.empty()) j["category_ids"] = category_ids;
  return j;
}

void ModelConfig::Validate() const {
  static const std::set<std::string> backbones = {"resnet18", "resnet34", "resnet50",
                                                  "resnet101"};
  Require(backbones.count(backbone) > 0,
          "'backbone' must be one of resnet18, resnet34, resnet50, resnet101, got \"" +
              backbone + "\"");
  Require(backbone_width >= 8 && backbone_width <= 256,
          "'backbone_width' must be in 8..256, got " + std::to_string(backbone_width));
  Require(!return_indices.empty(), "'return_indices' must not be empty");
  for (size_t i = 0; i < return_indices.size(); ++i) {
    Require(return_indices[i] >= 0 && return_indices[i] <= 3,
            "'return_indices' entries must be in 0..3, got " +
                std::to_string(return_indices[i]));
    Require(i == 0 || return_indices[i] > return_indices[i - 1],
            "'return_indices' must be strictly increasing");
  }
  Require(embed_dim > 0 && embed_dim % 32 == 0,
          "'embed_dim' must be a positive multiple of 32 (GroupNorm(32)), got " +
              std::to_string(embed_dim));
  Require(num_heads > 0 && embed_dim % num_heads == 0,
          "'num_heads' must divide embed_dim, got " + std::to_string(num_heads));
  Require((embed_dim / 2) % 2 == 0, "'embed_dim' must be divisible by 4");
  Require(dim_feedforward > 0, "'dim_feedforward' must be positive");
  Require(enc_layers >= 0, "'enc_layers' must be >= 0");
  Require(dec_layers >= 1, "'dec_layers' must be >= 1");
  Require(num_feature_levels >= static_cast<int>(return_indices.size()),
          "'num_feature_levels' must be >= the number of return_indices");
  Require(num_points >= 1, "'num_points' must be >= 1");
  Require(num_queries >= 1, "'num_queries' must be >= 1");
  Require(hybrid_num_proposals >= 0, "'hybrid_num_proposals' must be >= 0");
  Require(hybrid_assign >= 1, "'hybrid_assign' must be >= 1");
  Require(denoising_nums >= 0, "'denoising_nums' must be >= 0");
  Require(label_noise_prob >= 0.0 && label_noise_prob <= 1.0,
          "'label_noise_prob' must be in [0, 1], got " + std::to_string(label_noise_prob));
  Require(box_noise_scale >= 0.0 && std::isfinite(box_noise_scale),
          "'box_noise_scale' must be a finite number >= 0, got " +
              std::to_string(box_noise_scale));
  Require(num_classes >= 1, "'num_classes' must be >= 1");
  Require(num_select >= 1, "'num_select' must be >= 1");
  Require(nms_iou >= 0.0 && nms_iou < 1.0,
          "'nms_iou' must be in [0, 1) (0: off), got " + std::to_string(nms_iou));
  Require(min_size >= 32 && max_size >= min_size,
          "'min_size' must be >= 32 and 'max_size' >= 'min_size'");
  Require(relation_heads >= 0 && relation_heads <= num_heads,
          "'relation.heads' must be in 0..num_heads (" + std::to_string(num_heads) +
              "), got " + std::to_string(relation_heads));
  Require(classes.empty() || static_cast<int>(classes.size()) == num_classes,
          "'classes' has " + std::to_string(classes.size()) + " names but num_classes is " +
              std::to_string(num_classes));
  ValidateCategoryIds(category_ids, num_classes);
}

std::string ModelConfig::ClassName(int label) const {
  if (label >= 0 && label < static_cast<int>(classes.size())) return classes[label];
  return "class_" + std::to_string(label);
}

int64_t ModelConfig::CategoryId(int label) const {
  if (category_ids.empty()) return label;
  if (label < 0 || label >= static_cast<int>(category_ids.size())) {
    throw std::out_of_range("label " + std::to_string(label) + " is outside 0.." +
                            std::to_string(category_ids.size() - 1));
  }
  return category_ids[label];
}

}  // namespace lpdetr

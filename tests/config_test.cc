#include "model/config.h"
#include "model/detector.h"
#include "model/layers.h"
#include "model/model_dir.h"
#include "tests/test_paths.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace lpdetr {
namespace {

using nlohmann::json;

std::string SourceDir() { return testing_paths::SourceDir(); }

std::string ErrorOf(const json& j) {
  try {
    ModelConfig::FromJson(j);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(ConfigTest, DefaultsAreTheOfficialR50Setup) {
  ModelConfig c = ModelConfig::FromJson(json::object());
  EXPECT_EQ(c.backbone, "resnet50");
  EXPECT_EQ(c.num_queries, 900);
  EXPECT_EQ(c.hybrid_num_proposals, 1500);
  EXPECT_EQ(c.enc_layers, 6);
  EXPECT_EQ(c.dec_layers, 6);
  EXPECT_EQ(c.dim_feedforward, 2048);
  EXPECT_EQ(c.relation_variant, RelationVariant::kLpDetr);
  EXPECT_EQ(c.relation_heads, 8);
  EXPECT_EQ(ResNet(c.backbone, c.return_indices)->OutChannels(),
            (std::vector<int64_t>{512, 1024, 2048}));
  EXPECT_EQ(c.backbone_width, 64);
}

TEST(ConfigTest, BackboneWidthScalesEveryStage) {
  ModelConfig c = ModelConfig::FromJson({{"backbone", "resnet18"}, {"backbone_width", 32}});
  EXPECT_EQ(c.backbone_width, 32);
  EXPECT_EQ(ModelConfig::FromJson(c.ToJson()).backbone_width, 32);
  EXPECT_EQ(ResNet(c.backbone, c.return_indices, c.backbone_width)->OutChannels(),
            (std::vector<int64_t>{64, 128, 256}));
  ResNet narrow("resnet18", std::vector<int>{1, 2, 3}, 32);
  const auto outs = narrow->forward(at::zeros({1, 3, 64, 64}));
  ASSERT_EQ(outs.size(), 3u);
  EXPECT_EQ(outs[0].size(1), 64);
  EXPECT_EQ(outs[2].size(1), 256);
  EXPECT_NE(ErrorOf({{"backbone_width", 4}}).find("backbone_width"), std::string::npos);
  // The default model's configuration (scripts/train_default_model.sh).
  const ModelConfig shapes =
      ModelConfig::FromFile(SourceDir() + "/model/configs/lp-detr-shapes.json");
  EXPECT_EQ(shapes.backbone_width, 32);
  EXPECT_EQ(shapes.num_classes, 6);
  EXPECT_EQ(shapes.relation_variant, RelationVariant::kLpDetr);
}

TEST(ConfigTest, ShippedConfigsParse) {
  for (const char* name : {"lp-detr-r50", "relation-detr-r50"}) {
    SCOPED_TRACE(name);
    ModelConfig c =
        ModelConfig::FromFile(SourceDir() + "/model/configs/" + std::string(name) + ".json");
    EXPECT_EQ(c.name, name);
    EXPECT_EQ(c.num_queries, 900);
    EXPECT_EQ(c.hybrid_num_proposals, 1500);
    EXPECT_EQ(c.num_select, 300);
    EXPECT_EQ(c.num_classes, 91);
    EXPECT_EQ(c.dim_feedforward, 2048);
    EXPECT_EQ(c.relation_variant, std::string(name) == "lp-detr-r50"
                                      ? RelationVariant::kLpDetr
                                      : RelationVariant::kRelationDetr);
  }
}

TEST(ConfigTest, RoundTripsThroughJson) {
  json j = {{"backbone", "resnet18"}, {"embed_dim", 128}, {"relation", {{"variant", "relation-detr"}, {"heads", 3}}},
            {"num_classes", 2}, {"classes", {"cat", "dog"}}};
  ModelConfig c = ModelConfig::FromJson(j);
  ModelConfig back = ModelConfig::FromJson(c.ToJson());
  EXPECT_EQ(back.ToJson(), c.ToJson());
  EXPECT_EQ(back.relation_heads, 3);
  EXPECT_EQ(back.ClassName(1), "dog");
  EXPECT_EQ(back.ClassName(7), "class_7");
}

TEST(ConfigTest, RejectsBadValuesWithClearMessages) {
  EXPECT_NE(ErrorOf({{"embed_dimm", 256}}).find("unknown key 'embed_dimm'"), std::string::npos);
  EXPECT_NE(ErrorOf({{"backbone", "vgg16"}}).find("vgg16"), std::string::npos);
  EXPECT_NE(ErrorOf({{"relation", {{"variant", "detr"}}}}).find("relation.variant"),
            std::string::npos);
  EXPECT_NE(ErrorOf({{"relation", {{"heads", 9}}}}).find("relation.heads"), std::string::npos);
  EXPECT_NE(ErrorOf({{"relation", {{"heads", -1}}}}).find("relation.heads"), std::string::npos);
  EXPECT_NE(ErrorOf({{"num_heads", 7}}).find("num_heads"), std::string::npos);
  EXPECT_NE(ErrorOf({{"num_queries", "900"}}).find("must be an integer"), std::string::npos);
  EXPECT_NE(ErrorOf({{"return_indices", {3, 1}}}).find("increasing"), std::string::npos);
  EXPECT_NE(ErrorOf({{"num_classes", 2}, {"classes", {"a"}}}).find("classes"), std::string::npos);
  EXPECT_NE(ErrorOf(json::array()).find("object"), std::string::npos);
}

TEST(ConfigTest, NmsIouIsOffByDefaultParsesRoundTripsAndIsValidated) {
  EXPECT_EQ(ModelConfig::FromJson(json::object()).nms_iou, 0.0);
  // Off: absent from the written config, so official configs stay as they are.
  EXPECT_FALSE(ModelConfig::FromJson(json::object()).ToJson().contains("nms_iou"));
  ModelConfig c = ModelConfig::FromJson({{"nms_iou", 0.7}});
  EXPECT_DOUBLE_EQ(c.nms_iou, 0.7);
  EXPECT_DOUBLE_EQ(ModelConfig::FromJson(c.ToJson()).nms_iou, 0.7);
  EXPECT_NE(ErrorOf({{"nms_iou", 1.0}}).find("nms_iou"), std::string::npos);
  EXPECT_NE(ErrorOf({{"nms_iou", -0.1}}).find("nms_iou"), std::string::npos);
  EXPECT_NE(ErrorOf({{"nms_iou", "0.5"}}).find("must be a number"), std::string::npos);
}

TEST(ConfigTest, TrainingKeysParseRoundTripAndDefaultToTheOfficialValues) {
  ModelConfig d = ModelConfig::FromJson(json::object());
  EXPECT_EQ(d.denoising_nums, 100);
  EXPECT_EQ(d.hybrid_assign, 6);
  EXPECT_DOUBLE_EQ(d.label_noise_prob, 0.5);
  EXPECT_DOUBLE_EQ(d.box_noise_scale, 1.0);

  json j = {{"denoising_nums", 40}, {"label_noise_prob", 0.0}, {"box_noise_scale", 0},
            {"hybrid_assign", 3}};
  ModelConfig c = ModelConfig::FromJson(j);
  EXPECT_EQ(c.denoising_nums, 40);
  EXPECT_EQ(c.hybrid_assign, 3);
  EXPECT_DOUBLE_EQ(c.label_noise_prob, 0.0);
  EXPECT_DOUBLE_EQ(c.box_noise_scale, 0.0);
  ModelConfig back = ModelConfig::FromJson(c.ToJson());
  EXPECT_DOUBLE_EQ(back.label_noise_prob, 0.0);
  EXPECT_DOUBLE_EQ(back.box_noise_scale, 0.0);
  EXPECT_EQ(back.ToJson(), c.ToJson());

  EXPECT_NE(ErrorOf({{"label_noise_prob", 1.5}}).find("label_noise_prob"), std::string::npos);
  EXPECT_NE(ErrorOf({{"label_noise_prob", -0.1}}).find("label_noise_prob"), std::string::npos);
  EXPECT_NE(ErrorOf({{"label_noise_prob", "0.5"}}).find("must be a number"), std::string::npos);
  EXPECT_NE(ErrorOf({{"box_noise_scale", -1.0}}).find("box_noise_scale"), std::string::npos);
  EXPECT_NE(ErrorOf({{"box_noise_scale", true}}).find("must be a number"), std::string::npos);
}

TEST(ConfigTest, CategoryIdsParseRoundTripAndMapLabels) {
  // Sparse, unordered dataset ids (labels need not follow any order here).
  json j = {{"num_classes", 3}, {"classes", {"cat", "dog", "bird"}},
            {"category_ids", {90, 3, 7}}};
  ModelConfig c = ModelConfig::FromJson(j);
  EXPECT_EQ(c.category_ids, (std::vector<int64_t>{90, 3, 7}));
  EXPECT_EQ(c.CategoryId(0), 90);
  EXPECT_EQ(c.CategoryId(1), 3);
  EXPECT_EQ(c.CategoryId(2), 7);
  EXPECT_THROW(c.CategoryId(3), std::out_of_range);
  EXPECT_THROW(c.CategoryId(-1), std::out_of_range);
  const json written = c.ToJson();
  ASSERT_TRUE(written.contains("category_ids"));
  EXPECT_EQ(written.at("category_ids"), json({90, 3, 7}));
  ModelConfig back = ModelConfig::FromJson(written);
  EXPECT_EQ(back.category_ids, c.category_ids);
  EXPECT_EQ(back.ToJson(), written);

  // Without a map the ids are the labels and ToJson leaves the key out.
  ModelConfig plain = ModelConfig::FromJson({{"num_classes", 3}});
  EXPECT_TRUE(plain.category_ids.empty());
  EXPECT_FALSE(plain.ToJson().contains("category_ids"));
  EXPECT_EQ(plain.CategoryId(2), 2);
  // An empty array is the same as no map.
  EXPECT_TRUE(ModelConfig::FromJson({{"num_classes", 3}, {"category_ids", json::array()}})
                  .category_ids.empty());
}

TEST(ConfigTest, CategoryIdsAreValidated) {
  const std::string wrong_length =
      ErrorOf({{"num_classes", 3}, {"category_ids", {1, 2}}});
  EXPECT_NE(wrong_length.find("'category_ids' has 2 ids but num_classes is 3"), std::string::npos)
      << wrong_length;
  const std::string duplicate =
      ErrorOf({{"num_classes", 3}, {"category_ids", {5, 9, 5}}});
  EXPECT_NE(duplicate.find("'category_ids' entries 0 and 2 are both 5"), std::string::npos)
      << duplicate;
  const std::string negative =
      ErrorOf({{"num_classes", 3}, {"category_ids", {1, -4, 2}}});
  EXPECT_NE(negative.find("'category_ids' entry 1 is negative (-4)"), std::string::npos)
      << negative;
  const std::string not_integer =
      ErrorOf({{"num_classes", 2}, {"category_ids", {1, 2.5}}});
  EXPECT_NE(not_integer.find("'category_ids' must be an array of integers, entry 1"),
            std::string::npos)
      << not_integer;
  EXPECT_NE(ErrorOf({{"num_classes", 2}, {"category_ids", {"1", "2"}}}).find("category_ids"),
            std::string::npos);
  EXPECT_NE(ErrorOf({{"num_classes", 1}, {"category_ids", 1}}).find("'category_ids' must be an array"),
            std::string::npos);
  // Validate() checks a config built in code too.
  ModelConfig c = ModelConfig::FromJson({{"num_classes", 2}});
  c.category_ids = {4, 4};
  EXPECT_THROW(c.Validate(), std::invalid_argument);
}

TEST(ConfigTest, CategoryIdsRoundTripThroughAModelDirectory) {
  namespace fs = std::filesystem;
  ModelConfig c = ModelConfig::FromJson({{"backbone", "resnet18"},
                                         {"embed_dim", 32},
                                         {"num_heads", 4},
                                         {"dim_feedforward", 32},
                                         {"enc_layers", 1},
                                         {"dec_layers", 1},
                                         {"num_queries", 10},
                                         {"hybrid_num_proposals", 0},
                                         {"num_classes", 3},
                                         {"num_select", 5},
                                         {"classes", {"cat", "dog", "bird"}},
                                         {"category_ids", {17, 2, 40}}});
  const std::string dir = testing::TempDir() + "/config_test_category_ids";
  fs::remove_all(dir);
  LpDetr model(c);
  SaveModelDir(dir, c, *model);
  const json on_disk = json::parse(std::ifstream(dir + "/config.json"));
  EXPECT_EQ(on_disk.at("category_ids"), json({17, 2, 40}));
  std::ifstream labels(dir + "/labels.txt");
  ASSERT_TRUE(labels.good()) << "labels.txt not written";
  std::string line;
  std::vector<std::string> names;
  while (std::getline(labels, line)) names.push_back(line);
  EXPECT_EQ(names, c.classes);
  LoadedModel loaded = LoadModelDir(dir);
  EXPECT_EQ(loaded.config.category_ids, c.category_ids);
  EXPECT_EQ(loaded.config.classes, c.classes);
  EXPECT_EQ(loaded.config.CategoryId(2), 40);

  // Saving a model without names or map over it leaves neither behind.
  ModelConfig plain = c;
  plain.classes.clear();
  plain.category_ids.clear();
  SaveModelDir(dir, plain, *model);
  EXPECT_FALSE(fs::exists(dir + "/labels.txt"));
  LoadedModel reloaded = LoadModelDir(dir);
  EXPECT_TRUE(reloaded.config.category_ids.empty());
  EXPECT_TRUE(reloaded.config.classes.empty());
  EXPECT_EQ(reloaded.config.CategoryId(2), 2);
  fs::remove_all(dir);
}

TEST(ConfigTest, MissingOrInvalidFileIsAnError) {
  EXPECT_THROW(ModelConfig::FromFile("/nonexistent/config.json"), std::invalid_argument);
  const std::string path = testing::TempDir() + "/bad_config.json";
  std::ofstream(path) << "{ not json";
  try {
    ModelConfig::FromFile(path);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("not valid JSON"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lpdetr

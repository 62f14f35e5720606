#include "model/config.h"
#include "model/layers.h"
#include "tests/test_paths.h"

#include <cstdlib>
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

// The embedded default model, models/lp-detr-shapes (written by
// scripts/train_default_model.sh): its files are complete (config with the
// six shape classes, fp16 weights of at most 25 MB, labels, metrics.json with
// the test split's COCO stats, loss_curve.png, alpha.png); the build copies it
// where the binaries look for it (bin/../share/lpdetr/models) byte for byte;
// and on its test split, regenerated here from the size and seed that
// metrics.json records, it reaches at least the recorded AP minus 0.02 (the
// margin covers float rounding between CPUs' kernel paths, not sampling: it
// is the same images).
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "model/default_model.h"
#include "model/model_dir.h"
#include "model/safetensors.h"
#include "tests/test_paths.h"
#include "train/coco_eval.h"
#include "train/evaluate.h"
#include "train/shapes.h"

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path SourceModelDir() {
  return fs::path(testing_paths::SourceDir()) / "models" / kDefaultModelName;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json ReadJson(const fs::path& path) { return json::parse(ReadFile(path)); }

TEST(DefaultModel, FilesAreCompleteAndSmall) {
  const fs::path dir = SourceModelDir();
  ASSERT_TRUE(fs::is_regular_file(dir / "config.json")) << dir;
  const json config = ReadJson(dir / "config.json");
  EXPECT_EQ(config.at("name"), "lp-detr-shapes");
  EXPECT_EQ(config.at("classes"),
            json({"circle", "rectangle", "triangle", "star", "hexagon", "cross"}));
  EXPECT_EQ(config.at("category_ids"), json({1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(config.at("relation").at("variant"), "lp-detr");
  EXPECT_GT(config.at("relation").at("heads").get<int>(), 0);

  const fs::path weights = dir / "weights.safetensors";
  EXPECT_LE(fs::file_size(weights), 25u * 1000 * 1000);
  const SafetensorsContents contents = ReadSafetensors(weights.string());
  int64_t floats = 0;
  for (const auto& [name, t] : contents.tensors) {
    if (!t.is_floating_point()) continue;
    EXPECT_EQ(t.scalar_type(), at::kHalf) << name;
    ++floats;
  }
  EXPECT_GT(floats, 100);

  for (const char* png : {"loss_curve.png", "alpha.png"}) {
    const cv::Mat image = cv::imread((dir / png).string());
    EXPECT_FALSE(image.empty()) << png;
    EXPECT_GE(image.cols, 200) << png;
  }
  const json metrics = ReadJson(dir / "metrics.json");
  for (const char* key : {"AP", "AP50", "AP75", "APs", "APm", "APl"}) {
    ASSERT_TRUE(metrics.at("test").contains(key)) << key;
    EXPECT_GE(metrics.at("test").at(key).get<double>(), 0.0) << key;
  }
  EXPECT_GT(metrics.at("test_split").at("images").get<int64_t>(), 0);
}

TEST(DefaultModel, TheBuildCopyIsWhereTheBinariesLook) {
  const fs::path bin = testing_paths::BinDir();
  const std::vector<std::string> candidates =
      DefaultModelCandidates((bin / "lpdetr-server").string());
  ASSERT_FALSE(candidates.empty());
  const fs::path copy = candidates.front();
  ASSERT_TRUE(fs::is_regular_file(copy / "config.json")) << copy;
  for (const char* file : {"config.json", "weights.safetensors", "labels.txt", "metrics.json"}) {
    EXPECT_EQ(ReadFile(copy / file), ReadFile(SourceModelDir() / file)) << file;
  }
  // The second candidate is the source tree's copy for a build/bin binary.
  const std::vector<std::string> from_source_build =
      DefaultModelCandidates((SourceModelDir() / ".." / ".." / "build" / "bin" / "x").string());
  EXPECT_EQ(fs::path(from_source_build[1]), SourceModelDir().lexically_normal());
}

TEST(DefaultModel, ReachesItsRecordedTestAp) {
  const fs::path dir = SourceModelDir();
  const json metrics = ReadJson(dir / "metrics.json");
  const json& split = metrics.at("test_split");
  ShapesOptions options;
  options.num_images = split.at("images").get<int64_t>();
  options.seed = split.at("seed").get<uint64_t>();
  const fs::path data = fs::path(::testing::TempDir()) / "default_model_test_split";
  fs::remove_all(data);
  WriteShapesDataset(data.string(), options);

  LoadedModel loaded = LoadModelDir(dir.string());
  EvaluateOptions eval;
  eval.batch_size = 4;
  const CocoEvalResult result =
      EvaluateOnDataset(loaded.model, loaded.config, loaded.config.category_ids,
                        (data / "annotations.json").string(), (data / "images").string(), eval);
  const double recorded = metrics.at("test").at("AP").get<double>();
  std::cout << "test split (" << options.num_images << " images, seed " << options.seed
            << "): AP " << result.stats[0] << " AP50 " << result.stats[1] << ", recorded AP "
            << recorded << std::endl;
  EXPECT_GE(result.ap(), recorded - 0.02);
  fs::remove_all(data);
}

}  // namespace
}  // namespace lpdetr::train

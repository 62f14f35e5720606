// The embedded default model, models/lp-detr-shapes (written by
// scripts/train_default_model.sh): its files are complete (config with the
// six shape classes, fp16 weights of at most 25 MB, labels, metrics.json with
// the test split's COCO stats, loss_curve.png, alpha.png); the build copies it
// where the binaries look for it (bin/../share/lpdetr/models) byte for byte;
// and on its test split, regenerated here from the size and seed that
// metrics.json records, it reaches at least the recorded AP minus 0.02 (the
// margin covers float rounding between CPUs' kernel paths, not sampling: it
// is the same images).
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "model/default_model.h"
#include "model/model_dir.h"
#include "model/precision.h"
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

// The test split regenerated from metrics.json's size and seed, once for the
// tests that evaluate on it.
class DefaultModelTestSplit : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const json metrics = ReadJson(SourceModelDir() / "metrics.json");
    const json& split = metrics.at("test_split");
    options_.num_images = split.at("images").get<int64_t>();
    options_.seed = split.at("seed").get<uint64_t>();
    recorded_ap_ = metrics.at("test").at("AP").get<double>();
    // One directory per process: ctest runs each test in its own, maybe at once.
    data_ = fs::path(::testing::TempDir()) /
            ("default_model_test_split." + std::to_string(::getpid()));
    fs::remove_all(data_);
    WriteShapesDataset(data_.string(), options_);
  }
  static void TearDownTestSuite() { fs::remove_all(data_); }

  // The model's COCO stats on the split in `precision` (its detections in `dets`).
  static CocoEvalResult Evaluate(LoadedModel& loaded, Precision precision,
                                 std::vector<CocoDetection>* dets = nullptr) {
    EvaluateOptions eval;
    eval.batch_size = 4;
    SetComputePrecision(precision);
    const CocoEvalResult result = EvaluateOnDataset(
        loaded.model, loaded.config, loaded.config.category_ids,
        (data_ / "annotations.json").string(), (data_ / "images").string(), eval, dets);
    SetComputePrecision(Precision::kFp32);
    return result;
  }

  static ShapesOptions options_;
  static double recorded_ap_;
  static fs::path data_;
};

ShapesOptions DefaultModelTestSplit::options_;
double DefaultModelTestSplit::recorded_ap_ = 0;
fs::path DefaultModelTestSplit::data_;

TEST_F(DefaultModelTestSplit, ReachesItsRecordedTestAp) {
  LoadedModel loaded = LoadModelDir(SourceModelDir().string());
  const CocoEvalResult result = Evaluate(loaded, Precision::kFp32);
  std::cout << "test split (" << options_.num_images << " images, seed " << options_.seed
            << "): AP " << result.stats[0] << " AP50 " << result.stats[1] << ", recorded AP "
            << recorded_ap_ << std::endl;
  EXPECT_GE(result.ap(), recorded_ap_ - 0.02);
}

// How many of `ref`'s detections `other` reproduces: same image and
// category, every box coordinate within `tol` of `image_side` pixels and
// the score within `tol`; each of `other`'s detections matches once.
int64_t SharedDetections(const std::vector<CocoDetection>& ref,
                         const std::vector<CocoDetection>& other,
                         double image_side, double tol) {
  std::map<int64_t, std::vector<size_t>> by_image;
  for (size_t j = 0; j < other.size(); ++j) by_image[other[j].image_id].push_back(j);
  std::vector<bool> used(other.size(), false);
  int64_t shared = 0;
  for (const CocoDetection& r : ref) {
    const double px = tol * image_side;
    for (size_t j : by_image[r.image_id]) {
      const CocoDetection& o = other[j];
      if (used[j] || o.category_id != r.category_id || std::abs(o.score - r.score) > tol) continue;
      // [x, y, w, h] -> corners
      const double a[4] = {r.bbox[0], r.bbox[1], r.bbox[0] + r.bbox[2], r.bbox[1] + r.bbox[3]};
      const double b[4] = {o.bbox[0], o.bbox[1], o.bbox[0] + o.bbox[2], o.bbox[1] + o.bbox[3]};
      bool close = true;
      for (int k = 0; k < 4; ++k) close = close && std::abs(a[k] - b[k]) <= px;
      if (!close) continue;
      used[j] = true;
      ++shared;
      break;
    }
  }
  return shared;
}

// bf16 inference (model/precision.h) against fp32 on the whole test split:
// AP within 0.005; reported: how many of fp32's detections (the model's top
// 100 per image) have a bf16 twin: same class, box corners within 2e-2 of the
// largest image side and score within 2e-2. Needs a CPU with native bf16: elsewhere
// oneDNN emulates it, many times slower than fp32.
TEST_F(DefaultModelTestSplit, Bf16MatchesFp32) {
  const CpuBf16Support cpu = DetectCpuBf16();
  if (!cpu.any()) GTEST_SKIP() << "this CPU has neither AMX-BF16 nor AVX512-BF16";
  LoadedModel loaded = LoadModelDir(SourceModelDir().string());
  std::vector<CocoDetection> fp32_dets, bf16_dets;
  const CocoEvalResult fp32 = Evaluate(loaded, Precision::kFp32, &fp32_dets);
  const CocoEvalResult bf16 = Evaluate(loaded, Precision::kBf16, &bf16_dets);
  // Box tolerance in pixels: 2e-2 of the largest side a split image can have.
  const double side = options_.max_size;
  const int64_t shared = SharedDetections(fp32_dets, bf16_dets, side, 2e-2);
  const double fraction = static_cast<double>(shared) / static_cast<double>(fp32_dets.size());
  std::cout << "CPU bf16 " << cpu.Describe() << ": AP fp32 " << fp32.ap() << " bf16 " << bf16.ap()
            << " (AP50 " << fp32.stats[1] << " / " << bf16.stats[1] << "); " << shared << " of "
            << fp32_dets.size() << " fp32 detections shared (" << fraction << ")" << std::endl;
  ASSERT_FALSE(fp32_dets.empty());
  EXPECT_GE(bf16.ap(), fp32.ap() - 0.005);
  // Reported, not asserted yet: over all 100 detections per image, most of
  // them low-score, 68% were shared on AMD EPYC (Zen 4, AVX512-BF16).
  (void)fraction;
}

}  // namespace
}  // namespace lpdetr::train

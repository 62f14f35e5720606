// Model evaluation on a COCO dataset (train/evaluate.h) and `lpdetr-train
// eval --model`, with the converted fixture model lp-detr-tiny (ctest fixture
// convert_fixture_models) on small datasets the tests write into their temp
// dir (PNGs drawn with OpenCV, annotations with sparse category ids).
//
// Checked: the COCO results fields, num_select detections per image in
// decreasing score, boxes inside the image; the label -> category id map;
// boxes in the original image's pixels (the same constant image at two sizes
// gives boxes scaled by the size ratio, and the top detection equals the one
// computed from the raw model outputs scaled by width and height); the
// model's per-module modes restored after a run and after an error; missing,
// undecodable and wrongly sized images as errors naming the file; the same
// detections with batch size 1 and 3 (within 1e-4 on a well-conditioned
// model; on the chaotic fixture model, the same up to float noise, see
// WellConditionedModel); max_images and the progress callback;
// AP close to 1 against ground truth made of the model's own confident
// detections (library and command line); both command-line forms, --help and
// usage errors.
//
// Inference runs at min_size 160 / max_size 256 to keep the tests fast.
#include "train/evaluate.h"

#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "model/config.h"
#include "model/detector.h"
#include "model/model_dir.h"
#include "tests/test_paths.h"
#include "train/coco_eval.h"

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int kMinSize = 160;
constexpr int kMaxSize = 256;
constexpr double kTol = 1e-4;

const char* const kStatKeys[] = {"AP",  "AP50", "AP75",  "APs", "APm", "APl",
                                 "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};

fs::path TinyModelDir() { return fs::path(testing_paths::TestModelsDir()) / "lp-detr-tiny"; }

std::string Quote(const fs::path& p) { return "'" + p.string() + "'"; }

std::string ReadText(const fs::path& path) {
  std::ifstream in(path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The map used by the tests: label l -> category id 1000 + 7 l.
std::vector<int64_t> SparseCategoryIds(int num_classes) {
  std::vector<int64_t> ids;
  for (int l = 0; l < num_classes; ++l) ids.push_back(1000 + 7 * l);
  return ids;
}

// Detections grouped by image id, in output order.
std::map<int64_t, std::vector<json>> ByImage(const json& dets) {
  std::map<int64_t, std::vector<json>> out;
  for (const auto& d : dets) out[d.at("image_id").get<int64_t>()].push_back(d);
  return out;
}

// One image of a synthetic dataset.
struct SyntheticImage {
  int64_t id;
  std::string file_name;
  int height, width;
};

// Four images of different sizes, ids not in file order.
const std::vector<SyntheticImage> kImages = {
    {11, "a.png", 64, 96}, {5, "b.png", 80, 60}, {42, "c.png", 90, 120}, {7, "d.png", 72, 72}};

// The fixture model's weights were perturbed (random frozen batch-norm
// statistics) until its decoder is chaotic: an input change of 1e-7 moves its
// logits by ~1e-2. Comparisons of two numerically different runs (batch sizes,
// processes) at 1e-4 therefore use this model instead: the fixture's
// architecture with weights drawn at 0.5 / sqrt(fan in), which gives the same
// outputs to ~1e-6 under such noise.
LpDetr WellConditionedModel(const ModelConfig& config, uint64_t seed) {
  at::manual_seed(seed);
  LpDetr model(config);
  at::NoGradGuard no_grad;
  for (auto& p : model->parameters()) {
    if (p.dim() >= 2) p.normal_(0, 0.5 / std::sqrt(static_cast<double>(p.size(1))));
  }
  model->eval();
  return model;
}

class EvaluateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(TinyModelDir() / "weights.safetensors"))
        << "converted model missing (ctest fixture convert_fixture_models): " << TinyModelDir();
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / "evaluate_test" / info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "images");
    loaded_ = LoadModelDir(TinyModelDir().string());
    config_ = loaded_.config;
    config_.min_size = kMinSize;
    config_.max_size = kMaxSize;
  }

  std::string ImageDir() const { return (dir_ / "images").string(); }

  // Gradient background with two filled rectangles, different per image.
  void DrawImage(const SyntheticImage& im) {
    cv::Mat bgr(im.height, im.width, CV_8UC3);
    for (int y = 0; y < im.height; ++y) {
      for (int x = 0; x < im.width; ++x) {
        bgr.at<cv::Vec3b>(y, x) =
            cv::Vec3b(static_cast<uint8_t>(2 * x + im.id), static_cast<uint8_t>(3 * y), 90);
      }
    }
    cv::rectangle(bgr, cv::Rect(4, 6, im.width / 3, im.height / 2), cv::Scalar(0, 0, 230),
                  cv::FILLED);
    cv::rectangle(bgr, cv::Rect(im.width / 2, im.height / 3, im.width / 3, im.height / 2),
                  cv::Scalar(20, 200, 20), cv::FILLED);
    ASSERT_TRUE(cv::imwrite((dir_ / "images" / im.file_name).string(), bgr));
  }

  // The `images` entries of `images` (with width and height).
  static json ImagesJson(const std::vector<SyntheticImage>& images) {
    json out = json::array();
    for (const auto& im : images) {
      out.push_back(
          {{"id", im.id}, {"file_name", im.file_name}, {"width", im.width}, {"height", im.height}});
    }
    return out;
  }

  // Draws the images and writes annotations (the two rectangles of each,
  // categories 250 and 3; category 17 has none).
  std::string WriteDataset(const std::vector<SyntheticImage>& images = kImages) {
    for (const auto& im : images) DrawImage(im);
    json anns = json::array();
    int64_t ann_id = 1;
    for (const auto& im : images) {
      const double w = im.width / 3, h = im.height / 2;
      anns.push_back({{"id", ann_id++},
                      {"image_id", im.id},
                      {"category_id", 250},
                      {"bbox", {4, 6, w, h}},
                      {"area", w * h},
                      {"iscrowd", 0}});
      anns.push_back({{"id", ann_id++},
                      {"image_id", im.id},
                      {"category_id", 3},
                      {"bbox", {im.width / 2, im.height / 3, w, h}},
                      {"area", w * h},
                      {"iscrowd", 0}});
    }
    return WriteJson("instances.json", {{"images", ImagesJson(images)},
                                        {"categories",
                                         {{{"id", 250}, {"name", "red"}},
                                          {{"id", 3}, {"name", "green"}},
                                          {{"id", 17}, {"name", "unused"}}}},
                                        {"annotations", anns}});
  }

  std::string WriteJson(const std::string& name, const json& j) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path) << j.dump();
    return path;
  }

  // Ground truth made of the detections scoring at least the `count`-th
  // highest score (lower where an image's best detection scores less, so that
  // every image has one): each becomes a box of its category. One threshold
  // for all images puts every such detection before all others in the
  // ranking, so AP is 1 when the detections are run again in the same frame.
  json SelfGroundTruth(const json& dets, const std::vector<SyntheticImage>& images, size_t count) {
    std::vector<double> scores;
    for (const auto& d : dets) scores.push_back(d.at("score").get<double>());
    std::sort(scores.rbegin(), scores.rend());
    double threshold = scores.at(std::min(count, scores.size()) - 1);
    // Every image keeps at least its best detection.
    for (const auto& [image_id, list] : ByImage(dets)) {
      threshold = std::min(threshold, list.front().at("score").get<double>());
    }
    json anns = json::array();
    std::set<int64_t> cats;
    int64_t ann_id = 1;
    for (const auto& d : dets) {
      if (d.at("score").get<double>() < threshold) continue;
      const auto& b = d.at("bbox");
      anns.push_back({{"id", ann_id++},
                      {"image_id", d.at("image_id")},
                      {"category_id", d.at("category_id")},
                      {"bbox", b},
                      {"area", b[2].get<double>() * b[3].get<double>()},
                      {"iscrowd", 0}});
      cats.insert(d.at("category_id").get<int64_t>());
    }
    json categories = json::array();
    for (int64_t c : cats) categories.push_back({{"id", c}, {"name", "c" + std::to_string(c)}});
    return {{"images", ImagesJson(images)}, {"categories", categories}, {"annotations", anns}};
  }

  // A copy of the fixture model whose config.json has the test's inference
  // sizes and `extra` keys.
  fs::path SmallModelDir(const json& extra = json::object()) {
    const fs::path out = dir_ / "model";
    fs::create_directories(out);
    fs::copy_file(TinyModelDir() / "weights.safetensors", out / "weights.safetensors",
                  fs::copy_options::overwrite_existing);
    WriteConfig(out, json::parse(ReadText(TinyModelDir() / "config.json")), extra);
    return out;
  }

  // `model` saved as a model directory with the test's inference sizes and
  // `extra` config keys.
  fs::path SavedModelDir(const LpDetr& model, const std::string& name,
                         const json& extra = json::object()) {
    const fs::path out = dir_ / name;
    SaveModelDir(out.string(), config_, *model);
    WriteConfig(out, json::parse(ReadText(out / "config.json")), extra);
    return out;
  }

  static void WriteConfig(const fs::path& dir, json config, const json& extra) {
    config["min_size"] = kMinSize;
    config["max_size"] = kMaxSize;
    for (const auto& item : extra.items()) config[item.key()] = item.value();
    std::ofstream(dir / "config.json") << config.dump(2);
  }

  // Runs `lpdetr-train eval ARGS`; returns the exit code.
  int RunEval(const std::string& args, std::string* out, std::string* err = nullptr) {
    const fs::path out_path = dir_ / "cli_stdout.txt", err_path = dir_ / "cli_stderr.txt";
    const std::string cmd = Quote(fs::path(testing_paths::BinDir()) / "lpdetr-train") + " eval " +
                            args + " > " + Quote(out_path) + " 2> " + Quote(err_path);
    const int status = std::system(cmd.c_str());
    if (out) *out = ReadText(out_path);
    if (err) *err = ReadText(err_path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  fs::path dir_;
  LoadedModel loaded_;
  ModelConfig config_;
};

double BoxDistance(const json& a, const json& b) {
  double m = 0;
  for (int k = 0; k < 4; ++k) {
    m = std::max(m, std::fabs(a.at("bbox")[k].get<double>() - b.at("bbox")[k].get<double>()));
  }
  return m;
}

// Every detection of `a` has one of `b` on the same image and category with
// score within `tol` and box coordinates within `box_tol` pixels, one to one
// (scores may tie, so not by index).
void ExpectSameDetections(const json& a, const json& b, double tol, double box_tol) {
  ASSERT_EQ(a.size(), b.size());
  auto by_a = ByImage(a), by_b = ByImage(b);
  ASSERT_EQ(by_a.size(), by_b.size());
  for (auto& [image_id, list_a] : by_a) {
    std::vector<json>& list_b = by_b[image_id];
    ASSERT_EQ(list_a.size(), list_b.size()) << "image " << image_id;
    std::vector<bool> used(list_b.size(), false);
    for (const auto& d : list_a) {
      bool found = false;
      for (size_t j = 0; j < list_b.size() && !found; ++j) {
        if (used[j] || list_b[j].at("category_id") != d.at("category_id")) continue;
        if (std::fabs(list_b[j].at("score").get<double>() - d.at("score").get<double>()) <= tol &&
            BoxDistance(d, list_b[j]) <= box_tol) {
          used[j] = found = true;
        }
      }
      EXPECT_TRUE(found) << "image " << image_id << ": no match for " << d.dump();
    }
  }
}

TEST_F(EvaluateTest, DetectionsAreCocoResultsInsideEachImage) {
  const std::string ann = WriteDataset();
  const json dets = DetectOnDataset(loaded_.model, config_, {}, ann, ImageDir(), {});
  ASSERT_TRUE(dets.is_array());
  EXPECT_EQ(dets.size(), kImages.size() * config_.num_select);
  const auto by_image = ByImage(dets);
  ASSERT_EQ(by_image.size(), kImages.size());
  int64_t with_area = 0;
  for (const auto& im : kImages) {
    ASSERT_TRUE(by_image.count(im.id)) << "image " << im.id;
    const auto& list = by_image.at(im.id);
    EXPECT_EQ(static_cast<int64_t>(list.size()), config_.num_select);
    double previous = 2.0;
    for (const auto& d : list) {
      std::set<std::string> keys;
      for (const auto& item : d.items()) keys.insert(item.key());
      EXPECT_EQ(keys, (std::set<std::string>{"image_id", "category_id", "bbox", "score"}));
      const int64_t cat = d.at("category_id").get<int64_t>();
      EXPECT_GE(cat, 0);
      EXPECT_LT(cat, config_.num_classes);
      const double score = d.at("score").get<double>();
      EXPECT_GE(score, 0.0);
      EXPECT_LE(score, 1.0);
      EXPECT_LE(score, previous) << "scores must decrease within an image";
      previous = score;
      const auto& b = d.at("bbox");
      ASSERT_EQ(b.size(), 4u);
      const double x = b[0], y = b[1], w = b[2], h = b[3];
      EXPECT_GE(x, 0.0);
      EXPECT_GE(y, 0.0);
      EXPECT_GE(w, 0.0);
      EXPECT_GE(h, 0.0);
      EXPECT_LE(x + w, im.width + 1e-9);
      EXPECT_LE(y + h, im.height + 1e-9);
      if (w > 1 && h > 1) ++with_area;
    }
  }
  EXPECT_GT(with_area, 0);
}

TEST_F(EvaluateTest, CategoryIdsMapLabels) {
  const std::string ann = WriteDataset();
  const json plain = DetectOnDataset(loaded_.model, config_, {}, ann, ImageDir(), {});
  const std::vector<int64_t> ids = SparseCategoryIds(config_.num_classes);
  const json mapped = DetectOnDataset(loaded_.model, config_, ids, ann, ImageDir(), {});
  ASSERT_EQ(plain.size(), mapped.size());
  for (size_t i = 0; i < plain.size(); ++i) {
    const int64_t label = plain[i].at("category_id").get<int64_t>();
    EXPECT_EQ(mapped[i].at("category_id").get<int64_t>(), 1000 + 7 * label);
    EXPECT_EQ(mapped[i].at("image_id"), plain[i].at("image_id"));
    EXPECT_EQ(mapped[i].at("score"), plain[i].at("score"));
    EXPECT_EQ(mapped[i].at("bbox"), plain[i].at("bbox"));
  }
  // A map that does not cover the classes is refused.
  EXPECT_THROW(DetectOnDataset(loaded_.model, config_, {1, 2, 3}, ann, ImageDir(), {}),
               std::invalid_argument);
}

// The same constant-colour image at 60x80 and 120x160 preprocesses to the
// same 160x213 tensor, so its boxes in original pixels differ by exactly 2x.
TEST_F(EvaluateTest, BoxesAreInOriginalPixels) {
  const std::vector<SyntheticImage> images = {{1, "small.png", 60, 80}, {2, "large.png", 120, 160}};
  for (const auto& im : images) {
    cv::Mat bgr(im.height, im.width, CV_8UC3, cv::Scalar(200, 80, 120));
    ASSERT_TRUE(cv::imwrite((dir_ / "images" / im.file_name).string(), bgr));
  }
  const std::string ann = WriteJson("instances.json", {{"images", ImagesJson(images)}});
  const json dets = DetectOnDataset(loaded_.model, config_, {}, ann, ImageDir(), {});
  auto by_image = ByImage(dets);
  const auto& small = by_image[1];
  const auto& large = by_image[2];
  ASSERT_EQ(small.size(), large.size());
  ASSERT_FALSE(small.empty());
  for (size_t i = 0; i < small.size(); ++i) {
    EXPECT_EQ(small[i].at("category_id"), large[i].at("category_id"));
    EXPECT_NEAR(small[i].at("score").get<double>(), large[i].at("score").get<double>(), 1e-6);
    for (int k = 0; k < 4; ++k) {
      EXPECT_NEAR(2 * small[i].at("bbox")[k].get<double>(), large[i].at("bbox")[k].get<double>(),
                  1e-3)
          << "detection " << i << " coordinate " << k;
    }
  }
}

// An image that needs no resize (short side = min_size): the top detection is
// the best (query, class) of the raw outputs, its cxcywh box scaled by the
// image's width (x) and height (y).
TEST_F(EvaluateTest, TopDetectionIsTheRawOutputScaledByWidthAndHeight) {
  const int height = 160, width = 224;
  const cv::Scalar bgr_colour(30, 140, 210);
  cv::Mat bgr(height, width, CV_8UC3, bgr_colour);
  ASSERT_TRUE(cv::imwrite((dir_ / "images" / "flat.png").string(), bgr));
  const std::string ann =
      WriteJson("instances.json", {{"images", ImagesJson({{9, "flat.png", height, width}})}});
  const json dets = DetectOnDataset(loaded_.model, config_, {}, ann, ImageDir(), {});
  ASSERT_FALSE(dets.empty());

  // The normalized input built here: RGB = (210, 140, 30), ImageNet mean/std.
  const float rgb[3] = {210.f, 140.f, 30.f};
  const float mean[3] = {0.485f, 0.456f, 0.406f}, stdev[3] = {0.229f, 0.224f, 0.225f};
  at::Tensor images = at::empty({1, 3, height, width});
  for (int c = 0; c < 3; ++c) images[0][c].fill_((rgb[c] / 255.f - mean[c]) / stdev[c]);
  ImageBatch batch{images, at::zeros({1, height, width}, at::kBool), {}};
  loaded_.model->eval();
  at::NoGradGuard no_grad;
  const DetectorOutput out = loaded_.model->forward(batch);
  const at::Tensor prob = out.pred_logits[0].sigmoid();  // [Q,C]
  const int64_t best = prob.flatten().argmax().item<int64_t>();
  const int64_t query = best / prob.size(1), label = best % prob.size(1);
  const at::Tensor box = out.pred_boxes[0][query].to(at::kDouble);
  const double cx = box[0].item<double>(), cy = box[1].item<double>();
  const double bw = box[2].item<double>(), bh = box[3].item<double>();
  auto clip = [](double v, double hi) { return std::min(std::max(v, 0.0), hi); };
  const double x1 = clip((cx - bw / 2) * width, width), x2 = clip((cx + bw / 2) * width, width);
  const double y1 = clip((cy - bh / 2) * height, height), y2 = clip((cy + bh / 2) * height, height);

  const json& top = dets[0];
  EXPECT_EQ(top.at("image_id").get<int64_t>(), 9);
  EXPECT_EQ(top.at("category_id").get<int64_t>(), label);
  EXPECT_NEAR(top.at("score").get<double>(), prob.max().item<double>(), 1e-5);
  EXPECT_NEAR(top.at("bbox")[0].get<double>(), x1, 1e-2);
  EXPECT_NEAR(top.at("bbox")[1].get<double>(), y1, 1e-2);
  EXPECT_NEAR(top.at("bbox")[2].get<double>(), x2 - x1, 1e-2);
  EXPECT_NEAR(top.at("bbox")[3].get<double>(), y2 - y1, 1e-2);
}

TEST_F(EvaluateTest, RestoresEveryModulesModeAfterRunAndError) {
  const std::string ann = WriteDataset();
  LpDetr& model = loaded_.model;
  model->train();
  model->backbone->eval();  // a part the training loop keeps in eval mode
  bool eval_during_run = true;
  EvaluateOptions options;
  options.max_images = 1;
  options.on_progress = [&](int64_t, int64_t) {
    eval_during_run = eval_during_run && !model->is_training() &&
                      !model->transformer->is_training() && !model->neck->is_training();
  };
  DetectOnDataset(model, config_, {}, ann, ImageDir(), options);
  EXPECT_TRUE(eval_during_run);
  EXPECT_TRUE(model->is_training());
  EXPECT_TRUE(model->transformer->is_training());
  EXPECT_TRUE(model->neck->is_training());
  EXPECT_FALSE(model->backbone->is_training());
  for (const auto& m : model->backbone->modules()) EXPECT_FALSE(m->is_training());

  // An image that cannot be decoded, after one that can: the mode comes back.
  std::ofstream(dir_ / "images" / "d.png") << "not a png";
  options.max_images = 0;
  EXPECT_THROW(DetectOnDataset(model, config_, {}, ann, ImageDir(), options), std::runtime_error);
  EXPECT_TRUE(model->is_training());
  EXPECT_TRUE(model->transformer->is_training());
  EXPECT_FALSE(model->backbone->is_training());

  // Starting in eval mode stays in eval mode.
  model->eval();
  options.max_images = 1;
  DetectOnDataset(model, config_, {}, ann, ImageDir(), options);
  EXPECT_FALSE(model->is_training());
  EXPECT_FALSE(model->transformer->is_training());
}

// Runs DetectOnDataset and returns the error message ("" when none).
std::string DetectError(LpDetr& model, const ModelConfig& config, const std::string& ann,
                        const std::string& images) {
  try {
    DetectOnDataset(model, config, {}, ann, images, {});
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST_F(EvaluateTest, BadImagesAreErrorsNamingTheFile) {
  std::vector<SyntheticImage> images = kImages;
  WriteDataset(images);

  std::vector<SyntheticImage> missing = images;
  missing.push_back({99, "absent.png", 50, 50});
  std::string ann = WriteJson("missing.json", {{"images", ImagesJson(missing)}});
  std::string message = DetectError(loaded_.model, config_, ann, ImageDir());
  EXPECT_NE(message.find("absent.png"), std::string::npos) << message;
  EXPECT_NE(message.find("99"), std::string::npos) << message;

  std::ofstream(dir_ / "images" / "garbage.png") << "this is not an image";
  std::vector<SyntheticImage> broken = images;
  broken.insert(broken.begin() + 1, {98, "garbage.png", 50, 50});
  ann = WriteJson("broken.json", {{"images", ImagesJson(broken)}});
  message = DetectError(loaded_.model, config_, ann, ImageDir());
  EXPECT_NE(message.find("garbage.png"), std::string::npos) << message;

  // The annotations' size must be the decoded size (boxes are in that frame).
  std::vector<SyntheticImage> wrong_size = images;
  wrong_size[2].width += 1;
  ann = WriteJson("wrong_size.json", {{"images", ImagesJson(wrong_size)}});
  message = DetectError(loaded_.model, config_, ann, ImageDir());
  EXPECT_NE(message.find(images[2].file_name), std::string::npos) << message;

  // Structural problems of the images list.
  ann = WriteJson("no_file_name.json", {{"images", {{{"id", 1}}}}});
  message = DetectError(loaded_.model, config_, ann, ImageDir());
  EXPECT_NE(message.find("file_name"), std::string::npos) << message;
  ann = WriteJson("twice.json", {{"images", ImagesJson({images[0], images[0]})}});
  message = DetectError(loaded_.model, config_, ann, ImageDir());
  EXPECT_NE(message.find("twice"), std::string::npos) << message;
  message = DetectError(loaded_.model, config_, (dir_ / "nothing.json").string(), ImageDir());
  EXPECT_NE(message.find("nothing.json"), std::string::npos) << message;
}

// Batch 3 (three images of different sizes, then one alone) gives every
// image the detections it gets with batch 1.
TEST_F(EvaluateTest, BatchSizeDoesNotChangeDetections) {
  const std::string ann = WriteDataset();
  LpDetr model = WellConditionedModel(config_, 5);
  const std::vector<int64_t> ids = SparseCategoryIds(config_.num_classes);
  EvaluateOptions one, three;
  three.batch_size = 3;
  const json a = DetectOnDataset(model, config_, ids, ann, ImageDir(), one);
  const json b = DetectOnDataset(model, config_, ids, ann, ImageDir(), three);
  // Scores within 1e-4, boxes within 1e-4 of the image size.
  ExpectSameDetections(a, b, kTol, kTol * 120);
}

// On the chaotic fixture model batching changes detections only as float
// noise does: batch 3 scored against ground truth made of batch 1's confident
// detections keeps a high AP (batch 1 itself: 1). Padding each image to the
// batch (the official semantics, no extents) instead gives ~0.05 here.
TEST_F(EvaluateTest, BatchSizeOnTheFixtureModelChangesOnlyNoise) {
  const std::string ann = WriteDataset();
  EvaluateOptions one, three;
  three.batch_size = 3;
  const json a = DetectOnDataset(loaded_.model, config_, {}, ann, ImageDir(), one);
  const json b = DetectOnDataset(loaded_.model, config_, {}, ann, ImageDir(), three);
  ASSERT_EQ(a.size(), b.size());
  const CocoGroundTruth gt =
      CocoGroundTruthFromJson(SelfGroundTruth(a, kImages, 50), "batch 1 detections");
  EXPECT_GT(EvaluateBbox(gt, CocoDetectionsFromJson(a, gt, "batch 1")).ap(), 0.99);
  EXPECT_GT(EvaluateBbox(gt, CocoDetectionsFromJson(b, gt, "batch 3")).ap(), 0.8);
  // The image alone in its batch is computed exactly as with batch 1.
  const auto by_a = ByImage(a), by_b = ByImage(b);
  EXPECT_EQ(by_a.at(kImages[3].id), by_b.at(kImages[3].id));
}

TEST_F(EvaluateTest, MaxImagesAndProgress) {
  const std::string ann = WriteDataset();
  std::vector<std::pair<int64_t, int64_t>> calls;
  EvaluateOptions options;
  options.max_images = 2;
  options.on_progress = [&](int64_t done, int64_t total) { calls.emplace_back(done, total); };
  const json dets = DetectOnDataset(loaded_.model, config_, {}, ann, ImageDir(), options);
  std::set<int64_t> ids;
  for (const auto& d : dets) ids.insert(d.at("image_id").get<int64_t>());
  EXPECT_EQ(ids, (std::set<int64_t>{kImages[0].id, kImages[1].id}));
  EXPECT_EQ(calls, (std::vector<std::pair<int64_t, int64_t>>{{1, 2}, {2, 2}}));

  calls.clear();
  options.max_images = 0;
  options.batch_size = 3;
  DetectOnDataset(loaded_.model, config_, {}, ann, ImageDir(), options);
  EXPECT_EQ(calls, (std::vector<std::pair<int64_t, int64_t>>{{3, 4}, {4, 4}}));

  options.batch_size = 0;
  EXPECT_THROW(DetectOnDataset(loaded_.model, config_, {}, ann, ImageDir(), options),
               std::invalid_argument);
}

TEST_F(EvaluateTest, OwnConfidentDetectionsAsGroundTruthGiveApNearOne) {
  WriteDataset();
  const std::vector<int64_t> ids = SparseCategoryIds(config_.num_classes);
  const std::string dataset = (dir_ / "instances.json").string();
  const json dets = DetectOnDataset(loaded_.model, config_, ids, dataset, ImageDir(), {});
  const json self_gt = SelfGroundTruth(dets, kImages, 12);
  const std::string ann = WriteJson("self.json", self_gt);

  std::vector<CocoDetection> evaluated;
  const CocoEvalResult result =
      EvaluateOnDataset(loaded_.model, config_, ids, ann, ImageDir(), {}, &evaluated);
  EXPECT_GT(result.stats[0], 0.99);  // AP
  EXPECT_GT(result.stats[1], 0.99);  // AP50
  EXPECT_EQ(evaluated.size(), dets.size());
  std::set<int64_t> gt_categories, result_categories;
  for (const auto& c : self_gt.at("categories")) gt_categories.insert(c.at("id").get<int64_t>());
  for (const auto& [id, ap] : result.per_category_ap) {
    result_categories.insert(id);
    EXPECT_GT(ap, 0.99) << "category " << id;
  }
  EXPECT_EQ(result_categories, gt_categories);
  // The result is the evaluation of the returned detections.
  const CocoEvalResult again = EvaluateBbox(LoadCocoGroundTruth(ann), evaluated);
  for (int s = 0; s < CocoEvalResult::kNumStats; ++s) EXPECT_EQ(again.stats[s], result.stats[s]);

  // With the wrong map the same detections miss every category.
  const CocoEvalResult unmapped =
      EvaluateOnDataset(loaded_.model, config_, {}, ann, ImageDir(), {});
  EXPECT_LT(unmapped.stats[0], 0.01);
}

// max_images: only the evaluated images' ground truth counts, so the first
// two images against ground truth from all four still give AP near 1.
TEST_F(EvaluateTest, MaxImagesEvaluatesOnlyThoseImages) {
  WriteDataset();
  const std::string dataset = (dir_ / "instances.json").string();
  const json dets = DetectOnDataset(loaded_.model, config_, {}, dataset, ImageDir(), {});
  const std::string ann = WriteJson("self.json", SelfGroundTruth(dets, kImages, 20));
  EvaluateOptions options;
  options.max_images = 2;
  const CocoEvalResult first_two =
      EvaluateOnDataset(loaded_.model, config_, {}, ann, ImageDir(), options);
  EXPECT_GT(first_two.stats[0], 0.99);
  EXPECT_GT(first_two.stats[8], 0.99);  // AR100: the other images' boxes do not count
}

// --- the command line ------------------------------------------------------

void ExpectStatsObject(const std::string& stdout_text) {
  const json result = json::parse(stdout_text);
  for (const char* key : kStatKeys) {
    ASSERT_TRUE(result.contains(key)) << key << " missing in " << stdout_text;
    EXPECT_TRUE(result.at(key).is_number()) << key;
    EXPECT_GE(result.at(key).get<double>(), -1.0);
    EXPECT_LE(result.at(key).get<double>(), 1.0);
  }
  EXPECT_TRUE(result.contains("per_category_AP"));
  EXPECT_EQ(result.size(), 13u);
}

TEST_F(EvaluateTest, CommandLineModelFormEndToEnd) {
  const std::string ann = WriteDataset();
  const fs::path model = SmallModelDir();
  const fs::path dt = dir_ / "dt.json";
  std::string out, err;
  ASSERT_EQ(
      RunEval("--model " + Quote(model) + " --annotations " + Quote(ann) + " --images " +
                  Quote(ImageDir()) + " --batch-size 2 --threads 1 --detections-out " + Quote(dt),
              &out, &err),
      0)
      << err;
  ExpectStatsObject(out);
  const json dets = json::parse(ReadText(dt));
  ASSERT_EQ(dets.size(), kImages.size() * config_.num_select);

  // The detections file form on the same files gives the same object.
  std::string from_file;
  ASSERT_EQ(RunEval("--annotations " + Quote(ann) + " --detections " + Quote(dt), &from_file, &err),
            0)
      << err;
  EXPECT_EQ(json::parse(from_file), json::parse(out));

  // Ground truth from the model's own confident detections: AP near 1 (the
  // same flags, so the same numerics as the run that wrote them).
  const std::string self = WriteJson("self.json", SelfGroundTruth(dets, kImages, 12));
  ASSERT_EQ(RunEval("--model=" + model.string() + " --annotations=" + self + " --images " +
                        Quote(ImageDir()) + " --batch-size 2 --threads=1",
                    &out, &err),
            0)
      << err;
  ExpectStatsObject(out);
  const json result = json::parse(out);
  EXPECT_GT(result.at("AP").get<double>(), 0.99) << out;
  EXPECT_GT(result.at("AP50").get<double>(), 0.99) << out;
  for (const auto& item : result.at("per_category_AP").items()) {
    EXPECT_GT(item.value().get<double>(), 0.99) << "category " << item.key();
  }

  // --max-images 1: one image's detections written.
  ASSERT_EQ(RunEval("--model " + Quote(model) + " --annotations " + Quote(ann) + " --images " +
                        Quote(ImageDir()) + " --max-images 1 --detections-out " + Quote(dt),
                    &out, &err),
            0)
      << err;
  const json one = json::parse(ReadText(dt));
  ASSERT_EQ(one.size(), static_cast<size_t>(config_.num_select));
  EXPECT_EQ(one[0].at("image_id").get<int64_t>(), kImages[0].id);
}

// The command's detections are the library's (another process, batch 2
// against batch 1, on the well-conditioned model).
TEST_F(EvaluateTest, CommandLineDetectionsAreTheLibrarys) {
  const std::string ann = WriteDataset();
  LpDetr model = WellConditionedModel(config_, 8);
  const fs::path dir = SavedModelDir(model, "saved");
  const fs::path dt = dir_ / "dt.json";
  std::string out, err;
  ASSERT_EQ(RunEval("--model " + Quote(dir) + " --annotations " + Quote(ann) + " --images " +
                        Quote(ImageDir()) + " --batch-size 2 --detections-out " + Quote(dt),
                    &out, &err),
            0)
      << err;
  ExpectStatsObject(out);
  ExpectSameDetections(json::parse(ReadText(dt)),
                       DetectOnDataset(model, config_, {}, ann, ImageDir(), {}), kTol, kTol * 120);
}

// config.json's category_ids (label -> dataset id) maps the detections, once
// the model directory format carries the key.
TEST_F(EvaluateTest, CommandLineUsesConfigCategoryIds) {
  const std::vector<int64_t> ids = SparseCategoryIds(config_.num_classes);
  json with_ids = config_.ToJson();
  with_ids["category_ids"] = ids;
  try {
    ModelConfig::FromJson(with_ids);
  } catch (const std::invalid_argument& e) {
    GTEST_SKIP() << "ModelConfig does not accept category_ids yet: " << e.what();
  }
  const std::string ann = WriteDataset();
  LpDetr model = WellConditionedModel(config_, 9);
  const fs::path dir = SavedModelDir(model, "saved", {{"category_ids", ids}});
  const fs::path dt = dir_ / "dt.json";
  std::string out, err;
  ASSERT_EQ(RunEval("--model " + Quote(dir) + " --annotations " + Quote(ann) + " --images " +
                        Quote(ImageDir()) + " --detections-out " + Quote(dt),
                    &out, &err),
            0)
      << err;
  ExpectStatsObject(out);
  const json dets = json::parse(ReadText(dt));
  for (const auto& d : dets) {
    const int64_t id = d.at("category_id").get<int64_t>();
    EXPECT_TRUE(id >= 1000 && (id - 1000) % 7 == 0 && id < 1000 + 7 * config_.num_classes) << id;
  }
  ExpectSameDetections(dets, DetectOnDataset(model, config_, ids, ann, ImageDir(), {}), kTol,
                       kTol * 120);
}

TEST_F(EvaluateTest, CommandLineErrors) {
  const std::string ann = WriteDataset();
  const fs::path model = SmallModelDir();
  const std::string base = "--model " + Quote(model) + " --annotations " + Quote(ann);
  std::string out, err;

  ASSERT_EQ(RunEval("--help", &out, &err), 0);
  for (const char* flag : {"--detections", "--model", "--images", "--batch-size", "--threads",
                           "--detections-out", "--max-images"}) {
    EXPECT_NE(out.find(flag), std::string::npos) << flag << " not in --help";
  }

  EXPECT_EQ(RunEval(base, &out, &err), 2);
  EXPECT_NE(err.find("--images"), std::string::npos) << err;
  EXPECT_EQ(RunEval("--images " + Quote(ImageDir()) + " --annotations " + Quote(ann), &out, &err),
            2);
  EXPECT_NE(err.find("--model"), std::string::npos) << err;
  EXPECT_EQ(
      RunEval(base + " --images " + Quote(ImageDir()) + " --detections " + Quote(ann), &out, &err),
      2);
  EXPECT_NE(err.find("--detections"), std::string::npos) << err;
  EXPECT_EQ(RunEval(base + " --images " + Quote(ImageDir()) + " --batch-size 0", &out, &err), 2);
  EXPECT_NE(err.find("--batch-size"), std::string::npos) << err;
  EXPECT_EQ(RunEval(base + " --images " + Quote(ImageDir()) + " --max-images -1", &out, &err), 2);
  EXPECT_EQ(RunEval(base + " --images " + Quote(ImageDir()) + " --threads x", &out, &err), 2);
  EXPECT_EQ(
      RunEval(base + " --images " + Quote(ImageDir()) + " --model " + Quote(model), &out, &err), 2);
  EXPECT_NE(err.find("twice"), std::string::npos) << err;
  // Model-form flags need --model.
  EXPECT_EQ(
      RunEval("--annotations " + Quote(ann) + " --detections " + Quote(ann) + " --batch-size 2",
              &out, &err),
      2);

  // A missing image: exit 1, the file named, nothing on stdout.
  fs::remove(dir_ / "images" / kImages[3].file_name);
  EXPECT_EQ(RunEval(base + " --images " + Quote(ImageDir()), &out, &err), 1);
  EXPECT_NE(err.find(kImages[3].file_name), std::string::npos) << err;
  EXPECT_TRUE(out.empty()) << out;
  // A model directory that does not exist.
  EXPECT_EQ(RunEval("--model " + Quote(dir_ / "no_model") + " --annotations " + Quote(ann) +
                        " --images " + Quote(ImageDir()),
                    &out, &err),
            1);
  EXPECT_NE(err.find("no_model"), std::string::npos) << err;
}

}  // namespace
}  // namespace lpdetr::train

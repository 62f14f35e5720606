// CocoTrainDataset on small datasets the tests write into their temp dir
// (images drawn with OpenCV): category remapping, the crowd / clipping /
// degenerate rules and their counts, every structural problem, image
// loading, TrainTarget values.
#include "train/coco_dataset.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

class CocoDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / "coco_dataset_test" / info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "images");
  }

  // A `width` x `height` BGR image: blue background, a red square top left.
  void WriteImage(const std::string& name, int width, int height) {
    cv::Mat bgr(height, width, CV_8UC3, cv::Scalar(255, 0, 0));
    cv::rectangle(bgr, cv::Rect(0, 0, 4, 4), cv::Scalar(0, 0, 255), cv::FILLED);
    ASSERT_TRUE(cv::imwrite((dir_ / "images" / name).string(), bgr));
  }

  std::string WriteJson(const json& j) { return WriteText(j.dump()); }
  std::string WriteText(const std::string& text) {
    const std::string path = (dir_ / "instances.json").string();
    std::ofstream(path) << text;
    return path;
  }
  std::string ImageDir() const { return (dir_ / "images").string(); }

  // Two images (ids 5 and 2, files on disk) and categories 7, 3, 90 in that
  // order; no annotations.
  json Base() {
    WriteImage("a.png", 100, 50);
    WriteImage("b.jpg", 60, 40);
    return json{{"images",
                 {{{"id", 5}, {"file_name", "a.png"}, {"width", 100}, {"height", 50}},
                  {{"id", 2}, {"file_name", "b.jpg"}, {"width", 60}, {"height", 40}}}},
                {"categories",
                 {{{"id", 7}, {"name", "seven"}},
                  {{"id", 3}, {"name", "three"}},
                  {{"id", 90}, {"name", "ninety"}}}},
                {"annotations", json::array()}};
  }

  static json Ann(int64_t image_id, int64_t category_id, std::vector<double> bbox) {
    return json{{"id", 1}, {"image_id", image_id}, {"category_id", category_id}, {"bbox", bbox},
                {"area", 1.0}, {"iscrowd", 0}};
  }

  // The problems construction reports for `j`; fails the test if it succeeds.
  std::vector<std::string> Problems(const json& j, std::string* message = nullptr) {
    return ProblemsOf(WriteJson(j), ImageDir(), message);
  }
  static std::vector<std::string> ProblemsOf(const std::string& path, const std::string& images,
                                             std::string* message = nullptr) {
    try {
      CocoTrainDataset dataset(path, images);
    } catch (const CocoDatasetError& e) {
      if (message) *message = e.what();
      return e.problems();
    }
    ADD_FAILURE() << "no CocoDatasetError for " << path;
    return {};
  }

  fs::path dir_;
};

bool Contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(CategoryMapTest, SparseUnorderedIdsMapToSortedLabelsAndBack) {
  const CategoryMap map({7, 3, 90}, {"seven", "three", "ninety"});
  EXPECT_EQ(map.num_classes(), 3);
  EXPECT_EQ(map.category_ids(), (std::vector<int64_t>{3, 7, 90}));
  EXPECT_EQ(map.names(), (std::vector<std::string>{"three", "seven", "ninety"}));
  const std::vector<int64_t> ids = {7, 3, 90};
  const std::vector<int64_t> labels = {1, 0, 2};
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(map.LabelOf(ids[i]), labels[i]);
    EXPECT_EQ(map.CategoryIdOf(labels[i]), ids[i]);
    EXPECT_TRUE(map.HasCategory(ids[i]));
  }
  // What a model directory stores (ids in label order + names) rebuilds it.
  EXPECT_EQ(CategoryMap(map.category_ids(), map.names()), map);
  EXPECT_FALSE(map.HasCategory(4));
  EXPECT_THROW(map.LabelOf(4), std::out_of_range);
  EXPECT_THROW(map.CategoryIdOf(3), std::out_of_range);
  EXPECT_THROW(map.CategoryIdOf(-1), std::out_of_range);
  EXPECT_THROW(CategoryMap({1, 2, 1}, {"a", "b", "c"}), std::invalid_argument);
  EXPECT_THROW(CategoryMap({1, 2}, {"a"}), std::invalid_argument);
}

TEST_F(CocoDatasetTest, LabelsFollowSortedCategoryIdsAndImagesSortById) {
  json j = Base();
  j["annotations"] = {Ann(5, 90, {1, 1, 10, 10}), Ann(5, 7, {2, 2, 10, 10}),
                      Ann(2, 3, {3, 3, 10, 10})};
  const CocoTrainDataset d(WriteJson(j), ImageDir());
  EXPECT_EQ(d.categories().category_ids(), (std::vector<int64_t>{3, 7, 90}));
  EXPECT_EQ(d.categories().names(), (std::vector<std::string>{"three", "seven", "ninety"}));
  ASSERT_EQ(d.size(), 2);
  EXPECT_EQ(d.image(0).id, 2);
  EXPECT_EQ(d.image(1).id, 5);
  EXPECT_EQ(d.IndexOf(5), 1);
  EXPECT_EQ(d.IndexOf(6), -1);
  EXPECT_EQ(d.image(0).file_name, "b.jpg");
  EXPECT_EQ(d.image(0).path, (fs::path(ImageDir()) / "b.jpg").string());
  EXPECT_EQ(d.image(1).width, 100);
  EXPECT_EQ(d.image(1).height, 50);
  EXPECT_EQ(d.image(0).targets.labels, (std::vector<int64_t>{0}));
  EXPECT_EQ(d.image(1).targets.labels, (std::vector<int64_t>{2, 1}));  // file order
  for (int64_t i = 0; i < d.size(); ++i) {
    for (int64_t label : d.image(i).targets.labels) {
      EXPECT_TRUE(d.categories().HasCategory(d.categories().CategoryIdOf(label)));
    }
  }
  EXPECT_THROW(d.image(2), std::out_of_range);
}

TEST_F(CocoDatasetTest, CrowdSkippedBoxesClippedAndDegenerateDroppedAreCounted) {
  json j = Base();
  json crowd = Ann(5, 3, {10, 10, 5, 5});
  crowd["iscrowd"] = 1;
  json crowd_bool = Ann(5, 3, {10, 10, 5, 5});
  crowd_bool["iscrowd"] = true;
  json no_crowd_key = Ann(2, 3, {1, 2, 3, 4});
  no_crowd_key.erase("iscrowd");
  j["annotations"] = {
      Ann(5, 3, {-10, 5, 30, 10}),   // x1 clipped: [0, 5, 20, 15]
      Ann(5, 7, {90, 40, 20, 20}),   // x2, y2 clipped: [90, 40, 100, 50]
      Ann(5, 7, {10, 10, 0, 5}),     // zero width: dropped
      Ann(5, 7, {120, 10, 10, 10}),  // right of the image: x1 = x2 = 100, dropped
      Ann(5, 90, {10, 10, 5, 5}),    // inside: kept as is
      crowd, crowd_bool, no_crowd_key};
  const CocoTrainDataset d(WriteJson(j), ImageDir());
  const CocoImage& a = d.image(d.IndexOf(5));
  using Box = std::array<float, 4>;
  ASSERT_EQ(a.targets.boxes_xyxy.size(), 3u);
  EXPECT_EQ(a.targets.boxes_xyxy[0], (Box{0, 5, 20, 15}));
  EXPECT_EQ(a.targets.boxes_xyxy[1], (Box{90, 40, 100, 50}));
  EXPECT_EQ(a.targets.boxes_xyxy[2], (Box{10, 10, 15, 15}));
  EXPECT_EQ(a.targets.labels, (std::vector<int64_t>{0, 1, 2}));
  const CocoImage& b = d.image(d.IndexOf(2));
  ASSERT_EQ(b.targets.boxes_xyxy.size(), 1u);  // no iscrowd key: trained on
  EXPECT_EQ(b.targets.boxes_xyxy[0], (Box{1, 2, 4, 6}));

  const CocoDatasetStats& s = d.stats();
  EXPECT_EQ(s.images, 2);
  EXPECT_EQ(s.categories, 3);
  EXPECT_EQ(s.annotations, 8);
  EXPECT_EQ(s.used, 4);
  EXPECT_EQ(s.crowd_skipped, 2);
  EXPECT_EQ(s.clipped, 2);
  EXPECT_EQ(s.dropped_degenerate, 2);
  EXPECT_EQ(s.Summary(),
            "2 images, 3 categories, 8 annotations: 4 used (2 clipped to the image), "
            "2 crowd skipped, 2 degenerate after clipping dropped");
}

TEST_F(CocoDatasetTest, ImagesWithoutAnnotationsAreKeptWithEmptyTargets) {
  const CocoTrainDataset d(WriteJson(Base()), ImageDir());
  ASSERT_EQ(d.size(), 2);
  const TrainTarget t = d.Target(0);
  EXPECT_EQ(t.labels.sizes(), (std::vector<int64_t>{0}));
  EXPECT_EQ(t.boxes.sizes(), (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(t.labels.scalar_type(), at::kLong);
  EXPECT_EQ(t.boxes.scalar_type(), at::kFloat);
}

// One broken thing at a time: exactly one problem, with its message.
TEST_F(CocoDatasetTest, EachStructuralProblemIsNamed) {
  struct Case {
    std::string name;
    std::function<void(json&)> mutate;
    std::string expected;
  };
  const std::vector<Case> cases = {
      {"missing key", [](json& j) { j["images"][0].erase("file_name"); },
       "images[0]: missing key \"file_name\""},
      {"width type", [](json& j) { j["images"][1]["width"] = "abc"; },
       "images[1].width: must be a positive integer, got \"abc\""},
      {"zero height", [](json& j) { j["images"][1]["height"] = 0; },
       "images[1].height: must be a positive integer, got 0"},
      {"id type", [](json& j) { j["categories"][2]["id"] = 1.5; },
       "categories[2].id: must be an integer, got 1.5"},
      {"name missing", [](json& j) { j["categories"][0].erase("name"); },
       "categories[0]: missing key \"name\""},
      {"entry not object", [](json& j) { j["categories"][2] = 3; },
       "categories[2]: must be an object, got 3"},
      {"bbox size", [](json& j) { j["annotations"][0]["bbox"] = {1, 2, 3}; },
       "annotations[0].bbox: must be 4 numbers [x, y, w, h], got [1,2,3]"},
      {"bbox type", [](json& j) { j["annotations"][0]["bbox"] = {1, 2, "3", 4}; },
       "annotations[0].bbox: must be 4 numbers"},
      {"image_id missing", [](json& j) { j["annotations"][0].erase("image_id"); },
       "annotations[0]: missing key \"image_id\""},
      {"iscrowd", [](json& j) { j["annotations"][0]["iscrowd"] = 2; },
       "annotations[0].iscrowd: must be 0 or 1, got 2"},
      {"unknown image", [](json& j) { j["annotations"][1]["image_id"] = 99; },
       "annotations[1].image_id: unknown image id 99"},
      {"unknown category", [](json& j) { j["annotations"][1]["category_id"] = 4; },
       "annotations[1].category_id: unknown category id 4"},
      {"negative width", [](json& j) { j["annotations"][0]["bbox"] = {1, 1, -3, 5}; },
       "annotations[0].bbox: negative width -3 in [1,1,-3,5]"},
      {"negative height", [](json& j) { j["annotations"][1]["bbox"][3] = -0.5; },
       "annotations[1].bbox: negative height -0.5"},
      {"duplicate image id",
       [](json& j) {
         j["images"][1]["id"] = 5;
         j["annotations"][1]["image_id"] = 5;
       },
       "images[1].id: duplicate image id 5 (also images[0])"},
      {"duplicate category id", [](json& j) { j["categories"][2]["id"] = 7; },
       "categories[2].id: duplicate category id 7 (also categories[0])"},
      {"missing categories", [](json& j) { j.erase("categories"); },
       "missing top-level key \"categories\""},
      {"images not array", [](json& j) { j["images"] = json::object(); },
       "images: must be an array, got {}"},
      {"no categories",
       [](json& j) {
         j["categories"] = json::array();
         j["annotations"] = json::array();
       },
       "categories: is empty"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    json j = Base();
    j["annotations"] = {Ann(5, 3, {1, 1, 5, 5}), Ann(2, 7, {1, 1, 5, 5})};
    c.mutate(j);
    std::string message;
    const std::vector<std::string> problems = Problems(j, &message);
    ASSERT_EQ(problems.size(), 1u) << message;
    EXPECT_TRUE(Contains(problems[0], c.expected)) << problems[0];
    EXPECT_TRUE(Contains(message, c.expected)) << message;
    EXPECT_TRUE(Contains(message, (dir_ / "instances.json").string())) << message;
    EXPECT_TRUE(Contains(message, "1 problem in the COCO annotations")) << message;
  }
}

TEST_F(CocoDatasetTest, BrokenJsonNamesTheFileAndTheParseError) {
  Base();
  const std::string path = WriteText("{\"images\": [");
  std::string message;
  const auto problems = ProblemsOf(path, ImageDir(), &message);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_TRUE(Contains(message, path)) << message;
  EXPECT_TRUE(Contains(message, "not valid JSON")) << message;
  EXPECT_TRUE(Contains(message, "parse error")) << message;

  const auto top = ProblemsOf(WriteText("[1, 2]"), ImageDir());
  ASSERT_EQ(top.size(), 1u);
  EXPECT_TRUE(Contains(top[0], "the top level must be a JSON object")) << top[0];

  const std::string absent = (dir_ / "absent.json").string();
  const auto unreadable = ProblemsOf(absent, ImageDir(), &message);
  ASSERT_EQ(unreadable.size(), 1u);
  EXPECT_TRUE(Contains(message, absent)) << message;
  EXPECT_TRUE(Contains(unreadable[0], "cannot open the file")) << unreadable[0];
}

TEST_F(CocoDatasetTest, MissingImageFileIsFoundOnDisk) {
  json j = Base();
  fs::remove(dir_ / "images" / "b.jpg");
  const auto problems = Problems(j);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0], "images[1].file_name: image file not found: " +
                             (fs::path(ImageDir()) / "b.jpg").string());

  // A folder that does not exist is one problem, not one per image.
  const auto folder = ProblemsOf(WriteJson(j), (dir_ / "nowhere").string());
  ASSERT_EQ(folder.size(), 1u);
  EXPECT_TRUE(Contains(folder[0], "image folder not found: " + (dir_ / "nowhere").string()));
}

TEST_F(CocoDatasetTest, SeveralProblemsAreAllListedWithTheCount) {
  json j = Base();
  j["images"][0].erase("width");
  j["categories"][2]["id"] = 7;
  j["annotations"] = {Ann(5, 3, {1, 1, -2, 5}), Ann(8, 3, {1, 1, 2, 5})};
  fs::remove(dir_ / "images" / "b.jpg");
  std::string message;
  const auto problems = Problems(j, &message);
  ASSERT_EQ(problems.size(), 5u) << message;
  EXPECT_TRUE(Contains(message, "5 problems in the COCO annotations:")) << message;
  for (const char* expected :
       {"images[0]: missing key \"width\"", "images[1].file_name: image file not found",
        "categories[2].id: duplicate category id 7",
        "annotations[0].bbox: negative width -2.0 in [1.0,1.0,-2.0,5.0]",
        "annotations[1].image_id: unknown image id 8"}) {
    EXPECT_TRUE(Contains(message, expected)) << expected << "\n" << message;
  }
  // An entry with other problems still defines its id: no spurious "unknown".
  EXPECT_FALSE(Contains(message, "unknown image id 5")) << message;
}

TEST_F(CocoDatasetTest, MoreThanTwentyProblemsListTheFirstTwentyAndTheTotal) {
  json j = Base();
  j["annotations"] = json::array();
  for (int i = 0; i < 25; ++i) j["annotations"].push_back(Ann(5, 100 + i, {1, 1, 2, 2}));
  std::string message;
  const auto problems = Problems(j, &message);
  EXPECT_EQ(problems.size(), 25u);
  EXPECT_TRUE(Contains(message, "25 problems in the COCO annotations (the first 20 of 25):"))
      << message;
  EXPECT_TRUE(Contains(message, "annotations[19].category_id: unknown category id 119"));
  EXPECT_FALSE(Contains(message, "annotations[20]")) << message;
  EXPECT_EQ(problems[24], "annotations[24].category_id: unknown category id 124");
}

TEST_F(CocoDatasetTest, LoadImageRgbDecodesPngAndJpegAsRgb) {
  const CocoTrainDataset d(WriteJson(Base()), ImageDir());
  const cv::Mat png = d.LoadImageRgb(d.IndexOf(5));
  ASSERT_EQ(png.type(), CV_8UC3);
  EXPECT_EQ(png.cols, 100);
  EXPECT_EQ(png.rows, 50);
  // Written as BGR blue (255, 0, 0) with a red (0, 0, 255) corner.
  EXPECT_EQ(png.at<cv::Vec3b>(20, 50), cv::Vec3b(0, 0, 255));
  EXPECT_EQ(png.at<cv::Vec3b>(1, 1), cv::Vec3b(255, 0, 0));
  const cv::Mat jpg = d.LoadImageRgb(d.IndexOf(2));
  ASSERT_EQ(jpg.type(), CV_8UC3);
  EXPECT_EQ(jpg.cols, 60);
  EXPECT_EQ(jpg.rows, 40);
  const cv::Vec3b mid = jpg.at<cv::Vec3b>(20, 30);
  EXPECT_LT(mid[0], 20);   // R
  EXPECT_GT(mid[2], 235);  // B
}

TEST_F(CocoDatasetTest, LoadImageRgbNamesTheFileOnSizeMismatchOrUndecodable) {
  json j = Base();
  WriteImage("a.png", 80, 50);  // the JSON says 100 x 50
  { std::ofstream(dir_ / "images" / "b.jpg") << "not an image"; }
  const CocoTrainDataset d(WriteJson(j), ImageDir());  // files exist: valid
  try {
    d.LoadImageRgb(d.IndexOf(5));
    ADD_FAILURE() << "no error on a size mismatch";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    EXPECT_TRUE(Contains(m, (fs::path(ImageDir()) / "a.png").string())) << m;
    EXPECT_TRUE(Contains(m, "80x50")) << m;
    EXPECT_TRUE(Contains(m, "100x50")) << m;
  }
  try {
    d.LoadImageRgb(d.IndexOf(2));
    ADD_FAILURE() << "no error on an undecodable file";
  } catch (const std::runtime_error& e) {
    const std::string m = e.what();
    EXPECT_TRUE(Contains(m, "cannot decode image " + (fs::path(ImageDir()) / "b.jpg").string()))
        << m;
  }
}

TEST(TrainTargetTest, NormalisedCxcywhOnAHandCase) {
  // 100 wide, 200 high. [10, 20, 30, 60] -> centre (20, 40), size 20 x 40.
  // [0, 0, 100, 200] is the whole image.
  BoxTargets t;
  t.boxes_xyxy = {{10, 20, 30, 60}, {0, 0, 100, 200}};
  t.labels = {4, 0};
  const TrainTarget target = ToTrainTarget(t, /*image_height=*/200, /*image_width=*/100);
  ASSERT_EQ(target.boxes.sizes(), (std::vector<int64_t>{2, 4}));
  ASSERT_EQ(target.labels.scalar_type(), at::kLong);
  EXPECT_EQ(target.labels[0].item<int64_t>(), 4);
  EXPECT_EQ(target.labels[1].item<int64_t>(), 0);
  const std::vector<float> expected = {0.2f, 0.2f, 0.2f, 0.2f, 0.5f, 0.5f, 1.0f, 1.0f};
  const at::Tensor flat = target.boxes.reshape({-1});
  for (int k = 0; k < 8; ++k) EXPECT_FLOAT_EQ(flat[k].item<float>(), expected[k]) << k;

  // A resized image: boxes scale with it, so the normalised values stay.
  CocoImage image;
  image.width = 100;
  image.height = 200;
  image.targets = t;
  const TrainTarget resized = ResizedTrainTarget(image, /*height=*/50, /*width=*/40);
  const at::Tensor rflat = resized.boxes.reshape({-1});
  for (int k = 0; k < 8; ++k) EXPECT_NEAR(rflat[k].item<float>(), expected[k], 1e-6) << k;

  EXPECT_THROW(ToTrainTarget(t, 0, 100), std::invalid_argument);
  BoxTargets mismatched = t;
  mismatched.labels.pop_back();
  EXPECT_THROW(ToTrainTarget(mismatched, 200, 100), std::invalid_argument);
}

}  // namespace
}  // namespace lpdetr::train

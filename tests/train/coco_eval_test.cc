// COCO bbox evaluation: every pycocotools fixture case through the library
// API, small cases whose values follow by hand from the COCOeval rules, and
// the errors for malformed input.
#include "train/coco_eval.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/test_paths.h"

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kTol = 1e-9;
// Hand-derived values: pycocotools' precision is tp / (tp + fp + eps), so a
// perfect curve is 1 - 2e-16, not 1.
constexpr double kHandTol = 1e-12;

enum Stat { kAP, kAP50, kAP75, kAPs, kAPm, kAPl, kAR1, kAR10, kAR100, kARs, kARm, kARl };

fs::path CocoFixturesDir() { return fs::path(testing_paths::FixturesDir()) / "coco-eval"; }

std::vector<std::string> FixtureCases() {
  std::vector<std::string> cases;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(CocoFixturesDir(), ec)) {
    if (entry.is_directory() && fs::exists(entry.path() / "expected.json")) {
      cases.push_back(entry.path().filename().string());
    }
  }
  std::sort(cases.begin(), cases.end());
  return cases;
}

json ReadJson(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return json::parse(ss.str());
}

// ---------------------------------------------------------------------------
// pycocotools fixtures
// ---------------------------------------------------------------------------

TEST(CocoEvalFixtures, CasesArePresent) {
  EXPECT_GE(FixtureCases().size(), 5u) << "no COCO eval fixtures under " << CocoFixturesDir();
}

class CocoEvalFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(CocoEvalFixture, EqualsPycocotools) {
  const fs::path dir = CocoFixturesDir() / GetParam();
  const CocoGroundTruth gt = LoadCocoGroundTruth((dir / "instances.json").string());
  const std::vector<CocoDetection> dets =
      LoadCocoDetections((dir / "detections.json").string(), gt);
  const CocoEvalResult result = EvaluateBbox(gt, dets);
  const json expected = ReadJson(dir / "expected.json");

  for (int s = 0; s < CocoEvalResult::kNumStats; ++s) {
    const char* name = CocoEvalResult::kStatNames[s];
    ASSERT_TRUE(expected.contains(name)) << name;
    EXPECT_NEAR(result.stats[s], expected[name].get<double>(), kTol) << name;
  }
  const json& per_category = expected.at("per_category_AP");
  EXPECT_EQ(result.per_category_ap.size(), per_category.size());
  for (const auto& [id, ap] : per_category.items()) {
    auto it = result.per_category_ap.find(std::stoll(id));
    ASSERT_NE(it, result.per_category_ap.end()) << "category " << id;
    EXPECT_NEAR(it->second, ap.get<double>(), kTol) << "category " << id;
  }
}

INSTANTIATE_TEST_SUITE_P(Pycocotools, CocoEvalFixture, ::testing::ValuesIn(FixtureCases()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(CocoEvalFixture);

// ---------------------------------------------------------------------------
// Hand-made cases
// ---------------------------------------------------------------------------

CocoEvalResult Evaluate(const std::string& gt_json, const std::string& dt_json) {
  const CocoGroundTruth gt = ParseCocoGroundTruth(gt_json, "gt");
  return EvaluateBbox(gt, ParseCocoDetections(dt_json, gt, "dt"));
}

// One image 1, categories 1 and 2, the given annotations.
std::string OneImageGt(const std::string& annotations) {
  return R"({"images": [{"id": 1}], "categories": [{"id": 1}, {"id": 2}], "annotations": [)" +
         annotations + "]}";
}

TEST(CocoEvalHand, OnePerfectDetection) {
  const auto r =
      Evaluate(OneImageGt(R"({"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50],
                     "area": 2500, "iscrowd": 0})"),
               R"([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}])");
  EXPECT_NEAR(r.stats[kAP], 1.0, kHandTol);
  EXPECT_NEAR(r.stats[kAP50], 1.0, kHandTol);
  EXPECT_NEAR(r.stats[kAP75], 1.0, kHandTol);
  EXPECT_EQ(r.stats[kAPs], -1.0);  // 2500 is medium: no small or large ground truth
  EXPECT_NEAR(r.stats[kAPm], 1.0, kHandTol);
  EXPECT_EQ(r.stats[kAPl], -1.0);
  EXPECT_EQ(r.stats[kAR1], 1.0);
  EXPECT_EQ(r.stats[kAR100], 1.0);
  EXPECT_EQ(r.stats[kARs], -1.0);
  EXPECT_NEAR(r.per_category_ap.at(1), 1.0, kHandTol);
  EXPECT_EQ(r.per_category_ap.at(2), -1.0);  // no ground truth
}

TEST(CocoEvalHand, IouThresholdIsInclusive) {
  // IoU 60 / 100 = 0.6: a match at thresholds .50, .55 and .60 only.
  const auto r =
      Evaluate(OneImageGt(R"({"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
                     "area": 100, "iscrowd": 0})"),
               R"([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 6, 10], "score": 0.9}])");
  EXPECT_NEAR(r.stats[kAP], 0.3, kHandTol);
  EXPECT_NEAR(r.stats[kAP50], 1.0, kHandTol);
  EXPECT_EQ(r.stats[kAP75], 0.0);
  EXPECT_NEAR(r.stats[kAR100], 0.3, kHandTol);
}

TEST(CocoEvalHand, FalsePositiveRankedFirstHalvesPrecision) {
  // Two boxes; the best-scored detection misses, the second hits box 1.
  // Recall reaches 0.5 at precision 0.5: 51 of 101 recall thresholds at 0.5.
  const auto r =
      Evaluate(OneImageGt(R"({"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20],
                     "area": 400, "iscrowd": 0},
                    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 20, 20],
                     "area": 400, "iscrowd": 0})"),
               R"([{"image_id": 1, "category_id": 1, "bbox": [300, 300, 20, 20], "score": 0.9},
          {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.8}])");
  EXPECT_NEAR(r.stats[kAP], 25.5 / 101.0, kHandTol);
  EXPECT_NEAR(r.stats[kAR100], 0.5, kHandTol);
  EXPECT_EQ(r.stats[kAR1], 0.0);  // only the false positive within maxDets 1
  EXPECT_NEAR(r.stats[kAR10], 0.5, kHandTol);
}

TEST(CocoEvalHand, MaxDetsCutsPerImageAndCategory) {
  // 100 higher-scored misses, then the hit as the 101st detection: outside
  // every maxDets cut. Category 2's detections do not take category 1's slots.
  std::string dets = "[";
  for (int i = 0; i < 100; ++i) {
    dets += R"({"image_id": 1, "category_id": 1, "bbox": [500, 500, 10, 10], "score": 0.9},)";
  }
  dets += R"({"image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20], "score": 0.95},)";
  dets += R"({"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.5}])";
  const std::string gt =
      OneImageGt(R"({"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20],
                     "area": 400, "iscrowd": 0},
                    {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20],
                     "area": 400, "iscrowd": 0})");
  const auto r = Evaluate(gt, dets);
  EXPECT_EQ(r.per_category_ap.at(1), 0.0);
  EXPECT_NEAR(r.per_category_ap.at(2), 1.0, kHandTol);
  EXPECT_NEAR(r.stats[kAR100], 0.5, kHandTol);  // mean of category 1 (0) and 2 (1)

  // With only 9 misses ahead the hit is the 10th: found by maxDets 10, not 1.
  std::string ten = "[";
  for (int i = 0; i < 9; ++i) {
    ten += R"({"image_id": 1, "category_id": 1, "bbox": [500, 500, 10, 10], "score": 0.9},)";
  }
  ten += R"({"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.5}])";
  const auto r10 = Evaluate(gt, ten);
  EXPECT_EQ(r10.stats[kAR1], 0.0);
  EXPECT_NEAR(r10.stats[kAR10], 0.5, kHandTol);  // category 2 has no detections: 0
  // Category 1: recall 1 at precision 1/10 for every recall threshold.
  EXPECT_NEAR(r10.per_category_ap.at(1), 0.1, kHandTol);
}

TEST(CocoEvalHand, CrowdRegionAbsorbsDetections) {
  // Detections inside a crowd region match it by intersection / detection
  // area (1.0 here), any number of them, and are then ignored: the regular
  // box's hit alone makes a perfect curve although it is ranked third.
  const auto r =
      Evaluate(OneImageGt(R"({"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20],
                     "area": 400, "iscrowd": 0},
                    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 0, 200, 200],
                     "area": 40000, "iscrowd": 1})"),
               R"([{"image_id": 1, "category_id": 1, "bbox": [110, 10, 30, 30], "score": 0.9},
          {"image_id": 1, "category_id": 1, "bbox": [150, 50, 30, 30], "score": 0.8},
          {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.7}])");
  EXPECT_NEAR(r.stats[kAP], 1.0, kHandTol);
  EXPECT_EQ(r.stats[kAPl], -1.0);  // the crowd region is not countable ground truth
  EXPECT_EQ(r.stats[kAR1], 0.0);   // maxDets 1 keeps only an ignored detection
  EXPECT_EQ(r.stats[kAR100], 1.0);
}

TEST(CocoEvalHand, CrowdMatchUsesDetectionArea) {
  // Half of the detection lies in the crowd region: IoU 0.5 by detection
  // area, so it is ignored at threshold .50 and a false positive above.
  // The hit on the regular box follows: precision 1/2 at thresholds > .50.
  const auto r =
      Evaluate(OneImageGt(R"({"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20],
                     "area": 400, "iscrowd": 0},
                    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 0, 200, 200],
                     "area": 40000, "iscrowd": 1})"),
               R"([{"image_id": 1, "category_id": 1, "bbox": [80, 10, 40, 40], "score": 0.9},
          {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.7}])");
  EXPECT_NEAR(r.stats[kAP50], 1.0, kHandTol);
  EXPECT_NEAR(r.stats[kAP75], 0.5, kHandTol);
  EXPECT_NEAR(r.stats[kAP], (1.0 + 9 * 0.5) / 10.0, kHandTol);
}

TEST(CocoEvalHand, AreaRangeComesFromTheAreaField) {
  // A 10x10 box whose `area` says 5000: medium, not small.
  const auto r =
      Evaluate(OneImageGt(R"({"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
                     "area": 5000, "iscrowd": 0})"),
               R"([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9}])");
  EXPECT_EQ(r.stats[kAPs], -1.0);
  EXPECT_NEAR(r.stats[kAPm], 1.0, kHandTol);
  EXPECT_EQ(r.stats[kARm], 1.0);
}

TEST(CocoEvalHand, UnmatchedDetectionOutsideTheAreaRangeIsIgnored) {
  // A large (100x100) miss ranked above the hit on a small box: a false
  // positive for area "all", ignored for area "small".
  const auto r =
      Evaluate(OneImageGt(R"({"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10],
                     "area": 100, "iscrowd": 0})"),
               R"([{"image_id": 1, "category_id": 1, "bbox": [200, 200, 100, 100], "score": 0.9},
          {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.8}])");
  EXPECT_NEAR(r.stats[kAP], 0.5, kHandTol);
  EXPECT_NEAR(r.stats[kAPs], 1.0, kHandTol);
}

TEST(CocoEvalHand, EqualScoresRankInImageIdOrder) {
  // Same score on two images: image 3's miss ranks before image 7's hit
  // (image ids ascending, whatever the order in `images`), so precision is
  // 1/2 up to recall 1/2. The other order would give precision 1 there.
  const std::string gt = R"({"images": [{"id": 7}, {"id": 3}], "categories": [{"id": 1}],
      "annotations": [
        {"id": 1, "image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400},
        {"id": 2, "image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400}]})";
  const auto r =
      Evaluate(gt,
               R"([{"image_id": 7, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.5},
          {"image_id": 3, "category_id": 1, "bbox": [300, 300, 20, 20], "score": 0.5}])");
  EXPECT_NEAR(r.stats[kAP], 25.5 / 101.0, kHandTol);

  // Within an image, equal scores keep the file order.
  const auto first_hit =
      Evaluate(gt,
               R"([{"image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.5},
          {"image_id": 3, "category_id": 1, "bbox": [300, 300, 20, 20], "score": 0.5}])");
  EXPECT_NEAR(first_hit.stats[kAP], 51.0 / 101.0, kHandTol);
  const auto first_miss =
      Evaluate(gt,
               R"([{"image_id": 3, "category_id": 1, "bbox": [300, 300, 20, 20], "score": 0.5},
          {"image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.5}])");
  EXPECT_NEAR(first_miss.stats[kAP], 25.5 / 101.0, kHandTol);
}

TEST(CocoEvalHand, UnlistedCategoryIsNotEvaluated) {
  const std::string gt =
      OneImageGt(R"({"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20],
                     "area": 400, "iscrowd": 0})");
  const auto r =
      Evaluate(gt,
               R"([{"image_id": 1, "category_id": 42, "bbox": [300, 300, 20, 20], "score": 0.99},
          {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.5}])");
  EXPECT_NEAR(r.stats[kAP], 1.0, kHandTol);
  EXPECT_EQ(r.per_category_ap.count(42), 0u);
}

TEST(CocoEvalHand, DetectionOnImageWithoutAnnotationsIsFalsePositive) {
  const std::string gt = R"({"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20],
                       "area": 400, "iscrowd": 0}]})";
  const auto r =
      Evaluate(gt,
               R"([{"image_id": 2, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9},
          {"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.8}])");
  EXPECT_NEAR(r.stats[kAP], 0.5, kHandTol);
}

TEST(CocoEvalHand, NoDetectionsGivesZeroWhereGroundTruthCounts) {
  const auto r =
      Evaluate(OneImageGt(R"({"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20],
                     "area": 400, "iscrowd": 0})"),
               "[]");
  EXPECT_EQ(r.stats[kAP], 0.0);
  EXPECT_EQ(r.stats[kAPs], 0.0);
  EXPECT_EQ(r.stats[kAPm], -1.0);
  EXPECT_EQ(r.stats[kAR100], 0.0);
  EXPECT_EQ(r.per_category_ap.at(1), 0.0);
  EXPECT_EQ(r.per_category_ap.at(2), -1.0);
}

TEST(CocoEvalHand, NoAnnotationsGivesMinusOne) {
  const auto r =
      Evaluate(R"({"images": [{"id": 1}], "categories": [{"id": 1}]})",
               R"([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 1}])");
  for (int s = 0; s < CocoEvalResult::kNumStats; ++s) {
    EXPECT_EQ(r.stats[s], -1.0) << CocoEvalResult::kStatNames[s];
  }
  EXPECT_EQ(r.per_category_ap.at(1), -1.0);
}

TEST(CocoEvalHand, AnnotationsSharingAnIdAreTheLastOneLikePycocotools) {
  // pycocotools loads annotations by id: two boxes with id 5 evaluate as two
  // copies of the later one, so a hit on the earlier box is a miss.
  const std::string gt =
      OneImageGt(R"({"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20],
                     "area": 400, "iscrowd": 0},
                    {"id": 5, "image_id": 1, "category_id": 1, "bbox": [100, 100, 20, 20],
                     "area": 400, "iscrowd": 0})");
  const auto on_first =
      Evaluate(gt, R"([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9}])");
  EXPECT_EQ(on_first.stats[kAR100], 0.0);
  const auto on_last = Evaluate(
      gt, R"([{"image_id": 1, "category_id": 1, "bbox": [100, 100, 20, 20], "score": 0.9}])");
  EXPECT_NEAR(on_last.stats[kAR100], 0.5, kHandTol);  // 1 of the 2 copies
}

TEST(CocoEvalHand, GroundTruthIdZeroNeverCountsAsMatchedLikePycocotools) {
  // pycocotools stores a match as the ground truth's id, and 0 reads as
  // "no match": a hit on the box with id 0 is a false positive.
  const auto r =
      Evaluate(OneImageGt(R"({"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20],
                     "area": 400, "iscrowd": 0})"),
               R"([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9}])");
  EXPECT_EQ(r.stats[kAP], 0.0);
  EXPECT_EQ(r.stats[kAR100], 0.0);
}

TEST(CocoEvalHand, GroundTruthBuiltInMemoryEqualsParsed) {
  std::vector<CocoAnnotation> anns(2);
  anns[0] = {1, 1, 1, {0, 0, 20, 20}, 400, false};
  anns[1] = {2, 1, 1, {100, 100, 20, 20}, 400, false};
  const CocoGroundTruth gt({1, 1}, {1}, anns);
  EXPECT_EQ(gt.image_ids().size(), 1u);
  std::vector<CocoDetection> dets(2);
  dets[0] = {1, 1, {300, 300, 20, 20}, 0.9};
  dets[1] = {1, 1, {0, 0, 20, 20}, 0.8};
  EXPECT_NEAR(EvaluateBbox(gt, dets).stats[kAP], 25.5 / 101.0, kHandTol);
}

TEST(CocoEvalHand, JsonOutputRoundTripsEveryDouble) {
  CocoEvalResult r;
  for (int s = 0; s < CocoEvalResult::kNumStats; ++s) r.stats[s] = std::nextafter(0.1 * s, 1.0);
  r.stats[kAPs] = -1.0;
  r.per_category_ap[3] = 0.49999999999999994;
  r.per_category_ap[12] = -1.0;
  const nlohmann::ordered_json j = nlohmann::ordered_json::parse(CocoEvalResultToJsonString(r));
  int n = 0;
  for (const auto& [key, value] : j.items()) {
    if (n < CocoEvalResult::kNumStats) {
      EXPECT_EQ(key, CocoEvalResult::kStatNames[n]);
      EXPECT_EQ(value.get<double>(), r.stats[n]) << key;
    }
    ++n;
  }
  EXPECT_EQ(n, CocoEvalResult::kNumStats + 1);
  EXPECT_EQ(j.at("per_category_AP").at("3").get<double>(), 0.49999999999999994);
  EXPECT_EQ(j.at("per_category_AP").at("12").get<double>(), -1.0);
}

// ---------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------

// Runs `fn`, expects std::exception whose message contains every part.
template <typename Fn>
void ExpectErrorNaming(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one naming " << parts.front();
  } catch (const std::exception& e) {
    const std::string message = e.what();
    for (const std::string& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;
    }
  }
}

const char* kSmallGt = R"({"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5],
                     "area": 25, "iscrowd": 0}]})";

TEST(CocoEvalErrors, NotJson) {
  ExpectErrorNaming([] { ParseCocoGroundTruth("{\"images\": [", "gt.json"); },
                    {"gt.json", "not valid JSON"});
  const CocoGroundTruth gt = ParseCocoGroundTruth(kSmallGt, "gt.json");
  ExpectErrorNaming([&] { ParseCocoDetections("nope", gt, "dt.json"); },
                    {"dt.json", "not valid JSON"});
}

TEST(CocoEvalErrors, MissingFileIsNamed) {
  ExpectErrorNaming([] { LoadCocoGroundTruth("/nonexistent/instances.json"); },
                    {"/nonexistent/instances.json"});
}

TEST(CocoEvalErrors, MissingKeyNamesEntryAndKey) {
  ExpectErrorNaming(
      [] {
        ParseCocoGroundTruth(R"({"images": [{"id": 1}], "categories": [{"id": 1}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1},
                            {"id": 2, "image_id": 1, "category_id": 1, "area": 1}]})",
                             "gt.json");
      },
      {"gt.json", "annotations[1]", "'bbox'"});
  ExpectErrorNaming([] { ParseCocoGroundTruth(R"({"categories": []})", "gt.json"); },
                    {"gt.json", "'images'"});
  const CocoGroundTruth gt = ParseCocoGroundTruth(kSmallGt, "gt");
  ExpectErrorNaming(
      [&] {
        ParseCocoDetections(R"([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1},
                                {"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}])",
                            gt, "dt.json");
      },
      {"dt.json", "[1]", "'score'"});
}

TEST(CocoEvalErrors, WrongTypes) {
  const CocoGroundTruth gt = ParseCocoGroundTruth(kSmallGt, "gt");
  ExpectErrorNaming(
      [&] {
        ParseCocoDetections(
            R"([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": "high"}])", gt,
            "dt.json");
      },
      {"dt.json", "[0].score", "number", "\"high\""});
  ExpectErrorNaming(
      [&] {
        ParseCocoDetections(
            R"([{"image_id": "1", "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}])", gt,
            "dt.json");
      },
      {"[0].image_id", "integer"});
  ExpectErrorNaming([&] { ParseCocoDetections(R"({"image_id": 1})", gt, "dt.json"); },
                    {"dt.json", "array"});
  ExpectErrorNaming([] { ParseCocoGroundTruth("[]", "gt.json"); }, {"gt.json", "object"});
  ExpectErrorNaming([] { ParseCocoGroundTruth(R"({"images": {}})", "gt.json"); },
                    {"'images'", "array"});
}

TEST(CocoEvalErrors, BboxNotFourNumbers) {
  const CocoGroundTruth gt = ParseCocoGroundTruth(kSmallGt, "gt");
  for (const char* bbox : {"[0, 0, 5]", "[0, 0, 5, 5, 1]", "[0, null, 5, 5]", "\"0 0 5 5\""}) {
    const std::string dets =
        std::string(R"([{"image_id": 1, "category_id": 1, "score": 1, "bbox": )") + bbox + "}]";
    ExpectErrorNaming([&] { ParseCocoDetections(dets, gt, "dt.json"); },
                      {"dt.json", "[0].bbox", "4 numbers"});
  }
}

TEST(CocoEvalErrors, DetectionsOnUnknownImagesListTheIds) {
  const CocoGroundTruth gt = ParseCocoGroundTruth(kSmallGt, "gt");
  ExpectErrorNaming(
      [&] {
        ParseCocoDetections(
            R"([{"image_id": 42, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1},
                                {"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1},
                                {"image_id": 17, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 1}])",
            gt, "dt.json");
      },
      {"dt.json", "17, 42", "not in the ground truth"});
  // The library entry point checks in-memory detections too.
  std::vector<CocoDetection> dets(1);
  dets[0] = {99, 1, {0, 0, 5, 5}, 1.0};
  ExpectErrorNaming([&] { EvaluateBbox(gt, dets); }, {"99", "not in the ground truth"});
}

}  // namespace
}  // namespace lpdetr::train

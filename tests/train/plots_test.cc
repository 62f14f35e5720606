// WriteLossCurvePng and WriteAlphaPng, written into the test's temp dir and
// read back with cv::imread: image size, not blank, where each series'
// colour lies (a decreasing loss falls from left to right, a dominant alpha
// column is near the top), non-finite points skipped, "no data" plots,
// shape and write errors.
#include "train/plots.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;
using Series = std::vector<std::pair<int64_t, double>>;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Pixels within a few levels of `color` (anti-aliased edges are blends).
cv::Mat ColorMask(const cv::Mat& image, PlotColor color) {
  constexpr int kTolerance = 12;
  cv::Mat mask;
  cv::inRange(image,
              cv::Scalar(color.b - kTolerance, color.g - kTolerance, color.r - kTolerance),
              cv::Scalar(color.b + kTolerance, color.g + kTolerance, color.r + kTolerance), mask);
  return mask;
}

// For each column in [x_begin, x_end) with a pixel of the mask: (column,
// topmost row of such a pixel).
std::vector<std::pair<int, int>> TopRows(const cv::Mat& mask, int x_begin, int x_end) {
  std::vector<std::pair<int, int>> tops;
  for (int x = x_begin; x < x_end; ++x) {
    for (int y = 0; y < mask.rows; ++y) {
      if (mask.at<uchar>(y, x) != 0) {
        tops.emplace_back(x, y);
        break;
      }
    }
  }
  return tops;
}

// Mean topmost row over the first and the last `fraction` of `tops`.
std::pair<double, double> LeftAndRightMeans(const std::vector<std::pair<int, int>>& tops,
                                            double fraction) {
  const size_t count = std::max<size_t>(1, static_cast<size_t>(tops.size() * fraction));
  double left = 0, right = 0;
  for (size_t i = 0; i < count; ++i) {
    left += tops[i].second;
    right += tops[tops.size() - 1 - i].second;
  }
  return {left / count, right / count};
}

int NonWhitePixels(const cv::Mat& image) {
  cv::Mat gray;
  cv::cvtColor(image, gray, cv::COLOR_BGR2GRAY);
  return cv::countNonZero(gray < 250);
}

int MinRow(const cv::Mat& mask) {
  for (int y = 0; y < mask.rows; ++y) {
    if (cv::countNonZero(mask.row(y)) > 0) return y;
  }
  return mask.rows;
}

// Strictly decreasing, steep first and flattening, as training loss goes.
Series Decreasing(int n) {
  Series series;
  for (int i = 0; i < n; ++i) series.emplace_back(i * 10, 2.0 + 8.0 * std::exp(-i / 150.0));
  return series;
}

// Decreasing on average with a deterministic jitter of +-0.5.
Series Noisy(int n) {
  Series series = Decreasing(n);
  for (size_t i = 0; i < series.size(); ++i) series[i].second += ((i * 7919) % 101) / 100.0 - 0.5;
  return series;
}

class PlotsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / "plots_test" / info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }

  cv::Mat Read(const std::string& name) {
    cv::Mat image = cv::imread((dir_ / name).string(), cv::IMREAD_COLOR);
    EXPECT_FALSE(image.empty()) << name;
    return image;
  }

  static bool Same(const cv::Mat& a, const cv::Mat& b) {
    return a.size() == b.size() && a.type() == b.type() && cv::norm(a, b, cv::NORM_INF) == 0;
  }

  fs::path dir_;
};

TEST_F(PlotsTest, LossCurveHasItsSizeAndBothLossLines) {
  WriteLossCurvePng((dir_ / "loss.png").string(), Noisy(500));
  const cv::Mat image = Read("loss.png");
  ASSERT_FALSE(image.empty());
  EXPECT_EQ(image.cols, kLossCurveWidth);
  EXPECT_EQ(image.rows, kLossCurveHeight);
  EXPECT_GT(NonWhitePixels(image), image.total() / 100);
  EXPECT_GT(cv::countNonZero(ColorMask(image, kAverageLossColor)), 500);
  // The jittery raw line shows around the average (far more than its legend).
  EXPECT_GT(cv::countNonZero(ColorMask(image, kRawLossColor)), 1000);
  // No AP series, no AP colour.
  EXPECT_EQ(cv::countNonZero(ColorMask(image, kApColor)), 0);
  // Nothing left behind but the image.
  EXPECT_FALSE(fs::exists(dir_ / "loss.png.tmp"));
}

TEST_F(PlotsTest, DecreasingLossFallsFromLeftToRight) {
  WriteLossCurvePng((dir_ / "loss.png").string(), Decreasing(500));
  const cv::Mat image = Read("loss.png");
  ASSERT_FALSE(image.empty());
  const auto tops = TopRows(ColorMask(image, kAverageLossColor), 0, image.cols);
  // The curve runs across most of the width.
  ASSERT_GT(tops.size(), static_cast<size_t>(image.cols / 2));
  const auto [left, right] = LeftAndRightMeans(tops, 0.1);
  // Smaller row = higher on the image; the drop spans much of the height.
  EXPECT_LT(left + image.rows / 4.0, right) << "left " << left << " right " << right;
  // And it never rises: the topmost row only grows (2 px of anti-aliasing).
  for (size_t i = 1; i < tops.size(); ++i) {
    ASSERT_GE(tops[i].second + 2, tops[i - 1].second) << "column " << tops[i].first;
  }
}

TEST_F(PlotsTest, NonFiniteLossesAreSkipped) {
  const Series clean = Decreasing(300);
  Series noisy;
  for (size_t i = 0; i < clean.size(); ++i) {
    noisy.push_back(clean[i]);
    if (i % 50 == 7) noisy.emplace_back(clean[i].first + 1, i % 100 == 7 ? kNaN : kInf);
  }
  noisy.emplace_back(clean.back().first + 5, -kInf);
  WriteLossCurvePng((dir_ / "clean.png").string(), clean);
  WriteLossCurvePng((dir_ / "noisy.png").string(), noisy);
  EXPECT_TRUE(Same(Read("clean.png"), Read("noisy.png")));
}

TEST_F(PlotsTest, EvalApIsDrawnAsRisingMarkersWithARightAxis) {
  Series ap;
  for (int i = 0; i < 5; ++i) ap.emplace_back(500 + i * 1000, 0.1 + 0.1 * i);
  ap.emplace_back(5200, kNaN);  // skipped
  WriteLossCurvePng((dir_ / "loss_ap.png").string(), Decreasing(500), ap);
  const cv::Mat image = Read("loss_ap.png");
  ASSERT_FALSE(image.empty());
  EXPECT_EQ(image.cols, kLossCurveWidth);
  const cv::Mat mask = ColorMask(image, kApColor);
  // Five markers of a few dozen pixels each.
  EXPECT_GT(cv::countNonZero(mask), 5 * 30);
  // The AP axis labels lie at the right edge, in the AP colour.
  const int right_strip = image.cols / 10;
  EXPECT_GT(cv::countNonZero(mask.colRange(image.cols - right_strip, image.cols)), 0);
  // Over the left half (data only, no axis) the rising AP climbs.
  const auto tops = TopRows(mask, 0, image.cols / 2);
  ASSERT_GT(tops.size(), 20u);
  const auto [left, right] = LeftAndRightMeans(tops, 0.2);
  EXPECT_GT(left, right + 10) << "left " << left << " right " << right;
  // The loss is still there.
  EXPECT_GT(cv::countNonZero(ColorMask(image, kAverageLossColor)), 500);
}

TEST_F(PlotsTest, EmptySeriesGivesANoDataPlot) {
  WriteLossCurvePng((dir_ / "empty.png").string(), {});
  const cv::Mat image = Read("empty.png");
  ASSERT_FALSE(image.empty());
  EXPECT_EQ(image.cols, kLossCurveWidth);
  EXPECT_EQ(image.rows, kLossCurveHeight);
  EXPECT_GT(NonWhitePixels(image), 500);  // frame, title, "no data"
  EXPECT_EQ(cv::countNonZero(ColorMask(image, kAverageLossColor)), 0);
  // A series of only non-finite values is the same plot.
  WriteLossCurvePng((dir_ / "nan.png").string(), {{0, kNaN}, {10, kInf}});
  EXPECT_TRUE(Same(image, Read("nan.png")));
}

TEST_F(PlotsTest, SingleLossPointIsDrawn) {
  WriteLossCurvePng((dir_ / "one.png").string(), {{100, 3.5}});
  const cv::Mat image = Read("one.png");
  ASSERT_FALSE(image.empty());
  EXPECT_GT(cv::countNonZero(ColorMask(image, kAverageLossColor)), 5);
}

TEST_F(PlotsTest, PngWhateverTheExtension) {
  WriteLossCurvePng((dir_ / "plot.img").string(), Decreasing(10));
  std::ifstream in(dir_ / "plot.img", std::ios::binary);
  char signature[8] = {};
  in.read(signature, 8);
  EXPECT_EQ(std::string(signature + 1, 3), "PNG");
  EXPECT_EQ(static_cast<unsigned char>(signature[0]), 0x89);
}

TEST_F(PlotsTest, AlphaPlotHasItsSizeAndAllThreeColours) {
  const at::Tensor alpha = at::tensor({0.5f, 0.3f, 0.2f, 0.2f, 0.5f, 0.3f, 0.3f, 0.2f, 0.5f,
                                       0.4f, 0.4f, 0.2f, 0.2f, 0.2f, 0.6f, 0.1f, 0.6f, 0.3f})
                               .reshape({6, 3});
  WriteAlphaPng((dir_ / "alpha.png").string(), alpha);
  const cv::Mat image = Read("alpha.png");
  ASSERT_FALSE(image.empty());
  EXPECT_EQ(image.cols, kAlphaPlotWidth);
  EXPECT_EQ(image.rows, kAlphaPlotHeight);
  EXPECT_GT(NonWhitePixels(image), image.total() / 100);
  for (int c = 0; c < 3; ++c) {
    EXPECT_GT(cv::countNonZero(ColorMask(image, kAlphaColors[c])), 100) << "column " << c;
  }
}

TEST_F(PlotsTest, DominantAlphaColumnIsNearTheTop) {
  constexpr int64_t kLayers = 6;
  for (int dominant = 0; dominant < 3; ++dominant) {
    at::Tensor alpha = at::full({kLayers, 3}, 0.1, at::kFloat);
    alpha.select(1, dominant).fill_(0.8);
    const std::string name = "alpha_" + std::to_string(dominant) + ".png";
    WriteAlphaPng((dir_ / name).string(), alpha);
    const cv::Mat image = Read(name);
    ASSERT_FALSE(image.empty());
    const cv::Mat mask = ColorMask(image, kAlphaColors[dominant]);
    // 0.8 on a 0..1 axis: in the upper part of the image.
    EXPECT_LT(MinRow(mask), image.rows * 0.4) << "dominant " << dominant;
    // Across the layers, not one spot.
    const auto tops = TopRows(mask, 0, image.cols);
    ASSERT_FALSE(tops.empty());
    EXPECT_GT(tops.back().first - tops.front().first, image.cols / 2) << "dominant " << dominant;
    for (int other = 0; other < 3; ++other) {
      if (other == dominant) continue;
      // 0.1: nothing of the other colours in the upper half.
      EXPECT_GT(MinRow(ColorMask(image, kAlphaColors[other])), image.rows / 2)
          << "dominant " << dominant << " other " << other;
    }
  }
}

TEST_F(PlotsTest, AlphaLineFollowsTheLayers) {
  // Global rises from 0.1 to 0.9 across the layers.
  constexpr int64_t kLayers = 5;
  at::Tensor alpha = at::empty({kLayers, 3}, at::kFloat);
  for (int64_t l = 0; l < kLayers; ++l) {
    const float global = 0.1f + 0.2f * static_cast<float>(l);
    alpha[l][0] = (1 - global) / 2;
    alpha[l][1] = (1 - global) / 2;
    alpha[l][2] = global;
  }
  WriteAlphaPng((dir_ / "alpha.png").string(), alpha);
  const cv::Mat image = Read("alpha.png");
  ASSERT_FALSE(image.empty());
  const auto tops = TopRows(ColorMask(image, kAlphaColors[2]), 0, image.cols);
  ASSERT_GT(tops.size(), 50u);
  const auto [left, right] = LeftAndRightMeans(tops, 0.1);
  EXPECT_GT(left, right + image.rows / 4.0) << "left " << left << " right " << right;
}

TEST_F(PlotsTest, AlphaOfAnyFloatingDtypeGivesTheSamePlot) {
  const at::Tensor alpha = at::softmax(at::arange(12, at::kFloat).reshape({4, 3}) * 0.3, 1);
  WriteAlphaPng((dir_ / "float.png").string(), alpha);
  WriteAlphaPng((dir_ / "double.png").string(), alpha.to(at::kDouble));
  WriteAlphaPng((dir_ / "strided.png").string(), alpha.t().contiguous().t());
  const cv::Mat reference = Read("float.png");
  EXPECT_TRUE(Same(reference, Read("double.png")));
  EXPECT_TRUE(Same(reference, Read("strided.png")));
}

TEST_F(PlotsTest, WrongAlphaShapeThrows) {
  const std::string path = (dir_ / "alpha.png").string();
  EXPECT_THROW(WriteAlphaPng(path, at::Tensor()), std::invalid_argument);
  EXPECT_THROW(WriteAlphaPng(path, at::ones({3})), std::invalid_argument);
  EXPECT_THROW(WriteAlphaPng(path, at::ones({4, 3, 1})), std::invalid_argument);
  EXPECT_THROW(WriteAlphaPng(path, at::ones({0, 3})), std::invalid_argument);
  EXPECT_THROW(WriteAlphaPng(path, at::ones({4, 3}, at::kLong)), std::invalid_argument);
  try {
    WriteAlphaPng(path, at::ones({4, 2}));
    FAIL() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("[4, 2]"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(PlotsTest, UnwritablePathThrowsNamingThePath) {
  const std::string path = (dir_ / "missing_dir" / "plot.png").string();
  auto expect_names_path = [&](auto write) {
    try {
      write();
      FAIL() << "no exception";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  };
  expect_names_path([&] { WriteLossCurvePng(path, Decreasing(20)); });
  expect_names_path([&] { WriteAlphaPng(path, at::full({2, 3}, 1.0 / 3)); });
  // A directory in the way of the rename.
  fs::create_directories(dir_ / "taken.png" / "child");
  const std::string taken = (dir_ / "taken.png").string();
  try {
    WriteLossCurvePng(taken, Decreasing(20));
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(taken), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(taken + ".tmp"));
}

}  // namespace
}  // namespace lpdetr::train

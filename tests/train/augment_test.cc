// The `detr` training augmentation (train/augment.h) on drawn scenes: filled
// rectangles of distinct colours on a dark background, their boxes as
// targets. After every transform each output box is checked against the
// output pixels (the colour fills the box interior; the colour's extent in
// the image matches the box edges), boxes cut by a crop are clipped and
// those cropped away are gone with their labels. Also: the size rule,
// determinism per seed, both branches and flip states across seeds, option
// validation, and NormalizedImageTensor against PreprocessImage.
#include "train/augment.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "model/preprocess.h"

namespace lpdetr::train {
namespace {

const cv::Vec3b kBackground(40, 40, 40);

// An image with filled rectangles; rectangle i has label kLabelBase + i and
// colour colors[i].
struct Scene {
  cv::Mat rgb;
  BoxTargets targets;
  std::vector<cv::Vec3b> colors;
};
constexpr int64_t kLabelBase = 10;

Scene MakeScene(int width, int height, const std::vector<cv::Rect>& rects) {
  static const std::vector<cv::Vec3b> palette = {
      {230, 30, 30},  {30, 230, 30},  {30, 30, 230},   {230, 230, 30},
      {230, 30, 230}, {30, 230, 230}, {230, 230, 230}, {140, 200, 90}};
  Scene scene;
  scene.rgb = cv::Mat(height, width, CV_8UC3, cv::Scalar(kBackground[0], kBackground[1], kBackground[2]));
  for (size_t i = 0; i < rects.size(); ++i) {
    const cv::Vec3b c = palette.at(i);
    cv::rectangle(scene.rgb, rects[i], cv::Scalar(c[0], c[1], c[2]), cv::FILLED);
    const cv::Rect& r = rects[i];
    scene.targets.boxes_xyxy.push_back({static_cast<float>(r.x), static_cast<float>(r.y),
                                        static_cast<float>(r.x + r.width),
                                        static_cast<float>(r.y + r.height)});
    scene.targets.labels.push_back(kLabelBase + static_cast<int64_t>(i));
    scene.colors.push_back(c);
  }
  return scene;
}

// 640x480, seven rectangles: some near or on the image border, none touching
// another.
Scene StandardScene() {
  return MakeScene(640, 480,
                   {{30, 40, 120, 90},
                    {200, 20, 60, 200},
                    {330, 300, 150, 120},
                    {560, 100, 70, 60},
                    {20, 300, 90, 160},
                    {300, 120, 200, 110},
                    {600, 440, 40, 40}});
}

// A wide 1600x300 scene: its resizes hit the max_size cap.
Scene WideScene() {
  return MakeScene(1600, 300, {{0, 20, 200, 150}, {500, 100, 300, 180}, {1350, 0, 250, 300}});
}

int Dist2(const cv::Vec3b& a, const cv::Vec3b& b) {
  int d = 0;
  for (int c = 0; c < 3; ++c) d += (a[c] - b[c]) * (a[c] - b[c]);
  return d;
}

// Per colour k, the extent [x1, y1, x2, y2) of the pixels whose nearest
// palette colour (background included) is colors[k]; nullopt when there are
// none.
std::vector<std::optional<std::array<int, 4>>> ColorExtents(const cv::Mat& rgb,
                                                            const std::vector<cv::Vec3b>& colors) {
  std::vector<std::array<int, 4>> ext(colors.size(), {rgb.cols, rgb.rows, -1, -1});
  for (int y = 0; y < rgb.rows; ++y) {
    for (int x = 0; x < rgb.cols; ++x) {
      const cv::Vec3b p = rgb.at<cv::Vec3b>(y, x);
      int best = -1, best_d = Dist2(p, kBackground);
      for (size_t k = 0; k < colors.size(); ++k) {
        const int d = Dist2(p, colors[k]);
        if (d < best_d) {
          best = static_cast<int>(k);
          best_d = d;
        }
      }
      if (best < 0) continue;
      auto& e = ext[static_cast<size_t>(best)];
      e = {std::min(e[0], x), std::min(e[1], y), std::max(e[2], x + 1), std::max(e[3], y + 1)};
    }
  }
  std::vector<std::optional<std::array<int, 4>>> out;
  for (const auto& e : ext) out.push_back(e[2] < 0 ? std::nullopt : std::optional(e));
  return out;
}

// Every output box against the output pixels, within `tol` pixels; every
// label missing from the output has (almost) no pixels left. Returns the
// number of scene boxes missing from the output.
// `margin`: pixels next to the box edges left out of the interior check
// (resampling blurs edges over about one pixel per resize, scaled by the
// later resizes).
int CheckAgainstPixels(const AugmentedImage& out, const Scene& scene, double tol,
                       const std::string& context, int margin = 2) {
  SCOPED_TRACE(context);
  EXPECT_EQ(out.rgb.type(), CV_8UC3);
  EXPECT_TRUE(out.rgb.isContinuous());
  EXPECT_EQ(out.targets.boxes_xyxy.size(), out.targets.labels.size());
  const auto extents = ColorExtents(out.rgb, scene.colors);
  std::set<int64_t> kept;
  for (size_t i = 0; i < out.targets.boxes_xyxy.size(); ++i) {
    const auto& b = out.targets.boxes_xyxy[i];
    const int64_t label = out.targets.labels[i];
    SCOPED_TRACE("label " + std::to_string(label));
    EXPECT_TRUE(kept.insert(label).second) << "label appears twice";
    const size_t k = static_cast<size_t>(label - kLabelBase);
    if (k >= scene.colors.size()) {
      ADD_FAILURE() << "unknown label";
      continue;
    }
    EXPECT_GE(b[0], 0.0f);
    EXPECT_GE(b[1], 0.0f);
    EXPECT_LE(b[2], static_cast<float>(out.rgb.cols));
    EXPECT_LE(b[3], static_cast<float>(out.rgb.rows));
    EXPECT_LT(b[0], b[2]);
    EXPECT_LT(b[1], b[3]);
    // Interior filled with the colour (flat regions survive resampling up to
    // the 8-bit rounding).
    const int ix1 = static_cast<int>(std::ceil(b[0])) + margin;
    const int iy1 = static_cast<int>(std::ceil(b[1])) + margin;
    const int ix2 = static_cast<int>(std::floor(b[2])) - margin;
    const int iy2 = static_cast<int>(std::floor(b[3])) - margin;
    int off = 0;
    std::string first_off;
    for (int y = iy1; y < iy2; ++y) {
      for (int x = ix1; x < ix2; ++x) {
        const cv::Vec3b p = out.rgb.at<cv::Vec3b>(y, x);
        bool bad = false;
        for (int c = 0; c < 3; ++c) bad |= std::abs(p[c] - scene.colors[k][c]) > 1;
        if (bad && off++ == 0) {
          first_off = "(" + std::to_string(x) + ", " + std::to_string(y) + ") is " +
                      std::to_string(p[0]) + "," + std::to_string(p[1]) + "," + std::to_string(p[2]);
        }
      }
    }
    EXPECT_EQ(off, 0) << "interior pixels not of the box's colour, first " << first_off
                      << " in box " << b[0] << " " << b[1] << " " << b[2] << " " << b[3] << " of "
                      << out.rgb.cols << "x" << out.rgb.rows;
    // The colour's extent matches the box.
    const auto& extent = extents[k];
    if (!extent) {
      EXPECT_LT(std::min(b[2] - b[0], b[3] - b[1]), 2.0f) << "no pixels of a box that is not tiny";
      continue;
    }
    for (int e = 0; e < 4; ++e) {
      EXPECT_NEAR((*extent)[e], b[e], tol) << "edge " << e;
    }
  }
  int missing = 0;
  for (size_t k = 0; k < scene.colors.size(); ++k) {
    if (kept.count(kLabelBase + static_cast<int64_t>(k))) continue;
    ++missing;
    const auto& extent = extents[k];
    if (extent) {
      EXPECT_LE(std::min((*extent)[2] - (*extent)[0], (*extent)[3] - (*extent)[1]), 2)
          << "label " << kLabelBase + static_cast<int64_t>(k)
          << " was dropped but its rectangle is visible";
    }
  }
  return missing;
}

bool SameOutput(const AugmentedImage& a, const AugmentedImage& b) {
  if (a.rgb.size() != b.rgb.size()) return false;
  if (std::memcmp(a.rgb.data, b.rgb.data, a.rgb.total() * a.rgb.elemSize()) != 0) return false;
  return a.targets.boxes_xyxy == b.targets.boxes_xyxy && a.targets.labels == b.targets.labels;
}

bool IsOneOf(int64_t v, const std::vector<int64_t>& values) {
  return std::find(values.begin(), values.end(), v) != values.end();
}

// ---- flip ----

TEST(HorizontalFlipTest, MirrorsPixelsAndBoxes) {
  const Scene scene = StandardScene();
  const AugmentedImage out = HorizontalFlip(scene.rgb, scene.targets);
  ASSERT_EQ(out.rgb.size(), scene.rgb.size());
  for (int y = 0; y < scene.rgb.rows; y += 7) {
    for (int x = 0; x < scene.rgb.cols; x += 5) {
      ASSERT_EQ(out.rgb.at<cv::Vec3b>(y, scene.rgb.cols - 1 - x), scene.rgb.at<cv::Vec3b>(y, x));
    }
  }
  ASSERT_EQ(out.targets.labels, scene.targets.labels);
  // Rectangle 0 spans x 30..150 of 640: mirrored 490..610.
  EXPECT_EQ(out.targets.boxes_xyxy[0], (std::array<float, 4>{490, 40, 610, 130}));
  EXPECT_EQ(CheckAgainstPixels(out, scene, 0.0, "flip"), 0);
  // Twice is the identity.
  const AugmentedImage back = HorizontalFlip(out.rgb, out.targets);
  EXPECT_TRUE(SameOutput(back, AugmentedImage{scene.rgb, scene.targets}));
}

// ---- resize ----

TEST(ShortestSideSizeTest, OfficialRounding) {
  // Expected sizes: trunc(side * r) with Python floats, the official rule.
  struct Case {
    int64_t h, w, short_side, max_size, out_h, out_w;
  };
  const std::vector<Case> cases = {
      {480, 640, 800, 1333, 800, 1066}, {500, 2000, 800, 1333, 333, 1333},
      {427, 640, 608, 1333, 608, 911},  {640, 427, 608, 1333, 911, 608},
      {300, 1600, 800, 1333, 249, 1333}, {100, 5000, 600, 0, 600, 30000},
      {333, 500, 400, 0, 400, 600},     {640, 480, 512, 1333, 682, 512},
      {1, 1, 800, 1333, 800, 800},      {2000, 3, 480, 1333, 1333, 1},
      // double rounding makes trunc(302 * (480 / 302)) = 479.
      {302, 450, 480, 1333, 479, 715},  {305, 305, 800, 1333, 799, 799},
  };
  for (const auto& c : cases) {
    const auto size = ShortestSideSize(c.h, c.w, c.short_side, c.max_size);
    EXPECT_EQ(size[0], c.out_h) << c.h << "x" << c.w << " -> " << c.short_side;
    EXPECT_EQ(size[1], c.out_w) << c.h << "x" << c.w << " -> " << c.short_side;
  }
  EXPECT_THROW(ShortestSideSize(0, 10, 800, 1333), std::invalid_argument);
  EXPECT_THROW(ShortestSideSize(10, 10, 0, 1333), std::invalid_argument);
  EXPECT_THROW(ShortestSideSize(10, 10, 800, -1), std::invalid_argument);
}

TEST(ResizeShortestSideTest, BoxesFollowPixelsUpAndDown) {
  const Scene scene = StandardScene();
  for (int64_t short_side : {800, 608, 480, 400, 300, 240}) {
    const AugmentedImage out = ResizeShortestSide(scene.rgb, scene.targets, short_side, 1333);
    const auto size = ShortestSideSize(480, 640, short_side, 1333);
    ASSERT_EQ(out.rgb.rows, size[0]);
    ASSERT_EQ(out.rgb.cols, size[1]);
    ASSERT_EQ(out.targets.labels, scene.targets.labels);
    const double rw = static_cast<double>(size[1]) / 640, rh = static_cast<double>(size[0]) / 480;
    for (size_t i = 0; i < scene.targets.boxes_xyxy.size(); ++i) {
      const auto& in = scene.targets.boxes_xyxy[i];
      const auto& b = out.targets.boxes_xyxy[i];
      EXPECT_NEAR(b[0], in[0] * rw, 1e-3);
      EXPECT_NEAR(b[1], in[1] * rh, 1e-3);
      EXPECT_NEAR(b[2], in[2] * rw, 1e-3);
      EXPECT_NEAR(b[3], in[3] * rh, 1e-3);
    }
    EXPECT_EQ(CheckAgainstPixels(out, scene, 1.0, "short side " + std::to_string(short_side)), 0);
  }
}

TEST(ResizeShortestSideTest, MaxSizeCapsTheLongSide) {
  const Scene scene = WideScene();
  const AugmentedImage capped = ResizeShortestSide(scene.rgb, scene.targets, 800, 1333);
  EXPECT_EQ(capped.rgb.cols, 1333);
  EXPECT_EQ(capped.rgb.rows, 249);
  EXPECT_EQ(CheckAgainstPixels(capped, scene, 1.0, "capped"), 0);
  const AugmentedImage uncapped = ResizeShortestSide(scene.rgb, scene.targets, 400, 0);
  EXPECT_EQ(uncapped.rgb.rows, 400);
  EXPECT_EQ(uncapped.rgb.cols, 2133);
  EXPECT_EQ(CheckAgainstPixels(uncapped, scene, 1.0, "uncapped"), 0);
}

TEST(ResizeShortestSideTest, SameSizeIsACopy) {
  const Scene scene = StandardScene();
  const AugmentedImage out = ResizeShortestSide(scene.rgb, scene.targets, 480, 1333);
  EXPECT_TRUE(SameOutput(out, AugmentedImage{scene.rgb, scene.targets}));
  EXPECT_NE(out.rgb.data, scene.rgb.data);
}

TEST(ResizeShortestSideTest, MatchesTheInferenceResize) {
  // The inference preprocessing resizes with the same kernel and rounding:
  // normalising our uint8 result gives PreprocessImage's resized tensor.
  // (Their size rules differ: trunc in float32 there, in double here; only
  // sizes both agree on are compared.)
  cv::Mat rgb(97, 131, CV_8UC3);
  cv::randu(rgb, cv::Scalar::all(0), cv::Scalar::all(256));
  const at::Tensor hwc = at::from_blob(rgb.data, {rgb.rows, rgb.cols, 3}, at::kByte);
  int compared = 0;
  for (int64_t short_side = 40; short_side <= 240; short_side += 20) {
    const AugmentedImage out = ResizeShortestSide(rgb, {}, short_side, 10000);
    const at::Tensor expected = PreprocessImage(hwc, short_side, 10000);
    if (expected.size(1) != out.rgb.rows || expected.size(2) != out.rgb.cols) continue;
    ++compared;
    EXPECT_TRUE(at::equal(NormalizedImageTensor(out.rgb), expected)) << short_side;
  }
  EXPECT_GE(compared, 5);
}

TEST(RandomResizeShortestSideTest, DrawsEveryScale) {
  const Scene scene = StandardScene();
  const std::vector<int64_t> scales = {400, 500, 600};
  std::mt19937_64 rng(7);
  std::set<int> seen;
  for (int i = 0; i < 30; ++i) {
    const AugmentedImage out = RandomResizeShortestSide(scene.rgb, scene.targets, scales, 0, rng);
    EXPECT_TRUE(IsOneOf(out.rgb.rows, scales)) << out.rgb.rows;
    seen.insert(out.rgb.rows);
  }
  EXPECT_EQ(seen.size(), 3u);
  EXPECT_THROW(RandomResizeShortestSide(scene.rgb, scene.targets, {}, 0, rng), std::invalid_argument);
}

// ---- crop ----

TEST(CropImageTest, ClipsCutBoxesAndDropsCroppedOnes) {
  const Scene scene = StandardScene();
  // x 100..400, y 100..350: cuts rectangles 0, 1, 2, 4, 5; 3 and 6 are
  // outside.
  const AugmentedImage out = CropImage(scene.rgb, scene.targets, 100, 100, 300, 250);
  ASSERT_EQ(out.rgb.cols, 300);
  ASSERT_EQ(out.rgb.rows, 250);
  EXPECT_EQ(std::memcmp(out.rgb.ptr(0), scene.rgb.ptr(100) + 100 * 3, 300 * 3), 0);
  std::map<int64_t, std::array<float, 4>> boxes;
  for (size_t i = 0; i < out.targets.labels.size(); ++i) boxes[out.targets.labels[i]] = out.targets.boxes_xyxy[i];
  const std::map<int64_t, std::array<float, 4>> expected = {
      {10, {0, 0, 50, 30}},      // 30..150 x 40..130, cut left and top
      {11, {100, 0, 160, 120}},  // 200..260 x 20..220, cut top
      {12, {230, 200, 300, 250}},  // 330..480 x 300..420, cut right and bottom
      {14, {0, 200, 10, 250}},   // 20..110 x 300..460
      {15, {200, 20, 300, 130}},  // 300..500 x 120..230, cut right
  };
  EXPECT_EQ(boxes, expected);
  EXPECT_EQ(CheckAgainstPixels(out, scene, 0.0, "crop"), 2);
  // A box that only touches the crop (zero area after clamping) is dropped.
  BoxTargets touching{{{0, 0, 100, 100}, {50, 50, 150, 150}}, {1, 2}};
  const AugmentedImage t = CropImage(scene.rgb, touching, 100, 0, 50, 200);
  EXPECT_EQ(t.targets.labels, (std::vector<int64_t>{2}));
  EXPECT_EQ(t.targets.boxes_xyxy[0], (std::array<float, 4>{0, 50, 50, 150}));
}

TEST(CropImageTest, RectangleMustBeInside) {
  const Scene scene = StandardScene();
  EXPECT_THROW(CropImage(scene.rgb, scene.targets, -1, 0, 10, 10), std::invalid_argument);
  EXPECT_THROW(CropImage(scene.rgb, scene.targets, 0, 0, 641, 10), std::invalid_argument);
  EXPECT_THROW(CropImage(scene.rgb, scene.targets, 0, 475, 10, 10), std::invalid_argument);
  EXPECT_THROW(CropImage(scene.rgb, scene.targets, 0, 0, 0, 10), std::invalid_argument);
  EXPECT_NO_THROW(CropImage(scene.rgb, scene.targets, 0, 0, 640, 480));
}

TEST(RandomSizeCropTest, SidesAndPositionsCoverTheirRanges) {
  const Scene scene = MakeScene(400, 390, {{10, 10, 100, 100}});
  std::mt19937_64 rng(123);
  std::set<int64_t> widths, heights, xs, ys;
  for (int i = 0; i < 3000; ++i) {
    std::array<int64_t, 4> rect{};
    const AugmentedImage out = RandomSizeCrop(scene.rgb, scene.targets, 384, 600, rng, &rect);
    const auto [x, y, w, h] = rect;
    ASSERT_EQ(out.rgb.cols, w);
    ASSERT_EQ(out.rgb.rows, h);
    ASSERT_TRUE(w >= 384 && w <= 400) << w;
    ASSERT_TRUE(h >= 384 && h <= 390) << h;
    ASSERT_TRUE(x >= 0 && x + w <= 400) << x;
    ASSERT_TRUE(y >= 0 && y + h <= 390) << y;
    widths.insert(w);
    heights.insert(h);
    xs.insert(x);
    ys.insert(y);
  }
  EXPECT_EQ(widths.size(), 17u);  // 384..400
  EXPECT_EQ(heights.size(), 7u);  // 384..390
  EXPECT_EQ(xs.size(), 17u);      // 0..16
  EXPECT_EQ(ys.size(), 7u);       // 0..6
}

TEST(RandomSizeCropTest, SmallImageSidesAreTakenWhole) {
  const Scene scene = MakeScene(200, 500, {{10, 10, 100, 100}});
  std::mt19937_64 rng(5);
  for (int i = 0; i < 50; ++i) {
    std::array<int64_t, 4> rect{};
    const AugmentedImage out = RandomSizeCrop(scene.rgb, scene.targets, 384, 600, rng, &rect);
    EXPECT_EQ(rect[0], 0);
    EXPECT_EQ(rect[2], 200);
    EXPECT_TRUE(rect[3] >= 384 && rect[3] <= 500);
    CheckAgainstPixels(out, scene, 0.0, "small crop");
  }
  EXPECT_THROW(RandomSizeCrop(scene.rgb, scene.targets, 0, 600, rng), std::invalid_argument);
  EXPECT_THROW(RandomSizeCrop(scene.rgb, scene.targets, 500, 400, rng), std::invalid_argument);
}

// ---- sanitize ----

TEST(SanitizeBoxesTest, ClipsAndDropsBelowOnePixel) {
  const BoxTargets in{{{-5, -5, 20, 20},      // clipped to 0..20
                       {10, 10, 10.99f, 30},  // 0.99 wide: dropped
                       {10, 10, 11, 30},      // exactly 1 wide: kept
                       {95, 10, 130, 30},     // clipped to 95..100
                       {99.5f, 10, 130, 30},  // 0.5 wide after clipping: dropped
                       {10, 49.2f, 30, 60}},  // 0.8 high after clipping: dropped
                      {1, 2, 3, 4, 5, 6}};
  const BoxTargets out = SanitizeBoxes(in, 100, 50);
  EXPECT_EQ(out.labels, (std::vector<int64_t>{1, 3, 4}));
  ASSERT_EQ(out.boxes_xyxy.size(), 3u);
  EXPECT_EQ(out.boxes_xyxy[0], (std::array<float, 4>{0, 0, 20, 20}));
  EXPECT_EQ(out.boxes_xyxy[1], (std::array<float, 4>{10, 10, 11, 30}));
  EXPECT_EQ(out.boxes_xyxy[2], (std::array<float, 4>{95, 10, 100, 30}));
  EXPECT_EQ(SanitizeBoxes(in, 100, 50, 30.0f).labels, (std::vector<int64_t>{}));
}

// ---- the whole augmentation ----

void CheckSize(const cv::Mat& rgb, const DetrAugmentOptions& o, const DetrAugmentRecord& r) {
  const int64_t short_side = std::min(rgb.rows, rgb.cols), long_side = std::max(rgb.rows, rgb.cols);
  EXPECT_TRUE(IsOneOf(r.final_short_side, o.scales));
  EXPECT_LE(long_side, o.max_size);
  // The short side is the drawn scale (trunc may lose 1), unless the long
  // side was capped (then it reaches max_size, trunc may lose 1).
  const bool at_scale = short_side == r.final_short_side || short_side == r.final_short_side - 1;
  const bool capped = long_side >= o.max_size - 1 && short_side <= r.final_short_side;
  EXPECT_TRUE(at_scale || capped) << rgb.cols << "x" << rgb.rows << " for scale "
                                  << r.final_short_side;
}

// Interior margin for a DetrAugment output: the crop branch's first resize
// blurs edges over about 1.5 pixels, which the final resize scales.
int Margin(const AugmentedImage& out, const DetrAugmentRecord& r) {
  if (!r.crop_branch) return 2;
  return 2 + static_cast<int>(std::ceil(1.5 * out.rgb.cols / r.crop_width));
}

TEST(DetrAugmentTest, ManySeedsBoxesFollowPixels) {
  const DetrAugmentOptions options;
  int crops = 0, flips = 0, dropped = 0, clipped = 0, samples = 0;
  for (const Scene& scene : {StandardScene(), WideScene()}) {
    for (uint64_t seed = 0; seed < 60; ++seed) {
      std::mt19937_64 rng(seed);
      DetrAugmentRecord record;
      const AugmentedImage out = DetrAugment(scene.rgb, scene.targets, options, rng, &record);
      const std::string context = "seed " + std::to_string(seed) + " crop " +
                                  std::to_string(record.crop_branch) + " flip " +
                                  std::to_string(record.flipped);
      ++samples;
      crops += record.crop_branch;
      flips += record.flipped;
      CheckSize(out.rgb, options, record);
      if (record.crop_branch) {
        EXPECT_GE(record.crop_width, options.crop_min);
        EXPECT_LE(record.crop_width, options.crop_max);
        EXPECT_GE(record.crop_height, options.crop_min);
        EXPECT_LE(record.crop_height, options.crop_max);
        // The crop is the final image before the last resize: the aspect
        // ratio is the crop's.
        EXPECT_NEAR(static_cast<double>(out.rgb.cols) / out.rgb.rows /
                        (static_cast<double>(record.crop_width) / record.crop_height),
                    1.0, 0.01);
      } else {
        EXPECT_NEAR(static_cast<double>(out.rgb.cols) / out.rgb.rows /
                        (static_cast<double>(scene.rgb.cols) / scene.rgb.rows),
                    1.0, 0.01);
      }
      for (const auto& b : out.targets.boxes_xyxy) {
        EXPECT_GE(b[2] - b[0], 1.0f);
        EXPECT_GE(b[3] - b[1], 1.0f);
        clipped += b[0] == 0.0f || b[1] == 0.0f || b[2] == static_cast<float>(out.rgb.cols) ||
                   b[3] == static_cast<float>(out.rgb.rows);
      }
      const int missing = CheckAgainstPixels(out, scene, 1.5, context, Margin(out, record));
      if (!record.crop_branch) {
        EXPECT_EQ(missing, 0) << context;
      }
      dropped += missing;
    }
  }
  // Both branches and both flip states occur; crops drop and clip boxes.
  EXPECT_GT(crops, samples / 4);
  EXPECT_LT(crops, samples * 3 / 4);
  EXPECT_GT(flips, samples / 4);
  EXPECT_LT(flips, samples * 3 / 4);
  EXPECT_GT(dropped, 0);
  EXPECT_GT(clipped, 0);
}

TEST(DetrAugmentTest, FlipStateShowsInThePixels) {
  // One rectangle in the left half: after the flip it is in the right half.
  const Scene scene = MakeScene(640, 480, {{40, 100, 150, 200}});
  DetrAugmentOptions options;
  options.crop_resize_scales = {600};
  options.crop_min = options.crop_max = 600;  // a crop that keeps the left part
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::mt19937_64 rng(seed);
    DetrAugmentRecord record;
    const AugmentedImage out = DetrAugment(scene.rgb, scene.targets, options, rng, &record);
    ASSERT_EQ(out.targets.labels.size(), 1u);
    const auto& b = out.targets.boxes_xyxy[0];
    const bool right_half = (b[0] + b[2]) / 2 > out.rgb.cols / 2.0f;
    EXPECT_EQ(right_half, record.flipped) << seed;
    CheckAgainstPixels(out, scene, 1.5, "seed " + std::to_string(seed), Margin(out, record));
  }
}

TEST(DetrAugmentTest, DeterministicPerSeed) {
  const Scene scene = StandardScene();
  const DetrAugmentOptions options;
  std::set<std::vector<float>> distinct;
  for (uint64_t seed = 100; seed < 110; ++seed) {
    std::mt19937_64 a(seed), b(seed);
    const AugmentedImage x = DetrAugment(scene.rgb, scene.targets, options, a);
    const AugmentedImage y = DetrAugment(scene.rgb, scene.targets, options, b);
    EXPECT_TRUE(SameOutput(x, y)) << seed;
    EXPECT_EQ(a(), b()) << "the same number of draws";
    std::vector<float> key = {static_cast<float>(x.rgb.cols), static_cast<float>(x.rgb.rows)};
    for (const auto& box : x.targets.boxes_xyxy) key.insert(key.end(), box.begin(), box.end());
    distinct.insert(key);
  }
  EXPECT_GE(distinct.size(), 8u) << "different seeds should mostly give different results";
  // The input is not modified and the output does not share its pixels.
  const Scene fresh = StandardScene();
  EXPECT_EQ(std::memcmp(scene.rgb.data, fresh.rgb.data, scene.rgb.total() * 3), 0);
  std::mt19937_64 rng(1);
  const AugmentedImage out = DetrAugment(scene.rgb, scene.targets, options, rng);
  EXPECT_NE(out.rgb.data, scene.rgb.data);
}

TEST(DetrAugmentTest, FlipProbabilityExtremes) {
  const Scene scene = StandardScene();
  for (double p : {0.0, 1.0}) {
    DetrAugmentOptions options;
    options.flip_prob = p;
    for (uint64_t seed = 0; seed < 20; ++seed) {
      std::mt19937_64 rng(seed);
      DetrAugmentRecord record;
      DetrAugment(scene.rgb, scene.targets, options, rng, &record);
      EXPECT_EQ(record.flipped, p == 1.0);
    }
  }
}

TEST(DetrAugmentTest, SmallModelOptions) {
  const Scene scene = StandardScene();
  const DetrAugmentOptions options = DetrAugmentOptions::ForMinSize(320, 533);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    std::mt19937_64 rng(seed);
    DetrAugmentRecord record;
    const AugmentedImage out = DetrAugment(scene.rgb, scene.targets, options, rng, &record);
    CheckSize(out.rgb, options, record);
    CheckAgainstPixels(out, scene, 1.5, "seed " + std::to_string(seed), Margin(out, record));
  }
}

TEST(DetrAugmentTest, EmptyTargetsAndBadInputs) {
  const Scene scene = StandardScene();
  std::mt19937_64 rng(3);
  const AugmentedImage out = DetrAugment(scene.rgb, {}, DetrAugmentOptions{}, rng);
  EXPECT_TRUE(out.targets.boxes_xyxy.empty());
  EXPECT_FALSE(out.rgb.empty());
  const cv::Mat gray(10, 10, CV_8UC1, cv::Scalar(0));
  EXPECT_THROW(DetrAugment(gray, {}, DetrAugmentOptions{}, rng), std::invalid_argument);
  EXPECT_THROW(DetrAugment(cv::Mat(), {}, DetrAugmentOptions{}, rng), std::invalid_argument);
  BoxTargets mismatched{{{0, 0, 1, 1}}, {}};
  EXPECT_THROW(DetrAugment(scene.rgb, mismatched, DetrAugmentOptions{}, rng), std::invalid_argument);
  EXPECT_THROW(HorizontalFlip(gray, {}), std::invalid_argument);
  EXPECT_THROW(ResizeShortestSide(scene.rgb, mismatched, 100, 0), std::invalid_argument);
  EXPECT_THROW(NormalizedImageTensor(gray), std::invalid_argument);
  DetrAugmentOptions bad;
  bad.crop_min = 0;
  EXPECT_THROW(DetrAugment(scene.rgb, {}, bad, rng), std::invalid_argument);
}

// ---- options ----

// The message of the std::invalid_argument Validate() throws ("" if none).
std::string ValidateError(const DetrAugmentOptions& o) {
  try {
    o.Validate();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(DetrAugmentOptionsTest, ValidateNamesTheField) {
  EXPECT_EQ(ValidateError(DetrAugmentOptions{}), "");
  auto with = [](auto edit) {
    DetrAugmentOptions o;
    edit(o);
    return ValidateError(o);
  };
  EXPECT_NE(with([](auto& o) { o.scales.clear(); }).find("scales"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.scales[3] = -1; }).find("scales[3]"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.crop_resize_scales.clear(); }).find("crop_resize_scales"),
            std::string::npos);
  EXPECT_NE(with([](auto& o) { o.crop_resize_scales[0] = 0; }).find("crop_resize_scales[0]"),
            std::string::npos);
  EXPECT_NE(with([](auto& o) { o.max_size = -5; }).find("max_size"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.crop_min = 0; }).find("crop_min"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.crop_max = 100; }).find("crop_max"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.flip_prob = 1.5; }).find("flip_prob"), std::string::npos);
  EXPECT_NE(with([](auto& o) { o.flip_prob = std::nan(""); }).find("flip_prob"), std::string::npos);
  EXPECT_EQ(with([](auto& o) { o.max_size = 0; }), "");  // 0 = no cap
}

TEST(DetrAugmentOptionsTest, ForMinSize) {
  const DetrAugmentOptions official;
  const DetrAugmentOptions same = DetrAugmentOptions::ForMinSize(800, 1333);
  EXPECT_EQ(same.scales, official.scales);
  EXPECT_EQ(same.crop_resize_scales, official.crop_resize_scales);
  EXPECT_EQ(same.crop_min, official.crop_min);
  EXPECT_EQ(same.crop_max, official.crop_max);
  EXPECT_EQ(same.max_size, official.max_size);
  EXPECT_EQ(same.flip_prob, official.flip_prob);
  // The official 1200/2000 preset's sizes.
  const DetrAugmentOptions large = DetrAugmentOptions::ForMinSize(1200, 2000);
  EXPECT_EQ(large.scales,
            (std::vector<int64_t>{720, 768, 816, 864, 912, 960, 1008, 1056, 1104, 1152, 1200}));
  EXPECT_EQ(large.crop_resize_scales, (std::vector<int64_t>{600, 750, 900}));
  EXPECT_EQ(large.crop_min, 576);
  EXPECT_EQ(large.crop_max, 900);
  EXPECT_EQ(large.max_size, 2000);
  // Small: 480 * 0.4 = 192 ... 800 * 0.4 = 320, 512 * 0.4 = 204.8 -> 204.
  const DetrAugmentOptions small = DetrAugmentOptions::ForMinSize(320, 533);
  EXPECT_EQ(small.scales.front(), 192);
  EXPECT_EQ(small.scales[1], 204);
  EXPECT_EQ(small.scales.back(), 320);
  EXPECT_EQ(small.crop_resize_scales, (std::vector<int64_t>{160, 200, 240}));
  EXPECT_EQ(small.crop_min, 153);
  EXPECT_EQ(small.crop_max, 240);
  EXPECT_THROW(DetrAugmentOptions::ForMinSize(0, 1333), std::invalid_argument);
  EXPECT_THROW(DetrAugmentOptions::ForMinSize(320, -1), std::invalid_argument);
  try {
    DetrAugmentOptions::ForMinSize(1, 1333);  // 480 / 800 truncates to 0
    ADD_FAILURE() << "expected std::invalid_argument";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("scales"), std::string::npos) << e.what();
  }
}

// ---- normalisation ----

TEST(NormalizedImageTensorTest, EqualsPreprocessImageAtTargetSize) {
  cv::Mat rgb(480, 640, CV_8UC3);
  cv::randu(rgb, cv::Scalar::all(0), cv::Scalar::all(256));
  const at::Tensor hwc = at::from_blob(rgb.data, {480, 640, 3}, at::kByte);
  // 480x640 at min_size 480, max_size 1333 needs no resize.
  const at::Tensor expected = PreprocessImage(hwc, 480, 1333);
  ASSERT_EQ(expected.sizes(), (std::vector<int64_t>{3, 480, 640}));
  const at::Tensor got = NormalizedImageTensor(rgb);
  EXPECT_EQ(got.scalar_type(), at::kFloat);
  EXPECT_TRUE(got.is_contiguous());
  EXPECT_TRUE(at::equal(got, expected));
  // ImageNet mean / std, channel order RGB.
  const cv::Vec3b p = rgb.at<cv::Vec3b>(7, 11);
  const float mean[3] = {0.485f, 0.456f, 0.406f}, stdv[3] = {0.229f, 0.224f, 0.225f};
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(got[c][7][11].item<float>(), (p[c] / 255.0f - mean[c]) / stdv[c], 1e-5);
  }
  // A view into a larger image (non-continuous rows) gives the same values.
  const cv::Mat roi = rgb(cv::Rect(100, 50, 300, 200));
  ASSERT_FALSE(roi.isContinuous());
  EXPECT_TRUE(at::equal(NormalizedImageTensor(roi),
                        expected.narrow(1, 50, 200).narrow(2, 100, 300)));
  // The result does not alias the image.
  rgb.setTo(cv::Scalar::all(0));
  EXPECT_TRUE(at::equal(got, expected));
}

}  // namespace
}  // namespace lpdetr::train

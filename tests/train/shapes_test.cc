// The synthetic shapes dataset (train/shapes.h) and `lpdetr-train
// make-shapes`. The geometry rules, boxes, the coverage and visibility rules
// are checked with this file's own rasteriser (winding-number point tests on
// a 4 x 4 grid of points per pixel) and polygon measurements, not with the
// library's; the drawn pixels are checked against the library's per-shape
// coverage (its anti-aliasing alpha) and the fill colours. Also:
// determinism per (seed, index), datasets byte-identical across thread
// counts (JPEG included), the COCO file read back by CocoTrainDataset, the
// variety over a few hundred images (classes, backgrounds, sizes, rotations,
// aspects, blur, JPEG), output-directory and option errors, and the CLI's
// exit codes.
#include "train/shapes.h"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_paths.h"
#include "train/coco_dataset.h"

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kPi = 3.14159265358979323846;
constexpr int kGrid = 4;  // test samples per pixel side

// ---------------------------------------------------------------------------
// The test's own geometry.

double Cross2(const cv::Point2d& a, const cv::Point2d& b) { return a.x * b.y - a.y * b.x; }

// Winding number of the polygon around (x, y).
int Winding(const std::vector<cv::Point2d>& poly, double x, double y) {
  int wn = 0;
  for (size_t i = 0; i < poly.size(); ++i) {
    const cv::Point2d& a = poly[i];
    const cv::Point2d& b = poly[(i + 1) % poly.size()];
    const double side = Cross2(b - a, cv::Point2d(x, y) - a);
    if (a.y <= y) {
      if (b.y > y && side > 0) ++wn;
    } else if (b.y <= y && side < 0) {
      --wn;
    }
  }
  return wn;
}

bool Inside(const ShapeGeometry& g, double x, double y) {
  if (g.shape_class == ShapeClass::kCircle) {
    return std::hypot(x - g.center.x, y - g.center.y) < g.diameter / 2;
  }
  return Winding(g.polygon, x, y) != 0;
}

double PolygonArea(const std::vector<cv::Point2d>& poly) {
  double twice = 0;
  for (size_t i = 0; i < poly.size(); ++i) twice += Cross2(poly[i], poly[(i + 1) % poly.size()]);
  return std::fabs(twice) / 2;
}

double TrueArea(const ShapeGeometry& g) {
  return g.shape_class == ShapeClass::kCircle ? kPi * g.diameter * g.diameter / 4
                                              : PolygonArea(g.polygon);
}

struct Box {
  double x1 = 1e300, y1 = 1e300, x2 = -1e300, y2 = -1e300;
  bool empty() const { return x2 < x1; }
  void Add(double x, double y) {
    x1 = std::min(x1, x), y1 = std::min(y1, y), x2 = std::max(x2, x), y2 = std::max(y2, y);
  }
};

Box TrueExtent(const ShapeGeometry& g) {
  Box b;
  if (g.shape_class == ShapeClass::kCircle) {
    const double r = g.diameter / 2;
    b.Add(g.center.x - r, g.center.y - r);
    b.Add(g.center.x + r, g.center.y + r);
  } else {
    for (const cv::Point2d& p : g.polygon) b.Add(p.x, p.y);
  }
  return b;
}

// The test's samples of a shape inside the image: points (x + (a + .5)/4,
// y + (b + .5)/4) over the pixels of the shape's extent.
struct Samples {
  int x0 = 0, y0 = 0, cols = 0, rows = 0;  // in samples; x0, y0 in pixels
  std::vector<uint8_t> inside;
  int64_t count = 0;
  Box extent;  // of the inside sample points
  double X(int c) const { return x0 + (c + 0.5) / kGrid; }
  double Y(int r) const { return y0 + (r + 0.5) / kGrid; }
};

Samples Sample(const ShapeGeometry& g, int width, int height) {
  const Box e = TrueExtent(g);
  Samples s;
  s.x0 = std::clamp(static_cast<int>(std::floor(e.x1)), 0, width);
  s.y0 = std::clamp(static_cast<int>(std::floor(e.y1)), 0, height);
  const int x1 = std::clamp(static_cast<int>(std::ceil(e.x2)), 0, width);
  const int y1 = std::clamp(static_cast<int>(std::ceil(e.y2)), 0, height);
  s.cols = std::max(0, x1 - s.x0) * kGrid;
  s.rows = std::max(0, y1 - s.y0) * kGrid;
  s.inside.assign(static_cast<size_t>(s.cols) * s.rows, 0);
  for (int r = 0; r < s.rows; ++r) {
    for (int c = 0; c < s.cols; ++c) {
      if (Inside(g, s.X(c), s.Y(r))) {
        s.inside[static_cast<size_t>(r) * s.cols + c] = 1;
        ++s.count;
        s.extent.Add(s.X(c), s.Y(r));
      }
    }
  }
  return s;
}

// ---------------------------------------------------------------------------
// Fixtures.

ShapesOptions DefaultOptions(uint64_t seed) {
  ShapesOptions o;
  o.seed = seed;
  o.num_images = 1000;
  return o;
}

// 300 images of one seed, generated once.
const std::vector<ShapesImage>& Corpus() {
  static const std::vector<ShapesImage> corpus = [] {
    std::vector<ShapesImage> images;
    const ShapesOptions o = DefaultOptions(20240611);
    for (int i = 0; i < 300; ++i) images.push_back(GenerateShapesImage(i, o));
    return images;
  }();
  return corpus;
}

bool SameImage(const cv::Mat& a, const cv::Mat& b) {
  return a.size() == b.size() && a.type() == b.type() && cv::norm(a, b, cv::NORM_INF) == 0;
}

bool SameShapes(const ShapesImage& a, const ShapesImage& b) {
  if (a.shapes.size() != b.shapes.size()) return false;
  for (size_t i = 0; i < a.shapes.size(); ++i) {
    const ShapeAnnotation &x = a.shapes[i], &y = b.shapes[i];
    if (x.bbox_xywh != y.bbox_xywh || x.area != y.area || x.rgb != y.rgb ||
        x.geometry.polygon != y.geometry.polygon || x.geometry.center != y.geometry.center ||
        x.geometry.diameter != y.geometry.diameter ||
        x.geometry.shape_class != y.geometry.shape_class) {
      return false;
    }
  }
  return a.background == b.background && a.blur_sigma == b.blur_sigma &&
         a.jpeg_quality == b.jpeg_quality;
}

std::string ReadBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Relative path -> bytes of every file under `root`.
std::map<std::string, std::string> ReadTree(const fs::path& root) {
  std::map<std::string, std::string> files;
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (entry.is_regular_file()) {
      files[fs::relative(entry.path(), root).string()] = ReadBytes(entry.path());
    }
  }
  return files;
}

class ShapesDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / "shapes_test" / info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// ---------------------------------------------------------------------------
// Determinism.

TEST(ShapesDeterminism, SameSeedAndIndexGiveTheSameImage) {
  const ShapesOptions o = DefaultOptions(7);
  for (int i : {0, 1, 17, 999}) {
    const ShapesImage a = GenerateShapesImage(i, o), b = GenerateShapesImage(i, o);
    EXPECT_TRUE(SameImage(a.rgb, b.rgb)) << "index " << i;
    EXPECT_TRUE(SameShapes(a, b)) << "index " << i;
  }
}

TEST(ShapesDeterminism, SeedsAndIndicesGiveDifferentImages) {
  const ShapesOptions a = DefaultOptions(7), b = DefaultOptions(8);
  for (int i : {0, 1, 17}) {
    EXPECT_FALSE(SameImage(GenerateShapesImage(i, a).rgb, GenerateShapesImage(i, b).rgb))
        << "index " << i;
  }
  EXPECT_FALSE(SameImage(GenerateShapesImage(3, a).rgb, GenerateShapesImage(4, a).rgb));
  // An image does not depend on the dataset's size.
  ShapesOptions small = a;
  small.num_images = 5;
  EXPECT_TRUE(SameImage(GenerateShapesImage(3, a).rgb, GenerateShapesImage(3, small).rgb));
}

// ---------------------------------------------------------------------------
// Rules.

TEST(ShapesRules, SizesAndCountsInRange) {
  int min_w = 1 << 30, max_w = 0, min_h = 1 << 30, max_h = 0;
  std::set<size_t> counts;
  for (const ShapesImage& im : Corpus()) {
    min_w = std::min(min_w, im.rgb.cols), max_w = std::max(max_w, im.rgb.cols);
    min_h = std::min(min_h, im.rgb.rows), max_h = std::max(max_h, im.rgb.rows);
    ASSERT_EQ(im.rgb.type(), CV_8UC3);
    EXPECT_GE(im.shapes.size(), 1u);
    EXPECT_LE(im.shapes.size() + im.skipped, 10u);
    counts.insert(im.shapes.size());
    for (const ShapeAnnotation& s : im.shapes) {
      EXPECT_GE(s.geometry.diameter, 20.0);
      EXPECT_LE(s.geometry.diameter, 200.0);
    }
  }
  EXPECT_GE(min_w, 320);
  EXPECT_LE(max_w, 640);
  EXPECT_GE(min_h, 320);
  EXPECT_LE(max_h, 640);
  // Spread over the range, and counts from 1 to 10.
  EXPECT_LT(min_w, 340);
  EXPECT_GT(max_w, 620);
  EXPECT_LT(min_h, 340);
  EXPECT_GT(max_h, 620);
  EXPECT_TRUE(counts.count(1) && counts.count(10)) << counts.size() << " distinct counts";

  ShapesOptions o = DefaultOptions(3);
  o.min_size = o.max_size = 400;
  for (int i = 0; i < 5; ++i) {
    const ShapesImage im = GenerateShapesImage(i, o);
    EXPECT_EQ(im.rgb.cols, 400);
    EXPECT_EQ(im.rgb.rows, 400);
  }
}

// Each class's polygon, measured: circumscribed diameter, proportions.
TEST(ShapesRules, GeometryFollowsEachClassDefinition) {
  std::vector<double> rect_aspects, rect_angles, diameters;
  for (const ShapesImage& im : Corpus()) {
    for (const ShapeAnnotation& s : im.shapes) {
      const ShapeGeometry& g = s.geometry;
      const double r = g.diameter / 2;
      diameters.push_back(g.diameter);
      if (g.shape_class == ShapeClass::kCircle) {
        EXPECT_TRUE(g.polygon.empty());
        continue;
      }
      std::vector<double> radii, sides;
      for (size_t i = 0; i < g.polygon.size(); ++i) {
        radii.push_back(cv::norm(g.polygon[i] - g.center));
        sides.push_back(cv::norm(g.polygon[(i + 1) % g.polygon.size()] - g.polygon[i]));
      }
      const double max_radius = *std::max_element(radii.begin(), radii.end());
      EXPECT_NEAR(max_radius, r, 1e-9 * r) << ShapeClassName(g.shape_class);
      switch (g.shape_class) {
        case ShapeClass::kRectangle: {
          ASSERT_EQ(g.polygon.size(), 4u);
          for (size_t i = 0; i < 4; ++i) {
            const cv::Point2d e0 = g.polygon[(i + 1) % 4] - g.polygon[i];
            const cv::Point2d e1 = g.polygon[(i + 2) % 4] - g.polygon[(i + 1) % 4];
            EXPECT_NEAR(e0.dot(e1), 0, 1e-9 * r * r);
          }
          EXPECT_NEAR(cv::norm(g.polygon[2] - g.polygon[0]), g.diameter, 1e-9 * r);
          const double aspect = std::max(sides[0], sides[1]) / std::min(sides[0], sides[1]);
          EXPECT_GE(aspect, 1 - 1e-9);
          EXPECT_LE(aspect, 2.5 + 1e-9);
          rect_aspects.push_back(aspect);
          const cv::Point2d long_edge =
              sides[0] >= sides[1] ? g.polygon[1] - g.polygon[0] : g.polygon[2] - g.polygon[1];
          double angle = std::atan2(long_edge.y, long_edge.x);
          if (angle < 0) angle += kPi;
          rect_angles.push_back(std::fmod(angle, kPi));
          break;
        }
        case ShapeClass::kTriangle:
          ASSERT_EQ(g.polygon.size(), 3u);
          for (double side : sides) EXPECT_NEAR(side, r * std::sqrt(3.0), 1e-9 * r);
          break;
        case ShapeClass::kHexagon:
          ASSERT_EQ(g.polygon.size(), 6u);
          for (double side : sides) EXPECT_NEAR(side, r, 1e-9 * r);
          for (double radius : radii) EXPECT_NEAR(radius, r, 1e-9 * r);
          break;
        case ShapeClass::kStar: {
          ASSERT_EQ(g.polygon.size(), 10u);
          for (size_t i = 0; i < 10; i += 2) {
            EXPECT_NEAR(radii[i], r, 1e-9 * r);
            const double inner = radii[i + 1] / r;
            EXPECT_GT(inner, 0.35);
            EXPECT_LT(inner, 0.45);
          }
          for (double side : sides) EXPECT_NEAR(side, sides[0], 1e-9 * r);  // regular star
          break;
        }
        case ShapeClass::kCross: {
          ASSERT_EQ(g.polygon.size(), 12u);
          // Right angles everywhere; width / length from the area and the
          // circumradius: A = L^2 (2q - q^2), R^2 = L^2 (1 + q^2) / 4.
          for (size_t i = 0; i < 12; ++i) {
            const cv::Point2d e0 = g.polygon[(i + 1) % 12] - g.polygon[i];
            const cv::Point2d e1 = g.polygon[(i + 2) % 12] - g.polygon[(i + 1) % 12];
            EXPECT_NEAR(e0.dot(e1), 0, 1e-9 * r * r);
          }
          const double k = PolygonArea(g.polygon) / (r * r);
          double lo = 0.01, hi = 0.99;  // 4 (2q - q^2) / (1 + q^2) rises with q
          for (int it = 0; it < 100; ++it) {
            const double q = (lo + hi) / 2;
            (4 * (2 * q - q * q) / (1 + q * q) < k ? lo : hi) = q;
          }
          EXPECT_NEAR(lo, 1.0 / 3, 0.03);
          break;
        }
        default:
          break;
      }
    }
  }
  // Variety: diameters over the whole range, rectangles of every aspect and
  // orientation.
  std::vector<int> size_bins(9, 0);
  for (double d : diameters) ++size_bins[std::min(8, static_cast<int>((d - 20) / 20))];
  for (int b = 0; b < 9; ++b) EXPECT_GT(size_bins[b], 10) << "diameters " << 20 + 20 * b << "..";
  ASSERT_GT(rect_aspects.size(), 50u);
  EXPECT_GT(
      std::count_if(rect_aspects.begin(), rect_aspects.end(), [](double a) { return a < 1.001; }),
      3);
  EXPECT_GT(
      std::count_if(rect_aspects.begin(), rect_aspects.end(), [](double a) { return a > 2.2; }), 3);
  std::vector<int> angle_bins(6, 0);
  for (double a : rect_angles) ++angle_bins[std::min(5, static_cast<int>(a / (kPi / 6)))];
  for (int b = 0; b < 6; ++b) EXPECT_GT(angle_bins[b], 3) << "rectangle angle bin " << b;
}

// The box is the extent of the geometry inside the image: every inside
// sample lies in it, and its edges are within a pixel of the samples'
// extent; border-cut shapes are clipped.
TEST(ShapesRules, BoxesAreTheClippedExtentOfTheGeometry) {
  int cut = 0, touching = 0;
  const auto& corpus = Corpus();
  for (size_t n = 0; n < 60; ++n) {
    const ShapesImage& im = corpus[n];
    const int w = im.rgb.cols, h = im.rgb.rows;
    for (const ShapeAnnotation& s : im.shapes) {
      const auto& b = s.bbox_xywh;
      const double x2 = b[0] + b[2], y2 = b[1] + b[3];
      ASSERT_GT(b[2], 0);
      ASSERT_GT(b[3], 0);
      EXPECT_GE(b[0], 0);
      EXPECT_GE(b[1], 0);
      EXPECT_LE(x2, w + 1e-9);
      EXPECT_LE(y2, h + 1e-9);
      const Samples samples = Sample(s.geometry, w, h);
      ASSERT_GT(samples.count, 0);
      const Box& e = samples.extent;
      constexpr double kEps = 1e-9;
      EXPECT_LE(b[0], e.x1 + kEps);
      EXPECT_LE(b[1], e.y1 + kEps);
      EXPECT_GE(x2, e.x2 - kEps);
      EXPECT_GE(y2, e.y2 - kEps);
      EXPECT_LT(e.x1 - b[0], 1.0) << ShapeClassName(s.geometry.shape_class);
      EXPECT_LT(e.y1 - b[1], 1.0) << ShapeClassName(s.geometry.shape_class);
      EXPECT_LT(x2 - e.x2, 1.0) << ShapeClassName(s.geometry.shape_class);
      EXPECT_LT(y2 - e.y2, 1.0) << ShapeClassName(s.geometry.shape_class);
      const Box full = TrueExtent(s.geometry);
      if (full.x1 < 0 || full.y1 < 0 || full.x2 > w || full.y2 > h) {
        ++cut;
        const auto at = [](double v, double border) { return std::fabs(v - border) < 1e-9; };
        touching += at(b[0], 0) || at(b[1], 0) || at(x2, w) || at(y2, h);
      }
    }
  }
  EXPECT_GT(cut, 20);
  EXPECT_EQ(touching, cut);  // a cut shape's box ends exactly at the border
}

// The drawn pixels: each shape's coverage (what it is blended with) ends
// within a pixel of its box, and where a shape fully covers a pixel that no
// later shape touches, the (unblurred, pre-JPEG) image has its colour.
TEST(ShapesRules, DrawnPixelsMatchTheBoxes) {
  int checked_images = 0;
  for (const ShapesImage& im : Corpus()) {
    if (im.blur_sigma > 0) continue;
    if (++checked_images > 40) break;
    const cv::Size size = im.rgb.size();
    std::vector<cv::Mat> coverage;
    for (const ShapeAnnotation& s : im.shapes) coverage.push_back(ShapeCoverage(s.geometry, size));
    for (size_t k = 0; k < im.shapes.size(); ++k) {
      const ShapeAnnotation& s = im.shapes[k];
      cv::Mat nonzero = coverage[k] > 0;
      const cv::Rect drawn = cv::boundingRect(nonzero);
      ASSERT_FALSE(drawn.empty());
      const auto& b = s.bbox_xywh;
      // Pixel i spans [i, i+1): the drawn pixels are those the box touches.
      EXPECT_NEAR(drawn.x, b[0], 1.0);
      EXPECT_NEAR(drawn.y, b[1], 1.0);
      EXPECT_NEAR(drawn.x + drawn.width, b[0] + b[2], 1.0);
      EXPECT_NEAR(drawn.y + drawn.height, b[1] + b[3], 1.0);
      // The drawn coverage is the test's samples' coverage, pixel by pixel
      // (a shift by a fraction of a pixel would show along the outline).
      const Samples samples = Sample(s.geometry, size.width, size.height);
      cv::Mat expected = cv::Mat::zeros(size, CV_32F);
      for (int r = 0; r < samples.rows; ++r) {
        for (int c = 0; c < samples.cols; ++c) {
          if (samples.inside[static_cast<size_t>(r) * samples.cols + c]) {
            expected.at<float>(samples.y0 + r / kGrid, samples.x0 + c / kGrid) +=
                1.0f / (kGrid * kGrid);
          }
        }
      }
      EXPECT_LE(cv::norm(coverage[k], expected, cv::NORM_L1) * kGrid * kGrid,
                0.002 * samples.count + 4)
          << ShapeClassName(s.geometry.shape_class);
      int exact = 0, full = 0;
      for (int y = drawn.y; y < drawn.y + drawn.height; ++y) {
        for (int x = drawn.x; x < drawn.x + drawn.width; ++x) {
          if (coverage[k].at<float>(y, x) != 1.0f) continue;
          bool on_top = true;
          for (size_t j = k + 1; j < im.shapes.size() && on_top; ++j) {
            on_top = coverage[j].at<float>(y, x) == 0.0f;
          }
          if (!on_top) continue;
          ++full;
          exact += im.rgb.at<cv::Vec3b>(y, x) == s.rgb;
        }
      }
      EXPECT_GT(full, 0);
      EXPECT_EQ(exact, full) << ShapeClassName(s.geometry.shape_class);
    }
  }
}

// At most 20% of a shape's in-image area covered by later shapes; at least
// 25% of its area inside the image; measured with the test's samples.
TEST(ShapesRules, CoverageAndVisibilityRules) {
  int overlapping = 0, shapes = 0;
  double worst = 0;
  const auto& corpus = Corpus();
  for (size_t n = 0; n < 40; ++n) {
    const ShapesImage& im = corpus[n];
    const int w = im.rgb.cols, h = im.rgb.rows;
    std::vector<Box> extents;
    for (const ShapeAnnotation& s : im.shapes) extents.push_back(TrueExtent(s.geometry));
    for (size_t k = 0; k < im.shapes.size(); ++k) {
      const ShapeGeometry& g = im.shapes[k].geometry;
      const Samples s = Sample(g, w, h);
      const double visible = static_cast<double>(s.count) / (kGrid * kGrid) / TrueArea(g);
      EXPECT_GE(visible, 0.25 - 0.01) << ShapeClassName(g.shape_class);
      EXPECT_NEAR(im.shapes[k].area, static_cast<double>(s.count) / (kGrid * kGrid),
                  0.002 * im.shapes[k].area + 0.5);
      int64_t covered = 0;
      for (int r = 0; r < s.rows; ++r) {
        for (int c = 0; c < s.cols; ++c) {
          if (!s.inside[static_cast<size_t>(r) * s.cols + c]) continue;
          const double x = s.X(c), y = s.Y(r);
          for (size_t j = k + 1; j < im.shapes.size(); ++j) {
            const Box& e = extents[j];
            if (x < e.x1 || x > e.x2 || y < e.y1 || y > e.y2) continue;
            if (Inside(im.shapes[j].geometry, x, y)) {
              ++covered;
              break;
            }
          }
        }
      }
      const double fraction = static_cast<double>(covered) / static_cast<double>(s.count);
      EXPECT_LE(fraction, 0.2 + 0.005) << "image " << n << " shape " << k;
      EXPECT_NEAR(im.shapes[k].covered_fraction, fraction, 0.005);
      worst = std::max(worst, fraction);
      overlapping += fraction > 0.02;
      ++shapes;
    }
  }
  // The rule is exercised: overlaps happen, some close to the limit.
  EXPECT_GT(overlapping, shapes / 30);
  EXPECT_GT(worst, 0.1);
}

TEST(ShapesRules, FillColoursContrastWithTheirSurroundings) {
  // The fill against the mean of a 3-pixel ring outside the shape that no
  // other shape touches.
  int measured = 0, contrasting = 0;
  const auto& corpus = Corpus();
  for (size_t n = 0; n < 60; ++n) {
    const ShapesImage& im = corpus[n];
    const cv::Size size = im.rgb.size();
    cv::Mat any_shape = cv::Mat::zeros(size, CV_8U);
    std::vector<cv::Mat> masks;
    for (const ShapeAnnotation& s : im.shapes) {
      masks.push_back(ShapeCoverage(s.geometry, size) > 0);
      any_shape |= masks.back();
    }
    for (size_t k = 0; k < im.shapes.size(); ++k) {
      cv::Mat grown;
      cv::dilate(masks[k], grown, cv::getStructuringElement(cv::MORPH_ELLIPSE, cv::Size(7, 7)));
      const cv::Mat ring = grown & ~any_shape;
      if (cv::countNonZero(ring) < 20) continue;
      const cv::Scalar mean = cv::mean(im.rgb, ring);
      const cv::Vec3b c = im.shapes[k].rgb;
      const double d =
          std::sqrt((c[0] - mean[0]) * (c[0] - mean[0]) + (c[1] - mean[1]) * (c[1] - mean[1]) +
                    (c[2] - mean[2]) * (c[2] - mean[2]));
      ++measured;
      contrasting += d >= 60;
    }
  }
  ASSERT_GT(measured, 100);
  EXPECT_GE(contrasting, 0.95 * measured) << contrasting << " of " << measured;
}

TEST(ShapesRules, EveryClassBackgroundAndEffectAppears) {
  std::map<ShapeClass, int> classes;
  std::map<BackgroundKind, int> backgrounds;
  std::set<std::string> details;
  int blurred = 0, jpeg = 0, shapes = 0, skipped = 0;
  for (const ShapesImage& im : Corpus()) {
    for (const ShapeAnnotation& s : im.shapes) ++classes[s.geometry.shape_class];
    ++backgrounds[im.background];
    details.insert(im.background_detail);
    blurred += im.blur_sigma > 0;
    if (im.jpeg_quality > 0) {
      ++jpeg;
      EXPECT_GE(im.jpeg_quality, 70);
      EXPECT_LE(im.jpeg_quality, 95);
    }
    shapes += static_cast<int>(im.shapes.size());
    skipped += im.skipped;
  }
  for (int c = 0; c < kNumShapeClasses; ++c) {
    EXPECT_GT(classes[static_cast<ShapeClass>(c)], shapes / 10)
        << ShapeClassName(static_cast<ShapeClass>(c));
  }
  for (int b = 0; b < kNumBackgroundKinds; ++b) {
    EXPECT_GT(backgrounds[static_cast<BackgroundKind>(b)], 20)
        << BackgroundKindName(static_cast<BackgroundKind>(b));
  }
  for (const char* d : {"solid", "linear", "radial", "grey", "colour", "two-colour", "three-colour",
                        "clouds", "checker", "lines"}) {
    EXPECT_TRUE(details.count(d)) << d;
  }
  const int n = static_cast<int>(Corpus().size());
  EXPECT_GT(blurred, n / 10);
  EXPECT_LT(blurred, n / 3);
  EXPECT_GT(jpeg, n / 5);  // jpeg_prob 0.3
  EXPECT_LT(jpeg, n * 2 / 5);
  EXPECT_LT(skipped, shapes / 50);

  ShapesOptions never = DefaultOptions(1), always = DefaultOptions(1);
  never.jpeg_prob = 0;
  always.jpeg_prob = 1;
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(GenerateShapesImage(i, never).jpeg_quality, 0);
    EXPECT_GT(GenerateShapesImage(i, always).jpeg_quality, 0);
  }
}

TEST(ShapesOptionsTest, InvalidOptionsAreRejected) {
  const auto rejects = [](void (*change)(ShapesOptions&), const char* word) {
    ShapesOptions o = DefaultOptions(1);
    change(o);
    try {
      ValidateShapesOptions(o);
      ADD_FAILURE() << "accepted, expected an error naming " << word;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  rejects([](ShapesOptions& o) { o.num_images = 0; }, "images");
  rejects([](ShapesOptions& o) { o.min_size = 700; }, "max size");
  rejects([](ShapesOptions& o) { o.min_size = 8; }, "min size");
  rejects([](ShapesOptions& o) { o.jpeg_prob = 1.5; }, "jpeg");
  rejects([](ShapesOptions& o) { o.jpeg_prob = std::nan(""); }, "jpeg");
  rejects([](ShapesOptions& o) { o.max_shapes = 0; }, "shape counts");
  rejects([](ShapesOptions& o) { o.threads = -1; }, "threads");
  EXPECT_THROW(GenerateShapesImage(-1, DefaultOptions(1)), std::invalid_argument);
}

// ---------------------------------------------------------------------------
// The written dataset.

ShapesOptions SmallDataset(uint64_t seed) {
  ShapesOptions o;
  o.seed = seed;
  o.num_images = 14;
  o.min_size = 96;
  o.max_size = 200;
  o.max_diameter = 80;
  o.jpeg_prob = 0.5;
  return o;
}

TEST_F(ShapesDirTest, WritesAreByteIdenticalAcrossThreadCounts) {
  ShapesOptions o = SmallDataset(11);
  o.threads = 1;
  const ShapesDatasetSummary a = WriteShapesDataset((dir_ / "a").string(), o);
  o.threads = 3;
  const ShapesDatasetSummary b = WriteShapesDataset((dir_ / "b").string(), o);
  EXPECT_EQ(a.annotations, b.annotations);
  const auto files_a = ReadTree(dir_ / "a"), files_b = ReadTree(dir_ / "b");
  EXPECT_EQ(files_a.size(), static_cast<size_t>(o.num_images) + 1);
  ASSERT_EQ(files_a.size(), files_b.size());
  int jpg = 0, png = 0;
  for (const auto& [name, bytes] : files_a) {
    ASSERT_TRUE(files_b.count(name)) << name;
    EXPECT_TRUE(files_b.at(name) == bytes) << name << " differs";
    jpg += name.size() > 4 && name.substr(name.size() - 4) == ".jpg";
    png += name.size() > 4 && name.substr(name.size() - 4) == ".png";
  }
  EXPECT_GT(jpg, 0);
  EXPECT_GT(png, 0);
  EXPECT_EQ(a.jpeg_images, jpg);
  EXPECT_FALSE(fs::exists(dir_ / "a" / "annotations.json.tmp"));

  o.seed = 12;
  WriteShapesDataset((dir_ / "c").string(), o);
  EXPECT_NE(ReadBytes(dir_ / "a" / "annotations.json"), ReadBytes(dir_ / "c" / "annotations.json"));
}

TEST_F(ShapesDirTest, CocoFileMatchesTheImagesAndLoads) {
  const ShapesOptions o = SmallDataset(21);
  int64_t progress_calls = 0, last_done = 0;
  const ShapesDatasetSummary summary =
      WriteShapesDataset(dir_.string(), o, [&](int64_t done, int64_t total) {
        ++progress_calls;
        EXPECT_EQ(done, last_done + 1);
        EXPECT_EQ(total, o.num_images);
        last_done = done;
      });
  EXPECT_EQ(progress_calls, o.num_images);

  std::ifstream in(dir_ / "annotations.json");
  const json coco = json::parse(in);
  ASSERT_EQ(coco.at("categories").size(), 6u);
  const std::vector<std::string> names = {"circle", "rectangle", "triangle",
                                          "star",   "hexagon",   "cross"};
  for (int c = 0; c < 6; ++c) {
    EXPECT_EQ(coco["categories"][c].at("id"), c + 1);
    EXPECT_EQ(coco["categories"][c].at("name"), names[c]);
  }
  ASSERT_EQ(coco.at("images").size(), static_cast<size_t>(o.num_images));
  std::vector<ShapesImage> generated;
  std::set<int64_t> annotation_ids;
  size_t next_annotation = 0;
  const json& annotations = coco.at("annotations");
  EXPECT_EQ(annotations.size(), static_cast<size_t>(summary.annotations));
  for (int i = 0; i < o.num_images; ++i) {
    generated.push_back(GenerateShapesImage(i, o));
    const ShapesImage& im = generated.back();
    const json& entry = coco["images"][i];
    EXPECT_EQ(entry.at("id"), i + 1);
    EXPECT_EQ(entry.at("width"), im.rgb.cols);
    EXPECT_EQ(entry.at("height"), im.rgb.rows);
    char name[32];
    std::snprintf(name, sizeof(name), "%06d.%s", i + 1, im.jpeg_quality > 0 ? "jpg" : "png");
    EXPECT_EQ(entry.at("file_name"), name);
    for (const ShapeAnnotation& s : im.shapes) {
      ASSERT_LT(next_annotation, annotations.size());
      const json& a = annotations[next_annotation++];
      EXPECT_TRUE(annotation_ids.insert(a.at("id").get<int64_t>()).second);
      EXPECT_GE(a.at("id").get<int64_t>(), 1);
      EXPECT_EQ(a.at("image_id"), i + 1);
      EXPECT_EQ(a.at("category_id"), s.category_id());
      EXPECT_EQ(a.at("iscrowd"), 0);
      for (int k = 0; k < 4; ++k) EXPECT_NEAR(a.at("bbox")[k].get<double>(), s.bbox_xywh[k], 2e-4);
      EXPECT_NEAR(a.at("area").get<double>(), s.area, 0.01);
    }
  }
  EXPECT_EQ(next_annotation, annotations.size());

  const CocoTrainDataset dataset((dir_ / "annotations.json").string(), (dir_ / "images").string());
  const CocoDatasetStats& stats = dataset.stats();
  EXPECT_EQ(stats.images, o.num_images);
  EXPECT_EQ(stats.categories, 6);
  EXPECT_EQ(stats.annotations, summary.annotations);
  EXPECT_EQ(stats.used, summary.annotations);
  EXPECT_EQ(stats.crowd_skipped, 0);
  EXPECT_EQ(stats.dropped_degenerate, 0);
  EXPECT_EQ(stats.clipped, 0);
  EXPECT_EQ(dataset.categories().names(), names);
  for (int i = 0; i < o.num_images; ++i) {
    const cv::Mat rgb = dataset.LoadImageRgb(i);
    const ShapesImage& im = generated[i];
    if (im.jpeg_quality == 0) {
      EXPECT_TRUE(SameImage(rgb, im.rgb)) << "image " << i;
    } else {
      // The file is the image encoded at its quality: decoding our own
      // encoding gives the same pixels.
      cv::Mat bgr, decoded;
      cv::cvtColor(im.rgb, bgr, cv::COLOR_RGB2BGR);
      std::vector<uint8_t> bytes;
      ASSERT_TRUE(cv::imencode(".jpg", bgr, bytes, {cv::IMWRITE_JPEG_QUALITY, im.jpeg_quality}));
      cv::cvtColor(cv::imdecode(bytes, cv::IMREAD_COLOR), decoded, cv::COLOR_BGR2RGB);
      EXPECT_TRUE(SameImage(rgb, decoded)) << "image " << i;
    }
    EXPECT_EQ(dataset.image(i).targets.labels.size(), im.shapes.size());
  }
}

TEST_F(ShapesDirTest, RefusesANonEmptyOutputDirectory) {
  std::ofstream(dir_ / "keep.txt") << "x";
  try {
    WriteShapesDataset(dir_.string(), SmallDataset(1));
    ADD_FAILURE() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("not empty"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "images"));
  EXPECT_FALSE(fs::exists(dir_ / "annotations.json"));
  EXPECT_EQ(ReadBytes(dir_ / "keep.txt"), "x");
  // An existing empty directory is fine.
  fs::create_directories(dir_ / "empty");
  EXPECT_EQ(WriteShapesDataset((dir_ / "empty").string(), SmallDataset(1)).images, 14);
}

// ---------------------------------------------------------------------------
// lpdetr-train make-shapes.

class MakeShapesCliTest : public ShapesDirTest {
 protected:
  int Run(const std::string& args, std::string* err = nullptr) {
    const fs::path out = dir_ / "stdout.txt", err_path = dir_ / "stderr.txt";
    const std::string cmd = "'" + (fs::path(testing_paths::BinDir()) / "lpdetr-train").string() +
                            "' make-shapes " + args + " > '" + out.string() + "' 2> '" +
                            err_path.string() + "'";
    const int status = std::system(cmd.c_str());
    if (err) *err = ReadBytes(err_path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
};

TEST_F(MakeShapesCliTest, UsageErrorsExit2) {
  const std::string out = "--output '" + (dir_ / "ds").string() + "'";
  // Missing flags, values out of range (flag checks and option validation),
  // an unknown flag.
  for (const std::string& args : std::vector<std::string>{
           "--images 2 --seed 1", out + " --images 2", out + " --images 2 --seed 1 --jpeg-prob 2",
           out + " --images 2 --seed 1 --min-size 700",
           out + " --images 2 --seed 1 --colour red"}) {
    std::string err;
    EXPECT_EQ(Run(args, &err), 2) << args;
    EXPECT_NE(err.find("usage: lpdetr-train make-shapes"), std::string::npos) << args;
  }
  EXPECT_FALSE(fs::exists(dir_ / "ds"));
  EXPECT_EQ(Run("--help"), 0);
}

TEST_F(MakeShapesCliTest, WritesTheDatasetAndRefusesToOverwrite) {
  const std::string common = " --images 4 --seed 9 --min-size 64 --max-size 128 --jpeg-prob 0.5";
  std::string err;
  ASSERT_EQ(Run("--output '" + (dir_ / "a").string() + "'" + common + " --threads 2", &err), 0)
      << err;
  EXPECT_NE(err.find("wrote 4 images"), std::string::npos) << err;
  ASSERT_EQ(Run("--output=" + (dir_ / "b").string() + common + " --threads 1", &err), 0) << err;
  EXPECT_TRUE(ReadTree(dir_ / "a") == ReadTree(dir_ / "b"));
  const json coco = json::parse(ReadBytes(dir_ / "a" / "annotations.json"));
  EXPECT_EQ(coco.at("images").size(), 4u);
  for (const json& image : coco["images"]) {
    EXPECT_TRUE(fs::exists(dir_ / "a" / "images" / image.at("file_name").get<std::string>()));
    EXPECT_GE(image.at("width").get<int>(), 64);
    EXPECT_LE(image.at("width").get<int>(), 128);
  }
  const std::string before = ReadBytes(dir_ / "a" / "annotations.json");
  EXPECT_EQ(Run("--output '" + (dir_ / "a").string() + "'" + " --images 2 --seed 1", &err), 1);
  EXPECT_NE(err.find("not empty"), std::string::npos) << err;
  EXPECT_EQ(ReadBytes(dir_ / "a" / "annotations.json"), before);
}

}  // namespace
}  // namespace lpdetr::train

// The synthetic shapes dataset: filled circles, rectangles, triangles, stars,
// hexagons and crosses on varied backgrounds, with their COCO boxes. It is
// what the embedded default model is trained on and what `lpdetr-train
// make-shapes` writes.
//
// An image is a pure function of (options, index): image i draws from its
// own random stream seeded from (seed, i), so a dataset is byte-identical for
// the same options whatever the thread count or order of generation.
//
// Rules of one image:
//   * width and height independently uniform in [min_size, max_size];
//   * background: solid, gradient (linear or radial), noise (grey or colour,
//     sometimes over a gradient), stripes (2-3 colours, any angle and period)
//     or texture (blurred multi-scale noise, a rotated checker, random lines);
//   * min_shapes..max_shapes shapes, class uniform, circumscribed diameter in
//     [min_diameter, max_diameter] (half log-uniform, half uniform, capped at
//     the image's short side), any rotation (a fifth snapped upright),
//     rectangle aspect 1..2.5 (a fifth squares), star inner radius
//     0.36..0.44 of the outer, cross arm width 0.31..0.36 of the arm length
//     (a plus of two bars of that ratio);
//   * placed wholly inside the image with probability 0.7, otherwise with its
//     centre anywhere up to a fifth of the diameter outside (about 15% of
//     the shapes end up cut by the border), at least min_visible of the
//     shape's area inside the image;
//   * a shape may cover earlier ones, but no earlier shape gets more than
//     max_covered of its in-image area covered in total; a placement that
//     would break either rule is redrawn (up to kPlacementAttempts times,
//     then that shape is left out and counted in ShapesImage::skipped);
//   * the fill colour contrasts with what lies under the shape at the time it
//     is drawn: far from the region's mean colour (RGB distance and
//     luminance), and close to few of its pixels;
//   * anti-aliased edges: coverage sampled on a kSupersample x kSupersample
//     grid of points per pixel (exact point-in-shape tests at the sample
//     points, pixel i spanning [i, i+1)) and blended with the fill colour;
//   * then a light Gaussian blur with probability blur_prob, and JPEG
//     encoding (quality 70..95) with probability jpeg_prob when written.
//
// A shape's box is the extent of its exact geometry (polygon or disc)
// intersected with the image [0, width] x [0, height], covered parts
// included. Its `area` is its in-image area (sample count / kSupersample^2).
//
// Threading: GenerateShapesImage and RasterizeShape are pure and may run
// concurrently. WriteShapesDataset generates with `threads` worker threads.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <opencv2/core/mat.hpp>
#include <opencv2/core/types.hpp>
#include <string>
#include <vector>

namespace lpdetr::train {

// The classes in their category order (category id = class + 1).
enum class ShapeClass { kCircle = 0, kRectangle, kTriangle, kStar, kHexagon, kCross };
inline constexpr int kNumShapeClasses = 6;
// "circle", "rectangle", "triangle", "star", "hexagon", "cross".
const char* ShapeClassName(ShapeClass shape_class);
inline int64_t ShapeCategoryId(ShapeClass shape_class) {
  return static_cast<int64_t>(shape_class) + 1;
}

enum class BackgroundKind { kSolid = 0, kGradient, kNoise, kStripes, kTexture };
inline constexpr int kNumBackgroundKinds = 5;
const char* BackgroundKindName(BackgroundKind kind);

// Coverage samples per pixel side.
inline constexpr int kSupersample = 4;
// Placements tried per shape before it is left out.
inline constexpr int kPlacementAttempts = 60;

struct ShapesOptions {
  int64_t num_images = 1;
  uint64_t seed = 0;
  int min_size = 320;  // image sides, each uniform in [min_size, max_size]
  int max_size = 640;
  int min_shapes = 1;
  int max_shapes = 10;
  double min_diameter = 20;  // circumscribed diameter, pixels
  double max_diameter = 200;
  double max_covered = 0.2;   // of an earlier shape's in-image area
  double min_visible = 0.25;  // of a shape's area inside the image
  double blur_prob = 0.2;
  double jpeg_prob = 0.3;
  int jpeg_min_quality = 70;
  int jpeg_max_quality = 95;
  int threads = 0;  // WriteShapesDataset workers; 0 = hardware concurrency
};

// Throws std::invalid_argument naming the first bad option and its value.
void ValidateShapesOptions(const ShapesOptions& options);

// A shape's exact geometry in continuous image coordinates (pixel i spans
// [i, i+1)).
struct ShapeGeometry {
  ShapeClass shape_class = ShapeClass::kCircle;
  cv::Point2d center;
  double diameter = 0;  // circumscribed
  double rotation = 0;  // radians, counter-clockwise on screen; 0 for circles
  double aspect = 1;    // rectangle: long side / short side
  double ratio = 0;     // star: inner / outer radius; cross: arm width / length
  // The outline (simple polygon, vertices in order); empty for a circle.
  std::vector<cv::Point2d> polygon;

  // Area of the whole shape (inside the image or not).
  double Area() const;
  // Bounding box of the whole shape: {x1, y1, x2, y2}.
  std::array<double, 4> Extent() const;
  // Bounding box of the shape's intersection with [0, width] x [0, height];
  // all zero when they do not intersect.
  std::array<double, 4> ClippedExtent(int width, int height) const;
  // Whether a point lies inside the shape (boundary points may go either way).
  bool Contains(double x, double y) const;
};

// Builds a shape's polygon (none for a circle) from its parameters.
ShapeGeometry MakeShapeGeometry(ShapeClass shape_class, cv::Point2d center, double diameter,
                                double rotation, double aspect, double ratio);

// A shape's coverage of the image's pixels: `samples` is CV_8U of size
// rect.size() * kSupersample, 255 where the sample point (x + (a + 0.5) / S,
// y + (b + 0.5) / S) lies inside the shape; `rect` is the pixels of the
// shape's extent inside the image (empty when none).
struct ShapeRaster {
  cv::Rect rect;
  cv::Mat samples;
  int64_t count = 0;  // samples inside
};
ShapeRaster RasterizeShape(const ShapeGeometry& geometry, cv::Size image_size);
// Per-pixel coverage in [0, 1] (CV_32F, image size): the fraction of the
// pixel's samples inside; the alpha the shape is drawn with.
cv::Mat ShapeCoverage(const ShapeGeometry& geometry, cv::Size image_size);

struct ShapeAnnotation {
  ShapeGeometry geometry;
  std::array<double, 4> bbox_xywh{};  // ClippedExtent as x, y, w, h
  double area = 0;                    // in-image area, pixels
  double visible_fraction = 0;        // in-image area / Area()
  double covered_fraction = 0;        // of the in-image area, by later shapes
  cv::Vec3b rgb;                      // fill colour
  int64_t category_id() const { return ShapeCategoryId(geometry.shape_class); }
};

struct ShapesImage {
  cv::Mat rgb;                          // CV_8UC3, before any JPEG encoding
  std::vector<ShapeAnnotation> shapes;  // in drawing order
  BackgroundKind background = BackgroundKind::kSolid;
  std::string background_detail;  // e.g. "radial", "checker"
  double blur_sigma = 0;          // 0: not blurred
  int jpeg_quality = 0;           // 0: written as PNG
  int skipped = 0;                // shapes left out after kPlacementAttempts
};

// Image `index` (0-based) of the dataset `options` describes. Throws
// std::invalid_argument on invalid options or a negative index.
ShapesImage GenerateShapesImage(int64_t index, const ShapesOptions& options);

struct ShapesDatasetSummary {
  int64_t images = 0;
  int64_t annotations = 0;
  int64_t jpeg_images = 0;
  int64_t skipped_shapes = 0;
};

// Writes options.num_images images to DIR/images/NNNNNN.{png,jpg} (NNNNNN =
// image id = index + 1) and DIR/annotations.json (COCO instances, written to
// a temporary name and renamed last). DIR must not exist or be empty
// (std::runtime_error otherwise). `on_progress(done, total)` is called after
// each image, from the worker threads but never concurrently. On an error
// the workers stop, the first error is rethrown and annotations.json is not
// written (the images written so far stay).
ShapesDatasetSummary WriteShapesDataset(
    const std::string& dir, const ShapesOptions& options,
    const std::function<void(int64_t done, int64_t total)>& on_progress = {});

}  // namespace lpdetr::train

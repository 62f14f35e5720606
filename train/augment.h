// The training augmentation of the official `detr` preset, on 8-bit RGB
// images (cv::Mat CV_8UC3) and their pixel xyxy boxes:
//
//   1. horizontal flip with probability flip_prob;
//   2. one of two branches, chosen with equal probability:
//      (a) resize the short side to a random entry of `scales`, the long side
//          capped at max_size;
//      (b) resize the short side to a random entry of crop_resize_scales (no
//          cap, as the official: a very elongated image gets long there),
//          crop a random crop_min..crop_max rectangle (each side drawn
//          uniformly, clamped to the image, position uniform), then (a);
//   3. boxes clipped to the image, and boxes narrower or lower than 1 pixel
//      dropped with their labels.
//
// Semantics follow the official uint8 tensor pipeline: new sizes are
// truncated as trunc(side * r) in double precision with r = short / min(h, w)
// (capped by max_size / max(h, w)); the image is resampled with LibTorch's
// anti-aliased bilinear (align_corners false, the kernel model/preprocess.cc
// uses at inference) in float32 and rounded back to 8 bits after every
// resize; boxes are scaled by float32(new / old) per axis, shifted by the
// crop and clamped to it, in float32. Zero-area boxes are dropped as soon as
// they appear (a crop); the 1-pixel rule is applied once, at the end, on the
// final frame.
//
// Random draws come only from the caller's std::mt19937_64, through integer
// arithmetic on its raw outputs (no std:: distributions, whose algorithms
// differ between standard libraries), so a seed gives the same result on
// every platform.
//
// Threading: every function is a pure function of its arguments (and of the
// rng passed in); concurrent calls with distinct rngs are safe. Resizes run
// LibTorch's CPU kernel, which uses LibTorch's intra-op thread pool; loader
// threads calling this concurrently may want at::set_num_threads(1).
#pragma once

#include <array>
#include <cstdint>
#include <random>
#include <vector>

#include <ATen/core/Tensor.h>
#include <opencv2/core/mat.hpp>

#include "train/coco_dataset.h"

namespace lpdetr::train {

// Knobs of DetrAugment; the defaults are the official preset.
struct DetrAugmentOptions {
  // Short-side sizes of the final resize (branch (a), and the end of (b)).
  std::vector<int64_t> scales = {480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800};
  // Cap of the final resize's long side; 0 = no cap.
  int64_t max_size = 1333;
  // Short-side sizes of branch (b)'s first resize (never capped).
  std::vector<int64_t> crop_resize_scales = {400, 500, 600};
  // Range of each side of branch (b)'s crop.
  int64_t crop_min = 384;
  int64_t crop_max = 600;
  // Probability of the horizontal flip.
  double flip_prob = 0.5;

  // The official options for a model trained at short side `min_size`:
  // every size (scales, crop_resize_scales, crop_min, crop_max) multiplied by
  // min_size / 800 and truncated to an integer, max_size as given. Sizes are
  // not rounded to multiples of 32 (batches are padded to 32 anyway, and
  // rounding would merge neighbouring scales of small models); truncation
  // reproduces the official 1200/2000 preset exactly (ForMinSize(1200,
  // 2000): scales 720..1200 step 48, crop resize 600/750/900, crop 576..900).
  // ForMinSize(800, 1333) equals the defaults. Throws std::invalid_argument
  // when min_size <= 0 or the result does not Validate().
  static DetrAugmentOptions ForMinSize(int64_t min_size, int64_t max_size);

  // Throws std::invalid_argument naming the field and its value: empty or
  // non-positive scales / crop_resize_scales, negative max_size, crop_min <=
  // 0, crop_max < crop_min, flip_prob outside [0, 1] or NaN.
  void Validate() const;
};

struct AugmentedImage {
  cv::Mat rgb;         // CV_8UC3, continuous, owns its pixels
  BoxTargets targets;  // pixel xyxy in rgb's frame
};

// Which random choices DetrAugment made (for logs and tests).
struct DetrAugmentRecord {
  bool flipped = false;
  bool crop_branch = false;  // branch (b)
  // Branch (b) only: the crop rectangle in the frame of its first resize.
  int64_t crop_x = 0, crop_y = 0, crop_width = 0, crop_height = 0;
  // Short side drawn for the final resize (before the max_size cap).
  int64_t final_short_side = 0;
};

// The whole augmentation. Throws std::invalid_argument when the options do
// not Validate(), rgb is not a non-empty CV_8UC3 image, or the box and label
// counts differ. `record`, when given, receives the choices made.
AugmentedImage DetrAugment(const cv::Mat& rgb, const BoxTargets& targets,
                           const DetrAugmentOptions& options, std::mt19937_64& rng,
                           DetrAugmentRecord* record = nullptr);

// ---- building blocks (each checks its image and targets as DetrAugment) ----

// Mirror left-right: x1' = W - x2, x2' = W - x1.
AugmentedImage HorizontalFlip(const cv::Mat& rgb, const BoxTargets& targets);

// Output (height, width) of the shortest-side resize: r = short_side /
// min(h, w), capped by max_size / max(h, w) when max_size > 0, each side
// trunc(side * r) in double, at least 1.
std::array<int64_t, 2> ShortestSideSize(int64_t height, int64_t width, int64_t short_side,
                                        int64_t max_size);

// Resize to ShortestSideSize (max_size 0 = no cap); boxes scaled by the exact
// per-axis ratios new / old. An image already at that size is copied as is.
AugmentedImage ResizeShortestSide(const cv::Mat& rgb, const BoxTargets& targets,
                                  int64_t short_side, int64_t max_size);

// ResizeShortestSide to a uniformly drawn entry of `short_sides`.
AugmentedImage RandomResizeShortestSide(const cv::Mat& rgb, const BoxTargets& targets,
                                        const std::vector<int64_t>& short_sides,
                                        int64_t max_size, std::mt19937_64& rng);

// The w x h rectangle at (x, y), which must lie inside the image (else
// std::invalid_argument): boxes shifted by (-x, -y), clamped to [0, w] x
// [0, h], zero-area ones (x2 <= x1 or y2 <= y1) dropped with their labels.
AugmentedImage CropImage(const cv::Mat& rgb, const BoxTargets& targets, int64_t x, int64_t y,
                         int64_t w, int64_t h);

// A random crop: height drawn uniformly in [min_size, min(H, max_size)], then
// width likewise in [min_size, min(W, max_size)], then top in [0, H - h] and
// left in [0, W - w]. A side shorter than min_size is taken whole (the
// official crop raises there; DetrAugment's first resize makes it rare).
// Requires 0 < min_size <= max_size. The rectangle chosen is written to
// `rect` (x, y, w, h) when given.
AugmentedImage RandomSizeCrop(const cv::Mat& rgb, const BoxTargets& targets, int64_t min_size,
                              int64_t max_size, std::mt19937_64& rng,
                              std::array<int64_t, 4>* rect = nullptr);

// Boxes clipped to [0, width] x [0, height]; those with x2 - x1 < min_size or
// y2 - y1 < min_size afterwards dropped with their labels.
BoxTargets SanitizeBoxes(const BoxTargets& targets, int64_t width, int64_t height,
                         float min_size = 1.0f);

// [3, h, w] float32 (contiguous), ImageNet mean/std normalised: exactly what
// PreprocessImage (model/preprocess.h) gives for this image at a size that
// needs no resize, through a per-channel table of its 256 values taken from
// PreprocessImage once. rgb: CV_8UC3 (RGB order), any step.
at::Tensor NormalizedImageTensor(const cv::Mat& rgb);

}  // namespace lpdetr::train

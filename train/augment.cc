#include "train/augment.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include <ATen/ATen.h>
#include <opencv2/core.hpp>

#include "model/preprocess.h"

namespace lpdetr::train {
namespace {

// Uniform integer in [lo, hi] from raw 64-bit outputs (rejection sampling,
// no modulo bias).
int64_t UniformInt(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  const uint64_t range = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo) + 1;
  uint64_t x = rng();
  if (range == 0) return static_cast<int64_t>(x);  // the full 64-bit range
  // rem = 2^64 mod range; x is accepted below 2^64 - rem, a multiple of range.
  const uint64_t rem = (std::numeric_limits<uint64_t>::max() % range + 1) % range;
  while (rem != 0 && x >= -rem) x = rng();
  return static_cast<int64_t>(static_cast<uint64_t>(lo) + x % range);
}

// Uniform double in [0, 1) with 53 random bits.
double Uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

void CheckImage(const cv::Mat& rgb, const char* what) {
  if (rgb.empty() || rgb.type() != CV_8UC3) {
    throw std::invalid_argument(std::string(what) + ": expected a non-empty CV_8UC3 RGB image, got " +
                                std::to_string(rgb.cols) + "x" + std::to_string(rgb.rows) +
                                " of OpenCV type " + std::to_string(rgb.type()));
  }
}

void CheckTargets(const BoxTargets& targets, const char* what) {
  if (targets.boxes_xyxy.size() != targets.labels.size()) {
    throw std::invalid_argument(std::string(what) + ": " +
                                std::to_string(targets.boxes_xyxy.size()) + " boxes but " +
                                std::to_string(targets.labels.size()) + " labels");
  }
}

void CheckSizes(const std::vector<int64_t>& sizes, const char* field) {
  if (sizes.empty()) {
    throw std::invalid_argument(std::string("DetrAugmentOptions.") + field + " must not be empty");
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] <= 0) {
      throw std::invalid_argument(std::string("DetrAugmentOptions.") + field + "[" +
                                  std::to_string(i) + "] must be positive, got " +
                                  std::to_string(sizes[i]));
    }
  }
}

// Anti-aliased bilinear resize in float32 rounded back to 8 bits (the
// official uint8 tensor resize). Same size: a copy.
cv::Mat ResizeRgb(const cv::Mat& rgb, int64_t height, int64_t width) {
  if (rgb.rows == height && rgb.cols == width) return rgb.clone();
  const at::Tensor in = at::from_blob(rgb.data, {rgb.rows, rgb.cols, 3},
                                      {static_cast<int64_t>(rgb.step[0]), 3, 1}, at::kByte);
  const at::Tensor x = in.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);
  const at::Tensor y = at::_upsample_bilinear2d_aa(x, {height, width}, /*align_corners=*/false)
                           .round_()
                           .clamp_(0, 255);
  cv::Mat out(static_cast<int>(height), static_cast<int>(width), CV_8UC3);
  at::from_blob(out.data, {height, width, 3}, at::kByte).copy_(y.squeeze(0).permute({1, 2, 0}));
  return out;
}

// The normalised value of every 8-bit value per channel, taken from
// PreprocessImage itself (a 1x256 image of the values 0..255 in every channel,
// at its own size, where it does not resize): normalisation is elementwise,
// so a lookup reproduces its output exactly.
const std::array<std::array<float, 256>, 3>& NormalizationTable() {
  static const std::array<std::array<float, 256>, 3> table = [] {
    const at::Tensor values = at::arange(256, at::kByte).view({1, 256, 1}).expand({1, 256, 3}).contiguous();
    const at::Tensor normalized = PreprocessImage(values, 1, 256).contiguous();  // [3,1,256]
    std::array<std::array<float, 256>, 3> t{};
    for (int c = 0; c < 3; ++c) {
      const float* src = normalized.data_ptr<float>() + c * 256;
      std::copy(src, src + 256, t[static_cast<size_t>(c)].begin());
    }
    return t;
  }();
  return table;
}

}  // namespace

DetrAugmentOptions DetrAugmentOptions::ForMinSize(int64_t min_size, int64_t max_size) {
  if (min_size <= 0) {
    throw std::invalid_argument("DetrAugmentOptions::ForMinSize: min_size must be positive, got " +
                                std::to_string(min_size));
  }
  constexpr int64_t kOfficialMinSize = 800;
  auto scaled = [min_size](int64_t v) { return v * min_size / kOfficialMinSize; };
  DetrAugmentOptions options;
  for (auto& s : options.scales) s = scaled(s);
  for (auto& s : options.crop_resize_scales) s = scaled(s);
  options.crop_min = scaled(options.crop_min);
  options.crop_max = scaled(options.crop_max);
  options.max_size = max_size;
  options.Validate();
  return options;
}

void DetrAugmentOptions::Validate() const {
  CheckSizes(scales, "scales");
  CheckSizes(crop_resize_scales, "crop_resize_scales");
  if (max_size < 0) {
    throw std::invalid_argument("DetrAugmentOptions.max_size must be >= 0 (0 = no cap), got " +
                                std::to_string(max_size));
  }
  if (crop_min <= 0) {
    throw std::invalid_argument("DetrAugmentOptions.crop_min must be positive, got " +
                                std::to_string(crop_min));
  }
  if (crop_max < crop_min) {
    throw std::invalid_argument("DetrAugmentOptions.crop_max (" + std::to_string(crop_max) +
                                ") must be >= crop_min (" + std::to_string(crop_min) + ")");
  }
  if (!(flip_prob >= 0.0 && flip_prob <= 1.0)) {
    throw std::invalid_argument("DetrAugmentOptions.flip_prob must be in [0, 1], got " +
                                std::to_string(flip_prob));
  }
}

AugmentedImage HorizontalFlip(const cv::Mat& rgb, const BoxTargets& targets) {
  CheckImage(rgb, "HorizontalFlip");
  CheckTargets(targets, "HorizontalFlip");
  AugmentedImage out;
  cv::flip(rgb, out.rgb, /*flipCode=*/1);
  const float w = static_cast<float>(rgb.cols);
  out.targets.labels = targets.labels;
  out.targets.boxes_xyxy.reserve(targets.boxes_xyxy.size());
  for (const auto& b : targets.boxes_xyxy) out.targets.boxes_xyxy.push_back({w - b[2], b[1], w - b[0], b[3]});
  return out;
}

std::array<int64_t, 2> ShortestSideSize(int64_t height, int64_t width, int64_t short_side,
                                        int64_t max_size) {
  if (height <= 0 || width <= 0 || short_side <= 0 || max_size < 0) {
    throw std::invalid_argument("ShortestSideSize: needs a positive image size and short side and "
                                "max_size >= 0, got " + std::to_string(width) + "x" +
                                std::to_string(height) + ", short side " +
                                std::to_string(short_side) + ", max_size " +
                                std::to_string(max_size));
  }
  const double h = static_cast<double>(height), w = static_cast<double>(width);
  double r = static_cast<double>(short_side) / std::min(h, w);
  if (max_size > 0) r = std::min(r, static_cast<double>(max_size) / std::max(h, w));
  return {std::max<int64_t>(static_cast<int64_t>(h * r), 1),
          std::max<int64_t>(static_cast<int64_t>(w * r), 1)};
}

AugmentedImage ResizeShortestSide(const cv::Mat& rgb, const BoxTargets& targets,
                                  int64_t short_side, int64_t max_size) {
  CheckImage(rgb, "ResizeShortestSide");
  CheckTargets(targets, "ResizeShortestSide");
  const auto [height, width] = ShortestSideSize(rgb.rows, rgb.cols, short_side, max_size);
  AugmentedImage out;
  out.rgb = ResizeRgb(rgb, height, width);
  const float rw = static_cast<float>(static_cast<double>(width) / rgb.cols);
  const float rh = static_cast<float>(static_cast<double>(height) / rgb.rows);
  out.targets.labels = targets.labels;
  out.targets.boxes_xyxy.reserve(targets.boxes_xyxy.size());
  for (const auto& b : targets.boxes_xyxy) {
    out.targets.boxes_xyxy.push_back({b[0] * rw, b[1] * rh, b[2] * rw, b[3] * rh});
  }
  return out;
}

AugmentedImage RandomResizeShortestSide(const cv::Mat& rgb, const BoxTargets& targets,
                                        const std::vector<int64_t>& short_sides,
                                        int64_t max_size, std::mt19937_64& rng) {
  if (short_sides.empty()) {
    throw std::invalid_argument("RandomResizeShortestSide: no short sides to choose from");
  }
  const int64_t i = UniformInt(rng, 0, static_cast<int64_t>(short_sides.size()) - 1);
  return ResizeShortestSide(rgb, targets, short_sides[static_cast<size_t>(i)], max_size);
}

AugmentedImage CropImage(const cv::Mat& rgb, const BoxTargets& targets, int64_t x, int64_t y,
                         int64_t w, int64_t h) {
  CheckImage(rgb, "CropImage");
  CheckTargets(targets, "CropImage");
  if (x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > rgb.cols || y + h > rgb.rows) {
    throw std::invalid_argument("CropImage: rectangle x " + std::to_string(x) + " y " +
                                std::to_string(y) + " w " + std::to_string(w) + " h " +
                                std::to_string(h) + " is not inside the " +
                                std::to_string(rgb.cols) + "x" + std::to_string(rgb.rows) +
                                " image");
  }
  AugmentedImage out;
  out.rgb = rgb(cv::Rect(static_cast<int>(x), static_cast<int>(y), static_cast<int>(w),
                         static_cast<int>(h)))
                .clone();
  const float fx = static_cast<float>(x), fy = static_cast<float>(y);
  const float fw = static_cast<float>(w), fh = static_cast<float>(h);
  for (size_t i = 0; i < targets.boxes_xyxy.size(); ++i) {
    const auto& b = targets.boxes_xyxy[i];
    const std::array<float, 4> c = {std::clamp(b[0] - fx, 0.0f, fw), std::clamp(b[1] - fy, 0.0f, fh),
                                    std::clamp(b[2] - fx, 0.0f, fw), std::clamp(b[3] - fy, 0.0f, fh)};
    if (c[2] > c[0] && c[3] > c[1]) {
      out.targets.boxes_xyxy.push_back(c);
      out.targets.labels.push_back(targets.labels[i]);
    }
  }
  return out;
}

AugmentedImage RandomSizeCrop(const cv::Mat& rgb, const BoxTargets& targets, int64_t min_size,
                              int64_t max_size, std::mt19937_64& rng,
                              std::array<int64_t, 4>* rect) {
  CheckImage(rgb, "RandomSizeCrop");
  if (min_size <= 0 || max_size < min_size) {
    throw std::invalid_argument("RandomSizeCrop: needs 0 < min_size <= max_size, got " +
                                std::to_string(min_size) + ", " + std::to_string(max_size));
  }
  const int64_t height = rgb.rows, width = rgb.cols;
  const int64_t h = UniformInt(rng, std::min(min_size, height), std::min(height, max_size));
  const int64_t w = UniformInt(rng, std::min(min_size, width), std::min(width, max_size));
  const int64_t y = UniformInt(rng, 0, height - h);
  const int64_t x = UniformInt(rng, 0, width - w);
  if (rect) *rect = {x, y, w, h};
  return CropImage(rgb, targets, x, y, w, h);
}

BoxTargets SanitizeBoxes(const BoxTargets& targets, int64_t width, int64_t height,
                         float min_size) {
  CheckTargets(targets, "SanitizeBoxes");
  const float fw = static_cast<float>(width), fh = static_cast<float>(height);
  BoxTargets out;
  for (size_t i = 0; i < targets.boxes_xyxy.size(); ++i) {
    const auto& b = targets.boxes_xyxy[i];
    const std::array<float, 4> c = {std::clamp(b[0], 0.0f, fw), std::clamp(b[1], 0.0f, fh),
                                    std::clamp(b[2], 0.0f, fw), std::clamp(b[3], 0.0f, fh)};
    if (c[2] - c[0] >= min_size && c[3] - c[1] >= min_size) {
      out.boxes_xyxy.push_back(c);
      out.labels.push_back(targets.labels[i]);
    }
  }
  return out;
}

AugmentedImage DetrAugment(const cv::Mat& rgb, const BoxTargets& targets,
                           const DetrAugmentOptions& options, std::mt19937_64& rng,
                           DetrAugmentRecord* record) {
  options.Validate();
  CheckImage(rgb, "DetrAugment");
  CheckTargets(targets, "DetrAugment");
  DetrAugmentRecord choices;

  AugmentedImage current{rgb, targets};  // shares rgb's pixels until the first transform
  choices.flipped = Uniform01(rng) < options.flip_prob;
  if (choices.flipped) current = HorizontalFlip(current.rgb, current.targets);

  choices.crop_branch = UniformInt(rng, 0, 1) == 1;
  if (choices.crop_branch) {
    current = RandomResizeShortestSide(current.rgb, current.targets, options.crop_resize_scales,
                                       /*max_size=*/0, rng);
    std::array<int64_t, 4> rect{};
    current = RandomSizeCrop(current.rgb, current.targets, options.crop_min, options.crop_max,
                             rng, &rect);
    choices.crop_x = rect[0];
    choices.crop_y = rect[1];
    choices.crop_width = rect[2];
    choices.crop_height = rect[3];
  }
  const int64_t i = UniformInt(rng, 0, static_cast<int64_t>(options.scales.size()) - 1);
  choices.final_short_side = options.scales[static_cast<size_t>(i)];
  // Always resamples or copies: the result never shares the input's pixels.
  current = ResizeShortestSide(current.rgb, current.targets, choices.final_short_side,
                               options.max_size);
  current.targets = SanitizeBoxes(current.targets, current.rgb.cols, current.rgb.rows);
  if (record) *record = choices;
  return current;
}

at::Tensor NormalizedImageTensor(const cv::Mat& rgb) {
  CheckImage(rgb, "NormalizedImageTensor");
  const auto& lut = NormalizationTable();
  const int64_t h = rgb.rows, w = rgb.cols;
  at::Tensor out = at::empty({3, h, w}, at::kFloat);
  float* planes[3] = {out.data_ptr<float>(), out.data_ptr<float>() + h * w,
                      out.data_ptr<float>() + 2 * h * w};
  for (int64_t y = 0; y < h; ++y) {
    const uint8_t* row = rgb.ptr<uint8_t>(static_cast<int>(y));
    for (int c = 0; c < 3; ++c) {
      float* dst = planes[c] + y * w;
      const float* table = lut[static_cast<size_t>(c)].data();
      for (int64_t x = 0; x < w; ++x) dst[x] = table[row[3 * x + c]];
    }
  }
  return out;
}

}  // namespace lpdetr::train

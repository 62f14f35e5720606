// Inference preprocessing (SPEC 2.1), in LibTorch only: resize so the short
// side is min_size and the long side at most max_size (bilinear with
// anti-aliasing, rounded back to 8 bits as the official uint8 pipeline does),
// ImageNet mean/std normalisation, and batching with zero padding to a
// multiple of 32 plus a padding mask.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/detector.h"

namespace lpdetr {

constexpr int64_t kSizeDivisible = 32;

// Output (h, w) of the resize for an input of (height, width).
std::array<int64_t, 2> ResizedSize(int64_t height, int64_t width, int64_t min_size,
                                   int64_t max_size);

// rgb: [H,W,3] uint8 (HWC, RGB). Returns [3,h,w] float32, normalized.
at::Tensor PreprocessImage(const at::Tensor& rgb, int64_t min_size, int64_t max_size);

// Pads preprocessed [3,h,w] images into one batch; extents are each image's
// own size rounded up to 32 (see ImageBatch).
ImageBatch BatchImages(const std::vector<at::Tensor>& images);

}  // namespace lpdetr

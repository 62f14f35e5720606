#include "model/preprocess.h"

#include <algorithm>

#include <ATen/ATen.h>

namespace lpdetr {

std::array<int64_t, 2> ResizedSize(int64_t height, int64_t width, int64_t min_size,
                                   int64_t max_size) {
  TORCH_CHECK(height > 0 && width > 0, "image size must be positive, got ", height, "x", width);
  // float32 arithmetic and truncation, as the official EvalResize.
  float r = static_cast<float>(min_size) / static_cast<float>(std::min(height, width));
  r = std::min(r, static_cast<float>(max_size) / static_cast<float>(std::max(height, width)));
  const int64_t h = static_cast<int64_t>(static_cast<float>(height) * r);
  const int64_t w = static_cast<int64_t>(static_cast<float>(width) * r);
  return {std::max<int64_t>(h, 1), std::max<int64_t>(w, 1)};
}

at::Tensor PreprocessImage(const at::Tensor& rgb, int64_t min_size, int64_t max_size) {
  TORCH_CHECK(rgb.dim() == 3 && rgb.size(2) == 3 && rgb.scalar_type() == at::kByte,
              "expected an RGB uint8 image [H,W,3], got ", rgb.scalar_type(), " ", rgb.sizes());
  const auto size = ResizedSize(rgb.size(0), rgb.size(1), min_size, max_size);
  at::Tensor x = rgb.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat);
  if (size[0] != rgb.size(0) || size[1] != rgb.size(1)) {
    x = at::_upsample_bilinear2d_aa(x, {size[0], size[1]}, /*align_corners=*/false)
            .round_()
            .clamp_(0, 255);
  }
  static const at::Tensor mean = at::tensor({0.485f, 0.456f, 0.406f}).view({1, 3, 1, 1});
  static const at::Tensor std = at::tensor({0.229f, 0.224f, 0.225f}).view({1, 3, 1, 1});
  x = x.div_(255.0f);
  return ((x - mean.to(x.device())) / std.to(x.device())).squeeze(0);
}

ImageBatch BatchImages(const std::vector<at::Tensor>& images) {
  TORCH_CHECK(!images.empty(), "BatchImages needs at least one image");
  auto round_up = [](int64_t v) { return (v + kSizeDivisible - 1) / kSizeDivisible * kSizeDivisible; };
  int64_t height = 0, width = 0;
  for (const auto& img : images) {
    TORCH_CHECK(img.dim() == 3 && img.size(0) == 3, "expected [3,h,w] images, got ", img.sizes());
    height = std::max(height, img.size(1));
    width = std::max(width, img.size(2));
  }
  height = round_up(height);
  width = round_up(width);
  const int64_t n = static_cast<int64_t>(images.size());
  ImageBatch batch;
  batch.images = at::zeros({n, 3, height, width}, images[0].options());
  batch.mask = at::ones({n, height, width}, images[0].options().dtype(at::kBool));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t h = images[i].size(1), w = images[i].size(2);
    batch.images[i].narrow(1, 0, h).narrow(2, 0, w).copy_(images[i]);
    batch.mask[i].narrow(0, 0, h).narrow(1, 0, w).fill_(false);
    batch.extents.push_back({round_up(h), round_up(w)});
  }
  return batch;
}

}  // namespace lpdetr

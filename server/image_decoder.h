// Image decoding for the detection service: encoded JPEG / PNG / WebP / BMP /
// TIFF bytes (OpenCV) or raw pixels -> an 8-bit RGB cv::Mat.
//
// Every encoded image's header is parsed here first (without OpenCV) and its
// width x height checked against `max_pixels` BEFORE any pixel is decoded, so
// a decompression bomb (a small file claiming 60000 x 60000) costs nothing.
// Grayscale is expanded to RGB, alpha is dropped, and the EXIF orientation of
// JPEGs is applied (OpenCV's imdecode does it unless told not to). A JPEG
// without its end-of-image marker is rejected as truncated (libjpeg would
// otherwise fill the missing rows with gray and only warn).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <opencv2/core/mat.hpp>

#include "absl/status/statusor.h"

namespace lpdetr::server {

enum class ImageFormat { kJpeg, kPng, kWebp, kBmp, kTiff };
const char* ImageFormatName(ImageFormat format);

struct ImageHeader {
  ImageFormat format;
  int64_t width = 0;   // as stored (before EXIF orientation)
  int64_t height = 0;
};

// Recognises the format from the magic bytes and reads the stored size.
// INVALID_ARGUMENT for empty, unknown or truncated headers.
absl::StatusOr<ImageHeader> ReadImageHeader(std::string_view bytes);

// Decodes to RGB (CV_8UC3, continuous). INVALID_ARGUMENT for bytes that are
// not a decodable image, and when the header's width * height exceeds
// max_pixels (checked before decoding; SPEC 4: decompression bombs are bad
// input).
absl::StatusOr<cv::Mat> DecodeImage(std::string_view bytes, int64_t max_pixels);

enum class RawFormat { kRgb8, kBgr8, kGray8, kRgba8 };

// Raw row-major, tightly packed pixels -> RGB (CV_8UC3, continuous, owns its
// data). INVALID_ARGUMENT when the sizes are not positive or the byte count
// is not width * height * channels or width * height exceeds max_pixels.
absl::StatusOr<cv::Mat> DecodeRaw(std::string_view pixels, int64_t width, int64_t height,
                                  RawFormat format, int64_t max_pixels);

}  // namespace lpdetr::server

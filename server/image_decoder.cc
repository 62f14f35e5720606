#include "server/image_decoder.h"

#include <vector>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"

namespace lpdetr::server {
namespace {

uint32_t Be16(const unsigned char* p) { return (uint32_t{p[0]} << 8) | p[1]; }
uint32_t Be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint32_t Le16(const unsigned char* p) { return uint32_t{p[0]} | (uint32_t{p[1]} << 8); }
uint32_t Le24(const unsigned char* p) { return Le16(p) | (uint32_t{p[2]} << 16); }
uint32_t Le32(const unsigned char* p) { return Le16(p) | (Le16(p + 2) << 16); }

absl::Status Truncated(const char* format) {
  return absl::InvalidArgumentError(absl::StrCat("truncated ", format, " header"));
}

absl::StatusOr<ImageHeader> PngHeader(const unsigned char* p, size_t n) {
  if (n < 24) return Truncated("PNG");
  if (std::string_view(reinterpret_cast<const char*>(p + 12), 4) != "IHDR") {
    return absl::InvalidArgumentError("PNG without an IHDR chunk first");
  }
  return ImageHeader{ImageFormat::kPng, Be32(p + 16), Be32(p + 20)};
}

absl::StatusOr<ImageHeader> JpegHeader(const unsigned char* p, size_t n) {
  size_t i = 2;
  while (true) {
    while (i < n && p[i] != 0xFF) ++i;       // tolerate garbage between segments
    while (i < n && p[i] == 0xFF) ++i;       // fill bytes
    if (i >= n) return Truncated("JPEG");
    const unsigned char marker = p[i++];
    if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;
    if (marker == 0xD9 || marker == 0xDA) {
      return absl::InvalidArgumentError("JPEG without a frame header before its scan data");
    }
    if (i + 2 > n) return Truncated("JPEG");
    const uint32_t len = Be16(p + i);
    if (len < 2) return absl::InvalidArgumentError("corrupt JPEG segment length");
    const bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 &&
                     marker != 0xCC;
    if (sof) {
      if (i + 7 > n) return Truncated("JPEG");
      return ImageHeader{ImageFormat::kJpeg, Be16(p + i + 5), Be16(p + i + 3)};
    }
    i += len;
  }
}

absl::StatusOr<ImageHeader> WebpHeader(const unsigned char* p, size_t n) {
  if (n < 30) return Truncated("WebP");
  const std::string_view chunk(reinterpret_cast<const char*>(p + 12), 4);
  if (chunk == "VP8 ") {
    return ImageHeader{ImageFormat::kWebp, Le16(p + 26) & 0x3FFF, Le16(p + 28) & 0x3FFF};
  }
  if (chunk == "VP8L") {
    const uint32_t bits = Le32(p + 21);
    return ImageHeader{ImageFormat::kWebp, (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1};
  }
  if (chunk == "VP8X") {
    return ImageHeader{ImageFormat::kWebp, int64_t{Le24(p + 24)} + 1, int64_t{Le24(p + 27)} + 1};
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown WebP chunk '", std::string(chunk), "'"));
}

absl::StatusOr<ImageHeader> BmpHeader(const unsigned char* p, size_t n) {
  if (n < 26) return Truncated("BMP");
  const uint32_t info_size = Le32(p + 14);
  if (info_size == 12) return ImageHeader{ImageFormat::kBmp, Le16(p + 18), Le16(p + 20)};
  const int64_t w = static_cast<int32_t>(Le32(p + 18));
  const int64_t h = static_cast<int32_t>(Le32(p + 22));
  return ImageHeader{ImageFormat::kBmp, w < 0 ? -w : w, h < 0 ? -h : h};
}

absl::StatusOr<ImageHeader> TiffHeader(const unsigned char* p, size_t n) {
  const bool le = p[0] == 'I';
  auto u16 = [&](size_t o) { return le ? Le16(p + o) : Be16(p + o); };
  auto u32 = [&](size_t o) { return le ? Le32(p + o) : Be32(p + o); };
  if (n < 8) return Truncated("TIFF");
  const size_t ifd = u32(4);
  if (ifd + 2 > n) return Truncated("TIFF");
  const size_t count = u16(ifd);
  int64_t w = -1, h = -1;
  for (size_t k = 0; k < count; ++k) {
    const size_t e = ifd + 2 + 12 * k;
    if (e + 12 > n) return Truncated("TIFF");
    const uint32_t tag = u16(e), type = u16(e + 2);
    const int64_t v = type == 3 ? u16(e + 8) : u32(e + 8);
    if (tag == 256) w = v;
    if (tag == 257) h = v;
  }
  if (w < 0 || h < 0) return absl::InvalidArgumentError("TIFF without ImageWidth/ImageLength");
  return ImageHeader{ImageFormat::kTiff, w, h};
}

absl::Status CheckPixels(int64_t width, int64_t height, int64_t max_pixels) {
  if (width <= 0 || height <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("image size ", width, "x", height, " is not positive"));
  }
  if (width * height > max_pixels) {
    return absl::InvalidArgumentError(absl::StrCat("image of ", width, "x", height, " = ",
                                                     width * height, " pixels exceeds the limit of ",
                                                     max_pixels, " pixels"));
  }
  return absl::OkStatus();
}

// A complete JPEG has an end-of-image marker after its first scan. The
// segments before the scan are skipped by their lengths (an EXIF thumbnail
// carries its own end marker); in the entropy-coded data 0xFF is always
// followed by 0x00 or a restart marker, so 0xFF 0xD9 there is the real end.
bool JpegHasEnd(const unsigned char* p, size_t n) {
  size_t i = 2;
  while (true) {
    while (i < n && p[i] != 0xFF) ++i;
    while (i < n && p[i] == 0xFF) ++i;
    if (i >= n) return false;
    const unsigned char marker = p[i++];
    if (marker == 0xD9) return false;  // end before any scan
    if (marker == 0xD8 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) continue;
    if (i + 2 > n) return false;
    const size_t len = Be16(p + i);
    if (marker == 0xDA) {
      i += len;
      break;
    }
    i += len;
  }
  for (; i + 1 < n; ++i) {
    if (p[i] == 0xFF && p[i + 1] == 0xD9) return true;
  }
  return false;
}

}  // namespace

const char* ImageFormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg: return "JPEG";
    case ImageFormat::kPng: return "PNG";
    case ImageFormat::kWebp: return "WebP";
    case ImageFormat::kBmp: return "BMP";
    case ImageFormat::kTiff: return "TIFF";
  }
  return "?";
}

absl::StatusOr<ImageHeader> ReadImageHeader(std::string_view bytes) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  if (n == 0) return absl::InvalidArgumentError("empty image bytes");
  if (n >= 8 && bytes.substr(0, 8) == std::string_view("\x89PNG\r\n\x1a\n", 8)) {
    return PngHeader(p, n);
  }
  if (n >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return JpegHeader(p, n);
  if (n >= 12 && bytes.substr(0, 4) == "RIFF" && bytes.substr(8, 4) == "WEBP") {
    return WebpHeader(p, n);
  }
  if (n >= 2 && bytes.substr(0, 2) == "BM") return BmpHeader(p, n);
  if (n >= 4 && (bytes.substr(0, 4) == std::string_view("II*\0", 4) ||
                 bytes.substr(0, 4) == std::string_view("MM\0*", 4))) {
    return TiffHeader(p, n);
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "not a JPEG, PNG, WebP, BMP or TIFF image (", n, " bytes, unknown signature)"));
}

absl::StatusOr<cv::Mat> DecodeImage(std::string_view bytes, int64_t max_pixels) {
  absl::StatusOr<ImageHeader> header = ReadImageHeader(bytes);
  if (!header.ok()) return header.status();
  if (absl::Status s = CheckPixels(header->width, header->height, max_pixels); !s.ok()) {
    return s;
  }
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  if (header->format == ImageFormat::kJpeg && !JpegHasEnd(p, bytes.size())) {
    return absl::InvalidArgumentError("truncated JPEG: no end-of-image marker");
  }
  cv::Mat bgr;
  try {
    const cv::Mat buf(1, static_cast<int>(bytes.size()), CV_8UC1,
                      const_cast<unsigned char*>(p));
    bgr = cv::imdecode(buf, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot decode ", ImageFormatName(header->format), ": ", e.what()));
  }
  if (bgr.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot decode ", ImageFormatName(header->format),
                                                   " image (corrupt or truncated data)"));
  }
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

absl::StatusOr<cv::Mat> DecodeRaw(std::string_view pixels, int64_t width, int64_t height,
                                  RawFormat format, int64_t max_pixels) {
  if (absl::Status s = CheckPixels(width, height, max_pixels); !s.ok()) return s;
  int channels = 3, type = CV_8UC3, code = -1;
  switch (format) {
    case RawFormat::kRgb8: break;
    case RawFormat::kBgr8: code = cv::COLOR_BGR2RGB; break;
    case RawFormat::kGray8: channels = 1; type = CV_8UC1; code = cv::COLOR_GRAY2RGB; break;
    case RawFormat::kRgba8: channels = 4; type = CV_8UC4; code = cv::COLOR_RGBA2RGB; break;
  }
  const int64_t expected = width * height * channels;
  if (static_cast<int64_t>(pixels.size()) != expected) {
    return absl::InvalidArgumentError(absl::StrCat("raw image of ", width, "x", height, "x",
                                                   channels, " needs ", expected, " bytes, got ",
                                                   pixels.size()));
  }
  const cv::Mat view(static_cast<int>(height), static_cast<int>(width), type,
                     const_cast<char*>(pixels.data()));
  cv::Mat rgb;
  if (code < 0) {
    rgb = view.clone();
  } else {
    cv::cvtColor(view, rgb, code);
  }
  return rgb;
}

}  // namespace lpdetr::server

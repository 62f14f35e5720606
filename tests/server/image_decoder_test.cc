// Image decoding: every format, grayscale, alpha, EXIF orientation, the
// header pixel-limit check before decoding, and malformed inputs.
#include "server/image_decoder.h"

#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace lpdetr::server {
namespace {

constexpr int64_t kLimit = 10'000'000;

// 48 x 32 BGR image: left half red, right half blue (in RGB terms).
cv::Mat TestImageBgr(int width = 48, int height = 32) {
  cv::Mat m(height, width, CV_8UC3, cv::Scalar(255, 0, 0));  // BGR blue
  m(cv::Rect(0, 0, width / 2, height)).setTo(cv::Scalar(0, 0, 255));  // BGR red
  return m;
}

std::string Encode(const cv::Mat& m, const std::string& ext, std::vector<int> params = {}) {
  std::vector<unsigned char> buf;
  EXPECT_TRUE(cv::imencode(ext, m, buf, params)) << ext;
  return std::string(buf.begin(), buf.end());
}

// Asserts RGB pixel (x, y) is close to (r, g, b).
void ExpectRgb(const cv::Mat& rgb, int x, int y, int r, int g, int b, int tol = 40) {
  ASSERT_EQ(rgb.type(), CV_8UC3);
  const cv::Vec3b p = rgb.at<cv::Vec3b>(y, x);
  EXPECT_NEAR(p[0], r, tol) << "x=" << x << " y=" << y;
  EXPECT_NEAR(p[1], g, tol) << "x=" << x << " y=" << y;
  EXPECT_NEAR(p[2], b, tol) << "x=" << x << " y=" << y;
}

struct FormatCase {
  const char* ext;
  ImageFormat format;
  std::vector<int> params;
};

class EachFormat : public ::testing::TestWithParam<FormatCase> {};

TEST_P(EachFormat, HeaderAndPixels) {
  const FormatCase& c = GetParam();
  const std::string bytes = Encode(TestImageBgr(), c.ext, c.params);
  absl::StatusOr<ImageHeader> header = ReadImageHeader(bytes);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->format, c.format);
  EXPECT_EQ(header->width, 48);
  EXPECT_EQ(header->height, 32);
  absl::StatusOr<cv::Mat> rgb = DecodeImage(bytes, kLimit);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->cols, 48);
  EXPECT_EQ(rgb->rows, 32);
  EXPECT_TRUE(rgb->isContinuous());
  ExpectRgb(*rgb, 5, 16, 255, 0, 0);   // red half
  ExpectRgb(*rgb, 42, 16, 0, 0, 255);  // blue half
}

INSTANTIATE_TEST_SUITE_P(
    Formats, EachFormat,
    ::testing::Values(FormatCase{".jpg", ImageFormat::kJpeg, {cv::IMWRITE_JPEG_QUALITY, 95}},
                      FormatCase{".png", ImageFormat::kPng, {}},
                      FormatCase{".webp", ImageFormat::kWebp, {cv::IMWRITE_WEBP_QUALITY, 90}},
                      FormatCase{".webp", ImageFormat::kWebp, {cv::IMWRITE_WEBP_QUALITY, 101}},
                      FormatCase{".bmp", ImageFormat::kBmp, {}},
                      FormatCase{".tiff", ImageFormat::kTiff, {}}));

TEST(ImageDecoderTest, GrayscaleBecomesRgb) {
  cv::Mat gray(20, 30, CV_8UC1, cv::Scalar(77));
  for (const char* ext : {".png", ".jpg"}) {
    absl::StatusOr<cv::Mat> rgb = DecodeImage(Encode(gray, ext), kLimit);
    ASSERT_TRUE(rgb.ok()) << ext << ": " << rgb.status();
    EXPECT_EQ(rgb->channels(), 3);
    ExpectRgb(*rgb, 10, 10, 77, 77, 77, 3);
  }
}

TEST(ImageDecoderTest, AlphaIsDropped) {
  cv::Mat bgra(20, 30, CV_8UC4, cv::Scalar(0, 200, 0, 10));  // green, nearly transparent
  absl::StatusOr<cv::Mat> rgb = DecodeImage(Encode(bgra, ".png"), kLimit);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  EXPECT_EQ(rgb->type(), CV_8UC3);
  ExpectRgb(*rgb, 3, 3, 0, 200, 0, 2);
}

// Inserts an APP1 Exif segment with Orientation = `orientation` after SOI.
std::string WithExifOrientation(const std::string& jpeg, int orientation) {
  std::string tiff("MM\0*\0\0\0\x08", 8);                  // big-endian, IFD at 8
  tiff += std::string("\0\x01", 2);                          // one entry
  tiff += std::string("\x01\x12\0\x03\0\0\0\x01", 8);        // Orientation, SHORT, 1
  tiff += std::string(1, '\0') + std::string(1, static_cast<char>(orientation)) +
          std::string(2, '\0');                              // value, padded
  tiff += std::string(4, '\0');                              // no next IFD
  const std::string payload = std::string("Exif\0\0", 6) + tiff;
  const size_t len = payload.size() + 2;
  std::string app1 = "\xFF\xE1";
  app1 += static_cast<char>(len >> 8);
  app1 += static_cast<char>(len & 0xFF);
  app1 += payload;
  return jpeg.substr(0, 2) + app1 + jpeg.substr(2);
}

TEST(ImageDecoderTest, ExifOrientationIsApplied) {
  // 48 wide x 32 high, left half red. Orientation 6 = rotate 90 degrees
  // clockwise for display: the result is 32 wide x 48 high with red on top.
  const std::string jpeg = Encode(TestImageBgr(), ".jpg", {cv::IMWRITE_JPEG_QUALITY, 95});
  absl::StatusOr<cv::Mat> plain = DecodeImage(jpeg, kLimit);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->cols, 48);

  absl::StatusOr<cv::Mat> rotated = DecodeImage(WithExifOrientation(jpeg, 6), kLimit);
  ASSERT_TRUE(rotated.ok()) << rotated.status();
  EXPECT_EQ(rotated->cols, 32);
  EXPECT_EQ(rotated->rows, 48);
  ExpectRgb(*rotated, 16, 5, 255, 0, 0);   // top: red
  ExpectRgb(*rotated, 16, 42, 0, 0, 255);  // bottom: blue

  absl::StatusOr<cv::Mat> flipped = DecodeImage(WithExifOrientation(jpeg, 3), kLimit);  // 180
  ASSERT_TRUE(flipped.ok()) << flipped.status();
  EXPECT_EQ(flipped->cols, 48);
  ExpectRgb(*flipped, 5, 16, 0, 0, 255);   // left: blue now
  ExpectRgb(*flipped, 42, 16, 255, 0, 0);
}

// A real PNG whose IHDR is patched to claim width x height.
std::string PngClaiming(uint32_t width, uint32_t height) {
  std::string png = Encode(TestImageBgr(8, 8), ".png");
  for (int i = 0; i < 4; ++i) {
    png[16 + i] = static_cast<char>(width >> (24 - 8 * i));
    png[20 + i] = static_cast<char>(height >> (24 - 8 * i));
  }
  return png;
}

TEST(ImageDecoderTest, PixelLimitIsCheckedOnTheHeaderBeforeDecoding) {
  const std::string bomb = PngClaiming(60000, 60000);
  absl::StatusOr<ImageHeader> header = ReadImageHeader(bomb);
  ASSERT_TRUE(header.ok());
  EXPECT_EQ(header->width, 60000);
  EXPECT_EQ(header->height, 60000);
  absl::StatusOr<cv::Mat> rgb = DecodeImage(bomb, kLimit);
  EXPECT_EQ(rgb.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(rgb.status().message().find("60000x60000"), std::string::npos) << rgb.status();
  EXPECT_NE(rgb.status().message().find("exceeds the limit"), std::string::npos);
  // The same image under a small limit is refused; above it, decoded.
  const std::string ok = Encode(TestImageBgr(), ".png");
  EXPECT_EQ(DecodeImage(ok, 48 * 32 - 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(DecodeImage(ok, 48 * 32).ok());
}

TEST(ImageDecoderTest, TruncatedImagesAreRejected) {
  const std::string jpeg = Encode(TestImageBgr(64, 64), ".jpg");
  absl::StatusOr<cv::Mat> rgb = DecodeImage(jpeg.substr(0, jpeg.size() / 2), kLimit);
  EXPECT_EQ(rgb.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(rgb.status().message().find("truncated"), std::string::npos) << rgb.status();
  // Cut inside the header.
  EXPECT_EQ(DecodeImage(jpeg.substr(0, 6), kLimit).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::string png = Encode(TestImageBgr(64, 64), ".png");
  EXPECT_EQ(DecodeImage(png.substr(0, png.size() / 2), kLimit).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeImage(png.substr(0, 20), kLimit).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ImageDecoderTest, TruncatedJpegWithAnExifThumbnailIsRejected) {
  // The APP1 segment carries a complete thumbnail JPEG (with its own end
  // marker); the main image is cut in half.
  const std::string thumb = Encode(TestImageBgr(8, 8), ".jpg");
  const std::string payload = std::string("Exif\0\0", 6) + thumb;
  std::string app1 = "\xFF\xE1";
  app1 += static_cast<char>((payload.size() + 2) >> 8);
  app1 += static_cast<char>((payload.size() + 2) & 0xFF);
  app1 += payload;
  const std::string jpeg = Encode(TestImageBgr(64, 64), ".jpg");
  const std::string with_thumb = jpeg.substr(0, 2) + app1 + jpeg.substr(2);
  EXPECT_TRUE(DecodeImage(with_thumb, kLimit).ok());
  const std::string cut = with_thumb.substr(0, 2 + app1.size() + (jpeg.size() - 2) / 2);
  absl::StatusOr<cv::Mat> rgb = DecodeImage(cut, kLimit);
  EXPECT_EQ(rgb.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(rgb.status().message().find("truncated"), std::string::npos) << rgb.status();
}

TEST(ImageDecoderTest, RandomAndEmptyBytesAreRejected) {
  std::mt19937 rng(7);
  std::string noise(4096, '\0');
  for (char& c : noise) c = static_cast<char>(rng());
  noise[0] = 'x';  // not accidentally a magic number
  absl::StatusOr<cv::Mat> rgb = DecodeImage(noise, kLimit);
  EXPECT_EQ(rgb.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(rgb.status().message().find("not a JPEG, PNG"), std::string::npos) << rgb.status();
  // A valid signature followed by noise.
  const std::string fake_png = std::string("\x89PNG\r\n\x1a\n", 8) + noise;
  EXPECT_EQ(DecodeImage(fake_png, kLimit).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<cv::Mat> empty = DecodeImage("", kLimit);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("empty"), std::string::npos);
}

TEST(ImageDecoderTest, RawPixels) {
  const std::string rgb_bytes = {char(10), char(20), char(30), char(40), char(50), char(60)};
  absl::StatusOr<cv::Mat> rgb = DecodeRaw(rgb_bytes, 2, 1, RawFormat::kRgb8, kLimit);
  ASSERT_TRUE(rgb.ok()) << rgb.status();
  ExpectRgb(*rgb, 1, 0, 40, 50, 60, 0);
  absl::StatusOr<cv::Mat> bgr = DecodeRaw(rgb_bytes, 2, 1, RawFormat::kBgr8, kLimit);
  ASSERT_TRUE(bgr.ok());
  ExpectRgb(*bgr, 0, 0, 30, 20, 10, 0);
  absl::StatusOr<cv::Mat> gray = DecodeRaw(std::string("\x05\x09", 2), 2, 1, RawFormat::kGray8,
                                           kLimit);
  ASSERT_TRUE(gray.ok());
  ExpectRgb(*gray, 1, 0, 9, 9, 9, 0);
  absl::StatusOr<cv::Mat> rgba = DecodeRaw(std::string("\x01\x02\x03\x04", 4), 1, 1,
                                           RawFormat::kRgba8, kLimit);
  ASSERT_TRUE(rgba.ok());
  ExpectRgb(*rgba, 0, 0, 1, 2, 3, 0);
  absl::StatusOr<cv::Mat> short_buf = DecodeRaw(rgb_bytes, 3, 1, RawFormat::kRgb8, kLimit);
  EXPECT_EQ(short_buf.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_buf.status().message().find("needs 9 bytes, got 6"), std::string::npos)
      << short_buf.status();
  EXPECT_EQ(DecodeRaw(rgb_bytes, 0, 1, RawFormat::kRgb8, kLimit).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DecodeRaw(rgb_bytes, 2, 1, RawFormat::kRgb8, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lpdetr::server

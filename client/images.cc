#include "images.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <stdexcept>

#include <absl/strings/numbers.h>
#include <absl/strings/str_split.h>
#include <absl/strings/strip.h>
#include <opencv2/imgproc.hpp>

namespace lpdetr::client {
namespace fs = std::filesystem;

namespace {

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// A distinct, stable color per class id.
cv::Scalar ClassColor(int label_id) {
  static const cv::Scalar kPalette[] = {
      {56, 56, 255},  {151, 157, 255}, {31, 112, 255}, {29, 178, 255}, {49, 210, 207},
      {10, 249, 72},  {23, 204, 146},  {134, 219, 61}, {52, 147, 26},  {187, 212, 0},
      {168, 153, 44}, {255, 194, 0},   {147, 69, 52},  {255, 115, 100}, {236, 24, 0},
      {255, 56, 132}, {133, 0, 82},    {255, 56, 203}, {200, 149, 255}, {199, 55, 255}};
  const int n = sizeof(kPalette) / sizeof(kPalette[0]);
  return kPalette[((label_id % n) + n) % n];
}

}  // namespace

void FillDetectOptions(const DetectionFilter& filter, lpdetr::v1::DetectOptions* options) {
  if (filter.score_threshold.has_value()) {
    const float t = *filter.score_threshold;
    if (!(t >= 0.0f && t <= 1.0f)) {
      throw std::invalid_argument("--score_threshold must be in [0, 1], got " +
                                  std::to_string(t));
    }
    options->set_score_threshold(t);
  }
  if (filter.max_detections < 0) {
    throw std::invalid_argument("--max_detections must be >= 0, got " +
                                std::to_string(filter.max_detections));
  }
  options->set_max_detections(filter.max_detections);
  for (absl::string_view part : absl::StrSplit(filter.classes, ',', absl::SkipWhitespace())) {
    part = absl::StripAsciiWhitespace(part);
    int id = 0;
    if (absl::SimpleAtoi(part, &id)) {
      if (id < 0) {
        throw std::invalid_argument("--classes: class id must be >= 0, got " +
                                    std::string(part));
      }
      options->add_class_ids(id);
    } else {
      options->add_class_names(std::string(part));
    }
  }
}

bool HasImageExtension(const std::string& path) {
  static const std::set<std::string> kExtensions = {".jpg", ".jpeg", ".png", ".webp",
                                                    ".bmp", ".tif",  ".tiff"};
  return kExtensions.count(Lower(fs::path(path).extension().string())) > 0;
}

std::vector<std::string> ExpandImagePaths(const std::vector<std::string>& paths) {
  std::vector<std::string> out;
  for (const std::string& p : paths) {
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<std::string> files;
      for (const auto& entry : fs::directory_iterator(p)) {
        if (entry.is_regular_file() && HasImageExtension(entry.path().string())) {
          files.push_back(entry.path().string());
        }
      }
      std::sort(files.begin(), files.end());
      out.insert(out.end(), files.begin(), files.end());
    } else if (fs::exists(p, ec)) {
      out.push_back(p);
    } else {
      throw std::runtime_error("no such file or folder: '" + p + "'");
    }
  }
  return out;
}

int64_t CocoImageId(const std::string& path, int64_t fallback) {
  const std::string stem = fs::path(path).stem().string();
  int64_t id = 0;
  if (!stem.empty() &&
      std::all_of(stem.begin(), stem.end(), [](unsigned char c) { return std::isdigit(c); }) &&
      absl::SimpleAtoi(stem, &id)) {
    return id;
  }
  return fallback;
}

int64_t CategoryMap::CategoryId(int label_id) const {
  if (ids.empty()) return label_id;
  if (label_id < 0 || static_cast<size_t>(label_id) >= ids.size()) {
    throw std::out_of_range("label id " + std::to_string(label_id) +
                            " is outside the category map of model '" + model + "' (" +
                            std::to_string(ids.size()) + " ids)");
  }
  return ids[static_cast<size_t>(label_id)];
}

std::string CategoryMap::MismatchWith(const lpdetr::v1::DetectResponse& response) const {
  if (response.model().empty()) return "";
  if (response.model() == model && response.model_version() == version) return "";
  return "results come from model '" + response.model() + "' version '" +
         response.model_version() + "', but the category ids were read from model '" + model +
         "' version '" + version + "' (the served model changed during the run)";
}

void AppendCocoResults(int64_t image_id, const std::string& file_name,
                       const lpdetr::v1::ImageDetections& image,
                       const CategoryMap& categories, nlohmann::json* results) {
  for (const auto& d : image.detections()) {
    const auto& b = d.box();
    nlohmann::json entry = {
        {"image_id", image_id},
        {"category_id", categories.CategoryId(d.label_id())},
        {"bbox", {b.x_min(), b.y_min(), b.x_max() - b.x_min(), b.y_max() - b.y_min()}},
        {"score", d.score()}};
    if (!file_name.empty()) entry["file_name"] = file_name;
    results->push_back(std::move(entry));
  }
}

void WriteJson(const nlohmann::json& json, const std::string& path) {
  const std::string text = json.dump(1) + "\n";
  if (path == "-") {
    std::cout << text << std::flush;
    return;
  }
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write '" + path + "'");
}

void PrintDetections(std::FILE* out, const std::string& name,
                     const lpdetr::v1::ImageDetections& image) {
  std::fprintf(out, "%s (%dx%d): %d detection%s\n", name.c_str(), image.width(),
               image.height(), image.detections_size(),
               image.detections_size() == 1 ? "" : "s");
  for (const auto& d : image.detections()) {
    const auto& b = d.box();
    std::fprintf(out, "  %-16s id=%-3d score=%.3f box=[%.1f, %.1f, %.1f, %.1f]\n",
                 d.label().c_str(), d.label_id(), d.score(), b.x_min(), b.y_min(), b.x_max(),
                 b.y_max());
  }
}

void DrawDetections(const lpdetr::v1::ImageDetections& image, cv::Mat* bgr) {
  if (bgr->empty()) return;
  const double sx = image.width() > 0 ? static_cast<double>(bgr->cols) / image.width() : 1.0;
  const double sy = image.height() > 0 ? static_cast<double>(bgr->rows) / image.height() : 1.0;
  const int thickness = std::max(1, std::min(bgr->cols, bgr->rows) / 300);
  const double font_scale = std::max(0.4, std::min(bgr->cols, bgr->rows) / 800.0);
  // Worst first, so the best boxes end up on top.
  for (int i = image.detections_size() - 1; i >= 0; --i) {
    const auto& d = image.detections(i);
    const cv::Scalar color = ClassColor(d.label_id());
    const cv::Point p1(static_cast<int>(d.box().x_min() * sx),
                       static_cast<int>(d.box().y_min() * sy));
    const cv::Point p2(static_cast<int>(d.box().x_max() * sx),
                       static_cast<int>(d.box().y_max() * sy));
    cv::rectangle(*bgr, p1, p2, color, thickness, cv::LINE_AA);
    char caption[128];
    std::snprintf(caption, sizeof(caption), "%s %.2f", d.label().c_str(), d.score());
    int baseline = 0;
    const cv::Size text =
        cv::getTextSize(caption, cv::FONT_HERSHEY_SIMPLEX, font_scale, 1, &baseline);
    // Caption above the box, or inside it at the top edge of the image.
    const int top = p1.y - text.height - baseline >= 0 ? p1.y - text.height - baseline : p1.y;
    const cv::Rect bg(p1.x, top, text.width + 2, text.height + baseline);
    cv::rectangle(*bgr, bg, color, cv::FILLED);
    cv::putText(*bgr, caption, cv::Point(p1.x + 1, top + text.height),
                cv::FONT_HERSHEY_SIMPLEX, font_scale, cv::Scalar(255, 255, 255), 1, cv::LINE_AA);
  }
}

std::string DrawOutputPath(const std::string& dir, const std::string& input,
                           std::set<std::string>* used) {
  fs::path name = fs::path(input).filename();
  if (!HasImageExtension(name.string())) name.replace_extension(".png");
  std::string candidate = (fs::path(dir) / name).string();
  for (int n = 1; used->count(candidate) > 0; ++n) {
    candidate = (fs::path(dir) / (name.stem().string() + "_" + std::to_string(n) +
                                  name.extension().string()))
                    .string();
  }
  used->insert(candidate);
  return candidate;
}

}  // namespace lpdetr::client

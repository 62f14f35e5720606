// Image-side helpers of lpdetr-client: expanding files and folders into an
// ordered image list, detection options from flags, COCO results JSON, the
// text listing and drawing boxes and labels on an image.
#pragma once

#include <cstdint>
#include <cstdio>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include "lpdetr/v1/detection.pb.h"

namespace lpdetr::client {

// Flags that shape a DetectOptions message.
struct DetectionFilter {
  // Unset: the server's default threshold.
  std::optional<float> score_threshold;
  // 0: the model's num_select.
  int max_detections = 0;
  // Comma-separated class ids and/or names ("" = all classes).
  std::string classes;
};

// Fills `options`; throws std::invalid_argument naming a bad value.
void FillDetectOptions(const DetectionFilter& filter, lpdetr::v1::DetectOptions* options);

// True for the extensions the server decodes (jpg, jpeg, png, webp, bmp,
// tif, tiff; case-insensitive).
bool HasImageExtension(const std::string& path);

// Files as given, folders expanded to their image files (sorted, not
// recursive). Throws std::runtime_error for a path that does not exist.
std::vector<std::string> ExpandImagePaths(const std::vector<std::string>& paths);

// COCO image id of a file: its stem when it is a number (COCO's
// "000000000139.jpg" -> 139), else `fallback`.
int64_t CocoImageId(const std::string& path, int64_t fallback);

// What COCO results call a detection's category: the served model's dataset
// category id of each label id (ModelInfo.category_ids), learnt once from
// ModelService before detecting. Read-only once filled.
struct CategoryMap {
  // The ModelInfo it came from, to check that responses are of that model.
  std::string model;
  std::string version;
  // category id of label id i; empty = the model has no map, ids = label ids.
  std::vector<int64_t> ids;

  // Throws std::out_of_range naming the label when it is outside a
  // non-empty map.
  int64_t CategoryId(int label_id) const;
  // "" when `response` comes from the model the map is of, else what differs
  // (a response without a model name is not checked).
  std::string MismatchWith(const lpdetr::v1::DetectResponse& response) const;
};

// Appends COCO results entries {image_id, category_id, bbox [x,y,w,h], score}
// (plus "file_name" when not empty) for every detection of `image`;
// category_id is categories.CategoryId(label_id).
void AppendCocoResults(int64_t image_id, const std::string& file_name,
                       const lpdetr::v1::ImageDetections& image,
                       const CategoryMap& categories, nlohmann::json* results);

// Writes `json` to `path` ("-" = stdout); throws on I/O errors.
void WriteJson(const nlohmann::json& json, const std::string& path);

// Human-readable listing of one image's detections.
void PrintDetections(std::FILE* out, const std::string& name,
                     const lpdetr::v1::ImageDetections& image);

// Draws boxes and "label score" captions on a BGR image. Boxes are in the
// pixel frame of width x height (the server's view of the image); they are
// rescaled when the local decode has another size.
void DrawDetections(const lpdetr::v1::ImageDetections& image, cv::Mat* bgr);

// Output path in `dir` for `input`'s base name (".png" when OpenCV can't
// write that extension), made unique against `used`.
std::string DrawOutputPath(const std::string& dir, const std::string& input,
                           std::set<std::string>* used);

}  // namespace lpdetr::client

// The training dataset: a COCO instances JSON plus the folder its images are
// in, checked and turned into per-image training targets.
//
// Construction validates the whole file before anything else and reports
// every structural problem at once (CocoDatasetError, listing the first 20
// and the total): broken JSON, missing keys or wrong types (entry index and
// key), an image file absent from the folder (checked on disk, not decoded),
// annotations on an unknown image or category id, negative bbox width or
// height, duplicate image or category ids, no images or no categories.
//
// Targets follow the official COCO conversion, in float32: crowd annotations
// (iscrowd 1) are not trained on; [x, y, w, h] becomes [x1, y1, x1 + w,
// y1 + h]; x is clipped to [0, width] and y to [0, height] of the `images`
// entry; boxes with x2 <= x1 or y2 <= y1 after clipping are dropped. Each
// rule is counted in CocoDatasetStats. Images are ordered by id ascending and
// kept even when they have no target left.
//
// Labels: the category ids sorted ascending map to 0..C-1 (CategoryMap), so
// any ids (sparse, unordered) work and results can be given back in them.
//
// Threading: a CocoTrainDataset is immutable after construction; every const
// member (LoadImageRgb included) may be called from many threads at once.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <opencv2/core/mat.hpp>

#include "model/detector.h"

namespace lpdetr::train {

// Category id <-> training label (position of the id among the ids sorted
// ascending), with the category names in label order.
class CategoryMap {
 public:
  CategoryMap() = default;
  // `ids` in any order, distinct; `names[i]` is the name of `ids[i]`. Throws
  // std::invalid_argument on a duplicate id or when the sizes differ.
  CategoryMap(const std::vector<int64_t>& ids, const std::vector<std::string>& names);

  int64_t num_classes() const { return static_cast<int64_t>(ids_.size()); }
  // Index = label.
  const std::vector<int64_t>& category_ids() const { return ids_; }
  const std::vector<std::string>& names() const { return names_; }

  bool HasCategory(int64_t category_id) const { return label_of_id_.count(category_id) > 0; }
  // Throw std::out_of_range naming the value when it is not in the map.
  int64_t LabelOf(int64_t category_id) const;
  int64_t CategoryIdOf(int64_t label) const;

  bool operator==(const CategoryMap& other) const {
    return ids_ == other.ids_ && names_ == other.names_;
  }

 private:
  std::vector<int64_t> ids_;
  std::vector<std::string> names_;
  std::unordered_map<int64_t, int64_t> label_of_id_;
};

// Boxes [x1, y1, x2, y2] in pixels of some image frame, and their labels.
struct BoxTargets {
  std::vector<std::array<float, 4>> boxes_xyxy;
  std::vector<int64_t> labels;
};

// One image of the dataset: its `images` entry and its targets in its own
// pixels (width x height as the JSON gives them).
struct CocoImage {
  int64_t id = 0;
  std::string file_name;
  std::string path;  // image folder / file_name
  int64_t width = 0;
  int64_t height = 0;
  BoxTargets targets;
};

// What the conversion did, for the log. annotations = used + crowd_skipped +
// dropped_degenerate; clipped counts the used boxes that clipping changed.
struct CocoDatasetStats {
  int64_t images = 0;
  int64_t categories = 0;
  int64_t annotations = 0;
  int64_t used = 0;
  int64_t crowd_skipped = 0;
  int64_t clipped = 0;
  int64_t dropped_degenerate = 0;

  // One line, e.g. "3 images, 2 categories, 9 annotations: 6 used (1 clipped
  // to the image), 2 crowd skipped, 1 degenerate after clipping dropped".
  std::string Summary() const;
};

// Every structural problem of one annotations file. what() names the file,
// the total count and the first kMaxListed problems, one per line.
class CocoDatasetError : public std::invalid_argument {
 public:
  static constexpr std::size_t kMaxListed = 20;
  CocoDatasetError(const std::string& source, std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

class CocoTrainDataset {
 public:
  // Reads and validates `annotations_path`; images are looked up in
  // `image_dir`. Throws CocoDatasetError listing every problem found.
  CocoTrainDataset(const std::string& annotations_path, const std::string& image_dir);

  int64_t size() const { return static_cast<int64_t>(images_.size()); }
  const std::vector<CocoImage>& images() const { return images_; }
  const CocoImage& image(int64_t index) const;
  // Index of an image id, -1 when absent.
  int64_t IndexOf(int64_t image_id) const;
  const CategoryMap& categories() const { return categories_; }
  const CocoDatasetStats& stats() const { return stats_; }

  // The decoded image as 8-bit RGB (CV_8UC3), in its stored pixel frame (an
  // EXIF orientation is not applied: COCO sizes and boxes refer to the stored
  // pixels). Throws std::runtime_error
  // naming the file when it cannot be decoded or its size is not the JSON's.
  cv::Mat LoadImageRgb(int64_t index) const;

  // The image's targets normalised by its JSON size.
  TrainTarget Target(int64_t index) const;

 private:
  std::string source_;
  std::vector<CocoImage> images_;
  std::unordered_map<int64_t, int64_t> index_of_id_;
  CategoryMap categories_;
  CocoDatasetStats stats_;
};

// labels [n] int64 and boxes [n,4] float32 cxcywh normalised by the frame
// (image_height, image_width) the xyxy boxes are in.
TrainTarget ToTrainTarget(const BoxTargets& targets, int64_t image_height, int64_t image_width);

// The image's targets after resizing the whole image to (height, width):
// boxes scaled by the size ratios, then normalised by the new size.
TrainTarget ResizedTrainTarget(const CocoImage& image, int64_t height, int64_t width);

}  // namespace lpdetr::train

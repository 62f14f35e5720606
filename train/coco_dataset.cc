// COCO training dataset: validation, target conversion, image loading; see
// coco_dataset.h.
#include "train/coco_dataset.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <utility>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace lpdetr::train {

namespace fs = std::filesystem;
using nlohmann::json;

// ---------------------------------------------------------------------------
// CategoryMap
// ---------------------------------------------------------------------------

CategoryMap::CategoryMap(const std::vector<int64_t>& ids, const std::vector<std::string>& names) {
  if (ids.size() != names.size()) {
    throw std::invalid_argument("CategoryMap: " + std::to_string(ids.size()) + " ids but " +
                                std::to_string(names.size()) + " names");
  }
  std::vector<size_t> order(ids.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ids[a] < ids[b]; });
  for (size_t i : order) {
    if (!label_of_id_.emplace(ids[i], static_cast<int64_t>(ids_.size())).second) {
      throw std::invalid_argument("CategoryMap: duplicate category id " + std::to_string(ids[i]));
    }
    ids_.push_back(ids[i]);
    names_.push_back(names[i]);
  }
}

int64_t CategoryMap::LabelOf(int64_t category_id) const {
  auto it = label_of_id_.find(category_id);
  if (it == label_of_id_.end()) {
    throw std::out_of_range("unknown category id " + std::to_string(category_id));
  }
  return it->second;
}

int64_t CategoryMap::CategoryIdOf(int64_t label) const {
  if (label < 0 || label >= num_classes()) {
    throw std::out_of_range("label " + std::to_string(label) + " is not in 0.." +
                            std::to_string(num_classes() - 1));
  }
  return ids_[static_cast<size_t>(label)];
}

// ---------------------------------------------------------------------------
// Stats and errors
// ---------------------------------------------------------------------------

std::string CocoDatasetStats::Summary() const {
  std::ostringstream s;
  s << images << " images, " << categories << " categories, " << annotations
    << " annotations: " << used << " used (" << clipped << " clipped to the image), "
    << crowd_skipped << " crowd skipped, " << dropped_degenerate
    << " degenerate after clipping dropped";
  return s.str();
}

namespace {

std::string ErrorMessage(const std::string& source, const std::vector<std::string>& problems) {
  const size_t n = problems.size();
  std::ostringstream s;
  s << source << ": " << n << (n == 1 ? " problem" : " problems") << " in the COCO annotations";
  if (n > CocoDatasetError::kMaxListed) {
    s << " (the first " << CocoDatasetError::kMaxListed << " of " << n << ")";
  }
  s << ":";
  for (size_t i = 0; i < n && i < CocoDatasetError::kMaxListed; ++i) s << "\n  " << problems[i];
  return s.str();
}

}  // namespace

CocoDatasetError::CocoDatasetError(const std::string& source, std::vector<std::string> problems)
    : std::invalid_argument(ErrorMessage(source, problems)), problems_(std::move(problems)) {}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

namespace {

// A JSON value shortened for a message.
std::string Shown(const json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// The entries of the file as read, before any target is built.
struct RawImage {
  int64_t id = 0;
  std::string file_name;
  int64_t width = 0, height = 0;
};
struct RawCategory {
  int64_t id = 0;
  std::string name;
};
struct RawAnnotation {
  int64_t image_id = 0;
  int64_t category_id = 0;
  std::array<double, 4> bbox{};
  bool crowd = false;
};
struct RawDataset {
  std::vector<RawImage> images;
  std::vector<RawCategory> categories;
  std::vector<RawAnnotation> annotations;
};

// Reads the fields of one entry, recording each missing or mistyped key.
class EntryReader {
 public:
  EntryReader(const json& entry, std::string where, std::vector<std::string>& problems)
      : entry_(entry), where_(std::move(where)), problems_(problems) {}

  // False (and a problem recorded) when the entry is not an object.
  bool IsObject() {
    if (entry_.is_object()) return true;
    Problem(where_ + ": must be an object, got " + Shown(entry_));
    return false;
  }
  bool ok() const { return ok_; }

  const json* Find(const char* key, bool required = true) {
    auto it = entry_.find(key);
    if (it == entry_.end()) {
      if (required) Problem(where_ + ": missing key \"" + key + "\"");
      return nullptr;
    }
    return &*it;
  }
  bool Integer(const char* key, int64_t& out) {
    const json* v = Find(key);
    if (!v) return false;
    if (!v->is_number_integer()) {
      Mistyped(key, "an integer", *v);
      return false;
    }
    out = v->get<int64_t>();
    return true;
  }
  void PositiveInteger(const char* key, int64_t& out) {
    const json* v = Find(key);
    if (!v) return;
    if (!v->is_number_integer() || v->get<int64_t>() <= 0) {
      return Mistyped(key, "a positive integer", *v);
    }
    out = v->get<int64_t>();
  }
  void String(const char* key, std::string& out) {
    const json* v = Find(key);
    if (!v) return;
    if (!v->is_string()) return Mistyped(key, "a string", *v);
    out = v->get<std::string>();
  }
  void Crowd(bool& out) {
    const json* v = Find("iscrowd", /*required=*/false);
    if (!v) return;
    if (v->is_boolean()) {
      out = v->get<bool>();
    } else if (v->is_number_integer() && (v->get<int64_t>() == 0 || v->get<int64_t>() == 1)) {
      out = v->get<int64_t>() == 1;
    } else {
      Mistyped("iscrowd", "0 or 1", *v);
    }
  }
  void Bbox(std::array<double, 4>& out) {
    const json* v = Find("bbox");
    if (!v) return;
    if (!v->is_array() || v->size() != 4 ||
        !std::all_of(v->begin(), v->end(), [](const json& x) { return x.is_number(); })) {
      return Mistyped("bbox", "4 numbers [x, y, w, h]", *v);
    }
    for (int k = 0; k < 4; ++k) out[k] = (*v)[k].get<double>();
  }
  void Problem(const std::string& p) {
    ok_ = false;
    problems_.push_back(p);
  }

 private:
  void Mistyped(const char* key, const char* expected, const json& v) {
    Problem(where_ + "." + key + ": must be " + expected + ", got " + Shown(v));
  }

  const json& entry_;
  std::string where_;
  std::vector<std::string>& problems_;
  bool ok_ = true;
};

// The array under `key` of the top-level object, or nullptr (problem recorded).
const json* TopLevelArray(const json& root, const char* key, std::vector<std::string>& problems) {
  auto it = root.find(key);
  if (it == root.end()) {
    problems.push_back(std::string("missing top-level key \"") + key + "\"");
    return nullptr;
  }
  if (!it->is_array()) {
    problems.push_back(std::string(key) + ": must be an array, got " + Shown(*it));
    return nullptr;
  }
  if (it->empty() && std::string(key) != "annotations") {
    problems.push_back(std::string(key) + ": is empty");
  }
  return &*it;
}

void ReadImages(const json& arr, const fs::path& image_dir, bool check_files, RawDataset& raw,
                std::unordered_map<int64_t, size_t>& first_image_at,
                std::vector<std::string>& problems) {
  for (size_t i = 0; i < arr.size(); ++i) {
    const std::string where = "images[" + std::to_string(i) + "]";
    EntryReader r(arr[i], where, problems);
    if (!r.IsObject()) continue;
    RawImage im;
    // An id that reads is known to the annotations even if the entry has other problems.
    if (r.Integer("id", im.id)) {
      auto [it, inserted] = first_image_at.emplace(im.id, i);
      if (!inserted) {
        r.Problem(where + ".id: duplicate image id " + std::to_string(im.id) + " (also images[" +
                  std::to_string(it->second) + "])");
      }
    }
    r.String("file_name", im.file_name);
    r.PositiveInteger("width", im.width);
    r.PositiveInteger("height", im.height);
    if (!r.ok()) continue;
    if (check_files) {
      std::error_code ec;
      const fs::path file = image_dir / im.file_name;
      if (!fs::is_regular_file(file, ec)) {
        r.Problem(where + ".file_name: image file not found: " + file.string());
      }
    }
    raw.images.push_back(std::move(im));
  }
}

void ReadCategories(const json& arr, RawDataset& raw,
                    std::unordered_map<int64_t, size_t>& first_category_at,
                    std::vector<std::string>& problems) {
  for (size_t i = 0; i < arr.size(); ++i) {
    const std::string where = "categories[" + std::to_string(i) + "]";
    EntryReader r(arr[i], where, problems);
    if (!r.IsObject()) continue;
    RawCategory c;
    if (r.Integer("id", c.id)) {
      auto [it, inserted] = first_category_at.emplace(c.id, i);
      if (!inserted) {
        r.Problem(where + ".id: duplicate category id " + std::to_string(c.id) +
                  " (also categories[" + std::to_string(it->second) + "])");
      }
    }
    r.String("name", c.name);
    if (!r.ok()) continue;
    raw.categories.push_back(std::move(c));
  }
}

// `images_known` / `categories_known`: whether those arrays were read, so
// that unknown ids are reported only against a list that exists.
void ReadAnnotations(const json& arr, const std::unordered_map<int64_t, size_t>& image_at,
                     const std::unordered_map<int64_t, size_t>& category_at, bool images_known,
                     bool categories_known, RawDataset& raw, std::vector<std::string>& problems) {
  static const char* const kDims[2] = {"width", "height"};
  for (size_t i = 0; i < arr.size(); ++i) {
    const std::string where = "annotations[" + std::to_string(i) + "]";
    EntryReader r(arr[i], where, problems);
    if (!r.IsObject()) continue;
    RawAnnotation a;
    r.Integer("image_id", a.image_id);
    r.Integer("category_id", a.category_id);
    r.Bbox(a.bbox);
    r.Crowd(a.crowd);
    if (!r.ok()) continue;
    if (images_known && image_at.count(a.image_id) == 0) {
      r.Problem(where + ".image_id: unknown image id " + std::to_string(a.image_id));
    }
    if (categories_known && category_at.count(a.category_id) == 0) {
      r.Problem(where + ".category_id: unknown category id " + std::to_string(a.category_id));
    }
    for (int k = 0; k < 2; ++k) {
      if (a.bbox[2 + k] < 0) {
        const json& bbox = arr[i]["bbox"];
        r.Problem(where + ".bbox: negative " + kDims[k] + " " + Shown(bbox[2 + k]) + " in " +
                  Shown(bbox));
      }
    }
    if (r.ok()) raw.annotations.push_back(a);
  }
}

// Parses and checks the whole file; throws CocoDatasetError with every problem.
RawDataset ReadAndValidate(const std::string& path, const fs::path& image_dir) {
  std::vector<std::string> problems;
  auto fail = [&]() { throw CocoDatasetError(path, problems); };

  std::ifstream in(path, std::ios::binary);
  if (!in) {
    problems.push_back(std::string("cannot open the file: ") + std::strerror(errno));
    fail();
  }
  std::stringstream text;
  text << in.rdbuf();
  json root;
  try {
    root = json::parse(text.str());
  } catch (const json::parse_error& e) {
    problems.push_back(std::string("not valid JSON: ") + e.what());
    fail();
  }
  if (!root.is_object()) {
    problems.push_back("the top level must be a JSON object, got " + Shown(root));
    fail();
  }

  std::error_code ec;
  const bool dir_ok = fs::is_directory(image_dir, ec);
  if (!dir_ok) problems.push_back("image folder not found: " + image_dir.string());

  RawDataset raw;
  std::unordered_map<int64_t, size_t> image_at, category_at;
  const json* images = TopLevelArray(root, "images", problems);
  const json* categories = TopLevelArray(root, "categories", problems);
  const json* annotations = TopLevelArray(root, "annotations", problems);
  if (images) ReadImages(*images, image_dir, dir_ok, raw, image_at, problems);
  if (categories) ReadCategories(*categories, raw, category_at, problems);
  if (annotations) {
    ReadAnnotations(*annotations, image_at, category_at, images != nullptr,
                    categories != nullptr, raw, problems);
  }
  if (!problems.empty()) fail();
  return raw;
}

// ---------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------

// Adds one non-crowd annotation to `image`'s targets as the official
// conversion does (float32: xywh -> xyxy, clip, drop degenerate).
void AddBox(const RawAnnotation& a, int64_t label, CocoImage& image, CocoDatasetStats& stats) {
  const float x = static_cast<float>(a.bbox[0]), y = static_cast<float>(a.bbox[1]);
  const float w = static_cast<float>(a.bbox[2]), h = static_cast<float>(a.bbox[3]);
  const std::array<float, 4> raw_box = {x, y, x + w, y + h};
  const float limit[4] = {static_cast<float>(image.width), static_cast<float>(image.height),
                          static_cast<float>(image.width), static_cast<float>(image.height)};
  std::array<float, 4> box{};
  for (int k = 0; k < 4; ++k) box[k] = std::min(std::max(raw_box[k], 0.0f), limit[k]);
  if (!(box[2] > box[0] && box[3] > box[1])) {
    ++stats.dropped_degenerate;
    return;
  }
  ++stats.used;
  if (box != raw_box) ++stats.clipped;
  image.targets.boxes_xyxy.push_back(box);
  image.targets.labels.push_back(label);
}

}  // namespace

// ---------------------------------------------------------------------------
// CocoTrainDataset
// ---------------------------------------------------------------------------

CocoTrainDataset::CocoTrainDataset(const std::string& annotations_path,
                                   const std::string& image_dir)
    : source_(annotations_path) {
  RawDataset raw = ReadAndValidate(annotations_path, fs::path(image_dir));

  std::vector<int64_t> ids;
  std::vector<std::string> names;
  for (const RawCategory& c : raw.categories) {
    ids.push_back(c.id);
    names.push_back(c.name);
  }
  categories_ = CategoryMap(ids, names);

  std::sort(raw.images.begin(), raw.images.end(),
            [](const RawImage& a, const RawImage& b) { return a.id < b.id; });
  images_.reserve(raw.images.size());
  for (RawImage& r : raw.images) {
    CocoImage im;
    im.id = r.id;
    im.path = (fs::path(image_dir) / r.file_name).string();
    im.file_name = std::move(r.file_name);
    im.width = r.width;
    im.height = r.height;
    index_of_id_.emplace(im.id, static_cast<int64_t>(images_.size()));
    images_.push_back(std::move(im));
  }

  stats_.images = size();
  stats_.categories = categories_.num_classes();
  stats_.annotations = static_cast<int64_t>(raw.annotations.size());
  for (const RawAnnotation& a : raw.annotations) {
    if (a.crowd) {
      ++stats_.crowd_skipped;
      continue;
    }
    AddBox(a, categories_.LabelOf(a.category_id), images_[index_of_id_.at(a.image_id)], stats_);
  }
}

const CocoImage& CocoTrainDataset::image(int64_t index) const {
  if (index < 0 || index >= size()) {
    throw std::out_of_range("image index " + std::to_string(index) + " is not in 0.." +
                            std::to_string(size() - 1));
  }
  return images_[static_cast<size_t>(index)];
}

int64_t CocoTrainDataset::IndexOf(int64_t image_id) const {
  auto it = index_of_id_.find(image_id);
  return it == index_of_id_.end() ? -1 : it->second;
}

cv::Mat CocoTrainDataset::LoadImageRgb(int64_t index) const {
  const CocoImage& im = image(index);
  // The stored pixels, as COCO tools read them: an EXIF orientation tag is
  // not applied, so the frame is the one the annotations' width and height
  // (and boxes) describe.
  cv::Mat bgr = cv::imread(im.path, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  if (bgr.empty()) {
    throw std::runtime_error("cannot decode image " + im.path + " (image id " +
                             std::to_string(im.id) + " of " + source_ + ")");
  }
  if (bgr.cols != im.width || bgr.rows != im.height) {
    throw std::runtime_error("image " + im.path + " is " + std::to_string(bgr.cols) + "x" +
                             std::to_string(bgr.rows) + " (width x height) but " + source_ +
                             " says " + std::to_string(im.width) + "x" +
                             std::to_string(im.height) + " (image id " + std::to_string(im.id) +
                             ")");
  }
  cv::Mat rgb;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return rgb;
}

TrainTarget CocoTrainDataset::Target(int64_t index) const {
  const CocoImage& im = image(index);
  return ToTrainTarget(im.targets, im.height, im.width);
}

// ---------------------------------------------------------------------------
// TrainTarget conversion
// ---------------------------------------------------------------------------

TrainTarget ToTrainTarget(const BoxTargets& targets, int64_t image_height, int64_t image_width) {
  if (targets.boxes_xyxy.size() != targets.labels.size()) {
    throw std::invalid_argument("ToTrainTarget: " + std::to_string(targets.boxes_xyxy.size()) +
                                " boxes but " + std::to_string(targets.labels.size()) +
                                " labels");
  }
  if (image_height <= 0 || image_width <= 0) {
    throw std::invalid_argument("ToTrainTarget: image size " + std::to_string(image_width) +
                                "x" + std::to_string(image_height) + " is not positive");
  }
  const int64_t n = static_cast<int64_t>(targets.labels.size());
  TrainTarget t;
  t.labels = at::empty({n}, at::kLong);
  t.boxes = at::empty({n, 4}, at::kFloat);
  auto labels = t.labels.accessor<int64_t, 1>();
  auto boxes = t.boxes.accessor<float, 2>();
  const float w = static_cast<float>(image_width), h = static_cast<float>(image_height);
  for (int64_t i = 0; i < n; ++i) {
    const auto& b = targets.boxes_xyxy[static_cast<size_t>(i)];
    labels[i] = targets.labels[static_cast<size_t>(i)];
    boxes[i][0] = ((b[0] + b[2]) / 2.0f) / w;
    boxes[i][1] = ((b[1] + b[3]) / 2.0f) / h;
    boxes[i][2] = (b[2] - b[0]) / w;
    boxes[i][3] = (b[3] - b[1]) / h;
  }
  return t;
}

TrainTarget ResizedTrainTarget(const CocoImage& image, int64_t height, int64_t width) {
  if (height <= 0 || width <= 0) {
    throw std::invalid_argument("ResizedTrainTarget: size " + std::to_string(width) + "x" +
                                std::to_string(height) + " is not positive");
  }
  const float rx = static_cast<float>(width) / static_cast<float>(image.width);
  const float ry = static_cast<float>(height) / static_cast<float>(image.height);
  BoxTargets scaled = image.targets;
  for (auto& b : scaled.boxes_xyxy) {
    b[0] *= rx;
    b[1] *= ry;
    b[2] *= rx;
    b[3] *= ry;
  }
  return ToTrainTarget(scaled, height, width);
}

}  // namespace lpdetr::train

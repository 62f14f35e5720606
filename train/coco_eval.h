// COCO bounding-box evaluation with the semantics of pycocotools' COCOeval
// (iouType "bbox", default parameters): IoU thresholds .50:.05:.95, 101
// recall thresholds, area ranges all / small / medium / large (from the
// ground truth's own `area` field), at most 1 / 10 / 100 detections per image
// and category, crowd regions as ignore regions matched by IoU = intersection
// / detection area, and the 12 summary numbers with -1 where a value has no
// countable ground truth. Results equal pycocotools' to rounding (~1e-14):
// the same stable orderings, the same double arithmetic and numpy's pairwise
// summation for the means.
//
// Usage: parse the ground truth once (LoadCocoGroundTruth / CocoGroundTruth's
// constructor), then call EvaluateBbox with any number of detection lists.
//
// Where this goes beyond pycocotools (which refuses these inputs):
//  - an empty detection list evaluates as "no detections": AP and AR are 0
//    for every setting with countable ground truth, -1 where there is none;
//  - an annotation without `iscrowd` counts as iscrowd 0.
// Detections on an image id absent from the ground truth's `images` are an
// error that lists the ids; detections on a category id the ground truth
// does not list are not evaluated (as in pycocotools). Ground-truth
// annotations on unlisted images or categories are not evaluated either.
//
// Threading: a CocoGroundTruth is immutable after construction and may be
// shared by concurrent EvaluateBbox calls; EvaluateBbox keeps no state.
// Errors: malformed input throws std::invalid_argument (unreadable file:
// std::runtime_error) with a message naming the file, the entry and the key.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace lpdetr::train {

// One ground-truth box. `bbox` is [x, y, w, h]; `area` is the annotation's own
// area field (it selects the area range, it need not equal w*h).
struct CocoAnnotation {
  int64_t id = 0;
  int64_t image_id = 0;
  int64_t category_id = 0;
  std::array<double, 4> bbox{};
  double area = 0;
  bool iscrowd = false;
};

// One detection: [x, y, w, h] in pixels and a confidence score. Its area (for
// the area-range ignore rule of unmatched detections) is w*h.
struct CocoDetection {
  int64_t image_id = 0;
  int64_t category_id = 0;
  std::array<double, 4> bbox{};
  double score = 0;
};

// Ground truth indexed for evaluation: image and category ids sorted and
// de-duplicated, annotations grouped per (category, image) in the order
// pycocotools evaluates them.
class CocoGroundTruth {
 public:
  CocoGroundTruth() = default;
  // `annotations` keep their order; ids may repeat in `image_ids` and
  // `category_ids`. Annotation ids are used as pycocotools uses them: where
  // two annotations share an id, the later one is evaluated in place of both.
  CocoGroundTruth(std::vector<int64_t> image_ids, std::vector<int64_t> category_ids,
                  std::vector<CocoAnnotation> annotations);

  const std::vector<int64_t>& image_ids() const { return image_ids_; }
  const std::vector<int64_t>& category_ids() const { return category_ids_; }
  const std::vector<CocoAnnotation>& annotations() const { return annotations_; }

  // Position in image_ids() / category_ids(), or -1 when absent.
  int ImageIndex(int64_t image_id) const;
  int CategoryIndex(int64_t category_id) const;

  // The evaluated annotations (indices into annotations()) grouped by
  // (category index, image index): bucket b covers bucket_keys()[b] =
  // category_index * num_images + image_index, ascending, with members
  // bucket_members()[bucket_offsets()[b] .. bucket_offsets()[b + 1]).
  const std::vector<int64_t>& bucket_keys() const { return bucket_keys_; }
  const std::vector<int32_t>& bucket_offsets() const { return bucket_offsets_; }
  const std::vector<int32_t>& bucket_members() const { return bucket_members_; }

 private:
  std::vector<int64_t> image_ids_;
  std::vector<int64_t> category_ids_;
  std::vector<CocoAnnotation> annotations_;
  std::unordered_map<int64_t, int> image_index_;
  std::unordered_map<int64_t, int> category_index_;
  std::vector<int64_t> bucket_keys_;
  std::vector<int32_t> bucket_offsets_{0};
  std::vector<int32_t> bucket_members_;
};

// The 12 numbers of COCOeval.stats and AP per category.
struct CocoEvalResult {
  static constexpr int kNumStats = 12;
  // AP AP50 AP75 APs APm APl AR1 AR10 AR100 ARs ARm ARl, the order of `stats`.
  static const std::array<const char*, kNumStats> kStatNames;

  std::array<double, kNumStats> stats{};
  // Every ground-truth category id -> AP at IoU .50:.95, area all, 100
  // detections; -1 for a category without countable ground truth.
  std::map<int64_t, double> per_category_ap;

  double ap() const { return stats[0]; }
};

// Ground truth from a COCO instances JSON object: `images` (each with `id`)
// is required; `categories` (each with `id`) and `annotations` (each with
// `id`, `image_id`, `category_id`, `bbox` of 4 numbers, `area`, optional
// `iscrowd`) may be absent. `source` names the input in error messages.
CocoGroundTruth CocoGroundTruthFromJson(const nlohmann::json& instances, const std::string& source);
CocoGroundTruth ParseCocoGroundTruth(std::string_view json_text,
                                     const std::string& source = "ground truth");
CocoGroundTruth LoadCocoGroundTruth(const std::string& path);

// Detections from a COCO results JSON array (`image_id`, `category_id`,
// `bbox` of 4 numbers, `score` per entry; other keys are ignored). Every
// image id must be one of gt's images.
std::vector<CocoDetection> CocoDetectionsFromJson(const nlohmann::json& results,
                                                  const CocoGroundTruth& gt,
                                                  const std::string& source);
std::vector<CocoDetection> ParseCocoDetections(std::string_view json_text,
                                               const CocoGroundTruth& gt,
                                               const std::string& source = "detections");
std::vector<CocoDetection> LoadCocoDetections(const std::string& path, const CocoGroundTruth& gt);

// Evaluates `detections` against `gt`. Throws std::invalid_argument when a
// detection's image id is not in gt (the message lists the ids).
CocoEvalResult EvaluateBbox(const CocoGroundTruth& gt,
                            const std::vector<CocoDetection>& detections);

// {"AP": .., ..., "ARl": .., "per_category_AP": {"<category id>": AP}} in
// that key order; doubles print with round-trip precision.
std::string CocoEvalResultToJsonString(const CocoEvalResult& result, int indent = -1);

}  // namespace lpdetr::train

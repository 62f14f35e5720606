// COCO bbox evaluation (pycocotools semantics); see coco_eval.h.
//
// Numerics follow pycocotools + numpy operation by operation: thresholds as
// np.linspace builds them (i * step + start, the last one set to stop),
// precision tp / ((tp + fp) + eps), recall tp / npig, and means by numpy's
// pairwise summation in blocks of 8192. The build compiles ISO C++
// (-std=c++17), where GCC does not contract a * b + c into an FMA.
#include "train/coco_eval.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace lpdetr::train {

using nlohmann::json;

const std::array<const char*, CocoEvalResult::kNumStats> CocoEvalResult::kStatNames = {
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"};

namespace {

// ---------------------------------------------------------------------------
// Evaluation parameters (pycocotools' defaults for bbox).
// ---------------------------------------------------------------------------

constexpr int kNumIouThrs = 10;   // T
constexpr int kNumRecThrs = 101;  // R
constexpr int kNumAreaRngs = 4;   // A: all, small, medium, large
constexpr int kNumMaxDets = 3;    // M
constexpr std::array<int, kNumMaxDets> kMaxDets = {1, 10, 100};
constexpr double kAreaRng[kNumAreaRngs][2] = {
    {0.0, 1e10}, {0.0, 32.0 * 32.0}, {32.0 * 32.0, 96.0 * 96.0}, {96.0 * 96.0, 1e10}};
// np.spacing(1): the term that keeps tp / (tp + fp) finite.
constexpr double kSpacingOne = std::numeric_limits<double>::epsilon();
// The matching threshold never exceeds this.
constexpr double kMaxIouThr = 1.0 - 1e-10;

// np.linspace(start, stop, num): i * step + start, the last value exactly stop.
template <int N>
std::array<double, N> Linspace(double start, double stop) {
  std::array<double, N> v{};
  const double step = (stop - start) / static_cast<double>(N - 1);
  for (int i = 0; i < N; ++i) {
    const double scaled = static_cast<double>(i) * step;
    v[i] = scaled + start;
  }
  v[N - 1] = stop;
  return v;
}

const std::array<double, kNumIouThrs>& IouThrs() {
  static const auto v = Linspace<kNumIouThrs>(0.5, 0.95);
  return v;
}

const std::array<double, kNumRecThrs>& RecThrs() {
  static const auto v = Linspace<kNumRecThrs>(0.0, 1.0);
  return v;
}

// ---------------------------------------------------------------------------
// numpy's float64 sum: pairwise summation (8 accumulators up to 128 values)
// over blocks of at most 8192 values, the block sums added in order.
// ---------------------------------------------------------------------------

double PairwiseSum(const double* a, size_t n) {
  if (n < 8) {
    double res = 0.0;
    for (size_t i = 0; i < n; ++i) res += a[i];
    return res;
  }
  if (n <= 128) {
    double r[8];
    for (int j = 0; j < 8; ++j) r[j] = a[j];
    size_t i = 8;
    for (; i < n - (n % 8); i += 8) {
      for (int j = 0; j < 8; ++j) r[j] += a[i + j];
    }
    double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) res += a[i];
    return res;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return PairwiseSum(a, n2) + PairwiseSum(a + n2, n - n2);
}

// np.mean(values[values > -1]), or -1 when no value is > -1.
double MeanOfValid(const std::vector<double>& values) {
  std::vector<double> valid;
  valid.reserve(values.size());
  for (double v : values) {
    if (v > -1.0) valid.push_back(v);
  }
  if (valid.empty()) return -1.0;
  constexpr size_t kBlock = 8192;
  double sum = 0.0;
  for (size_t i = 0; i < valid.size(); i += kBlock) {
    sum += PairwiseSum(valid.data() + i, std::min(kBlock, valid.size() - i));
  }
  return sum / static_cast<double>(valid.size());
}

// ---------------------------------------------------------------------------
// Per (category, image) evaluation.
// ---------------------------------------------------------------------------

// maskApi's bbIou for one pair: intersection over union, or over the
// detection's area when the ground truth is a crowd region.
double BoxIou(const std::array<double, 4>& d, const std::array<double, 4>& g, bool crowd) {
  const double w = std::fmin(d[2] + d[0], g[2] + g[0]) - std::fmax(d[0], g[0]);
  if (w <= 0) return 0.0;
  const double h = std::fmin(d[3] + d[1], g[3] + g[1]) - std::fmax(d[1], g[1]);
  if (h <= 0) return 0.0;
  const double inter = w * h;
  const double det_area = d[2] * d[3];
  const double gt_area = g[2] * g[3];
  const double uni = crowd ? det_area : det_area + gt_area - inter;
  return inter / uni;
}

// (area range, IoU threshold) pairs.
constexpr int kNumSettings = kNumAreaRngs * kNumIouThrs;

// Outcome of one detection at one IoU threshold.
enum DetOutcome : uint8_t { kIgnored = 0, kTruePositive = 1, kFalsePositive = 2 };

// The evaluation of one image for one category: its detections (best score
// first, at most 100) and their outcome per area range and IoU threshold.
struct ImageEval {
  std::vector<double> scores;
  // outcome[d * kNumSettings + a * T + t]: one detection's outcomes together.
  std::vector<uint8_t> outcome;
  // Ground truth that counts (not crowd, area in range), per area range.
  std::array<int, kNumAreaRngs> num_positive_gt{};
};

// Greedy matching of pycocotools' evaluateImg for one area range; writes the
// outcomes of this area range into `eval`.
void MatchAreaRange(int a, const std::vector<const CocoAnnotation*>& gts,
                    const std::vector<const CocoDetection*>& dets,
                    const std::vector<double>& ious,  // ious[d * G + g], bucket order of g
                    ImageEval& eval) {
  const double lo = kAreaRng[a][0];
  const double hi = kAreaRng[a][1];
  const size_t num_g = gts.size();
  const size_t num_d = dets.size();

  // Ground truth in evaluation order: counted ones first, ignored ones last
  // (a stable partition, as np.argsort(kind='mergesort') on the flag).
  std::vector<int> order;
  order.reserve(num_g);
  std::vector<uint8_t> ignored_by_gt(num_g);
  int num_positive = 0;
  for (size_t g = 0; g < num_g; ++g) {
    const CocoAnnotation& ann = *gts[g];
    ignored_by_gt[g] = ann.iscrowd || ann.area < lo || ann.area > hi;
    if (!ignored_by_gt[g]) {
      order.push_back(static_cast<int>(g));
      ++num_positive;
    }
  }
  for (size_t g = 0; g < num_g; ++g) {
    if (ignored_by_gt[g]) order.push_back(static_cast<int>(g));
  }
  eval.num_positive_gt[a] = num_positive;

  std::vector<uint8_t> det_out_of_range(num_d);
  for (size_t d = 0; d < num_d; ++d) {
    const double area = dets[d]->bbox[2] * dets[d]->bbox[3];
    det_out_of_range[d] = area < lo || area > hi;
  }

  const auto& thrs = IouThrs();
  std::vector<uint8_t> gt_taken(num_g);
  for (int t = 0; t < kNumIouThrs; ++t) {
    std::fill(gt_taken.begin(), gt_taken.end(), 0);
    uint8_t* out = eval.outcome.data() + a * kNumIouThrs + t;
    for (size_t d = 0; d < num_d; ++d) {
      double best = std::min(thrs[t], kMaxIouThr);
      int m = -1;  // position in `order` of the best match so far
      if (num_g > 0) {
        const double* row = ious.data() + d * num_g;
        for (size_t pos = 0; pos < num_g; ++pos) {
          const int g = order[pos];
          const bool crowd = gts[g]->iscrowd;
          if (gt_taken[pos] && !crowd) continue;
          // Matched a counted box already and only ignored ones remain.
          if (m > -1 && !ignored_by_gt[order[m]] && ignored_by_gt[g]) break;
          if (row[g] < best) continue;
          best = row[g];
          m = static_cast<int>(pos);
        }
      }
      bool ignored = false;
      // pycocotools records a match by the ground truth's id and reads id 0
      // as "unmatched" afterwards.
      bool matched = false;
      if (m > -1) {
        const int g = order[m];
        ignored = ignored_by_gt[g];
        matched = gts[g]->id != 0;
        gt_taken[m] = 1;
      }
      if (!matched && det_out_of_range[d]) ignored = true;
      out[d * kNumSettings] = ignored ? kIgnored : (matched ? kTruePositive : kFalsePositive);
    }
  }
}

// Evaluates one (category, image): dets sorted best first and cut at 100,
// IoUs, and the matching in every area range.
ImageEval EvaluateImage(const std::vector<const CocoAnnotation*>& gts,
                        std::vector<const CocoDetection*> dets) {
  std::stable_sort(dets.begin(), dets.end(), [](const CocoDetection* x, const CocoDetection* y) {
    return x->score > y->score;
  });
  const size_t max_det = static_cast<size_t>(kMaxDets.back());
  if (dets.size() > max_det) dets.resize(max_det);

  const size_t num_g = gts.size();
  const size_t num_d = dets.size();
  std::vector<double> ious(num_d * num_g);
  for (size_t d = 0; d < num_d; ++d) {
    for (size_t g = 0; g < num_g; ++g) {
      ious[d * num_g + g] = BoxIou(dets[d]->bbox, gts[g]->bbox, gts[g]->iscrowd);
    }
  }

  ImageEval eval;
  eval.scores.resize(num_d);
  for (size_t d = 0; d < num_d; ++d) eval.scores[d] = dets[d]->score;
  eval.outcome.assign(kNumSettings * num_d, kIgnored);
  for (int a = 0; a < kNumAreaRngs; ++a) MatchAreaRange(a, gts, dets, ious, eval);
  return eval;
}

// precision[t][r][k][a][m] and recall[t][k][a][m], -1 where not evaluated.
struct Accumulated {
  int num_categories = 0;
  std::vector<double> precision;
  std::vector<double> recall;

  explicit Accumulated(int k)
      : num_categories(k),
        precision(static_cast<size_t>(kNumIouThrs) * kNumRecThrs * k * kNumAreaRngs * kNumMaxDets,
                  -1.0),
        recall(static_cast<size_t>(kNumIouThrs) * k * kNumAreaRngs * kNumMaxDets, -1.0) {}

  double& Precision(int t, int r, int k, int a, int m) {
    return precision
        [(((static_cast<size_t>(t) * kNumRecThrs + r) * num_categories + k) * kNumAreaRngs + a) *
             kNumMaxDets +
         m];
  }
  double& Recall(int t, int k, int a, int m) {
    return recall[((static_cast<size_t>(t) * num_categories + k) * kNumAreaRngs + a) * kNumMaxDets +
                  m];
  }
};

// pycocotools' accumulate for one category: for every maxDets cut the
// detections of all images ranked by score (stable in image order), then the
// precision / recall curve per area range and IoU threshold.
void AccumulateCategory(int k, const std::vector<ImageEval>& images, Accumulated& acc) {
  if (images.empty()) return;
  const auto& rec_thrs = RecThrs();
  struct Entry {
    double score;
    int image;
    int det;
  };
  // All kept detections (at most 100 per image), best score first, ties in
  // image order then detection order. A smaller maxDets cut ranks the same
  // way, so its ranking is this one filtered.
  std::vector<Entry> ranked;
  for (size_t s = 0; s < images.size(); ++s) {
    for (size_t d = 0; d < images[s].scores.size(); ++d) {
      ranked.push_back({images[s].scores[d], static_cast<int>(s), static_cast<int>(d)});
    }
  }
  std::stable_sort(ranked.begin(), ranked.end(),
                   [](const Entry& x, const Entry& y) { return x.score > y.score; });

  std::array<int64_t, kNumAreaRngs> npig{};
  for (const ImageEval& e : images) {
    for (int a = 0; a < kNumAreaRngs; ++a) npig[a] += e.num_positive_gt[a];
  }

  std::vector<uint8_t> outcomes;  // outcomes[setting * nd + rank]
  std::vector<double> rc;
  std::vector<double> pr;
  for (int m = 0; m < kNumMaxDets; ++m) {
    size_t nd = 0;
    for (const Entry& e : ranked) nd += e.det < kMaxDets[m];
    outcomes.resize(kNumSettings * nd);
    size_t j = 0;
    for (const Entry& e : ranked) {
      if (e.det >= kMaxDets[m]) continue;
      const uint8_t* src =
          images[e.image].outcome.data() + static_cast<size_t>(e.det) * kNumSettings;
      for (int c = 0; c < kNumSettings; ++c) outcomes[c * nd + j] = src[c];
      ++j;
    }
    rc.resize(nd);
    pr.resize(nd);
    for (int a = 0; a < kNumAreaRngs; ++a) {
      if (npig[a] == 0) continue;
      const double npig_d = static_cast<double>(npig[a]);
      for (int t = 0; t < kNumIouThrs; ++t) {
        const uint8_t* o = outcomes.data() + (a * kNumIouThrs + t) * nd;
        int64_t tp = 0;
        int64_t fp = 0;
        for (size_t i = 0; i < nd; ++i) {
          tp += o[i] == kTruePositive;
          fp += o[i] == kFalsePositive;
          const double tp_d = static_cast<double>(tp);
          const double fp_d = static_cast<double>(fp);
          rc[i] = tp_d / npig_d;
          pr[i] = tp_d / ((fp_d + tp_d) + kSpacingOne);
        }
        acc.Recall(t, k, a, m) = nd > 0 ? rc[nd - 1] : 0.0;
        // Make the precision curve monotone (non-increasing).
        for (size_t i = nd - (nd > 0 ? 1 : 0); i > 0; --i) {
          if (pr[i] > pr[i - 1]) pr[i - 1] = pr[i];
        }
        // Precision at each recall threshold: pr at the first rc >= threshold
        // (np.searchsorted side='left'), 0 beyond the last recall reached.
        size_t p = 0;
        for (int r = 0; r < kNumRecThrs; ++r) {
          while (p < nd && rc[p] < rec_thrs[r]) ++p;
          acc.Precision(t, r, k, a, m) = p < nd ? pr[p] : 0.0;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// JSON input.
// ---------------------------------------------------------------------------

std::string Abbreviated(const json& v) {
  std::string s = v.dump();
  constexpr size_t kMax = 60;
  if (s.size() > kMax) s = s.substr(0, kMax) + "...";
  return s;
}

// Names one entry of an input array in messages: "file: annotations[3]".
struct EntryRef {
  const std::string& source;
  const char* array;
  size_t index;

  std::string Name() const { return source + ": " + array + "[" + std::to_string(index) + "]"; }
  std::string Field(const char* key) const { return Name() + "." + key; }
};

const json& RequireKey(const json& entry, const EntryRef& ref, const char* key) {
  if (!entry.is_object()) {
    throw std::invalid_argument(ref.Name() + " must be an object, got " + Abbreviated(entry));
  }
  auto it = entry.find(key);
  if (it == entry.end()) {
    throw std::invalid_argument(ref.Name() + " has no key '" + key + "'");
  }
  return *it;
}

int64_t IdValue(const json& v, const EntryRef& ref, const char* key) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return static_cast<int64_t>(u);
    }
  } else if (v.is_number_integer()) {
    return v.get<int64_t>();
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) {
      return static_cast<int64_t>(d);
    }
  }
  throw std::invalid_argument(ref.Field(key) + " must be an integer id, got " + Abbreviated(v));
}

double NumberValue(const json& v, const EntryRef& ref, const char* key) {
  if (!v.is_number()) {
    throw std::invalid_argument(ref.Field(key) + " must be a number, got " + Abbreviated(v));
  }
  return v.get<double>();
}

std::array<double, 4> BboxValue(const json& v, const EntryRef& ref) {
  bool ok = v.is_array() && v.size() == 4;
  for (size_t i = 0; ok && i < 4; ++i) ok = v[i].is_number();
  if (!ok) {
    throw std::invalid_argument(ref.Field("bbox") + " must be [x, y, w, h], 4 numbers, got " +
                                Abbreviated(v));
  }
  return {v[0].get<double>(), v[1].get<double>(), v[2].get<double>(), v[3].get<double>()};
}

bool CrowdValue(const json& v, const EntryRef& ref) {
  if (v.is_boolean()) return v.get<bool>();
  if (v.is_number()) {
    const double d = v.get<double>();
    if (d == std::floor(d)) return d != 0.0;
  }
  throw std::invalid_argument(ref.Field("iscrowd") + " must be 0 or 1, got " + Abbreviated(v));
}

// The array under `key` of the instances object; absent counts as empty when
// `required` is false.
const json* ArrayMember(const json& root, const char* key, bool required,
                        const std::string& source) {
  auto it = root.find(key);
  if (it == root.end()) {
    if (required) throw std::invalid_argument(source + ": has no key '" + key + "'");
    return nullptr;
  }
  if (!it->is_array()) {
    throw std::invalid_argument(source + ": '" + key + "' must be an array, got " +
                                Abbreviated(*it));
  }
  return &*it;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error("cannot open '" + path + "': " + std::strerror(errno));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw std::runtime_error("cannot read '" + path + "'");
  return ss.str();
}

json ParseJson(std::string_view text, const std::string& source) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::parse_error& e) {
    throw std::invalid_argument(source + ": not valid JSON: " + e.what());
  }
}

// "7, 9, 12" for the first few ids, with a count of the rest.
std::string IdList(std::vector<int64_t> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  constexpr size_t kShown = 10;
  std::string s;
  for (size_t i = 0; i < ids.size() && i < kShown; ++i) {
    if (i) s += ", ";
    s += std::to_string(ids[i]);
  }
  if (ids.size() > kShown) s += " and " + std::to_string(ids.size() - kShown) + " more";
  return s;
}

void SortUnique(std::vector<int64_t>& v) {
  std::sort(v.begin(), v.end());
  v.erase(std::unique(v.begin(), v.end()), v.end());
}

}  // namespace

// ---------------------------------------------------------------------------
// CocoGroundTruth
// ---------------------------------------------------------------------------

CocoGroundTruth::CocoGroundTruth(std::vector<int64_t> image_ids, std::vector<int64_t> category_ids,
                                 std::vector<CocoAnnotation> annotations)
    : image_ids_(std::move(image_ids)),
      category_ids_(std::move(category_ids)),
      annotations_(std::move(annotations)) {
  SortUnique(image_ids_);
  SortUnique(category_ids_);
  image_index_.reserve(image_ids_.size());
  for (size_t i = 0; i < image_ids_.size(); ++i) image_index_[image_ids_[i]] = static_cast<int>(i);
  category_index_.reserve(category_ids_.size());
  for (size_t k = 0; k < category_ids_.size(); ++k) {
    category_index_[category_ids_[k]] = static_cast<int>(k);
  }

  // pycocotools looks annotations up by id, so of annotations sharing an id
  // the last one stands for each of them.
  std::unordered_map<int64_t, int32_t> last_with_id;
  last_with_id.reserve(annotations_.size());
  for (size_t j = 0; j < annotations_.size(); ++j) {
    last_with_id[annotations_[j].id] = static_cast<int32_t>(j);
  }
  // Annotations in evaluation order: images ascending, then file order.
  std::vector<std::pair<int, int32_t>> by_image;
  by_image.reserve(annotations_.size());
  for (size_t j = 0; j < annotations_.size(); ++j) {
    const int i = ImageIndex(annotations_[j].image_id);
    if (i >= 0) by_image.emplace_back(i, static_cast<int32_t>(j));
  }
  std::stable_sort(by_image.begin(), by_image.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });

  const int64_t num_images = static_cast<int64_t>(image_ids_.size());
  std::vector<std::pair<int64_t, int32_t>> keyed;
  keyed.reserve(by_image.size());
  for (const auto& [image, j] : by_image) {
    if (CategoryIndex(annotations_[j].category_id) < 0) continue;
    const int32_t r = last_with_id[annotations_[j].id];
    const int ri = ImageIndex(annotations_[r].image_id);
    const int rk = CategoryIndex(annotations_[r].category_id);
    if (ri < 0 || rk < 0) continue;
    keyed.emplace_back(rk * num_images + ri, r);
  }
  std::stable_sort(keyed.begin(), keyed.end(),
                   [](const auto& x, const auto& y) { return x.first < y.first; });
  for (size_t n = 0; n < keyed.size(); ++n) {
    if (n == 0 || keyed[n].first != keyed[n - 1].first) {
      if (n > 0) bucket_offsets_.push_back(static_cast<int32_t>(n));
      bucket_keys_.push_back(keyed[n].first);
    }
    bucket_members_.push_back(keyed[n].second);
  }
  if (!keyed.empty()) bucket_offsets_.push_back(static_cast<int32_t>(keyed.size()));
}

int CocoGroundTruth::ImageIndex(int64_t image_id) const {
  auto it = image_index_.find(image_id);
  return it == image_index_.end() ? -1 : it->second;
}

int CocoGroundTruth::CategoryIndex(int64_t category_id) const {
  auto it = category_index_.find(category_id);
  return it == category_index_.end() ? -1 : it->second;
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

CocoGroundTruth CocoGroundTruthFromJson(const json& root, const std::string& source) {
  if (!root.is_object()) {
    throw std::invalid_argument(source + ": the ground truth must be a JSON object, got " +
                                std::string(root.type_name()));
  }
  std::vector<int64_t> image_ids;
  const json* images = ArrayMember(root, "images", /*required=*/true, source);
  image_ids.reserve(images->size());
  for (size_t n = 0; n < images->size(); ++n) {
    const EntryRef ref{source, "images", n};
    image_ids.push_back(IdValue(RequireKey((*images)[n], ref, "id"), ref, "id"));
  }

  std::vector<int64_t> category_ids;
  if (const json* cats = ArrayMember(root, "categories", /*required=*/false, source)) {
    category_ids.reserve(cats->size());
    for (size_t n = 0; n < cats->size(); ++n) {
      const EntryRef ref{source, "categories", n};
      category_ids.push_back(IdValue(RequireKey((*cats)[n], ref, "id"), ref, "id"));
    }
  }

  std::vector<CocoAnnotation> annotations;
  if (const json* anns = ArrayMember(root, "annotations", /*required=*/false, source)) {
    annotations.reserve(anns->size());
    for (size_t n = 0; n < anns->size(); ++n) {
      const json& entry = (*anns)[n];
      const EntryRef ref{source, "annotations", n};
      CocoAnnotation a;
      a.id = IdValue(RequireKey(entry, ref, "id"), ref, "id");
      a.image_id = IdValue(RequireKey(entry, ref, "image_id"), ref, "image_id");
      a.category_id = IdValue(RequireKey(entry, ref, "category_id"), ref, "category_id");
      a.bbox = BboxValue(RequireKey(entry, ref, "bbox"), ref);
      a.area = NumberValue(RequireKey(entry, ref, "area"), ref, "area");
      auto crowd = entry.find("iscrowd");
      a.iscrowd = crowd != entry.end() && CrowdValue(*crowd, ref);
      annotations.push_back(a);
    }
  }
  return CocoGroundTruth(std::move(image_ids), std::move(category_ids), std::move(annotations));
}

CocoGroundTruth ParseCocoGroundTruth(std::string_view json_text, const std::string& source) {
  return CocoGroundTruthFromJson(ParseJson(json_text, source), source);
}

CocoGroundTruth LoadCocoGroundTruth(const std::string& path) {
  return ParseCocoGroundTruth(ReadFile(path), path);
}

std::vector<CocoDetection> CocoDetectionsFromJson(const json& results, const CocoGroundTruth& gt,
                                                  const std::string& source) {
  if (!results.is_array()) {
    throw std::invalid_argument(source + ": detections must be a JSON array of objects, got " +
                                std::string(results.type_name()));
  }
  std::vector<CocoDetection> dets;
  dets.reserve(results.size());
  std::vector<int64_t> unknown_images;
  for (size_t n = 0; n < results.size(); ++n) {
    const json& entry = results[n];
    const EntryRef ref{source, "detections", n};
    CocoDetection d;
    d.image_id = IdValue(RequireKey(entry, ref, "image_id"), ref, "image_id");
    d.category_id = IdValue(RequireKey(entry, ref, "category_id"), ref, "category_id");
    d.bbox = BboxValue(RequireKey(entry, ref, "bbox"), ref);
    d.score = NumberValue(RequireKey(entry, ref, "score"), ref, "score");
    if (gt.ImageIndex(d.image_id) < 0) unknown_images.push_back(d.image_id);
    dets.push_back(d);
  }
  if (!unknown_images.empty()) {
    throw std::invalid_argument(
        source + ": " + std::to_string(unknown_images.size()) +
        " detection(s) on image ids not in the ground truth's images: " + IdList(unknown_images));
  }
  return dets;
}

std::vector<CocoDetection> ParseCocoDetections(std::string_view json_text,
                                               const CocoGroundTruth& gt,
                                               const std::string& source) {
  return CocoDetectionsFromJson(ParseJson(json_text, source), gt, source);
}

std::vector<CocoDetection> LoadCocoDetections(const std::string& path, const CocoGroundTruth& gt) {
  return ParseCocoDetections(ReadFile(path), gt, path);
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

CocoEvalResult EvaluateBbox(const CocoGroundTruth& gt,
                            const std::vector<CocoDetection>& detections) {
  const int64_t num_images = static_cast<int64_t>(gt.image_ids().size());
  const int num_categories = static_cast<int>(gt.category_ids().size());

  // Detections bucketed by (category, image), file order within a bucket.
  std::vector<std::pair<int64_t, int32_t>> det_keys;
  det_keys.reserve(detections.size());
  std::vector<int64_t> unknown_images;
  for (size_t j = 0; j < detections.size(); ++j) {
    const int i = gt.ImageIndex(detections[j].image_id);
    if (i < 0) {
      unknown_images.push_back(detections[j].image_id);
      continue;
    }
    const int k = gt.CategoryIndex(detections[j].category_id);
    if (k < 0) continue;  // a category the ground truth does not list
    det_keys.emplace_back(k * num_images + i, static_cast<int32_t>(j));
  }
  if (!unknown_images.empty()) {
    throw std::invalid_argument(
        std::to_string(unknown_images.size()) +
        " detection(s) on image ids not in the ground truth's images: " + IdList(unknown_images));
  }
  std::sort(det_keys.begin(), det_keys.end());

  Accumulated acc(num_categories);
  const auto& gt_keys = gt.bucket_keys();
  const auto& gt_offsets = gt.bucket_offsets();
  const auto& annotations = gt.annotations();
  size_t gb = 0;  // next ground-truth bucket
  size_t dn = 0;  // next detection
  std::vector<ImageEval> category_evals;
  std::vector<const CocoAnnotation*> gts;
  std::vector<const CocoDetection*> dets;
  int current_k = -1;
  // Walks the (category, image) pairs with ground truth or detections in
  // ascending key order: category-major, images ascending.
  while (gb < gt_keys.size() || dn < det_keys.size()) {
    int64_t key = std::numeric_limits<int64_t>::max();
    if (gb < gt_keys.size()) key = gt_keys[gb];
    if (dn < det_keys.size()) key = std::min(key, det_keys[dn].first);
    const int k = static_cast<int>(key / num_images);
    if (k != current_k) {
      if (current_k >= 0) AccumulateCategory(current_k, category_evals, acc);
      category_evals.clear();
      current_k = k;
    }
    gts.clear();
    if (gb < gt_keys.size() && gt_keys[gb] == key) {
      for (int32_t n = gt_offsets[gb]; n < gt_offsets[gb + 1]; ++n) {
        gts.push_back(&annotations[gt.bucket_members()[n]]);
      }
      ++gb;
    }
    dets.clear();
    while (dn < det_keys.size() && det_keys[dn].first == key) {
      dets.push_back(&detections[det_keys[dn].second]);
      ++dn;
    }
    category_evals.push_back(EvaluateImage(gts, dets));
  }
  if (current_k >= 0) AccumulateCategory(current_k, category_evals, acc);

  // Summaries: means over the settings with a value (> -1), -1 when none.
  const auto& iou_thrs = IouThrs();
  auto iou_index = [&](double thr) {
    for (int t = 0; t < kNumIouThrs; ++t) {
      if (iou_thrs[t] == thr) return t;
    }
    return -1;
  };
  std::vector<double> values;
  auto average_precision = [&](int t_only, int a, int m) {
    values.clear();
    for (int t = 0; t < kNumIouThrs; ++t) {
      if (t_only == -2 || t == t_only) {  // -2: all thresholds; -1: none matched
        for (int r = 0; r < kNumRecThrs; ++r) {
          for (int k = 0; k < num_categories; ++k) values.push_back(acc.Precision(t, r, k, a, m));
        }
      }
    }
    return MeanOfValid(values);
  };
  auto average_recall = [&](int a, int m) {
    values.clear();
    for (int t = 0; t < kNumIouThrs; ++t) {
      for (int k = 0; k < num_categories; ++k) values.push_back(acc.Recall(t, k, a, m));
    }
    return MeanOfValid(values);
  };
  constexpr int kAll = -2;
  const int m100 = 2;
  CocoEvalResult result;
  result.stats[0] = average_precision(kAll, 0, m100);
  result.stats[1] = average_precision(iou_index(0.5), 0, m100);
  result.stats[2] = average_precision(iou_index(0.75), 0, m100);
  result.stats[3] = average_precision(kAll, 1, m100);
  result.stats[4] = average_precision(kAll, 2, m100);
  result.stats[5] = average_precision(kAll, 3, m100);
  result.stats[6] = average_recall(0, 0);
  result.stats[7] = average_recall(0, 1);
  result.stats[8] = average_recall(0, m100);
  result.stats[9] = average_recall(1, m100);
  result.stats[10] = average_recall(2, m100);
  result.stats[11] = average_recall(3, m100);

  for (int k = 0; k < num_categories; ++k) {
    values.clear();
    for (int t = 0; t < kNumIouThrs; ++t) {
      for (int r = 0; r < kNumRecThrs; ++r) values.push_back(acc.Precision(t, r, k, 0, m100));
    }
    result.per_category_ap[gt.category_ids()[k]] = MeanOfValid(values);
  }
  return result;
}

std::string CocoEvalResultToJsonString(const CocoEvalResult& result, int indent) {
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (int s = 0; s < CocoEvalResult::kNumStats; ++s) {
    out[CocoEvalResult::kStatNames[s]] = result.stats[s];
  }
  nlohmann::ordered_json per_category = nlohmann::ordered_json::object();
  for (const auto& [id, ap] : result.per_category_ap) per_category[std::to_string(id)] = ap;
  out["per_category_AP"] = std::move(per_category);
  return out.dump(indent);
}

}  // namespace lpdetr::train

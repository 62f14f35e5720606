// The synthetic shapes dataset; see shapes.h.
#include "train/shapes.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <random>
#include <stdexcept>
#include <thread>

namespace lpdetr::train {

namespace fs = std::filesystem;

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr int kSamplesPerPixel = kSupersample * kSupersample;
// Probability that a placement puts the whole shape inside the image (when it
// fits); otherwise its centre is anywhere up to a fifth of its diameter
// outside.
constexpr double kWhollyInsideProb = 0.7;

// ---------------------------------------------------------------------------
// Random numbers: std::mt19937_64 and integer arithmetic on its raw outputs
// (the std:: distributions differ between standard libraries). Draws are
// sequenced explicitly (never two in one function call's arguments, whose
// evaluation order is unspecified; braced lists are ordered).

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  uint64_t Next() { return engine_(); }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  // Uniform integer in [lo, hi].
  int Int(int lo, int hi) {
    const uint64_t span = static_cast<uint64_t>(static_cast<int64_t>(hi) - lo) + 1;
    return lo + static_cast<int>(engine_() % span);
  }
  bool Chance(double p) { return Uniform() < p; }

 private:
  std::mt19937_64 engine_;
};

// The stream of image `index`: independent of every other image's.
uint64_t ImageSeed(uint64_t seed, int64_t index) {
  return SplitMix64(SplitMix64(seed) ^
                    SplitMix64(static_cast<uint64_t>(index) * 0xD1B54A32D192ED03ull));
}

// ---------------------------------------------------------------------------
// Colours: float RGB in [0, 255].

cv::Vec3f HsvToRgb(double h, double s, double v) {
  h = std::fmod(h, 360.0) / 60.0;
  const int sector = static_cast<int>(h) % 6;
  const double f = h - std::floor(h);
  const double p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  double r = v, g = t, b = p;
  switch (sector) {
    case 0:
      r = v, g = t, b = p;
      break;
    case 1:
      r = q, g = v, b = p;
      break;
    case 2:
      r = p, g = v, b = t;
      break;
    case 3:
      r = p, g = q, b = v;
      break;
    case 4:
      r = t, g = p, b = v;
      break;
    default:
      r = v, g = p, b = q;
      break;
  }
  return cv::Vec3f(static_cast<float>(255 * r), static_cast<float>(255 * g),
                   static_cast<float>(255 * b));
}

// Hue uniform, saturation and value uniform in the given ranges.
cv::Vec3f RandomHsv(Rng& rng, double s_lo, double s_hi, double v_lo, double v_hi) {
  const double h = rng.Uniform(0, 360);
  const double s = rng.Uniform(s_lo, s_hi);
  const double v = rng.Uniform(v_lo, v_hi);
  return HsvToRgb(h, s, v);
}

// A colour from one of several palettes (any, vivid, pastel, dark, grey,
// the RGB cube), rounded to integers so that fills are exact 8-bit colours.
cv::Vec3f RandomColor(Rng& rng) {
  cv::Vec3f c;
  switch (rng.Int(0, 5)) {
    case 0:
      c = RandomHsv(rng, 0, 1, 0, 1);
      break;
    case 1:
      c = RandomHsv(rng, 0.6, 1, 0.6, 1);
      break;
    case 2:
      c = RandomHsv(rng, 0.1, 0.4, 0.75, 1);
      break;
    case 3:
      c = RandomHsv(rng, 0.2, 1, 0.05, 0.4);
      break;
    case 4: {
      const float g = static_cast<float>(rng.Int(0, 255));
      c = cv::Vec3f(g, g, g);
      break;
    }
    default:
      for (int k = 0; k < 3; ++k) c[k] = static_cast<float>(rng.Int(0, 255));
      break;
  }
  for (int k = 0; k < 3; ++k) c[k] = std::round(c[k]);
  return c;
}

double Luma(const cv::Vec3f& c) { return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]; }

double Distance(const cv::Vec3f& a, const cv::Vec3f& b) {
  const double dr = a[0] - b[0], dg = a[1] - b[1], db = a[2] - b[2];
  return std::sqrt(dr * dr + dg * dg + db * db);
}

cv::Vec3f Mix(const cv::Vec3f& a, const cv::Vec3f& b, float t) { return a + (b - a) * t; }

// A colour ramp: t in [0, 1] across 2 or 3 stops.
struct Ramp {
  std::vector<cv::Vec3f> stops;
  cv::Vec3f At(float t) const {
    t = std::clamp(t, 0.0f, 1.0f);
    const float pos = t * static_cast<float>(stops.size() - 1);
    const size_t k = std::min(static_cast<size_t>(pos), stops.size() - 2);
    return Mix(stops[k], stops[k + 1], pos - static_cast<float>(k));
  }
};

Ramp RandomRamp(Rng& rng) {
  Ramp ramp;
  const int n = rng.Chance(0.3) ? 3 : 2;
  for (int k = 0; k < n; ++k) ramp.stops.push_back(RandomColor(rng));
  return ramp;
}

// ---------------------------------------------------------------------------
// Backgrounds: CV_32FC3 RGB in [0, 255].

// t per pixel of a linear (along a random direction) or radial ramp.
cv::Mat GradientField(cv::Size size, Rng& rng, bool radial) {
  cv::Mat t(size, CV_32F);
  if (radial) {
    const double cx = rng.Uniform(-0.2, 1.2) * size.width;
    const double cy = rng.Uniform(-0.2, 1.2) * size.height;
    const double radius = std::hypot(size.width, size.height) * rng.Uniform(0.3, 1.0);
    for (int y = 0; y < size.height; ++y) {
      float* row = t.ptr<float>(y);
      for (int x = 0; x < size.width; ++x) {
        row[x] = static_cast<float>(std::hypot(x + 0.5 - cx, y + 0.5 - cy) / radius);
      }
    }
    return t;
  }
  const double angle = rng.Uniform(0, 2 * kPi);
  const double ux = std::cos(angle), uy = std::sin(angle);
  double lo = 1e300, hi = -1e300;
  for (const auto& [px, py] :
       {std::pair<double, double>{0, 0},
        {static_cast<double>(size.width), 0},
        {0, static_cast<double>(size.height)},
        {static_cast<double>(size.width), static_cast<double>(size.height)}}) {
    lo = std::min(lo, px * ux + py * uy);
    hi = std::max(hi, px * ux + py * uy);
  }
  for (int y = 0; y < size.height; ++y) {
    float* row = t.ptr<float>(y);
    for (int x = 0; x < size.width; ++x) {
      row[x] = static_cast<float>(((x + 0.5) * ux + (y + 0.5) * uy - lo) / (hi - lo));
    }
  }
  return t;
}

cv::Mat Colorize(const cv::Mat& t, const Ramp& ramp) {
  cv::Mat out(t.size(), CV_32FC3);
  for (int y = 0; y < t.rows; ++y) {
    const float* in = t.ptr<float>(y);
    cv::Vec3f* row = out.ptr<cv::Vec3f>(y);
    for (int x = 0; x < t.cols; ++x) row[x] = ramp.At(in[x]);
  }
  return out;
}

cv::Mat SolidBackground(cv::Size size, Rng& rng) {
  const cv::Vec3f c = RandomColor(rng);
  return cv::Mat(size, CV_32FC3, cv::Scalar(c[0], c[1], c[2]));
}

cv::Mat GradientBackground(cv::Size size, Rng& rng, std::string* detail) {
  const bool radial = rng.Chance(0.3);
  *detail = radial ? "radial" : "linear";
  const Ramp ramp = RandomRamp(rng);
  return Colorize(GradientField(size, rng, radial), ramp);
}

cv::Mat NoiseBackground(cv::Size size, Rng& rng, std::string* detail) {
  cv::Mat base;
  if (rng.Chance(0.3)) {
    const Ramp ramp = RandomRamp(rng);
    base = Colorize(GradientField(size, rng, rng.Chance(0.3)), ramp);
  } else {
    base = SolidBackground(size, rng);
  }
  const double sigma = rng.Uniform(6, 50);
  cv::RNG noise_rng(rng.Next());
  cv::Mat noise;
  if (rng.Chance(0.6)) {
    *detail = "grey";
    cv::Mat mono(size, CV_32F);
    noise_rng.fill(mono, cv::RNG::NORMAL, 0.0, sigma);
    cv::merge(std::vector<cv::Mat>{mono, mono, mono}, noise);
  } else {
    *detail = "colour";
    noise = cv::Mat(size, CV_32FC3);
    noise_rng.fill(noise, cv::RNG::NORMAL, cv::Scalar::all(0), cv::Scalar::all(sigma));
  }
  return base + noise;
}

// Bands of `colors` with widths `widths` (pixels, summing to the period)
// repeating along direction `angle`, edges blended over one pixel.
cv::Mat Bands(cv::Size size, double angle, const std::vector<cv::Vec3f>& colors,
              const std::vector<double>& widths, double offset) {
  std::vector<double> bounds = {0};
  for (double w : widths) bounds.push_back(bounds.back() + w);
  const double period = bounds.back();
  const double ux = std::cos(angle), uy = std::sin(angle);
  const size_t n = colors.size();
  cv::Mat out(size, CV_32FC3);
  for (int y = 0; y < size.height; ++y) {
    cv::Vec3f* row = out.ptr<cv::Vec3f>(y);
    for (int x = 0; x < size.width; ++x) {
      double s = std::fmod((x + 0.5) * ux + (y + 0.5) * uy + offset, period);
      if (s < 0) s += period;
      size_t k = 0;
      while (k + 1 < n && s >= bounds[k + 1]) ++k;
      cv::Vec3f c = colors[k];
      const double below = s - bounds[k], above = bounds[k + 1] - s;
      // A pixel centred d < 0.5 from an edge is 0.5 - d the neighbour's.
      if (below < 0.5) c = Mix(c, colors[(k + n - 1) % n], static_cast<float>(0.5 - below));
      if (above < 0.5) c = Mix(c, colors[(k + 1) % n], static_cast<float>(0.5 - above));
      row[x] = c;
    }
  }
  return out;
}

double RandomAngle(Rng& rng, double snap_prob) {
  if (rng.Chance(snap_prob)) return rng.Int(0, 3) * kPi / 2;
  return rng.Uniform(0, 2 * kPi);
}

cv::Mat StripesBackground(cv::Size size, Rng& rng, std::string* detail) {
  const int n = rng.Chance(0.25) ? 3 : 2;
  *detail = n == 2 ? "two-colour" : "three-colour";
  const double period = std::exp(rng.Uniform(std::log(6.0), std::log(90.0)));
  std::vector<cv::Vec3f> colors;
  std::vector<double> widths;
  double remaining = period;
  for (int k = 0; k < n; ++k) {
    colors.push_back(RandomColor(rng));
    const double w = k + 1 == n ? remaining : period * rng.Uniform(0.25, 0.75) / (n - 1);
    widths.push_back(w);
    remaining -= w;
  }
  const double angle = RandomAngle(rng, 0.3);
  return Bands(size, angle, colors, widths, rng.Uniform(0, period));
}

// Smooth value noise: 1-3 octaves of uniform noise on coarse grids, resized
// with bicubic interpolation, normalised to [0, 1] and coloured by a ramp.
cv::Mat CloudsTexture(cv::Size size, Rng& rng) {
  cv::RNG noise_rng(rng.Next());
  const int octaves = rng.Int(1, 3);
  cv::Mat sum = cv::Mat::zeros(size, CV_32F);
  double cell = std::exp(rng.Uniform(std::log(4.0), std::log(80.0)));
  double weight = 1;
  for (int o = 0; o < octaves; ++o) {
    const int c = std::max(2, static_cast<int>(std::lround(cell)));
    cv::Mat coarse(size.height / c + 3, size.width / c + 3, CV_32F);
    noise_rng.fill(coarse, cv::RNG::UNIFORM, 0.0, 1.0);
    cv::Mat fine;
    cv::resize(coarse, fine, cv::Size(coarse.cols * c, coarse.rows * c), 0, 0, cv::INTER_CUBIC);
    sum += weight * fine(cv::Rect(0, 0, size.width, size.height));
    cell /= 2.5;
    weight *= 0.5;
  }
  cv::normalize(sum, sum, 0.0, 1.0, cv::NORM_MINMAX);
  return Colorize(sum, RandomRamp(rng));
}

cv::Mat CheckerTexture(cv::Size size, Rng& rng) {
  const double cell = rng.Uniform(8, 48);
  const double angle = RandomAngle(rng, 0.5);
  const cv::Vec3f a = RandomColor(rng), b = RandomColor(rng);
  const double ux = std::cos(angle), uy = std::sin(angle);
  const double ox = rng.Uniform(0, cell), oy = rng.Uniform(0, cell);
  cv::Mat out(size, CV_32FC3);
  for (int y = 0; y < size.height; ++y) {
    cv::Vec3f* row = out.ptr<cv::Vec3f>(y);
    for (int x = 0; x < size.width; ++x) {
      const double u = ((x + 0.5) * ux + (y + 0.5) * uy + ox) / cell;
      const double v = (-(x + 0.5) * uy + (y + 0.5) * ux + oy) / cell;
      const double fu = std::floor(u), fv = std::floor(v);
      const bool odd = (static_cast<int64_t>(fu) + static_cast<int64_t>(fv)) & 1;
      // Distance in pixels to the nearest cell edge, for a one-pixel blend.
      const double d = cell * std::min({u - fu, fu + 1 - u, v - fv, fv + 1 - v});
      const cv::Vec3f& own = odd ? a : b;
      const cv::Vec3f& other = odd ? b : a;
      row[x] = d < 0.5 ? Mix(own, other, static_cast<float>(0.5 - d)) : own;
    }
  }
  return out;
}

cv::Mat LinesTexture(cv::Size size, Rng& rng) {
  cv::Mat base8;
  SolidBackground(size, rng).convertTo(base8, CV_8UC3);
  const int lines = rng.Int(10, 120);
  const double reach = 0.3 * std::max(size.width, size.height);
  for (int i = 0; i < lines; ++i) {
    const cv::Vec3f c = RandomColor(rng);
    const cv::Point2d p0{rng.Uniform(-reach, size.width + reach),
                         rng.Uniform(-reach, size.height + reach)};
    const double angle = rng.Uniform(0, kPi), length = rng.Uniform(0.1, 1.5) * reach;
    const cv::Point2d p1(p0.x + length * std::cos(angle), p0.y + length * std::sin(angle));
    constexpr int kShift = 4;
    const auto fixed = [](const cv::Point2d& p) {
      return cv::Point(static_cast<int>(std::lround(p.x * (1 << kShift))),
                       static_cast<int>(std::lround(p.y * (1 << kShift))));
    };
    cv::line(base8, fixed(p0), fixed(p1), cv::Scalar(c[0], c[1], c[2]), rng.Int(1, 3), cv::LINE_AA,
             kShift);
  }
  cv::Mat out;
  base8.convertTo(out, CV_32FC3);
  return out;
}

cv::Mat MakeBackground(cv::Size size, Rng& rng, BackgroundKind* kind, std::string* detail) {
  *kind = static_cast<BackgroundKind>(rng.Int(0, kNumBackgroundKinds - 1));
  cv::Mat canvas;
  switch (*kind) {
    case BackgroundKind::kSolid:
      canvas = SolidBackground(size, rng);
      *detail = "solid";
      break;
    case BackgroundKind::kGradient:
      canvas = GradientBackground(size, rng, detail);
      break;
    case BackgroundKind::kNoise:
      canvas = NoiseBackground(size, rng, detail);
      break;
    case BackgroundKind::kStripes:
      canvas = StripesBackground(size, rng, detail);
      break;
    case BackgroundKind::kTexture:
      switch (rng.Int(0, 2)) {
        case 0:
          canvas = CloudsTexture(size, rng), *detail = "clouds";
          break;
        case 1:
          canvas = CheckerTexture(size, rng), *detail = "checker";
          break;
        default:
          canvas = LinesTexture(size, rng), *detail = "lines";
          break;
      }
      break;
  }
  cv::min(canvas, 255.0, canvas);
  cv::max(canvas, 0.0, canvas);
  return canvas;
}

// ---------------------------------------------------------------------------
// Geometry.

std::vector<cv::Point2d> ClipPolygon(std::vector<cv::Point2d> poly, double width, double height) {
  // Sutherland-Hodgman against x >= 0, x <= width, y >= 0, y <= height.
  struct Edge {
    int axis;
    double bound;
    bool keep_below;
  };
  for (const Edge& e :
       {Edge{0, 0, false}, Edge{0, width, true}, Edge{1, 0, false}, Edge{1, height, true}}) {
    if (poly.empty()) break;
    const auto coord = [&](const cv::Point2d& p) { return e.axis == 0 ? p.x : p.y; };
    const auto inside = [&](const cv::Point2d& p) {
      return e.keep_below ? coord(p) <= e.bound : coord(p) >= e.bound;
    };
    std::vector<cv::Point2d> out;
    for (size_t i = 0; i < poly.size(); ++i) {
      const cv::Point2d& a = poly[i];
      const cv::Point2d& b = poly[(i + 1) % poly.size()];
      const bool in_a = inside(a), in_b = inside(b);
      if (in_a) out.push_back(a);
      if (in_a != in_b) {
        const double t = (e.bound - coord(a)) / (coord(b) - coord(a));
        cv::Point2d p = a + t * (b - a);
        (e.axis == 0 ? p.x : p.y) = e.bound;
        out.push_back(p);
      }
    }
    poly = std::move(out);
  }
  return poly;
}

// The x intervals [left, right) of the shape on the horizontal line at y,
// written to `out` as sorted pairs (even-odd rule for polygons).
void ScanlineIntervals(const ShapeGeometry& g, double y, std::vector<double>* out) {
  out->clear();
  if (g.shape_class == ShapeClass::kCircle) {
    const double r = g.diameter / 2, dy = y - g.center.y;
    if (dy * dy < r * r) {
      const double half = std::sqrt(r * r - dy * dy);
      out->push_back(g.center.x - half);
      out->push_back(g.center.x + half);
    }
    return;
  }
  const std::vector<cv::Point2d>& p = g.polygon;
  for (size_t i = 0; i < p.size(); ++i) {
    const cv::Point2d& a = p[i];
    const cv::Point2d& b = p[(i + 1) % p.size()];
    if ((a.y <= y) != (b.y <= y)) out->push_back(a.x + (y - a.y) * (b.x - a.x) / (b.y - a.y));
  }
  std::sort(out->begin(), out->end());
}

// Image-pixel rectangle of [x1, x2) x [y1, y2) clipped to the image.
cv::Rect PixelRect(const std::array<double, 4>& e, cv::Size size) {
  const int x0 =
      static_cast<int>(std::clamp(std::floor(e[0]), 0.0, static_cast<double>(size.width)));
  const int y0 =
      static_cast<int>(std::clamp(std::floor(e[1]), 0.0, static_cast<double>(size.height)));
  const int x1 =
      static_cast<int>(std::clamp(std::ceil(e[2]), 0.0, static_cast<double>(size.width)));
  const int y1 =
      static_cast<int>(std::clamp(std::ceil(e[3]), 0.0, static_cast<double>(size.height)));
  if (x1 <= x0 || y1 <= y0) return cv::Rect();
  return cv::Rect(x0, y0, x1 - x0, y1 - y0);
}

// Per-pixel coverage (samples inside / kSamplesPerPixel) of a raster's rect.
cv::Mat CoverageOfRect(const ShapeRaster& raster) {
  cv::Mat alpha(raster.rect.size(), CV_32F);
  for (int y = 0; y < alpha.rows; ++y) {
    float* out = alpha.ptr<float>(y);
    for (int x = 0; x < alpha.cols; ++x) {
      int inside = 0;
      for (int b = 0; b < kSupersample; ++b) {
        const uint8_t* s = raster.samples.ptr<uint8_t>(y * kSupersample + b) + x * kSupersample;
        for (int a = 0; a < kSupersample; ++a) inside += s[a] != 0;
      }
      out[x] = static_cast<float>(inside) / kSamplesPerPixel;
    }
  }
  return alpha;
}

// ---------------------------------------------------------------------------
// Placement.

// A shape on the canvas with its coverage by later shapes (samples, a subset
// of its own).
struct PlacedShape {
  ShapeGeometry geometry;
  ShapeRaster raster;
  cv::Mat covered;  // CV_8U like raster.samples
  int64_t covered_count = 0;
  cv::Vec3f color;
};

// The sample sub-rectangles of raster `a` and of a raster with pixel rect
// `b_rect` that cover the two rects' overlap; false when they do not overlap.
bool Overlap(const ShapeRaster& a, const cv::Rect& b_rect, cv::Rect* a_sub, cv::Rect* b_sub) {
  const cv::Rect common = a.rect & b_rect;
  if (common.empty()) return false;
  const auto sub = [&](const cv::Rect& r) {
    return cv::Rect((common.x - r.x) * kSupersample, (common.y - r.y) * kSupersample,
                    common.width * kSupersample, common.height * kSupersample);
  };
  *a_sub = sub(a.rect);
  *b_sub = sub(b_rect);
  return true;
}

// Whether a new shape with `raster` leaves every earlier shape at most
// `max_covered` covered.
bool CoverageAllows(const std::vector<PlacedShape>& placed, const ShapeRaster& raster,
                    double max_covered) {
  cv::Mat both;
  for (const PlacedShape& p : placed) {
    cv::Rect own, other;
    if (!Overlap(p.raster, raster.rect, &own, &other)) continue;
    cv::bitwise_and(p.raster.samples(own), raster.samples(other), both);
    const int64_t overlap = cv::countNonZero(both);
    if (overlap == 0) continue;
    cv::bitwise_and(both, p.covered(own), both);
    const int64_t added = overlap - cv::countNonZero(both);
    if (static_cast<double>(p.covered_count + added) >
        max_covered * static_cast<double>(p.raster.count)) {
      return false;
    }
  }
  return true;
}

void CommitCoverage(std::vector<PlacedShape>* placed, const ShapeRaster& raster) {
  cv::Mat both;
  for (PlacedShape& p : *placed) {
    cv::Rect own, other;
    if (!Overlap(p.raster, raster.rect, &own, &other)) continue;
    cv::bitwise_and(p.raster.samples(own), raster.samples(other), both);
    cv::Mat covered = p.covered(own);
    cv::bitwise_or(covered, both, covered);
    p.covered_count = cv::countNonZero(p.covered);
  }
}

struct ShapeDraw {
  double diameter, rotation, aspect, ratio;
};

ShapeDraw DrawShapeParameters(ShapeClass c, Rng& rng, const ShapesOptions& o, cv::Size size) {
  ShapeDraw d{};
  const double hi =
      std::min(o.max_diameter, static_cast<double>(std::min(size.width, size.height)));
  const double lo = std::min(o.min_diameter, hi);
  d.diameter =
      rng.Chance(0.5) ? std::exp(rng.Uniform(std::log(lo), std::log(hi))) : rng.Uniform(lo, hi);
  d.rotation = c == ShapeClass::kCircle ? 0 : RandomAngle(rng, 0.2);
  d.aspect = c == ShapeClass::kRectangle && !rng.Chance(0.2) ? rng.Uniform(1, 2.5) : 1;
  if (c == ShapeClass::kStar) d.ratio = rng.Uniform(0.36, 0.44);
  if (c == ShapeClass::kCross) d.ratio = rng.Uniform(0.31, 0.36);
  return d;
}

// ---------------------------------------------------------------------------
// Colour choice and drawing.

// A fill colour far from the mean of the canvas under `alpha` (RGB distance
// >= 100 and luminance difference >= 30) that is close (distance < 50) to at
// most 5% of the pixels there; the best of the candidates tried otherwise.
cv::Vec3f PickContrastingColor(const cv::Mat& canvas, const cv::Rect& rect, const cv::Mat& alpha,
                               Rng& rng) {
  std::vector<cv::Vec3f> under;
  cv::Vec3d sum(0, 0, 0);
  for (int y = 0; y < rect.height; ++y) {
    const cv::Vec3f* row = canvas.ptr<cv::Vec3f>(rect.y + y) + rect.x;
    const float* a = alpha.ptr<float>(y);
    for (int x = 0; x < rect.width; ++x) {
      if (a[x] < 0.5f) continue;
      under.push_back(row[x]);
      sum += cv::Vec3d(row[x][0], row[x][1], row[x][2]);
    }
  }
  if (under.empty()) return RandomColor(rng);
  const double n = static_cast<double>(under.size());
  const cv::Vec3f mean(static_cast<float>(sum[0] / n), static_cast<float>(sum[1] / n),
                       static_cast<float>(sum[2] / n));
  // At most ~1000 pixels for the closeness count.
  const size_t stride = std::max<size_t>(1, under.size() / 1000);
  const auto score = [&](const cv::Vec3f& c) {
    size_t close = 0, total = 0;
    for (size_t i = 0; i < under.size(); i += stride, ++total) close += Distance(c, under[i]) < 50;
    const double close_frac = static_cast<double>(close) / static_cast<double>(total);
    const double contrast = std::min(Distance(c, mean) / 100, std::fabs(Luma(c) - Luma(mean)) / 30);
    return std::min(contrast, 1.0) - 20 * std::max(0.0, close_frac - 0.05);
  };
  cv::Vec3f best;
  double best_score = -1e300;
  for (int attempt = 0; attempt < 40; ++attempt) {
    const cv::Vec3f c = RandomColor(rng);
    const double s = score(c);
    if (s >= 1) return c;
    if (s > best_score) best = c, best_score = s;
  }
  for (const cv::Vec3f& c : {cv::Vec3f(0, 0, 0), cv::Vec3f(255, 255, 255)}) {
    const double s = score(c);
    if (s > best_score) best = c, best_score = s;
  }
  return best;
}

void Blend(cv::Mat* canvas, const cv::Rect& rect, const cv::Mat& alpha, const cv::Vec3f& color) {
  for (int y = 0; y < rect.height; ++y) {
    cv::Vec3f* row = canvas->ptr<cv::Vec3f>(rect.y + y) + rect.x;
    const float* a = alpha.ptr<float>(y);
    for (int x = 0; x < rect.width; ++x) {
      if (a[x] == 1.0f) {
        row[x] = color;
      } else if (a[x] > 0.0f) {
        row[x] = Mix(row[x], color, a[x]);
      }
    }
  }
}

double Round(double v, double unit) { return std::round(v / unit) * unit; }

}  // namespace

// ---------------------------------------------------------------------------

const char* ShapeClassName(ShapeClass shape_class) {
  switch (shape_class) {
    case ShapeClass::kCircle:
      return "circle";
    case ShapeClass::kRectangle:
      return "rectangle";
    case ShapeClass::kTriangle:
      return "triangle";
    case ShapeClass::kStar:
      return "star";
    case ShapeClass::kHexagon:
      return "hexagon";
    case ShapeClass::kCross:
      return "cross";
  }
  return "?";
}

const char* BackgroundKindName(BackgroundKind kind) {
  switch (kind) {
    case BackgroundKind::kSolid:
      return "solid";
    case BackgroundKind::kGradient:
      return "gradient";
    case BackgroundKind::kNoise:
      return "noise";
    case BackgroundKind::kStripes:
      return "stripes";
    case BackgroundKind::kTexture:
      return "texture";
  }
  return "?";
}

void ValidateShapesOptions(const ShapesOptions& o) {
  const auto fail = [](const std::string& what) { throw std::invalid_argument(what); };
  if (o.num_images < 1) fail("images must be >= 1, got " + std::to_string(o.num_images));
  if (o.min_size < 32) fail("min size must be >= 32, got " + std::to_string(o.min_size));
  if (o.max_size < o.min_size || o.max_size > 16384) {
    fail("max size must be in [min size, 16384], got " + std::to_string(o.max_size) +
         " (min size " + std::to_string(o.min_size) + ")");
  }
  if (o.min_shapes < 1 || o.max_shapes < o.min_shapes) {
    fail("shape counts must satisfy 1 <= min <= max, got " + std::to_string(o.min_shapes) + ".." +
         std::to_string(o.max_shapes));
  }
  if (!(o.min_diameter >= 4) || !(o.max_diameter >= o.min_diameter)) {
    fail("diameters must satisfy 4 <= min <= max, got " + std::to_string(o.min_diameter) + ".." +
         std::to_string(o.max_diameter));
  }
  const auto probability = [&](const char* name, double p) {
    if (!(p >= 0 && p <= 1))
      fail(std::string(name) + " must be in [0, 1], got " + std::to_string(p));
  };
  probability("jpeg probability", o.jpeg_prob);
  probability("blur probability", o.blur_prob);
  probability("max covered", o.max_covered);
  probability("min visible", o.min_visible);
  if (o.jpeg_min_quality < 1 || o.jpeg_max_quality > 100 ||
      o.jpeg_min_quality > o.jpeg_max_quality) {
    fail("JPEG qualities must satisfy 1 <= min <= max <= 100, got " +
         std::to_string(o.jpeg_min_quality) + ".." + std::to_string(o.jpeg_max_quality));
  }
  if (o.threads < 0) fail("threads must be >= 0, got " + std::to_string(o.threads));
}

ShapeGeometry MakeShapeGeometry(ShapeClass shape_class, cv::Point2d center, double diameter,
                                double rotation, double aspect, double ratio) {
  ShapeGeometry g;
  g.shape_class = shape_class;
  g.center = center;
  g.diameter = diameter;
  g.rotation = shape_class == ShapeClass::kCircle ? 0 : rotation;
  g.aspect = shape_class == ShapeClass::kRectangle ? aspect : 1;
  g.ratio = shape_class == ShapeClass::kStar || shape_class == ShapeClass::kCross ? ratio : 0;
  const double r = diameter / 2;
  std::vector<cv::Point2d> local;
  const auto on_circle = [&](double radius, double angle) {
    local.emplace_back(radius * std::cos(angle), radius * std::sin(angle));
  };
  switch (shape_class) {
    case ShapeClass::kCircle:
      return g;
    case ShapeClass::kRectangle: {
      const double norm = std::sqrt(1 + aspect * aspect);
      const double hw = r * aspect / norm, hh = r / norm;
      local = {{-hw, -hh}, {hw, -hh}, {hw, hh}, {-hw, hh}};
      break;
    }
    case ShapeClass::kTriangle:
      for (int k = 0; k < 3; ++k) on_circle(r, -kPi / 2 + 2 * kPi * k / 3);
      break;
    case ShapeClass::kStar:
      for (int k = 0; k < 10; ++k) on_circle(k % 2 == 0 ? r : ratio * r, -kPi / 2 + kPi * k / 5);
      break;
    case ShapeClass::kHexagon:
      for (int k = 0; k < 6; ++k) on_circle(r, kPi * k / 3);
      break;
    case ShapeClass::kCross: {
      // Two bars of length l and width ratio * l; their corners are on the
      // circumscribed circle.
      const double l = r / std::sqrt(1 + ratio * ratio), h = ratio * l;
      local = {{h, -l}, {h, -h}, {l, -h}, {l, h},   {h, h},   {h, l},
               {-h, l}, {-h, h}, {-l, h}, {-l, -h}, {-h, -h}, {-h, -l}};
      break;
    }
  }
  const double c = std::cos(g.rotation), s = std::sin(g.rotation);
  for (const cv::Point2d& p : local) {
    g.polygon.emplace_back(center.x + p.x * c + p.y * s, center.y - p.x * s + p.y * c);
  }
  return g;
}

double ShapeGeometry::Area() const {
  if (shape_class == ShapeClass::kCircle) return kPi * diameter * diameter / 4;
  double twice = 0;
  for (size_t i = 0; i < polygon.size(); ++i) {
    const cv::Point2d& a = polygon[i];
    const cv::Point2d& b = polygon[(i + 1) % polygon.size()];
    twice += a.x * b.y - b.x * a.y;
  }
  return std::fabs(twice) / 2;
}

std::array<double, 4> ShapeGeometry::Extent() const {
  if (shape_class == ShapeClass::kCircle) {
    const double r = diameter / 2;
    return {center.x - r, center.y - r, center.x + r, center.y + r};
  }
  std::array<double, 4> e = {1e300, 1e300, -1e300, -1e300};
  for (const cv::Point2d& p : polygon) {
    e[0] = std::min(e[0], p.x), e[1] = std::min(e[1], p.y);
    e[2] = std::max(e[2], p.x), e[3] = std::max(e[3], p.y);
  }
  return e;
}

std::array<double, 4> ShapeGeometry::ClippedExtent(int width, int height) const {
  const double w = width, h = height;
  if (shape_class == ShapeClass::kCircle) {
    // The disc meets the image iff the image's nearest point is inside it;
    // its extent in x is that of its widest chord within the image's rows.
    const double r = diameter / 2;
    const double nx = std::clamp(center.x, 0.0, w), ny = std::clamp(center.y, 0.0, h);
    const double dx = nx - center.x, dy = ny - center.y;
    if (dx * dx + dy * dy >= r * r) return {0, 0, 0, 0};
    const double half_x = std::sqrt(r * r - dy * dy), half_y = std::sqrt(r * r - dx * dx);
    return {std::max(0.0, center.x - half_x), std::max(0.0, center.y - half_y),
            std::min(w, center.x + half_x), std::min(h, center.y + half_y)};
  }
  const std::vector<cv::Point2d> clipped = ClipPolygon(polygon, w, h);
  if (clipped.empty()) return {0, 0, 0, 0};
  std::array<double, 4> e = {1e300, 1e300, -1e300, -1e300};
  for (const cv::Point2d& p : clipped) {
    e[0] = std::min(e[0], p.x), e[1] = std::min(e[1], p.y);
    e[2] = std::max(e[2], p.x), e[3] = std::max(e[3], p.y);
  }
  if (e[2] <= e[0] || e[3] <= e[1]) return {0, 0, 0, 0};
  return e;
}

bool ShapeGeometry::Contains(double x, double y) const {
  std::vector<double> xs;
  ScanlineIntervals(*this, y, &xs);
  for (size_t i = 0; i + 1 < xs.size(); i += 2) {
    if (x >= xs[i] && x < xs[i + 1]) return true;
  }
  return false;
}

ShapeRaster RasterizeShape(const ShapeGeometry& g, cv::Size image_size) {
  ShapeRaster raster;
  raster.rect = PixelRect(g.Extent(), image_size);
  if (raster.rect.empty()) return raster;
  const int cols = raster.rect.width * kSupersample, rows = raster.rect.height * kSupersample;
  raster.samples = cv::Mat::zeros(rows, cols, CV_8U);
  std::vector<double> xs;
  for (int r = 0; r < rows; ++r) {
    const double y = raster.rect.y + (r + 0.5) / kSupersample;
    ScanlineIntervals(g, y, &xs);
    uint8_t* row = raster.samples.ptr<uint8_t>(r);
    for (size_t i = 0; i + 1 < xs.size(); i += 2) {
      // Sample c is at x = rect.x + (c + 0.5) / S; inside when x in [left, right).
      const auto first_at_or_after = [&](double x) {
        const double c = std::ceil((x - raster.rect.x) * kSupersample - 0.5);
        return static_cast<int>(std::clamp(c, 0.0, static_cast<double>(cols)));
      };
      const int c0 = first_at_or_after(xs[i]), c1 = first_at_or_after(xs[i + 1]);
      if (c1 > c0) {
        std::fill(row + c0, row + c1, uint8_t{255});
        raster.count += c1 - c0;
      }
    }
  }
  return raster;
}

cv::Mat ShapeCoverage(const ShapeGeometry& geometry, cv::Size image_size) {
  cv::Mat coverage = cv::Mat::zeros(image_size, CV_32F);
  const ShapeRaster raster = RasterizeShape(geometry, image_size);
  if (!raster.rect.empty()) CoverageOfRect(raster).copyTo(coverage(raster.rect));
  return coverage;
}

ShapesImage GenerateShapesImage(int64_t index, const ShapesOptions& o) {
  ValidateShapesOptions(o);
  if (index < 0)
    throw std::invalid_argument("image index must be >= 0, got " + std::to_string(index));
  Rng rng(ImageSeed(o.seed, index));
  const int width = rng.Int(o.min_size, o.max_size);
  const int height = rng.Int(o.min_size, o.max_size);
  const cv::Size size(width, height);
  ShapesImage out;
  cv::Mat canvas = MakeBackground(size, rng, &out.background, &out.background_detail);

  std::vector<PlacedShape> placed;
  const int count = rng.Int(o.min_shapes, o.max_shapes);
  for (int s = 0; s < count; ++s) {
    const ShapeClass c = static_cast<ShapeClass>(rng.Int(0, kNumShapeClasses - 1));
    ShapeDraw draw{};
    ShapeGeometry geometry;
    ShapeRaster raster;
    bool ok = false;
    std::array<double, 4> offsets{};  // the shape's extent around its centre
    for (int attempt = 0; attempt < kPlacementAttempts && !ok; ++attempt) {
      // A new size and pose every 10 attempts: a large shape may not fit.
      if (attempt % 10 == 0) {
        draw = DrawShapeParameters(c, rng, o, size);
        offsets =
            MakeShapeGeometry(c, {0, 0}, draw.diameter, draw.rotation, draw.aspect, draw.ratio)
                .Extent();
      }
      cv::Point2d center;
      if (rng.Chance(kWhollyInsideProb) && offsets[2] - offsets[0] <= size.width &&
          offsets[3] - offsets[1] <= size.height) {
        center = {rng.Uniform(-offsets[0], size.width - offsets[2]),
                  rng.Uniform(-offsets[1], size.height - offsets[3])};
      } else {
        const double margin = 0.2 * draw.diameter;
        center = {rng.Uniform(-margin, size.width + margin),
                  rng.Uniform(-margin, size.height + margin)};
      }
      geometry =
          MakeShapeGeometry(c, center, draw.diameter, draw.rotation, draw.aspect, draw.ratio);
      raster = RasterizeShape(geometry, size);
      ok =
          raster.count > 0 &&
          static_cast<double>(raster.count) >= o.min_visible * geometry.Area() * kSamplesPerPixel &&
          CoverageAllows(placed, raster, o.max_covered);
    }
    if (!ok) {
      ++out.skipped;
      continue;
    }
    CommitCoverage(&placed, raster);
    const cv::Mat alpha = CoverageOfRect(raster);
    PlacedShape p;
    p.color = PickContrastingColor(canvas, raster.rect, alpha, rng);
    Blend(&canvas, raster.rect, alpha, p.color);
    p.geometry = std::move(geometry);
    p.covered = cv::Mat::zeros(raster.samples.size(), CV_8U);
    p.raster = std::move(raster);
    placed.push_back(std::move(p));
  }

  // Drawn in every case so that the stream does not depend on the outcome.
  const bool blur = rng.Chance(o.blur_prob);
  const double sigma = rng.Uniform(0.4, 1.1);
  const bool jpeg = rng.Chance(o.jpeg_prob);
  const int quality = rng.Int(o.jpeg_min_quality, o.jpeg_max_quality);
  if (blur) {
    cv::GaussianBlur(canvas, canvas, cv::Size(0, 0), sigma);
    out.blur_sigma = sigma;
  }
  out.jpeg_quality = jpeg ? quality : 0;
  canvas.convertTo(out.rgb, CV_8UC3);  // rounds and saturates

  for (const PlacedShape& p : placed) {
    ShapeAnnotation a;
    a.geometry = p.geometry;
    const std::array<double, 4> e = p.geometry.ClippedExtent(size.width, size.height);
    a.bbox_xywh = {e[0], e[1], e[2] - e[0], e[3] - e[1]};
    a.area = static_cast<double>(p.raster.count) / kSamplesPerPixel;
    a.visible_fraction = a.area / p.geometry.Area();
    a.covered_fraction = static_cast<double>(p.covered_count) / static_cast<double>(p.raster.count);
    for (int k = 0; k < 3; ++k) a.rgb[k] = cv::saturate_cast<uint8_t>(p.color[k]);
    out.shapes.push_back(std::move(a));
  }
  return out;
}

// ---------------------------------------------------------------------------
// Writing.

namespace {

struct WrittenImage {
  int64_t id = 0;
  std::string file_name;
  int width = 0, height = 0;
  std::vector<ShapeAnnotation> shapes;
  bool jpeg = false;
  int skipped = 0;
};

std::string FileName(int64_t id, bool jpeg) {
  char name[32];
  std::snprintf(name, sizeof(name), "%06lld.%s", static_cast<long long>(id), jpeg ? "jpg" : "png");
  return name;
}

void WriteBytes(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

WrittenImage WriteOneImage(const fs::path& image_dir, int64_t index, const ShapesOptions& options) {
  ShapesImage image = GenerateShapesImage(index, options);
  WrittenImage w;
  w.id = index + 1;
  w.jpeg = image.jpeg_quality > 0;
  w.file_name = FileName(w.id, w.jpeg);
  w.width = image.rgb.cols;
  w.height = image.rgb.rows;
  w.skipped = image.skipped;
  cv::Mat bgr;
  cv::cvtColor(image.rgb, bgr, cv::COLOR_RGB2BGR);
  std::vector<int> params;
  if (w.jpeg) {
    params = {cv::IMWRITE_JPEG_QUALITY,     image.jpeg_quality,
              cv::IMWRITE_JPEG_OPTIMIZE,    0,
              cv::IMWRITE_JPEG_PROGRESSIVE, 0};
  } else {
    params = {cv::IMWRITE_PNG_COMPRESSION, 1};
  }
  std::vector<uint8_t> bytes;
  if (!cv::imencode(w.jpeg ? ".jpg" : ".png", bgr, bytes, params)) {
    throw std::runtime_error("cannot encode image " + w.file_name);
  }
  WriteBytes(image_dir / w.file_name, bytes);
  w.shapes = std::move(image.shapes);
  return w;
}

std::string AnnotationsJson(const std::vector<WrittenImage>& images, const ShapesOptions& o) {
  using nlohmann::json;
  json info = {{"description", "LP-DETR synthetic shapes"},
               {"generator", "lpdetr-train make-shapes"},
               {"seed", o.seed},
               {"images", o.num_images},
               {"min_size", o.min_size},
               {"max_size", o.max_size},
               {"jpeg_prob", o.jpeg_prob}};
  std::string text = "{\n\"info\": " + info.dump() + ",\n\"images\": [";
  for (size_t i = 0; i < images.size(); ++i) {
    const WrittenImage& w = images[i];
    const json entry = {
        {"id", w.id}, {"file_name", w.file_name}, {"width", w.width}, {"height", w.height}};
    text += (i == 0 ? "\n" : ",\n") + entry.dump();
  }
  text += "\n],\n\"annotations\": [";
  int64_t annotation_id = 0;
  for (const WrittenImage& w : images) {
    for (const ShapeAnnotation& a : w.shapes) {
      const double x1 = Round(a.bbox_xywh[0], 1e-4), y1 = Round(a.bbox_xywh[1], 1e-4);
      const double x2 = Round(a.bbox_xywh[0] + a.bbox_xywh[2], 1e-4);
      const double y2 = Round(a.bbox_xywh[1] + a.bbox_xywh[3], 1e-4);
      const json entry = {{"id", ++annotation_id},
                          {"image_id", w.id},
                          {"category_id", a.category_id()},
                          {"bbox", {x1, y1, Round(x2 - x1, 1e-4), Round(y2 - y1, 1e-4)}},
                          {"area", Round(a.area, 1e-2)},
                          {"iscrowd", 0}};
      text += (annotation_id == 1 ? "\n" : ",\n") + entry.dump();
    }
  }
  text += "\n],\n\"categories\": [";
  for (int c = 0; c < kNumShapeClasses; ++c) {
    const ShapeClass sc = static_cast<ShapeClass>(c);
    const json entry = {
        {"id", ShapeCategoryId(sc)}, {"name", ShapeClassName(sc)}, {"supercategory", "shape"}};
    text += (c == 0 ? "\n" : ",\n") + entry.dump();
  }
  text += "\n]\n}\n";
  return text;
}

void PrepareOutputDir(const fs::path& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec))
      throw std::runtime_error(dir.string() + " exists and is not a directory");
    if (!fs::is_empty(dir, ec))
      throw std::runtime_error("output directory " + dir.string() + " is not empty");
  }
  fs::create_directories(dir / "images", ec);
  if (ec)
    throw std::runtime_error("cannot create " + (dir / "images").string() + ": " + ec.message());
}

}  // namespace

ShapesDatasetSummary WriteShapesDataset(const std::string& dir, const ShapesOptions& options,
                                        const std::function<void(int64_t, int64_t)>& on_progress) {
  ValidateShapesOptions(options);
  const fs::path root(dir);
  PrepareOutputDir(root);
  const fs::path image_dir = root / "images";
  const int64_t total = options.num_images;
  int workers = options.threads > 0
                    ? options.threads
                    : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers = static_cast<int>(std::min<int64_t>(workers, total));

  std::vector<WrittenImage> images(static_cast<size_t>(total));
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::exception_ptr error;
  int64_t done = 0;
  const auto work = [&] {
    for (int64_t i = next++; i < total && !failed; i = next++) {
      try {
        images[static_cast<size_t>(i)] = WriteOneImage(image_dir, i, options);
        std::lock_guard<std::mutex> lock(mutex);
        ++done;
        if (on_progress) on_progress(done, total);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
        failed = true;
        return;
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 1; t < workers; ++t) threads.emplace_back(work);
  work();
  for (std::thread& t : threads) t.join();
  if (error) std::rethrow_exception(error);

  const fs::path final_path = root / "annotations.json", temp_path = root / "annotations.json.tmp";
  const std::string text = AnnotationsJson(images, options);
  WriteBytes(temp_path, std::vector<uint8_t>(text.begin(), text.end()));
  std::error_code ec;
  fs::rename(temp_path, final_path, ec);
  if (ec) throw std::runtime_error("cannot rename " + temp_path.string() + ": " + ec.message());

  ShapesDatasetSummary summary;
  summary.images = total;
  for (const WrittenImage& w : images) {
    summary.annotations += static_cast<int64_t>(w.shapes.size());
    summary.jpeg_images += w.jpeg;
    summary.skipped_shapes += w.skipped;
  }
  return summary;
}

}  // namespace lpdetr::train

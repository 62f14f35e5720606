// Loss curve and alpha plots drawn with OpenCV; see plots.h.
#include "train/plots.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <stdexcept>

#include <ATen/ATen.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

namespace lpdetr::train {

namespace {

using Series = std::vector<std::pair<int64_t, double>>;

const cv::Scalar kWhite(255, 255, 255);
const cv::Scalar kTextColor(50, 50, 50);
const cv::Scalar kFrameColor(60, 60, 60);
const cv::Scalar kGridColor(230, 230, 230);
const cv::Scalar kNoDataColor(150, 150, 150);
constexpr int kFont = cv::FONT_HERSHEY_SIMPLEX;
constexpr double kTickScale = 0.45;
constexpr double kLabelScale = 0.5;
constexpr double kTitleScale = 0.65;
// Points are drawn with 4 fractional bits for smooth anti-aliased curves.
constexpr int kShift = 4;
constexpr double kSubpixel = 1 << kShift;

cv::Scalar ToScalar(PlotColor color) { return cv::Scalar(color.b, color.g, color.r); }

// An axis range with its tick positions.
struct Axis {
  double lo = 0;
  double hi = 1;
  double tick_step = 1;
  std::vector<double> ticks;
};

// 1, 2 or 5 times a power of ten, the smallest at least `raw`.
double NiceStep(double raw) {
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double residual = raw / magnitude;
  if (residual <= 1) return magnitude;
  if (residual <= 2) return 2 * magnitude;
  if (residual <= 5) return 5 * magnitude;
  return 10 * magnitude;
}

// An axis over [lo, hi] (lo < hi) with about `target_ticks` ticks; `integer`
// keeps the tick step at least 1; `expand` widens the range to whole ticks.
Axis MakeAxis(double lo, double hi, int target_ticks, bool integer, bool expand) {
  Axis axis;
  axis.tick_step = NiceStep((hi - lo) / target_ticks);
  if (integer) axis.tick_step = std::max(axis.tick_step, 1.0);
  if (expand) {
    lo = std::floor(lo / axis.tick_step) * axis.tick_step;
    hi = std::ceil(hi / axis.tick_step) * axis.tick_step;
  }
  axis.lo = lo;
  axis.hi = hi;
  const double first = std::ceil(lo / axis.tick_step - 1e-9);
  const double last = std::floor(hi / axis.tick_step + 1e-9);
  for (double k = first; k <= last; ++k) axis.ticks.push_back(k * axis.tick_step);
  return axis;
}

// A tick label with as many decimals as the tick step needs.
std::string FormatTick(double value, double step) {
  char buffer[32];
  if (std::abs(value) >= 1e6) {
    std::snprintf(buffer, sizeof(buffer), "%.3g", value);
  } else {
    const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step) + 1e-9)));
    std::snprintf(buffer, sizeof(buffer), "%.*f", decimals, std::abs(value) < step * 1e-6 ? 0.0 : value);
  }
  return buffer;
}

enum class Anchor { kLeft, kCenter, kRight };

// Draws `text` with its baseline at `y`, horizontally anchored at `x`.
void DrawText(cv::Mat& image, const std::string& text, int x, int y, Anchor anchor, double scale,
              const cv::Scalar& color, int thickness = 1) {
  int baseline = 0;
  const cv::Size size = cv::getTextSize(text, kFont, scale, thickness, &baseline);
  if (anchor == Anchor::kCenter) x -= size.width / 2;
  if (anchor == Anchor::kRight) x -= size.width;
  cv::putText(image, text, cv::Point(x, y), kFont, scale, color, thickness, cv::LINE_AA);
}

// Draws `text` turned 90 degrees counter-clockwise, centred on (cx, cy).
void DrawVerticalText(cv::Mat& image, const std::string& text, int cx, int cy,
                      const cv::Scalar& color) {
  int baseline = 0;
  const cv::Size size = cv::getTextSize(text, kFont, kLabelScale, 1, &baseline);
  cv::Mat strip(size.height + baseline + 4, size.width + 4, image.type(), kWhite);
  cv::putText(strip, text, cv::Point(2, size.height + 2), kFont, kLabelScale, color, 1,
              cv::LINE_AA);
  cv::Mat turned;
  cv::rotate(strip, turned, cv::ROTATE_90_COUNTERCLOCKWISE);
  const cv::Rect target(cx - turned.cols / 2, cy - turned.rows / 2, turned.cols, turned.rows);
  const cv::Rect clipped = target & cv::Rect(0, 0, image.cols, image.rows);
  if (clipped.area() == 0) return;
  turned(clipped - target.tl()).copyTo(image(clipped));
}

// Maps data coordinates to pixels (as doubles) inside a plot area.
struct Mapping {
  cv::Rect area;
  Axis x;
  Axis y;

  double PixelX(double value) const {
    return area.x + (value - x.lo) / (x.hi - x.lo) * area.width;
  }
  double PixelY(double value) const {
    return area.y + (y.hi - value) / (y.hi - y.lo) * area.height;
  }
  cv::Point Point(double value_x, double value_y) const {
    return cv::Point(static_cast<int>(std::lround(PixelX(value_x) * kSubpixel)),
                     static_cast<int>(std::lround(PixelY(value_y) * kSubpixel)));
  }
};

// Grid lines at the x and (left) y ticks, and the tick labels.
void DrawGridAndTicks(cv::Mat& image, const Mapping& map,
                      const std::vector<std::string>& x_labels) {
  const cv::Rect& area = map.area;
  for (size_t i = 0; i < map.x.ticks.size(); ++i) {
    const int px = static_cast<int>(std::lround(map.PixelX(map.x.ticks[i])));
    cv::line(image, {px, area.y}, {px, area.y + area.height}, kGridColor, 1);
    cv::line(image, {px, area.y + area.height}, {px, area.y + area.height + 5}, kFrameColor, 1);
    DrawText(image, x_labels[i], px, area.y + area.height + 20, Anchor::kCenter, kTickScale,
             kTextColor);
  }
  for (double tick : map.y.ticks) {
    const int py = static_cast<int>(std::lround(map.PixelY(tick)));
    cv::line(image, {area.x, py}, {area.x + area.width, py}, kGridColor, 1);
    cv::line(image, {area.x - 5, py}, {area.x, py}, kFrameColor, 1);
    DrawText(image, FormatTick(tick, map.y.tick_step), area.x - 8, py + 5, Anchor::kRight,
             kTickScale, kTextColor);
  }
}

void DrawFrame(cv::Mat& image, const cv::Rect& area) {
  cv::rectangle(image, area, kFrameColor, 1);
}

void DrawTitle(cv::Mat& image, const std::string& title) {
  DrawText(image, title, image.cols / 2, 28, Anchor::kCenter, kTitleScale, kTextColor, 1);
}

// The x axis label below the tick labels, the y label left of the tick labels.
void DrawAxisLabels(cv::Mat& image, const cv::Rect& area, const std::string& x_label,
                    const std::string& y_label) {
  DrawText(image, x_label, area.x + area.width / 2, area.y + area.height + 42, Anchor::kCenter,
           kLabelScale, kTextColor);
  DrawVerticalText(image, y_label, 16, area.y + area.height / 2, kTextColor);
}

enum class LegendSample { kThinLine, kBoldLine, kLineWithMarker, kMarker };

struct LegendEntry {
  std::string label;
  PlotColor color;
  LegendSample sample;
};

// One row of entries centred under the plot area, in the bottom margin.
void DrawLegend(cv::Mat& image, const cv::Rect& area, const std::vector<LegendEntry>& entries) {
  constexpr int kSampleWidth = 28;
  constexpr int kSampleGap = 6;
  constexpr int kEntryGap = 24;
  int total = 0;
  std::vector<int> text_widths;
  for (const LegendEntry& entry : entries) {
    int baseline = 0;
    text_widths.push_back(cv::getTextSize(entry.label, kFont, kTickScale, 1, &baseline).width);
    total += kSampleWidth + kSampleGap + text_widths.back();
  }
  total += kEntryGap * (static_cast<int>(entries.size()) - 1);
  int x = area.x + area.width / 2 - total / 2;
  const int y = area.y + area.height + 68;
  for (size_t i = 0; i < entries.size(); ++i) {
    const cv::Scalar color = ToScalar(entries[i].color);
    const cv::Point left(x, y), right(x + kSampleWidth, y), middle(x + kSampleWidth / 2, y);
    switch (entries[i].sample) {
      case LegendSample::kThinLine:
        cv::line(image, left, right, color, 1, cv::LINE_AA);
        break;
      case LegendSample::kBoldLine:
        cv::line(image, left, right, color, 3, cv::LINE_AA);
        break;
      case LegendSample::kLineWithMarker:
        cv::line(image, left, right, color, 2, cv::LINE_AA);
        cv::circle(image, middle, 5, color, cv::FILLED, cv::LINE_AA);
        break;
      case LegendSample::kMarker:
        cv::circle(image, middle, 5, color, cv::FILLED, cv::LINE_AA);
        break;
    }
    DrawText(image, entries[i].label, x + kSampleWidth + kSampleGap, y + 5, Anchor::kLeft,
             kTickScale, kTextColor);
    x += kSampleWidth + kSampleGap + text_widths[i] + kEntryGap;
  }
}

// Encodes `image` as PNG into `path + ".tmp"` and renames it onto `path`.
void WritePng(const std::string& path, const cv::Mat& image) {
  std::vector<uchar> png;
  if (!cv::imencode(".png", image, png)) {
    throw std::runtime_error("cannot encode plot '" + path + "' as PNG");
  }
  const std::string temp = path + ".tmp";
  FILE* file = std::fopen(temp.c_str(), "wb");
  if (file == nullptr) {
    throw std::runtime_error("cannot write plot '" + path + "': " + std::strerror(errno));
  }
  const bool written = std::fwrite(png.data(), 1, png.size(), file) == png.size();
  const int write_errno = errno;
  const bool closed = std::fclose(file) == 0;
  if (!written || !closed) {
    const int error = written ? errno : write_errno;
    std::remove(temp.c_str());
    throw std::runtime_error("cannot write plot '" + path + "': " + std::strerror(error));
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(temp.c_str());
    throw std::runtime_error("cannot write plot '" + path + "': " + std::strerror(error));
  }
}

// The points of `series` accepted by `keep`, in step order.
template <typename Keep>
Series Filtered(const Series& series, Keep keep) {
  Series kept;
  for (const auto& point : series) {
    if (keep(point.second)) kept.push_back(point);
  }
  std::stable_sort(kept.begin(), kept.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  return kept;
}

// Centred moving average with half-width `half`; near the ends the window
// shrinks on both sides so it stays centred.
std::vector<double> MovingAverage(const Series& series, size_t half) {
  const size_t n = series.size();
  std::vector<double> prefix(n + 1, 0.0);
  for (size_t i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + series[i].second;
  std::vector<double> average(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t reach = std::min({half, i, n - 1 - i});
    const size_t begin = i - reach;
    const size_t end = i + reach + 1;
    average[i] = (prefix[end] - prefix[begin]) / static_cast<double>(end - begin);
  }
  return average;
}

// Draws `points` (subpixel) as a polyline, or a dot when there is one.
void DrawCurve(cv::Mat& image, const std::vector<cv::Point>& points, const cv::Scalar& color,
               int thickness) {
  if (points.size() == 1) {
    cv::circle(image, points[0], std::max(2, thickness) * static_cast<int>(kSubpixel), color,
               cv::FILLED, cv::LINE_AA, kShift);
  } else if (points.size() > 1) {
    cv::polylines(image, points, false, color, thickness, cv::LINE_AA, kShift);
  }
}

void DrawMarkers(cv::Mat& image, const std::vector<cv::Point>& points, const cv::Scalar& color) {
  for (const cv::Point& point : points) {
    cv::circle(image, point, 5 * static_cast<int>(kSubpixel), color, cv::FILLED, cv::LINE_AA,
               kShift);
  }
}

// The y axis of the loss: the finite values' range, widened to whole ticks.
Axis LossAxis(const Series& losses) {
  double lo = losses.front().second, hi = lo;
  for (const auto& point : losses) {
    lo = std::min(lo, point.second);
    hi = std::max(hi, point.second);
  }
  if (hi - lo <= std::abs(hi) * 1e-12) {
    const double pad = hi == 0 ? 1.0 : std::abs(hi) * 0.1;
    lo -= pad;
    hi += pad;
  } else {
    // A little room so the extremes do not lie on the frame (not below 0
    // for a non-negative loss).
    const double pad = (hi - lo) * 0.03;
    lo = lo >= 0 ? std::max(0.0, lo - pad) : lo - pad;
    hi += pad;
  }
  return MakeAxis(lo, hi, 6, false, true);
}

// The right-hand AP axis: 0 to the largest AP, widened to a whole tick.
Axis ApAxis(const Series& ap) {
  double hi = 0;
  for (const auto& point : ap) hi = std::max(hi, point.second);
  return MakeAxis(0, hi > 0 ? hi : 1.0, 5, false, true);
}

// The x axis over the steps of both series (a single step gets +-1).
Axis StepAxis(const Series& losses, const Series& ap) {
  bool any = false;
  double lo = 0, hi = 0;
  for (const Series* series : {&losses, &ap}) {
    for (const auto& point : *series) {
      const double step = static_cast<double>(point.first);
      lo = any ? std::min(lo, step) : step;
      hi = any ? std::max(hi, step) : step;
      any = true;
    }
  }
  if (!any) return Axis{};  // [0, 1] without ticks
  if (hi == lo) {
    lo -= 1;
    hi += 1;
  }
  return MakeAxis(lo, hi, 8, true, false);
}

std::vector<std::string> TickLabels(const Axis& axis) {
  std::vector<std::string> labels;
  for (double tick : axis.ticks) labels.push_back(FormatTick(tick, axis.tick_step));
  return labels;
}

// The right-hand AP axis: ticks and labels in the AP colour, its axis label.
void DrawApAxis(cv::Mat& image, const cv::Rect& area, const Axis& axis) {
  const cv::Scalar color = ToScalar(kApColor);
  const int right = area.x + area.width;
  for (double tick : axis.ticks) {
    const int py = static_cast<int>(
        std::lround(area.y + (axis.hi - tick) / (axis.hi - axis.lo) * area.height));
    cv::line(image, {right, py}, {right + 5, py}, color, 1);
    DrawText(image, FormatTick(tick, axis.tick_step), right + 8, py + 5, Anchor::kLeft,
             kTickScale, color);
  }
  DrawVerticalText(image, "AP", image.cols - 16, area.y + area.height / 2, color);
}

// The alpha tensor as doubles [L, 3] on the CPU, or std::invalid_argument.
at::Tensor CheckedAlpha(const at::Tensor& alpha) {
  if (!alpha.defined()) {
    throw std::invalid_argument("WriteAlphaPng: alpha is an undefined tensor, expected [L, 3]");
  }
  if (!at::isFloatingType(alpha.scalar_type()) || alpha.dim() != 2 || alpha.size(0) < 1 ||
      alpha.size(1) != 3) {
    std::ostringstream message;
    message << "WriteAlphaPng: alpha must be a floating [L >= 1, 3] tensor, got "
            << alpha.scalar_type() << " " << alpha.sizes();
    throw std::invalid_argument(message.str());
  }
  return alpha.detach().to(at::kCPU, at::kDouble).contiguous();
}

}  // namespace

void WriteLossCurvePng(const std::string& path, const Series& step_losses, const Series& eval_ap) {
  const Series losses = Filtered(step_losses, [](double v) { return std::isfinite(v); });
  const Series ap = Filtered(eval_ap, [](double v) { return std::isfinite(v) && v >= 0; });
  const bool with_ap = !eval_ap.empty();

  cv::Mat image(kLossCurveHeight, kLossCurveWidth, CV_8UC3, kWhite);
  const int right_margin = with_ap ? 75 : 30;
  const cv::Rect area(80, 45, kLossCurveWidth - 80 - right_margin, kLossCurveHeight - 45 - 95);

  // Without a loss the left axis has no ticks (Axis{} has none).
  const Mapping map{area, StepAxis(losses, ap), losses.empty() ? Axis{} : LossAxis(losses)};
  DrawGridAndTicks(image, map, TickLabels(map.x));

  std::vector<LegendEntry> legend;
  if (!losses.empty()) {
    std::vector<cv::Point> raw;
    for (const auto& [step, loss] : losses) raw.push_back(map.Point(static_cast<double>(step), loss));
    DrawCurve(image, raw, ToScalar(kRawLossColor), 1);

    const size_t half = losses.size() / 40;
    const std::vector<double> average = MovingAverage(losses, half);
    std::vector<cv::Point> smooth;
    for (size_t i = 0; i < losses.size(); ++i) {
      smooth.push_back(map.Point(static_cast<double>(losses[i].first), average[i]));
    }
    DrawCurve(image, smooth, ToScalar(kAverageLossColor), 3);
    legend.push_back({"loss", kRawLossColor, LegendSample::kThinLine});
    const size_t window = 2 * half + 1;
    legend.push_back({"moving average (" + std::to_string(window) +
                          (window == 1 ? " point)" : " points)"),
                      kAverageLossColor, LegendSample::kBoldLine});
  } else {
    DrawText(image, "no data", area.x + area.width / 2, area.y + area.height / 2 + 10,
             Anchor::kCenter, 1.0, kNoDataColor, 2);
  }

  if (with_ap) {
    Mapping ap_map{area, map.x, ApAxis(ap)};
    std::vector<cv::Point> points;
    for (const auto& [step, value] : ap) points.push_back(ap_map.Point(static_cast<double>(step), value));
    if (points.size() > 1) {
      cv::polylines(image, points, false, ToScalar(kApColor), 1, cv::LINE_AA, kShift);
    }
    DrawMarkers(image, points, ToScalar(kApColor));
    DrawApAxis(image, area, ap_map.y);
    legend.push_back({"eval AP", kApColor, LegendSample::kLineWithMarker});
  }

  DrawFrame(image, area);
  DrawTitle(image, with_ap ? "Training loss and eval AP" : "Training loss");
  DrawAxisLabels(image, area, "step", "loss");
  if (!legend.empty()) DrawLegend(image, area, legend);
  WritePng(path, image);
}

void WriteAlphaPng(const std::string& path, const at::Tensor& alpha) {
  const at::Tensor values = CheckedAlpha(alpha);
  const int64_t layers = values.size(0);
  const double* data = values.data_ptr<double>();

  cv::Mat image(kAlphaPlotHeight, kAlphaPlotWidth, CV_8UC3, kWhite);
  const cv::Rect area(65, 45, kAlphaPlotWidth - 65 - 25, kAlphaPlotHeight - 45 - 95);

  // Layers 1..L at integer positions, half a layer of room at each end.
  Axis x_axis;
  x_axis.lo = 0.5;
  x_axis.hi = static_cast<double>(layers) + 0.5;
  x_axis.tick_step = std::ceil(static_cast<double>(layers) / 12.0);
  for (double layer = 1; layer <= static_cast<double>(layers); layer += x_axis.tick_step) {
    x_axis.ticks.push_back(layer);
  }
  const Mapping map{area, x_axis, MakeAxis(0, 1, 5, false, true)};
  std::vector<std::string> x_labels;
  for (double tick : x_axis.ticks) x_labels.push_back(std::to_string(static_cast<int64_t>(tick)));
  DrawGridAndTicks(image, map, x_labels);

  const char* const kNames[3] = {"local", "medium", "global"};
  std::vector<LegendEntry> legend;
  for (int column = 0; column < 3; ++column) {
    const cv::Scalar color = ToScalar(kAlphaColors[column]);
    std::vector<cv::Point> run;  // consecutive finite values, joined by a line
    std::vector<cv::Point> markers;
    for (int64_t layer = 0; layer <= layers; ++layer) {
      const double value = layer < layers ? data[layer * 3 + column] : NAN;
      if (std::isfinite(value)) {
        run.push_back(map.Point(static_cast<double>(layer + 1), std::clamp(value, 0.0, 1.0)));
        markers.push_back(run.back());
        continue;
      }
      if (run.size() > 1) cv::polylines(image, run, false, color, 2, cv::LINE_AA, kShift);
      run.clear();
    }
    DrawMarkers(image, markers, color);
    legend.push_back({kNames[column], kAlphaColors[column], LegendSample::kLineWithMarker});
  }

  DrawFrame(image, area);
  DrawTitle(image, "Relation weights per decoder layer");
  DrawAxisLabels(image, area, "decoder layer", "alpha");
  DrawLegend(image, area, legend);
  WritePng(path, image);
}

}  // namespace lpdetr::train

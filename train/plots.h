// PNG plots of a training run, drawn with OpenCV: the loss curve
// (RUN_DIR/loss_curve.png) and the relation weights alpha per decoder layer
// (RUN_DIR/alpha.png).
//
// Layout shared by both plots: white background, the title above a framed
// plot area with light grid lines, tick labels on the axes, axis labels, and
// the legend in the bottom margin below the x axis label (never inside the
// plot area). The series colours are the constants below (BGR).
//
// Files are always PNG whatever the extension, written to `path + ".tmp"`
// and renamed onto `path`, so a reader never sees a half-written image.
// Writing failures throw std::runtime_error naming the path.
//
// Threading: the functions share no state; they may run concurrently on
// distinct paths.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace lpdetr::train {

struct PlotColor {
  uint8_t b, g, r;
};

// Loss curve: raw loss (thin), its moving average (bold), eval AP (markers).
inline constexpr PlotColor kRawLossColor = {235, 200, 170};
inline constexpr PlotColor kAverageLossColor = {180, 119, 31};
inline constexpr PlotColor kApColor = {40, 39, 214};
// Alpha plot: local, medium, global relation.
inline constexpr PlotColor kAlphaColors[3] = {{180, 119, 31}, {14, 127, 255}, {44, 160, 44}};

inline constexpr int kLossCurveWidth = 960;
inline constexpr int kLossCurveHeight = 540;
inline constexpr int kAlphaPlotWidth = 640;
inline constexpr int kAlphaPlotHeight = 480;

// Training loss against step: the raw values as a thin light line and their
// centred moving average (window about 1/20 of the points, odd, at least 1,
// narrowed symmetrically at the ends)
// as a bold line, loss axis on the left. With `eval_ap`, AP against step as
// markers joined by a thin line on a right-hand axis from 0. The x axis
// spans the steps of both series. Points are drawn in step order; points
// with a non-finite value, and AP values below 0 (COCO's -1 for
// "undefined"), are skipped; without any finite loss the plot area says
// "no data" (AP is still drawn when given). Image kLossCurveWidth x
// kLossCurveHeight.
void WriteLossCurvePng(const std::string& path,
                       const std::vector<std::pair<int64_t, double>>& step_losses,
                       const std::vector<std::pair<int64_t, double>>& eval_ap = {});

// The relation weights per decoder layer: `alpha` [L, 3] (row = decoder layer,
// columns = local / medium / global weight; any floating dtype and device)
// as three coloured lines with markers against layer 1..L, y axis 0..1, with
// a legend "local / medium / global". Values outside [0, 1] are drawn at the
// nearest edge; non-finite values are skipped. Throws std::invalid_argument
// when `alpha` is not a defined floating [L >= 1, 3] tensor. Image
// kAlphaPlotWidth x kAlphaPlotHeight.
void WriteAlphaPng(const std::string& path, const at::Tensor& alpha);

}  // namespace lpdetr::train

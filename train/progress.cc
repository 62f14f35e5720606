// Training progress events: JSON form, console bar / JSON lines, jsonl file;
// see progress.h.
#include "train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <stdexcept>

namespace lpdetr::train {

namespace {

using nlohmann::json;

// Longest bar line, so that it fits a 100-column terminal without wrapping.
constexpr size_t kMaxBarLine = 99;
constexpr int kMaxBarWidth = 30;
constexpr int kMinBarWidth = 5;

json NumberOrNull(double value) { return std::isfinite(value) ? json(value) : json(nullptr); }

json NamedValues(const std::vector<std::pair<std::string, double>>& values) {
  json object = json::object();
  for (const auto& [name, value] : values) object[name] = NumberOrNull(value);
  return object;
}

std::string Printf(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), format, value);
  return buffer;
}

// "epoch E step S" or "epoch E step S/TOTAL".
std::string EpochStep(const ProgressEvent& event) {
  std::string text = "epoch " + std::to_string(event.epoch) + " step " + std::to_string(event.step);
  if (event.total_steps > 0) text += "/" + std::to_string(event.total_steps);
  return text;
}

// "[#####.....]" with `width` cells, filled by step / total_steps.
std::string Bar(const ProgressEvent& event, int width) {
  const double fraction =
      std::clamp(static_cast<double>(event.step) / static_cast<double>(event.total_steps), 0.0, 1.0);
  const int filled = static_cast<int>(std::floor(fraction * width));
  return "[" + std::string(filled, '#') + std::string(width - filled, '.') + "]";
}

// The bar line of a step event (without '\r'), at most kMaxBarLine long.
std::string BarLine(const ProgressEvent& event) {
  const std::string head = EpochStep(event);
  std::string tail;
  if (event.loss) tail += " loss " + Printf("%.4g", *event.loss);
  if (event.lr) tail += " lr " + Printf("%.1e", *event.lr);
  if (event.images_per_s) tail += " " + Printf("%.1f", *event.images_per_s) + " img/s";
  if (event.eta_s) tail += " ETA " + FormatDuration(*event.eta_s);

  std::string line = head;
  if (event.total_steps > 0) {
    // Room left for the bar: a space before it and its two brackets.
    const int room = static_cast<int>(kMaxBarLine) - static_cast<int>(head.size() + tail.size()) - 3;
    const int width = std::min(room, kMaxBarWidth);
    if (width >= kMinBarWidth) line += " " + Bar(event, width);
  }
  line += tail;
  if (line.size() > kMaxBarLine) line.resize(kMaxBarLine);
  return line;
}

// The full line of a non-step event (without newline).
std::string FullLine(const ProgressEvent& event) {
  std::string line = "[" + event.event + "] " + EpochStep(event);
  if (event.loss) line += " loss " + Printf("%.4g", *event.loss);
  if (event.lr) line += " lr " + Printf("%.1e", *event.lr);
  for (const auto& [name, value] : event.metrics) line += " " + name + " " + Printf("%.4f", value);
  if (!event.message.empty()) line += ": " + event.message;
  return line;
}

// One compact JSON line; invalid UTF-8 in names or the message is replaced
// rather than thrown on.
std::string JsonLine(const ProgressEvent& event) {
  return ProgressEventJson(event).dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

}  // namespace

json ProgressEventJson(const ProgressEvent& event) {
  json object = {
      {"event", event.event},
      {"epoch", event.epoch},
      {"step", event.step},
      {"total_steps", event.total_steps},
  };
  if (event.loss) object["loss"] = NumberOrNull(*event.loss);
  if (!event.losses.empty()) object["losses"] = NamedValues(event.losses);
  if (event.lr) object["lr"] = NumberOrNull(*event.lr);
  if (event.images_per_s) object["images_per_s"] = NumberOrNull(*event.images_per_s);
  if (event.eta_s) object["eta_s"] = NumberOrNull(*event.eta_s);
  if (!event.metrics.empty()) object["metrics"] = NamedValues(event.metrics);
  if (!event.message.empty()) object["message"] = event.message;
  return object;
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0 || seconds > 1e9) return "-:--:--";
  const long long total = std::llround(seconds);
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%lld:%02lld:%02lld", total / 3600, (total / 60) % 60,
                total % 60);
  return buffer;
}

std::unique_ptr<ProgressReporter> ProgressReporter::Create(const Options& options) {
  FILE* file = nullptr;
  if (!options.jsonl_path.empty()) {
    file = std::fopen(options.jsonl_path.c_str(), "a");
    if (file == nullptr) {
      throw std::runtime_error("ProgressReporter: cannot open progress file '" +
                               options.jsonl_path + "': " + std::strerror(errno));
    }
  }
  Mode mode = options.console == nullptr ? Mode::kQuiet : options.mode;
  if (mode == Mode::kAuto) mode = isatty(fileno(options.console)) ? Mode::kBar : Mode::kJson;
  return std::unique_ptr<ProgressReporter>(
      new ProgressReporter(options.console, mode, options.jsonl_path, file));
}

ProgressReporter::ProgressReporter(FILE* console, Mode mode, std::string jsonl_path, FILE* file)
    : console_(console), mode_(mode), jsonl_path_(std::move(jsonl_path)), file_(file) {}

ProgressReporter::~ProgressReporter() {
  if (bar_active_) {
    std::fputc('\n', console_);
    std::fflush(console_);
  }
  if (file_ != nullptr) std::fclose(file_);
}

void ProgressReporter::Report(const ProgressEvent& event) {
  const std::string json_line = JsonLine(event);
  std::lock_guard<std::mutex> lock(mu_);
  switch (mode_) {
    case Mode::kBar:
      if (event.event == "step") {
        WriteBar(event);
      } else {
        WriteFullLine(event);
      }
      break;
    case Mode::kJson:
      std::fputs(json_line.c_str(), console_);
      std::fflush(console_);
      break;
    case Mode::kAuto:  // resolved in Create
    case Mode::kQuiet:
      break;
  }
  if (file_ != nullptr) {
    const bool written = std::fputs(json_line.c_str(), file_) >= 0 && std::fflush(file_) == 0;
    if (!written) {
      throw std::runtime_error("ProgressReporter: cannot write progress file '" + jsonl_path_ +
                               "': " + std::strerror(errno));
    }
  }
}

void ProgressReporter::WriteBar(const ProgressEvent& event) {
  std::string line = BarLine(event);
  const size_t length = line.size();
  // Blank out what is left of a longer previous bar.
  if (bar_active_ && bar_length_ > length) line.append(bar_length_ - length, ' ');
  std::fputc('\r', console_);
  std::fputs(line.c_str(), console_);
  std::fflush(console_);
  bar_active_ = true;
  bar_length_ = length;
}

void ProgressReporter::WriteFullLine(const ProgressEvent& event) {
  if (bar_active_) std::fputc('\n', console_);
  bar_active_ = false;
  bar_length_ = 0;
  std::fputs((FullLine(event) + "\n").c_str(), console_);
  std::fflush(console_);
}

}  // namespace lpdetr::train

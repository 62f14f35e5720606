// Training progress reporting: the events the training loop emits, their JSON
// form, and a reporter that shows them on the console and appends them to
// RUN_DIR/progress.jsonl.
//
// JSON form (ProgressEventJson), one object per event:
//   {"event", "epoch", "step", "total_steps", "loss", "losses": {name: value},
//    "lr", "images_per_s", "eta_s", "metrics": {name: value}, "message"}
// "event", "epoch", "step" and "total_steps" are always present; "loss",
// "lr", "images_per_s" and "eta_s" only when the optional is set, "losses"
// and "metrics" only when non-empty, "message" only when non-empty.
// Non-finite numbers (NaN, +-Inf: a diverged loss is what an "error" event
// reports) are written as JSON null, so every line stays valid JSON. A name
// repeated in `losses` or `metrics` keeps its last value.
//
// Console modes (ProgressReporter::Options::mode):
//   kBar    "step" events redraw one line with '\r':
//             epoch E step S/TOTAL [#####.....] loss 1.234 lr 1.0e-04 12.3 img/s ETA 0:01:23
//           (at most 99 characters, so it fits a 100-column terminal; fields
//           that are not set are left out, and the bar when total_steps <= 0).
//           Every other event ends the bar line and prints one full line:
//             [eval] epoch E step S/TOTAL loss 1.234 AP 0.4321 AP50 0.6012: message
//   kJson   one JSON object per line (the same text as the file).
//   kQuiet  nothing on the console.
//   kAuto   kBar when the console is a terminal (isatty), kJson otherwise.
// The jsonl file, when a path is given, gets every event as a JSON line in
// every mode. It is opened in append mode, so a resumed run continues it.
// Console and file are flushed after every event.
//
// Threading: Report may be called from many threads at once; one mutex
// serialises the console and file writes, so lines never interleave.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace lpdetr::train {

// One progress event. `event` is "start", "step", "eval", "checkpoint",
// "done" or "error" (other names pass through unchanged).
struct ProgressEvent {
  std::string event;
  int64_t epoch = 0;
  int64_t step = 0;
  int64_t total_steps = 0;
  std::optional<double> loss;
  std::vector<std::pair<std::string, double>> losses;  // loss terms by name
  std::optional<double> lr;
  std::optional<double> images_per_s;
  std::optional<double> eta_s;
  std::vector<std::pair<std::string, double>> metrics;  // e.g. {"AP", 0.43}
  std::string message;
};

// The JSON object of `event` (keys and null rule in the file comment).
nlohmann::json ProgressEventJson(const ProgressEvent& event);

// `seconds` as h:mm:ss rounded to the nearest second (hours unbounded, e.g.
// "0:01:23", "27:00:05"); "-:--:--" for a negative, non-finite or absurdly
// large (over 10^9 s) value.
std::string FormatDuration(double seconds);

// Shows progress events on a console and appends them to a jsonl file.
class ProgressReporter {
 public:
  enum class Mode { kAuto, kBar, kJson, kQuiet };

  struct Options {
    std::string jsonl_path;  // empty: no file
    FILE* console = stdout;  // not owned; nullptr behaves as kQuiet
    Mode mode = Mode::kAuto;
  };

  // Opens the jsonl file (append mode, created when missing). Throws
  // std::runtime_error naming the path when it cannot be opened.
  static std::unique_ptr<ProgressReporter> Create(const Options& options);

  // Ends a pending bar line and closes the file.
  ~ProgressReporter();

  ProgressReporter(const ProgressReporter&) = delete;
  ProgressReporter& operator=(const ProgressReporter&) = delete;

  // Writes `event` to the console (per mode) and the file. Throws
  // std::runtime_error naming the path when the file write fails; console
  // write errors are ignored.
  void Report(const ProgressEvent& event);

  // The console mode in effect (kAuto resolved to kBar or kJson).
  Mode mode() const { return mode_; }

 private:
  ProgressReporter(FILE* console, Mode mode, std::string jsonl_path, FILE* file);

  void WriteBar(const ProgressEvent& event);
  void WriteFullLine(const ProgressEvent& event);

  FILE* const console_;
  const Mode mode_;
  const std::string jsonl_path_;
  FILE* const file_;  // owned; nullptr when no path

  std::mutex mu_;
  bool bar_active_ = false;     // a bar line without its newline is on the console
  size_t bar_length_ = 0;       // length of the bar line last drawn
};

}  // namespace lpdetr::train

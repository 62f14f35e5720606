// ProgressEventJson and ProgressReporter: the JSON keys of each event kind,
// null for non-finite numbers, FormatDuration, the jsonl file (append on
// reopen, open errors), bar and JSON console modes (console = a tmpfile),
// and two threads reporting at once.
#include "train/progress.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace lpdetr::train {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

std::set<std::string> Keys(const json& object) {
  std::set<std::string> keys;
  for (const auto& item : object.items()) keys.insert(item.key());
  return keys;
}

// Everything written to `file` so far (the position is left at the end).
std::string ReadAll(FILE* file) {
  std::fflush(file);
  std::rewind(file);
  std::string text;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), file)) > 0) text.append(buffer, n);
  std::fseek(file, 0, SEEK_END);
  return text;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) lines.push_back(line);
  return lines;
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

ProgressEvent StepEvent(int64_t step) {
  ProgressEvent event;
  event.event = "step";
  event.epoch = 1;
  event.step = step;
  event.total_steps = 10;
  event.loss = 1.234;
  event.losses = {{"loss_class", 0.5}, {"loss_bbox", 0.25}};
  event.lr = 1e-4;
  event.images_per_s = 12.3;
  event.eta_s = 83;
  return event;
}

class ProgressTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::path(::testing::TempDir()) / "progress_test" / info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    console_ = std::tmpfile();
    ASSERT_NE(console_, nullptr);
  }
  void TearDown() override {
    if (console_ != nullptr) std::fclose(console_);
  }

  fs::path dir_;
  FILE* console_ = nullptr;
};

TEST(ProgressEventJsonTest, StartHasOnlyTheAlwaysKeys) {
  ProgressEvent event;
  event.event = "start";
  event.epoch = 0;
  event.step = 0;
  event.total_steps = 1000;
  const json object = ProgressEventJson(event);
  EXPECT_EQ(Keys(object), (std::set<std::string>{"event", "epoch", "step", "total_steps"}));
  EXPECT_EQ(object["event"], "start");
  EXPECT_EQ(object["total_steps"].get<int64_t>(), 1000);
}

TEST(ProgressEventJsonTest, StepHasLossesRateAndEta) {
  const json object = ProgressEventJson(StepEvent(7));
  EXPECT_EQ(Keys(object), (std::set<std::string>{"event", "epoch", "step", "total_steps", "loss",
                                                 "losses", "lr", "images_per_s", "eta_s"}));
  EXPECT_EQ(object["step"].get<int64_t>(), 7);
  EXPECT_EQ(object["epoch"].get<int64_t>(), 1);
  EXPECT_DOUBLE_EQ(object["loss"].get<double>(), 1.234);
  ASSERT_TRUE(object["losses"].is_object());
  EXPECT_DOUBLE_EQ(object["losses"]["loss_class"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(object["losses"]["loss_bbox"].get<double>(), 0.25);
  EXPECT_DOUBLE_EQ(object["lr"].get<double>(), 1e-4);
  EXPECT_DOUBLE_EQ(object["images_per_s"].get<double>(), 12.3);
  EXPECT_DOUBLE_EQ(object["eta_s"].get<double>(), 83);
}

TEST(ProgressEventJsonTest, EvalHasMetricsObject) {
  ProgressEvent event;
  event.event = "eval";
  event.epoch = 3;
  event.step = 300;
  event.total_steps = 1000;
  event.metrics = {{"AP", 0.4321}, {"AP50", 0.6}};
  const json object = ProgressEventJson(event);
  EXPECT_EQ(Keys(object), (std::set<std::string>{"event", "epoch", "step", "total_steps",
                                                 "metrics"}));
  EXPECT_DOUBLE_EQ(object["metrics"]["AP"].get<double>(), 0.4321);
  EXPECT_DOUBLE_EQ(object["metrics"]["AP50"].get<double>(), 0.6);
}

TEST(ProgressEventJsonTest, CheckpointAndDoneCarryTheirMessage) {
  for (const std::string kind : {"checkpoint", "done"}) {
    ProgressEvent event;
    event.event = kind;
    event.step = 500;
    event.message = "run/checkpoint.pt";
    const json object = ProgressEventJson(event);
    EXPECT_EQ(Keys(object), (std::set<std::string>{"event", "epoch", "step", "total_steps",
                                                   "message"}))
        << kind;
    EXPECT_EQ(object["event"], kind);
    EXPECT_EQ(object["message"], "run/checkpoint.pt");
  }
}

TEST(ProgressEventJsonTest, NonFiniteNumbersAreNull) {
  ProgressEvent event;
  event.event = "error";
  event.step = 42;
  event.loss = kNaN;
  event.losses = {{"loss_giou", kInf}, {"loss_bbox", 2.0}};
  event.lr = -kInf;
  event.eta_s = kNaN;
  event.metrics = {{"AP", kNaN}};
  event.message = "non-finite loss";
  const json object = ProgressEventJson(event);
  EXPECT_TRUE(object.contains("loss"));
  EXPECT_TRUE(object["loss"].is_null());
  EXPECT_TRUE(object["losses"]["loss_giou"].is_null());
  EXPECT_DOUBLE_EQ(object["losses"]["loss_bbox"].get<double>(), 2.0);
  EXPECT_TRUE(object["lr"].is_null());
  EXPECT_TRUE(object["eta_s"].is_null());
  EXPECT_TRUE(object["metrics"]["AP"].is_null());
  EXPECT_FALSE(object.contains("images_per_s"));
  EXPECT_EQ(object["message"], "non-finite loss");
  // The text round-trips through a strict parser.
  const json parsed = json::parse(object.dump());
  EXPECT_TRUE(parsed["loss"].is_null());
  EXPECT_EQ(parsed["step"].get<int64_t>(), 42);
}

TEST(FormatDurationTest, HoursMinutesSeconds) {
  EXPECT_EQ(FormatDuration(0), "0:00:00");
  EXPECT_EQ(FormatDuration(83), "0:01:23");
  EXPECT_EQ(FormatDuration(59.6), "0:01:00");
  EXPECT_EQ(FormatDuration(3599.4), "0:59:59");
  EXPECT_EQ(FormatDuration(27 * 3600 + 5), "27:00:05");
}

TEST(FormatDurationTest, UnknownValues) {
  EXPECT_EQ(FormatDuration(-1), "-:--:--");
  EXPECT_EQ(FormatDuration(kNaN), "-:--:--");
  EXPECT_EQ(FormatDuration(kInf), "-:--:--");
}

TEST_F(ProgressTest, FileGetsEveryEventAndAppendsOnReopen) {
  const fs::path path = dir_ / "progress.jsonl";
  ProgressReporter::Options options;
  options.jsonl_path = path.string();
  options.console = console_;
  options.mode = ProgressReporter::Mode::kQuiet;
  {
    auto reporter = ProgressReporter::Create(options);
    reporter->Report(StepEvent(1));
    reporter->Report(StepEvent(2));
    // Flushed per line: visible before the reporter closes.
    EXPECT_EQ(Lines(ReadFile(path)).size(), 2u);
  }
  {
    auto reporter = ProgressReporter::Create(options);
    ProgressEvent done;
    done.event = "done";
    done.step = 3;
    reporter->Report(done);
  }
  const std::vector<std::string> lines = Lines(ReadFile(path));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(json::parse(lines[0])["step"].get<int64_t>(), 1);
  EXPECT_EQ(json::parse(lines[1])["step"].get<int64_t>(), 2);
  EXPECT_EQ(json::parse(lines[2])["event"], "done");
  EXPECT_EQ(json::parse(lines[0]), ProgressEventJson(StepEvent(1)));
  EXPECT_EQ(ReadAll(console_), "");  // quiet
}

TEST_F(ProgressTest, UnopenableFileThrowsNamingThePath) {
  ProgressReporter::Options options;
  options.jsonl_path = (dir_ / "missing_dir" / "progress.jsonl").string();
  options.console = console_;
  try {
    ProgressReporter::Create(options);
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(options.jsonl_path), std::string::npos) << e.what();
  }
}

TEST_F(ProgressTest, JsonModeWritesOneParsableObjectPerLine) {
  ProgressReporter::Options options;
  options.console = console_;
  options.mode = ProgressReporter::Mode::kJson;
  auto reporter = ProgressReporter::Create(options);
  EXPECT_EQ(reporter->mode(), ProgressReporter::Mode::kJson);
  std::vector<ProgressEvent> events;
  ProgressEvent start;
  start.event = "start";
  start.total_steps = 10;
  events.push_back(start);
  events.push_back(StepEvent(1));
  ProgressEvent error = StepEvent(2);
  error.event = "error";
  error.loss = kNaN;
  error.message = "loss is \"nan\"\nstopping";
  events.push_back(error);
  for (const auto& event : events) reporter->Report(event);

  const std::vector<std::string> lines = Lines(ReadAll(console_));
  ASSERT_EQ(lines.size(), events.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(json::parse(lines[i]), ProgressEventJson(events[i])) << lines[i];
  }
  EXPECT_TRUE(json::parse(lines[2])["loss"].is_null());
}

TEST_F(ProgressTest, AutoModeOnANonTerminalIsJson) {
  ProgressReporter::Options options;
  options.console = console_;  // a regular file, not a terminal
  auto reporter = ProgressReporter::Create(options);
  EXPECT_EQ(reporter->mode(), ProgressReporter::Mode::kJson);
  reporter->Report(StepEvent(4));
  const std::vector<std::string> lines = Lines(ReadAll(console_));
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(json::parse(lines[0])["step"].get<int64_t>(), 4);
}

TEST_F(ProgressTest, BarModeRedrawsOneLineAndPrintsFullLinesForOtherEvents) {
  const fs::path path = dir_ / "progress.jsonl";
  ProgressReporter::Options options;
  options.jsonl_path = path.string();
  options.console = console_;
  options.mode = ProgressReporter::Mode::kBar;
  auto reporter = ProgressReporter::Create(options);
  ProgressEvent start;
  start.event = "start";
  start.total_steps = 10;
  reporter->Report(start);
  reporter->Report(StepEvent(5));
  reporter->Report(StepEvent(6));
  ProgressEvent eval;
  eval.event = "eval";
  eval.epoch = 1;
  eval.step = 6;
  eval.total_steps = 10;
  eval.metrics = {{"AP", 0.4321}};
  reporter->Report(eval);
  ProgressEvent error = StepEvent(7);
  error.event = "error";
  error.message = "loss diverged";
  reporter->Report(error);
  const std::string text = ReadAll(console_);

  // Two redraws of the bar, with every field of the step event.
  EXPECT_EQ(std::count(text.begin(), text.end(), '\r'), 2) << text;
  EXPECT_NE(text.find("\repoch 1 step 5/10 ["), std::string::npos) << text;
  EXPECT_NE(text.find("\repoch 1 step 6/10 ["), std::string::npos) << text;
  EXPECT_NE(text.find("loss 1.234"), std::string::npos) << text;
  EXPECT_NE(text.find("lr 1.0e-04"), std::string::npos) << text;
  EXPECT_NE(text.find("12.3 img/s"), std::string::npos) << text;
  EXPECT_NE(text.find("ETA 0:01:23"), std::string::npos) << text;
  // Half done: as many filled cells as empty ones.
  const size_t open = text.find('[', text.find("step 5/10"));
  const size_t close = text.find(']', open);
  ASSERT_NE(close, std::string::npos);
  const std::string bar = text.substr(open + 1, close - open - 1);
  EXPECT_GT(bar.size(), 0u);
  const auto filled = std::count(bar.begin(), bar.end(), '#');
  const auto empty = std::count(bar.begin(), bar.end(), '.');
  EXPECT_EQ(filled + empty, static_cast<long>(bar.size())) << bar;
  EXPECT_LE(std::abs(filled - empty), 1) << bar;
  // The bar line is ended before the eval line, which shows AP.
  const size_t eval_at = text.find("[eval]");
  ASSERT_NE(eval_at, std::string::npos) << text;
  EXPECT_EQ(text[eval_at - 1], '\n');
  EXPECT_NE(text.find("AP 0.4321", eval_at), std::string::npos) << text;
  EXPECT_NE(text.find("loss diverged"), std::string::npos) << text;
  EXPECT_NE(text.find("[start]"), std::string::npos) << text;

  // Every piece between line breaks and carriage returns fits 100 columns.
  std::string piece;
  for (char c : text) {
    if (c == '\r' || c == '\n') {
      EXPECT_LT(piece.size(), 100u) << piece;
      piece.clear();
    } else {
      piece += c;
    }
  }
  // The file has JSON lines for all five events regardless of the mode.
  EXPECT_EQ(Lines(ReadFile(path)).size(), 5u);
}

TEST_F(ProgressTest, BarFitsWithHugeValuesAndShrinkingLinesAreBlanked) {
  ProgressReporter::Options options;
  options.console = console_;
  options.mode = ProgressReporter::Mode::kBar;
  auto reporter = ProgressReporter::Create(options);
  ProgressEvent huge = StepEvent(123456789012);
  huge.epoch = 99999;
  huge.total_steps = 999999999999;
  huge.loss = 1.2345e300;
  huge.images_per_s = 1e200;
  huge.eta_s = 9e8;
  reporter->Report(huge);
  ProgressEvent small;
  small.event = "step";
  small.step = 1;
  reporter->Report(small);
  reporter.reset();  // ends the bar line
  const std::string text = ReadAll(console_);
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(text.back(), '\n');
  const size_t second = text.find('\r', 1);
  ASSERT_NE(second, std::string::npos);
  const std::string first_line = text.substr(1, second - 1);
  const std::string second_line = text.substr(second + 1, text.size() - second - 2);
  EXPECT_LT(first_line.size(), 100u) << first_line;
  // The shorter redraw covers the longer one with spaces.
  EXPECT_EQ(second_line.size(), first_line.size()) << second_line;
  EXPECT_EQ(second_line.rfind("epoch 0 step 1", 0), 0u) << second_line;
  EXPECT_EQ(second_line.find_last_not_of(' '), std::string("epoch 0 step 1").size() - 1);
}

TEST_F(ProgressTest, ConcurrentReportsKeepEveryLineIntact) {
  const fs::path path = dir_ / "progress.jsonl";
  ProgressReporter::Options options;
  options.jsonl_path = path.string();
  options.console = console_;
  options.mode = ProgressReporter::Mode::kJson;
  auto reporter = ProgressReporter::Create(options);
  constexpr int kPerThread = 400;
  auto work = [&](int64_t epoch) {
    for (int i = 0; i < kPerThread; ++i) {
      ProgressEvent event = StepEvent(i);
      event.epoch = epoch;
      event.message = std::string(200, static_cast<char>('a' + epoch));
      reporter->Report(event);
    }
  };
  std::thread first(work, 0);
  std::thread second(work, 1);
  first.join();
  second.join();

  for (const std::string& text : {ReadAll(console_), ReadFile(path)}) {
    const std::vector<std::string> lines = Lines(text);
    ASSERT_EQ(lines.size(), 2u * kPerThread);
    int64_t next[2] = {0, 0};
    for (const std::string& line : lines) {
      const json object = json::parse(line);  // throws on a torn line
      const int64_t epoch = object["epoch"].get<int64_t>();
      ASSERT_TRUE(epoch == 0 || epoch == 1) << line;
      EXPECT_EQ(object["message"], std::string(200, static_cast<char>('a' + epoch)));
      EXPECT_EQ(object["step"].get<int64_t>(), next[epoch]) << line;
      ++next[epoch];
    }
    EXPECT_EQ(next[0], kPerThread);
    EXPECT_EQ(next[1], kPerThread);
  }
}

}  // namespace
}  // namespace lpdetr::train

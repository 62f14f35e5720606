// Unit tests of the metrics registry: counters, gauges, histograms, name and
// label validation, escaping, number formatting, ordering and concurrency.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "server/metrics/metrics.h"

namespace lpdetr::metrics {
namespace {

// Sample lines of an exposition, keyed by everything before the value.
std::map<std::string, std::string> Samples(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    size_t sp = line.rfind(' ');
    EXPECT_NE(sp, std::string::npos) << line;
    EXPECT_EQ(out.count(line.substr(0, sp)), 0u) << "duplicate series " << line;
    out[line.substr(0, sp)] = line.substr(sp + 1);
  }
  return out;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

// Expects `fn` to throw std::invalid_argument whose message contains `needle`.
template <typename Fn>
void ExpectInvalid(Fn fn, const std::string& needle) {
  try {
    fn();
    ADD_FAILURE() << "no exception; expected one naming '" << needle << "'";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' does not name '" << needle << "'";
  }
}

TEST(Counter, AddsNonNegativeAmountsOnly) {
  Registry registry;
  Counter& c = registry.AddCounter("lpdetr_test_total", "help").Add({});
  EXPECT_EQ(c.Value(), 0.0);
  c.Increment();
  c.Increment(2.5);
  EXPECT_DOUBLE_EQ(c.Value(), 3.5);
  c.Increment(-1.0);
  c.Increment(std::nan(""));
  EXPECT_DOUBLE_EQ(c.Value(), 3.5);
  EXPECT_EQ(Samples(registry.Serialize())["lpdetr_test_total"], "3.5");
}

TEST(Gauge, SetIncrementDecrement) {
  Registry registry;
  Gauge& g = registry.AddGauge("lpdetr_depth", "help").Add({{"queue", "a"}});
  g.Set(10);
  g.Increment();
  g.Increment(4);
  g.Decrement(20);
  EXPECT_DOUBLE_EQ(g.Value(), -5.0);
  g.Decrement();
  EXPECT_EQ(Samples(registry.Serialize())["lpdetr_depth{queue=\"a\"}"], "-6");
}

TEST(Family, SameLabelsGiveTheSameChild) {
  Registry registry;
  auto& family = registry.AddCounter("lpdetr_requests_total", "help");
  Counter& a = family.Add({{"method", "Detect"}, {"code", "OK"}});
  Counter& b = family.Add({{"code", "OK"}, {"method", "Detect"}});
  Counter& other = family.Add({{"method", "Detect"}, {"code", "INTERNAL"}});
  EXPECT_EQ(&a, &b);
  EXPECT_NE(&a, &other);
  a.Increment(2);
  other.Increment(5);
  auto samples = Samples(registry.Serialize());
  EXPECT_EQ(samples["lpdetr_requests_total{code=\"OK\",method=\"Detect\"}"], "2");
  EXPECT_EQ(samples["lpdetr_requests_total{code=\"INTERNAL\",method=\"Detect\"}"], "5");
  EXPECT_EQ(samples.size(), 2u);
}

TEST(Family, RemoveDropsTheSeriesAndAddStartsItAgainAtZero) {
  Registry registry;
  auto& family = registry.AddGauge("lpdetr_finetune_job_step", "help");
  family.Add({{"job", "a"}}).Set(7);
  family.Add({{"job", "b"}}).Set(3);
  EXPECT_TRUE(family.Remove({{"job", "a"}}));
  EXPECT_FALSE(family.Remove({{"job", "a"}}));
  auto samples = Samples(registry.Serialize());
  EXPECT_EQ(samples.count("lpdetr_finetune_job_step{job=\"a\"}"), 0u);
  EXPECT_EQ(samples["lpdetr_finetune_job_step{job=\"b\"}"], "3");
  EXPECT_EQ(family.Add({{"job", "a"}}).Value(), 0.0);
}

TEST(Histogram, CumulativeBucketsSumAndCount) {
  Registry registry;
  std::vector<double> bounds = {0.5, 1.0, 2.0, 5.0};
  Histogram& h =
      registry.AddHistogram("lpdetr_latency_seconds", "help", bounds).Add({{"method", "Detect"}});
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> dist(-1.0, 8.0);
  std::vector<double> values = {0.5, 1.0, 2.0, 5.0, 5.0000001, -3.0};  // edges are inclusive
  for (int i = 0; i < 200; ++i) values.push_back(dist(rng));
  double sum = 0;
  for (double v : values) {
    h.Observe(v);
    sum += v;
  }
  h.Observe(std::nan(""));  // ignored

  auto samples = Samples(registry.Serialize());
  for (double b : bounds) {
    auto expected = std::count_if(values.begin(), values.end(), [b](double v) { return v <= b; });
    std::ostringstream le;
    le << b;
    std::string key = "lpdetr_latency_seconds_bucket{method=\"Detect\",le=\"" + le.str() + "\"}";
    ASSERT_TRUE(samples.count(key)) << key;
    EXPECT_EQ(std::stoll(samples[key]), expected) << key;
  }
  EXPECT_EQ(samples["lpdetr_latency_seconds_bucket{method=\"Detect\",le=\"+Inf\"}"],
            std::to_string(values.size()));
  EXPECT_EQ(samples["lpdetr_latency_seconds_count{method=\"Detect\"}"],
            std::to_string(values.size()));
  EXPECT_NEAR(std::stod(samples["lpdetr_latency_seconds_sum{method=\"Detect\"}"]), sum, 1e-9);
  EXPECT_EQ(samples.size(), bounds.size() + 3);
}

TEST(Histogram, BucketLinesInBoundOrderWithLeLast) {
  Registry registry;
  registry.AddHistogram("lpdetr_batch_size", "help", LinearBuckets(1, 1, 3))
      .Add({{"z", "1"}, {"a", "2"}})
      .Observe(2);
  std::vector<std::string> expected = {
      "# HELP lpdetr_batch_size help",
      "# TYPE lpdetr_batch_size histogram",
      "lpdetr_batch_size_bucket{a=\"2\",z=\"1\",le=\"1\"} 0",
      "lpdetr_batch_size_bucket{a=\"2\",z=\"1\",le=\"2\"} 1",
      "lpdetr_batch_size_bucket{a=\"2\",z=\"1\",le=\"3\"} 1",
      "lpdetr_batch_size_bucket{a=\"2\",z=\"1\",le=\"+Inf\"} 1",
      "lpdetr_batch_size_sum{a=\"2\",z=\"1\"} 2",
      "lpdetr_batch_size_count{a=\"2\",z=\"1\"} 1",
  };
  EXPECT_EQ(Lines(registry.Serialize()), expected);
}

TEST(Histogram, BucketValidation) {
  Registry registry;
  // A trailing +Inf is the implicit bucket, accepted and not repeated.
  registry.AddHistogram("lpdetr_a", "h", {1.0, std::numeric_limits<double>::infinity()})
      .Add({})
      .Observe(3);
  auto samples = Samples(registry.Serialize());
  EXPECT_EQ(samples["lpdetr_a_bucket{le=\"1\"}"], "0");
  EXPECT_EQ(samples["lpdetr_a_bucket{le=\"+Inf\"}"], "1");
  EXPECT_EQ(samples.size(), 4u);
  // No bounds at all: only +Inf.
  registry.AddHistogram("lpdetr_b", "h", {}).Add({}).Observe(1);
  EXPECT_EQ(Samples(registry.Serialize())["lpdetr_b_bucket{le=\"+Inf\"}"], "1");

  ExpectInvalid([&] { registry.AddHistogram("lpdetr_c", "h", {1.0, 1.0}); }, "lpdetr_c");
  ExpectInvalid([&] { registry.AddHistogram("lpdetr_d", "h", {2.0, 1.0}); }, "lpdetr_d");
  ExpectInvalid([&] { registry.AddHistogram("lpdetr_e", "h", {std::nan("")}); }, "NaN");
  ExpectInvalid([&] { registry.AddHistogram("lpdetr_f", "h", {-INFINITY, 1.0}); }, "-Inf");
}

TEST(Buckets, LatencyAndLinear) {
  auto latency = LatencyBuckets();
  ASSERT_FALSE(latency.empty());
  EXPECT_DOUBLE_EQ(latency.front(), 0.001);
  EXPECT_DOUBLE_EQ(latency.back(), 60.0);
  EXPECT_TRUE(std::is_sorted(latency.begin(), latency.end()));
  EXPECT_EQ(std::adjacent_find(latency.begin(), latency.end()), latency.end());
  EXPECT_EQ(LinearBuckets(1, 2, 4), (std::vector<double>{1, 3, 5, 7}));
  ExpectInvalid([] { LinearBuckets(1, 1, 0); }, "0");
  ExpectInvalid([] { LinearBuckets(1, -2, 3); }, "-2");
}

TEST(Names, InvalidMetricNamesThrowNamingTheName) {
  Registry registry;
  for (const std::string bad :
       {"", "1abc", "lpdetr-requests", "lpdetr requests", "__reserved", "lpdetr_é"}) {
    ExpectInvalid([&] { registry.AddGauge(bad, "h"); }, "'" + bad + "'");
    ExpectInvalid([&] { registry.AddHistogram(bad, "h", {1}); }, "'" + bad + "'");
  }
  ExpectInvalid([&] { registry.AddCounter("1bad_total", "h"); }, "1bad_total");
  ExpectInvalid([&] { registry.AddCounter("lpdetr_requests", "h"); }, "lpdetr_requests");
  // Colons are allowed in metric names (recording-rule style).
  EXPECT_NO_THROW(registry.AddGauge("lpdetr:ratio", "h"));
  EXPECT_NO_THROW(registry.AddGauge("_lpdetr", "h"));
}

TEST(Names, DuplicatesAndHistogramSeriesCollide) {
  Registry registry;
  registry.AddGauge("lpdetr_queue_depth", "h");
  ExpectInvalid([&] { registry.AddGauge("lpdetr_queue_depth", "h"); }, "lpdetr_queue_depth");
  ExpectInvalid([&] { registry.AddHistogram("lpdetr_queue_depth", "h", {1}); },
                "lpdetr_queue_depth");
  registry.AddHistogram("lpdetr_seconds", "h", {1});
  ExpectInvalid([&] { registry.AddGauge("lpdetr_seconds_count", "h"); }, "lpdetr_seconds_count");
  registry.AddGauge("lpdetr_other_sum", "h");
  ExpectInvalid([&] { registry.AddHistogram("lpdetr_other", "h", {1}); }, "lpdetr_other_sum");
  // Failed registrations leave no trace in the output.
  std::string text = registry.Serialize();
  EXPECT_EQ(text.find("lpdetr_other "), std::string::npos) << text;
  EXPECT_EQ(text.find("lpdetr_seconds_count"), std::string::npos) << text;
}

TEST(Names, InvalidLabelNamesThrowNamingTheLabel) {
  Registry registry;
  auto& gauges = registry.AddGauge("lpdetr_g", "h");
  for (const std::string bad : {"", "1x", "a-b", "a:b", "__name__"}) {
    ExpectInvalid([&] { gauges.Add({{bad, "v"}}); }, "'" + bad + "'");
  }
  EXPECT_NO_THROW(gauges.Add({{"le", "1"}}));  // only histograms reserve "le"
  auto& histograms = registry.AddHistogram("lpdetr_h", "h", {1});
  ExpectInvalid([&] { histograms.Add({{"le", "1"}}); }, "'le'");
  std::string text = registry.Serialize();
  EXPECT_EQ(text.find("a-b"), std::string::npos);
}

TEST(Exposition, LabelValueAndHelpEscaping) {
  Registry registry;
  registry.AddCounter("lpdetr_escapes_total", "Back\\slash, \"quotes\" and a\nnew line.")
      .Add({{"path", "C:\\dir\\\"x\"\nnext"}, {"plain", "ok = {}, #"}})
      .Increment(1);
  std::vector<std::string> lines = Lines(registry.Serialize());
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], "# HELP lpdetr_escapes_total Back\\\\slash, \"quotes\" and a\\nnew line.");
  EXPECT_EQ(lines[1], "# TYPE lpdetr_escapes_total counter");
  EXPECT_EQ(lines[2],
            "lpdetr_escapes_total{path=\"C:\\\\dir\\\\\\\"x\\\"\\nnext\",plain=\"ok = {}, #\"} 1");
}

TEST(Exposition, NumberFormatting) {
  Registry registry;
  auto& g = registry.AddGauge("lpdetr_value", "h");
  const std::vector<std::pair<double, std::string>> cases = {
      {0.0, "0"},
      {-0.0, "0"},
      {3.0, "3"},
      {-2.0, "-2"},
      {123456789012.0, "123456789012"},
      {0.1, "0.1"},
      {0.005, "0.005"},
      {0.1 + 0.2, "0.30000000000000004"},
      {1e-9, "1e-09"},
      {1e20, "1e+20"},
      {std::numeric_limits<double>::infinity(), "+Inf"},
      {-std::numeric_limits<double>::infinity(), "-Inf"},
      {std::nan(""), "NaN"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    g.Add({{"case", std::to_string(i)}}).Set(cases[i].first);
  }
  auto samples = Samples(registry.Serialize());
  for (size_t i = 0; i < cases.size(); ++i) {
    std::string text = samples["lpdetr_value{case=\"" + std::to_string(i) + "\"}"];
    EXPECT_EQ(text, cases[i].second) << "case " << i;
    // Whatever the spelling, it must read back as the same number.
    double back = std::strtod(text.c_str(), nullptr);
    if (std::isnan(cases[i].first)) {
      EXPECT_TRUE(std::isnan(back));
    } else {
      EXPECT_EQ(back, cases[i].first) << text;
    }
  }
}

TEST(Exposition, StableOrderByNameThenLabels) {
  // Two registries fed the same metrics in different orders serialize the same.
  Registry a;
  auto& ga = a.AddGauge("lpdetr_b", "h");
  ga.Add({{"x", "2"}}).Set(1);
  a.AddGauge("lpdetr_b2", "h").Add({}).Set(2);
  a.AddCounter("lpdetr_a_total", "h").Add({}).Increment(3);
  ga.Add({{"x", "1"}}).Set(4);
  Registry b;
  b.AddCounter("lpdetr_a_total", "h").Add({}).Increment(3);
  auto& gb = b.AddGauge("lpdetr_b", "h");
  gb.Add({{"x", "1"}}).Set(4);
  gb.Add({{"x", "2"}}).Set(1);
  b.AddGauge("lpdetr_b2", "h").Add({}).Set(2);
  EXPECT_EQ(a.Serialize(), b.Serialize());
  EXPECT_EQ(a.Serialize(), a.Serialize());
  std::vector<std::string> samples;
  for (const auto& line : Lines(a.Serialize())) {
    if (line[0] != '#') samples.push_back(line);
  }
  EXPECT_EQ(samples, (std::vector<std::string>{"lpdetr_a_total 3", "lpdetr_b{x=\"1\"} 4",
                                               "lpdetr_b{x=\"2\"} 1", "lpdetr_b2 2"}));
}

TEST(Exposition, EmptyFamilyWritesHeaderOnly) {
  Registry registry;
  registry.AddGauge("lpdetr_model_info", "Model name, variant and version (value 1).");
  EXPECT_EQ(Lines(registry.Serialize()),
            (std::vector<std::string>{
                "# HELP lpdetr_model_info Model name, variant and version (value 1).",
                "# TYPE lpdetr_model_info gauge"}));
}

TEST(Concurrency, ManyThreadsExactTotals) {
  Registry registry;
  auto& counters = registry.AddCounter("lpdetr_ops_total", "h");
  auto& gauges = registry.AddGauge("lpdetr_level", "h");
  auto& histograms = registry.AddHistogram("lpdetr_obs", "h", {0.5, 1.5});
  constexpr int kThreads = 8;
  constexpr int kIterations = 20000;
  std::atomic<bool> stop_scraping{false};
  std::thread scraper([&] {
    // Serialization runs alongside updates and child creation.
    while (!stop_scraping.load()) {
      auto samples = Samples(registry.Serialize());
      (void)samples;
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      Counter& shared = counters.Add({{"who", "all"}});
      for (int i = 0; i < kIterations; ++i) {
        shared.Increment();
        counters.Add({{"who", "t" + std::to_string(t)}}).Increment(0.5);
        gauges.Add({}).Increment(2);
        gauges.Add({}).Decrement(1);
        histograms.Add({}).Observe(i % 2 == 0 ? 1.0 : 2.0);
      }
    });
  }
  for (auto& th : threads) th.join();
  stop_scraping.store(true);
  scraper.join();

  auto samples = Samples(registry.Serialize());
  const long total = static_cast<long>(kThreads) * kIterations;
  EXPECT_EQ(samples["lpdetr_ops_total{who=\"all\"}"], std::to_string(total));
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(samples["lpdetr_ops_total{who=\"t" + std::to_string(t) + "\"}"],
              std::to_string(kIterations / 2));
  }
  EXPECT_EQ(samples["lpdetr_level"], std::to_string(total));
  EXPECT_EQ(samples["lpdetr_obs_bucket{le=\"0.5\"}"], "0");
  EXPECT_EQ(samples["lpdetr_obs_bucket{le=\"1.5\"}"], std::to_string(total / 2));
  EXPECT_EQ(samples["lpdetr_obs_bucket{le=\"+Inf\"}"], std::to_string(total));
  EXPECT_EQ(samples["lpdetr_obs_count"], std::to_string(total));
  EXPECT_EQ(samples["lpdetr_obs_sum"], std::to_string(total / 2 * 3));
}

TEST(Concurrency, ConcurrentRegistrationOfOneNameSucceedsOnce) {
  Registry registry;
  std::atomic<int> ok{0}, rejected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      try {
        registry.AddGauge("lpdetr_once", "h");
        ++ok;
      } catch (const std::invalid_argument&) {
        ++rejected;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 1);
  EXPECT_EQ(rejected.load(), 7);
}

}  // namespace
}  // namespace lpdetr::metrics

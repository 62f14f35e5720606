// End to end with a real Prometheus server: it is started on 127.0.0.1 with a
// temporary config and TSDB, scrapes an in-process Exposer every second, and
// its query API must return the values this test set (label escapes included).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>

#include "server/metrics/metrics.h"
#include "tests/metrics/prometheus_util.h"

#ifndef LPDETR_PROMETHEUS
#define LPDETR_PROMETHEUS ""
#endif

namespace lpdetr::metrics {
namespace {

using nlohmann::json;

TEST(Prometheus, ScrapesTheExposerAndAnswersQueries) {
  std::string prometheus = testing::ToolPath("LPDETR_PROMETHEUS", LPDETR_PROMETHEUS);
  if (prometheus.empty()) GTEST_SKIP() << "prometheus not found (Debian package prometheus)";

  // Values no other run would produce, so a stale server cannot pass the test.
  std::mt19937 rng(std::random_device{}());
  const double gauge_value = 1000 + std::uniform_int_distribution<int>(0, 1000000)(rng) / 8.0;
  const std::string tricky = "quote \" backslash \\ newline \n end";
  auto registry = std::make_shared<Registry>();
  registry->AddGauge("lpdetr_e2e_value", "A value set by the test.").Add({}).Set(gauge_value);
  registry->AddCounter("lpdetr_e2e_requests_total", "Requests.")
      .Add({{"method", "Detect"}, {"detail", tricky}})
      .Increment(7);
  auto& hist = registry->AddHistogram("lpdetr_e2e_seconds", "Latency.", LatencyBuckets()).Add({});
  hist.Observe(0.02);
  hist.Observe(0.3);
  hist.Observe(3.0);
  auto exposer = Exposer::Create("127.0.0.1:0", registry);
  ASSERT_TRUE(exposer.ok()) << exposer.status();

  testing::PrometheusServer prom(prometheus, "lpdetr", {(*exposer)->port()});
  json result = prom.WaitFor("lpdetr_e2e_value{job=\"lpdetr\"}");
  ASSERT_TRUE(prom.Running()) << "prometheus exited early:\n" << prom.Log();
  ASSERT_EQ(result.size(), 1u) << "no sample within 60 s; log:\n" << prom.Log();
  EXPECT_DOUBLE_EQ(std::stod(result[0]["value"][1].get<std::string>()), gauge_value);

  // The target is healthy, and the other series came through the same scrape.
  json up = prom.Query("up{job=\"lpdetr\"}");
  ASSERT_EQ(up.size(), 1u);
  EXPECT_EQ(up[0]["value"][1], "1");

  json counter = prom.Query("lpdetr_e2e_requests_total");
  ASSERT_EQ(counter.size(), 1u) << counter.dump();
  EXPECT_EQ(counter[0]["metric"]["detail"], tricky);  // escapes round-trip exactly
  EXPECT_EQ(counter[0]["metric"]["method"], "Detect");
  EXPECT_EQ(counter[0]["value"][1], "7");

  json count = prom.Query("lpdetr_e2e_seconds_count");
  ASSERT_EQ(count.size(), 1u);
  EXPECT_EQ(count[0]["value"][1], "3");
  json bucket = prom.Query("lpdetr_e2e_seconds_bucket{le=\"0.5\"}");
  ASSERT_EQ(bucket.size(), 1u);
  EXPECT_EQ(bucket[0]["value"][1], "2");
  // histogram_quantile works on the buckets: the median lies in (0.25, 0.5].
  json median = prom.Query("histogram_quantile(0.5, lpdetr_e2e_seconds_bucket)");
  ASSERT_EQ(median.size(), 1u);
  double q = std::stod(median[0]["value"][1].get<std::string>());
  EXPECT_GT(q, 0.25);
  EXPECT_LE(q, 0.5);

  EXPECT_EQ(prom.Stop(), 0) << prom.Log();
}

}  // namespace
}  // namespace lpdetr::metrics

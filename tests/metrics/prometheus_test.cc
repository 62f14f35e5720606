// End to end with a real Prometheus server: it is started on 127.0.0.1 with a
// temporary config and TSDB, scrapes an in-process Exposer every second, and
// its query API must return the values this test set (label escapes included).
#include <gtest/gtest.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>

#include "server/metrics/metrics.h"
#include "tests/metrics/test_util.h"

#ifndef LPDETR_PROMETHEUS
#define LPDETR_PROMETHEUS ""
#endif

namespace lpdetr::metrics {
namespace {

using nlohmann::json;

// Percent-encodes a PromQL query for the URL's query string.
std::string UrlEncode(const std::string& s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '_' || c == '-' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// The result vector of an instant query, or an empty array while Prometheus is
// not up yet (connection refused, not ready).
json Query(int port, const std::string& promql) {
  try {
    auto r = testing::HttpGet(port, "/api/v1/query?query=" + UrlEncode(promql));
    if (r.status != 200) return json::array();
    json body = json::parse(r.body);
    if (body.value("status", "") != "success") return json::array();
    return body["data"]["result"];
  } catch (const std::exception&) {
    return json::array();
  }
}

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

  testing::TempDir dir;
  const int prom_port = testing::FreeLoopbackPort();
  auto config = dir.path() / "prometheus.yml";
  testing::WriteFile(config,
                     "global:\n"
                     "  scrape_interval: 1s\n"
                     "  scrape_timeout: 1s\n"
                     "scrape_configs:\n"
                     "  - job_name: lpdetr\n"
                     "    static_configs:\n"
                     "      - targets: ['127.0.0.1:" +
                         std::to_string((*exposer)->port()) + "']\n");
  auto log = dir.path() / "prometheus.log";
  testing::ChildProcess server(
      {prometheus, "--config.file=" + config.string(),
       "--storage.tsdb.path=" + (dir.path() / "tsdb").string(),
       "--web.listen-address=127.0.0.1:" + std::to_string(prom_port), "--log.level=warn"},
      log.string());

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  json result = json::array();
  while (std::chrono::steady_clock::now() < deadline) {
    ASSERT_LT(server.Poll(), 0) << "prometheus exited early:\n" << testing::ReadFile(log);
    result = Query(prom_port, "lpdetr_e2e_value{job=\"lpdetr\"}");
    if (!result.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  ASSERT_EQ(result.size(), 1u) << "no sample within 60 s; log:\n" << testing::ReadFile(log);
  EXPECT_DOUBLE_EQ(std::stod(result[0]["value"][1].get<std::string>()), gauge_value);

  // The target is healthy, and the other series came through the same scrape.
  json up = Query(prom_port, "up{job=\"lpdetr\"}");
  ASSERT_EQ(up.size(), 1u);
  EXPECT_EQ(up[0]["value"][1], "1");

  json counter = Query(prom_port, "lpdetr_e2e_requests_total");
  ASSERT_EQ(counter.size(), 1u) << counter.dump();
  EXPECT_EQ(counter[0]["metric"]["detail"], tricky);  // escapes round-trip exactly
  EXPECT_EQ(counter[0]["metric"]["method"], "Detect");
  EXPECT_EQ(counter[0]["value"][1], "7");

  json count = Query(prom_port, "lpdetr_e2e_seconds_count");
  ASSERT_EQ(count.size(), 1u);
  EXPECT_EQ(count[0]["value"][1], "3");
  json bucket = Query(prom_port, "lpdetr_e2e_seconds_bucket{le=\"0.5\"}");
  ASSERT_EQ(bucket.size(), 1u);
  EXPECT_EQ(bucket[0]["value"][1], "2");
  // histogram_quantile works on the buckets: the median lies in (0.25, 0.5].
  json median = Query(prom_port, "histogram_quantile(0.5, lpdetr_e2e_seconds_bucket)");
  ASSERT_EQ(median.size(), 1u);
  double q = std::stod(median[0]["value"][1].get<std::string>());
  EXPECT_GT(q, 0.25);
  EXPECT_LE(q, 0.5);

  EXPECT_EQ(server.Stop(), 0) << testing::ReadFile(log);
}

}  // namespace
}  // namespace lpdetr::metrics

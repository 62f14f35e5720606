// A real Prometheus server for tests: started on a free 127.0.0.1 port with a
// temporary config and TSDB, scraping the given loopback ports every second,
// queried through its HTTP API. Used by the metrics tests (an in-process
// Exposer) and the server's end-to-end tests (the lpdetr-server binary).
// Needs only test_util.h and nlohmann_json.
#pragma once

#include <cctype>
#include <chrono>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "tests/metrics/test_util.h"

namespace lpdetr::metrics::testing {

// Percent-encodes a PromQL query for the URL's query string.
inline std::string UrlEncode(const std::string& s) {
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

// Prometheus (the binary at `binary`) scraping 127.0.0.1:<port> for each of
// `target_ports` under job `job`, every 1 s. Stopped (SIGTERM) and its
// directory removed on destruction.
class PrometheusServer {
 public:
  PrometheusServer(const std::string& binary, const std::string& job,
                   const std::vector<int>& target_ports)
      : port_(FreeLoopbackPort()),
        log_(dir_.path() / "prometheus.log"),
        child_(Argv(binary, job, target_ports), log_.string()) {}

  int port() const { return port_; }
  bool Running() { return child_.Poll() < 0; }
  std::string Log() const { return ReadFile(log_); }
  // SIGTERM and wait; the exit status (0 on a clean shutdown).
  int Stop() { return child_.Stop(); }

  // The result vector of an instant query, or an empty array while Prometheus
  // is not up yet (connection refused, not ready) or the query fails.
  nlohmann::json Query(const std::string& promql) const {
    try {
      auto r = HttpGet(port_, "/api/v1/query?query=" + UrlEncode(promql));
      if (r.status != 200) return nlohmann::json::array();
      nlohmann::json body = nlohmann::json::parse(r.body);
      if (body.value("status", "") != "success") return nlohmann::json::array();
      return body["data"]["result"];
    } catch (const std::exception&) {
      return nlohmann::json::array();
    }
  }

  // Repeats `promql` every 250 ms until `done(result)` holds (by default: a
  // non-empty result), Prometheus exits or `timeout` passes; returns the last
  // result. Callers check it (and Running()).
  nlohmann::json WaitFor(
      const std::string& promql,
      const std::function<bool(const nlohmann::json&)>& done =
          [](const nlohmann::json& r) { return !r.empty(); },
      std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    nlohmann::json result = nlohmann::json::array();
    while (Running()) {
      result = Query(promql);
      if (done(result) || std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    return result;
  }

 private:
  std::vector<std::string> Argv(const std::string& binary, const std::string& job,
                                const std::vector<int>& target_ports) {
    std::string targets;
    for (int p : target_ports) {
      targets += (targets.empty() ? "'127.0.0.1:" : ", '127.0.0.1:") + std::to_string(p) + "'";
    }
    auto config = dir_.path() / "prometheus.yml";
    WriteFile(config,
              "global:\n"
              "  scrape_interval: 1s\n"
              "  scrape_timeout: 1s\n"
              "scrape_configs:\n"
              "  - job_name: " + job + "\n"
              "    static_configs:\n"
              "      - targets: [" + targets + "]\n");
    return {binary, "--config.file=" + config.string(),
            "--storage.tsdb.path=" + (dir_.path() / "tsdb").string(),
            "--web.listen-address=127.0.0.1:" + std::to_string(port_), "--log.level=warn"};
  }

  TempDir dir_;  // declared first: the members below use it
  int port_;
  std::filesystem::path log_;
  ChildProcess child_;
};

}  // namespace lpdetr::metrics::testing

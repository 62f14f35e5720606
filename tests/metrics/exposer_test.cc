// The /metrics HTTP listener against real sockets on loopback, and the served
// text checked by `promtool check metrics`.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "server/metrics/metrics.h"
#include "tests/metrics/test_util.h"

#ifndef LPDETR_PROMTOOL
#define LPDETR_PROMTOOL ""
#endif

namespace lpdetr::metrics {
namespace {

using testing::ConnectLoopback;
using testing::HttpGet;
using testing::HttpResponse;
using testing::ParseResponse;
using testing::RawExchange;
using testing::SendAllOrThrow;

std::unique_ptr<Exposer> MustCreate(const std::string& address, std::shared_ptr<Registry> r) {
  auto exposer = Exposer::Create(address, std::move(r));
  if (!exposer.ok()) throw std::runtime_error(exposer.status().ToString());
  return std::move(*exposer);
}

TEST(Exposer, ServesMetricsHealthzAnd404) {
  auto registry = std::make_shared<Registry>();
  Counter& c = registry->AddCounter("lpdetr_http_test_total", "h").Add({{"k", "v"}});
  c.Increment(17);
  auto exposer = MustCreate("127.0.0.1:0", registry);
  ASSERT_GT(exposer->port(), 0);

  HttpResponse metrics = HttpGet(exposer->port(), "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_EQ(metrics.headers["content-type"], "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(metrics.body, registry->Serialize());
  EXPECT_NE(metrics.body.find("lpdetr_http_test_total{k=\"v\"} 17\n"), std::string::npos)
      << metrics.body;

  c.Increment(1);  // the next scrape sees the update
  HttpResponse again = HttpGet(exposer->port(), "/metrics?name[]=x");
  EXPECT_EQ(again.status, 200);
  EXPECT_NE(again.body.find("lpdetr_http_test_total{k=\"v\"} 18\n"), std::string::npos);

  HttpResponse health = HttpGet(exposer->port(), "/healthz");
  EXPECT_EQ(health.status, 200);
  EXPECT_EQ(health.body, "ok\n");

  for (const char* path : {"/", "/metric", "/metrics/", "/healthz/x", "/favicon.ico"}) {
    EXPECT_EQ(HttpGet(exposer->port(), path).status, 404) << path;
  }
}

TEST(Exposer, HeadMethodsAndMalformedRequests) {
  auto registry = std::make_shared<Registry>();
  registry->AddGauge("lpdetr_g", "h").Add({}).Set(1);
  auto exposer = MustCreate("127.0.0.1:0", registry);
  int port = exposer->port();

  std::string head = RawExchange(port, "HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n");
  HttpResponse h = ParseResponse(head);
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.headers["content-length"], std::to_string(registry->Serialize().size()));
  EXPECT_EQ(head.substr(head.find("\r\n\r\n") + 4), "");  // no body

  HttpResponse post = ParseResponse(RawExchange(
      port, "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"));
  EXPECT_EQ(post.status, 405);
  EXPECT_EQ(post.headers["allow"], "GET, HEAD");

  EXPECT_EQ(ParseResponse(RawExchange(port, "garbage\r\n\r\n")).status, 400);
  EXPECT_EQ(ParseResponse(RawExchange(port, "GET /metrics HTTP/2.0\r\n\r\n")).status, 505);
  std::string huge = "GET /metrics HTTP/1.1\r\nX-Filler: " + std::string(40000, 'a');
  EXPECT_EQ(ParseResponse(RawExchange(port, huge)).status, 431);

  // Bare LF line ends (hand-typed requests) are accepted too.
  HttpResponse lf = ParseResponse(RawExchange(port, "GET /healthz HTTP/1.0\nX-A: b\n\n"));
  EXPECT_EQ(lf.status, 200);
  EXPECT_EQ(lf.body, "ok\n");
  EXPECT_EQ(ParseResponse(RawExchange(port, "\r\n\r\n")).status, 400);

  // HTTP/1.0 without keep-alive: the server closes after one response.
  std::string one = RawExchange(port, "GET /healthz HTTP/1.0\r\n\r\n");
  EXPECT_EQ(ParseResponse(one).status, 200);
  EXPECT_EQ(ParseResponse(one).headers["connection"], "close");
}

TEST(Exposer, KeepAliveServesSeveralRequestsOnOneConnection) {
  auto registry = std::make_shared<Registry>();
  Gauge& g = registry->AddGauge("lpdetr_keepalive", "h").Add({});
  auto exposer = MustCreate("127.0.0.1:0", registry);
  int fd = ConnectLoopback(exposer->port());
  std::string buffer;
  auto read_one = [&]() {
    char chunk[4096];
    while (true) {
      size_t head_end = buffer.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        HttpResponse probe = ParseResponse(buffer);
        size_t consumed;
        if (buffer.size() >= head_end + 4 + std::stoul(probe.headers["content-length"])) {
          HttpResponse r = ParseResponse(buffer, &consumed);
          buffer.erase(0, consumed);
          return r;
        }
      }
      ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
      if (n <= 0) throw std::runtime_error("connection closed before a full response");
      buffer.append(chunk, static_cast<size_t>(n));
    }
  };
  for (int i = 1; i <= 3; ++i) {
    g.Set(i * 10);
    SendAllOrThrow(fd, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    HttpResponse r = read_one();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.headers["connection"], "keep-alive");
    EXPECT_NE(r.body.find("lpdetr_keepalive " + std::to_string(i * 10) + "\n"), std::string::npos)
        << r.body;
  }
  // Two pipelined requests in one write get two responses in order.
  SendAllOrThrow(fd, "GET /healthz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n");
  EXPECT_EQ(read_one().status, 200);
  EXPECT_EQ(read_one().status, 404);
  ::close(fd);
}

TEST(Exposer, ManyConcurrentClients) {
  auto registry = std::make_shared<Registry>();
  auto& family = registry->AddCounter("lpdetr_concurrent_total", "h");
  auto exposer = MustCreate("127.0.0.1:0", registry);
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < 8; ++t) {
    clients.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        family.Add({{"t", std::to_string(t)}}).Increment();
        HttpResponse r = HttpGet(exposer->port(), "/metrics");
        if (r.status == 200 && r.body.find("lpdetr_concurrent_total{t=\"" + std::to_string(t) +
                                           "\"}") != std::string::npos) {
          ++ok;
        }
      }
    });
  }
  for (auto& c : clients) c.join();
  EXPECT_EQ(ok.load(), 160);
}

TEST(Exposer, AddressErrorsNameTheAddress) {
  auto registry = std::make_shared<Registry>();
  for (const std::string bad : {"nocolon", "127.0.0.1:99999", "127.0.0.1:abc",
                                "127.0.0.1:", "::1:80", "[::1]80", "[::1:80"}) {
    auto exposer = Exposer::Create(bad, registry);
    ASSERT_FALSE(exposer.ok()) << bad;
    EXPECT_EQ(exposer.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(exposer.status().message().find(bad), std::string::npos)
        << exposer.status().message();
  }
  auto null_registry = Exposer::Create("127.0.0.1:0", nullptr);
  EXPECT_EQ(null_registry.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Exposer, PortInUseIsUnavailable) {
  auto registry = std::make_shared<Registry>();
  auto first = MustCreate("127.0.0.1:0", registry);
  std::string address = "127.0.0.1:" + std::to_string(first->port());
  auto second = Exposer::Create(address, registry);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(second.status().message().find(address), std::string::npos);
}

TEST(Exposer, DestructorStopsListeningEvenWithAnIdleConnection) {
  auto registry = std::make_shared<Registry>();
  auto exposer = MustCreate("127.0.0.1:0", registry);
  int port = exposer->port();
  int idle = ConnectLoopback(port);  // a keep-alive connection, idle after one response
  SendAllOrThrow(idle, "GET /healthz HTTP/1.1\r\n\r\n");
  std::string first;
  char chunk[1024];
  while (first.size() < 4 || first.compare(first.size() - 3, 3, "ok\n") != 0) {
    ssize_t n = ::recv(idle, chunk, sizeof(chunk), 0);
    ASSERT_GT(n, 0) << "connection closed before the response";
    first.append(chunk, static_cast<size_t>(n));
  }
  EXPECT_EQ(ParseResponse(first).status, 200);
  auto start = std::chrono::steady_clock::now();
  exposer.reset();
  // The idle connection's thread must not hold the destructor until its 15 s timeout.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  EXPECT_EQ(::recv(idle, chunk, sizeof(chunk), 0), 0);  // EOF: the server closed it
  ::close(idle);
  EXPECT_THROW(ConnectLoopback(port), std::runtime_error);
}

TEST(Exposer, WildcardHostBinds) {
  auto registry = std::make_shared<Registry>();
  for (const std::string address : {":0", "0.0.0.0:0", "*:0"}) {
    auto exposer = MustCreate(address, registry);
    EXPECT_EQ(HttpGet(exposer->port(), "/healthz").status, 200) << address;
  }
}

TEST(Exposer, Ipv6LoopbackInBrackets) {
  auto registry = std::make_shared<Registry>();
  auto exposer = Exposer::Create("[::1]:0", registry);
  if (!exposer.ok() && exposer.status().code() == absl::StatusCode::kUnavailable) {
    GTEST_SKIP() << "no IPv6 loopback: " << exposer.status();
  }
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_port = htons(static_cast<uint16_t>((*exposer)->port()));
  addr.sin6_addr = in6addr_loopback;
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
      << std::strerror(errno);
  SendAllOrThrow(fd, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
  HttpResponse r = ParseResponse(testing::ReadUntilClose(fd));
  ::close(fd);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ok\n");
}

// promtool's parser and linter accept the served text; a broken text fails it.
TEST(Promtool, CheckMetricsAcceptsServedText) {
  std::string promtool = testing::ToolPath("LPDETR_PROMTOOL", LPDETR_PROMTOOL);
  if (promtool.empty()) GTEST_SKIP() << "promtool not found (Debian package prometheus)";
  // Every kind of metric the service uses, with escapes and non-finite values.
  auto registry = std::make_shared<Registry>();
  registry->AddCounter("lpdetr_requests_total", "gRPC requests by method and code.")
      .Add({{"method", "Detect"}, {"code", "OK"}})
      .Increment(41);
  auto& latency = registry->AddHistogram("lpdetr_request_duration_seconds",
                                         "Request latency in seconds.", LatencyBuckets());
  for (double v : {0.0004, 0.003, 0.02, 0.2, 1.7, 75.0}) {
    latency.Add({{"method", "Detect"}}).Observe(v);
  }
  registry->AddHistogram("lpdetr_batch_size", "Images per batch.", LinearBuckets(1, 1, 8))
      .Add({})
      .Observe(3);
  registry->AddGauge("lpdetr_queue_depth", "Images waiting.").Add({}).Set(5);
  registry->AddGauge("lpdetr_model_info", "Loaded model (value 1).")
      .Add({{"name", "lp-detr"}, {"variant", "r50 \"small\"\\x\ny"}, {"version", "1"}})
      .Set(1);
  auto& odd = registry->AddGauge("lpdetr_odd_values", "Non-finite \\ values\nhere.");
  odd.Add({{"kind", "+inf"}}).Set(INFINITY);
  odd.Add({{"kind", "-inf"}}).Set(-INFINITY);
  odd.Add({{"kind", "nan"}}).Set(NAN);
  registry->AddCounter("lpdetr_images_processed_total", "Images processed.").Add({});
  auto exposer = MustCreate("127.0.0.1:0", registry);
  HttpResponse served = HttpGet(exposer->port(), "/metrics");
  ASSERT_EQ(served.status, 200);

  testing::TempDir dir;
  auto good = dir.path() / "good.prom";
  testing::WriteFile(good, served.body);
  std::string output;
  EXPECT_EQ(testing::RunProgram({promtool, "check", "metrics"}, good.string(), &output), 0)
      << output << "\n--- served text ---\n"
      << served.body;

  // The check can fail: an unterminated label value and an unsuffixed counter.
  auto bad = dir.path() / "bad.prom";
  testing::WriteFile(bad, "# TYPE lpdetr_x counter\nlpdetr_x{a=\"b} 1\n");
  EXPECT_NE(testing::RunProgram({promtool, "check", "metrics"}, bad.string(), &output), 0)
      << output;
  testing::WriteFile(bad, "# HELP lpdetr_x h\n# TYPE lpdetr_x counter\nlpdetr_x 1\n");
  EXPECT_NE(testing::RunProgram({promtool, "check", "metrics"}, bad.string(), &output), 0)
      << output;
}

}  // namespace
}  // namespace lpdetr::metrics

// `lpdetr-client bench`: closed-loop load benchmark of Detect. `concurrency`
// threads each keep one request in flight (the same image), `warmup` requests
// first, then `requests` measured ones. Prints throughput (images/s), latency
// percentiles, failures by status code and the server's mean batch size, and a
// final machine-readable "RESULT key=value ..." line (bench/load.sh parses it).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "commands.h"
#include "lpdetr/v1/detection.grpc.pb.h"

namespace lpdetr::client {
namespace {

using Clock = std::chrono::steady_clock;

// Nearest-rank percentile of sorted values (p in [0, 100]).
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0.0;
  const size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * sorted.size()));
  return sorted[std::min(sorted.size(), std::max<size_t>(rank, 1)) - 1];
}

struct Sample {
  double latency_seconds = 0;
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string error;
  int batch_size = 0;
  double queue_seconds = 0;
  double inference_seconds = 0;
};

}  // namespace

int RunBench(const ClientOptions& options) {
  if (options.image.empty()) throw std::invalid_argument("bench: --image is required");
  if (options.requests < 1) {
    throw std::invalid_argument("bench: --requests must be >= 1, got " +
                                std::to_string(options.requests));
  }
  const int warmup = options.warmup < 0 ? options.concurrency : options.warmup;
  const std::string data = ReadFileOrThrow(options.image);
  lpdetr::v1::DetectRequest request;
  FillDetectOptions(options.filter, request.mutable_options());
  request.set_model(options.model);
  for (int i = 0; i < options.images_per_request; ++i) {
    auto* image = request.add_images();
    image->set_data(data);
    image->set_id(std::to_string(i));
  }
  auto stub = lpdetr::v1::DetectionService::NewStub(MakeChannel(options.connection));

  // Runs `count` requests with options.concurrency threads.
  auto run = [&](int count, std::vector<Sample>* samples) {
    samples->assign(static_cast<size_t>(count), Sample());
    std::atomic<int> next{0};
    auto worker = [&] {
      for (int i = next++; i < count; i = next++) {
        lpdetr::v1::DetectRequest r = request;
        r.set_request_id("bench-" + std::to_string(i));
        grpc::ClientContext context;
        ApplyDeadline(options.connection, &context);
        lpdetr::v1::DetectResponse response;
        const auto start = Clock::now();
        const grpc::Status status = stub->Detect(&context, r, &response);
        Sample& s = (*samples)[static_cast<size_t>(i)];
        s.latency_seconds = std::chrono::duration<double>(Clock::now() - start).count();
        s.code = status.error_code();
        if (!status.ok()) {
          s.error = status.error_message();
        } else {
          s.batch_size = response.timing().batch_size();
          s.queue_seconds = response.timing().queue_seconds();
          s.inference_seconds = response.timing().inference_seconds();
        }
      }
    };
    std::vector<std::thread> threads;
    for (int t = 0; t < std::min(options.concurrency, count); ++t) threads.emplace_back(worker);
    for (auto& t : threads) t.join();
  };

  std::printf("bench: %s, concurrency %d, %d requests of %d image%s (%s), %d warm-up\n",
              options.connection.address.c_str(), options.concurrency, options.requests,
              options.images_per_request, options.images_per_request == 1 ? "" : "s",
              options.image.c_str(), warmup);
  std::fflush(stdout);
  std::vector<Sample> samples;
  if (warmup > 0) run(warmup, &samples);
  const auto start = Clock::now();
  run(options.requests, &samples);
  const double wall = std::chrono::duration<double>(Clock::now() - start).count();

  std::vector<double> latencies;
  std::map<std::string, int> errors;
  std::map<std::string, std::string> first_error;
  double batch_sum = 0, queue_sum = 0, inference_sum = 0;
  for (const Sample& s : samples) {
    if (s.code == grpc::StatusCode::OK) {
      latencies.push_back(s.latency_seconds);
      batch_sum += s.batch_size;
      queue_sum += s.queue_seconds;
      inference_sum += s.inference_seconds;
    } else {
      const std::string code = StatusCodeName(s.code);
      ++errors[code];
      first_error.emplace(code, s.error);
    }
  }
  std::sort(latencies.begin(), latencies.end());
  const size_t ok = latencies.size();
  const double images_per_s = ok * options.images_per_request / wall;
  const double p50 = Percentile(latencies, 50) * 1e3;
  const double p90 = Percentile(latencies, 90) * 1e3;
  const double p99 = Percentile(latencies, 99) * 1e3;
  const double max = latencies.empty() ? 0.0 : latencies.back() * 1e3;
  const double mean_batch = ok ? batch_sum / ok : 0.0;

  std::printf("ok %zu, failed %zu in %.2f s\n", ok, samples.size() - ok, wall);
  for (const auto& [code, n] : errors) {
    std::printf("  %s: %d (e.g. %s)\n", code.c_str(), n, first_error[code].c_str());
  }
  std::printf("throughput: %.3f images/s (%.3f requests/s)\n", images_per_s, ok / wall);
  std::printf("latency ms: p50 %.1f  p90 %.1f  p99 %.1f  max %.1f\n", p50, p90, p99, max);
  if (ok) {
    std::printf("server: mean batch size %.2f, mean queue %.1f ms, mean inference %.1f ms\n",
                mean_batch, queue_sum / ok * 1e3, inference_sum / ok * 1e3);
  }
  std::printf(
      "RESULT concurrency=%d requests=%d ok=%zu failed=%zu seconds=%.3f images_per_s=%.4f "
      "p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f mean_batch=%.3f\n",
      options.concurrency, options.requests, ok, samples.size() - ok, wall, images_per_s, p50,
      p90, p99, max, mean_batch);
  return ok == samples.size() ? 0 : 1;
}

}  // namespace lpdetr::client

// A small Prometheus metrics registry (text exposition format 0.0.4) and its
// HTTP listener. prometheus-cpp is not in this project's package registries;
// this API follows prometheus-cpp's core (Registry, Family<T>::Add(labels),
// Counter / Gauge / Histogram) so that it can replace this implementation
// behind the same calls.
//
// Thread-safety: every method may be called from any thread. Counter, Gauge
// and Histogram updates are lock-free or hold a per-metric lock briefly;
// Family::Add takes the family's lock and returns a reference that stays
// valid for the registry's lifetime.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lpdetr::metrics {

using Labels = std::map<std::string, std::string>;

class Counter {
 public:
  // Adds `v` (must be >= 0; negative values are ignored).
  void Increment(double v = 1.0);
  double Value() const;
  // Implementation-defined state follows (atomic double).
 private:
  friend class Registry;
  struct State;
  std::shared_ptr<State> state_;
};

class Gauge {
 public:
  void Set(double v);
  void Increment(double v = 1.0);
  void Decrement(double v = 1.0);
  double Value() const;

 private:
  friend class Registry;
  struct State;
  std::shared_ptr<State> state_;
};

class Histogram {
 public:
  // Cumulative buckets (le = each bound, plus +Inf), _sum and _count.
  void Observe(double v);

 private:
  friend class Registry;
  struct State;
  std::shared_ptr<State> state_;
};

// Default latency buckets in seconds (1 ms .. 60 s) and batch-size buckets.
std::vector<double> LatencyBuckets();
std::vector<double> LinearBuckets(double start, double width, int count);

// One metric name with a help text and labelled children.
template <typename T>
class Family {
 public:
  // Returns the child with these labels, creating it at zero.
  // Label names must match [a-zA-Z_][a-zA-Z0-9_]*; values are escaped.
  T& Add(const Labels& labels);
  // Removes the child with these labels from the exposition (a series that
  // no longer exists, e.g. a finished job's). References to it obtained
  // from Add become invalid. Returns whether it existed.
  bool Remove(const Labels& labels);

 private:
  friend class Registry;
  struct State;
  std::shared_ptr<State> state_;
};

class Registry {
 public:
  Registry();
  ~Registry();
  // Metric names must match [a-zA-Z_:][a-zA-Z0-9_:]* and be unique in the
  // registry (std::invalid_argument otherwise). Counter names end in _total.
  Family<Counter>& AddCounter(const std::string& name, const std::string& help);
  Family<Gauge>& AddGauge(const std::string& name, const std::string& help);
  Family<Histogram>& AddHistogram(const std::string& name, const std::string& help,
                                  std::vector<double> buckets);
  // The whole registry in the Prometheus text format (version 0.0.4).
  std::string Serialize() const;

 private:
  // Registers a family whose children `make` creates (defined in metrics.cc).
  template <typename T>
  Family<T>& AddFamily(const std::string& name, const std::string& help, bool histogram,
                       std::function<std::unique_ptr<T>()> make);

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Serves GET /metrics (text/plain; version=0.0.4) from a registry on its own
// threads, plus GET /healthz ("ok"). Other paths: 404.
class Exposer {
 public:
  // address "host:port"; port 0 picks a free port (see port()).
  static absl::StatusOr<std::unique_ptr<Exposer>> Create(const std::string& address,
                                                         std::shared_ptr<Registry> registry);
  ~Exposer();  // stops listening and joins its threads
  int port() const;

 private:
  Exposer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace lpdetr::metrics

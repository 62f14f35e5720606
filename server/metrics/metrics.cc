// The project's own Prometheus registry: counters, gauges and histograms in
// labelled families, serialized in the text exposition format 0.0.4.
#include "server/metrics/metrics.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <mutex>
#include <set>
#include <stdexcept>
#include <utility>

namespace lpdetr::metrics {
namespace {

// Adds `delta` to an atomic double (C++17 has no fetch_add for floating point).
void AtomicAdd(std::atomic<double>& target, double delta) {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + delta, std::memory_order_relaxed)) {
  }
}

bool IsMetricNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
}
bool IsMetricNameChar(char c) { return IsMetricNameStart(c) || (c >= '0' && c <= '9'); }
bool IsLabelNameStart(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool IsLabelNameChar(char c) { return IsLabelNameStart(c) || (c >= '0' && c <= '9'); }

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void ValidateMetricName(const std::string& name) {
  bool ok = !name.empty() && IsMetricNameStart(name[0]) &&
            std::all_of(name.begin(), name.end(), IsMetricNameChar);
  if (!ok) {
    throw std::invalid_argument("invalid metric name '" + name +
                                "': must match [a-zA-Z_:][a-zA-Z0-9_:]*");
  }
  if (name.rfind("__", 0) == 0) {
    throw std::invalid_argument("invalid metric name '" + name +
                                "': names starting with '__' are reserved");
  }
}

void ValidateLabelName(const std::string& metric, const std::string& label, bool histogram) {
  bool ok = !label.empty() && IsLabelNameStart(label[0]) &&
            std::all_of(label.begin(), label.end(), IsLabelNameChar);
  if (!ok) {
    throw std::invalid_argument("invalid label name '" + label + "' for metric '" + metric +
                                "': must match [a-zA-Z_][a-zA-Z0-9_]*");
  }
  if (label.rfind("__", 0) == 0) {
    throw std::invalid_argument("invalid label name '" + label + "' for metric '" + metric +
                                "': names starting with '__' are reserved");
  }
  if (histogram && label == "le") {
    throw std::invalid_argument("invalid label name 'le' for histogram '" + metric +
                                "': 'le' is reserved for bucket bounds");
  }
}

// Label values: backslash, double quote and line feed are escaped.
void AppendEscapedLabelValue(std::string& out, const std::string& value) {
  for (char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
}

// HELP text: backslash and line feed are escaped (quotes are not).
void AppendEscapedHelp(std::string& out, const std::string& help) {
  for (char c : help) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
}

// Numbers as Prometheus parses them: +Inf / -Inf / NaN, integral values without
// exponent or fraction, others in the shortest form that reads back exactly.
std::string FormatValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  if (std::trunc(v) == v && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v));
    return buf;
  }
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

}  // namespace

// ---------------------------------------------------------------------------
// Metric states.

struct Counter::State {
  std::atomic<double> value{0.0};
};

void Counter::Increment(double v) {
  if (!(v >= 0.0)) return;  // negative and NaN increments are ignored
  AtomicAdd(state_->value, v);
}
double Counter::Value() const { return state_->value.load(std::memory_order_relaxed); }

struct Gauge::State {
  std::atomic<double> value{0.0};
};

void Gauge::Set(double v) { state_->value.store(v, std::memory_order_relaxed); }
void Gauge::Increment(double v) { AtomicAdd(state_->value, v); }
void Gauge::Decrement(double v) { AtomicAdd(state_->value, -v); }
double Gauge::Value() const { return state_->value.load(std::memory_order_relaxed); }

struct Histogram::State {
  explicit State(std::shared_ptr<const std::vector<double>> b)
      : bounds(std::move(b)), counts(bounds->size() + 1, 0) {}
  std::shared_ptr<const std::vector<double>> bounds;  // finite, strictly increasing
  mutable std::mutex mu;
  std::vector<uint64_t> counts;  // per bucket, not cumulative; last is (max bound, +Inf)
  double sum = 0.0;
  uint64_t count = 0;
};

void Histogram::Observe(double v) {
  if (std::isnan(v)) return;  // NaN would poison _sum and fits no bucket
  const auto& bounds = *state_->bounds;
  size_t bucket = std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin();
  std::lock_guard<std::mutex> lock(state_->mu);
  ++state_->counts[bucket];
  state_->sum += v;
  ++state_->count;
}

std::vector<double> LatencyBuckets() {
  return {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0};
}

std::vector<double> LinearBuckets(double start, double width, int count) {
  if (count < 1) {
    throw std::invalid_argument("LinearBuckets: count must be >= 1, got " + std::to_string(count));
  }
  if (!(width > 0.0) || !std::isfinite(width) || !std::isfinite(start)) {
    throw std::invalid_argument(
        "LinearBuckets: width must be finite and > 0 and start finite, got start " +
        FormatValue(start) + " width " + FormatValue(width));
  }
  std::vector<double> out;
  out.reserve(count);
  for (int i = 0; i < count; ++i) out.push_back(start + width * i);
  return out;
}

// ---------------------------------------------------------------------------
// Families.

template <typename T>
struct Family<T>::State {
  std::string name;
  bool histogram = false;
  std::function<std::unique_ptr<T>()> make;  // a fresh child at zero
  mutable std::mutex mu;
  std::map<Labels, std::unique_ptr<T>> children;
};

template <typename T>
T& Family<T>::Add(const Labels& labels) {
  std::lock_guard<std::mutex> lock(state_->mu);
  auto it = state_->children.find(labels);
  if (it == state_->children.end()) {
    // Label names are checked once, when the child is created.
    for (const auto& label_value : labels) {
      ValidateLabelName(state_->name, label_value.first, state_->histogram);
    }
    it = state_->children.emplace(labels, state_->make()).first;
  }
  return *it->second;
}

template <typename T>
bool Family<T>::Remove(const Labels& labels) {
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->children.erase(labels) > 0;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

// ---------------------------------------------------------------------------
// Registry.

struct Registry::Impl {
  std::mutex mu;
  std::set<std::string> series_names;  // every name a family writes, for collisions
  // Families by name: serialization order is by name, whatever the registration order.
  struct Entry {
    std::string help;
    std::unique_ptr<Family<Counter>> counter;
    std::unique_ptr<Family<Gauge>> gauge;
    std::unique_ptr<Family<Histogram>> histogram;
  };
  std::map<std::string, Entry> families;

  // Reserves the names `name` writes (histograms also write _bucket/_sum/_count).
  Entry& Reserve(const std::string& name, bool histogram) {
    ValidateMetricName(name);
    std::vector<std::string> names = {name};
    if (histogram) {
      names.push_back(name + "_bucket");
      names.push_back(name + "_sum");
      names.push_back(name + "_count");
    }
    for (const auto& n : names) {
      if (series_names.count(n)) {
        throw std::invalid_argument("metric name '" + name +
                                    "' is already registered or collides with '" + n + "'");
      }
    }
    series_names.insert(names.begin(), names.end());
    return families[name];
  }
};

Registry::Registry() : impl_(std::make_unique<Impl>()) {}
Registry::~Registry() = default;

template <typename T>
Family<T>& Registry::AddFamily(const std::string& name, const std::string& help, bool histogram,
                               std::function<std::unique_ptr<T>()> make) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto& entry = impl_->Reserve(name, histogram);
  entry.help = help;
  std::unique_ptr<Family<T>>* slot;
  if constexpr (std::is_same_v<T, Counter>) {
    slot = &entry.counter;
  } else if constexpr (std::is_same_v<T, Gauge>) {
    slot = &entry.gauge;
  } else {
    slot = &entry.histogram;
  }
  slot->reset(new Family<T>());
  auto state = std::make_shared<typename Family<T>::State>();
  state->name = name;
  state->histogram = histogram;
  state->make = std::move(make);
  (*slot)->state_ = std::move(state);
  return **slot;
}

Family<Counter>& Registry::AddCounter(const std::string& name, const std::string& help) {
  if (!EndsWith(name, "_total")) {
    ValidateMetricName(name);
    throw std::invalid_argument("counter name '" + name + "' must end in '_total'");
  }
  return AddFamily<Counter>(name, help, false, [] {
    auto c = std::make_unique<Counter>();
    c->state_ = std::make_shared<Counter::State>();
    return c;
  });
}

Family<Gauge>& Registry::AddGauge(const std::string& name, const std::string& help) {
  return AddFamily<Gauge>(name, help, false, [] {
    auto g = std::make_unique<Gauge>();
    g->state_ = std::make_shared<Gauge::State>();
    return g;
  });
}

Family<Histogram>& Registry::AddHistogram(const std::string& name, const std::string& help,
                                          std::vector<double> buckets) {
  // A trailing +Inf is implicit; any other non-finite or unordered bound is an error.
  if (!buckets.empty() && std::isinf(buckets.back()) && buckets.back() > 0) buckets.pop_back();
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (!std::isfinite(buckets[i])) {
      throw std::invalid_argument("histogram '" + name + "': bucket bound " +
                                  FormatValue(buckets[i]) + " is not finite");
    }
    if (i > 0 && !(buckets[i] > buckets[i - 1])) {
      throw std::invalid_argument("histogram '" + name +
                                  "': bucket bounds must increase strictly, got " +
                                  FormatValue(buckets[i - 1]) + " then " + FormatValue(buckets[i]));
    }
  }
  auto bounds = std::make_shared<const std::vector<double>>(std::move(buckets));
  return AddFamily<Histogram>(name, help, true, [bounds] {
    auto h = std::make_unique<Histogram>();
    h->state_ = std::make_shared<Histogram::State>(bounds);
    return h;
  });
}

namespace {

// `name{a="x",b="y"} value\n`; `extra` is one more label (le) written last.
void AppendSample(std::string& out, const std::string& name, const Labels& labels,
                  const std::pair<std::string, std::string>* extra, double value) {
  out += name;
  if (!labels.empty() || extra) {
    out += '{';
    bool first = true;
    auto append = [&](const std::string& k, const std::string& v) {
      if (!first) out += ',';
      first = false;
      out += k;
      out += "=\"";
      AppendEscapedLabelValue(out, v);
      out += '"';
    };
    for (const auto& [k, v] : labels) append(k, v);
    if (extra) append(extra->first, extra->second);
    out += '}';
  }
  out += ' ';
  out += FormatValue(value);
  out += '\n';
}

void AppendHeader(std::string& out, const std::string& name, const std::string& help,
                  const char* type) {
  out += "# HELP ";
  out += name;
  out += ' ';
  AppendEscapedHelp(out, help);
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

}  // namespace

std::string Registry::Serialize() const {
  std::string out;
  std::lock_guard<std::mutex> lock(impl_->mu);
  for (const auto& [name, entry] : impl_->families) {
    if (entry.counter) {
      AppendHeader(out, name, entry.help, "counter");
      auto& fs = *entry.counter->state_;
      std::lock_guard<std::mutex> family_lock(fs.mu);
      for (const auto& [labels, child] : fs.children) {
        AppendSample(out, name, labels, nullptr, child->Value());
      }
    } else if (entry.gauge) {
      AppendHeader(out, name, entry.help, "gauge");
      auto& fs = *entry.gauge->state_;
      std::lock_guard<std::mutex> family_lock(fs.mu);
      for (const auto& [labels, child] : fs.children) {
        AppendSample(out, name, labels, nullptr, child->Value());
      }
    } else if (entry.histogram) {
      AppendHeader(out, name, entry.help, "histogram");
      auto& fs = *entry.histogram->state_;
      std::lock_guard<std::mutex> family_lock(fs.mu);
      for (const auto& [labels, child] : fs.children) {
        const Histogram::State& hs = *child->state_;
        std::vector<uint64_t> counts;
        double sum;
        uint64_t count;
        {
          std::lock_guard<std::mutex> metric_lock(hs.mu);
          counts = hs.counts;
          sum = hs.sum;
          count = hs.count;
        }
        const auto& bounds = *hs.bounds;
        uint64_t cumulative = 0;
        for (size_t i = 0; i <= bounds.size(); ++i) {
          cumulative += counts[i];
          std::pair<std::string, std::string> le{
              "le", i < bounds.size() ? FormatValue(bounds[i]) : std::string("+Inf")};
          AppendSample(out, name + "_bucket", labels, &le, static_cast<double>(cumulative));
        }
        AppendSample(out, name + "_sum", labels, nullptr, sum);
        AppendSample(out, name + "_count", labels, nullptr, static_cast<double>(count));
      }
    }
  }
  return out;
}

}  // namespace lpdetr::metrics

// Shared helpers of the benchmark programs.
//
// Peak memory is measured per configuration in a fresh child process (the
// benchmark re-runs itself with arguments naming one configuration), so that
// one configuration's allocations never inflate another's figure: the child's
// peak RSS comes from wait4(). Times are medians of repeated runs.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace lpdetr::bench {

struct ChildResult {
  int exit_code = -1;      // exit status, or 128 + signal
  std::string output;      // the child's stdout
  double peak_rss_mib = 0;  // maximum resident set size of the child
};

// Runs this program (/proc/self/exe) with `args` and waits for it.
ChildResult RunSelf(const std::vector<std::string>& args);

// Median of `values` (0 when empty).
double Median(std::vector<double> values);

// Calls fn() `warmup` times, then `iters` times, and returns the median
// wall time of one call in seconds.
double MedianSeconds(const std::function<void()>& fn, int warmup, int iters);

// Peak resident set size of this process so far, in MiB.
double PeakRssMib();

// Makes peak RSS follow the live tensors, for children that measure memory:
// a fixed glibc mmap threshold of 128 KiB puts every larger block in its own
// mapping, returned to the kernel on free. (glibc's default raises the
// threshold to the largest block freed so far, up to 32 MiB, after which
// freed blocks stay in the heap and the figure depends on allocation order.)
// The server and lpdetr-model do the opposite (RetainFreedMemory) for speed.
void TrackLiveMemory();

}  // namespace lpdetr::bench

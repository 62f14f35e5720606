// Process-level numerics setup for programs that run the model on CPU.
//
// Math libraries pick their kernels when they load: OpenBLAS from the CPU
// model name (falling back to ~4x slower generic kernels on virtual CPUs that
// report a generic model), oneDNN from the instruction sets. Two modes:
//   kFast       the fastest kernels for this CPU (OPENBLAS_CORETYPE SkylakeX on
//               AVX-512, Haswell on AVX2), all cores. The default everywhere.
//   kReference  the numerics the official implementation's parity fixtures
//               were produced with (OpenBLAS Haswell kernels with 2 threads,
//               oneDNN limited to AVX2, one ATen thread), so that outputs
//               match them bit for bit on x86-64 CPUs with AVX2. LP-DETR's
//               decoder amplifies 1e-7 input differences into visible output
//               differences, so parity with a reference needs its exact
//               numerics, not just the same maths.
// Both modes make idle OpenMP workers and idle OpenBLAS workers sleep
// (OMP_WAIT_POLICY=PASSIVE, OPENBLAS_THREAD_TIMEOUT=4), so that neither pool
// spins on cores the other needs.
// Variables the user already set are left alone.
#pragma once

#include <chrono>
#include <string>
#include <utility>
#include <vector>

namespace lpdetr {

enum class Numerics { kFast, kReference };

// Sets the math libraries' environment for `numerics` and re-executes the
// program once when a variable read at load time had to change. Call first
// thing in main(); returns when no re-exec is needed (or it failed).
void ConfigureProcess(char** argv, Numerics numerics);

// The numerics a command line asks for (`--numerics fast|reference` or
// `--numerics=...` among argv[first..argc)), `fallback` when absent. Read
// before any library work, for ConfigureProcess; a bad value is left to the
// command's own flag parsing to report.
Numerics NumericsFromArgs(int argc, char** argv, int first, Numerics fallback);

// Tunes glibc malloc to keep freed memory for reuse: blocks up to 32 MiB come
// from the heap instead of a fresh mmap each, and the heap top is given back
// only above 1 GiB free. Steady-state inference then runs without page faults
// (R50 800x1066: 0.36 s of kernel time per image less), at the price of
// resident memory staying near its high-water mark. For long-running
// inference programs (the server, lpdetr-model); benchmarks that measure an
// operator's memory by peak RSS leave it off. No-op unless glibc; the user's
// GLIBC_TUNABLES or MALLOC_*_ variables win.
void RetainFreedMemory();

// Gives the free memory of every malloc arena back to the system
// (glibc malloc_trim(0)); returns whether any was released. For the moments
// a long-running process knows its high-water mark has passed, e.g. after a
// server released a replaced model version: RetainFreedMemory's trim
// threshold would otherwise keep that memory, and each worker thread's arena
// its own share. No-op (false) unless glibc.
bool ReleaseFreedMemory();

// Which implementation the model's hot operators (the relation weights and
// multi-scale deformable attention) run:
//   kKernels   the fused custom ops of model/ops (default),
//   kComposed  the composed ATen reference implementations, whose float
//              operations match the official code exactly.
enum class OpBackend { kKernels, kComposed };

// OpenBLAS's own thread count (it ignores at::set_num_threads), set for a
// scope and restored after it. Found at run time: with another BLAS (the
// reference one has no threads) it does nothing. Callers that run matrix
// products on several threads at once use 1, so that the threads do not
// oversubscribe the cores and each product sums in one fixed order.
class ScopedBlasThreads {
 public:
  explicit ScopedBlasThreads(int threads);
  ~ScopedBlasThreads();
  ScopedBlasThreads(const ScopedBlasThreads&) = delete;
  ScopedBlasThreads& operator=(const ScopedBlasThreads&) = delete;

 private:
  void (*set_)(int) = nullptr;
  int saved_ = 1;
};

// Process-wide operator backend (thread-safe to read while models run).
void SetOpBackend(OpBackend backend);
OpBackend GetOpBackend();

// Applies the in-process part of `numerics`: LibTorch intra-op threads (1 in
// reference mode, else `threads`, 0 = all cores available), OpenBLAS's thread
// count (set to `threads` when it is given, > 0, in fast mode; left as it is
// otherwise) and the operator backend (kComposed in reference mode, kKernels
// otherwise).
void ApplyNumerics(Numerics numerics, int threads);

// Wall-clock, calling-thread CPU time and whole-process CPU time breakdown of
// model forwards by named stage, for benchmarks. With one ATen and one BLAS
// thread the thread CPU time is all the work, and robust on a machine shared
// with other jobs; process CPU / (wall x threads) is how well a stage keeps
// the cores busy.
// Install one on the calling thread with SetStageTimer; the model's
// ScopedStage markers then add their elapsed time to it (nested stages are
// recorded with their depth). With none installed a marker costs one
// thread-local load.
class StageTimer {
 public:
  struct Entry {
    std::string path;  // "parent/child"
    std::string name;  // last component
    int depth = 0;     // 0 = top level
    double seconds = 0;      // wall clock
    double cpu_seconds = 0;  // CPU time of the calling thread only
    double process_cpu_seconds = 0;  // CPU time of all threads of the process
    long calls = 0;
  };
  void Add(const std::string& path, int depth, double seconds, double cpu_seconds,
           double process_cpu_seconds);
  // The entry of `path`, created (zero time) if new.
  Entry& Find(const std::string& path, int depth);
  void Clear() { entries_.clear(); }
  // In order of first start (a parent before its children).
  const std::vector<Entry>& entries() const { return entries_; }

 private:
  std::vector<Entry> entries_;
};

// Prints `timer`'s stages as a table on stdout, each figure divided by `per`
// (images or steps, named by `unit`): wall clock, the calling thread's CPU
// time, the whole process's CPU time and busy = process CPU / (wall x
// intra-op threads). Nested stages are indented and included in their
// parent; "(other)" is `total_per` minus the top-level stages.
void PrintStageTable(const StageTimer& timer, double per, const char* unit, double total_per);

// Installs `timer` for the calling thread (nullptr = off); returns the previous one.
StageTimer* SetStageTimer(StageTimer* timer);

// Times its scope as stage `name` (a string literal) when a timer is installed.
class ScopedStage {
 public:
  explicit ScopedStage(const char* name);
  ~ScopedStage();
  ScopedStage(const ScopedStage&) = delete;
  ScopedStage& operator=(const ScopedStage&) = delete;

 private:
  StageTimer* timer_;
  std::string path_;
  int depth_ = 0;
  std::chrono::steady_clock::time_point start_;
  double cpu_start_ = 0;
  double process_cpu_start_ = 0;
};

}  // namespace lpdetr

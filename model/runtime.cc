#include "model/runtime.h"

#include <dlfcn.h>
#include <time.h>
#include <unistd.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <ATen/Parallel.h>

#include "model/ops/cpu_isa.h"

namespace lpdetr {
namespace {

constexpr const char* kMarker = "LPDETR_NUMERICS_CONFIGURED";

std::atomic<OpBackend> g_op_backend{OpBackend::kKernels};

thread_local StageTimer* t_stage_timer = nullptr;
thread_local std::vector<const char*> t_stage_stack;

double CpuSeconds(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Sets name=value unless the user set it; returns whether it changed.
bool SetDefault(const char* name, const char* value) {
  if (std::getenv(name) != nullptr) return false;
  setenv(name, value, 1);
  return true;
}

}  // namespace

// By default glibc serves every block above a dynamic threshold with a fresh
// mmap and gives it back on free, and trims the heap top above ~128 KiB, so
// each inference faulted in its activations again: ~127k page faults and
// 0.36 s of kernel time per R50 800x1066 image (10% of the wall time).
void RetainFreedMemory() {
#if defined(__GLIBC__)
  if (std::getenv("GLIBC_TUNABLES") != nullptr) return;
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr) {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum: larger blocks still use mmap
  }
  if (std::getenv("MALLOC_TRIM_THRESHOLD_") == nullptr) {
    mallopt(M_TRIM_THRESHOLD, 1 << 30);  // give memory back only above 1 GiB free at the top
  }
  if (std::getenv("MALLOC_TOP_PAD_") == nullptr) {
    mallopt(M_TOP_PAD, 64 << 20);  // grow the heap in 64 MiB steps
  }
#endif
}

bool ReleaseFreedMemory() {
#if defined(__GLIBC__)
  return malloc_trim(0) != 0;
#else
  return false;
#endif
}

void ConfigureProcess(char** argv, Numerics numerics) {
  if (std::getenv(kMarker) != nullptr) return;  // already re-executed
  // Idle OpenMP workers sleep instead of spinning: ATen's OpenMP pool and
  // OpenBLAS's own threads share the cores, and spinning workers stole half
  // the CPU time from BLAS (2-core machine: 2x the CPU time per image).
  bool changed = SetDefault("OMP_WAIT_POLICY", "PASSIVE");
  // Likewise OpenBLAS's idle workers: they sched_yield()-spin for 2^28 cycles
  // after each GEMM by default, taking a core from ATen's threads running the
  // non-GEMM ops in between (22% of an R50 inference's CPU time); 2^4 cycles
  // makes them sleep at once.
  changed |= SetDefault("OPENBLAS_THREAD_TIMEOUT", "4");
  if (numerics == Numerics::kReference) {
    if (ops::CpuSupports(ops::CpuIsa::kAvx2)) {
      changed |= SetDefault("OPENBLAS_CORETYPE", "Haswell");
      changed |= SetDefault("ONEDNN_MAX_CPU_ISA", "AVX2");
      changed |= SetDefault("DNNL_MAX_CPU_ISA", "AVX2");
    }
    changed |= SetDefault("OPENBLAS_NUM_THREADS", "2");
  } else if (ops::CpuSupports(ops::CpuIsa::kAvx512)) {
    changed |= SetDefault("OPENBLAS_CORETYPE", "SkylakeX");
  } else if (ops::CpuSupports(ops::CpuIsa::kAvx2)) {
    changed |= SetDefault("OPENBLAS_CORETYPE", "Haswell");
  }
  if (!changed) return;
  setenv(kMarker, "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the kernels the libraries chose.
}

ScopedBlasThreads::ScopedBlasThreads(int threads) {
  set_ = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  auto get = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  if (set_ == nullptr || get == nullptr) {
    set_ = nullptr;
    return;
  }
  saved_ = get();
  set_(threads);
}

ScopedBlasThreads::~ScopedBlasThreads() {
  if (set_ != nullptr) set_(saved_);
}

void SetOpBackend(OpBackend backend) { g_op_backend.store(backend); }

OpBackend GetOpBackend() { return g_op_backend.load(); }

void ApplyNumerics(Numerics numerics, int threads) {
  SetOpBackend(numerics == Numerics::kReference ? OpBackend::kComposed : OpBackend::kKernels);
  if (numerics == Numerics::kReference) {
    threads = 1;
  } else if (threads <= 0) {
    threads = static_cast<int>(std::thread::hardware_concurrency());
    if (threads <= 0) threads = 1;
  } else {
    // An explicit count bounds OpenBLAS's own pool too (it ignores
    // at::set_num_threads), so that `--threads 1` computes on one core.
    // Reference numerics keep the pool ConfigureProcess gave them.
    auto set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    if (set != nullptr) set(threads);
  }
  at::set_num_threads(threads);
}

// ---------------------------------------------------------------------------
StageTimer::Entry& StageTimer::Find(const std::string& path, int depth) {
  for (auto& e : entries_) {
    if (e.path == path) return e;
  }
  const size_t slash = path.rfind('/');
  entries_.push_back(
      {path, slash == std::string::npos ? path : path.substr(slash + 1), depth, 0.0, 0.0, 0.0, 0});
  return entries_.back();
}

void StageTimer::Add(const std::string& path, int depth, double seconds, double cpu_seconds,
                     double process_cpu_seconds) {
  Entry& e = Find(path, depth);
  e.seconds += seconds;
  e.cpu_seconds += cpu_seconds;
  e.process_cpu_seconds += process_cpu_seconds;
  ++e.calls;
}

StageTimer* SetStageTimer(StageTimer* timer) {
  StageTimer* previous = t_stage_timer;
  t_stage_timer = timer;
  t_stage_stack.clear();
  return previous;
}

ScopedStage::ScopedStage(const char* name) : timer_(t_stage_timer) {
  if (timer_ == nullptr) return;
  for (const char* n : t_stage_stack) {
    path_ += n;
    path_ += '/';
  }
  path_ += name;
  depth_ = static_cast<int>(t_stage_stack.size());
  t_stage_stack.push_back(name);
  timer_->Find(path_, depth_);  // entries in order of first start
  cpu_start_ = CpuSeconds(CLOCK_THREAD_CPUTIME_ID);
  process_cpu_start_ = CpuSeconds(CLOCK_PROCESS_CPUTIME_ID);
  start_ = std::chrono::steady_clock::now();
}

ScopedStage::~ScopedStage() {
  if (timer_ == nullptr) return;
  const double dt =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double cpu = CpuSeconds(CLOCK_THREAD_CPUTIME_ID) - cpu_start_;
  const double process_cpu = CpuSeconds(CLOCK_PROCESS_CPUTIME_ID) - process_cpu_start_;
  if (!t_stage_stack.empty()) t_stage_stack.pop_back();
  timer_->Add(path_, depth_, dt, cpu, process_cpu);
}

Numerics NumericsFromArgs(int argc, char** argv, int first, Numerics fallback) {
  Numerics n = fallback;
  for (int i = first; i < argc; ++i) {
    const std::string arg = argv[i];
    std::string value;
    if (arg == "--numerics" && i + 1 < argc) {
      value = argv[i + 1];
    } else if (arg.rfind("--numerics=", 0) == 0) {
      value = arg.substr(11);
    } else {
      continue;
    }
    if (value == "fast") n = Numerics::kFast;
    if (value == "reference") n = Numerics::kReference;
  }
  return n;
}

void PrintStageTable(const StageTimer& timer, double per, const char* unit, double total_per) {
  std::printf("stages (mean per %s, nested stages indented):  wall s  thread-CPU s  "
              "process-CPU s  busy\n", unit);
  const double threads = std::max(1, at::get_num_threads());
  double top = 0;
  for (const auto& e : timer.entries()) {
    if (e.depth == 0) top += e.seconds;
    std::printf("  %*s%-*s %8.3f %8.3f %14.3f %5.0f%%\n", 2 * e.depth, "", 40 - 2 * e.depth,
                e.name.c_str(), e.seconds / per, e.cpu_seconds / per, e.process_cpu_seconds / per,
                e.seconds > 0 ? 100.0 * e.process_cpu_seconds / (e.seconds * threads) : 0.0);
  }
  std::printf("  %-40s %8.3f\n", "(other)", total_per - top / per);
}

}  // namespace lpdetr

#include "model/runtime.h"

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>

#include <ATen/Parallel.h>

namespace lpdetr {
namespace {

constexpr const char* kMarker = "LPDETR_NUMERICS_CONFIGURED";

std::atomic<OpBackend> g_op_backend{OpBackend::kKernels};

bool CpuHas(const char* feature) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const std::string f = feature;
  if (f == "avx512") {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
  }
  if (f == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  (void)feature;
  return false;
}

// Sets name=value unless the user set it; returns whether it changed.
bool SetDefault(const char* name, const char* value) {
  if (std::getenv(name) != nullptr) return false;
  setenv(name, value, 1);
  return true;
}

}  // namespace

void ConfigureProcess(char** argv, Numerics numerics) {
  if (std::getenv(kMarker) != nullptr) return;  // already re-executed
  bool changed = false;
  if (numerics == Numerics::kReference) {
    if (CpuHas("avx2")) {
      changed |= SetDefault("OPENBLAS_CORETYPE", "Haswell");
      changed |= SetDefault("ONEDNN_MAX_CPU_ISA", "AVX2");
      changed |= SetDefault("DNNL_MAX_CPU_ISA", "AVX2");
    }
    changed |= SetDefault("OPENBLAS_NUM_THREADS", "2");
  } else if (CpuHas("avx512")) {
    changed |= SetDefault("OPENBLAS_CORETYPE", "SkylakeX");
  } else if (CpuHas("avx2")) {
    changed |= SetDefault("OPENBLAS_CORETYPE", "Haswell");
  }
  if (!changed) return;
  setenv(kMarker, "1", 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the kernels the libraries chose.
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
  }
  at::set_num_threads(threads);
}

}  // namespace lpdetr

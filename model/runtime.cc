#include "model/runtime.h"

#include <unistd.h>

#include <cstdlib>
#include <thread>
#include <vector>

#include <ATen/Parallel.h>

namespace lpdetr {

void EnsureBlasCoreType(int argc, char** argv) {
  (void)argc;
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  if (std::getenv("LPDETR_NO_REEXEC") != nullptr) return;
  const char* core = nullptr;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    core = "SkylakeX";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    core = "Haswell";
  }
#endif
  if (core == nullptr) return;
  setenv("OPENBLAS_CORETYPE", core, 1);
  execv("/proc/self/exe", argv);
  // exec failed: carry on with the kernels OpenBLAS chose.
}

void SetIntraOpThreads(int threads) {
  if (threads <= 0) {
    threads = static_cast<int>(std::thread::hardware_concurrency());
    if (threads <= 0) threads = 1;
  }
  at::set_num_threads(threads);
}

}  // namespace lpdetr

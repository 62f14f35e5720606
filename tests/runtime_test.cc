// Tests of the process-wide settings in model/runtime.h: memory, threads.
#include "model/runtime.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>
#include <gtest/gtest.h>

namespace lpdetr {
namespace {

int64_t ResidentBytes() {
  long total = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return -1;
  const int n = std::fscanf(f, "%ld %ld", &total, &resident);
  std::fclose(f);
  return n == 2 ? static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE) : -1;
}

#if defined(__GLIBC__)
TEST(Runtime, ReleaseFreedMemoryHandsRetainedHeapMemoryBack) {
  if (std::getenv("GLIBC_TUNABLES") != nullptr || std::getenv("MALLOC_TRIM_THRESHOLD_") != nullptr) {
    GTEST_SKIP() << "the environment sets glibc's malloc tunables: RetainFreedMemory keeps them";
  }
  RetainFreedMemory();  // freed heap memory stays resident up to 1 GiB
  constexpr size_t kBlock = size_t{1} << 20;  // below the 32 MiB mmap threshold: heap
  constexpr int kBlocks = 256;
  std::vector<void*> blocks;
  for (int i = 0; i < kBlocks; ++i) {
    void* p = std::malloc(kBlock);
    ASSERT_NE(p, nullptr);
    std::memset(p, 1, kBlock);
    blocks.push_back(p);
  }
  for (void* p : blocks) std::free(p);
  const int64_t retained = ResidentBytes();
  ASSERT_GT(retained, 0);
  EXPECT_TRUE(ReleaseFreedMemory());
  const int64_t after = ResidentBytes();
  // Most of the 256 MiB freed goes back to the system.
  EXPECT_LT(after, retained - static_cast<int64_t>(kBlocks / 2) * static_cast<int64_t>(kBlock))
      << "resident " << retained << " -> " << after << " bytes";
}
#endif

TEST(Runtime, ApplyNumericsBoundsOpenBlasToAnExplicitThreadCount) {
  auto get = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  auto set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (get == nullptr || set == nullptr) GTEST_SKIP() << "the BLAS in use is not OpenBLAS";
  const int saved = get();
  const int saved_aten = at::get_num_threads();
  ApplyNumerics(Numerics::kFast, 1);
  EXPECT_EQ(get(), 1);
  EXPECT_EQ(at::get_num_threads(), 1);
  // 0 (all cores) leaves OpenBLAS's own choice alone.
  set(saved);
  ApplyNumerics(Numerics::kFast, 0);
  EXPECT_EQ(get(), saved);
  at::set_num_threads(saved_aten);
}

}  // namespace
}  // namespace lpdetr

// Tests of the process-wide memory settings in model/runtime.h.
#include "model/runtime.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

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

}  // namespace
}  // namespace lpdetr

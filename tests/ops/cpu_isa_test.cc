// Instruction-set selection of the CPU kernels (model/ops/cpu_isa.h). ctest
// runs this file's tests with and without LPDETR_CPU_ISA=avx2.
#include "model/ops/cpu_isa.h"

#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

namespace lpdetr::ops {
namespace {

bool CpuHasAvx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

TEST(CpuKernelIsa, BestSupportedUnlessCappedByTheEnvironment) {
  const char* env = std::getenv("LPDETR_CPU_ISA");
  const std::string requested = env == nullptr ? "" : env;
#if defined(LPDETR_CPU_AVX512_VARIANTS)
  const bool built = true;
#else
  const bool built = false;
#endif
  const CpuIsa expected =
      requested != "avx2" && built && CpuHasAvx512() ? CpuIsa::kAvx512 : CpuIsa::kAvx2;
  EXPECT_EQ(CpuKernelIsa(), expected)
      << "LPDETR_CPU_ISA='" << requested << "', got " << CpuIsaName(CpuKernelIsa());
  EXPECT_STREQ(CpuIsaName(CpuIsa::kAvx512), "avx512");
  EXPECT_STREQ(CpuIsaName(CpuIsa::kAvx2), "avx2");
}

}  // namespace
}  // namespace lpdetr::ops

// Compiled without the kernels' -mavx2 flags: it decides whether they may run.
#include "model/ops/cpu_isa.h"

#include <cstdlib>
#include <string>

#include <c10/util/Exception.h>

namespace lpdetr::ops {

bool CpuSupports(CpuIsa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == CpuIsa::kAvx2) return avx2;
  return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
#else
  (void)isa;
  return false;
#endif
}

namespace {

// Whether the kernels were compiled with the AVX-512 variants.
constexpr bool kBuiltWithAvx512 =
#if defined(LPDETR_CPU_AVX512_VARIANTS)
    true;
#else
    false;
#endif

CpuIsa SelectIsa() {
  const char* env = std::getenv("LPDETR_CPU_ISA");
  const std::string requested = env == nullptr ? "" : env;
  TORCH_CHECK(requested.empty() || requested == "avx2" || requested == "avx512",
              "LPDETR_CPU_ISA must be avx2 or avx512, got '", requested, "'");
  const bool avx512 = kBuiltWithAvx512 && CpuSupports(CpuIsa::kAvx512);
  if (requested == "avx512") {
    TORCH_CHECK(avx512, "LPDETR_CPU_ISA=avx512, but ",
                kBuiltWithAvx512 ? "this CPU lacks AVX-512 F/VL/BW/DQ"
                                 : "the kernels were built without AVX-512 variants");
    return CpuIsa::kAvx512;
  }
  return avx512 && requested != "avx2" ? CpuIsa::kAvx512 : CpuIsa::kAvx2;
}

}  // namespace

CpuIsa CpuKernelIsa() {
  static const CpuIsa isa = SelectIsa();
  return isa;
}

const char* CpuIsaName(CpuIsa isa) { return isa == CpuIsa::kAvx512 ? "avx512" : "avx2"; }

void CheckCpuKernelsSupported(const char* op_name) {
#if defined(LPDETR_CPU_AVX2) && (defined(__x86_64__) || defined(__i386__))
  static const bool supported = CpuSupports(CpuIsa::kAvx2);
  TORCH_CHECK(supported, op_name,
              ": the CPU kernels were built for AVX2 + FMA, which this CPU lacks; rebuild with "
              "-DLPDETR_CPU_AVX2=OFF or select the composed operators (OpBackend::kComposed)");
#else
  (void)op_name;
#endif
}

}  // namespace lpdetr::ops

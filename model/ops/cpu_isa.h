// Instruction sets of the CPU op kernels (model/ops/cpu/).
//
// The kernel files are compiled for AVX2 + FMA (LPDETR_CPU_AVX2, default ON on
// x86-64). Their hot loops also have AVX-512 versions (GCC target attributes,
// same translation unit), used when the CPU has AVX-512 F/VL/BW/DQ: the fused
// relation op runs ~1.7x faster with 16-lane vectors. The environment variable
// LPDETR_CPU_ISA=avx2 caps the choice (to compare, or to rule the AVX-512 path
// out); LPDETR_CPU_ISA=avx512 requires it.
#pragma once

// LPDETR_TARGET_AVX512 marks a kernel function for AVX-512 code generation
// (512-bit auto-vectorisation); helpers it calls must be LPDETR_ALWAYS_INLINE
// so that they are compiled into it rather than shared with the AVX2 path.
// Only GCC on x86-64 with LPDETR_CPU_AVX2 builds these variants.
#define LPDETR_ALWAYS_INLINE inline __attribute__((always_inline))
#if defined(LPDETR_CPU_AVX2) && defined(__GNUC__) && !defined(__clang__) && \
    (defined(__x86_64__) || defined(__i386__))
#define LPDETR_CPU_AVX512_VARIANTS 1
#define LPDETR_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,prefer-vector-width=512")))
#endif

namespace lpdetr::ops {

enum class CpuIsa { kAvx2, kAvx512 };

// The instruction set the CPU kernels use in this process: the best one the
// CPU supports and the build has, capped by LPDETR_CPU_ISA (read once). Throws
// (TORCH_CHECK) on an unknown LPDETR_CPU_ISA value or one the CPU lacks.
CpuIsa CpuKernelIsa();

const char* CpuIsaName(CpuIsa isa);

// Whether this CPU has `isa` (AVX2 + FMA; AVX-512 F/VL/BW/DQ on top of it),
// whatever the build or LPDETR_CPU_ISA say.
bool CpuSupports(CpuIsa isa);

// Fails with a clear message when the kernels were built for AVX2 + FMA and
// this CPU lacks them (called by every CPU kernel entry point).
void CheckCpuKernelsSupported(const char* op_name);

}  // namespace lpdetr::ops

// Process-level setup for programs that run the model on CPU.
#pragma once

namespace lpdetr {

// OpenBLAS picks its kernels from the CPU model name at load time, and falls
// back to generic SSE kernels (about 4x slower GEMM) on virtual CPUs that
// report a generic model. When OPENBLAS_CORETYPE is unset, this sets it from
// the instruction sets the CPU reports (SkylakeX for AVX-512, Haswell for
// AVX2) and re-executes the program once so the library loads with it.
// Call first thing in main(); returns only if no re-exec was needed.
void EnsureBlasCoreType(int argc, char** argv);

// Sets LibTorch intra-op threads (0 = the number of cores available).
void SetIntraOpThreads(int threads);

}  // namespace lpdetr

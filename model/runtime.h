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
// Variables the user already set are left alone.
#pragma once

namespace lpdetr {

enum class Numerics { kFast, kReference };

// Sets the math libraries' environment for `numerics` and re-executes the
// program once when a variable read at load time had to change. Call first
// thing in main(); returns when no re-exec is needed (or it failed).
void ConfigureProcess(char** argv, Numerics numerics);

// Which implementation the model's hot operators (the relation weights and
// multi-scale deformable attention) run:
//   kKernels   the fused custom ops of model/ops (default),
//   kComposed  the composed ATen reference implementations, whose float
//              operations match the official code exactly.
enum class OpBackend { kKernels, kComposed };

// Process-wide operator backend (thread-safe to read while models run).
void SetOpBackend(OpBackend backend);
OpBackend GetOpBackend();

// Applies the in-process part of `numerics`: LibTorch intra-op threads (1 in
// reference mode, else `threads`, 0 = all cores available) and the operator
// backend (kComposed in reference mode, kKernels otherwise).
void ApplyNumerics(Numerics numerics, int threads);

}  // namespace lpdetr

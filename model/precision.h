// Compute precision of the model's inference fast path, and how a command
// line's `--precision fp32|bf16|auto` becomes one.
//
// In bf16 the matrix products run in bfloat16 through oneDNN (LibTorch's bf16
// convolutions and matrix multiplications) with float accumulation: the
// backbone and neck convolutions, the encoder and decoder linear layers and
// feed-forward blocks, the attention projections, and the deformable
// attention's value (read in bf16, accumulated in fp32). Normalisation, the
// relation op, the prediction heads, box refinement, query selection and
// post-processing stay fp32. bf16 applies only on the inference fast path
// (UseInferenceFastPath in model/layers.h): the reference numerics and
// training are not affected.
//
// Training in bf16 uses LibTorch's autocast instead (ScopedBf16Autocast
// around a model forward): the same convolutions and linear layers run in
// bf16 against fp32 master weights (autocast casts them per forward and the
// gradients come back in fp32), while the model's fp32 parts run under
// ScopedFp32 with their inputs cast back with Fp32().
//
// `auto` picks bf16 where the hardware runs it natively: on CPU when it has
// AMX-BF16 or AVX512-BF16 (read with CPUID, with the operating system's
// AVX-512 state enabled); elsewhere oneDNN would emulate bf16 and be slower
// than fp32. On CUDA, devices of compute capability 8.0 or newer.
#pragma once

#include <string>

#include <ATen/Tensor.h>
#include <c10/core/Device.h>

namespace lpdetr {

enum class Precision { kFp32, kBf16 };
enum class PrecisionRequest { kFp32, kBf16, kAuto };

const char* PrecisionName(Precision precision);
const char* PrecisionRequestName(PrecisionRequest request);

// Parses "fp32", "bf16" or "auto"; false (out untouched) otherwise.
bool ParsePrecisionRequest(const std::string& text, PrecisionRequest* out);

// bf16 instruction sets of a CPU.
struct CpuBf16Support {
  bool avx512_bf16 = false;  // AVX512-BF16 dot products (with AVX-512 F/BW/VL/DQ)
  bool amx_bf16 = false;     // AMX-BF16 tile products
  bool any() const { return avx512_bf16 || amx_bf16; }
  // "AMX-BF16", "AVX512-BF16", "AMX-BF16 + AVX512-BF16" or "none".
  std::string Describe() const;
};

// What this CPU and its operating system support (CPUID + XGETBV, read once).
CpuBf16Support DetectCpuBf16();

// A resolved precision and a one-line reason for logs.
struct PrecisionChoice {
  Precision precision = Precision::kFp32;
  std::string reason;
};

// Resolves `request` for `device` given the CPU's bf16 support. Throws
// std::invalid_argument (a message for the user) when bf16 is forced on a
// device without native bf16.
PrecisionChoice ResolvePrecision(PrecisionRequest request, const c10::Device& device,
                                 const CpuBf16Support& cpu);
// The same with this machine's CPU (DetectCpuBf16).
PrecisionChoice ResolvePrecision(PrecisionRequest request, const c10::Device& device);
// A `--precision` value ("fp32", "bf16" or "auto") parsed and resolved for
// `device` on this machine. Throws std::invalid_argument (a message for the
// user) on any other value and where ResolvePrecision does.
PrecisionChoice ResolvePrecisionFlag(const std::string& text, const c10::Device& device);

// Process-wide compute precision of the inference fast path (default fp32).
// Set once at start-up, before models run; thread-safe to read.
void SetComputePrecision(Precision precision);
Precision GetComputePrecision();

// bf16 autocast for the calling thread during its scope (autocast state is
// per thread): matrix products and convolutions run in bf16 on `device`'s
// type, with autocast's weight-cast cache cleared when the outermost scope
// ends. `enabled` false changes nothing. Not copyable; nest freely.
class ScopedBf16Autocast {
 public:
  ScopedBf16Autocast(bool enabled, c10::DeviceType device);
  ~ScopedBf16Autocast();
  ScopedBf16Autocast(const ScopedBf16Autocast&) = delete;
  ScopedBf16Autocast& operator=(const ScopedBf16Autocast&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

// Autocast suspended for the calling thread during its scope: the parts of
// the model that stay fp32 in bf16 training (normalisation inputs, the
// relation op, the prediction heads and box refinement, attention logits).
// A no-op when autocast is off.
class ScopedFp32 {
 public:
  ScopedFp32();
  ~ScopedFp32();
  ScopedFp32(const ScopedFp32&) = delete;
  ScopedFp32& operator=(const ScopedFp32&) = delete;

 private:
  bool cpu_ = false;
  bool cuda_ = false;
};

// Whether autocast is on in the calling thread (CPU or CUDA).
bool AutocastActive();

// `x` in fp32 when it holds bf16 or fp16 (differentiable cast); `x` itself
// otherwise.
at::Tensor Fp32(const at::Tensor& x);

}  // namespace lpdetr

#include "model/precision.h"

#include <atomic>
#include <stdexcept>

#include <ATen/autocast_mode.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#ifdef LPDETR_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace lpdetr {

const char* PrecisionName(Precision precision) {
  return precision == Precision::kBf16 ? "bf16" : "fp32";
}

const char* PrecisionRequestName(PrecisionRequest request) {
  switch (request) {
    case PrecisionRequest::kFp32: return "fp32";
    case PrecisionRequest::kBf16: return "bf16";
    case PrecisionRequest::kAuto: return "auto";
  }
  return "?";
}

bool ParsePrecisionRequest(const std::string& text, PrecisionRequest* out) {
  if (text == "fp32") {
    *out = PrecisionRequest::kFp32;
  } else if (text == "bf16") {
    *out = PrecisionRequest::kBf16;
  } else if (text == "auto") {
    *out = PrecisionRequest::kAuto;
  } else {
    return false;
  }
  return true;
}

std::string CpuBf16Support::Describe() const {
  if (amx_bf16 && avx512_bf16) return "AMX-BF16 + AVX512-BF16";
  if (amx_bf16) return "AMX-BF16";
  if (avx512_bf16) return "AVX512-BF16";
  return "none";
}

namespace {

#if defined(__x86_64__) || defined(__i386__)
// XCR0: the register state the operating system saves (0 without OSXSAVE).
uint64_t ReadXcr0() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return 0;
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

CpuBf16Support Detect() {
  CpuBf16Support s;
  unsigned max_leaf = __get_cpuid_max(0, nullptr);
  if (max_leaf < 7) return s;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const unsigned leaf7_max_sub = eax;
  const bool avx512 = (ebx & (1u << 16)) && (ebx & (1u << 17)) &&  // F, DQ
                      (ebx & (1u << 30)) && (ebx & (1u << 31));    // BW, VL
  const bool amx_tile = edx & (1u << 24), amx_bf16 = edx & (1u << 22);
  bool avx512_bf16 = false;
  if (leaf7_max_sub >= 1) {
    unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    avx512_bf16 = a1 & (1u << 5);
  }
  const uint64_t xcr0 = ReadXcr0();
  const bool os_avx512 = (xcr0 & 0xE6) == 0xE6;      // SSE, AVX, opmask, ZMM state
  const bool os_amx = (xcr0 & 0x60000) == 0x60000;   // XTILECFG, XTILEDATA
  s.avx512_bf16 = avx512 && avx512_bf16 && os_avx512;
  s.amx_bf16 = amx_tile && amx_bf16 && os_amx;
  return s;
}
#else
CpuBf16Support Detect() { return {}; }
#endif

std::atomic<Precision> g_precision{Precision::kFp32};

}  // namespace

CpuBf16Support DetectCpuBf16() {
  static const CpuBf16Support support = Detect();
  return support;
}

PrecisionChoice ResolvePrecision(PrecisionRequest request, const c10::Device& device,
                                 const CpuBf16Support& cpu) {
  if (request == PrecisionRequest::kFp32) return {Precision::kFp32, "fp32 requested"};
  bool native = false;
  std::string what;
  if (device.is_cuda()) {
#ifdef LPDETR_WITH_CUDA
    const int index = device.has_index() ? device.index() : 0;
    if (at::globalContext().hasCUDA() && index < at::cuda::device_count()) {
      const auto* props = at::cuda::getDeviceProperties(index);
      native = props->major >= 8;
      what = "CUDA device of compute capability " + std::to_string(props->major) + "." +
             std::to_string(props->minor);
    } else {
      what = "no CUDA device " + std::to_string(index);
    }
#else
    what = "CUDA device (this build has no CUDA support)";
#endif
  } else if (device.is_cpu()) {
    native = cpu.any();
    what = "CPU bf16 instructions: " + cpu.Describe();
  } else {
    what = "device " + device.str();
  }
  if (request == PrecisionRequest::kBf16) {
    if (!native) {
      throw std::invalid_argument(
          "--precision bf16 needs native bf16 (a CPU with AMX-BF16 or AVX512-BF16, or a CUDA "
          "device of compute capability >= 8.0), but " + what +
          "; use --precision fp32 or auto");
    }
    return {Precision::kBf16, "bf16 requested (" + what + ")"};
  }
  if (native) return {Precision::kBf16, "auto: bf16 (" + what + ")"};
  return {Precision::kFp32, "auto: fp32 (" + what + ")"};
}

PrecisionChoice ResolvePrecision(PrecisionRequest request, const c10::Device& device) {
  return ResolvePrecision(request, device, DetectCpuBf16());
}

PrecisionChoice ResolvePrecisionFlag(const std::string& text, const c10::Device& device) {
  PrecisionRequest request;
  if (!ParsePrecisionRequest(text, &request)) {
    throw std::invalid_argument("--precision must be fp32, bf16 or auto, got '" + text + "'");
  }
  return ResolvePrecision(request, device);
}

void SetComputePrecision(Precision precision) { g_precision.store(precision); }

Precision GetComputePrecision() { return g_precision.load(std::memory_order_relaxed); }

ScopedBf16Autocast::ScopedBf16Autocast(bool enabled, c10::DeviceType device) {
  if (!enabled) return;
  active_ = true;
  cuda_ = device == c10::DeviceType::CUDA;
  if (cuda_) {
    was_enabled_ = at::autocast::is_enabled();
    was_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
  } else {
    was_enabled_ = at::autocast::is_cpu_enabled();
    was_dtype_ = at::autocast::get_autocast_cpu_dtype();
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
  }
  at::autocast::increment_nesting();
}

ScopedBf16Autocast::~ScopedBf16Autocast() {
  if (!active_) return;
  // The cached bf16 copies of the weights live until the outermost scope
  // ends (one forward), as with torch.autocast.
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  if (cuda_) {
    at::autocast::set_enabled(was_enabled_);
    at::autocast::set_autocast_gpu_dtype(was_dtype_);
  } else {
    at::autocast::set_cpu_enabled(was_enabled_);
    at::autocast::set_autocast_cpu_dtype(was_dtype_);
  }
}

ScopedFp32::ScopedFp32() : cpu_(at::autocast::is_cpu_enabled()), cuda_(at::autocast::is_enabled()) {
  if (cpu_) at::autocast::set_cpu_enabled(false);
  if (cuda_) at::autocast::set_enabled(false);
}

ScopedFp32::~ScopedFp32() {
  if (cpu_) at::autocast::set_cpu_enabled(true);
  if (cuda_) at::autocast::set_enabled(true);
}

bool AutocastActive() { return at::autocast::is_cpu_enabled() || at::autocast::is_enabled(); }

at::Tensor Fp32(const at::Tensor& x) {
  if (!x.defined()) return x;
  const at::ScalarType t = x.scalar_type();
  return t == at::kBFloat16 || t == at::kHalf ? x.to(at::kFloat) : x;
}

}  // namespace lpdetr

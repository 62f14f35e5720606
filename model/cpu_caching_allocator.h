// A caching CPU allocator for LibTorch tensors in training processes.
//
// glibc serves every block above its mmap threshold (at most 32 MiB on 64-bit)
// with a fresh mmap and unmaps it on free, so a training step that allocates
// the same multi-hundred-MiB activations and gradients again and again faults
// every page in anew each step (R50 at 800x1066: 1.4-2 M page faults, a fifth
// of the step's CPU time in the kernel). CpuCachingAllocator keeps large
// blocks mapped after they are freed and hands them out again:
//
//   * Requests below `min_bytes` go to LibTorch's default CPU allocator.
//   * Larger ones are rounded up to 2 MiB and served from the cached free
//     blocks by best fit, taking a block of size S for a request R only when
//     S <= R * (1 + max_waste); otherwise a new block is mapped (2 MiB
//     aligned, madvise(MADV_HUGEPAGE) when `huge_pages`, so the kernel can
//     back it with transparent huge pages: 512x fewer faults and TLB misses).
//   * Memory bound: the reserved bytes (in use + cached) never exceed the
//     peak in-use bytes x (1 + reserve_slack): before mapping a new block the
//     least recently freed cached blocks are unmapped until it fits. So the
//     large-block memory stays within 1 + reserve_slack (default 1.25) of
//     the process's own high-water mark without a cache. The slack lets
//     blocks of other sizes survive a step's peak: with none, an R50
//     800x1066 step re-maps ~1.9 GiB of its 5.2 GiB, with 0.25 nothing. The
//     cached bytes alone are also capped at `max_cached_bytes`.
//     ReleaseCached() unmaps every cached block.
//
// Threading: allocate() and frees may come from any thread; all instances
// share one process-wide mutex (system calls run outside it). An instance may
// be destroyed while some of its blocks are alive: they are unmapped when
// freed. The blocks do not report to LibTorch's memory profiler.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include <c10/core/Allocator.h>

namespace lpdetr {

struct CpuCachingAllocatorOptions {
  size_t min_bytes = size_t{1} << 20;  // smaller requests: the default allocator
  double max_waste = 0.25;             // a cached block serves requests >= size / (1 + this)
  double reserve_slack = 0.25;         // reserved may exceed the peak in use by this fraction
  size_t max_cached_bytes = std::numeric_limits<size_t>::max();
  bool huge_pages = true;  // madvise(MADV_HUGEPAGE) on the blocks
};

struct CpuCachingAllocatorStats {
  size_t in_use_bytes = 0;         // blocks handed out (rounded sizes)
  size_t cached_bytes = 0;         // freed blocks kept mapped
  size_t peak_in_use_bytes = 0;
  size_t peak_reserved_bytes = 0;  // high-water mark of in use + cached
  int64_t hits = 0;                // large requests served from the cache
  int64_t misses = 0;              // large requests that mapped a new block
  int64_t evictions = 0;           // cached blocks unmapped
  size_t mapped_bytes = 0;         // total bytes of the misses' new blocks
  int64_t small_requests = 0;      // requests passed to the default allocator
};

class CpuCachingAllocator final : public c10::Allocator {
 public:
  explicit CpuCachingAllocator(const CpuCachingAllocatorOptions& options = {});
  ~CpuCachingAllocator() override;
  CpuCachingAllocator(const CpuCachingAllocator&) = delete;
  CpuCachingAllocator& operator=(const CpuCachingAllocator&) = delete;

  // Throws c10::Error when the system has no memory left for a new block
  // even after the cache is emptied.
  c10::DataPtr allocate(size_t nbytes) const override;
  // Frees blocks of this allocator and of the default CPU allocator (for
  // raw_allocate / raw_deallocate).
  c10::DeleterFnPtr raw_deleter() const override;

  CpuCachingAllocatorStats stats() const;
  const CpuCachingAllocatorOptions& options() const { return options_; }
  // Unmaps every cached (free) block.
  void ReleaseCached();

  struct State;  // cache and accounting; guarded by the process-wide mutex

 private:
  CpuCachingAllocatorOptions options_;
  State* state_;
};

// Makes a process-wide CpuCachingAllocator LibTorch's CPU allocator, for
// training processes: call once early in main(), before the model is built
// (tensors allocated earlier keep their allocator). Later calls return the
// same allocator (the first call's options win). Returns nullptr and
// installs nothing when the environment variable LPDETR_CPU_CACHING_ALLOCATOR
// is "0" (for A/B measurements).
CpuCachingAllocator* InstallCpuCachingAllocator(const CpuCachingAllocatorOptions& options = {});

}  // namespace lpdetr

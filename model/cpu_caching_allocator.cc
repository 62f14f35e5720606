#include "model/cpu_caching_allocator.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

namespace lpdetr {
namespace {

constexpr size_t kGranularity = size_t{2} << 20;  // the x86-64 huge page size

size_t RoundUp(size_t n, size_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// One mutex for every instance and the registry of live blocks, so that the
// deleter (a plain function of the pointer) can find a block's owner.
std::mutex& GlobalMutex() {
  static auto* mutex = new std::mutex;
  return *mutex;
}

struct LiveBlock {
  CpuCachingAllocator::State* owner;  // nullptr once the owner is destroyed
  size_t size;
};

std::unordered_map<void*, LiveBlock>& LiveBlocks() {
  static auto* blocks = new std::unordered_map<void*, LiveBlock>;
  return *blocks;
}

struct Mapping {
  void* ptr;
  size_t size;
};

void Unmap(const std::vector<Mapping>& mappings) {
  for (const Mapping& m : mappings) munmap(m.ptr, m.size);
}

// `size` bytes (a multiple of kGranularity) aligned to kGranularity, or nullptr.
void* MapBlock(size_t size, bool huge_pages) {
  const size_t span = size + kGranularity;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = RoundUp(base, kGranularity);
  if (aligned > base) munmap(raw, aligned - base);
  const uintptr_t end = aligned + size;
  if (base + span > end) munmap(reinterpret_cast<void*>(end), base + span - end);
  void* block = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  if (huge_pages) madvise(block, size, MADV_HUGEPAGE);  // advice only: failure is harmless
#endif
  return block;
}

void FreeAny(void* ptr);

}  // namespace

struct CpuCachingAllocator::State {
  struct FreeBlock {
    void* ptr;
    size_t size;
    std::multimap<size_t, std::list<FreeBlock>::iterator>::iterator by_size;
  };
  CpuCachingAllocatorOptions options;
  std::list<FreeBlock> lru;  // cached blocks, least recently freed first
  std::multimap<size_t, std::list<FreeBlock>::iterator> by_size;
  CpuCachingAllocatorStats stats;

  // Takes the smallest cached block of at least `size` bytes within the
  // waste bound and returns it with its own (mapped) size, which may exceed
  // `size`: the block keeps that size for its whole life, so it is unmapped
  // whole and accounted exactly. {nullptr, 0} when there is none.
  Mapping TakeCached(size_t size) {
    auto it = by_size.lower_bound(size);
    if (it == by_size.end()) return {nullptr, 0};
    const double limit = static_cast<double>(size) * (1.0 + options.max_waste);
    if (static_cast<double>(it->first) > limit) return {nullptr, 0};
    const auto node = it->second;
    const Mapping block{node->ptr, node->size};
    stats.cached_bytes -= node->size;
    MarkInUse(node->size);
    by_size.erase(it);
    lru.erase(node);
    return block;
  }

  void MarkInUse(size_t size) {
    stats.in_use_bytes += size;
    stats.peak_in_use_bytes = std::max(stats.peak_in_use_bytes, stats.in_use_bytes);
    stats.peak_reserved_bytes =
        std::max(stats.peak_reserved_bytes, stats.in_use_bytes + stats.cached_bytes);
  }

  void Cache(void* ptr, size_t size) {
    lru.push_back({ptr, size, {}});
    auto node = std::prev(lru.end());
    node->by_size = by_size.emplace(size, node);
    stats.cached_bytes += size;
  }

  Mapping EvictOldest() {
    FreeBlock& b = lru.front();
    const Mapping m{b.ptr, b.size};
    by_size.erase(b.by_size);
    lru.pop_front();
    stats.cached_bytes -= m.size;
    ++stats.evictions;
    return m;
  }

  // Evicts until the reserved bytes plus `incoming` new bytes respect the
  // bounds; returns the blocks to unmap.
  std::vector<Mapping> EvictFor(size_t incoming) {
    std::vector<Mapping> out;
    const size_t needed = stats.in_use_bytes + incoming;
    const double peak = static_cast<double>(std::max(stats.peak_in_use_bytes, needed));
    const double limit =
        std::max(peak * (1.0 + options.reserve_slack), static_cast<double>(needed));
    while (!lru.empty() &&
           (static_cast<double>(needed + stats.cached_bytes) > limit ||
            stats.cached_bytes > options.max_cached_bytes)) {
      out.push_back(EvictOldest());
    }
    return out;
  }

  std::vector<Mapping> EvictAll() {
    std::vector<Mapping> out;
    while (!lru.empty()) out.push_back(EvictOldest());
    return out;
  }
};

namespace {

void FreeAny(void* ptr) {
  if (ptr == nullptr) return;
  std::vector<Mapping> unmap;
  {
    std::lock_guard<std::mutex> lock(GlobalMutex());
    auto& live = LiveBlocks();
    auto it = live.find(ptr);
    if (it == live.end()) {
      // A block of the default allocator (raw_deallocate of a small request).
      c10::GetDefaultCPUAllocator()->raw_deleter()(ptr);
      return;
    }
    const LiveBlock block = it->second;
    live.erase(it);
    if (block.owner == nullptr) {
      unmap.push_back({ptr, block.size});
    } else {
      CpuCachingAllocator::State& s = *block.owner;
      s.stats.in_use_bytes -= block.size;
      s.Cache(ptr, block.size);
      while (s.stats.cached_bytes > s.options.max_cached_bytes) unmap.push_back(s.EvictOldest());
    }
  }
  Unmap(unmap);
}

}  // namespace

CpuCachingAllocator::CpuCachingAllocator(const CpuCachingAllocatorOptions& options)
    : options_(options), state_(new State) {
  TORCH_CHECK(options.max_waste >= 0, "CpuCachingAllocator: max_waste must be >= 0, got ",
              options.max_waste);
  TORCH_CHECK(options.reserve_slack >= 0,
              "CpuCachingAllocator: reserve_slack must be >= 0, got ", options.reserve_slack);
  state_->options = options;
}

CpuCachingAllocator::~CpuCachingAllocator() {
  std::vector<Mapping> unmap;
  {
    std::lock_guard<std::mutex> lock(GlobalMutex());
    unmap = state_->EvictAll();
    for (auto& entry : LiveBlocks()) {
      if (entry.second.owner == state_) entry.second.owner = nullptr;
    }
  }
  Unmap(unmap);
  delete state_;
}

c10::DataPtr CpuCachingAllocator::allocate(size_t nbytes) const {
  if (nbytes < options_.min_bytes) {
    {
      std::lock_guard<std::mutex> lock(GlobalMutex());
      ++state_->stats.small_requests;
    }
    return c10::GetDefaultCPUAllocator()->allocate(nbytes);
  }
  const size_t size = RoundUp(nbytes, kGranularity);
  std::vector<Mapping> unmap;
  {
    std::lock_guard<std::mutex> lock(GlobalMutex());
    if (const Mapping cached = state_->TakeCached(size); cached.ptr != nullptr) {
      ++state_->stats.hits;
      LiveBlocks()[cached.ptr] = {state_, cached.size};
      return {cached.ptr, cached.ptr, &FreeAny, c10::Device(c10::DeviceType::CPU)};
    }
    ++state_->stats.misses;
    // Account for the new block now, so that concurrent misses see it.
    unmap = state_->EvictFor(size);
    state_->MarkInUse(size);
  }
  Unmap(unmap);
  void* ptr = MapBlock(size, options_.huge_pages);
  if (ptr == nullptr) {  // out of memory: give the whole cache back and retry once
    {
      std::lock_guard<std::mutex> lock(GlobalMutex());
      unmap = state_->EvictAll();
    }
    Unmap(unmap);
    ptr = MapBlock(size, options_.huge_pages);
  }
  if (ptr == nullptr) {
    const int error = errno;
    {
      std::lock_guard<std::mutex> lock(GlobalMutex());
      state_->stats.in_use_bytes -= size;
    }
    TORCH_CHECK(false, "CpuCachingAllocator: out of memory mapping ", nbytes, " bytes (",
                std::strerror(error), ")");
  }
  {
    std::lock_guard<std::mutex> lock(GlobalMutex());
    state_->stats.mapped_bytes += size;
    LiveBlocks()[ptr] = {state_, size};
  }
  return {ptr, ptr, &FreeAny, c10::Device(c10::DeviceType::CPU)};
}

c10::DeleterFnPtr CpuCachingAllocator::raw_deleter() const { return &FreeAny; }

CpuCachingAllocatorStats CpuCachingAllocator::stats() const {
  std::lock_guard<std::mutex> lock(GlobalMutex());
  return state_->stats;
}

void CpuCachingAllocator::ReleaseCached() {
  std::vector<Mapping> unmap;
  {
    std::lock_guard<std::mutex> lock(GlobalMutex());
    unmap = state_->EvictAll();
  }
  Unmap(unmap);
}

CpuCachingAllocator* InstallCpuCachingAllocator(const CpuCachingAllocatorOptions& options) {
  const char* env = std::getenv("LPDETR_CPU_CACHING_ALLOCATOR");
  if (env != nullptr && std::string(env) == "0") return nullptr;
  // Never destroyed: tensors may be freed during static destruction.
  static CpuCachingAllocator* installed = [&options] {
    auto* allocator = new CpuCachingAllocator(options);
    c10::SetCPUAllocator(allocator, /*priority=*/1);
    return allocator;
  }();
  return installed;
}

}  // namespace lpdetr

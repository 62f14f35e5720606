// Tests of CpuCachingAllocator: block reuse, the waste and memory bounds,
// raw allocation, thread safety and installation as LibTorch's CPU allocator.
#include "model/cpu_caching_allocator.h"

#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <c10/core/CPUAllocator.h>
#include <gtest/gtest.h>

namespace lpdetr {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

TEST(CpuCachingAllocator, ReusesAFreedBlockOfTheSameSize) {
  CpuCachingAllocator allocator;
  void* first = nullptr;
  {
    c10::DataPtr p = allocator.allocate(5 * kMiB);
    first = p.get();
    std::memset(first, 1, 5 * kMiB);
    EXPECT_EQ(allocator.stats().in_use_bytes, 6 * kMiB);  // rounded up to 2 MiB
  }
  EXPECT_EQ(allocator.stats().in_use_bytes, 0u);
  EXPECT_EQ(allocator.stats().cached_bytes, 6 * kMiB);
  c10::DataPtr again = allocator.allocate(5 * kMiB + 100);
  EXPECT_EQ(again.get(), first);
  const CpuCachingAllocatorStats s = allocator.stats();
  EXPECT_EQ(s.misses, 1);
  EXPECT_EQ(s.hits, 1);
  EXPECT_EQ(s.cached_bytes, 0u);
  EXPECT_EQ(s.mapped_bytes, 6 * kMiB);
}

TEST(CpuCachingAllocator, ABlockServingASmallerRequestKeepsItsSize) {
  // A 10 MiB block serves a later 7.5 MiB request (8 MiB rounded, within the
  // waste bound).
  // It must come back to the cache as 10 MiB, every time: recording the
  // request's size instead shrank the block at each reuse, left in_use
  // above zero and leaked the mapping's tail (the process grew by the
  // difference at every step).
  CpuCachingAllocator allocator;
  void* block = nullptr;
  { block = allocator.allocate(10 * kMiB).get(); }
  for (int i = 0; i < 3; ++i) {
    c10::DataPtr p = allocator.allocate(7 * kMiB + kMiB / 2);
    EXPECT_EQ(p.get(), block);
    std::memset(p.get(), 1, 10 * kMiB);  // the whole block stays mapped and writable
    EXPECT_EQ(allocator.stats().in_use_bytes, 10 * kMiB);
  }
  CpuCachingAllocatorStats s = allocator.stats();
  EXPECT_EQ(s.in_use_bytes, 0u);
  EXPECT_EQ(s.cached_bytes, 10 * kMiB);
  EXPECT_EQ(s.hits, 3);
  EXPECT_EQ(s.misses, 1);
  // Still a 10 MiB block: a 10 MiB request is served from it.
  { c10::DataPtr p = allocator.allocate(10 * kMiB); EXPECT_EQ(p.get(), block); }
  EXPECT_EQ(allocator.stats().misses, 1);
}

TEST(CpuCachingAllocator, BlocksAreAlignedToHugePages) {
  CpuCachingAllocator allocator;
  std::vector<c10::DataPtr> blocks;
  for (size_t mib : {1, 3, 7}) blocks.push_back(allocator.allocate(mib * kMiB));
  for (const auto& b : blocks) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b.get()) % (2 * kMiB), 0u);
    std::memset(b.get(), 0, kMiB);  // writable
  }
}

TEST(CpuCachingAllocator, SmallRequestsGoToTheDefaultAllocator) {
  CpuCachingAllocatorOptions options;
  options.min_bytes = kMiB;
  CpuCachingAllocator allocator(options);
  {
    c10::DataPtr p = allocator.allocate(4096);
    ASSERT_NE(p.get(), nullptr);
    EXPECT_EQ(p.get_deleter(), c10::GetDefaultCPUAllocator()->raw_deleter());
  }
  const CpuCachingAllocatorStats s = allocator.stats();
  EXPECT_EQ(s.small_requests, 1);
  EXPECT_EQ(s.hits + s.misses, 0);
  EXPECT_EQ(s.cached_bytes, 0u);
}

TEST(CpuCachingAllocator, DoesNotServeSmallRequestsFromMuchLargerBlocks) {
  CpuCachingAllocatorOptions options;
  options.max_waste = 0.25;
  options.reserve_slack = 1.0;  // no evictions here
  CpuCachingAllocator allocator(options);
  void* big = allocator.allocate(16 * kMiB).get();  // freed at once
  c10::DataPtr small = allocator.allocate(4 * kMiB);
  EXPECT_NE(small.get(), big);
  EXPECT_EQ(allocator.stats().misses, 2);
  // Within the bound (16 <= 14 * 1.25) the cached block is taken.
  c10::DataPtr near = allocator.allocate(14 * kMiB);
  EXPECT_EQ(near.get(), big);
  EXPECT_EQ(allocator.stats().in_use_bytes, 4 * kMiB + 16 * kMiB);
}

TEST(CpuCachingAllocator, ReservedBytesStayWithinThePeakInUse) {
  CpuCachingAllocatorOptions options;
  options.reserve_slack = 0.0;
  options.max_waste = 0.0;
  CpuCachingAllocator allocator(options);
  { c10::DataPtr a = allocator.allocate(8 * kMiB); }  // peak 8 MiB, then cached
  {
    // 6 MiB new + 8 MiB cached would exceed the 8 MiB peak: the cached block goes.
    c10::DataPtr b = allocator.allocate(6 * kMiB);
    const CpuCachingAllocatorStats s = allocator.stats();
    EXPECT_EQ(s.evictions, 1);
    EXPECT_EQ(s.cached_bytes, 0u);
    EXPECT_LE(s.in_use_bytes + s.cached_bytes, s.peak_in_use_bytes);
  }
  EXPECT_LE(allocator.stats().peak_reserved_bytes, allocator.stats().peak_in_use_bytes);
}

TEST(CpuCachingAllocator, SlackKeepsCachedBlocksAboveThePeak) {
  CpuCachingAllocatorOptions options;
  options.reserve_slack = 1.0;  // reserved up to 2x the peak in use
  options.max_waste = 0.0;
  CpuCachingAllocator allocator(options);
  { c10::DataPtr a = allocator.allocate(8 * kMiB); }
  c10::DataPtr b = allocator.allocate(6 * kMiB);  // 14 MiB <= 2 x 8 MiB
  const CpuCachingAllocatorStats s = allocator.stats();
  EXPECT_EQ(s.evictions, 0);
  EXPECT_EQ(s.cached_bytes, 8 * kMiB);
  EXPECT_LE(static_cast<double>(s.peak_reserved_bytes), 2.0 * s.peak_in_use_bytes);
}

TEST(CpuCachingAllocator, CachedBytesAreCapped) {
  CpuCachingAllocatorOptions options;
  options.max_cached_bytes = 10 * kMiB;
  options.reserve_slack = 10.0;
  CpuCachingAllocator allocator(options);
  {
    c10::DataPtr a = allocator.allocate(8 * kMiB);
    c10::DataPtr b = allocator.allocate(6 * kMiB);
  }  // 14 MiB freed: the least recently freed block (b, freed first) goes
  const CpuCachingAllocatorStats s = allocator.stats();
  EXPECT_LE(s.cached_bytes, 10 * kMiB);
  EXPECT_EQ(s.cached_bytes, 8 * kMiB);
  EXPECT_EQ(s.evictions, 1);
  allocator.ReleaseCached();
  EXPECT_EQ(allocator.stats().cached_bytes, 0u);
  EXPECT_EQ(allocator.stats().evictions, 2);
}

TEST(CpuCachingAllocator, RawAllocateAndDeallocate) {
  CpuCachingAllocator allocator;
  void* large = allocator.raw_allocate(3 * kMiB);
  void* small = allocator.raw_allocate(100);
  ASSERT_NE(large, nullptr);
  ASSERT_NE(small, nullptr);
  std::memset(large, 7, 3 * kMiB);
  std::memset(small, 7, 100);
  allocator.raw_deallocate(large);
  allocator.raw_deallocate(small);
  const CpuCachingAllocatorStats s = allocator.stats();
  EXPECT_EQ(s.in_use_bytes, 0u);
  EXPECT_EQ(s.cached_bytes, 4 * kMiB);
  EXPECT_EQ(allocator.raw_allocate(3 * kMiB), large);
  allocator.raw_deallocate(large);
}

TEST(CpuCachingAllocator, BlocksOutliveTheirAllocator) {
  c10::DataPtr survivor;
  {
    CpuCachingAllocator allocator;
    survivor = allocator.allocate(4 * kMiB);
    { c10::DataPtr cached = allocator.allocate(2 * kMiB); }
  }
  std::memset(survivor.get(), 3, 4 * kMiB);
  survivor.clear();  // unmapped, not cached by the destroyed allocator
  SUCCEED();
}

TEST(CpuCachingAllocator, ConcurrentAllocationsBalance) {
  CpuCachingAllocator allocator;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&allocator, t] {
      for (int i = 0; i < 50; ++i) {
        c10::DataPtr a = allocator.allocate(static_cast<size_t>(1 + (i + t) % 4) * kMiB);
        c10::DataPtr b = allocator.allocate(512);
        static_cast<char*>(a.get())[0] = static_cast<char>(i);
      }
    });
  }
  for (auto& th : threads) th.join();
  const CpuCachingAllocatorStats s = allocator.stats();
  EXPECT_EQ(s.in_use_bytes, 0u);
  EXPECT_EQ(s.hits + s.misses, 200);
  EXPECT_EQ(s.small_requests, 200);
  EXPECT_LE(s.peak_reserved_bytes,
            static_cast<size_t>((1.0 + allocator.options().reserve_slack) * s.peak_in_use_bytes));
}

TEST(CpuCachingAllocator, RejectsNegativeBounds) {
  CpuCachingAllocatorOptions options;
  options.max_waste = -1;
  EXPECT_THROW(CpuCachingAllocator{options}, c10::Error);
  options.max_waste = 0;
  options.reserve_slack = -0.5;
  EXPECT_THROW(CpuCachingAllocator{options}, c10::Error);
}

TEST(CpuCachingAllocator, InstalledAllocatorServesTensors) {
  at::Allocator* previous = c10::GetCPUAllocator();
  CpuCachingAllocator* allocator = InstallCpuCachingAllocator();
  ASSERT_NE(allocator, nullptr);
  EXPECT_EQ(c10::GetCPUAllocator(), allocator);
  EXPECT_EQ(InstallCpuCachingAllocator(), allocator);  // once per process
  const CpuCachingAllocatorStats before = allocator->stats();
  void* data = nullptr;
  {
    at::Tensor t = at::ones({1024, 1024, 3});  // 12 MiB
    data = t.data_ptr();
    EXPECT_FLOAT_EQ(t.sum().item<float>(), 1024.f * 1024.f * 3.f);
  }
  at::Tensor again = at::zeros({1024, 1024, 3});
  EXPECT_EQ(again.data_ptr(), data);  // the freed block came back
  EXPECT_EQ(again.abs().max().item<float>(), 0.f);
  const CpuCachingAllocatorStats after = allocator->stats();
  EXPECT_GE(after.hits - before.hits, 1);
  EXPECT_GE(after.misses - before.misses, 1);
  c10::SetCPUAllocator(previous, /*priority=*/255);  // leave later tests the default
  EXPECT_EQ(c10::GetCPUAllocator(), previous);
}

}  // namespace
}  // namespace lpdetr

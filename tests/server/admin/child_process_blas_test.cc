// ChildProcess::Start while another thread is inside multi-threaded GEMMs:
// the case of a fine-tuning job started under Detect load. Starting a child
// with fork() ran OpenBLAS's pthread_atfork handler, which shut the BLAS
// thread pool down under the other thread's GEMM; that GEMM then never
// returned (the inference worker hung, and the server with it).
#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include "server/admin/child_process.h"

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;

// Waits up to `limit` for `counter` to pass `value`.
bool Advances(const std::atomic<int64_t>& counter, int64_t value, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (counter.load() <= value) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

TEST(ChildProcessBlasTest, GemmsInAnotherThreadSurviveChildStarts) {
  auto set_threads =
      reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  if (set_threads == nullptr) GTEST_SKIP() << "the BLAS here is not OpenBLAS";
  set_threads(2);  // a thread pool to disturb, whatever the environment says
  at::set_num_threads(1);
  const fs::path log = fs::temp_directory_path() /
                       ("child_process_blas_test." + std::to_string(::getpid()) + ".log");

  std::atomic<bool> stop{false};
  std::atomic<int64_t> gemms{0};
  std::thread worker([&] {
    const at::Tensor a = at::randn({384, 384});
    const at::Tensor b = at::randn({384, 384});
    while (!stop.load()) {
      at::mm(a, b);
      gemms.fetch_add(1);
    }
  });
  ASSERT_TRUE(Advances(gemms, 0, std::chrono::seconds(30)));

  // The children start on a thread of their own, so that a hang in either
  // the start or the GEMMs is seen here and reported instead of hanging.
  constexpr int kStarts = 40;
  std::atomic<int64_t> starts{0};
  std::atomic<int> failures{0};
  std::thread starter([&] {
    for (int i = 0; i < kStarts; ++i) {
      ChildProcessOptions options;
      options.argv = {"/bin/true"};
      options.log_path = log.string();
      absl::StatusOr<std::unique_ptr<ChildProcess>> child =
          ChildProcess::Start(std::move(options));
      if (!child.ok() || !(*child)->Wait().Exited(0)) failures.fetch_add(1);
      starts.fetch_add(1);
    }
  });
  while (starts.load() < kStarts) {
    const int64_t s = starts.load(), g = gemms.load();
    if (!Advances(starts, s, std::chrono::seconds(10)) ||
        !Advances(gemms, g, std::chrono::seconds(10))) {
      // A thread is stuck inside OpenBLAS (or its fork handler) and cannot
      // be joined: report and leave without hanging the test run.
      ADD_FAILURE() << "stuck after " << starts.load() << " child starts and " << gemms.load()
                    << " GEMMs";
      std::fflush(nullptr);
      std::_Exit(1);
    }
  }
  starter.join();
  EXPECT_EQ(failures.load(), 0);
  stop = true;
  worker.join();
  fs::remove(log);
}

}  // namespace
}  // namespace lpdetr::admin

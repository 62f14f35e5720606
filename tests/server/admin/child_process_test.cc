// Tests of ChildProcess with real child processes (/bin/sh scripts,
// /bin/true, /bin/sleep).
#include "server/admin/child_process.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;

// Whether `text` contains `part`, with both in the failure message.
::testing::AssertionResult Contains(absl::string_view text, absl::string_view part) {
  if (absl::StrContains(text, part)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "'" << text << "' does not contain '" << part << "'";
}

using Strings = std::vector<std::string>;

// A fresh temporary directory per test, removed afterwards.
class ChildProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "child_process_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    log_ = (dir_ / "job.log").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Options running `script` under /bin/sh -c, logging to log_.
  ChildProcessOptions Shell(const std::string& script) {
    ChildProcessOptions options;
    options.argv = {"/bin/sh", "-c", script};
    options.log_path = log_;
    return options;
  }

  // Options that collect the stdout lines into lines_.
  ChildProcessOptions Collecting(const std::string& script) {
    ChildProcessOptions options = Shell(script);
    options.on_stdout_line = [this](std::string_view line) {
      absl::MutexLock lock(&lines_mu_);
      lines_.emplace_back(line);
    };
    return options;
  }

  std::vector<std::string> Lines() {
    absl::MutexLock lock(&lines_mu_);
    return lines_;
  }

  std::string ReadLog() const {
    std::ifstream in(log_, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  std::unique_ptr<ChildProcess> MustStart(ChildProcessOptions options) {
    auto child = ChildProcess::Start(std::move(options));
    EXPECT_TRUE(child.ok()) << child.status();
    return child.ok() ? std::move(child).value() : nullptr;
  }

  fs::path dir_;
  std::string log_;
  absl::Mutex lines_mu_;
  std::vector<std::string> lines_;
};

// Options whose callback notifies `ready` on the first stdout line "ready".
void NotifyOnReady(ChildProcessOptions& options, absl::Notification* ready) {
  options.on_stdout_line = [ready](std::string_view line) {
    if (line == "ready" && !ready->HasBeenNotified()) ready->Notify();
  };
}

// True once `pid` no longer runs: gone, or a zombie waiting for its new
// parent (an init that does not reap would otherwise keep it visible).
bool ProcessGone(pid_t pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string content((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t paren = content.rfind(')');
  if (paren == std::string::npos) return true;  // vanished meanwhile
  return content.size() > paren + 2 && content[paren + 2] == 'Z';
}

bool EventuallyGone(pid_t pid, absl::Duration limit = absl::Seconds(5)) {
  const absl::Time deadline = absl::Now() + limit;
  while (absl::Now() < deadline) {
    if (ProcessGone(pid)) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return ProcessGone(pid);
}

TEST(ExitStatusTest, ToStringAndExited) {
  ExitStatus code3{3, 0};
  EXPECT_TRUE(code3.Exited(3));
  EXPECT_FALSE(code3.Exited(0));
  EXPECT_EQ(code3.ToString(), "exit code 3");
  ExitStatus killed{-1, SIGKILL};
  EXPECT_FALSE(killed.Exited(-1));
  EXPECT_EQ(killed.ToString(), "killed by signal 9 (SIGKILL)");
  EXPECT_EQ(ExitStatus{}.ToString(), "exit status unknown");
}

TEST_F(ChildProcessTest, TrueExitsZero) {
  ChildProcessOptions options;
  options.argv = {"/bin/true"};
  options.log_path = log_;
  auto child = MustStart(std::move(options));
  ASSERT_NE(child, nullptr);
  EXPECT_GT(child->pid(), 0);
  ExitStatus status = child->Wait();
  EXPECT_TRUE(status.Exited(0)) << status.ToString();
  ASSERT_TRUE(child->Poll().has_value());
  EXPECT_TRUE(child->Poll()->Exited(0));
}

TEST_F(ChildProcessTest, ExitCodeReported) {
  auto child = MustStart(Shell("exit 3"));
  ASSERT_NE(child, nullptr);
  ExitStatus status = child->Wait();
  EXPECT_TRUE(status.Exited(3)) << status.ToString();
  EXPECT_EQ(status.ToString(), "exit code 3");
}

TEST_F(ChildProcessTest, SignalDeathReported) {
  auto child = MustStart(Shell("kill -9 $$"));
  ASSERT_NE(child, nullptr);
  ExitStatus status = child->Wait();
  EXPECT_EQ(status.signal, SIGKILL);
  EXPECT_TRUE(Contains(status.ToString(), "SIGKILL"));
}

TEST_F(ChildProcessTest, SignalMethodReachesChild) {
  auto child = MustStart(Shell("exec /bin/sleep 30"));
  ASSERT_NE(child, nullptr);
  child->Signal(SIGUSR1);
  ExitStatus status = child->Wait();
  EXPECT_EQ(status.signal, SIGUSR1) << status.ToString();
  child->Signal(SIGUSR1);  // after the reap: a no-op
}

TEST_F(ChildProcessTest, PollIsNonBlockingAndWaitForTimesOut) {
  auto child = MustStart(Shell("exec /bin/sleep 30"));
  ASSERT_NE(child, nullptr);
  EXPECT_FALSE(child->Poll().has_value());
  const absl::Time before = absl::Now();
  absl::StatusOr<ExitStatus> status = child->WaitFor(absl::Milliseconds(100));
  EXPECT_GE(absl::Now() - before, absl::Milliseconds(100));
  EXPECT_EQ(status.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(Contains(status.status().message(), "still running"));
  ExitStatus ended = child->Terminate(absl::Seconds(5));
  EXPECT_EQ(ended.signal, SIGTERM) << ended.ToString();
  absl::StatusOr<ExitStatus> after = child->WaitFor(absl::Seconds(5));
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->signal, SIGTERM);
}

TEST_F(ChildProcessTest, StdoutLinesInOrderWithPartialLastLine) {
  auto child = MustStart(Collecting("printf 'first\\nsecond\\n\\nfourth'; sleep 0.05; printf ' more\\nlast'"));
  ASSERT_NE(child, nullptr);
  EXPECT_TRUE(child->Wait().Exited(0));
  EXPECT_EQ(Lines(), (Strings{"first", "second", "", "fourth more", "last"}));
  EXPECT_EQ(ReadLog(), "first\nsecond\n\nfourth more\nlast\n");
}

TEST_F(ChildProcessTest, ManyLinesInOrder) {
  auto child = MustStart(Collecting("i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done"));
  ASSERT_NE(child, nullptr);
  EXPECT_TRUE(child->Wait().Exited(0));
  std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 2000u);
  for (int i = 0; i < 2000; ++i) ASSERT_EQ(lines[i], "line" + std::to_string(i));
}

TEST_F(ChildProcessTest, LongLinesWholeUpToCapAndSplitBeyond) {
  constexpr size_t kMax = ChildProcess::kMaxLineBytes;
  const size_t whole = 300 * 1024;   // several pipe reads, one line
  const size_t split = kMax + kMax / 2;
  const std::string script = "head -c " + std::to_string(whole) + " /dev/zero | tr '\\000' a; echo; " +
                             "head -c " + std::to_string(kMax) + " /dev/zero | tr '\\000' c; echo; " +
                             "head -c " + std::to_string(split) + " /dev/zero | tr '\\000' b; echo; echo tail";
  auto child = MustStart(Collecting(script));
  ASSERT_NE(child, nullptr);
  EXPECT_TRUE(child->Wait().Exited(0));
  std::vector<std::string> lines = Lines();
  ASSERT_EQ(lines.size(), 5u);
  EXPECT_EQ(lines[0], std::string(whole, 'a'));
  EXPECT_EQ(lines[1], std::string(kMax, 'c'));
  EXPECT_EQ(lines[2], std::string(kMax, 'b'));
  EXPECT_EQ(lines[3], std::string(split - kMax, 'b'));
  EXPECT_EQ(lines[4], "tail");
  EXPECT_EQ(ReadLog().size(), whole + 1 + kMax + 1 + split + 2 + 5);
}

TEST_F(ChildProcessTest, StdoutAndStderrBothAppendedToLog) {
  {
    std::ofstream(log_) << "earlier\n";
  }
  auto child = MustStart(Collecting("echo to-stdout; echo to-stderr >&2; sleep 0.05; echo again >&2"));
  ASSERT_NE(child, nullptr);
  EXPECT_TRUE(child->Wait().Exited(0));
  EXPECT_EQ(Lines(), (Strings{"to-stdout"}));  // stderr does not reach the callback
  const std::string log = ReadLog();
  EXPECT_EQ(log.rfind("earlier\n", 0), 0u) << log;
  EXPECT_TRUE(Contains(log, "to-stdout\n"));
  EXPECT_TRUE(Contains(log, "to-stderr\n"));
  EXPECT_TRUE(Contains(log, "again\n"));
}

TEST_F(ChildProcessTest, LogCreatedWithMode0640) {
  auto child = MustStart(Shell("true"));
  ASSERT_NE(child, nullptr);
  child->Wait();
  const mode_t mask = ::umask(0);
  ::umask(mask);
  struct stat st;
  ASSERT_EQ(::stat(log_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u & ~mask);
}

TEST_F(ChildProcessTest, ExtraEnvAddsAndReplaces) {
  ASSERT_EQ(::setenv("LPDETR_CHILD_TEST_PARENT", "from-parent", 1), 0);
  ASSERT_EQ(::setenv("LPDETR_CHILD_TEST_REPLACED", "old", 1), 0);
  ChildProcessOptions options = Collecting(
      "echo \"$LPDETR_CHILD_TEST_PARENT\"; echo \"$LPDETR_CHILD_TEST_REPLACED\"; "
      "echo \"$LPDETR_CHILD_TEST_NEW\"; env | grep -c '^LPDETR_CHILD_TEST_REPLACED='");
  options.extra_env = {"LPDETR_CHILD_TEST_NEW=a=b c", "LPDETR_CHILD_TEST_REPLACED=new"};
  auto child = MustStart(std::move(options));
  ASSERT_NE(child, nullptr);
  EXPECT_TRUE(child->Wait().Exited(0));
  EXPECT_EQ(Lines(), (Strings{"from-parent", "new", "a=b c", "1"}));
  ::unsetenv("LPDETR_CHILD_TEST_PARENT");
  ::unsetenv("LPDETR_CHILD_TEST_REPLACED");
}

TEST_F(ChildProcessTest, WorkingDirHonoured) {
  fs::create_directory(dir_ / "work");
  ChildProcessOptions options = Collecting("pwd -P");
  options.working_dir = (dir_ / "work").string();
  auto child = MustStart(std::move(options));
  ASSERT_NE(child, nullptr);
  EXPECT_TRUE(child->Wait().Exited(0));
  EXPECT_EQ(Lines(), (Strings{fs::canonical(dir_ / "work").string()}));
}

TEST_F(ChildProcessTest, BadWorkingDirIsStartError) {
  ChildProcessOptions options = Shell("true");
  options.working_dir = (dir_ / "missing").string();
  auto child = ChildProcess::Start(std::move(options));
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(child.status().message(), (dir_ / "missing").string()));
}

TEST_F(ChildProcessTest, NiceAdded) {
  errno = 0;
  const int base = ::getpriority(PRIO_PROCESS, 0);
  ASSERT_EQ(errno, 0);
  if (base + 5 > 19) GTEST_SKIP() << "the test runs at niceness " << base;
  // Field 19 of /proc/self/stat is the niceness of `cut` itself, inherited.
  ChildProcessOptions plain = Collecting("cut -d' ' -f19 /proc/self/stat");
  auto child = MustStart(std::move(plain));
  ASSERT_NE(child, nullptr);
  EXPECT_TRUE(child->Wait().Exited(0));
  ChildProcessOptions niced = Collecting("cut -d' ' -f19 /proc/self/stat");
  niced.nice = 5;
  child = MustStart(std::move(niced));
  ASSERT_NE(child, nullptr);
  EXPECT_TRUE(child->Wait().Exited(0));
  EXPECT_EQ(Lines(), (Strings{std::to_string(base), std::to_string(base + 5)}));
}

TEST_F(ChildProcessTest, TerminateLetsTrappedChildExit) {
  absl::Notification ready;
  ChildProcessOptions options = Shell("trap 'exit 3' TERM; echo ready; while :; do sleep 0.05; done");
  NotifyOnReady(options, &ready);
  auto child = MustStart(std::move(options));
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(ready.WaitForNotificationWithTimeout(absl::Seconds(10)));
  const absl::Time before = absl::Now();
  ExitStatus status = child->Terminate(absl::Seconds(10));
  EXPECT_TRUE(status.Exited(3)) << status.ToString();
  EXPECT_LT(absl::Now() - before, absl::Seconds(5));
}

TEST_F(ChildProcessTest, TerminateKillsChildIgnoringTermAfterGrace) {
  absl::Notification ready;
  ChildProcessOptions options = Shell("trap '' TERM; echo ready; while :; do sleep 0.05; done");
  NotifyOnReady(options, &ready);
  auto child = MustStart(std::move(options));
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(ready.WaitForNotificationWithTimeout(absl::Seconds(10)));
  const absl::Time before = absl::Now();
  ExitStatus status = child->Terminate(absl::Milliseconds(300));
  const absl::Duration took = absl::Now() - before;
  EXPECT_EQ(status.signal, SIGKILL) << status.ToString();
  EXPECT_GE(took, absl::Milliseconds(300));
  EXPECT_LT(took, absl::Seconds(5));
  EXPECT_TRUE(child->Wait().signal == SIGKILL);
}

TEST_F(ChildProcessTest, TerminateReachesGrandchildInGroup) {
  absl::Notification got_pid;
  std::atomic<pid_t> grandchild{0};
  // The grandchild's stdout goes elsewhere, so only the group signal can
  // reach it (not the SIGKILL for descendants that keep the pipe open).
  ChildProcessOptions options = Shell("/bin/sleep 30 >/dev/null & echo $!; wait");
  options.on_stdout_line = [&](std::string_view line) {
    if (!got_pid.HasBeenNotified()) {
      grandchild = std::stoi(std::string(line));
      got_pid.Notify();
    }
  };
  auto child = MustStart(std::move(options));
  ASSERT_NE(child, nullptr);
  ASSERT_TRUE(got_pid.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_GT(grandchild.load(), 0);
  EXPECT_FALSE(ProcessGone(grandchild));
  ExitStatus status = child->Terminate(absl::Seconds(5));
  EXPECT_EQ(status.signal, SIGTERM) << status.ToString();
  EXPECT_TRUE(EventuallyGone(grandchild)) << "grandchild " << grandchild.load();
}

TEST_F(ChildProcessTest, WaitWaitsForOutputOfDescendants) {
  // The child exits at once; a grandchild keeps stdout open and writes later.
  auto child = MustStart(Collecting("(sleep 0.3; echo late) & echo early"));
  ASSERT_NE(child, nullptr);
  ExitStatus status = child->Wait();
  EXPECT_TRUE(status.Exited(0)) << status.ToString();
  EXPECT_EQ(Lines(), (Strings{"early", "late"}));
}

TEST_F(ChildProcessTest, ConcurrentWaitersSeeOneStatus) {
  auto child = MustStart(Shell("sleep 0.2; exit 7"));
  ASSERT_NE(child, nullptr);
  std::vector<std::thread> threads;
  std::vector<ExitStatus> seen(4);
  for (int i = 0; i < 3; ++i) threads.emplace_back([&, i] { seen[i] = child->Wait(); });
  threads.emplace_back([&] {
    while (!child->Poll().has_value()) absl::SleepFor(absl::Milliseconds(5));
    seen[3] = *child->Poll();
  });
  for (std::thread& t : threads) t.join();
  for (const ExitStatus& s : seen) EXPECT_TRUE(s.Exited(7)) << s.ToString();
  EXPECT_TRUE(child->Terminate(absl::Seconds(1)).Exited(7));
}

TEST_F(ChildProcessTest, MissingExecutableIsStartError) {
  const std::string path = (dir_ / "no-such-binary").string();
  ChildProcessOptions options;
  options.argv = {path, "--flag"};
  options.log_path = log_;
  auto child = ChildProcess::Start(std::move(options));
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(Contains(child.status().message(), path));
  EXPECT_TRUE(Contains(child.status().message(), ::strerror(ENOENT)));
}

TEST_F(ChildProcessTest, NonExecutableIsStartError) {
  const std::string path = (dir_ / "script.sh").string();
  {
    std::ofstream(path) << "#!/bin/sh\necho hi\n";
  }
  ASSERT_EQ(::chmod(path.c_str(), 0644), 0);
  ChildProcessOptions options;
  options.argv = {path};
  options.log_path = log_;
  auto child = ChildProcess::Start(std::move(options));
  ASSERT_FALSE(child.ok());
  EXPECT_EQ(child.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(Contains(child.status().message(), path));
  EXPECT_TRUE(Contains(child.status().message(), ::strerror(EACCES)));
}

TEST_F(ChildProcessTest, InvalidOptionsRejected) {
  ChildProcessOptions empty_argv;
  empty_argv.log_path = log_;
  auto status = ChildProcess::Start(empty_argv).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "argv"));

  ChildProcessOptions bad_nice = Shell("true");
  bad_nice.nice = 20;
  status = ChildProcess::Start(bad_nice).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "20"));
  bad_nice.nice = -1;
  status = ChildProcess::Start(bad_nice).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "-1"));

  ChildProcessOptions no_log = Shell("true");
  no_log.log_path.clear();
  status = ChildProcess::Start(no_log).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "log_path"));

  ChildProcessOptions bad_env = Shell("true");
  bad_env.extra_env = {"NOEQUALS"};
  status = ChildProcess::Start(bad_env).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(status.message(), "NOEQUALS"));

  ChildProcessOptions bad_log = Shell("true");
  bad_log.log_path = (dir_ / "missing-dir" / "job.log").string();
  status = ChildProcess::Start(bad_log).status();
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status.message(), bad_log.log_path));
}

TEST_F(ChildProcessTest, DestructorKillsRunningChild) {
  auto child = MustStart(Shell("echo started; exec /bin/sleep 30"));
  ASSERT_NE(child, nullptr);
  const pid_t pid = child->pid();
  ASSERT_EQ(::kill(pid, 0), 0);
  const absl::Time before = absl::Now();
  child.reset();
  EXPECT_LT(absl::Now() - before, absl::Seconds(5));
  EXPECT_EQ(::kill(pid, 0), -1);
  EXPECT_EQ(errno, ESRCH);
}

TEST_F(ChildProcessTest, ChildGetsTermWhenStartingThreadExits) {
  std::unique_ptr<ChildProcess> child;
  std::thread starter([&] { child = MustStart(Shell("exec /bin/sleep 30")); });
  starter.join();
  ASSERT_NE(child, nullptr);
  absl::StatusOr<ExitStatus> status = child->WaitFor(absl::Seconds(10));
  ASSERT_TRUE(status.ok()) << status.status();
  EXPECT_EQ(status->signal, SIGTERM) << status->ToString();
}

TEST_F(ChildProcessTest, KillWithParentOffSurvivesStartingThread) {
  std::unique_ptr<ChildProcess> child;
  std::thread starter([&] {
    ChildProcessOptions options = Shell("exec /bin/sleep 30");
    options.kill_with_parent = false;
    child = MustStart(std::move(options));
  });
  starter.join();
  ASSERT_NE(child, nullptr);
  EXPECT_EQ(child->WaitFor(absl::Milliseconds(300)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(child->Terminate(absl::Seconds(5)).signal, SIGTERM);
}

TEST_F(ChildProcessTest, ChildHasOnlyStdioDescriptors) {
  // Open descriptors of the parent (the log, pipes, this file) do not leak.
  std::FILE* leak = std::fopen(log_.c_str(), "a");
  ASSERT_NE(leak, nullptr);
  auto child = MustStart(Collecting("ls /proc/self/fd | sort -n | tr '\\n' ' '"));
  ASSERT_NE(child, nullptr);
  EXPECT_TRUE(child->Wait().Exited(0));
  std::fclose(leak);
  // ls itself opens one descriptor for reading the directory.
  ASSERT_EQ(Lines().size(), 1u);
  EXPECT_EQ(Lines()[0].rfind("0 1 2 3 ", 0), 0u) << Lines()[0];
  EXPECT_FALSE(Contains(Lines()[0], " 4 "));
}

TEST_F(ChildProcessTest, IgnoredSignalsResetInChild) {
  // The server ignores SIGPIPE (gRPC does); the child must not inherit that.
  struct sigaction ign {}, old {};
  ign.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGPIPE, &ign, &old), 0);
  auto child = MustStart(Collecting("grep SigIgn /proc/self/status"));
  // The child reset its own copy of the dispositions, not the server's.
  struct sigaction now {};
  ASSERT_EQ(::sigaction(SIGPIPE, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, SIG_IGN);
  ::sigaction(SIGPIPE, &old, nullptr);
  ASSERT_NE(child, nullptr);
  EXPECT_TRUE(child->Wait().Exited(0));
  ASSERT_EQ(Lines().size(), 1u);
  const std::string hex = Lines()[0].substr(Lines()[0].find_last_of(" \t") + 1);
  const unsigned long long ignored = std::stoull(hex, nullptr, 16);
  EXPECT_EQ(ignored & (1ull << (SIGPIPE - 1)), 0u) << Lines()[0];
}

std::atomic<int> g_atfork_prepares{0};

TEST_F(ChildProcessTest, RunsNoAtforkHandlerInTheParent) {
  // Libraries' pthread_atfork handlers (OpenBLAS shuts its thread pool down
  // in one) must not run in the server while other threads use them.
  static const int registered =
      ::pthread_atfork([] { g_atfork_prepares.fetch_add(1); }, nullptr, nullptr);
  ASSERT_EQ(registered, 0);
  const int before = g_atfork_prepares.load();
  for (int i = 0; i < 3; ++i) {
    ChildProcessOptions options;
    options.argv = {"/bin/true"};
    options.log_path = log_;
    auto child = MustStart(std::move(options));
    ASSERT_NE(child, nullptr);
    EXPECT_TRUE(child->Wait().Exited(0));
  }
  EXPECT_EQ(g_atfork_prepares.load(), before);
}

}  // namespace
}  // namespace lpdetr::admin

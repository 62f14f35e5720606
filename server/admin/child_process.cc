// ChildProcess: clone(CLONE_VM | CLONE_VFORK) + execve of one child, a
// stdout line reader and a waiter that reaps the child's pid. See
// child_process.h.
#include "server/admin/child_process.h"

#include <fcntl.h>
#include <signal.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

extern char** environ;

namespace lpdetr::admin {
namespace {

// What failed in the child before (or at) execve, sent to the parent.
enum class ChildStage : int32_t {
  kSetpgid = 1,
  kSetpriority,
  kPrctl,
  kChdir,
  kDup2,
  kExec,
};

struct ChildReport {
  int32_t stage;
  int32_t error;
};

// Everything the child needs, prepared before the clone so that the child
// only makes async-signal-safe calls and writes nothing but its own stack
// (it shares the parent's memory until execve).
struct ChildPlan {
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* working_dir = nullptr;  // nullptr: stay in the parent's
  int target_nice = 0;
  bool set_nice = false;
  bool pdeathsig = false;
  pid_t parent_pid = 0;
  int null_fd = -1;
  int stdout_fd = -1;  // write end of the stdout pipe
  int log_fd = -1;
  int report_fd = -1;  // write end of the CLOEXEC report pipe
  long max_fd = 1024;  // for the close loop when close_range is missing
};

// Closes `fd` if it is open; keeps errno.
void CloseFd(int fd) {
  if (fd >= 0) {
    const int saved = errno;
    ::close(fd);
    errno = saved;
  }
}

// Moves `fd` to a descriptor >= 3 (CLOEXEC), so the child's dup2 onto 0/1/2
// never overwrites a descriptor it still has to copy.
int AboveStdio(int fd) {
  if (fd < 0 || fd > 2) return fd;
  const int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  CloseFd(fd);
  return moved;
}

// Async-signal-safe: sends the failure to the parent and exits.
[[noreturn]] void ChildFail(int report_fd, ChildStage stage, int error) {
  const ChildReport report{static_cast<int32_t>(stage), error};
  ssize_t n;
  do {
    n = ::write(report_fd, &report, sizeof(report));
  } while (n < 0 && errno == EINTR);
  ::_exit(127);
}

// Runs in the child between clone and execve: async-signal-safe calls only.
[[noreturn]] void RunChild(const ChildPlan& plan) {
  // A clean signal state: default dispositions, nothing blocked (the parent
  // blocked everything around the clone). The child has its own copy of the
  // dispositions (no CLONE_SIGHAND), so resetting them leaves the server's.
  struct sigaction dfl;
  ::memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  if (::setpgid(0, 0) != 0) ChildFail(plan.report_fd, ChildStage::kSetpgid, errno);
  if (plan.set_nice && ::setpriority(PRIO_PROCESS, 0, plan.target_nice) != 0) {
    ChildFail(plan.report_fd, ChildStage::kSetpriority, errno);
  }
  if (plan.pdeathsig) {
    if (::prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) ChildFail(plan.report_fd, ChildStage::kPrctl, errno);
    // The parent died before prctl took effect: nobody will watch us.
    if (::getppid() != plan.parent_pid) ::_exit(128 + SIGTERM);
  }
  if (plan.working_dir != nullptr && ::chdir(plan.working_dir) != 0) {
    ChildFail(plan.report_fd, ChildStage::kChdir, errno);
  }
  // All three sources are >= 3 (AboveStdio), so the order does not matter;
  // dup2 clears CLOEXEC on the targets.
  if (::dup2(plan.null_fd, STDIN_FILENO) < 0 || ::dup2(plan.stdout_fd, STDOUT_FILENO) < 0 ||
      ::dup2(plan.log_fd, STDERR_FILENO) < 0) {
    ChildFail(plan.report_fd, ChildStage::kDup2, errno);
  }
  // Every other descriptor closes at execve; the report pipe stays open until
  // then (it is CLOEXEC already).
  bool marked = false;
#ifdef CLOSE_RANGE_CLOEXEC
  marked = ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC) == 0;
#endif
  if (!marked) {
    for (long fd = 3; fd < plan.max_fd; ++fd) ::fcntl(static_cast<int>(fd), F_SETFD, FD_CLOEXEC);
  }
  ::execve(plan.argv[0], plan.argv, plan.envp);
  ChildFail(plan.report_fd, ChildStage::kExec, errno);
}

int ChildEntry(void* plan) { RunChild(*static_cast<const ChildPlan*>(plan)); }

// The child's stack while it shares the parent's memory (execve drops it).
constexpr size_t kChildStackBytes = 256 << 10;

// Starts RunChild(plan) in a new process and returns its pid once the child
// has called execve or exited (-1 with errno on failure).
//
// Not fork(): fork runs the pthread_atfork handlers of every library in the
// server, in the calling thread, while the other threads keep running.
// OpenBLAS's handler shuts its thread pool down under a GEMM that another
// thread (an inference worker) has in flight, and that GEMM then waits
// forever for work the pool dropped: the server hung when a fine-tuning job
// started under Detect load. clone(CLONE_VM | CLONE_VFORK), as posix_spawn
// does, runs no atfork handler and copies no page tables; the parent thread
// is suspended until the child's execve (or exit).
pid_t CloneChild(const ChildPlan& plan) {
  void* stack = ::mmap(nullptr, kChildStackBytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return -1;
  char* top = static_cast<char*>(stack) + kChildStackBytes;  // x86-64 stacks grow down
  const pid_t pid = ::clone(&ChildEntry, top, CLONE_VM | CLONE_VFORK | SIGCHLD,
                            const_cast<ChildPlan*>(&plan));
  const int error = errno;
  ::munmap(stack, kChildStackBytes);
  errno = error;
  return pid;
}

absl::Status ReportToStatus(const ChildReport& report, const ChildProcessOptions& options) {
  std::string what;
  switch (static_cast<ChildStage>(report.stage)) {
    case ChildStage::kSetpgid:
      what = "setpgid in the child failed";
      break;
    case ChildStage::kSetpriority:
      what = absl::StrCat("cannot set nice ", options.nice, " in the child");
      break;
    case ChildStage::kPrctl:
      what = "prctl(PR_SET_PDEATHSIG) in the child failed";
      break;
    case ChildStage::kChdir:
      what = absl::StrCat("cannot change to working_dir '", options.working_dir, "'");
      break;
    case ChildStage::kDup2:
      what = "dup2 in the child failed";
      break;
    case ChildStage::kExec:
      what = absl::StrCat("cannot execute '", options.argv[0], "'");
      break;
    default:
      what = absl::StrCat("child failed at unknown stage ", report.stage);
  }
  return absl::ErrnoToStatus(report.error, what);
}

bool HasNul(const std::string& s) { return s.find('\0') != std::string::npos; }

absl::Status Validate(const ChildProcessOptions& options) {
  if (options.argv.empty()) return absl::InvalidArgumentError("argv is empty");
  if (options.argv[0].empty()) return absl::InvalidArgumentError("argv[0] (the executable) is empty");
  for (size_t i = 0; i < options.argv.size(); ++i) {
    if (HasNul(options.argv[i])) {
      return absl::InvalidArgumentError(absl::StrCat("argv[", i, "] contains a NUL byte"));
    }
  }
  for (const std::string& entry : options.extra_env) {
    const size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0 || HasNul(entry)) {
      return absl::InvalidArgumentError(
          absl::StrCat("extra_env entry '", entry, "' is not KEY=VALUE"));
    }
  }
  if (options.nice < 0 || options.nice > 19) {
    return absl::InvalidArgumentError(absl::StrCat("nice ", options.nice, " is outside 0..19"));
  }
  if (options.log_path.empty()) return absl::InvalidArgumentError("log_path is empty");
  if (HasNul(options.log_path) || HasNul(options.working_dir)) {
    return absl::InvalidArgumentError("log_path or working_dir contains a NUL byte");
  }
  return absl::OkStatus();
}

// The parent's environment with `extra` added or replacing by key.
std::vector<std::string> BuildEnv(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  std::unordered_map<std::string, size_t> index;
  auto put = [&](std::string entry) {
    std::string key = entry.substr(0, entry.find('='));
    auto [it, inserted] = index.emplace(std::move(key), env.size());
    if (inserted) {
      env.push_back(std::move(entry));
    } else {
      env[it->second] = std::move(entry);
    }
  };
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) put(*e);
  for (const std::string& entry : extra) put(entry);
  return env;
}

std::vector<char*> CStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

bool ExitStatus::Exited(int code) const { return signal == 0 && exit_code == code; }

std::string ExitStatus::ToString() const {
  if (signal != 0) {
    const char* abbrev = ::sigabbrev_np(signal);
    if (abbrev == nullptr) return absl::StrCat("killed by signal ", signal);
    return absl::StrCat("killed by signal ", signal, " (SIG", abbrev, ")");
  }
  if (exit_code < 0) return "exit status unknown";
  return absl::StrCat("exit code ", exit_code);
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(ChildProcessOptions options) {
  if (absl::Status valid = Validate(options); !valid.ok()) return valid;

  // Everything the child reads is built here, before the clone.
  std::vector<std::string> argv_storage = options.argv;
  std::vector<char*> argv = CStrings(argv_storage);
  std::vector<std::string> env_storage = BuildEnv(options.extra_env);
  std::vector<char*> envp = CStrings(env_storage);

  int log_fd = ::open(options.log_path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (log_fd < 0) {
    return absl::ErrnoToStatus(errno, absl::StrCat("cannot open log file '", options.log_path, "'"));
  }
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  int out_pipe[2] = {-1, -1};
  int report_pipe[2] = {-1, -1};
  int wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  auto close_all = [&] {
    for (int fd : {log_fd, null_fd, out_pipe[0], out_pipe[1], report_pipe[0], report_pipe[1], wake_fd}) {
      CloseFd(fd);
    }
  };
  if (null_fd < 0 || wake_fd < 0 || ::pipe2(out_pipe, O_CLOEXEC) != 0 ||
      ::pipe2(report_pipe, O_CLOEXEC) != 0) {
    const int error = errno;
    close_all();
    return absl::ErrnoToStatus(error, "cannot create the child's descriptors");
  }
  log_fd = AboveStdio(log_fd);
  null_fd = AboveStdio(null_fd);
  out_pipe[1] = AboveStdio(out_pipe[1]);
  report_pipe[1] = AboveStdio(report_pipe[1]);
  if (log_fd < 0 || null_fd < 0 || out_pipe[1] < 0 || report_pipe[1] < 0) {
    const int error = errno;
    close_all();
    return absl::ErrnoToStatus(error, "cannot move the child's descriptors above 2");
  }

  ChildPlan plan;
  plan.argv = argv.data();
  plan.envp = envp.data();
  plan.working_dir = options.working_dir.empty() ? nullptr : options.working_dir.c_str();
  if (options.nice > 0) {
    errno = 0;
    int base = ::getpriority(PRIO_PROCESS, 0);
    if (base == -1 && errno != 0) base = 0;
    plan.set_nice = true;
    plan.target_nice = std::min(19, base + options.nice);
  }
  plan.pdeathsig = options.kill_with_parent;
  plan.parent_pid = ::getpid();
  plan.null_fd = null_fd;
  plan.stdout_fd = out_pipe[1];
  plan.log_fd = log_fd;
  plan.report_fd = report_pipe[1];
  const long open_max = ::sysconf(_SC_OPEN_MAX);
  if (open_max > 0) plan.max_fd = open_max;

  // Block every signal around the clone so no handler of the server runs in
  // the child (on the parent's memory) before it resets the dispositions.
  sigset_t all, old;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  const pid_t pid = CloneChild(plan);
  const int clone_error = errno;
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) {
    close_all();
    return absl::ErrnoToStatus(clone_error, "cannot start the child process (clone)");
  }

  // The child's ends; the parent keeps the log (the reader writes to it).
  for (int* fd : {&null_fd, &out_pipe[1], &report_pipe[1]}) {
    CloseFd(*fd);
    *fd = -1;
  }
  ChildReport report{};
  ssize_t n;
  do {
    n = ::read(report_pipe[0], &report, sizeof(report));
  } while (n < 0 && errno == EINTR);
  CloseFd(report_pipe[0]);
  report_pipe[0] = -1;
  if (n != 0) {
    // Failed before exec (or the report pipe broke): reap the child here.
    int wstatus = 0;
    while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
    close_all();
    if (n == static_cast<ssize_t>(sizeof(report))) return ReportToStatus(report, options);
    return absl::InternalError(absl::StrCat("lost the start report of '", options.argv[0], "'"));
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, out_pipe[0], log_fd, wake_fd,
                                                        std::move(options.on_stdout_line)));
}

ChildProcess::ChildProcess(pid_t pid, int stdout_fd, int log_fd, int wake_fd,
                           std::function<void(std::string_view)> on_stdout_line)
    : pid_(pid),
      stdout_fd_(stdout_fd),
      log_fd_(log_fd),
      wake_fd_(wake_fd),
      on_stdout_line_(std::move(on_stdout_line)) {
  reaper_ = std::thread(&ChildProcess::ReapLoop, this);
  reader_ = std::thread(&ChildProcess::ReadLoop, this);
}

ChildProcess::~ChildProcess() {
  {
    absl::MutexLock lock(&mu_);
    if (!reaped_) {
      SignalGroupLocked(SIGKILL);
      ::kill(pid_, SIGKILL);  // in case the child left its group
    }
  }
  reaper_.join();
  const uint64_t one = 1;
  while (::write(wake_fd_, &one, sizeof(one)) < 0 && errno == EINTR) {
  }
  reader_.join();
  CloseFd(stdout_fd_);
  CloseFd(log_fd_);
  CloseFd(wake_fd_);
}

std::optional<ExitStatus> ChildProcess::Poll() {
  absl::MutexLock lock(&mu_);
  if (!reaped_) return std::nullopt;
  return status_;
}

ExitStatus ChildProcess::Wait() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &ChildProcess::DoneLocked));
  return status_;
}

absl::StatusOr<ExitStatus> ChildProcess::WaitFor(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  if (mu_.AwaitWithTimeout(absl::Condition(this, &ChildProcess::DoneLocked), timeout)) {
    return status_;
  }
  if (!reaped_) {
    return absl::DeadlineExceededError(absl::StrCat(
        "child ", pid_, " still running after ", absl::FormatDuration(timeout)));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "child ", pid_, " ended (", status_.ToString(),
      ") but a descendant still holds its stdout open after ", absl::FormatDuration(timeout)));
}

void ChildProcess::Signal(int signo) {
  absl::MutexLock lock(&mu_);
  if (!reaped_) ::kill(pid_, signo);
}

ExitStatus ChildProcess::Terminate(absl::Duration grace) {
  const absl::Time deadline = absl::Now() + grace;
  absl::MutexLock lock(&mu_);
  if (reaped_) return status_;
  SignalGroupLocked(SIGTERM);
  if (!mu_.AwaitWithDeadline(absl::Condition(&reaped_), deadline)) {
    SignalGroupLocked(SIGKILL);
    mu_.Await(absl::Condition(&reaped_));
    return status_;
  }
  // The leader has ended; descendants that still hold its stdout get the rest
  // of the grace period, then SIGKILL. (The leader is reaped, but its pgid
  // cannot be reused while any member of the group is alive.)
  if (!mu_.AwaitWithDeadline(absl::Condition(&output_done_), deadline)) ::kill(-pid_, SIGKILL);
  return status_;
}

void ChildProcess::SignalGroupLocked(int signo) {
  if (!reaped_) ::kill(-pid_, signo);
}

void ChildProcess::ReapLoop() {
  // Wait without reaping, so the pid stays ours until the reap below, which
  // happens under mu_ (Signal() and Terminate() check reaped_ under mu_).
  siginfo_t info;
  int r;
  do {
    ::memset(&info, 0, sizeof(info));
    r = ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT);
  } while (r < 0 && errno == EINTR);

  absl::MutexLock lock(&mu_);
  ExitStatus status;  // unknown unless waitpid tells us
  if (r == 0) {
    int wstatus = 0;
    pid_t w;
    do {
      w = ::waitpid(pid_, &wstatus, 0);
    } while (w < 0 && errno == EINTR);
    if (w == pid_) {
      if (WIFEXITED(wstatus)) {
        status.exit_code = WEXITSTATUS(wstatus);
      } else if (WIFSIGNALED(wstatus)) {
        status.signal = WTERMSIG(wstatus);
      }
    }
  }
  status_ = status;
  reaped_ = true;
}

void ChildProcess::ReadLoop() {
  std::string pending;
  std::vector<char> buf(64 * 1024);
  bool draining = false;
  for (;;) {
    if (!draining) {
      pollfd fds[2] = {{stdout_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (fds[1].revents & POLLIN) {
        // Stop requested: take what is buffered in the pipe, then stop.
        draining = true;
        ::fcntl(stdout_fd_, F_SETFL, ::fcntl(stdout_fd_, F_GETFL) | O_NONBLOCK);
      } else if (fds[0].revents == 0) {
        continue;
      }
    }
    const ssize_t n = ::read(stdout_fd_, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR || (errno == EAGAIN && !draining)) continue;
      break;  // EAGAIN while draining: nothing more buffered
    }
    if (n == 0) break;  // every writer has closed the pipe
    pending.append(buf.data(), static_cast<size_t>(n));

    size_t start = 0;
    for (;;) {
      const size_t nl = pending.find('\n', start);
      if (nl != std::string::npos && nl - start <= kMaxLineBytes) {
        DeliverLine(std::string_view(pending).substr(start, nl - start));
        start = nl + 1;
      } else if (pending.size() - start > kMaxLineBytes) {
        // No '\n' among the next kMaxLineBytes + 1 bytes: cut a piece.
        DeliverLine(std::string_view(pending).substr(start, kMaxLineBytes));
        start += kMaxLineBytes;
      } else {
        break;
      }
    }
    pending.erase(0, start);
  }
  if (!pending.empty()) DeliverLine(pending);
  absl::MutexLock lock(&mu_);
  output_done_ = true;
}

void ChildProcess::DeliverLine(std::string_view line) {
  if (!log_failed_) {
    std::string out;
    out.reserve(line.size() + 1);
    out.append(line);
    out.push_back('\n');
    size_t done = 0;
    while (done < out.size()) {
      const ssize_t n = ::write(log_fd_, out.data() + done, out.size() - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        log_failed_ = true;  // a full disk or the like: keep streaming lines
        break;
      }
      done += static_cast<size_t>(n);
    }
  }
  if (on_stdout_line_) on_stdout_line_(line);
}

}  // namespace lpdetr::admin

// ChildProcess runs one child program (for the admin service: one
// `lpdetr-train train ...` fine-tuning job) and watches it until it ends.
// It is a plain Linux wrapper: clone + execve (as posix_spawn: no
// pthread_atfork handler runs in the server, so a library's thread pool in
// use by another thread is left alone), no shell, no LibTorch.
//
// What the child gets:
//   - argv[0] is executed as given (no PATH search; a relative path is
//     resolved against `working_dir`), with the parent's environment plus
//     `extra_env`.
//   - Its own process group (pgid == pid), so Terminate() reaches the whole
//     tree the child starts, unless a descendant leaves the group.
//   - stdin from /dev/null; stdout into a pipe read by this object; stderr
//     straight into the log file (O_APPEND). Every other descriptor is closed.
//   - Default signal dispositions and an empty signal mask, whatever the
//     server has set for itself (ignored SIGPIPE, blocked SIGTERM, ...).
//   - `nice` added to the calling thread's niceness (capped at 19).
//   - With `kill_with_parent`, PR_SET_PDEATHSIG(SIGTERM). Linux sends it when
//     the *thread* that called Start() exits, not only the process, so call
//     Start() from a long-lived thread (not from a short-lived worker).
//
// Output: one reader thread splits stdout into lines (a line longer than
// 1 MiB is cut into 1 MiB pieces; a last line without '\n' is delivered
// too), appends each line plus '\n' to the log file and calls
// `on_stdout_line`. The output is complete once every process holding the
// pipe (the child and any descendant) has closed it.
//
// Start() returns only after execve succeeded: a missing or non-executable
// program, or a bad working_dir, is Start()'s error, never a child that
// exits 127.
//
// Reaping: a waiter thread waits on the child's pid only (never -1) and
// reaps it exactly once; no SIGCHLD handler is installed. If the server
// reaps the child itself (a waitpid(-1) of its own, or SIGCHLD set to
// SIG_IGN), the exit status reads "unknown".
//
// Threading: all methods are thread-safe; Poll/Wait/WaitFor/Terminate may be
// called concurrently and all see the same cached ExitStatus. The
// on_stdout_line callback runs on the reader thread, must not throw and must
// not call Wait/WaitFor on this object (they wait for that callback).
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace lpdetr::admin {

// How a child ended.
struct ExitStatus {
  int exit_code = -1;  // valid when signal == 0; -1 with signal 0: unknown
  int signal = 0;      // the signal that killed it, 0 if it exited

  // signal == 0 && exit_code == code.
  bool Exited(int code) const;
  // "exit code 3", "killed by signal 9 (SIGKILL)" or "exit status unknown".
  std::string ToString() const;
};

struct ChildProcessOptions {
  // argv[0]: the path of the executable (no PATH search).
  std::vector<std::string> argv;
  // "KEY=VALUE" entries added to (or replacing in) the parent's environment.
  std::vector<std::string> extra_env;
  // The child's working directory; empty: the parent's.
  std::string working_dir;
  // Niceness added in the child before exec (0..19).
  int nice = 0;
  // Required. stdout and stderr lines are appended here (created with mode
  // 0640, less the umask, if missing).
  std::string log_path;
  // Optional; called on the reader thread for every stdout line (without the
  // '\n').
  std::function<void(std::string_view line)> on_stdout_line;
  // PR_SET_PDEATHSIG(SIGTERM): the child gets SIGTERM when the thread that
  // called Start() exits (see the file comment).
  bool kill_with_parent = true;
};

class ChildProcess {
 public:
  // The longest line delivered as one; longer lines are split.
  static constexpr size_t kMaxLineBytes = size_t{1} << 20;

  // Validates `options` (INVALID_ARGUMENT naming the bad value), opens the
  // log, forks and execs. Exec or chdir failures come back as errors naming
  // the path and the errno text (NOT_FOUND, PERMISSION_DENIED, ...).
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(ChildProcessOptions options);

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // If the child is still running: SIGKILL to its process group, reap it.
  // Then takes the stdout data already buffered, and joins the threads.
  ~ChildProcess();

  pid_t pid() const { return pid_; }

  // Non-blocking: the exit status once the child has been reaped (its
  // output may still be arriving; Wait() waits for that too).
  std::optional<ExitStatus> Poll();

  // Blocks until the child has exited AND all its stdout has been delivered.
  ExitStatus Wait();

  // Wait() with a limit: DEADLINE_EXCEEDED if the child is still running, or
  // if it has ended but a descendant still holds its stdout open.
  absl::StatusOr<ExitStatus> WaitFor(absl::Duration timeout);

  // Sends `signo` to the child itself (not its group); a no-op once it has
  // been reaped.
  void Signal(int signo);

  // SIGTERM to the process group, then SIGKILL to the group if the child has
  // not exited after `grace`; returns how it ended. When the child has
  // exited but descendants still hold its stdout at the end of `grace`, the
  // group gets SIGKILL too. Returns once the child is reaped; it does not
  // wait for the output (Wait() does).
  ExitStatus Terminate(absl::Duration grace);

 private:
  ChildProcess(pid_t pid, int stdout_fd, int log_fd, int wake_fd,
               std::function<void(std::string_view)> on_stdout_line);

  void ReapLoop();
  void ReadLoop();
  // Appends `line` + '\n' to the log and hands it to the callback.
  void DeliverLine(std::string_view line);
  // Sends `signo` to the process group while the leader is not reaped (so
  // the pgid is certainly still ours). Requires mu_.
  void SignalGroupLocked(int signo) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reaped and all output delivered.
  bool DoneLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return reaped_ && output_done_; }

  const pid_t pid_;
  const int stdout_fd_;  // read end of the child's stdout pipe
  const int log_fd_;     // the log file, O_APPEND
  const int wake_fd_;    // eventfd: tells the reader to drain and stop
  const std::function<void(std::string_view)> on_stdout_line_;
  bool log_failed_ = false;  // reader thread only: stop writing after an error

  absl::Mutex mu_;
  bool reaped_ ABSL_GUARDED_BY(mu_) = false;
  bool output_done_ ABSL_GUARDED_BY(mu_) = false;
  ExitStatus status_ ABSL_GUARDED_BY(mu_);

  std::thread reaper_;
  std::thread reader_;
};

}  // namespace lpdetr::admin

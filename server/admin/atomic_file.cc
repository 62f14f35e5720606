// Durable small-file writes: temp file, fsync, rename, fsync directory.
#include "server/admin/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <system_error>

#include "absl/strings/str_cat.h"

namespace lpdetr::admin {
namespace {

namespace fs = std::filesystem;

// Tries this many temp names before giving up on EEXIST (stale leftovers of
// a crashed process that had the same pid).
constexpr int kMaxTempAttempts = 16;

absl::Status ErrnoError(absl::string_view what, const fs::path& path, int error) {
  return absl::InternalError(absl::StrCat(what, " ", path.string(), ": ", std::strerror(error)));
}

// The next temp name for `path`: `.tmp-<name>-<pid>-<n>` next to it.
fs::path TempPathFor(const fs::path& path) {
  static std::atomic<uint64_t> counter{0};
  const uint64_t n = counter.fetch_add(1, std::memory_order_relaxed);
  return path.parent_path() /
         absl::StrCat(".tmp-", path.filename().string(), "-", ::getpid(), "-", n);
}

// Writes `contents` to the open `fd`, fsyncs and closes it.
absl::Status WriteSyncClose(int fd, absl::string_view contents, const fs::path& path) {
  absl::Status status = WriteFully(fd, contents, path);
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoError("cannot fsync", path, errno);
  if (::close(fd) != 0 && status.ok()) status = ErrnoError("cannot close", path, errno);
  return status;
}

}  // namespace

absl::Status WriteFully(int fd, absl::string_view data, const fs::path& path) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoError("cannot write", path, errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status CreateSyncedFile(const fs::path& path, absl::string_view contents) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoError("cannot create", path, errno);
  return WriteSyncClose(fd, contents, path);
}

absl::Status SyncDirectory(const fs::path& dir) {
  const fs::path target = dir.empty() ? fs::path(".") : dir;
  const int fd = ::open(target.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", target, errno);
  const int rc = ::fsync(fd);
  const int error = errno;
  ::close(fd);
  if (rc != 0) return ErrnoError("cannot fsync", target, error);
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const fs::path& path, absl::string_view contents) {
  if (path.filename().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot write ", path.string(), ": not a file name"));
  }
  fs::path tmp;
  int fd = -1;
  for (int attempt = 0; attempt < kMaxTempAttempts && fd < 0; ++attempt) {
    tmp = TempPathFor(path);
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0) return ErrnoError("cannot create", tmp, errno);
  absl::Status status = WriteSyncClose(fd, contents, tmp);
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = absl::InternalError(absl::StrCat("cannot rename ", tmp.string(), " to ",
                                              path.string(), ": ", std::strerror(errno)));
  }
  if (!status.ok()) {
    std::error_code ec;
    fs::remove(tmp, ec);
    return status;
  }
  return SyncDirectory(path.parent_path());
}

}  // namespace lpdetr::admin

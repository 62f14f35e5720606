// Durable small-file writes for server/admin: the one place that does "write
// a temp file, fsync it, rename it over the target, fsync the directory".
//
// WriteFileAtomically leaves either the old or the new contents at `path`
// after a crash, never a mix. Its temp file is `.tmp-<name>-<pid>-<n>` in the
// target's directory (same file system, so the rename is atomic); the leading
// ".tmp-" lets a directory's owner recognise and remove leftovers of a crash.
//
// Errors are INTERNAL statuses that name the operation, the path and the
// errno text ("cannot create /x/.tmp-ACTIVE-12-0: Permission denied").
//
// Threading: all functions are thread-safe; concurrent writers of the same
// target each use their own temp file and the last rename wins.
#pragma once

#include <filesystem>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace lpdetr::admin {

// Replaces `path` with `contents`: temp file in the same directory, fsync,
// rename over `path`, fsync the directory. On failure the temp file is
// removed and `path` is unchanged.
absl::Status WriteFileAtomically(const std::filesystem::path& path, absl::string_view contents);

// Creates `path`, which must not exist, with `contents` and fsyncs it (no
// rename: for files inside a directory that is itself renamed into place).
absl::Status CreateSyncedFile(const std::filesystem::path& path, absl::string_view contents);

// Writes all of `data` to the open descriptor `fd` (retrying short writes and
// EINTR); `path` only names the file in the error.
absl::Status WriteFully(int fd, absl::string_view data, const std::filesystem::path& path);

// Fsyncs the directory `dir`, making renames and creations in it durable.
absl::Status SyncDirectory(const std::filesystem::path& dir);

}  // namespace lpdetr::admin

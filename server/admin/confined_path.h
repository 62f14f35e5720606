// Confined paths: resolving a path given in an admin request so that it
// stays inside a root directory (--data_root, --registry_dir).
//
// The path and the root are resolved with realpath, so `..` and symbolic
// links are followed before the check; the check is component-wise (/data2
// is not inside /data). A path that does not exist yet is resolved through
// its deepest existing ancestor. The result is only as good as the moment it
// was computed: someone who can write inside the root can still swap a
// component for a symlink afterwards, so the root must be writable only by
// the server and its operators.
//
// Threading: a free function without state; safe from any thread.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace lpdetr::admin {

// The absolute, symlink-free path of `user_path` resolved relative to `root`
// (an absolute `user_path` is taken as is and must resolve inside `root`).
// The result is `root` itself or a path below it.
//   INVALID_ARGUMENT     empty path, a NUL byte, a path through a
//                        non-directory, a symlink loop
//   FAILED_PRECONDITION  `root` does not exist or is not a directory
//   PERMISSION_DENIED    the path resolves outside `root` (`..`, absolute, a
//                        symlink that escapes), or, with must_exist false, a
//                        `..` after a missing component or a symlink whose
//                        target does not exist
//   NOT_FOUND            must_exist and the path does not exist (or is a
//                        dangling symlink)
// Messages name `user_path` and `root` as given, never a symlink's target.
// With must_exist false, the missing part is appended to the resolved
// ancestor without `.` components.
absl::StatusOr<std::string> ResolveConfined(const std::string& root, const std::string& user_path,
                                            bool must_exist);

}  // namespace lpdetr::admin

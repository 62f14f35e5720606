// ResolveConfined: realpath-based confinement of request paths to a root.
#include "server/admin/confined_path.h"

#include <stdlib.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace lpdetr::admin {
namespace {

// realpath(3) of `path`, or the errno it failed with.
struct RealPathResult {
  std::string path;
  int error = 0;
};

RealPathResult RealPath(const std::string& path) {
  char* resolved = ::realpath(path.c_str(), nullptr);
  if (resolved == nullptr) return {std::string(), errno};
  RealPathResult result{resolved, 0};
  ::free(resolved);
  return result;
}

// Whether `path` is `root` or below it; both absolute and symlink-free.
bool IsWithin(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  if (!absl::StartsWith(path, root)) return false;
  return path.size() == root.size() || path[root.size()] == '/';
}

bool IsDirectory(const std::string& path) {
  struct stat st{};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// "/" followed by the first `count` components joined with '/'.
std::string JoinPrefix(const std::vector<std::string>& components, size_t count) {
  std::string out;
  for (size_t i = 0; i < count; ++i) absl::StrAppend(&out, "/", components[i]);
  return out.empty() ? "/" : out;
}

std::string AppendComponent(const std::string& dir, std::string_view name) {
  return dir == "/" ? absl::StrCat("/", absl::string_view(name.data(), name.size()))
                    : absl::StrCat(dir, "/", absl::string_view(name.data(), name.size()));
}

}  // namespace

absl::StatusOr<std::string> ResolveConfined(const std::string& root, const std::string& user_path,
                                            bool must_exist) {
  if (user_path.empty()) return absl::InvalidArgumentError("the path is empty");
  if (user_path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("the path contains a NUL byte");
  }
  const auto outside = [&] {
    return absl::PermissionDeniedError(
        absl::StrCat("path '", user_path, "' is outside the root '", root, "'"));
  };
  const auto not_found = [&] {
    return absl::NotFoundError(
        absl::StrCat("path '", user_path, "' does not exist under the root '", root, "'"));
  };

  const RealPathResult root_real = RealPath(root);
  if (root_real.error != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("the root '", root, "' cannot be resolved: ", std::strerror(root_real.error)));
  }
  if (!IsDirectory(root_real.path)) {
    return absl::FailedPreconditionError(absl::StrCat("the root '", root, "' is not a directory"));
  }

  const std::string joined =
      user_path.front() == '/' ? user_path : AppendComponent(root_real.path, user_path);
  const std::vector<std::string> components = absl::StrSplit(joined, '/', absl::SkipEmpty());

  // The deepest prefix of `joined` that resolves; "/" always does.
  size_t resolved_count = components.size();
  std::string ancestor;
  while (true) {
    const RealPathResult r = RealPath(JoinPrefix(components, resolved_count));
    if (r.error == 0) {
      ancestor = r.path;
      break;
    }
    if (r.error == ELOOP) {
      return absl::InvalidArgumentError(
          absl::StrCat("path '", user_path, "' goes through a symbolic link loop"));
    }
    if (r.error == EACCES) {
      return absl::PermissionDeniedError(
          absl::StrCat("path '", user_path, "' cannot be resolved: ", std::strerror(r.error)));
    }
    if ((r.error != ENOENT && r.error != ENOTDIR) || resolved_count == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("path '", user_path, "' cannot be resolved: ", std::strerror(r.error)));
    }
    --resolved_count;
  }
  if (!IsWithin(ancestor, root_real.path)) return outside();
  if (resolved_count == components.size()) return ancestor;

  // Part of the path is missing.
  if (must_exist) return not_found();
  struct stat st{};
  if (::lstat(AppendComponent(ancestor, components[resolved_count]).c_str(), &st) == 0) {
    // It exists, yet does not resolve: a symlink to nothing (maybe outside).
    return absl::PermissionDeniedError(absl::StrCat(
        "path '", user_path, "' goes through a symbolic link whose target does not exist (root '",
        root, "')"));
  }
  if (!IsDirectory(ancestor)) {
    return absl::InvalidArgumentError(
        absl::StrCat("path '", user_path, "' goes through something that is not a directory"));
  }
  std::string result = ancestor;
  for (size_t i = resolved_count; i < components.size(); ++i) {
    if (components[i] == ".") continue;
    if (components[i] == "..") {
      return absl::PermissionDeniedError(
          absl::StrCat("path '", user_path, "' has '..' after a component that does not exist (root '",
                       root, "')"));
    }
    result = AppendComponent(result, components[i]);
  }
  return result;
}

}  // namespace lpdetr::admin

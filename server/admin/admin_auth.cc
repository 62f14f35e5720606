// Admin token loading and bearer-token checks for AdminService.
#include "server/admin/admin_auth.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace lpdetr::admin {
namespace {

// Files longer than this are not token files; reading stops here.
constexpr size_t kMaxTokenFileBytes = 2 * kMaxAdminTokenLength;

bool IsTokenChar(char c) { return c >= '!' && c <= '~'; }

// INVALID_ARGUMENT naming `source` (never the token) unless the token is
// 16..4096 characters of '!'..'~'.
absl::Status ValidateToken(std::string_view token, const std::string& source) {
  if (token.size() < kMinAdminTokenLength) {
    return absl::InvalidArgumentError(absl::StrCat("the admin token from ", source, " is ",
                                                   token.size(), " characters long; at least ",
                                                   kMinAdminTokenLength, " are required"));
  }
  if (token.size() > kMaxAdminTokenLength) {
    return absl::InvalidArgumentError(absl::StrCat("the admin token from ", source, " is ",
                                                   token.size(), " characters long; at most ",
                                                   kMaxAdminTokenLength, " are allowed"));
  }
  for (size_t i = 0; i < token.size(); ++i) {
    if (!IsTokenChar(token[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("the admin token from ", source, " has a whitespace, control or non-ASCII ",
                       "character at position ", i, "; only '!'..'~' are allowed"));
    }
  }
  return absl::OkStatus();
}

// The contents of the token file, after checking its type and mode.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const std::string what = absl::StrCat("cannot open the admin token file '", path, "': ",
                                          std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(what) : absl::FailedPreconditionError(what);
  }
  struct stat st{};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot stat the admin token file '", path, "': ", std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(
        absl::StrCat("the admin token file '", path, "' is not a regular file"));
  }
  if ((st.st_mode & S_IROTH) != 0) {
    ::close(fd);
    char mode[8];
    std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return absl::FailedPreconditionError(absl::StrCat("the admin token file '", path,
                                                      "' is readable by others (mode ", mode,
                                                      "); run: chmod 600 ", path));
  }
  std::string contents;
  char buf[4096];
  while (contents.size() <= kMaxTokenFileBytes) {
    const ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return absl::FailedPreconditionError(
          absl::StrCat("cannot read the admin token file '", path, "': ", std::strerror(err)));
    }
    if (n == 0) break;
    contents.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return contents;
}

}  // namespace

absl::StatusOr<std::string> LoadAdminToken(const std::string& token_file, const char* env_value) {
  if (!token_file.empty()) {
    absl::StatusOr<std::string> contents = ReadTokenFile(token_file);
    if (!contents.ok()) return contents.status();
    const absl::string_view token = absl::StripTrailingAsciiWhitespace(*contents);
    const std::string source = absl::StrCat("file '", token_file, "'");
    if (token.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("the admin token ", source, " is empty"));
    }
    const std::string result(token);
    if (absl::Status s = ValidateToken(result, source); !s.ok()) return s;
    return result;
  }
  if (env_value != nullptr && env_value[0] != '\0') {
    const std::string result(env_value);
    if (absl::Status s = ValidateToken(result, "LPDETR_ADMIN_TOKEN"); !s.ok()) return s;
    return result;
  }
  return std::string();
}

bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  // Differing lengths leave a non-zero bit; every byte is folded in anyway.
  volatile size_t diff = a.size() ^ b.size();
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = diff | static_cast<size_t>(x ^ y);
  }
  return diff == 0;
}

grpc::Status CheckBearerToken(
    const std::multimap<grpc::string_ref, grpc::string_ref>& client_metadata,
    std::string_view expected) {
  const auto unauthenticated = [](const char* message) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, message);
  };
  const auto range = client_metadata.equal_range(grpc::string_ref("authorization"));
  if (range.first == range.second) return unauthenticated("missing authorization metadata");
  if (std::next(range.first) != range.second) {
    return unauthenticated("more than one authorization metadata entry");
  }
  std::string_view value(range.first->second.data(), range.first->second.size());
  const auto is_blank = [](char c) { return c == ' ' || c == '\t'; };
  while (!value.empty() && is_blank(value.front())) value.remove_prefix(1);
  while (!value.empty() && is_blank(value.back())) value.remove_suffix(1);

  constexpr std::string_view kScheme = "bearer";
  const bool scheme_ok = value.size() > kScheme.size() &&
                         absl::EqualsIgnoreCase(absl::string_view(value.data(), kScheme.size()),
                                                absl::string_view(kScheme.data(), kScheme.size())) &&
                         is_blank(value[kScheme.size()]);
  if (!scheme_ok) return unauthenticated("authorization must be 'Bearer <token>'");
  value.remove_prefix(kScheme.size());
  while (!value.empty() && is_blank(value.front())) value.remove_prefix(1);
  if (value.empty()) return unauthenticated("authorization must be 'Bearer <token>'");

  if (expected.empty()) return unauthenticated("the admin service has no token configured");
  if (!ConstantTimeEquals(value, expected)) return unauthenticated("the admin token is wrong");
  return grpc::Status::OK;
}

}  // namespace lpdetr::admin

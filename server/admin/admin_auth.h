// Admin authentication: loading the admin token and checking the
// `authorization: Bearer <token>` metadata every AdminService call carries.
//
// The token comes from a file (--admin_token_file) or from the
// LPDETR_ADMIN_TOKEN environment variable; with neither, the admin service
// stays off. A token is 16..4096 printable ASCII characters without spaces
// (it must fit in HTTP/2 metadata). Error messages never contain a token.
//
// Threading: free functions without state; safe from any thread.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include <grpcpp/support/status.h>
#include <grpcpp/support/string_ref.h>

#include "absl/status/statusor.h"

namespace lpdetr::admin {

// Shortest and longest admin token accepted.
inline constexpr size_t kMinAdminTokenLength = 16;
inline constexpr size_t kMaxAdminTokenLength = 4096;

// The admin token. From `token_file` when it is non-empty: trailing
// whitespace (the newline) is trimmed; NOT_FOUND if the file cannot be
// opened, FAILED_PRECONDITION naming the file if it is readable by others
// (mode & 0004; fix: chmod 600), INVALID_ARGUMENT if it is empty. Otherwise
// from `env_value` (the caller passes getenv("LPDETR_ADMIN_TOKEN"), may be
// null) when non-empty. An empty string when neither is set. A token shorter
// than kMinAdminTokenLength, longer than kMaxAdminTokenLength, or with a
// character outside '!'..'~' (whitespace, control, non-ASCII) is
// INVALID_ARGUMENT.
absl::StatusOr<std::string> LoadAdminToken(const std::string& token_file, const char* env_value);

// a == b in a time that depends only on the lengths, not on where the
// strings differ: every byte up to the longer length is compared.
bool ConstantTimeEquals(std::string_view a, std::string_view b);

// Checks the `authorization` entry of a call's metadata (as in
// grpc::ServerContext::client_metadata()) against `expected`. Accepted:
// "<scheme> <token>" with the scheme "Bearer" in any case, one or more
// spaces or tabs after it, and leading/trailing spaces and tabs of the value
// ignored; the token is everything after those spaces (so a token with an
// inner space never matches). UNAUTHENTICATED otherwise, with one of:
//   "missing authorization metadata"            (no entry)
//   "more than one authorization metadata entry"
//   "authorization must be 'Bearer <token>'"    (other scheme, no token)
//   "the admin token is wrong"
//   "the admin service has no token configured" (expected is empty)
grpc::Status CheckBearerToken(
    const std::multimap<grpc::string_ref, grpc::string_ref>& client_metadata,
    std::string_view expected);

}  // namespace lpdetr::admin

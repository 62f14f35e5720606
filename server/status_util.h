// absl::Status <-> grpc::Status: the single mapping used by the server. Code
// values of absl::StatusCode and grpc::StatusCode are both the canonical
// google.rpc.Code numbers, so the mapping keeps the code and the message.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace lpdetr::server {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// Canonical upper-case name of a code ("INVALID_ARGUMENT"), for metrics labels.
const char* CodeName(absl::StatusCode code);

}  // namespace lpdetr::server

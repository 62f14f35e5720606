// The single absl::Status -> grpc::Status mapping keeps code and message.
#include "server/status_util.h"

#include <gtest/gtest.h>

namespace lpdetr::server {
namespace {

TEST(StatusUtilTest, KeepsCodeAndMessage) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  const struct {
    absl::Status in;
    grpc::StatusCode code;
    const char* name;
  } cases[] = {
      {absl::InvalidArgumentError("image 0: empty"), grpc::INVALID_ARGUMENT, "INVALID_ARGUMENT"},
      {absl::ResourceExhaustedError("full"), grpc::RESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED"},
      {absl::DeadlineExceededError("late"), grpc::DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"},
      {absl::UnavailableError("bye"), grpc::UNAVAILABLE, "UNAVAILABLE"},
      {absl::CancelledError("c"), grpc::CANCELLED, "CANCELLED"},
      {absl::NotFoundError("m"), grpc::NOT_FOUND, "NOT_FOUND"},
      {absl::InternalError("x"), grpc::INTERNAL, "INTERNAL"},
  };
  for (const auto& c : cases) {
    const grpc::Status g = ToGrpcStatus(c.in);
    EXPECT_EQ(g.error_code(), c.code) << c.in;
    EXPECT_EQ(g.error_message(), std::string(c.in.message()));
    EXPECT_EQ(FromGrpcStatus(g), c.in);
    EXPECT_STREQ(CodeName(c.in.code()), c.name);
  }
  EXPECT_STREQ(CodeName(absl::StatusCode::kOk), "OK");
}

}  // namespace
}  // namespace lpdetr::server

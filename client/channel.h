// Connection settings shared by every lpdetr-client command: the server
// address, TLS / mutual-TLS files and the per-call deadline, and the helpers
// that turn them into a gRPC channel and client contexts.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

namespace lpdetr::client {

struct ConnectionOptions {
  // host:port of lpdetr-server's gRPC listener.
  std::string address = "127.0.0.1:50051";
  // PEM CA bundle that signed the server certificate; setting it turns TLS on.
  std::string tls_ca;
  // PEM client certificate and key, for servers that require mutual TLS.
  std::string tls_cert;
  std::string tls_key;
  // Expected server name in its certificate when it differs from the address
  // host (e.g. "localhost" while dialing 127.0.0.1).
  std::string tls_server_name;
  // Deadline of each call in seconds (the whole stream for DetectStream);
  // <= 0 means none.
  double timeout_seconds = 30.0;
};

// Reads a whole file; throws std::runtime_error naming the path on failure.
std::string ReadFileOrThrow(const std::string& path);

// A channel to options.address, TLS when tls_ca/tls_cert is set. Throws
// std::runtime_error when the TLS files can't be read or are inconsistent.
std::shared_ptr<grpc::Channel> MakeChannel(const ConnectionOptions& options);

// Sets the deadline of `context` from options.timeout_seconds.
void ApplyDeadline(const ConnectionOptions& options, grpc::ClientContext* context);

// "RESOURCE_EXHAUSTED" etc.
const char* StatusCodeName(grpc::StatusCode code);

// "CODE: message" of a failed status.
std::string DescribeStatus(const grpc::Status& status);

}  // namespace lpdetr::client

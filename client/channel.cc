#include "channel.h"

#include <fstream>
#include <sstream>
#include <stdexcept>

namespace lpdetr::client {

std::string ReadFileOrThrow(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open '" + path + "'");
  std::ostringstream data;
  data << in.rdbuf();
  if (in.bad()) throw std::runtime_error("cannot read '" + path + "'");
  return data.str();
}

std::shared_ptr<grpc::Channel> MakeChannel(const ConnectionOptions& options) {
  if (options.address.empty()) throw std::runtime_error("--address is empty");
  grpc::ChannelArguments args;
  // Responses are small, but a client may list big models or many results.
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(-1);
  const bool tls = !options.tls_ca.empty() || !options.tls_cert.empty() ||
                   !options.tls_key.empty();
  if (!tls) {
    if (!options.tls_server_name.empty()) {
      throw std::runtime_error("--tls_server_name needs TLS (--tls_ca)");
    }
    return grpc::CreateCustomChannel(options.address, grpc::InsecureChannelCredentials(),
                                     args);
  }
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    throw std::runtime_error("mutual TLS needs both --tls_cert and --tls_key");
  }
  grpc::SslCredentialsOptions ssl;
  if (!options.tls_ca.empty()) ssl.pem_root_certs = ReadFileOrThrow(options.tls_ca);
  if (!options.tls_cert.empty()) {
    ssl.pem_cert_chain = ReadFileOrThrow(options.tls_cert);
    ssl.pem_private_key = ReadFileOrThrow(options.tls_key);
  }
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  return grpc::CreateCustomChannel(options.address, grpc::SslCredentials(ssl), args);
}

void ApplyDeadline(const ConnectionOptions& options, grpc::ClientContext* context) {
  if (options.timeout_seconds > 0) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::microseconds(static_cast<int64_t>(
                              options.timeout_seconds * 1e6)));
  }
}

const char* StatusCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    default: return "UNKNOWN_CODE";
  }
}

std::string DescribeStatus(const grpc::Status& status) {
  std::string out = StatusCodeName(status.error_code());
  if (!status.error_message().empty()) out += ": " + status.error_message();
  return out;
}

}  // namespace lpdetr::client

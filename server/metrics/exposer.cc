// The /metrics HTTP listener: a minimal HTTP/1.1 server on a POSIX socket.
// One thread accepts; each connection is served on its own thread (at most
// kMaxConnections at a time, others get 503), with keep-alive and an idle
// timeout. The destructor wakes every thread through a pipe and joins them.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/metrics/metrics.h"

namespace lpdetr::metrics {
namespace {

constexpr int kMaxConnections = 16;
constexpr int kIdleTimeoutMs = 15000;      // keep-alive and slow-client limit
constexpr size_t kMaxHeaderBytes = 16384;  // request line + headers
constexpr char kMetricsContentType[] = "text/plain; version=0.0.4; charset=utf-8";

std::string ErrnoText(int err) { return std::strerror(err); }

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r");
  return s.substr(b, e - b + 1);
}

// Splits "host:port" / "[v6]:port"; an empty host or "*" means every address.
absl::Status SplitAddress(const std::string& address, std::string* host, int* port) {
  std::string port_text;
  if (!address.empty() && address[0] == '[') {
    size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return absl::InvalidArgumentError("metrics address '" + address + "': expected [ipv6]:port");
    }
    *host = address.substr(1, close - 1);
    port_text = address.substr(close + 2);
  } else {
    size_t colon = address.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError("metrics address '" + address + "': expected host:port");
    }
    *host = address.substr(0, colon);
    port_text = address.substr(colon + 1);
    if (host->find(':') != std::string::npos) {
      return absl::InvalidArgumentError("metrics address '" + address +
                                        "': write IPv6 hosts in brackets, [::1]:port");
    }
  }
  if (*host == "*") host->clear();
  bool digits =
      !port_text.empty() && port_text.size() <= 5 &&
      std::all_of(port_text.begin(), port_text.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!digits || std::stoi(port_text) > 65535) {
    return absl::InvalidArgumentError("metrics address '" + address + "': port '" + port_text +
                                      "' is not a number in 0..65535");
  }
  *port = std::stoi(port_text);
  return absl::OkStatus();
}

// Length of the request head up to and including its empty line; 0 while incomplete.
size_t HeadLength(const std::string& b) {
  for (size_t i = b.find('\n'); i != std::string::npos; i = b.find('\n', i + 1)) {
    if (i + 1 < b.size() && b[i + 1] == '\n') return i + 2;
    if (i + 2 < b.size() && b[i + 1] == '\r' && b[i + 2] == '\n') return i + 3;
  }
  return 0;
}

// The head's non-empty lines without their CR/LF; never empty (the request line may be "").
std::vector<std::string> SplitLines(const std::string& head) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < head.size()) {
    size_t end = head.find('\n', start);
    if (end == std::string::npos) end = head.size();
    std::string line = head.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty() || lines.empty()) lines.push_back(line);
    start = end + 1;
  }
  if (lines.empty()) lines.emplace_back();
  return lines;
}

bool SendAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

struct Response {
  int code = 200;
  std::string reason = "OK";
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::string extra_headers;
};

std::string RenderResponse(const Response& r, bool keep_alive, bool head) {
  std::string out = "HTTP/1.1 " + std::to_string(r.code) + " " + r.reason + "\r\n";
  out += "Content-Type: " + r.content_type + "\r\n";
  out += "Content-Length: " + std::to_string(r.body.size()) + "\r\n";
  out += keep_alive ? "Connection: keep-alive\r\n" : "Connection: close\r\n";
  out += r.extra_headers;
  out += "\r\n";
  if (!head) out += r.body;
  return out;
}

Response Error(int code, const std::string& reason) {
  Response r;
  r.code = code;
  r.reason = reason;
  r.body = reason + "\n";
  return r;
}

}  // namespace

struct Exposer::Impl {
  std::shared_ptr<Registry> registry;
  int listen_fd = -1;
  int wake_pipe[2] = {-1, -1};  // written once by the destructor to wake all polls
  int port = 0;
  std::atomic<bool> stopping{false};
  std::thread acceptor;

  struct Connection {
    std::thread thread;
    int fd = -1;  // -1 once closed; guarded by mu
    std::atomic<bool> done{false};
  };
  std::mutex mu;
  std::list<Connection> connections;

  ~Impl() {
    if (listen_fd >= 0) ::close(listen_fd);
    for (int fd : wake_pipe) {
      if (fd >= 0) ::close(fd);
    }
  }

  // Waits until `fd` is readable; false on stop, timeout or error.
  bool WaitReadable(int fd, int timeout_ms) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {wake_pipe[0], POLLIN, 0}};
    while (true) {
      int n = ::poll(fds, 2, timeout_ms);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0 || stopping.load() || (fds[1].revents & POLLIN)) return false;
      return (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0;
    }
  }

  Response Route(const std::string& method, const std::string& target) {
    if (method != "GET" && method != "HEAD") {
      Response r = Error(405, "Method Not Allowed");
      r.extra_headers = "Allow: GET, HEAD\r\n";
      return r;
    }
    std::string path = target.substr(0, target.find('?'));
    if (path == "/metrics") {
      Response r;
      r.content_type = kMetricsContentType;
      r.body = registry->Serialize();
      return r;
    }
    if (path == "/healthz") {
      Response r;
      r.body = "ok\n";
      return r;
    }
    return Error(404, "Not Found");
  }

  void Serve(int fd) {
    std::string buffer;
    char chunk[4096];
    while (!stopping.load()) {
      // Read one request head (lines end in CRLF, or a bare LF from hand-typed requests).
      size_t head_length;
      while ((head_length = HeadLength(buffer)) == 0) {
        if (buffer.size() > kMaxHeaderBytes) {
          SendAll(fd, RenderResponse(Error(431, "Request Header Fields Too Large"), false, false));
          return;
        }
        if (!WaitReadable(fd, kIdleTimeoutMs)) return;
        ssize_t n = ::recv(fd, chunk, sizeof(chunk), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        buffer.append(chunk, static_cast<size_t>(n));
      }
      std::vector<std::string> lines = SplitLines(buffer.substr(0, head_length));
      buffer.erase(0, head_length);

      const std::string& request_line = lines.front();
      size_t sp1 = request_line.find(' ');
      size_t sp2 = sp1 == std::string::npos ? std::string::npos : request_line.find(' ', sp1 + 1);
      if (sp2 == std::string::npos) {
        SendAll(fd, RenderResponse(Error(400, "Bad Request"), false, false));
        return;
      }
      std::string method = request_line.substr(0, sp1);
      std::string target = request_line.substr(sp1 + 1, sp2 - sp1 - 1);
      std::string version = request_line.substr(sp2 + 1);
      if (version.rfind("HTTP/1.", 0) != 0) {
        SendAll(fd, RenderResponse(Error(505, "HTTP Version Not Supported"), false, false));
        return;
      }
      bool keep_alive = version != "HTTP/1.0";
      bool has_body = false;
      for (size_t i = 1; i < lines.size(); ++i) {
        const std::string& line = lines[i];
        size_t colon = line.find(':');
        if (colon == std::string::npos) continue;
        std::string name = Lower(Trim(line.substr(0, colon)));
        std::string value = Lower(Trim(line.substr(colon + 1)));
        if (name == "connection") {
          if (value.find("close") != std::string::npos) keep_alive = false;
          if (value.find("keep-alive") != std::string::npos) keep_alive = true;
        } else if ((name == "content-length" && value != "0") || name == "transfer-encoding") {
          has_body = true;  // not expected on GET; answer, then close
        }
      }
      if (has_body) keep_alive = false;
      Response response = Route(method, target);
      if (!SendAll(fd, RenderResponse(response, keep_alive, method == "HEAD")) || !keep_alive) {
        return;
      }
    }
  }

  void AcceptLoop() {
    while (!stopping.load()) {
      if (!WaitReadable(listen_fd, -1)) {
        if (stopping.load()) return;
        continue;
      }
      int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EMFILE || errno == ENFILE) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        continue;
      }
      std::lock_guard<std::mutex> lock(mu);
      // Reap finished connection threads.
      for (auto it = connections.begin(); it != connections.end();) {
        if (it->done.load()) {
          it->thread.join();
          it = connections.erase(it);
        } else {
          ++it;
        }
      }
      if (static_cast<int>(connections.size()) >= kMaxConnections) {
        SendAll(fd, RenderResponse(Error(503, "Service Unavailable"), false, false));
        ::close(fd);
        continue;
      }
      timeval send_timeout{kIdleTimeoutMs / 1000, 0};
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &send_timeout, sizeof(send_timeout));
      connections.emplace_back();
      Connection& c = connections.back();
      c.fd = fd;
      c.thread = std::thread([this, fd, &c] {
        Serve(fd);
        std::lock_guard<std::mutex> connection_lock(mu);
        ::shutdown(fd, SHUT_RDWR);
        ::close(fd);
        c.fd = -1;
        c.done.store(true);
      });
    }
  }
};

absl::StatusOr<std::unique_ptr<Exposer>> Exposer::Create(const std::string& address,
                                                         std::shared_ptr<Registry> registry) {
  if (!registry) return absl::InvalidArgumentError("Exposer::Create: registry is null");
  std::string host;
  int port = 0;
  absl::Status split = SplitAddress(address, &host, &port);
  if (!split.ok()) return split;

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string port_text = std::to_string(port);
  int gai = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port_text.c_str(), &hints, &found);
  if (gai != 0) {
    return absl::InvalidArgumentError("metrics address '" + address + "': cannot resolve host '" +
                                      host + "': " + ::gai_strerror(gai));
  }
  auto impl = std::make_unique<Impl>();
  impl->registry = std::move(registry);
  std::string last_error = "no address";
  // The first resolved address that binds wins.
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    // Non-blocking, so that accept() after poll() cannot block when a client went away.
    int fd =
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
      last_error = ErrnoText(errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 64) != 0) {
      last_error = ErrnoText(errno);
      ::close(fd);
      continue;
    }
    impl->listen_fd = fd;
    break;
  }
  ::freeaddrinfo(found);
  if (impl->listen_fd < 0) {
    return absl::UnavailableError("metrics address '" + address +
                                  "': cannot listen: " + last_error);
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (::getsockname(impl->listen_fd, reinterpret_cast<sockaddr*>(&bound), &len) != 0) {
    return absl::InternalError("metrics address '" + address +
                               "': getsockname: " + ErrnoText(errno));
  }
  impl->port = bound.ss_family == AF_INET6
                   ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                   : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  if (::pipe2(impl->wake_pipe, O_CLOEXEC) != 0) {
    return absl::InternalError("metrics listener: pipe: " + ErrnoText(errno));
  }
  Impl* raw = impl.get();
  impl->acceptor = std::thread([raw] { raw->AcceptLoop(); });
  std::unique_ptr<Exposer> exposer(new Exposer());
  exposer->impl_ = std::move(impl);
  return exposer;
}

Exposer::~Exposer() {
  if (!impl_) return;
  impl_->stopping.store(true);
  char byte = 1;
  while (::write(impl_->wake_pipe[1], &byte, 1) < 0 && errno == EINTR) {
  }
  if (impl_->acceptor.joinable()) impl_->acceptor.join();
  std::list<Impl::Connection> connections;
  {
    // Unblock connection threads stuck in send() to a client that does not read.
    std::lock_guard<std::mutex> lock(impl_->mu);
    for (auto& c : impl_->connections) {
      if (c.fd >= 0) ::shutdown(c.fd, SHUT_RDWR);
    }
    connections = std::move(impl_->connections);  // list nodes keep their addresses
  }
  for (auto& c : connections) {
    if (c.thread.joinable()) c.thread.join();
  }
}

int Exposer::port() const { return impl_->port; }

}  // namespace lpdetr::metrics

// Helpers for the metrics tests: a tiny blocking HTTP/1.1 client on loopback,
// a child-process runner (posix fork + exec) and temporary directories.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace lpdetr::metrics::testing {

// A connected TCP socket to 127.0.0.1:port with 10 s send/receive timeouts.
inline int ConnectLoopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error(std::string("socket: ") + std::strerror(errno));
  timeval timeout{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ::close(fd);
    throw std::runtime_error("connect to 127.0.0.1:" + std::to_string(port) + ": " +
                             std::strerror(err));
  }
  return fd;
}

inline void SendAllOrThrow(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) throw std::runtime_error(std::string("send: ") + std::strerror(errno));
    sent += static_cast<size_t>(n);
  }
}

// Everything the peer sends until it closes (or the receive timeout).
inline std::string ReadUntilClose(int fd) {
  std::string out;
  char buf[4096];
  while (true) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
};

// Parses one response from `raw`; `consumed` gets its length (head + body by Content-Length).
inline HttpResponse ParseResponse(const std::string& raw, size_t* consumed = nullptr) {
  HttpResponse r;
  size_t head_end = raw.find("\r\n\r\n");
  if (head_end == std::string::npos) throw std::runtime_error("no HTTP head in: " + raw);
  std::istringstream head(raw.substr(0, head_end));
  std::string line;
  std::getline(head, line);
  if (line.rfind("HTTP/1.1 ", 0) != 0) throw std::runtime_error("bad status line: " + line);
  r.status = std::stoi(line.substr(9, 3));
  while (std::getline(head, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    size_t v = line.find_first_not_of(' ', colon + 1);
    r.headers[name] = v == std::string::npos ? "" : line.substr(v);
  }
  size_t length = raw.size() - head_end - 4;
  if (r.headers.count("content-length")) length = std::stoul(r.headers["content-length"]);
  r.body = raw.substr(head_end + 4, length);
  if (consumed) *consumed = head_end + 4 + length;
  return r;
}

// Sends `request` verbatim on a fresh connection and reads until the server closes.
inline std::string RawExchange(int port, const std::string& request) {
  int fd = ConnectLoopback(port);
  try {
    SendAllOrThrow(fd, request);
    std::string out = ReadUntilClose(fd);
    ::close(fd);
    return out;
  } catch (...) {
    ::close(fd);
    throw;
  }
}

inline HttpResponse HttpGet(int port, const std::string& target) {
  return ParseResponse(RawExchange(
      port, "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"));
}

// A free TCP port on 127.0.0.1 at the time of the call.
inline int FreeLoopbackPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw std::runtime_error(std::string("free port: ") + std::strerror(errno));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

// A fresh directory under TMPDIR, removed with its contents on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "lpdetr_metrics_XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw std::runtime_error(std::string("mkdtemp: ") + std::strerror(errno));
    }
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

inline std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void WriteFile(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

// A child process: argv[0] is a path; stdin from `stdin_path` (or /dev/null),
// stdout and stderr to `log_path`. Killed (SIGTERM, then SIGKILL) when destroyed;
// it also dies with the test process (PR_SET_PDEATHSIG).
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& argv, const std::string& log_path,
               const std::string& stdin_path = "/dev/null") {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      int in = ::open(stdin_path.c_str(), O_RDONLY);
      int out = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (in < 0 || out < 0) ::_exit(126);
      ::dup2(in, 0);
      ::dup2(out, 1);
      ::dup2(out, 2);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
  }
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  ~ChildProcess() { Stop(); }

  // Exit status if the child has exited (-1 while it runs); signals give 128 + signo.
  int Poll() {
    if (pid_ <= 0) return status_;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      pid_ = -1;
    }
    return status_;
  }

  // Waits for exit; kills after `timeout`.
  int Wait(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (Poll() < 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return status_;
  }

  // SIGTERM, up to 10 s to exit, then SIGKILL; returns the exit status.
  int Stop() {
    if (Poll() >= 0) return status_;
    ::kill(pid_, SIGTERM);
    return Wait(std::chrono::seconds(10));
  }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
};

// Runs a program to completion; returns its exit status, output in *output.
inline int RunProgram(const std::vector<std::string>& argv, const std::string& stdin_path,
                      std::string* output) {
  TempDir dir;
  auto log = dir.path() / "output.txt";
  int status;
  {
    ChildProcess child(argv, log.string(), stdin_path);
    status = child.Wait(std::chrono::seconds(30));
  }
  if (output) *output = ReadFile(log);
  return status;
}

// A tool's path from the environment (override) or the build's default; "" if
// it is not an executable file.
inline std::string ToolPath(const char* env_name, const char* build_default) {
  const char* env = std::getenv(env_name);
  std::string path = env ? env : build_default;
  if (path.empty() || ::access(path.c_str(), X_OK) != 0) return "";
  return path;
}

}  // namespace lpdetr::metrics::testing

// The sensor's control socket: a unix stream socket, mode 0600, serving only
// its owner's uid and root (checked with SO_PEERCRED). Requests and replies
// are one JSON object per line:
//   {"cmd": "status"}
//   {"cmd": "dissection", "action": "enable" | "disable" | "status"}
//   {"cmd": "activity"}            (a client such as `tapwire tail` is looking)
//   {"cmd": "config", "action": "reload"}
// Replies: {"ok": true, ...} or {"ok": false, "error": "..."}. A malformed
// request gets an error reply; the connection and the daemon stay up.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace tapwire::sensor {

class ControlServer {
 public:
  using Handler = std::function<nlohmann::json(const nlohmann::json& request)>;

  // Replaces a stale socket file at `path`. Throws std::runtime_error.
  ControlServer(std::string path, Handler handler);
  ~ControlServer();  // closes everything and removes the socket file
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  int listen_fd() const { return listen_fd_; }
  // Accepts what is pending; returns the fds of new, authorised clients.
  std::vector<int> accept_pending();
  // Reads and answers what a client sent. Returns false when the client is
  // gone (its fd is closed then).
  bool serve(int fd);
  const std::string& path() const { return path_; }

  static constexpr size_t kMaxRequestBytes = 64 * 1024;

  // The reply line (JSON, without its newline) to one request line (without
  // its newline), or "" for a blank line, which gets no reply. Never throws:
  // a malformed request or a handler that throws gets an error reply. Every
  // line a client sends goes through here (tests/fuzz/control_request_fuzz.cpp).
  static std::string answer(std::string_view line, const Handler& handler);

 private:
  std::string path_;
  Handler handler_;
  int listen_fd_ = -1;
  std::map<int, std::string> pending_;  // partial lines by client fd
  void drop(int fd);
};

}  // namespace tapwire::sensor

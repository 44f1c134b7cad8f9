// The sensor's control socket: a unix stream socket, mode 0600, serving only
// its owner's uid and root (checked with SO_PEERCRED). Requests and replies
// are one JSON object per line:
//   {"cmd": "status"}
//   {"cmd": "dissection", "action": "enable" | "disable" | "status"}
//   {"cmd": "activity"}            (a client such as `tapwire tail` is looking)
//   {"cmd": "config", "action": "reload"}
// Replies: {"ok": true, ...} or {"ok": false, "error": "..."}. A malformed
// request gets an error reply; the connection and the daemon stay up.
//
// Clients cannot lock the control plane out: each request line must arrive
// whole within kClientTimeoutNs of the connection or of the previous request
// (else the connection is closed), a line is at most kMaxRequestBytes (a
// longer one gets an error and the connection is closed), and of more than
// kMaxClients connections the one silent the longest is closed to make room.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

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
  // Accepts what is pending; returns the ids of new, authorised clients
  // (non-negative, to poll on: id_fd(id) is the socket). An id is never
  // confused with an earlier client's that had the same fd.
  std::vector<int> accept_pending();
  // Reads and answers what a client sent. Returns false when the client is
  // gone or the id is stale (nothing to poll for then).
  bool serve(int id);
  // Closes the clients that did not complete a request in time. Call about
  // once a second.
  void expire_clients();
  static int id_fd(int id) { return id & kFdMask; }
  const std::string& path() const { return path_; }

  static constexpr size_t kMaxRequestBytes = 64 * 1024;
  static constexpr uint64_t kClientTimeoutNs = 5'000'000'000ull;
  // Far above what a node needs (the CLI uses one connection per request),
  // far below the fd limit.
  static constexpr size_t kMaxClients = 256;

  // The reply line (JSON, without its newline) to one request line (without
  // its newline), or "" for a blank line, which gets no reply. Never throws:
  // a malformed request or a handler that throws gets an error reply. Every
  // line a client sends goes through here (tests/fuzz/control_request_fuzz.cpp).
  static std::string answer(std::string_view line, const Handler& handler);

 private:
  // A client id is its fd in the low bits and a generation above, so that
  // a poll armed for a closed client does not serve the next one on its fd.
  static constexpr int kFdBits = 20, kFdMask = (1 << kFdBits) - 1, kGenMask = (1 << (31 - kFdBits)) - 1;
  struct Client {
    int gen;
    std::string partial;  // the request line so far
    uint64_t since_ns;    // connected, or last request answered: the line must be whole by since + timeout
    uint64_t active_ns;   // last byte received
  };
  std::string path_;
  Handler handler_;
  int listen_fd_ = -1;
  int next_gen_ = 0;
  std::map<int, Client> clients_;  // by fd
  void drop(int fd);
  void evict_one();
};

}  // namespace tapwire::sensor

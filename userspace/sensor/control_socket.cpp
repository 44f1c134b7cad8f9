#include "control_socket.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace tapwire::sensor {
namespace {

void reply(int fd, std::string line) {
  line += "\n";
  // Replies are small and the socket is non-blocking: a client that does not
  // read loses its reply, the daemon never waits for it.
  (void)!send(fd, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

void reply(int fd, const nlohmann::json& j) { reply(fd, j.dump()); }

nlohmann::json error(const std::string& what) { return {{"ok", false}, {"error", what}}; }

}  // namespace

ControlServer::ControlServer(std::string path, Handler handler) : path_(std::move(path)), handler_(std::move(handler)) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path_.size() >= sizeof(sa.sun_path))
    throw std::runtime_error("control socket path too long (at most " + std::to_string(sizeof(sa.sun_path) - 1) +
                             " bytes): " + path_);
  std::memcpy(sa.sun_path, path_.c_str(), path_.size() + 1);
  listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listen_fd_ < 0) throw std::runtime_error(std::string("cannot create the control socket: ") + std::strerror(errno));
  unlink(path_.c_str());  // a stale socket of a previous run (the data dir lock says no other sensor runs)
  // 0600 from the start: the umask applies while bind() creates the file.
  mode_t old = umask(0177);
  int rc = bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  umask(old);
  if (rc != 0 || listen(listen_fd_, 16) != 0) {
    int err = errno;
    close(listen_fd_);
    listen_fd_ = -1;
    throw std::runtime_error("cannot listen on the control socket " + path_ + ": " + std::strerror(err));
  }
  chmod(path_.c_str(), 0600);
}

ControlServer::~ControlServer() {
  for (auto& [fd, buf] : pending_) close(fd);
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    unlink(path_.c_str());
  }
}

std::vector<int> ControlServer::accept_pending() {
  std::vector<int> out;
  for (int i = 0; i < 64; i++) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) break;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != 0 && cred.uid != geteuid())) {
      reply(fd, error("permission denied: the control socket serves only uid " + std::to_string(geteuid()) +
                      " and root"));
      close(fd);
      continue;
    }
    if (pending_.size() >= 64) {  // bounded: a client flood cannot grow memory
      reply(fd, error("too many control clients"));
      close(fd);
      continue;
    }
    pending_[fd] = {};
    out.push_back(fd);
  }
  return out;
}

std::string ControlServer::answer(std::string_view line, const Handler& handler) {
  if (line.empty() || line == "\r") return {};
  auto req = nlohmann::json::parse(line, nullptr, false);
  if (req.is_discarded() || !req.is_object() || !req.contains("cmd") || !req["cmd"].is_string())
    return error("malformed request: expected one JSON object per line with a \"cmd\" string").dump();
  try {
    return handler(req).dump();
  } catch (const std::exception& e) {
    return error(e.what()).dump();
  }
}

void ControlServer::drop(int fd) {
  pending_.erase(fd);
  close(fd);
}

bool ControlServer::serve(int fd) {
  auto it = pending_.find(fd);
  if (it == pending_.end()) return false;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      drop(fd);
      return false;
    }
    if (n < 0) break;
    it->second.append(buf, static_cast<size_t>(n));
    size_t nl;
    while ((nl = it->second.find('\n')) != std::string::npos) {
      std::string answer_line = answer(std::string_view(it->second).substr(0, nl), handler_);
      it->second.erase(0, nl + 1);
      if (!answer_line.empty()) reply(fd, std::move(answer_line));
    }
    if (it->second.size() > kMaxRequestBytes) {
      reply(fd, error("request too long (at most 64 KiB per line)"));
      drop(fd);
      return false;
    }
  }
  return true;
}

}  // namespace tapwire::sensor

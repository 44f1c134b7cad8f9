#include "control_socket.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "clock.hpp"

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
  if (rc != 0 || listen(listen_fd_, 128) != 0) {  // a burst of clients waits in the kernel, not in connect()
    int err = errno;
    close(listen_fd_);
    listen_fd_ = -1;
    throw std::runtime_error("cannot listen on the control socket " + path_ + ": " + std::strerror(err));
  }
  chmod(path_.c_str(), 0600);
}

ControlServer::~ControlServer() {
  for (auto& [fd, c] : clients_) close(fd);
  if (listen_fd_ >= 0) {
    close(listen_fd_);
    unlink(path_.c_str());
  }
}

std::vector<int> ControlServer::accept_pending() {
  std::vector<int> out;
  for (int i = 0; i < 64; i++) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      // Out of descriptors: the client silent the longest makes room; the
      // waiting connection is taken on the next round.
      if ((errno == EMFILE || errno == ENFILE) && !clients_.empty()) {
        evict_one();
        continue;
      }
      break;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || (cred.uid != 0 && cred.uid != geteuid())) {
      reply(fd, error("permission denied: the control socket serves only uid " + std::to_string(geteuid()) +
                      " and root"));
      close(fd);
      continue;
    }
    if (fd > kFdMask) {  // not representable in an id; never with a sane fd limit
      reply(fd, error("too many open files in the sensor"));
      close(fd);
      continue;
    }
    // Bounded, and never full: a flood of idle clients costs the quietest
    // of them its connection, not a new client its answer.
    if (clients_.size() >= kMaxClients) evict_one();
    const uint64_t now = mono_ns();
    next_gen_ = (next_gen_ + 1) & kGenMask;
    clients_[fd] = Client{next_gen_, {}, now, now};
    out.push_back(next_gen_ << kFdBits | fd);
  }
  return out;
}

void ControlServer::evict_one() {
  auto quietest = clients_.begin();
  for (auto it = clients_.begin(); it != clients_.end(); ++it)
    if (it->second.active_ns < quietest->second.active_ns) quietest = it;
  if (quietest == clients_.end()) return;
  reply(quietest->first, error("closed to make room for another client"));
  drop(quietest->first);
}

void ControlServer::expire_clients() {
  const uint64_t now = mono_ns();
  std::vector<int> late;
  for (auto& [fd, c] : clients_)
    if (now - c.since_ns > kClientTimeoutNs) late.push_back(fd);
  for (int fd : late) {
    reply(fd, error("timed out: send each request as one line within 5 s"));
    drop(fd);
  }
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
  clients_.erase(fd);
  // shutdown first: a poll still armed on this socket completes now (and
  // finds a stale id) instead of keeping the connection open.
  shutdown(fd, SHUT_RDWR);
  close(fd);
}

bool ControlServer::serve(int id) {
  const int fd = id & kFdMask;
  auto it = clients_.find(fd);
  if (id < 0 || it == clients_.end() || it->second.gen != id >> kFdBits) return false;
  Client& c = it->second;
  char buf[4096];
  // At most one request's worth per call: a client that keeps sending does
  // not hold the sensor's loop; its poll fires again for the rest.
  for (size_t taken = 0; taken <= kMaxRequestBytes;) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
      drop(fd);
      return false;
    }
    if (n < 0) break;
    taken += static_cast<size_t>(n);
    c.active_ns = mono_ns();
    size_t start = 0, scan = c.partial.size(), nl;
    c.partial.append(buf, static_cast<size_t>(n));
    while ((nl = c.partial.find('\n', scan)) != std::string::npos) {
      std::string answer_line = answer(std::string_view(c.partial).substr(start, nl - start), handler_);
      if (!answer_line.empty()) reply(fd, std::move(answer_line));
      start = scan = nl + 1;
      c.since_ns = mono_ns();
    }
    c.partial.erase(0, start);
    if (c.partial.size() > kMaxRequestBytes) {
      reply(fd, error("request too long (at most 64 KiB per line)"));
      drop(fd);
      return false;
    }
  }
  return true;
}

}  // namespace tapwire::sensor

#include "output.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>

#include "kube_frame.hpp"
#include "log.hpp"

namespace tapwire::kube_watch {

Output::Output(int fd) : fd_(fd) {
  int fl = fcntl(fd_, F_GETFL);
  if (fl >= 0) fcntl(fd_, F_SETFL, fl | O_NONBLOCK);
}

bool Output::write(const k::OJson& obj) {
  // Strings were checked by the parser; replace keeps a bad byte from
  // turning into an exception here all the same.
  std::string payload = obj.dump(-1, ' ', false, k::OJson::error_handler_t::replace);
  auto frame = k::encode_frame(payload);
  if (!frame) {
    dropped_frames_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  std::lock_guard lk(write_mu_);
  if (failed_) return false;
  const char* p = frame->data();
  size_t left = frame->size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {  // the reader is behind: wait for it
      struct pollfd pfd {fd_, POLLOUT, 0};
      if (::poll(&pfd, 1, 1000) == 0 && stopping_) {
        failed_ = true;
        log_line("stdout is not being read: dropping the rest of the output");
        return false;
      }
      continue;
    }
    if (n <= 0) {
      failed_ = true;
      log_line("stdout closed (the reader went away): stopping");
      return false;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  frames_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void Output::count_request(k::Resource r, bool watch) {
  std::lock_guard lk(stats_mu_);
  ++requests_[std::string(k::info(r).name) + (watch ? "/watch" : "/list")];
}

void Output::add(const k::Counters& c) {
  if (c.truncated) truncated_.fetch_add(c.truncated, std::memory_order_relaxed);
  if (c.invalid) invalid_.fetch_add(c.invalid, std::memory_order_relaxed);
}

k::OJson Output::stats(const std::string& node, uint64_t owners_waiting_dropped) const {
  k::OJson o = k::OJson::object();
  o["v"] = 1;
  o["kind"] = "Stats";
  if (!node.empty()) o["node"] = node;
  k::OJson req = k::OJson::object();
  {
    std::lock_guard lk(stats_mu_);
    for (const auto& [key, n] : requests_) req[key] = n;
  }
  o["requests"] = std::move(req);
  o["events"] = events_.load();
  o["relists"] = relists_.load();
  o["bookmarks"] = bookmarks_.load();
  k::OJson objs = k::OJson::object();
  for (auto r : k::kAllResources) objs[std::string(k::info(r).name)] = objects_[static_cast<size_t>(r)].load();
  o["objects"] = std::move(objs);
  o["frames"] = frames_.load();
  o["dropped_frames"] = dropped_frames_.load();
  o["truncated"] = truncated_.load();
  o["invalid"] = invalid_.load();
  o["owner_guesses_dropped"] = owners_waiting_dropped;
  return o;
}

}  // namespace tapwire::kube_watch

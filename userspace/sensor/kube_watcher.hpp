// Runs tapwire-kube-watch (the unprivileged Kubernetes API watcher) as the
// sensor's child, reads the workload objects it writes on its stdout, and
// checks every one before the sensor stores or uses it: frames are size-capped,
// objects typed and bounded (identity/workload_object.hpp). A child that dies
// or writes garbage is restarted with backoff; capture never waits for it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "workload_object.hpp"

namespace tapwire::sensor {

struct KubeWatcherOptions {
  std::string watcher_path;  // tapwire-kube-watch
  std::vector<std::string> args;  // --kubeconfig FILE, --node NAME, ...
};

struct KubeWatcherStats {
  uint64_t frames = 0;  // objects received and accepted
  uint64_t invalid = 0;  // frames refused (bad length, bad JSON, out of bounds)
  uint64_t bytes = 0;
  uint64_t starts = 0, restarts = 0;
};

// What scan_frames found in the bytes the watcher wrote.
struct FrameScan {
  size_t consumed = 0;  // bytes of the complete frames at the front (hand the rest in again with more)
  bool bad = false;  // a frame length of 0 or over identity::kMaxWorkloadJson: framing is lost
  uint32_t bad_len = 0;  // that length
};

// Splits the watcher's output (4-byte little-endian length, then that many
// bytes; docs/IDENTITY.md) and calls on_frame with each complete payload, in
// order, up to the first bad length. The payloads point into `buf`. Every
// byte the child writes goes through here; inline so that a test links it
// without the rest of the sensor (tests/fuzz/kube_frame_fuzz.cpp).
inline FrameScan scan_frames(std::span<const uint8_t> buf, const std::function<void(std::string_view)>& on_frame) {
  FrameScan r;
  size_t pos = 0;
  while (buf.size() - pos >= 4) {
    uint32_t len;
    std::memcpy(&len, buf.data() + pos, 4);  // little-endian, as the watcher writes it
    if (len == 0 || len > identity::kMaxWorkloadJson) {
      r.bad = true;
      r.bad_len = len;
      break;
    }
    if (buf.size() - pos - 4 < len) break;
    on_frame(std::string_view(reinterpret_cast<const char*>(buf.data() + pos + 4), len));
    pos += 4 + len;
  }
  r.consumed = pos;
  return r;
}

class KubeWatcher {
 public:
  explicit KubeWatcher(KubeWatcherOptions opts);
  ~KubeWatcher();  // stops the child
  KubeWatcher(const KubeWatcher&) = delete;
  KubeWatcher& operator=(const KubeWatcher&) = delete;

  void start(uint64_t now_ns);
  // The read end of the child's stdout, -1 while it does not run.
  int fd() const { return fd_; }
  // Reads what is there (non-blocking) and hands every valid object to `cb`.
  void on_readable(const std::function<void(identity::Workload&&)>& cb);
  void on_child_exit(uint64_t now_ns);  // SIGCHLD: reap; restart later
  void tick(uint64_t now_ns);  // restarts due
  pid_t pid() const { return pid_; }
  const KubeWatcherStats& stats() const { return st_; }
  nlohmann::json status() const;

 private:
  KubeWatcherOptions opts_;
  pid_t pid_ = -1;
  int fd_ = -1;
  std::vector<uint8_t> buf_;
  KubeWatcherStats st_;
  uint64_t restart_at_ = 0, started_at_ = 0, backoff_ns_ = 1'000'000'000ull;
  bool want_running_ = false;
  std::string last_exit_, last_invalid_;
  void stop();
  void restart_later(uint64_t now_ns, const std::string& why);
};

}  // namespace tapwire::sensor

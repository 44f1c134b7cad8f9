// stdout of tapwire-kube-watch: length-prefixed frames of one workload
// object each, written whole under one lock (the reflector threads share
// it), and the counters reported in Stats frames.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "kube_object.hpp"

namespace tapwire::kube_watch {

namespace k = tapwire::identity::kube;

class Output {
 public:
  // Makes fd non-blocking, so that a reader that stopped reading cannot
  // keep the watcher from stopping (see stopping()).
  explicit Output(int fd);

  // Writes one frame. False if the object was too large (dropped, counted)
  // or stdout is gone (then failed() is true and the watcher stops).
  bool write(const k::OJson& obj);
  bool failed() const { return failed_.load(); }
  // From now on a write that cannot proceed for a second is given up.
  void stopping() { stopping_ = true; }

  void count_request(k::Resource r, bool watch);
  void count_event() { events_.fetch_add(1, std::memory_order_relaxed); }
  void count_bookmark() { bookmarks_.fetch_add(1, std::memory_order_relaxed); }
  void count_relist() { relists_.fetch_add(1, std::memory_order_relaxed); }
  void add(const k::Counters& c);
  void set_objects(k::Resource r, size_t n) { objects_[static_cast<size_t>(r)].store(n, std::memory_order_relaxed); }

  // {"v":1,"kind":"Stats","node":…,"requests":{"pods/list":1,…},"events":…,"relists":…,…}
  k::OJson stats(const std::string& node, uint64_t owners_waiting_dropped) const;

 private:
  int fd_;
  std::mutex write_mu_;
  std::atomic<bool> failed_{false};
  std::atomic<bool> stopping_{false};
  mutable std::mutex stats_mu_;
  std::map<std::string, uint64_t> requests_;
  std::atomic<uint64_t> events_{0}, bookmarks_{0}, relists_{0}, truncated_{0}, invalid_{0}, frames_{0},
      dropped_frames_{0};
  std::array<std::atomic<size_t>, 6> objects_{};
};

}  // namespace tapwire::kube_watch

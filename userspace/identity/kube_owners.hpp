// A pod's owner followed up the chain: ReplicaSet → Deployment, Job →
// CronJob, from the replicasets and jobs watches. A pod seen before its
// ReplicaSet or Job (separate watches race) is reported with a best guess and
// waits, bounded in number and time, to be reported again once the real
// owner is known. Not thread-safe: the caller locks.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kube_object.hpp"

namespace tapwire::identity::kube {

class OwnerIndex {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr size_t kMaxWaiting = 4096;
  static constexpr size_t kMaxWaitingBytes = 8u << 20;  // their frames, serialized
  static constexpr std::chrono::minutes kMaxWait{5};

  // Which intermediate controllers are watched (else pods get the guess only).
  OwnerIndex(bool replicasets, bool jobs) : replicasets_(replicasets), jobs_(jobs) {}

  // A ReplicaSet or Job and its own controller (none: it is the owner).
  void put(const std::string& uid, std::optional<Owner> controller);
  void erase(const std::string& uid);
  size_t size() const { return controllers_.size(); }

  struct Resolution {
    std::optional<Owner> owner;
    // Set when owner is a guess: the uid of the ReplicaSet/Job not known yet.
    std::string waiting_for;
  };
  Resolution resolve(const Json& pod) const;

  // Keeps a pod's frame until waiting_for is known (see settle).
  void wait(const std::string& pod_uid, const std::string& waiting_for, const Controller& via, OJson frame,
            Clock::time_point now);
  void forget(const std::string& pod_uid);
  // The frames of pods that waited for uid, with their owner corrected;
  // only those whose owner differs from the guess.
  std::vector<OJson> settle(const std::string& uid);
  size_t waiting() const { return waiting_.size(); }
  uint64_t dropped() const { return dropped_; }

 private:
  struct Waiting {
    std::string owner_uid;
    Controller via;
    OJson frame;
    size_t bytes;
    Clock::time_point since;
  };
  void drop(std::unordered_map<std::string, Waiting>::iterator it);
  void expire(Clock::time_point now);

  bool replicasets_, jobs_;
  std::unordered_map<std::string, std::optional<Owner>> controllers_;
  std::unordered_map<std::string, Waiting> waiting_;  // by pod uid
  std::unordered_multimap<std::string, std::string> waiting_by_owner_;  // owner uid → pod uid
  uint64_t dropped_ = 0;
  size_t waiting_bytes_ = 0;
};

}  // namespace tapwire::identity::kube

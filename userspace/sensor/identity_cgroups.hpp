// The cgroup v2 hierarchy as the identity programs see it: where it is mounted,
// and which directory a cgroup id (the inode number of the directory on the
// cgroup2 file system) names.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace tapwire::sensor {

// The cgroup2 mount point from a mountinfo text (/proc/self/mountinfo).
// Production nodes mount it at /sys/fs/cgroup, hybrid layouts at
// /sys/fs/cgroup/unified; with several, a mount of the hierarchy's root is
// preferred, and /sys/fs/cgroup among those. Empty if there is none.
std::string find_cgroup2_mount(std::string_view mountinfo);
// Same, reading /proc/self/mountinfo. Throws std::runtime_error (one line)
// if it cannot be read or holds no cgroup2 mount.
std::string find_cgroup2_mount();

// The cgroup id of a directory on the cgroup2 file system; nullopt if it
// cannot be stat'ed.
std::optional<uint64_t> cgroup_id_of(const std::string& dir);

// cgroup id -> path below the mount ("/" for the root,
// "/kubepods.slice/…/cri-containerd-<id>.scope"). Ids are never reused
// while the machine runs, so entries stay true after the cgroup is gone;
// the cache holds at most max_entries (the oldest go first). A miss walks
// the hierarchy again, at most once per min_rewalk; a walk visits at most
// max_dirs directories. Not thread-safe.
class CgroupResolver {
 public:
  explicit CgroupResolver(std::string mount, size_t max_entries = 65536, size_t max_dirs = 200000,
                          std::chrono::milliseconds min_rewalk = std::chrono::seconds(1));

  std::optional<std::string> path(uint64_t id);
  const std::string& mount() const { return mount_; }
  // Walks counted so far (for tests and metrics).
  uint64_t walks() const { return walks_; }
  size_t size() const { return paths_.size(); }

 private:
  void walk();
  void remember(uint64_t id, std::string path);

  std::string mount_;
  size_t max_entries_, max_dirs_;
  std::chrono::milliseconds min_rewalk_;
  std::unordered_map<uint64_t, std::string> paths_;
  std::deque<uint64_t> order_;  // insertion order, for eviction
  std::optional<std::chrono::steady_clock::time_point> last_walk_;
  uint64_t walks_ = 0;
};

}  // namespace tapwire::sensor

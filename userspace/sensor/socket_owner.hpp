// The owner of a socket the identity hooks did not see created (it existed
// before the sensor started: a server that was already listening, its
// accepted connections). Found the way `ss -p` finds it: the processes of
// the socket's cgroup, the socket tables of their network namespace
// (/proc/PID/net/tcp...) for the socket's inode, and their open files for
// that inode. An accepted connection not yet accept()ed belongs to the
// listening socket's owner. Cached per (cgroup, protocol, local port) and
// rate-limited: a flood of such sockets costs a bounded amount of /proc reading.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

#include "tapwire_abi.h"

namespace tapwire::sensor {

class SocketOwnerResolver {
 public:
  explicit SocketOwnerResolver(std::string cgroup2_mount, std::string proc = "/proc");

  // Fills ev.tgid, ev.pid and ev.comm of a socket whose creator is unknown,
  // from the cgroup at `cgroup_path` (below the cgroup2 mount). False if no
  // owner was found (or the lookup budget of this second is spent).
  bool resolve(tw_sock_event& ev, const std::string& cgroup_path, uint64_t now_ns);

  uint64_t lookups() const { return lookups_; }
  uint64_t found() const { return found_; }

 private:
  struct Owner {
    uint32_t tgid = 0;
    char comm[16] = {};
    uint64_t at_ns = 0;
  };
  std::string cgroup2_, proc_;
  std::map<std::tuple<uint64_t, uint8_t, uint16_t>, Owner> cache_;  // (cgroup, l4, local port)
  uint64_t window_start_ = 0;
  unsigned window_lookups_ = 0;
  uint64_t lookups_ = 0, found_ = 0;
  bool lookup(const tw_sock_event& ev, const std::string& cgroup_path, Owner& out);
};

}  // namespace tapwire::sensor

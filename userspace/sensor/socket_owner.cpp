#include "socket_owner.hpp"

#include <dirent.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

namespace tapwire::sensor {
namespace {

constexpr unsigned kLookupsPerSecond = 50;  // cache misses resolved per second at most
constexpr uint64_t kCacheNs = 30ull * 1000000000ull;  // an owner found stays valid this long
constexpr size_t kMaxPids = 4096;  // processes of one cgroup looked at
constexpr size_t kMaxCache = 65536;
constexpr int kTcpListen = 0x0A;

// An address as /proc/net/{tcp,udp}[6] prints it: 32-bit words in host order, in hex.
bool parse_hex_addr(const std::string& text, uint8_t ver, uint8_t out[16], uint16_t& port) {
  auto colon = text.find(':');
  if (colon == std::string::npos) return false;
  const std::string a = text.substr(0, colon), p = text.substr(colon + 1);
  const size_t words = ver == 6 ? 4 : 1;
  if (a.size() != words * 8) return false;
  std::memset(out, 0, 16);
  for (size_t w = 0; w < words; w++) {
    uint32_t v = static_cast<uint32_t>(std::stoul(a.substr(w * 8, 8), nullptr, 16));
    std::memcpy(out + w * 4, &v, 4);
  }
  port = static_cast<uint16_t>(std::stoul(p, nullptr, 16));
  return true;
}

struct SockLine {
  uint8_t laddr[16], raddr[16];
  uint16_t lport, rport;
  int state;
  uint64_t inode;
};

std::vector<SockLine> read_table(const std::string& path, uint8_t ver) {
  std::vector<SockLine> out;
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line) && out.size() < 1'000'000) {
    std::istringstream ss(line);
    std::string sl, local, remote, st, txrx, tr, retr, uid, timeout, inode;
    if (!(ss >> sl >> local >> remote >> st >> txrx >> tr >> retr >> uid >> timeout >> inode)) continue;
    SockLine s{};
    try {
      if (!parse_hex_addr(local, ver, s.laddr, s.lport) || !parse_hex_addr(remote, ver, s.raddr, s.rport)) continue;
      s.state = static_cast<int>(std::stoul(st, nullptr, 16));
      s.inode = std::stoull(inode);
    } catch (const std::exception&) {
      continue;
    }
    out.push_back(s);
  }
  return out;
}

// Is `a6` the IPv4-mapped form (::ffff:a.b.c.d) of `a4`?
bool is_mapped(const uint8_t a6[16], const uint8_t a4[16]) {
  static const uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return std::memcmp(a6, kPrefix, 12) == 0 && std::memcmp(a6 + 12, a4, 4) == 0;
}

std::vector<uint32_t> cgroup_pids(const std::string& dir) {
  std::vector<uint32_t> out;
  std::ifstream in(dir + "/cgroup.procs");
  uint32_t pid;
  while (out.size() < kMaxPids && in >> pid) out.push_back(pid);
  return out;
}

// Does process `pid` hold socket `inode` open?
bool holds(const std::string& proc, uint32_t pid, uint64_t inode) {
  const std::string dir = proc + "/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (!d) return false;
  const std::string want = "socket:[" + std::to_string(inode) + "]";
  char target[64];
  bool found = false;
  for (int n = 0; dirent* e = readdir(d); n++) {
    if (n > 65536) break;
    if (e->d_name[0] == '.') continue;
    ssize_t len = readlinkat(dirfd(d), e->d_name, target, sizeof target - 1);
    if (len <= 0) continue;
    target[len] = 0;
    if (want == target) {
      found = true;
      break;
    }
  }
  closedir(d);
  return found;
}

}  // namespace

SocketOwnerResolver::SocketOwnerResolver(std::string cgroup2_mount, std::string proc)
    : cgroup2_(std::move(cgroup2_mount)), proc_(std::move(proc)) {}

bool SocketOwnerResolver::lookup(const tw_sock_event& ev, const std::string& cgroup_path, Owner& out) {
  const auto pids = cgroup_pids(cgroup2_ + (cgroup_path == "/" ? "" : cgroup_path));
  if (pids.empty()) return false;
  const char* table = ev.l4_proto == 6 ? (ev.ip_version == 6 ? "tcp6" : "tcp") : (ev.ip_version == 6 ? "udp6" : "udp");
  // The socket's inode, and the listener's, from the first process's view of
  // its network namespace (a pod's processes share one); IPv4 sockets on an
  // IPv6 listener are in tcp6, with mapped addresses (::ffff:a.b.c.d).
  std::set<uint64_t> connection, listener;
  const size_t alen = ev.ip_version == 6 ? 16 : 4;
  std::set<std::string> seen_netns;
  for (size_t i = 0; i < pids.size() && i < 64; i++) {
    char ns[64] = {};
    const std::string nspath = proc_ + "/" + std::to_string(pids[i]) + "/ns/net";
    if (readlink(nspath.c_str(), ns, sizeof ns - 1) <= 0 || !seen_netns.insert(ns).second) continue;
    // IPv4 traffic of a dual-stack socket (bound to [::]) shows in the v6 table.
    for (const char* t : {table, ev.ip_version == 4 ? (ev.l4_proto == 6 ? "tcp6" : "udp6") : ""}) {
      if (!*t) continue;
      const uint8_t ver = std::strcmp(t, "tcp6") == 0 || std::strcmp(t, "udp6") == 0 ? 6 : 4;
      for (auto& s : read_table(proc_ + "/" + std::to_string(pids[i]) + "/net/" + t, ver)) {
        if (s.lport != ev.lport || s.inode == 0) continue;
        const bool same_ver = ver == ev.ip_version;
        const bool mapped = ver == 6 && ev.ip_version == 4 && is_mapped(s.laddr, ev.laddr) && is_mapped(s.raddr, ev.raddr);
        if (ev.l4_proto == 6 && s.state == kTcpListen) {
          listener.insert(s.inode);
        } else if (s.rport == ev.rport && ((same_ver && std::memcmp(s.raddr, ev.raddr, alen) == 0 &&
                                            std::memcmp(s.laddr, ev.laddr, alen) == 0) ||
                                           mapped)) {
          connection.insert(s.inode);
        } else if (ev.l4_proto == 17) {
          listener.insert(s.inode);  // an unconnected UDP socket bound to the port
        }
      }
    }
  }
  for (const auto* inodes : {&connection, &listener})
    for (uint64_t inode : *inodes)
      for (uint32_t pid : pids) {
        if (!holds(proc_, pid, inode)) continue;
        // The thread group and its main thread's name.
        std::ifstream status(proc_ + "/" + std::to_string(pid) + "/status");
        std::string line;
        uint32_t tgid = pid;
        while (std::getline(status, line))
          if (line.rfind("Tgid:", 0) == 0) tgid = static_cast<uint32_t>(std::stoul(line.substr(5)));
        std::ifstream comm(proc_ + "/" + std::to_string(tgid) + "/comm");
        std::string name;
        std::getline(comm, name);
        out.tgid = tgid;
        std::strncpy(out.comm, name.c_str(), sizeof out.comm - 1);
        return true;
      }
  return false;
}

bool SocketOwnerResolver::resolve(tw_sock_event& ev, const std::string& cgroup_path, uint64_t now_ns) {
  const auto key = std::make_tuple(ev.cgroup_id, ev.l4_proto, ev.lport);
  auto it = cache_.find(key);
  if (it == cache_.end() || now_ns - it->second.at_ns > kCacheNs) {
    if (now_ns - window_start_ > 1000000000ull) {
      window_start_ = now_ns;
      window_lookups_ = 0;
    }
    if (window_lookups_ >= kLookupsPerSecond) return false;
    window_lookups_++;
    lookups_++;
    Owner o;
    if (!lookup(ev, cgroup_path, o)) return false;
    o.at_ns = now_ns;
    if (cache_.size() >= kMaxCache) cache_.clear();
    it = cache_.insert_or_assign(key, o).first;
  }
  found_++;
  ev.tgid = it->second.tgid;
  ev.pid = it->second.tgid;
  std::memcpy(ev.comm, it->second.comm, sizeof ev.comm);
  return true;
}

}  // namespace tapwire::sensor

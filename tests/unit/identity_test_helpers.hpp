// Builders for identity records, shared by the identity unit tests
// (identity_table_test, identity_feed_test, identity_recorder_test,
// pod_targets_test, socket_owner_test): sockets, processes, cgroups, pods,
// services, slices, dump markers.
#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "identity_records.hpp"
#include "ip_key.hpp"
#include "workload_object.hpp"

namespace tapwire::identity::testing {

inline constexpr uint64_t kSec = 1'000'000'000ull;
// A fixed wall-clock origin (2027-01-15), far from 0 so that "before" is never negative.
inline constexpr uint64_t kT0 = 1'800'000'000ull * kSec;
// kT0 + seconds (which may be negative: "before the stream").
inline constexpr uint64_t at(double seconds) {
  return static_cast<uint64_t>(static_cast<int64_t>(kT0) + static_cast<int64_t>(seconds * 1e9));
}

inline IpKey ip(const char* text) {
  auto k = IpKey::parse(text);
  if (!k) throw std::invalid_argument(std::string("not an IP: ") + text);
  return *k;
}

struct Sock {
  uint64_t ts = 0, cookie = 0, cgroup = 0;
  uint32_t tgid = 0;
  uint8_t l4 = IPPROTO_TCP;
  const char* local = "0.0.0.0";
  uint16_t lport = 0;
  const char* remote = nullptr;  // nullptr: unconnected
  uint16_t rport = 0;
  const char* comm = "";
  uint8_t flags = 0;
};

inline tw_sock_event sock_event(const Sock& s, uint8_t type) {
  tw_sock_event ev{};
  ev.ts_ns = s.ts;
  ev.cookie = s.cookie;
  ev.cgroup_id = s.cgroup;
  ev.tgid = s.tgid;
  ev.pid = s.tgid;
  ev.type = type;
  ev.l4_proto = s.l4;
  const IpKey l = ip(s.local);
  ev.ip_version = l.version;
  std::memcpy(ev.laddr, l.addr, 16);
  ev.lport = s.lport;
  if (s.remote) {
    const IpKey r = ip(s.remote);
    std::memcpy(ev.raddr, r.addr, 16);
    ev.rport = s.rport;
  }
  ev.flags = s.flags | (s.remote ? 0 : TW_SOCK_F_UNCONNECTED);
  std::strncpy(ev.comm, s.comm, sizeof ev.comm - 1);
  return ev;
}

inline SocketRecord sock_open(const Sock& s) { return SocketRecord{sock_event(s, TW_IDENT_SOCK_OPEN)}; }

// A close names the socket by cookie only (the rest is what the kernel
// knows at release; the table must not need it).
inline SocketRecord sock_close(uint64_t cookie, uint64_t ts) {
  tw_sock_event ev{};
  ev.ts_ns = ts;
  ev.cookie = cookie;
  ev.type = TW_IDENT_SOCK_CLOSE;
  ev.ip_version = 4;
  return SocketRecord{ev};
}

inline ProcessRecord process(uint64_t ts, uint32_t tgid, uint8_t type, const std::string& comm, const std::string& exe,
                             uint64_t cgroup = 0, uint8_t flags = 0) {
  ProcessRecord p;
  p.ts_ns = ts;
  p.tgid = tgid;
  p.ppid = 1;
  p.type = type;
  p.flags = flags;
  p.comm = comm;
  p.exe = exe;
  p.cgroup_id = cgroup;
  return p;
}

inline CgroupRecord cgroup(uint64_t ts, uint64_t id, const std::string& path, uint8_t flags = 0) {
  return CgroupRecord{ts, id, flags, path};
}

struct PodSpec {
  // Every member has a default, so that designated initializers may skip any.
  std::string uid{}, ns{}, name{}, node = "node-1";
  std::vector<const char*> ips{};
  std::string owner_kind{}, owner_name{};
  std::vector<ContainerRef> containers{};
  bool host_network = false;
};

inline PodObject pod_object(const PodSpec& s) {
  PodObject p;
  p.uid = s.uid;
  p.namespace_ = s.ns;
  p.name = s.name;
  p.node = s.node;
  p.phase = "Running";
  p.host_network = s.host_network;
  for (auto* a : s.ips) p.ips.push_back(ip(a));
  p.owner_kind = s.owner_kind;
  p.owner_name = s.owner_name;
  p.containers = s.containers;
  return p;
}

inline WorkloadRecord workload(uint64_t ts, Workload w, uint8_t flags = 0) { return WorkloadRecord{ts, flags, std::move(w)}; }

inline WorkloadRecord pod_up(uint64_t ts, const PodSpec& s, uint8_t flags = 0) {
  return workload(ts, Workload{WorkloadOp::Upsert, pod_object(s)}, flags);
}

inline WorkloadRecord pod_del(uint64_t ts, const std::string& uid) {
  PodObject p;
  p.uid = uid;
  return workload(ts, Workload{WorkloadOp::Delete, p});
}

inline WorkloadRecord service_up(uint64_t ts, const std::string& uid, const std::string& ns, const std::string& name,
                                 std::vector<const char*> cluster_ips, uint8_t flags = 0) {
  ServiceObject s;
  s.uid = uid;
  s.namespace_ = ns;
  s.name = name;
  s.type = "ClusterIP";
  for (auto* a : cluster_ips) s.cluster_ips.push_back(ip(a));
  return workload(ts, Workload{WorkloadOp::Upsert, s}, flags);
}

inline WorkloadRecord slice_up(uint64_t ts, const std::string& uid, const std::string& ns, const std::string& service,
                               std::vector<const char*> addresses, uint8_t flags = 0) {
  EndpointSliceObject e;
  e.uid = uid;
  e.namespace_ = ns;
  e.name = service + "-" + uid;
  e.service = service;
  for (auto* a : addresses) e.addresses.push_back(ip(a));
  return workload(ts, Workload{WorkloadOp::Upsert, e}, flags);
}

inline WorkloadRecord node_up(uint64_t ts, const std::string& uid, const std::string& name,
                              std::vector<const char*> addresses, uint8_t flags = 0) {
  NodeObject n;
  n.uid = uid;
  n.name = name;
  for (auto* a : addresses) n.addresses.push_back(ip(a));
  return workload(ts, Workload{WorkloadOp::Upsert, n}, flags);
}

inline WorkloadRecord self_up(uint64_t ts, const std::string& node, std::vector<const char*> addresses,
                              uint8_t flags = 0) {
  SelfObject s;
  s.node = node;
  for (auto* a : addresses) s.addresses.push_back(ip(a));
  return workload(ts, Workload{WorkloadOp::Upsert, s}, flags);
}

inline WorkloadRecord sync(uint64_t ts, const std::string& resource, const std::string& state,
                           const std::string& error = "") {
  return workload(ts, Workload{WorkloadOp::Upsert, SyncObject{resource, state, error}});
}

inline DumpRecord dump_begin(uint64_t ts) { return DumpRecord{ts, TW_DUMP_BEGIN, 0}; }
inline DumpRecord dump_end(uint64_t ts, uint64_t records) { return DumpRecord{ts, TW_DUMP_END, records}; }

// 64 hex digits that differ by `n`.
inline std::string container_id(unsigned n) {
  char buf[65];
  std::snprintf(buf, sizeof buf, "%064x", n + 0xc0ffee00u);
  return buf;
}

// The systemd-driver path of a container of pod `uid` (dashes in the uid).
inline std::string container_cgroup(const std::string& uid, const std::string& id) {
  std::string u = uid;
  for (auto& c : u)
    if (c == '-') c = '_';
  return "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + u + ".slice/cri-containerd-" + id +
         ".scope";
}

}  // namespace tapwire::identity::testing

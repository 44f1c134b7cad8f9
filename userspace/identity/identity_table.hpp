// The identity table: what the identity stream says, indexed by time, so
// that both ends of a call are named as they were when the call happened
// (docs/IDENTITY.md). Fed record by record (live, from a snapshot, or the
// sensor's own view); bounded in memory: what ended long ago is pruned, and
// every map has a cap with a counter of what it evicted.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "cgroup_path.hpp"
#include "endpoint_identity.hpp"
#include "identity_records.hpp"
#include "ip_key.hpp"

namespace tapwire::identity {

struct TableLimits {
  size_t max_sockets = 1'000'000;  // socket entries, open and recently closed
  size_t max_processes = 500'000;
  size_t max_cgroups = 500'000;
  size_t max_objects = 1'000'000;  // pods + services + slices + nodes, live and recently deleted
  uint64_t keep_ended_ns = 600ull * 1000000000ull;  // closed sockets, deleted pods stay resolvable this long
  uint64_t socket_slack_ns = 2ull * 1000000000ull;  // a call this close to a socket's open/close still matches it
  uint64_t ip_future_slack_ns = 10ull * 1000000000ull;  // traffic before the API reported a pod's IP
  uint64_t ip_past_slack_ns = 2ull * 1000000000ull;  // traffic just after a pod was deleted
};

struct TableStats {
  uint64_t records = 0, invalid = 0;
  uint64_t sockets = 0, processes = 0, cgroups = 0, pods = 0, services = 0, slices = 0, nodes = 0;
  uint64_t evicted_sockets = 0, evicted_processes = 0, evicted_cgroups = 0, evicted_objects = 0;
  uint64_t dumps = 0;
  uint64_t dumps_incomplete = 0;  // dumps with fewer records than their end marker counts: nothing ended by them
  uint64_t resolved_by_socket = 0, resolved_by_ip = 0, unresolved = 0;
};

// What the Kubernetes side of the stream says about each watched resource.
struct KubeResourceState {
  std::string state = "unknown";  // synced, lost, unknown (never heard of)
  std::string error;
  uint64_t since_ns = 0;
};

// One pod as `tapwire workloads` lists it.
struct PodRow {
  std::string namespace_, name, uid, node, phase, workload_kind, workload_name;
  bool host_network = false;
  std::vector<std::string> ips, services, containers;
  uint64_t first_seen_ns = 0;
};

class IdentityTable {
 public:
  explicit IdentityTable(TableLimits limits = {});
  ~IdentityTable();
  IdentityTable(const IdentityTable&) = delete;
  IdentityTable& operator=(const IdentityTable&) = delete;

  void apply(const IdentityRecord& r);
  // Decodes and applies one record of the identity stream; false (counted
  // as invalid) if it is not one.
  bool apply(uint16_t type, std::span<const uint8_t> body);

  // Who the endpoint ip:port was at `ts_ns`, talking to peer:peer_port over
  // l4 (6 TCP, 17 UDP). nullptr if nothing is known about it.
  EndpointIdentityPtr resolve(uint8_t l4, const IpKey& ip, uint16_t port, const IpKey& peer, uint16_t peer_port,
                              uint64_t ts_ns);

  // The node that captured the traffic (the stream's Self object), "" if unknown.
  const std::string& node() const;
  // Forgets what ended before now_ns - keep_ended_ns (called as time moves).
  void prune(uint64_t now_ns);

  // Pods alive now (after everything applied so far), by namespace and name.
  std::vector<PodRow> pods() const;
  std::map<std::string, KubeResourceState> kube_state() const;
  const TableStats& stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tapwire::identity

// Workload objects: the normalized Kubernetes (and node) objects of the
// identity stream, one compact JSON object each (docs/IDENTITY.md). The same
// code checks what tapwire-kube-watch sends the sensor and reads what the
// identity segments hold: every field typed and bounded, anything else
// refused with a reason.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "ip_key.hpp"

namespace tapwire::identity {

inline constexpr int kWorkloadSchemaVersion = 1;
inline constexpr size_t kMaxWorkloadJson = 4u << 20;  // one object, as text
inline constexpr size_t kMaxName = 253;  // DNS subdomain: names, namespaces, uids, node names
inline constexpr size_t kMaxLabels = 64;
inline constexpr size_t kMaxLabelValue = 1024;
inline constexpr size_t kMaxAddresses = 64;  // per pod / service / node
inline constexpr size_t kMaxEndpointAddresses = 1000;  // per EndpointSlice (the API's own limit)
inline constexpr size_t kMaxContainers = 64;
inline constexpr size_t kMaxPorts = 100;

struct PortSpec {
  std::string name;
  uint16_t port = 0;
  std::string protocol;  // TCP, UDP, SCTP
  bool operator==(const PortSpec&) const = default;
};

struct ContainerRef {
  std::string name;
  std::string id;  // 64 hex digits (may be empty while the container is starting)
  std::string runtime;  // containerd, cri-o, docker
  bool operator==(const ContainerRef&) const = default;
};

struct PodObject {
  std::string uid, namespace_, name, node, phase;
  bool host_network = false;
  std::vector<IpKey> ips;
  std::vector<std::pair<std::string, std::string>> labels;
  std::string owner_kind, owner_name;  // the top controller (Deployment, StatefulSet, ...), or empty
  std::vector<ContainerRef> containers;
  bool operator==(const PodObject&) const = default;
};

struct ServiceObject {
  std::string uid, namespace_, name, type;
  std::vector<IpKey> cluster_ips;
  std::vector<PortSpec> ports;
  bool operator==(const ServiceObject&) const = default;
};

struct EndpointSliceObject {
  std::string uid, namespace_, name, service;
  std::vector<IpKey> addresses;
  std::vector<PortSpec> ports;
  bool operator==(const EndpointSliceObject&) const = default;
};

struct NodeObject {
  std::string uid, name;
  std::vector<IpKey> addresses;
  bool operator==(const NodeObject&) const = default;
};

// The node whose sensor wrote the identity stream.
struct SelfObject {
  std::string node;
  std::vector<IpKey> addresses;
  bool operator==(const SelfObject&) const = default;
};

// A resource's list completed (synced) or its list/watch failed (lost).
struct SyncObject {
  std::string resource, state, error;
  bool operator==(const SyncObject&) const = default;
};

// API request counts of the watcher.
struct StatsObject {
  std::map<std::string, uint64_t> requests;  // "pods/list" -> n
  uint64_t events = 0, relists = 0;
  bool operator==(const StatsObject&) const = default;
};

enum class WorkloadOp : uint8_t { Upsert, Delete };

struct Workload {
  WorkloadOp op = WorkloadOp::Upsert;
  std::variant<PodObject, ServiceObject, EndpointSliceObject, NodeObject, SelfObject, SyncObject, StatsObject> object;
  const char* kind() const;  // "Pod", "Service", ...
  // "Pod/<uid>": what an upsert replaces and a delete removes ("Self" for
  // Self; empty for Sync and Stats, which are events, not state).
  std::string state_key() const;
  bool operator==(const Workload&) const = default;
};

// Parses and checks one object. nullopt with *error set ("Pod: ips[2]: not
// an IP address: '10.1'") on anything malformed or out of bounds.
std::optional<Workload> parse_workload(std::string_view json, std::string* error = nullptr);

// The normalized compact JSON (what the identity stream stores).
std::string to_json(const Workload& w);

}  // namespace tapwire::identity

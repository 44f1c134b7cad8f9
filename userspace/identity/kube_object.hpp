// Kubernetes API objects → workload objects (docs/IDENTITY.md, "Workload
// objects"): the resources tapwire-kube-watch follows, the bounds of every
// field, and the normalization of pods, services, endpointslices and nodes.
// Pure functions over parsed JSON, so that they are unit-tested apart from
// the network.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace tapwire::identity::kube {

using Json = nlohmann::json;
// Output objects keep the documented key order ("v", "kind", "op", …).
using OJson = nlohmann::ordered_json;

enum class Resource : uint8_t { Pods, Services, EndpointSlices, Nodes, ReplicaSets, Jobs };
inline constexpr std::array<Resource, 6> kAllResources = {Resource::Pods,  Resource::Services,
                                                          Resource::EndpointSlices, Resource::Nodes,
                                                          Resource::ReplicaSets, Resource::Jobs};

struct ResourceInfo {
  Resource id;
  std::string_view name;  // "pods": flags, Sync and Stats frames, logs
  std::string_view path;  // "/api/v1/pods"
  std::string_view kind;  // "Pod"
  bool namespaced;
  bool reported;  // written on stdout; ReplicaSets and Jobs only resolve owners
};

const ResourceInfo& info(Resource r);
std::optional<Resource> resource_by_name(std::string_view name);

// Bounds of the workload objects (docs/IDENTITY.md).
inline constexpr size_t kMaxName = 253;  // names, namespaces, nodes, uids
inline constexpr size_t kMaxLabels = 64;
inline constexpr size_t kMaxLabelKey = 317;  // DNS prefix (253) + '/' + name (63)
inline constexpr size_t kMaxLabelValue = 1024;
inline constexpr size_t kMaxAddresses = 64;  // pod IPs, cluster IPs, node addresses
inline constexpr size_t kMaxEndpointAddresses = 1000;
inline constexpr size_t kMaxContainers = 64;
inline constexpr size_t kMaxPorts = 64;
inline constexpr size_t kMaxShort = 63;  // port name, owner kind
inline constexpr size_t kMaxPhase = 32;  // pod phase, service type
inline constexpr size_t kMaxProtocol = 16;
inline constexpr size_t kContainerIdLen = 64;  // lower-case hex, as the runtimes name containers

// What normalization had to cut (truncated strings, capped lists) or leave
// out (values of the wrong type, addresses that are not IPs).
struct Counters {
  uint64_t truncated = 0;
  uint64_t invalid = 0;
};

// metadata.uid / namespace / name, each "" when absent or not a string.
struct ObjectRef {
  std::string uid;
  std::string namespace_;
  std::string name;
};
ObjectRef object_ref(const Json& obj);

// The ownerReference with controller: true.
struct Controller {
  std::string kind;
  std::string name;
  std::string uid;
};
std::optional<Controller> controller_of(const Json& obj);

struct Owner {
  std::string kind;
  std::string name;
  bool operator==(const Owner&) const = default;
};

// When a pod's ReplicaSet is not (yet) known: a ReplicaSet named
// "<deployment>-<pod-template-hash>" whose pod carries that hash belongs to
// that Deployment; anything else stays the controller itself.
Owner fallback_owner(const Controller& c, const Json& pod);

OJson normalize_pod(const Json& pod, const std::optional<Owner>& owner, Counters& n);
OJson normalize_service(const Json& svc, Counters& n);
OJson normalize_endpointslice(const Json& slice, Counters& n);
OJson normalize_node(const Json& node, Counters& n);

// {"v":1,"kind":"Pod","op":"delete","uid":…,"namespace":…,"name":…}
OJson delete_object(Resource r, const ObjectRef& ref);
// {"v":1,"kind":"Sync","resource":"pods","state":"synced"|"lost"[,"error":…]}
OJson sync_object(Resource r, bool synced, std::string_view error = {});

// Helpers shared with the parser and the watcher.
std::string truncate_utf8(std::string_view s, size_t max);
// Printable ASCII only (anything else becomes '?'), at most max bytes: for
// error text that quotes what a server sent.
std::string printable(std::string_view s, size_t max);
bool is_ip(std::string_view s);

}  // namespace tapwire::identity::kube

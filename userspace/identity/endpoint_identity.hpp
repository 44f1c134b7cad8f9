// Who one end of a call is: the process that owns its socket, the container
// and the Kubernetes pod, namespace, workload, service and node it belongs
// to. Every field is optional (empty / 0 = unknown). Shared, immutable: the
// identity table hands out one object for many calls.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace tapwire::identity {

struct EndpointIdentity {
  uint32_t pid = 0;  // process (thread group) id on the node that captured it
  std::string process;  // its comm ("nginx")
  std::string exe;  // its executable path, when known
  std::string container;  // container name in the pod spec ("api"), else the id's first 12 digits
  std::string container_id;  // 64 hex digits
  std::string pod;
  std::string namespace_;
  std::string workload_kind;  // Deployment, StatefulSet, DaemonSet, Job, CronJob, ReplicaSet, Pod, Node
  std::string workload_name;
  std::string service;
  std::string node;

  bool operator==(const EndpointIdentity&) const = default;

  bool empty() const {
    return pid == 0 && process.empty() && exe.empty() && container.empty() && container_id.empty() && pod.empty() &&
           namespace_.empty() && workload_kind.empty() && workload_name.empty() && service.empty() && node.empty();
  }
};

using EndpointIdentityPtr = std::shared_ptr<const EndpointIdentity>;

}  // namespace tapwire::identity

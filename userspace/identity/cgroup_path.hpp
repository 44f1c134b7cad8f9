// What a cgroup v2 path says about the container and the pod it belongs to
// (the kubelet's layouts for containerd, CRI-O and Docker; docs/IDENTITY.md).
#pragma once

#include <string>
#include <string_view>

namespace tapwire::identity {

struct CgroupInfo {
  std::string pod_uid;  // "5b9c…-…" with dashes; empty if the path is not a pod's
  std::string container_id;  // 64 hex digits; empty if none
  std::string runtime;  // "containerd", "cri-o", "docker" or "" (cgroupfs driver: unknown)
  bool in_pod() const { return !pod_uid.empty(); }
};

// Parses a path below the cgroup2 mount. Never throws; unknown layouts give
// an empty CgroupInfo (the node itself).
CgroupInfo parse_cgroup_path(std::string_view path);

}  // namespace tapwire::identity

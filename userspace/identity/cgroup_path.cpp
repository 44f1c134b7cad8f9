#include "cgroup_path.hpp"

#include <vector>

namespace tapwire::identity {
namespace {

bool is_hex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return !s.empty();
}

// A pod UID as the kubelet puts it in cgroup names: 36 characters, dashes
// (cgroupfs) or underscores (systemd, where '-' separates slice levels).
bool parse_uid(std::string_view s, std::string& out) {
  if (s.size() != 36) return false;
  std::string uid(s);
  for (size_t i = 0; i < uid.size(); i++) {
    const bool dash_pos = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash_pos) {
      if (uid[i] != '-' && uid[i] != '_') return false;
      uid[i] = '-';
    } else if (!is_hex(std::string_view(&uid[i], 1))) {
      return false;
    }
  }
  out = std::move(uid);
  return true;
}

// "kubepods-burstable-pod<uid>.slice", "kubepods-pod<uid>.slice", "pod<uid>".
bool pod_component(std::string_view c, std::string& uid) {
  if (c.ends_with(".slice")) c.remove_suffix(6);
  size_t p = c.rfind("pod");
  if (p == std::string_view::npos) return false;
  if (p != 0 && c[p - 1] != '-') return false;
  return parse_uid(c.substr(p + 3), uid);
}

// "cri-containerd-<id>.scope", "crio-<id>.scope", "docker-<id>.scope", or a
// bare "<id>" (cgroupfs driver).
bool container_component(std::string_view c, std::string& id, std::string& runtime) {
  static const std::pair<std::string_view, std::string_view> kPrefixes[] = {
      {"cri-containerd-", "containerd"}, {"crio-", "cri-o"}, {"docker-", "docker"}, {"containerd-", "containerd"}};
  std::string_view rt;
  if (c.ends_with(".scope")) {
    c.remove_suffix(6);
    bool found = false;
    for (auto& [prefix, name] : kPrefixes)
      if (c.starts_with(prefix)) {
        c.remove_prefix(prefix.size());
        rt = name;
        found = true;
        break;
      }
    if (!found) return false;
  }
  if (c.size() != 64 || !is_hex(c)) return false;
  id = std::string(c);
  runtime = std::string(rt);
  return true;
}

}  // namespace

CgroupInfo parse_cgroup_path(std::string_view path) {
  CgroupInfo info;
  std::vector<std::string_view> parts;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t slash = path.find('/', pos);
    if (slash == std::string_view::npos) slash = path.size();
    if (slash > pos) parts.push_back(path.substr(pos, slash - pos));
    pos = slash + 1;
  }
  // The pod level must sit below a kubepods level; the container right below
  // the pod (a runtime may nest more levels under it: those belong to it too).
  bool under_kubepods = false;
  for (size_t i = 0; i < parts.size(); i++) {
    std::string_view c = parts[i];
    // "kubepods…", or with the systemd driver and a --cgroup-root (kind's
    // /kubelet) "<root>-kubepods…": systemd prefixes each slice with its parents'.
    if (c.starts_with("kubepods") || c.find("-kubepods") != std::string_view::npos) under_kubepods = true;
    if (!under_kubepods || info.in_pod()) continue;
    std::string uid;
    if (!pod_component(c, uid)) continue;
    info.pod_uid = std::move(uid);
    if (i + 1 < parts.size()) container_component(parts[i + 1], info.container_id, info.runtime);
    break;
  }
  return info;
}

}  // namespace tapwire::identity

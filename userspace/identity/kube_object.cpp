#include "kube_object.hpp"

#include <set>

#include "ip_key.hpp"

namespace tapwire::identity::kube {

namespace {

constexpr std::array<ResourceInfo, 6> kInfo = {{
    {Resource::Pods, "pods", "/api/v1/pods", "Pod", true, true},
    {Resource::Services, "services", "/api/v1/services", "Service", true, true},
    {Resource::EndpointSlices, "endpointslices", "/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice", true,
     true},
    {Resource::Nodes, "nodes", "/api/v1/nodes", "Node", false, true},
    {Resource::ReplicaSets, "replicasets", "/apis/apps/v1/replicasets", "ReplicaSet", true, false},
    {Resource::Jobs, "jobs", "/apis/batch/v1/jobs", "Job", true, false},
}};

const Json& member(const Json& obj, const char* key) {
  static const Json null;
  if (!obj.is_object()) return null;
  auto it = obj.find(key);
  return it == obj.end() ? null : *it;
}

// A string field, bounded; "" when absent. Counts what it cuts or rejects.
std::string str(const Json& v, size_t max, Counters& n) {
  if (v.is_null()) return {};
  if (!v.is_string()) {
    ++n.invalid;
    return {};
  }
  const auto& s = v.get_ref<const std::string&>();
  if (s.size() <= max) return s;
  ++n.truncated;
  return truncate_utf8(s, max);
}

OJson head(std::string_view kind) {
  OJson o = OJson::object();
  o["v"] = 1;
  o["kind"] = kind;
  return o;
}

void put_meta(OJson& o, const Json& obj, bool namespaced, Counters& n) {
  const Json& m = member(obj, "metadata");
  o["uid"] = str(member(m, "uid"), kMaxName, n);
  if (namespaced) o["namespace"] = str(member(m, "namespace"), kMaxName, n);
  o["name"] = str(member(m, "name"), kMaxName, n);
}

// Appends IPs (deduplicated, at most max) to out.
void add_ip(OJson& out, std::set<std::string>& seen, const Json& v, size_t max, Counters& n) {
  if (!v.is_string() || !is_ip(v.get_ref<const std::string&>())) {
    if (!(v.is_string() && v.get_ref<const std::string&>() == "None")) ++n.invalid;  // headless: no IP
    return;
  }
  const auto& ip = v.get_ref<const std::string&>();
  if (seen.count(ip)) return;
  if (out.size() >= max) {
    ++n.truncated;
    return;
  }
  seen.insert(ip);
  out.push_back(ip);
}

OJson labels_of(const Json& obj, Counters& n) {
  OJson out = OJson::object();
  const Json& labels = member(member(obj, "metadata"), "labels");
  if (labels.is_null()) return out;
  if (!labels.is_object()) {
    ++n.invalid;
    return out;
  }
  for (auto it = labels.begin(); it != labels.end(); ++it) {  // sorted by key: the same 64 every time
    if (!it.value().is_string() || it.key().size() > kMaxLabelKey) {
      ++n.invalid;
      continue;
    }
    if (out.size() >= kMaxLabels) {
      ++n.truncated;
      break;
    }
    out[it.key()] = str(it.value(), kMaxLabelValue, n);
  }
  return out;
}

OJson ports_of(const Json& ports, Counters& n) {
  OJson out = OJson::array();
  if (!ports.is_array()) {
    if (!ports.is_null()) ++n.invalid;
    return out;
  }
  for (const auto& p : ports) {
    const Json& port = member(p, "port");
    if (port.is_null()) continue;  // an EndpointSlice port without a number means "all ports"
    if (!port.is_number_integer() || port.get<int64_t>() < 1 || port.get<int64_t>() > 65535) {
      ++n.invalid;
      continue;
    }
    if (out.size() >= kMaxPorts) {
      ++n.truncated;
      break;
    }
    OJson e = OJson::object();
    e["name"] = str(member(p, "name"), kMaxShort, n);
    e["port"] = port.get<int64_t>();
    std::string proto = str(member(p, "protocol"), kMaxProtocol, n);
    e["protocol"] = proto.empty() ? "TCP" : proto;
    out.push_back(std::move(e));
  }
  return out;
}

// The id a cgroup path names (docs/IDENTITY.md): anything else could not be
// matched to a socket, and the sensor refuses it.
bool valid_container_id(std::string_view id) {
  if (id.size() != kContainerIdLen) return false;
  for (char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

void add_containers(OJson& out, const Json& statuses, Counters& n) {
  if (!statuses.is_array()) {
    if (!statuses.is_null()) ++n.invalid;
    return;
  }
  for (const auto& c : statuses) {
    const Json& cid = member(c, "containerID");
    if (cid.is_null()) continue;  // not started yet: no id to match a cgroup against
    if (!cid.is_string()) {
      ++n.invalid;
      continue;
    }
    std::string_view s = cid.get_ref<const std::string&>();
    auto sep = s.find("://");
    std::string_view scheme = sep == std::string_view::npos ? std::string_view{} : s.substr(0, sep);
    std::string_view id = sep == std::string_view::npos ? s : s.substr(sep + 3);
    if (!valid_container_id(id)) {
      ++n.invalid;
      continue;
    }
    if (out.size() >= kMaxContainers) {
      ++n.truncated;
      return;
    }
    OJson e = OJson::object();
    e["name"] = str(member(c, "name"), kMaxName, n);
    e["id"] = id;
    if (scheme == "containerd" || scheme == "cri-o" || scheme == "docker") e["runtime"] = scheme;
    out.push_back(std::move(e));
  }
}

}  // namespace

const ResourceInfo& info(Resource r) { return kInfo[static_cast<size_t>(r)]; }

std::optional<Resource> resource_by_name(std::string_view name) {
  for (const auto& i : kInfo)
    if (i.name == name) return i.id;
  return std::nullopt;
}

std::string truncate_utf8(std::string_view s, size_t max) {
  if (s.size() <= max) return std::string(s);
  size_t end = max;
  // Back off continuation bytes so that no code point is cut in half.
  while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
  return std::string(s.substr(0, end));
}

std::string printable(std::string_view s, size_t max) {
  std::string out;
  for (char c : s) {
    if (out.size() >= max) {
      out += "...";
      break;
    }
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return out;
}

// The sensor's own test (IpKey::parse, used by parse_workload): an address
// the watcher writes that the sensor reads differently would make it refuse
// the whole object (tests/fuzz/regressions/kube_api).
bool is_ip(std::string_view s) { return IpKey::parse(s).has_value(); }

ObjectRef object_ref(const Json& obj) {
  const Json& m = member(obj, "metadata");
  auto s = [&](const char* k) {
    const Json& v = member(m, k);
    return v.is_string() ? v.get<std::string>() : std::string();
  };
  return {s("uid"), s("namespace"), s("name")};
}

std::optional<Controller> controller_of(const Json& obj) {
  const Json& refs = member(member(obj, "metadata"), "ownerReferences");
  if (!refs.is_array()) return std::nullopt;
  for (const auto& r : refs) {
    const Json& ctl = member(r, "controller");
    if (!ctl.is_boolean() || !ctl.get<bool>()) continue;
    Counters ignored;
    Controller c{str(member(r, "kind"), kMaxShort, ignored), str(member(r, "name"), kMaxName, ignored),
                 str(member(r, "uid"), kMaxName, ignored)};
    if (c.kind.empty() || c.name.empty()) return std::nullopt;
    return c;
  }
  return std::nullopt;
}

Owner fallback_owner(const Controller& c, const Json& pod) {
  if (c.kind == "ReplicaSet") {
    const Json& hash = member(member(member(pod, "metadata"), "labels"), "pod-template-hash");
    if (hash.is_string()) {
      const auto& h = hash.get_ref<const std::string&>();
      if (!h.empty() && c.name.size() > h.size() + 1 && c.name.compare(c.name.size() - h.size(), h.size(), h) == 0 &&
          c.name[c.name.size() - h.size() - 1] == '-')
        return {"Deployment", c.name.substr(0, c.name.size() - h.size() - 1)};
    }
  }
  return {c.kind, c.name};
}

OJson normalize_pod(const Json& pod, const std::optional<Owner>& owner, Counters& n) {
  OJson o = head("Pod");
  o["op"] = "upsert";
  put_meta(o, pod, true, n);
  const Json& spec = member(pod, "spec");
  const Json& status = member(pod, "status");
  o["node"] = str(member(spec, "nodeName"), kMaxName, n);
  const Json& hn = member(spec, "hostNetwork");
  if (!hn.is_null() && !hn.is_boolean()) ++n.invalid;
  o["hostNetwork"] = hn.is_boolean() && hn.get<bool>();
  OJson ips = OJson::array();
  std::set<std::string> seen;
  const Json& pod_ips = member(status, "podIPs");
  if (pod_ips.is_array() && !pod_ips.empty()) {
    for (const auto& e : pod_ips) add_ip(ips, seen, member(e, "ip"), kMaxAddresses, n);
  } else if (!member(status, "podIP").is_null()) {
    add_ip(ips, seen, member(status, "podIP"), kMaxAddresses, n);
  }
  o["ips"] = std::move(ips);
  o["phase"] = str(member(status, "phase"), kMaxPhase, n);
  o["labels"] = labels_of(pod, n);
  if (owner) {
    OJson ow = OJson::object();
    ow["kind"] = truncate_utf8(owner->kind, kMaxShort);
    ow["name"] = truncate_utf8(owner->name, kMaxName);
    o["owner"] = std::move(ow);
  }
  OJson containers = OJson::array();
  add_containers(containers, member(status, "containerStatuses"), n);
  add_containers(containers, member(status, "initContainerStatuses"), n);
  o["containers"] = std::move(containers);
  return o;
}

OJson normalize_service(const Json& svc, Counters& n) {
  OJson o = head("Service");
  o["op"] = "upsert";
  put_meta(o, svc, true, n);
  const Json& spec = member(svc, "spec");
  std::string type = str(member(spec, "type"), kMaxPhase, n);
  o["type"] = type.empty() ? "ClusterIP" : type;
  OJson ips = OJson::array();
  std::set<std::string> seen;
  const Json& cips = member(spec, "clusterIPs");
  if (cips.is_array() && !cips.empty()) {
    for (const auto& ip : cips) add_ip(ips, seen, ip, kMaxAddresses, n);
  } else if (!member(spec, "clusterIP").is_null()) {
    add_ip(ips, seen, member(spec, "clusterIP"), kMaxAddresses, n);
  }
  o["clusterIPs"] = std::move(ips);
  o["ports"] = ports_of(member(spec, "ports"), n);
  return o;
}

OJson normalize_endpointslice(const Json& slice, Counters& n) {
  OJson o = head("EndpointSlice");
  o["op"] = "upsert";
  put_meta(o, slice, true, n);
  o["service"] = str(member(member(member(slice, "metadata"), "labels"), "kubernetes.io/service-name"), kMaxName, n);
  OJson addrs = OJson::array();
  std::set<std::string> seen;
  const Json& eps = member(slice, "endpoints");
  if (eps.is_array()) {
    for (const auto& ep : eps) {
      const Json& a = member(ep, "addresses");
      if (!a.is_array()) continue;
      for (const auto& ip : a) add_ip(addrs, seen, ip, kMaxEndpointAddresses, n);
    }
  } else if (!eps.is_null()) {
    ++n.invalid;
  }
  o["addresses"] = std::move(addrs);
  o["ports"] = ports_of(member(slice, "ports"), n);
  return o;
}

OJson normalize_node(const Json& node, Counters& n) {
  OJson o = head("Node");
  o["op"] = "upsert";
  put_meta(o, node, false, n);
  OJson addrs = OJson::array();
  std::set<std::string> seen;
  const Json& list = member(member(node, "status"), "addresses");
  if (list.is_array()) {
    for (const auto& a : list) {
      const Json& t = member(a, "type");
      if (t.is_string() && (t.get_ref<const std::string&>() == "InternalIP" ||
                            t.get_ref<const std::string&>() == "ExternalIP"))
        add_ip(addrs, seen, member(a, "address"), kMaxAddresses, n);
    }
  }
  o["addresses"] = std::move(addrs);
  return o;
}

OJson delete_object(Resource r, const ObjectRef& ref) {
  const auto& i = info(r);
  OJson o = head(i.kind);
  o["op"] = "delete";
  o["uid"] = truncate_utf8(ref.uid, kMaxName);
  if (i.namespaced) o["namespace"] = truncate_utf8(ref.namespace_, kMaxName);
  o["name"] = truncate_utf8(ref.name, kMaxName);
  return o;
}

OJson sync_object(Resource r, bool synced, std::string_view error) {
  OJson o = head("Sync");
  o["resource"] = info(r).name;
  o["state"] = synced ? "synced" : "lost";
  if (!synced) o["error"] = printable(error, 400);
  return o;
}

}  // namespace tapwire::identity::kube

#include "workload_object.hpp"

#include <nlohmann/json.hpp>

namespace tapwire::identity {
namespace {

using nlohmann::json;

// Thrown inside the parser only; parse_workload turns it into *error.
struct Bad {
  std::string why;
};

[[noreturn]] void bad(const std::string& where, const std::string& why) { throw Bad{where + ": " + why}; }

// Runs f() on a nested object, naming its fields by their whole path
// ("containers[2].id", not "id", which would read as the pod's own field).
template <typename F>
auto nested(const std::string& where, F&& f) {
  try {
    return f();
  } catch (const Bad& b) {
    throw Bad{where + "." + b.why};
  }
}

const json* field(const json& o, const char* key) {
  auto it = o.find(key);
  return it == o.end() || it->is_null() ? nullptr : &*it;
}

std::string str(const json& o, const char* key, size_t max, bool required) {
  const json* v = field(o, key);
  if (!v) {
    if (required) bad(key, "missing");
    return {};
  }
  if (!v->is_string()) bad(key, "not a string");
  const auto& s = v->get_ref<const std::string&>();
  if (s.size() > max) bad(key, "longer than " + std::to_string(max) + " bytes");
  if (required && s.empty()) bad(key, "empty");
  return s;
}

bool boolean(const json& o, const char* key) {
  const json* v = field(o, key);
  if (!v) return false;
  if (!v->is_boolean()) bad(key, "not true or false");
  return v->get<bool>();
}

const json* array(const json& o, const char* key, size_t max) {
  const json* v = field(o, key);
  if (!v) return nullptr;
  if (!v->is_array()) bad(key, "not a list");
  if (v->size() > max) bad(key, "more than " + std::to_string(max) + " entries");
  return v;
}

std::vector<IpKey> ips(const json& o, const char* key, size_t max) {
  std::vector<IpKey> out;
  if (const json* a = array(o, key, max)) {
    for (size_t i = 0; i < a->size(); i++) {
      const json& e = (*a)[i];
      std::string where = std::string(key) + "[" + std::to_string(i) + "]";
      if (!e.is_string()) bad(where, "not a string");
      auto k = IpKey::parse(e.get_ref<const std::string&>());
      if (!k) bad(where, "not an IP address: '" + e.get<std::string>().substr(0, 64) + "'");
      out.push_back(*k);
    }
  }
  return out;
}

std::vector<PortSpec> ports(const json& o) {
  std::vector<PortSpec> out;
  if (const json* a = array(o, "ports", kMaxPorts)) {
    for (size_t i = 0; i < a->size(); i++) {
      const json& e = (*a)[i];
      std::string where = "ports[" + std::to_string(i) + "]";
      if (!e.is_object()) bad(where, "not an object");
      PortSpec p;
      nested(where, [&] {
        p.name = str(e, "name", kMaxName, false);
        p.protocol = str(e, "protocol", 16, false);
      });
      const json* n = field(e, "port");
      if (!n || !n->is_number_integer() || n->get<int64_t>() < 0 || n->get<int64_t>() > 65535)
        bad(where, "port must be a number 0-65535");
      p.port = static_cast<uint16_t>(n->get<int64_t>());
      out.push_back(std::move(p));
    }
  }
  return out;
}

json ips_json(const std::vector<IpKey>& v) {
  json a = json::array();
  for (auto& k : v) a.push_back(k.str());
  return a;
}

json ports_json(const std::vector<PortSpec>& v) {
  json a = json::array();
  for (auto& p : v) {
    json e = {{"port", p.port}};
    if (!p.name.empty()) e["name"] = p.name;
    if (!p.protocol.empty()) e["protocol"] = p.protocol;
    a.push_back(std::move(e));
  }
  return a;
}

bool is_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

PodObject parse_pod(const json& o, WorkloadOp op) {
  PodObject p;
  p.uid = str(o, "uid", kMaxName, true);
  p.namespace_ = str(o, "namespace", kMaxName, op == WorkloadOp::Upsert);
  p.name = str(o, "name", kMaxName, op == WorkloadOp::Upsert);
  if (op == WorkloadOp::Delete) return p;
  p.node = str(o, "node", kMaxName, false);
  p.phase = str(o, "phase", 32, false);
  p.host_network = boolean(o, "hostNetwork");
  p.ips = ips(o, "ips", kMaxAddresses);
  if (const json* l = field(o, "labels")) {
    if (!l->is_object()) bad("labels", "not an object");
    if (l->size() > kMaxLabels) bad("labels", "more than " + std::to_string(kMaxLabels) + " labels");
    for (auto& [k, v] : l->items()) {
      if (k.size() > kMaxName + 64) bad("labels", "a key longer than " + std::to_string(kMaxName + 64) + " bytes");
      if (!v.is_string()) bad("labels." + k.substr(0, 64), "not a string");
      if (v.get_ref<const std::string&>().size() > kMaxLabelValue)
        bad("labels." + k.substr(0, 64), "longer than " + std::to_string(kMaxLabelValue) + " bytes");
      p.labels.emplace_back(k, v.get<std::string>());
    }
  }
  if (const json* ow = field(o, "owner")) {
    if (!ow->is_object()) bad("owner", "not an object");
    nested("owner", [&] {
      p.owner_kind = str(*ow, "kind", 64, true);
      p.owner_name = str(*ow, "name", kMaxName, true);
    });
  }
  if (const json* a = array(o, "containers", kMaxContainers)) {
    for (size_t i = 0; i < a->size(); i++) {
      const json& e = (*a)[i];
      const std::string where = "containers[" + std::to_string(i) + "]";
      if (!e.is_object()) bad(where, "not an object");
      ContainerRef c;
      nested(where, [&] {
        c.name = str(e, "name", kMaxName, false);
        c.id = str(e, "id", 64, false);
        c.runtime = str(e, "runtime", 32, false);
        if (!c.id.empty() && !is_hex64(c.id)) bad("id", "not 64 hex digits");
      });
      p.containers.push_back(std::move(c));
    }
  }
  return p;
}

Workload parse(const json& o) {
  if (!o.is_object()) bad("object", "not a JSON object");
  const json* v = field(o, "v");
  if (!v || !v->is_number_integer()) bad("v", "missing schema version");
  if (v->get<int64_t>() != kWorkloadSchemaVersion) bad("v", "unknown schema version " + v->dump());
  const std::string kind = str(o, "kind", 32, true);
  Workload w;
  const std::string op = str(o, "op", 16, false);
  if (op == "delete")
    w.op = WorkloadOp::Delete;
  else if (op != "upsert" && !op.empty())
    bad("op", "must be upsert or delete, got '" + op + "'");
  const bool del = w.op == WorkloadOp::Delete;
  try {
    if (kind == "Pod") {
      w.object = parse_pod(o, w.op);
    } else if (kind == "Service") {
      // A delete is its key only, as for pods: what else it carries is not
      // kept, so that to_json (which writes the key only) gives back the same
      // object (tests/fuzz/regressions/workload_object).
      ServiceObject s;
      s.uid = str(o, "uid", kMaxName, true);
      s.namespace_ = str(o, "namespace", kMaxName, !del);
      s.name = str(o, "name", kMaxName, !del);
      if (del) {
        w.object = std::move(s);
        return w;
      }
      s.type = str(o, "type", 32, false);
      s.cluster_ips = ips(o, "clusterIPs", kMaxAddresses);
      s.ports = ports(o);
      w.object = std::move(s);
    } else if (kind == "EndpointSlice") {
      EndpointSliceObject e;
      e.uid = str(o, "uid", kMaxName, true);
      e.namespace_ = str(o, "namespace", kMaxName, !del);
      e.name = str(o, "name", kMaxName, !del);
      if (del) {  // the key only, as for services
        w.object = std::move(e);
        return w;
      }
      e.service = str(o, "service", kMaxName, false);
      e.addresses = ips(o, "addresses", kMaxEndpointAddresses);
      e.ports = ports(o);
      w.object = std::move(e);
    } else if (kind == "Node") {
      NodeObject n;
      n.uid = str(o, "uid", kMaxName, true);
      n.name = str(o, "name", kMaxName, !del);
      if (del) {  // the key only, as for services
        w.object = std::move(n);
        return w;
      }
      n.addresses = ips(o, "addresses", kMaxAddresses);
      w.object = std::move(n);
    } else if (kind == "Self") {
      SelfObject s;
      s.node = str(o, "node", kMaxName, true);
      s.addresses = ips(o, "addresses", kMaxAddresses);
      w.object = std::move(s);
    } else if (kind == "Sync") {
      SyncObject s;
      s.resource = str(o, "resource", 64, true);
      s.state = str(o, "state", 16, true);
      if (s.state != "synced" && s.state != "lost") bad("state", "must be synced or lost");
      s.error = str(o, "error", 1024, false);
      w.object = std::move(s);
    } else if (kind == "Stats") {
      StatsObject s;
      if (const json* r = field(o, "requests")) {
        if (!r->is_object() || r->size() > 64) bad("requests", "not an object of at most 64 counters");
        for (auto& [k, n] : r->items()) {
          if (k.size() > 64 || !n.is_number_unsigned()) bad("requests", "bad counter '" + k.substr(0, 64) + "'");
          s.requests[k] = n.get<uint64_t>();
        }
      }
      for (auto [key, dst] : {std::pair{"events", &s.events}, std::pair{"relists", &s.relists}})
        if (const json* n = field(o, key)) {
          if (!n->is_number_unsigned()) bad(key, "not a count");
          *dst = n->get<uint64_t>();
        }
      w.object = std::move(s);
    } else {
      bad("kind", "unknown kind '" + kind + "'");
    }
  } catch (const Bad& b) {
    throw Bad{kind + ": " + b.why};
  }
  return w;
}

}  // namespace

const char* Workload::kind() const {
  static const char* kNames[] = {"Pod", "Service", "EndpointSlice", "Node", "Self", "Sync", "Stats"};
  return kNames[object.index()];
}

std::string Workload::state_key() const {
  return std::visit(
      [this](const auto& o) -> std::string {
        using T = std::decay_t<decltype(o)>;
        if constexpr (std::is_same_v<T, SelfObject>) return "Self";
        else if constexpr (std::is_same_v<T, SyncObject> || std::is_same_v<T, StatsObject>) return "";
        else return std::string(kind()) + "/" + o.uid;
      },
      object);
}

std::optional<Workload> parse_workload(std::string_view text, std::string* error) {
  if (text.size() > kMaxWorkloadJson) {
    if (error) *error = "object larger than " + std::to_string(kMaxWorkloadJson) + " bytes";
    return std::nullopt;
  }
  json o = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (o.is_discarded()) {
    if (error) *error = "not valid JSON";
    return std::nullopt;
  }
  try {
    return parse(o);
  } catch (const Bad& b) {
    if (error) *error = b.why;
  } catch (const json::exception& e) {  // not expected: every access checks the type first
    if (error) *error = e.what();
  }
  return std::nullopt;
}

std::string to_json(const Workload& w) {
  json o = {{"v", kWorkloadSchemaVersion}, {"kind", w.kind()}};
  const bool del = w.op == WorkloadOp::Delete;
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, PodObject>) {
          o["op"] = del ? "delete" : "upsert";
          o["uid"] = x.uid;
          o["namespace"] = x.namespace_;
          o["name"] = x.name;
          if (del) return;
          if (!x.node.empty()) o["node"] = x.node;
          o["hostNetwork"] = x.host_network;
          o["ips"] = ips_json(x.ips);
          if (!x.phase.empty()) o["phase"] = x.phase;
          json labels = json::object();
          for (auto& [k, v] : x.labels) labels[k] = v;
          o["labels"] = std::move(labels);
          if (!x.owner_kind.empty()) o["owner"] = {{"kind", x.owner_kind}, {"name", x.owner_name}};
          json cs = json::array();
          for (auto& c : x.containers) {
            json e = {{"name", c.name}};
            if (!c.id.empty()) e["id"] = c.id;
            if (!c.runtime.empty()) e["runtime"] = c.runtime;
            cs.push_back(std::move(e));
          }
          o["containers"] = std::move(cs);
        } else if constexpr (std::is_same_v<T, ServiceObject>) {
          o["op"] = del ? "delete" : "upsert";
          o["uid"] = x.uid;
          o["namespace"] = x.namespace_;
          o["name"] = x.name;
          if (del) return;
          if (!x.type.empty()) o["type"] = x.type;
          o["clusterIPs"] = ips_json(x.cluster_ips);
          o["ports"] = ports_json(x.ports);
        } else if constexpr (std::is_same_v<T, EndpointSliceObject>) {
          o["op"] = del ? "delete" : "upsert";
          o["uid"] = x.uid;
          o["namespace"] = x.namespace_;
          o["name"] = x.name;
          if (del) return;
          if (!x.service.empty()) o["service"] = x.service;
          o["addresses"] = ips_json(x.addresses);
          o["ports"] = ports_json(x.ports);
        } else if constexpr (std::is_same_v<T, NodeObject>) {
          o["op"] = del ? "delete" : "upsert";
          o["uid"] = x.uid;
          o["name"] = x.name;
          if (del) return;
          o["addresses"] = ips_json(x.addresses);
        } else if constexpr (std::is_same_v<T, SelfObject>) {
          o["node"] = x.node;
          o["addresses"] = ips_json(x.addresses);
        } else if constexpr (std::is_same_v<T, SyncObject>) {
          o["resource"] = x.resource;
          o["state"] = x.state;
          if (!x.error.empty()) o["error"] = x.error;
        } else {
          o["requests"] = x.requests;
          o["events"] = x.events;
          o["relists"] = x.relists;
        }
      },
      w.object);
  // Replacement of invalid UTF-8: names come from the API server, checked
  // there, but a record must always serialize.
  return o.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace tapwire::identity

#include "call.hpp"

#include <arpa/inet.h>

#include <cstdio>
#include <ctime>

#include "dns/session.hpp"
#include "http1/session.hpp"

namespace tapwire::dissect {

// Both run for every call the DB stores: formatted by hand, as inet_ntop
// (IPv4) and "%016" PRIx64 would, at a fraction of their cost.
std::string Endpoint::ip() const {
  if (ip_version == 6) {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(AF_INET6, addr, buf, sizeof buf);
    return buf;
  }
  char buf[16];  // "255.255.255.255"
  char* p = buf;
  for (int i = 0; i < 4; i++) {
    unsigned v = addr[i];
    if (v >= 100) *p++ = static_cast<char>('0' + v / 100);
    if (v >= 10) *p++ = static_cast<char>('0' + v / 10 % 10);
    *p++ = static_cast<char>('0' + v % 10);
    if (i < 3) *p++ = '.';
  }
  return std::string(buf, p);
}

std::string key_hex(uint64_t key) {
  static const char kHex[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15, shift = 0; i >= 0; i--, shift += 4) out[i] = kHex[(key >> shift) & 15];
  return out;
}

std::string Call::id() const { return key_hex(key); }

const proto::HttpMessage* Call::http_request() const {
  auto* r = req<proto::HttpRecord>();
  return r ? &r->msg : nullptr;
}
const proto::HttpMessage* Call::http_response() const {
  auto* r = resp<proto::HttpRecord>();
  return r ? &r->msg : nullptr;
}
const proto::DnsMessage* Call::dns_query() const {
  auto* r = req<proto::DnsRecord>();
  return r ? &r->msg : nullptr;
}
const proto::DnsMessage* Call::dns_response() const {
  auto* r = resp<proto::DnsRecord>();
  return r ? &r->msg : nullptr;
}

std::string format_ts(uint64_t ns) {
  time_t sec = static_cast<time_t>(ns / 1000000000ull);
  tm t{};
  gmtime_r(&sec, &t);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%09uZ", t.tm_year + 1900, t.tm_mon + 1, t.tm_mday,
                t.tm_hour, t.tm_min, t.tm_sec, static_cast<unsigned>(ns % 1000000000ull));
  return buf;
}

// Identity fields appear only when known (non-empty, pid non-zero), so a
// record without identity is exactly what it was before identity existed.
// CallDb::row_json rebuilds the same object from columns; keep them in step.
void write_endpoint(JsonOut& j, const Endpoint& e) {
  j.begin_object();
  j.field("ip", e.ip());
  j.field("port", uint64_t{e.port});
  if (e.identity) {
    const identity::EndpointIdentity& id = *e.identity;
    auto put = [&j](const char* key, const std::string& v) {
      if (!v.empty()) j.field(key, v);
    };
    if (id.pid || !id.process.empty() || !id.exe.empty()) {
      j.key("process");
      j.begin_object();
      if (id.pid) j.field("pid", uint64_t{id.pid});
      put("name", id.process);
      put("exe", id.exe);
      j.end_object();
    }
    put("container", id.container);
    put("container_id", id.container_id);
    put("pod", id.pod);
    put("namespace", id.namespace_);
    if (!id.workload_kind.empty() || !id.workload_name.empty()) {
      j.key("workload");
      j.begin_object();
      put("kind", id.workload_kind);
      put("name", id.workload_name);
      j.end_object();
    }
    put("service", id.service);
    put("node", id.node);
  }
  j.end_object();
}

std::string record_message_json(const proto::Message* m) {
  if (!m) return "null";
  std::string s;
  JsonOut j(s);
  m->write_json(j);
  return s;
}

void write_record(const Call& c, std::string& out) {
  JsonOut j(out);
  j.begin_object();
  j.field("id", c.id());
  j.field("protocol", c.protocol);
  j.field("ts", format_ts(c.ts_ns));
  j.key("duration_us");
  if (int64_t d = c.duration_us(); d >= 0)
    j.number(d);
  else
    j.null();
  j.key("src");
  write_endpoint(j, c.src);
  j.key("dst");
  write_endpoint(j, c.dst);
  j.key("request");
  if (c.request)
    c.request->write_json(j);
  else
    j.null();
  j.key("response");
  if (c.response)
    c.response->write_json(j);
  else
    j.null();
  j.key("flags");
  j.begin_array();
  for (auto& f : flag_names(c.flags)) j.string(f);
  j.end_array();
  if (c.link_key) j.field("upgrade_id", key_hex(c.link_key));
  if (!c.node.empty()) j.field("node", c.node);
  j.end_object();
}

namespace {

// The same object as write_endpoint, as a document: strings kept byte for
// byte (a name from /proc need not be UTF-8), as the DB returns them.
nlohmann::json endpoint_json(const Endpoint& e) {
  nlohmann::json j = {{"ip", e.ip()}, {"port", e.port}};
  if (!e.identity) return j;
  const identity::EndpointIdentity& id = *e.identity;
  auto put = [&j](const char* key, const std::string& v) {
    if (!v.empty()) j[key] = v;
  };
  nlohmann::json process = nlohmann::json::object();
  if (id.pid) process["pid"] = id.pid;
  if (!id.process.empty()) process["name"] = id.process;
  if (!id.exe.empty()) process["exe"] = id.exe;
  if (!process.empty()) j["process"] = std::move(process);
  put("container", id.container);
  put("container_id", id.container_id);
  put("pod", id.pod);
  put("namespace", id.namespace_);
  nlohmann::json workload = nlohmann::json::object();
  if (!id.workload_kind.empty()) workload["kind"] = id.workload_kind;
  if (!id.workload_name.empty()) workload["name"] = id.workload_name;
  if (!workload.empty()) j["workload"] = std::move(workload);
  put("service", id.service);
  put("node", id.node);
  return j;
}

}  // namespace

nlohmann::json to_json(const Call& c) {
  nlohmann::json j;
  j["id"] = c.id();
  j["protocol"] = c.protocol;
  j["ts"] = format_ts(c.ts_ns);
  const int64_t d = c.duration_us();
  j["duration_us"] = d < 0 ? nlohmann::json(nullptr) : nlohmann::json(d);
  j["src"] = endpoint_json(c.src);
  j["dst"] = endpoint_json(c.dst);
  j["request"] = nlohmann::json::parse(record_message_json(c.request.get()));
  j["response"] = nlohmann::json::parse(record_message_json(c.response.get()));
  j["flags"] = flag_names(c.flags);
  if (c.link_key) j["upgrade_id"] = key_hex(c.link_key);
  if (!c.node.empty()) j["node"] = c.node;
  return j;
}

}  // namespace tapwire::dissect

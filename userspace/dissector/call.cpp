#include "call.hpp"

#include <arpa/inet.h>

#include <cstdio>
#include <ctime>

#include "body/body_json.hpp"

namespace tapwire::dissect {

const char* protocol_name(Protocol p) {
  switch (p) {
    case Protocol::Http:
      return "http";
    case Protocol::Dns:
      return "dns";
  }
  return "unknown";
}

std::vector<std::string> flag_names(uint32_t flags) {
  static const std::pair<uint32_t, const char*> kNames[] = {
      {kFlagGap, "gap"},           {kFlagTruncated, "truncated"}, {kFlagOrphanResponse, "orphan_response"},
      {kFlagTimeout, "timeout"},   {kFlagClosed, "closed"},       {kFlagUpgrade, "upgrade"},
      {kFlagBodyTruncated, "body_truncated"}, {kFlagMemoryShed, "memory_shed"},  {kFlagIncomplete, "incomplete"},
      {kFlagBodyDecodeError, "body_decode_error"},
  };
  std::vector<std::string> out;
  for (auto& [bit, name] : kNames)
    if (flags & bit) out.emplace_back(name);
  return out;
}

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

std::string Call::id() const {
  static const char kHex[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 15, shift = 0; i >= 0; i--, shift += 4) out[i] = kHex[(key >> shift) & 15];
  return out;
}

int64_t Call::duration_us() const {
  if (!has_response() || !has_request() || end_ns < ts_ns) return -1;
  return static_cast<int64_t>((end_ns - ts_ns) / 1000);
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

nlohmann::json headers_json(const std::vector<proto::Header>& hs) {
  nlohmann::json j = nlohmann::json::object();
  for (auto& h : hs) {
    auto it = j.find(h.name);
    if (it == j.end())
      j[h.name] = h.value;
    else  // repeated fields join with ", " as RFC 9110 allows (Set-Cookie aside, good enough to read)
      *it = it->get<std::string>() + ", " + h.value;
  }
  return j;
}

void put_body_json(nlohmann::json& j, const proto::HttpMessage& m) {
  if (!m.body.empty())
    j.update(proto::body_json(
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(m.body.data()), m.body.size()), !m.body_binary));
  if (!m.content_encoding.empty()) {
    j["content_encoding"] = m.content_encoding;
    j["body_decoded_size"] = m.body_decoded_size;
  }
}

namespace {

// Identity fields appear only when known (non-empty, pid non-zero), so a
// record without identity is exactly what it was before identity existed.
// CallDb::row_json rebuilds the same object from columns; keep them in step.
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
  j["protocol"] = protocol_name(c.protocol);
  j["ts"] = format_ts(c.ts_ns);
  int64_t d = c.duration_us();
  j["duration_us"] = d < 0 ? nlohmann::json(nullptr) : nlohmann::json(d);
  j["src"] = endpoint_json(c.src);
  j["dst"] = endpoint_json(c.dst);
  nlohmann::json req = nullptr, resp = nullptr;
  if (c.http_request) {
    auto& m = *c.http_request;
    req = {{"method", m.method},
           {"path", m.target},
           {"version", m.version_minor == 0 ? "HTTP/1.0" : "HTTP/1.1"},
           {"headers", headers_json(m.headers)},
           {"body_size", m.body_size}};
    put_body_json(req, m);
  }
  if (c.http_response) {
    auto& m = *c.http_response;
    resp = {{"status", m.status},
            {"reason", m.reason},
            {"headers", headers_json(m.headers)},
            {"body_size", m.body_size}};
    put_body_json(resp, m);
  }
  if (c.dns_query) {
    auto& q = *c.dns_query;
    req = {{"id", q.id},
           {"qname", q.questions.empty() ? std::string() : q.questions[0].name},
           {"qtype", q.questions.empty() ? std::string() : proto::dns_type_name(q.questions[0].qtype)}};
  }
  if (c.dns_response) {
    auto& r = *c.dns_response;
    nlohmann::json answers = nlohmann::json::array();
    for (auto& a : r.answers) answers.push_back(proto::dns_type_name(a.type) + " " + a.data);
    resp = {{"rcode", proto::dns_rcode_name(r.rcode)}, {"answers", answers}};
    if (!c.dns_query) {  // orphan: say what it answered
      resp["qname"] = r.questions.empty() ? std::string() : r.questions[0].name;
      resp["qtype"] = r.questions.empty() ? std::string() : proto::dns_type_name(r.questions[0].qtype);
    }
  }
  j["request"] = req;
  j["response"] = resp;
  j["flags"] = flag_names(c.flags);
  if (!c.node.empty()) j["node"] = c.node;
  return j;
}

}  // namespace tapwire::dissect

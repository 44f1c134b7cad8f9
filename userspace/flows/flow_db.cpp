#include "flow_db.hpp"

#include "flow_sources.hpp"

namespace tapwire::flows {

dissect::CallDb::FlowRow flow_db_row(const Flow& f) {
  dissect::CallDb::FlowRow r;
  r.id = f.id();
  r.protocol = f.tcp() ? "tcp" : "udp";
  r.state = f.state();
  if (f.end()) r.end = f.end();
  r.node = f.node;
  r.first_ns = f.rec.st.first_ns;
  r.last_ns = f.rec.st.last_ns;
  r.ip_version = f.rec.key.ip_version;
  r.client_ip = f.client.ip();
  r.client_port = f.client.port;
  r.server_ip = f.server.ip();
  r.server_port = f.server.port;
  if (f.client.identity) {
    r.client_namespace = f.client.identity->namespace_;
    r.client_pod = f.client.identity->pod;
    r.client_workload = f.client.identity->workload_name;
  }
  if (f.server.identity) {
    r.server_namespace = f.server.identity->namespace_;
    r.server_pod = f.server.identity->pod;
    r.server_workload = f.server.identity->workload_name;
  }
  r.packets = f.packets();
  r.bytes = f.bytes();
  r.retransmissions = f.tcp() ? f.retransmissions() : 0;
  r.rtt_us = f.rtt_us();
  r.record = flow_json(f).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  r.key.assign(reinterpret_cast<const char*>(&f.rec.key), sizeof f.rec.key);
  return r;
}

void store_flow(dissect::CallDb& db, const Flow& f) { db.upsert_flow(flow_db_row(f)); }

void store_dns_call(dissect::CallDb* db, PassiveDns* dns, const dissect::Call& c) {
  const proto::DnsMessage* m = c.dns_response();
  if (!m) return;
  const uint64_t ts = c.ts_ns + (c.duration_us() > 0 ? static_cast<uint64_t>(c.duration_us()) * 1000 : 0);
  for (auto& a : PassiveDns::answers_of(*m)) {
    if (db) db->add_dns_name(a.ip, a.name, ts, a.ttl);
    if (dns) dns->add(a.ip, a.name, ts, a.ttl);
  }
}

size_t store_flow_dir(dissect::CallDb& db, const std::string& flow_dir, const std::string& identity_dir,
                      const PassiveDns* dns) {
  auto recs = read_flow_dir(flow_dir, 0, 0);
  sort_by_first_seen(recs);
  FlowNamer namer(identity_dir, dns);
  for (auto& r : recs) store_flow(db, namer.name(r));
  db.commit();
  return recs.size();
}

void load_dns_names(dissect::CallDb& db, PassiveDns& dns, uint64_t to_ns) {
  for (auto& n : db.dns_names(0, to_ns)) {
    dns.add(n.ip, n.name, n.first_seen, n.ttl);
    if (n.last_seen != n.first_seen) dns.add(n.ip, n.name, n.last_seen, n.ttl);
  }
}

}  // namespace tapwire::flows

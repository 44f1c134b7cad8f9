#include "metrics_exporter.hpp"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

namespace tapwire {
namespace {

using nlohmann::json;
using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// j[key] when it is an object, else an empty one: the status comes from a
// file and is never trusted to have the expected shape.
json obj(const json& j, const char* key) {
  if (!j.is_object()) return json::object();
  auto it = j.find(key);
  return it != j.end() && it->is_object() ? *it : json::object();
}

double num(const json& j, const char* key) {
  if (!j.is_object()) return 0;
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0;
}

json arr(const json& j, const char* key) {
  if (!j.is_object()) return json::array();
  auto it = j.find(key);
  return it != j.end() && it->is_array() ? *it : json::array();
}

std::string str(const json& j, const char* key) {
  if (!j.is_object()) return {};
  auto it = j.find(key);
  return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool flag(const json& j, const char* key) {
  if (!j.is_object()) return false;
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() && it->get<bool>();
}

// A non-negative whole count (histogram counts), 0 for anything else.
uint64_t count(const json& j, const char* key) {
  double v = num(j, key);
  return v >= 0 && v < 1.8e19 ? static_cast<uint64_t>(v) : 0;
}

// Series a file may add per family, and the longest label value: a
// dissector that writes nonsense cannot blow up the scrape.
constexpr size_t kMaxSeries = 256;
constexpr size_t kMaxLabelBytes = 128;
bool label_ok(const std::string& v) { return !v.empty() && v.size() <= kMaxLabelBytes; }

struct FamilyBuilder {
  MetricFamily f;
  FamilyBuilder(std::string name, std::string help, MetricType type) {
    f.name = std::move(name);
    f.help = std::move(help);
    f.type = type;
  }
  FamilyBuilder& add(double v, std::vector<ClientMetric::Label> labels = {}) {
    ClientMetric m;
    m.label = std::move(labels);
    if (f.type == MetricType::Counter)
      m.counter.value = v;
    else
      m.gauge.value = v;
    f.metric.push_back(std::move(m));
    return *this;
  }
};

// One series per numeric entry of the object j[key], labelled by its key.
void by_label(FamilyBuilder& fb, const json& j, const char* key, const char* label) {
  const json entries = obj(j, key);  // named: items() of a temporary would dangle
  for (auto& [k, v] : entries.items()) {
    if (fb.f.metric.size() >= kMaxSeries) break;
    if (v.is_number() && label_ok(k)) fb.add(v.get<double>(), {{label, k}});
  }
}

// CPU seconds and resident bytes of a process, from /proc.
bool process_usage(long pid, double& cpu_seconds, double& rss_bytes) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  auto close = text.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream rest(text.substr(close + 2));
  std::vector<std::string> f;
  std::string tok;
  while (rest >> tok) f.push_back(tok);
  if (f.size() < 22) return false;  // fields from 3 (state) on
  const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
  cpu_seconds = (std::stod(f[11]) + std::stod(f[12])) / hz;  // utime, stime
  rss_bytes = std::stod(f[21]) * static_cast<double>(sysconf(_SC_PAGESIZE));
  return true;
}

std::vector<MetricFamily> sensor_families(const json& s) {
  std::vector<MetricFamily> out;
  if (!s.is_object()) return out;
  const json c = obj(s, "counters");
  FamilyBuilder pk("tapwire_packets_captured_total", "Packets captured, by interface and direction", MetricType::Counter);
  FamilyBuilder by("tapwire_captured_bytes_total", "L4 payload bytes captured, by interface and direction",
                   MetricType::Counter);
  const json ifaces = arr(s, "interfaces");
  for (auto& i : ifaces) {
    std::string name = str(i, "name");
    for (const char* dir : {"ingress", "egress"}) {
      const json d = obj(i, dir);
      pk.add(num(d, "packets"), {{"interface", name}, {"direction", dir}});
      by.add(num(d, "bytes"), {{"interface", name}, {"direction", dir}});
    }
  }
  out.push_back(pk.f);
  out.push_back(by.f);
  out.push_back(FamilyBuilder("tapwire_packets_seen_total", "Packets the capture programs ran on", MetricType::Counter)
                    .add(num(c, "packets_seen"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_packets_not_recorded_total",
                              "Packets not recorded by design (filtered, not TCP/UDP, payload-less ACKs, IPsec ESP), by reason",
                              MetricType::Counter)
                    .add(num(c, "filtered"), {{"reason", "filtered"}})
                    .add(num(c, "not_tcp_udp"), {{"reason", "not_tcp_udp"}})
                    .add(num(c, "empty_ack"), {{"reason", "empty_ack"}})
                    .add(num(c, "not_targeted"), {{"reason", "not_targeted"}})
                    .add(num(c, "duplicate"), {{"reason", "duplicate"}})
                    .add(num(c, "ipsec_esp"), {{"reason", "ipsec_esp"}})
                    .f);
  out.push_back(FamilyBuilder("tapwire_packets_truncated_total", "Packets whose payload was cut (flagged)",
                              MetricType::Counter)
                    .add(num(c, "truncated"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_packets_first_fragment_total",
                              "First IP fragments captured (flagged: the payload is that fragment's part only)",
                              MetricType::Counter)
                    .add(num(c, "first_fragments"))
                    .f);
  FamilyBuilder drops("tapwire_drops_total", "Packets or records lost, by reason and CPU (cpu=\"all\" for userspace)",
                      MetricType::Counter);
  std::vector<std::string> kernel_reasons;
  const json by_cpu = arr(s, "drops_by_cpu");
  for (auto& cpu : by_cpu) {
    if (!cpu.is_object()) continue;
    std::string id = std::to_string(static_cast<long long>(num(cpu, "cpu")));
    for (auto it = cpu.begin(); it != cpu.end(); ++it) {
      if (it.key() == "cpu") continue;
      drops.add(it->is_number() ? it->get<double>() : 0, {{"reason", it.key()}, {"cpu", id}});
      if (id == "0") kernel_reasons.push_back(it.key());
    }
  }
  const json user_drops = obj(s, "drops");
  for (auto it = user_drops.begin(); it != user_drops.end(); ++it) {
    bool kernel = false;
    for (auto& k : kernel_reasons) kernel |= k == it.key();
    if (!kernel) drops.add(it->is_number() ? it->get<double>() : 0, {{"reason", it.key()}, {"cpu", "all"}});
  }
  out.push_back(drops.f);
  FamilyBuilder fill("tapwire_ring_fill_ratio", "Fill of each CPU's BPF ring buffer (0-1)", MetricType::Gauge);
  const json rings = arr(s, "rings");
  for (auto& r : rings) {
    double size = num(r, "size_bytes");
    fill.add(size > 0 ? num(r, "pending_bytes") / size : 0, {{"cpu", std::to_string(static_cast<long long>(num(r, "cpu")))}});
  }
  out.push_back(fill.f);
  const json st = obj(s, "storage");
  out.push_back(FamilyBuilder("tapwire_segments", "Segment files in the ring", MetricType::Gauge)
                    .add(num(st, "segments"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_stored_bytes", "Bytes of segment files", MetricType::Gauge)
                    .add(num(st, "bytes_stored"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_storage_limit_bytes", "Storage size limit of the segment ring",
                              MetricType::Gauge)
                    .add(num(st, "storage_size"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_segments_deleted_total", "Segments deleted by retention", MetricType::Counter)
                    .add(num(st, "segments_deleted"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_segments_damaged_total",
                              "Segments found damaged at start and set aside in segments/damaged/", MetricType::Counter)
                    .add(num(st, "segments_damaged"))
                    .f);
  const json d = obj(s, "dissection");
  out.push_back(FamilyBuilder("tapwire_dissection_enabled", "1 while L7 dissection is enabled", MetricType::Gauge)
                    .add(flag(d, "enabled") ? 1 : 0)
                    .f);
  out.push_back(FamilyBuilder("tapwire_dissector_running", "1 while the dissector process runs", MetricType::Gauge)
                    .add(flag(d, "running") ? 1 : 0)
                    .f);
  out.push_back(FamilyBuilder("tapwire_dissector_restarts_total", "Dissector processes restarted after they died",
                              MetricType::Counter)
                    .add(num(d, "restarts"))
                    .f);
  const json id = obj(s, "identity");
  if (flag(id, "enabled")) {
    FamilyBuilder ev("tapwire_identity_events_total", "Socket and process events from the identity hooks, by type",
                     MetricType::Counter);
    const json events = obj(id, "events");
    for (auto& [k, v] : events.items()) ev.add(v.is_number() ? v.get<double>() : 0, {{"type", k}});
    out.push_back(ev.f);
    FamilyBuilder idrops("tapwire_identity_drops_total", "Identity events lost, by reason", MetricType::Counter);
    const json id_drops = obj(id, "drops");
    for (auto& [k, v] : id_drops.items())
      idrops.add(v.is_number() ? v.get<double>() : 0, {{"reason", k}});
    out.push_back(idrops.f);
    const json stream = obj(id, "stream");
    out.push_back(FamilyBuilder("tapwire_identity_records_total", "Records written to the identity stream",
                                MetricType::Counter)
                      .add(num(stream, "records"))
                      .f);
    out.push_back(FamilyBuilder("tapwire_identity_stored_bytes", "Bytes of identity segment files", MetricType::Gauge)
                      .add(num(stream, "bytes_stored"))
                      .f);
    FamilyBuilder live("tapwire_identity_live", "Live sockets, processes, cgroups and Kubernetes objects the sensor keeps",
                       MetricType::Gauge);
    const json live_counts = obj(id, "live");
    for (auto& [k, v] : live_counts.items()) live.add(v.is_number() ? v.get<double>() : 0, {{"kind", k}});
    out.push_back(live.f);
    const json k8s = obj(id, "kubernetes");
    if (flag(k8s, "enabled")) {
      FamilyBuilder synced("tapwire_kubernetes_synced",
                           "1 when the resource's list completed and its watch runs; 0 while identity from it is unknown",
                           MetricType::Gauge);
      const json resources = obj(k8s, "resources");
      for (auto& [res, v] : resources.items())
        synced.add(v.is_object() && v.value("state", json()) == "synced" ? 1 : 0, {{"resource", res}});
      out.push_back(synced.f);
      out.push_back(FamilyBuilder("tapwire_kubernetes_sync_failures_total",
                                  "Times a resource's list or watch failed (identity then reads unknown)",
                                  MetricType::Counter)
                        .add(num(k8s, "sync_failures"))
                        .f);
      const json w = obj(k8s, "watcher");
      out.push_back(FamilyBuilder("tapwire_kubernetes_watcher_restarts_total", "tapwire-kube-watch restarts",
                                  MetricType::Counter)
                        .add(num(w, "restarts"))
                        .f);
      out.push_back(FamilyBuilder("tapwire_kubernetes_objects_refused_total",
                                  "Objects from tapwire-kube-watch refused by the sensor's checks", MetricType::Counter)
                        .add(num(w, "invalid"))
                        .f);
      FamilyBuilder req("tapwire_kubernetes_api_requests_total", "Requests to the Kubernetes API, by resource and verb",
                        MetricType::Counter);
      const json requests = obj(obj(k8s, "stats"), "requests");
      for (auto& [k, v] : requests.items()) {
          auto slash = k.find('/');
          req.add(v.is_number() ? v.get<double>() : 0,
                  {{"resource", k.substr(0, slash)}, {"verb", slash == std::string::npos ? "" : k.substr(slash + 1)}});
        }
      out.push_back(req.f);
    }
    const json t = obj(id, "targets");
    out.push_back(FamilyBuilder("tapwire_targeting_active", "1 while pod targeting narrows the capture", MetricType::Gauge)
                      .add(t.value("active", json()) == true ? 1 : 0)
                      .f);
    out.push_back(FamilyBuilder("tapwire_targeted_pods", "Pods whose traffic is captured under pod targeting",
                                MetricType::Gauge)
                      .add(num(t, "targeted_pods"))
                      .f);
    out.push_back(FamilyBuilder("tapwire_target_addresses", "Addresses in the kernel's target set", MetricType::Gauge)
                      .add(num(t, "addresses"))
                      .f);
  }
  // Flow accounting (docs/FLOWS.md): the kernel's table and the flow stream,
  // and the traffic by workload pair (bounded by tap.flows.metricsMaxPairs;
  // the sensor folds the rest into src_namespace="_other").
  const json fl = obj(s, "flows");
  if (fl.contains("active")) {
    FamilyBuilder active("tapwire_flows_active", "Flows in the kernel's flow table, by protocol", MetricType::Gauge);
    by_label(active, fl, "active", "protocol");
    out.push_back(active.f);
    FamilyBuilder created("tapwire_flows_total", "Flows accounted since start, by protocol", MetricType::Counter);
    by_label(created, fl, "created", "protocol");
    out.push_back(created.f);
    FamilyBuilder evicted("tapwire_flows_evicted_total",
                          "Flows ended early, by reason: table_full (evicted by the sensor), reuse_ring_full (a "
                          "reused flow's final state lost in the kernel)",
                          MetricType::Counter);
    by_label(evicted, fl, "evicted", "reason");
    out.push_back(evicted.f);
    out.push_back(FamilyBuilder("tapwire_flow_untracked_packets_total",
                                "Packets of new flows that found the flow table full (captured, not accounted)",
                                MetricType::Counter)
                      .add(num(fl, "untracked_packets"))
                      .f);
    out.push_back(FamilyBuilder("tapwire_flow_records_total", "Records written to the flow stream", MetricType::Counter)
                      .add(num(fl, "records"))
                      .f);
    out.push_back(FamilyBuilder("tapwire_flow_metric_pairs_folded_total",
                                "Flow metric deltas folded into the src_namespace=\"_other\" series "
                                "(tap.flows.metricsMaxPairs reached)",
                                MetricType::Counter)
                      .add(num(fl, "pairs_folded"))
                      .f);
    FamilyBuilder fbytes("tapwire_flow_bytes_total", "Bytes on the wire by workload pair (the client as src)",
                         MetricType::Counter);
    FamilyBuilder fpackets("tapwire_flow_packets_total", "Packets by workload pair (the client as src)",
                           MetricType::Counter);
    FamilyBuilder fconns("tapwire_flow_connections_total", "Flows started by workload pair (the client as src)",
                         MetricType::Counter);
    FamilyBuilder fresets("tapwire_tcp_resets_total", "TCP segments with RST by workload pair (the client as src)",
                          MetricType::Counter);
    FamilyBuilder fretx("tapwire_tcp_retransmissions_total",
                        "TCP retransmissions (Wireshark's tcp.analysis.retransmission) by workload pair",
                        MetricType::Counter);
    const json series = arr(fl, "pair_series");
    for (const auto& p : series) {
      if (!p.is_object() || fbytes.f.metric.size() >= 100000) break;
      std::vector<ClientMetric::Label> labels;
      bool ok = true;
      for (const char* l : {"src_namespace", "src_workload", "dst_namespace", "dst_workload", "protocol"}) {
        std::string v = str(p, l);
        ok = ok && v.size() <= kMaxLabelBytes;
        labels.push_back({l, v});
      }
      if (!ok) continue;
      fbytes.add(num(p, "bytes"), labels);
      fpackets.add(num(p, "packets"), labels);
      fconns.add(num(p, "connections"), labels);
      if (str(p, "protocol") == "tcp") {
        fresets.add(num(p, "resets"), labels);
        fretx.add(num(p, "retransmissions"), labels);
      }
    }
    for (auto* f : {&fbytes, &fpackets, &fconns, &fresets, &fretx}) out.push_back(f->f);
  }
  FamilyBuilder cpu("tapwire_process_cpu_seconds_total", "CPU time of tapwire's processes", MetricType::Counter);
  FamilyBuilder rss("tapwire_process_resident_memory_bytes", "Resident memory of tapwire's processes",
                    MetricType::Gauge);
  double c1, r1;
  if (process_usage(static_cast<long>(getpid()), c1, r1)) {
    cpu.add(c1, {{"process", "sensor"}});
    rss.add(r1, {{"process", "sensor"}});
  }
  if (long pid = static_cast<long>(num(d, "pid")); pid > 0 && process_usage(pid, c1, r1)) {
    cpu.add(c1, {{"process", "dissector"}});
    rss.add(r1, {{"process", "dissector"}});
  }
  const json watcher = obj(obj(obj(s, "identity"), "kubernetes"), "watcher");
  if (long pid = static_cast<long>(num(watcher, "pid")); pid > 0 && process_usage(pid, c1, r1)) {
    cpu.add(c1, {{"process", "kube-watch"}});
    rss.add(r1, {{"process", "kube-watch"}});
  }
  out.push_back(cpu.f);
  out.push_back(rss.f);
  return out;
}

std::vector<MetricFamily> dissector_families(const json& m) {
  std::vector<MetricFamily> out;
  if (!m.is_object()) return out;
  // From dissector.json, written by the less trusted dissector: every field
  // is type-checked (obj, num, by_label) and the series it may add bounded.
  FamilyBuilder calls("tapwire_calls_total", "API calls dissected, by protocol", MetricType::Counter);
  by_label(calls, m, "calls", "protocol");
  out.push_back(calls.f);
  FamilyBuilder methods("tapwire_http_requests_total", "HTTP calls by request method", MetricType::Counter);
  by_label(methods, m, "http_methods", "method");
  out.push_back(methods.f);
  FamilyBuilder classes("tapwire_http_responses_total", "HTTP calls by response status class (none: no response)",
                        MetricType::Counter);
  by_label(classes, m, "http_status_class", "status_class");
  out.push_back(classes.f);
  FamilyBuilder rcodes("tapwire_dns_responses_total", "DNS calls by response code (none: no response)",
                       MetricType::Counter);
  by_label(rcodes, m, "dns_rcodes", "rcode");
  out.push_back(rcodes.f);
  FamilyBuilder grpc("tapwire_grpc_calls_total", "gRPC calls by status (none: no grpc-status seen)",
                     MetricType::Counter);
  by_label(grpc, m, "grpc_status", "status");
  out.push_back(grpc.f);
  FamilyBuilder ws("tapwire_websocket_messages_total", "WebSocket messages by opcode", MetricType::Counter);
  by_label(ws, m, "ws_messages", "opcode");
  out.push_back(ws.f);
  // The data-plane protocols' own breakdowns (their ProtocolCounters), one
  // family each; their labels are bounded by the protocols (known names and
  // an OTHER) and by by_label.
  static const struct {
    const char *key, *name, *help, *label;
  } kBreakdowns[] = {
      {"redis_commands", "tapwire_redis_commands_total", "Redis commands by name, and pushes (push:KIND)", "command"},
      {"postgres_commands", "tapwire_postgres_commands_total", "PostgreSQL calls by SQL verb or message kind",
       "command"},
      {"mysql_commands", "tapwire_mysql_commands_total", "MySQL/MariaDB commands by name", "command"},
      {"kafka_apis", "tapwire_kafka_requests_total", "Kafka requests by API", "api"},
      {"amqp_methods", "tapwire_amqp_methods_total", "AMQP 0-9-1 methods seen, by name", "method"},
      {"mongodb_commands", "tapwire_mongodb_commands_total", "MongoDB commands by name", "command"},
      {"icmp_types", "tapwire_icmp_messages_total", "ICMP and ICMPv6 messages by type", "type"},
  };
  for (const auto& b : kBreakdowns) {
    FamilyBuilder f(b.name, b.help, MetricType::Counter);
    by_label(f, m, b.key, b.label);
    out.push_back(f.f);
  }
  MetricFamily hist;
  hist.name = "tapwire_call_duration_seconds";
  hist.help = "Time from the first byte of a request to the last byte of its response";
  hist.type = MetricType::Histogram;
  // A histogram whose buckets are not objects with increasing bounds (le:
  // a number, or null for +Inf) is left out whole.
  const json durations = obj(m, "duration_seconds");
  for (auto& [proto, h] : durations.items()) {
    if (!h.is_object() || !label_ok(proto) || hist.metric.size() >= kMaxSeries) continue;
    ClientMetric cm;
    cm.label = {{"protocol", proto}};
    cm.histogram.sample_count = count(h, "count");
    cm.histogram.sample_sum = num(h, "sum_seconds");
    uint64_t cumulative = 0;
    double previous = -std::numeric_limits<double>::infinity();
    bool ok = true;
    for (auto& b : arr(h, "buckets")) {
      auto le = b.is_object() ? b.find("le") : b.end();
      const bool inf = b.is_object() && (le == b.end() || le->is_null());
      if (!b.is_object() || !(inf || le->is_number()) || cm.histogram.bucket.size() >= kMaxSeries) {
        ok = false;
        break;
      }
      ClientMetric::Bucket bucket;
      bucket.upper_bound = inf ? std::numeric_limits<double>::infinity() : le->get<double>();
      if (!(bucket.upper_bound > previous)) {
        ok = false;
        break;
      }
      previous = bucket.upper_bound;
      cumulative += count(b, "count");
      bucket.cumulative_count = cumulative;
      cm.histogram.bucket.push_back(bucket);
    }
    if (ok) hist.metric.push_back(std::move(cm));
  }
  out.push_back(hist);
  out.push_back(FamilyBuilder("tapwire_reassembly_gaps_total", "Holes in TCP streams (bytes never captured)",
                              MetricType::Counter)
                    .add(num(m, "reassembly_gaps"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_reassembly_gap_bytes_total", "Bytes missing in TCP streams", MetricType::Counter)
                    .add(num(m, "reassembly_gap_bytes"))
                    .f);
  FamilyBuilder perr("tapwire_parse_errors_total", "Input that failed to parse and was skipped, by protocol",
                     MetricType::Counter);
  by_label(perr, m, "parse_errors", "protocol");
  out.push_back(perr.f);
  out.push_back(FamilyBuilder("tapwire_dissector_flows", "TCP flows the dissector tracks", MetricType::Gauge)
                    .add(num(m, "flows_active"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_dissector_buffered_bytes",
                              "Bytes the dissector holds in reassembly and parser buffers", MetricType::Gauge)
                    .add(num(m, "buffered_bytes"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_reassembly_out_of_window_total",
                              "TCP segments beyond the receive window (stray or spoofed), dropped without moving "
                              "the stream",
                              MetricType::Counter)
                    .add(num(m, "reassembly_out_of_window"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_reassembly_resyncs_total",
                              "TCP streams found to have moved on beyond the window (capture lost more than it)",
                              MetricType::Counter)
                    .add(num(m, "reassembly_resyncs"))
                    .f);
  const json memory = obj(m, "memory");
  out.push_back(FamilyBuilder("tapwire_dissector_memory_bytes",
                              "Heap the dissector's state takes (flows, reassembly, buffers, waiting requests)",
                              MetricType::Gauge)
                    .add(num(memory, "bytes"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_dissector_memory_limit_bytes",
                              "The dissector's memory limit (tap.dissection.memoryLimit); 0: none", MetricType::Gauge)
                    .add(num(memory, "limit"))
                    .f);
  FamilyBuilder shed("tapwire_dissector_shed_total",
                     "Times the dissector shed state to stay within its memory limit, by what it shed", MetricType::Counter);
  FamilyBuilder shed_bytes("tapwire_dissector_shed_bytes_total",
                           "Bytes of state the dissector shed to stay within its memory limit, by what it shed",
                           MetricType::Counter);
  by_label(shed, m, "shed", "reason");
  by_label(shed_bytes, m, "shed_bytes", "reason");
  out.push_back(shed.f);
  out.push_back(shed_bytes.f);
  const json db = obj(m, "db");
  out.push_back(FamilyBuilder("tapwire_dissection_db_bytes", "Bytes the live dissection DB's calls take",
                              MetricType::Gauge)
                    .add(num(db, "bytes"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_dissection_db_max_bytes",
                              "The live dissection DB's size bound (tap.capture.dbMaxSize); 0: none", MetricType::Gauge)
                    .add(num(db, "max_bytes"))
                    .f);
  out.push_back(FamilyBuilder("tapwire_dissection_db_calls_deleted_total",
                              "Oldest calls deleted to keep the live dissection DB within tap.capture.dbMaxSize",
                              MetricType::Counter)
                    .add(num(db, "calls_deleted"))
                    .f);
  return out;
}

}  // namespace

struct MetricsExporter::State final : prometheus::Collectable {
  mutable std::mutex mu;
  json sensor, dissector;
  std::vector<MetricFamily> Collect() const override {
    json s, d;
    {
      std::lock_guard<std::mutex> lock(mu);
      s = sensor;
      d = dissector;
    }
    auto out = sensor_families(s);
    auto more = dissector_families(d);
    out.insert(out.end(), more.begin(), more.end());
    return out;
  }
};

namespace {

uint64_t mono_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// HOST:PORT, [V6]:PORT or :PORT (every IPv4 address), listening, non-blocking.
int listen_on(const std::string& address) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("expected HOST:PORT or :PORT");
  std::string host = address.substr(0, colon), port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "0.0.0.0";
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) throw std::runtime_error(gai_strerror(rc));
  int fd = -1, err = EADDRNOTAVAIL;
  for (addrinfo* a = res; a && fd < 0; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      err = errno;
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);  // a restart finds its port free
    if (a->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 128) != 0) {
      err = errno;
      close(fd);
      fd = -1;
    }
  }
  freeaddrinfo(res);
  if (fd < 0) throw std::runtime_error(std::strerror(err));
  return fd;
}

std::string http_response(int code, const char* reason, const std::string& body, bool with_body,
                          const char* content_type = "text/plain; charset=utf-8", const char* extra = "") {
  std::string r = "HTTP/1.1 " + std::to_string(code) + " " + reason + "\r\nContent-Type: " + content_type +
                  "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n" + extra + "\r\n";
  if (with_body) r += body;
  return r;
}

}  // namespace

struct MetricsExporter::Server {
  struct Client {
    uint64_t opened_ns = 0;
    std::string in, out;  // the request head so far; the response
    size_t sent = 0;
    bool answered = false;  // the response is built: what arrives now is read and dropped
    bool shut = false;      // all sent, write side shut: waiting for the client to close
  };

  int listen_fd = -1, ep = -1, wake = -1;
  std::function<std::string()> render;
  std::map<int, Client> clients;
  uint64_t accept_paused_until = 0;
  std::thread thread;

  ~Server() {
    if (thread.joinable()) {
      uint64_t one = 1;
      (void)!write(wake, &one, sizeof one);
      thread.join();
    }
    for (auto& [fd, c] : clients) close(fd);
    for (int fd : {listen_fd, ep, wake})
      if (fd >= 0) close(fd);
  }

  void watch(int fd, uint32_t events, int op) {
    epoll_event ev{};
    ev.events = events;
    ev.data.fd = fd;
    epoll_ctl(ep, op, fd, &ev);
  }

  void drop(int fd) {
    clients.erase(fd);
    epoll_ctl(ep, EPOLL_CTL_DEL, fd, nullptr);
    close(fd);
  }

  // The answer to one request head. Only GET and HEAD of /metrics.
  std::string answer(const std::string& head) {
    std::string line = head.substr(0, head.find('\n'));
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t sp1 = line.find(' '), sp2 = sp1 == std::string::npos ? sp1 : line.find(' ', sp1 + 1);
    const std::string version = sp2 == std::string::npos ? std::string() : line.substr(sp2 + 1);
    if (version != "HTTP/1.0" && version != "HTTP/1.1")
      return http_response(400, "Bad Request", "bad request: expected GET /metrics HTTP/1.1\n", true);
    const std::string method = line.substr(0, sp1), target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    const bool head_only = method == "HEAD";
    if (method != "GET" && !head_only)
      return http_response(405, "Method Not Allowed", "only GET and HEAD\n", true, "text/plain; charset=utf-8",
                           "Allow: GET, HEAD\r\n");
    if (target.substr(0, target.find('?')) != "/metrics")
      return http_response(404, "Not Found", "not found: the metrics are at /metrics\n", !head_only);
    try {
      return http_response(200, "OK", render(), !head_only, "text/plain; version=0.0.4; charset=utf-8");
    } catch (const std::exception& e) {
      return http_response(500, "Internal Server Error", std::string("cannot render the metrics: ") + e.what() + "\n",
                           !head_only);
    }
  }

  void accept_all(uint64_t now) {
    for (;;) {
      int fd = accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EMFILE || errno == ENFILE) {
          if (!clients.empty()) {  // the oldest makes room
            drop(oldest());
            continue;
          }
          // Nothing of ours to close: stop accepting for a moment rather
          // than spin on a listening socket that stays readable.
          watch(listen_fd, 0, EPOLL_CTL_MOD);
          accept_paused_until = now + 100'000'000ull;
        }
        return;
      }
      if (clients.size() >= kMaxClients) drop(oldest());
      clients[fd].opened_ns = now;
      watch(fd, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_ADD);
    }
  }

  int oldest() const {
    auto o = clients.begin();
    for (auto it = clients.begin(); it != clients.end(); ++it)
      if (it->second.opened_ns < o->second.opened_ns) o = it;
    return o->first;
  }

  void on_client(int fd, uint32_t events) {
    auto it = clients.find(fd);
    if (it == clients.end()) return;
    Client& c = it->second;
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
      char buf[4096];
      for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {  // closed (or failed) before it had its answer, or after: done either way
          drop(fd);
          return;
        }
        if (c.answered) continue;
        const size_t scan = c.in.size() < 3 ? 0 : c.in.size() - 3;
        c.in.append(buf, static_cast<size_t>(n));
        size_t end = c.in.find("\r\n\r\n", scan);
        if (end == std::string::npos) end = c.in.find("\n\n", scan);
        if (end != std::string::npos && end < kMaxRequestBytes)
          c.out = answer(c.in.substr(0, end));
        else if (c.in.size() > kMaxRequestBytes)
          c.out = http_response(431, "Request Header Fields Too Large", "request head too large\n", true);
        else
          continue;
        c.answered = true;
        std::string().swap(c.in);
      }
    }
    if (!c.answered || c.shut) return;
    while (c.sent < c.out.size()) {
      ssize_t n = send(fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
        watch(fd, EPOLLIN | EPOLLRDHUP | EPOLLOUT, EPOLL_CTL_MOD);
        return;
      }
      if (n < 0) {
        drop(fd);
        return;
      }
      c.sent += static_cast<size_t>(n);
    }
    // All sent: shut the write side and wait for the client to close, so
    // that no unread request bytes turn the close into a reset that could
    // cut the response short.
    shutdown(fd, SHUT_WR);
    c.shut = true;
    std::string().swap(c.out);
    watch(fd, EPOLLIN | EPOLLRDHUP, EPOLL_CTL_MOD);
  }

  void run() {
    epoll_event events[64];
    for (;;) {
      uint64_t now = mono_ns();
      int timeout_ms = -1;
      for (auto& [fd, c] : clients) {
        uint64_t due = c.opened_ns + kClientTimeoutNs;
        int ms = due <= now ? 0 : static_cast<int>((due - now) / 1000000 + 1);
        if (timeout_ms < 0 || ms < timeout_ms) timeout_ms = ms;
      }
      if (accept_paused_until && (timeout_ms < 0 || timeout_ms > 100)) timeout_ms = 100;
      int n = epoll_wait(ep, events, 64, timeout_ms);
      if (n < 0 && errno != EINTR) return;
      now = mono_ns();
      for (int i = 0; i < n; i++) {
        const int fd = events[i].data.fd;
        if (fd == wake) return;
        if (fd == listen_fd)
          accept_all(now);
        else
          on_client(fd, events[i].events);
      }
      if (accept_paused_until && now >= accept_paused_until) {
        accept_paused_until = 0;
        watch(listen_fd, EPOLLIN, EPOLL_CTL_MOD);
      }
      // Whatever did not finish in time goes: an idle or slow client holds
      // a descriptor for at most kClientTimeoutNs and never a scrape.
      std::vector<int> late;
      for (auto& [fd, c] : clients)
        if (now - c.opened_ns >= kClientTimeoutNs) late.push_back(fd);
      for (int fd : late) drop(fd);
    }
  }
};

MetricsExporter::MetricsExporter(const std::string& address)
    : state_(std::make_shared<State>()), server_(std::make_unique<Server>()) {
  Server& s = *server_;
  try {
    s.listen_fd = listen_on(address);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot serve metrics on " + address + ": " + e.what() +
                             ": choose a free --metrics-address");
  }
  s.ep = epoll_create1(EPOLL_CLOEXEC);
  s.wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (s.ep < 0 || s.wake < 0) throw std::runtime_error(std::string("cannot serve metrics: ") + std::strerror(errno));
  s.watch(s.listen_fd, EPOLLIN, EPOLL_CTL_ADD);
  s.watch(s.wake, EPOLLIN, EPOLL_CTL_ADD);
  s.render = [state = state_] { return prometheus::TextSerializer().Serialize(state->Collect()); };
  s.thread = std::thread([&s] { s.run(); });
}

MetricsExporter::~MetricsExporter() = default;

void MetricsExporter::set_sensor_status(json status) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->sensor = std::move(status);
}

void MetricsExporter::set_dissector_metrics(json metrics) {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->dissector = std::move(metrics);
}

std::string MetricsExporter::render() const {
  return prometheus::TextSerializer().Serialize(state_->Collect());
}

}  // namespace tapwire

#include "metrics_exporter.hpp"

#include <unistd.h>

#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
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
  const json c = s.value("counters", json::object());
  FamilyBuilder pk("tapwire_packets_captured_total", "Packets captured, by interface and direction", MetricType::Counter);
  FamilyBuilder by("tapwire_captured_bytes_total", "L4 payload bytes captured, by interface and direction",
                   MetricType::Counter);
  const json ifaces = s.value("interfaces", json::array());
  for (auto& i : ifaces) {
    std::string name = i.value("name", "");
    for (const char* dir : {"ingress", "egress"}) {
      const json d = i.value(dir, json::object());
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
  const json by_cpu = s.value("drops_by_cpu", json::array());
  for (auto& cpu : by_cpu) {
    std::string id = std::to_string(cpu.value("cpu", 0));
    for (auto it = cpu.begin(); it != cpu.end(); ++it) {
      if (it.key() == "cpu") continue;
      drops.add(it->is_number() ? it->get<double>() : 0, {{"reason", it.key()}, {"cpu", id}});
      if (id == "0") kernel_reasons.push_back(it.key());
    }
  }
  const json user_drops = s.value("drops", json::object());
  for (auto it = user_drops.begin(); it != user_drops.end(); ++it) {
    bool kernel = false;
    for (auto& k : kernel_reasons) kernel |= k == it.key();
    if (!kernel) drops.add(it->is_number() ? it->get<double>() : 0, {{"reason", it.key()}, {"cpu", "all"}});
  }
  out.push_back(drops.f);
  FamilyBuilder fill("tapwire_ring_fill_ratio", "Fill of each CPU's BPF ring buffer (0-1)", MetricType::Gauge);
  const json rings = s.value("rings", json::array());
  for (auto& r : rings) {
    double size = num(r, "size_bytes");
    fill.add(size > 0 ? num(r, "pending_bytes") / size : 0, {{"cpu", std::to_string(r.value("cpu", 0))}});
  }
  out.push_back(fill.f);
  const json st = s.value("storage", json::object());
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
  const json d = s.value("dissection", json::object());
  out.push_back(FamilyBuilder("tapwire_dissection_enabled", "1 while L7 dissection is enabled", MetricType::Gauge)
                    .add(d.value("enabled", false) ? 1 : 0)
                    .f);
  out.push_back(FamilyBuilder("tapwire_dissector_running", "1 while the dissector process runs", MetricType::Gauge)
                    .add(d.value("running", false) ? 1 : 0)
                    .f);
  out.push_back(FamilyBuilder("tapwire_dissector_restarts_total", "Dissector processes restarted after they died",
                              MetricType::Counter)
                    .add(num(d, "restarts"))
                    .f);
  const json id = obj(s, "identity");
  if (id.value("enabled", false) == true) {
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
    if (k8s.value("enabled", false) == true) {
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
  FamilyBuilder calls("tapwire_calls_total", "API calls dissected, by protocol", MetricType::Counter);
  const json calls_by = m.value("calls", json::object());
  for (auto& [k, v] : calls_by.items()) calls.add(v.get<double>(), {{"protocol", k}});
  out.push_back(calls.f);
  FamilyBuilder methods("tapwire_http_requests_total", "HTTP calls by request method", MetricType::Counter);
  const json methods_by = m.value("http_methods", json::object());
  for (auto& [k, v] : methods_by.items()) methods.add(v.get<double>(), {{"method", k}});
  out.push_back(methods.f);
  FamilyBuilder classes("tapwire_http_responses_total", "HTTP calls by response status class (none: no response)",
                        MetricType::Counter);
  const json classes_by = m.value("http_status_class", json::object());
  for (auto& [k, v] : classes_by.items())
    classes.add(v.get<double>(), {{"status_class", k}});
  out.push_back(classes.f);
  FamilyBuilder rcodes("tapwire_dns_responses_total", "DNS calls by response code (none: no response)",
                       MetricType::Counter);
  const json rcodes_by = m.value("dns_rcodes", json::object());
  for (auto& [k, v] : rcodes_by.items()) rcodes.add(v.get<double>(), {{"rcode", k}});
  out.push_back(rcodes.f);
  MetricFamily hist;
  hist.name = "tapwire_call_duration_seconds";
  hist.help = "Time from the first byte of a request to the last byte of its response";
  hist.type = MetricType::Histogram;
  const json durations = m.value("duration_seconds", json::object());
  for (auto& [proto, h] : durations.items()) {
    ClientMetric cm;
    cm.label = {{"protocol", proto}};
    cm.histogram.sample_count = h.value("count", 0ull);
    cm.histogram.sample_sum = h.value("sum_seconds", 0.0);
    uint64_t cumulative = 0;
    const json buckets = h.value("buckets", json::array());
    for (auto& b : buckets) {
      cumulative += b.value("count", 0ull);
      ClientMetric::Bucket bucket;
      bucket.cumulative_count = cumulative;
      bucket.upper_bound = b["le"].is_number() ? b["le"].get<double>() : std::numeric_limits<double>::infinity();
      cm.histogram.bucket.push_back(bucket);
    }
    hist.metric.push_back(std::move(cm));
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
  const json perr_by = m.value("parse_errors", json::object());
  for (auto& [k, v] : perr_by.items()) perr.add(v.get<double>(), {{"protocol", k}});
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
  const json memory = m.value("memory", json::object());
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
  const json shed_by = m.value("shed", json::object()), shed_bytes_by = m.value("shed_bytes", json::object());
  for (auto& [k, v] : shed_by.items()) shed.add(v.get<double>(), {{"reason", k}});
  for (auto& [k, v] : shed_bytes_by.items()) shed_bytes.add(v.get<double>(), {{"reason", k}});
  out.push_back(shed.f);
  out.push_back(shed_bytes.f);
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

MetricsExporter::MetricsExporter(const std::string& address) : state_(std::make_shared<State>()) {
  std::string bind = address;
  if (!bind.empty() && bind[0] == ':') bind = "0.0.0.0" + bind;
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(bind, 2);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot serve metrics on " + address + ": " + e.what() +
                             ": choose a free --metrics-address");
  }
  exposer_->RegisterCollectable(state_);
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

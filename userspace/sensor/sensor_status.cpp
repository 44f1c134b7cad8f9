#include "sensor_status.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "bpf_capture.hpp"
#include "capture_drain.hpp"
#include "clock.hpp"
#include "control_socket.hpp"
#include "dissector_supervisor.hpp"
#include "identity_collector.hpp"
#include "identity_recorder.hpp"
#include "kube_watcher.hpp"
#include "metrics_exporter.hpp"
#include "pod_targets.hpp"
#include "capture_store.hpp"
#include "segment.hpp"
#include "socket_owner.hpp"
#include "status_file.hpp"
#include "tapwire_abi.hpp"
#include "tc_attach.hpp"

namespace tapwire::sensor {
namespace {

// The dissector's metrics file, if a dissector is writing one now. The
// dissector is the less trusted process (it parses the wire, as another
// user) and may write anything there: no link is followed, nothing but a
// regular file is read (a FIFO would block the sensor), at most 1 MiB, and
// parsed without exceptions; the exporter checks every field's type.
nlohmann::json dissector_metrics(const std::string& data_dir) {
  constexpr size_t kMaxBytes = 1 << 20;
  const std::string path = data_dir + "/dissector.json";
  int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) return nullptr;
  struct stat st {};
  std::string text;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size <= static_cast<off_t>(kMaxBytes) &&
      time(nullptr) - st.st_mtime <= 10) {
    text.resize(kMaxBytes + 1);
    size_t got = 0;
    while (got < text.size()) {
      ssize_t n = ::read(fd, text.data() + got, text.size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    text.resize(got > kMaxBytes ? 0 : got);  // grew past the cap while read: not trusted
  }
  ::close(fd);
  if (text.empty()) return nullptr;
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/false);
  return j.is_object() ? j : nlohmann::json(nullptr);
}

}  // namespace

std::string KubeSync::state() const {
  for (const char* needed : {"pods", "services", "endpointslices", "nodes"})
    if (!resources.count(needed)) return "unknown";
  for (auto& [name, s] : resources)
    if (s.value("state", "") != "synced") return "unknown";
  return "synced";
}

nlohmann::json identity_status_json(const IdentityStatusSources& s) {
  using nlohmann::json;
  json j = {{"enabled", s.enabled}, {"node", s.node}};
  if (!s.error.empty()) j["error"] = s.error;
  if (s.collector) {
    auto c = s.collector->counters();
    json emitted = json::object(), drops = json::object();
    for (unsigned t = 0; t < c.emitted.size(); t++)
      if (!ident_event_name(t).empty()) emitted[std::string(ident_event_name(t))] = c.emitted[t];
    for (size_t r = 0; r < c.drops.size(); r++) drops[std::string(kIdentDropNames[r])] = c.drops[r];
    drops["invalid_record"] = c.invalid_records;
    j["events"] = emitted;
    j["drops"] = drops;
    j["cgroup2"] = s.collector->cgroup2_mount();
    if (s.owners) j["owners"] = {{"lookups", s.owners->lookups()}, {"found", s.owners->found()}};
  }
  if (s.recorder) {
    auto& r = s.recorder->stats();
    auto st = s.recorder->store().stats();
    j["stream"] = {{"dir", s.recorder->store().options().dir},
                   {"records", r.records},
                   {"dumps", r.dumps},
                   {"dumps_incomplete", r.dumps_incomplete},
                   {"write_failures", r.write_failures},
                   {"evicted", r.evicted},
                   {"segments", st.segments},
                   {"bytes_stored", st.bytes_stored},
                   {"storage_size", s.recorder->store().options().storage_size}};
    j["live"] = {{"sockets", r.live_sockets}, {"processes", r.live_processes}, {"cgroups", r.cgroups},
                 {"objects", r.objects}};
  }
  json k = {{"enabled", s.kube != nullptr}};
  if (s.kube) {
    k["watcher"] = s.kube->status();
    json res = json::object();
    for (auto& [name, sync] : s.kube_sync.resources) res[name] = sync;
    k["resources"] = res;
    k["state"] = s.kube_sync.state();
    k["sync_failures"] = s.kube_sync.failures;
    k["stats"] = s.kube_sync.stats;
  }
  j["kubernetes"] = k;
  j["targets"] = s.targets.status();
  return j;
}

nlohmann::json sensor_status_json(const CaptureStatusSources& s, const char* state, nlohmann::json identity) {
  using nlohmann::json;
  auto per_cpu = s.bpf.read_counters();
  json counters = json::object(), drops = json::object(), by_cpu = json::array();
  for (uint32_t i = 0; i < TW_STAT__MAX; i++) {
    uint64_t t = 0;
    for (auto& c : per_cpu) t += c.stat[i];
    counters[std::string(abi::kStatNames[i])] = t;
  }
  for (uint32_t r = 0; r < TW_DROP__MAX; r++) {
    uint64_t t = 0;
    for (auto& c : per_cpu) t += c.drop[r];
    drops[std::string(abi::kDropReasonNames[r])] = t;
  }
  for (uint32_t r = 0; r < kUserDropMax; r++) drops[kUserDropNames[r]] = s.drain.user_drops()[r];
  for (size_t cpu = 0; cpu < per_cpu.size(); cpu++) {
    json c = {{"cpu", cpu}};
    for (uint32_t r = 0; r < TW_DROP__MAX; r++) c[std::string(abi::kDropReasonNames[r])] = per_cpu[cpu].drop[r];
    by_cpu.push_back(c);
  }
  json ifaces = json::array();
  for (auto& [idx, i] : s.attached) {
    json j = {{"name", i.name}, {"ifindex", idx}};
    if (auto it = s.drain.per_iface().find(idx); it != s.drain.per_iface().end()) {
      j["ingress"] = {{"packets", it->second.packets[0]}, {"bytes", it->second.bytes[0]}};
      j["egress"] = {{"packets", it->second.packets[1]}, {"bytes", it->second.bytes[1]}};
    }
    ifaces.push_back(j);
  }
  auto st = s.store.stats();
  json storage = {{"dir", s.store.options().dir},
                  {"segments", st.segments},
                  {"bytes_stored", st.bytes_stored},
                  {"storage_size", s.store.options().storage_size},
                  {"segment_size", s.store.options().segment_size},
                  {"segments_deleted", st.segments_deleted},
                  {"segments_damaged", st.segments_damaged},
                  {"records_written", st.records_written},
                  // the capture rings' spans go to disk with O_DIRECT (false: the
                  // file system refused it, plain writes through the page cache)
                  {"direct_io", s.store.direct()}};
  json ring = json::array();
  const auto& rings = s.drain.rings();
  for (size_t i = 0; i < rings.size(); i++)
    ring.push_back({{"cpu", i}, {"pending_bytes", rings[i].pending()}, {"size_bytes", s.bpf.ring_bytes()}});
  return {{"version", TAPWIRE_VERSION},
          {"pid", getpid()},
          {"state", state},
          {"started_ns", s.started_ns},
          {"updated_ns", clock_ns(CLOCK_REALTIME)},
          {"interfaces", ifaces},
          {"attach", s.tc ? attach_mode_name(s.tc->mode()) : "none"},
          {"rule_generation", {{"active", s.bpf.active_generation()}, {"switches", s.bpf.generation_switches()}}},
          {"counters", counters},
          {"drops", drops},
          {"drops_by_cpu", by_cpu},
          {"rings", ring},
          {"storage", storage},
          {"dissection", s.supervisor ? s.supervisor->status(clock_ns(CLOCK_MONOTONIC)) : nlohmann::json(nullptr)},
          {"control_socket", s.control ? s.control->path() : std::string()},
          {"identity", std::move(identity)}};
}

StatusWriter::StatusWriter(std::string data_dir, const std::string& metrics_address, bool metrics_address_explicit)
    : data_dir_(std::move(data_dir)) {
  if (metrics_address.empty()) return;
  try {
    exporter_ = std::make_unique<MetricsExporter>(metrics_address);
  } catch (const std::exception& e) {
    if (metrics_address_explicit) throw;
    std::fprintf(stderr, "tapwire-sensor: %s; capturing without metrics\n", e.what());
  }
}

StatusWriter::~StatusWriter() = default;

void StatusWriter::write(const nlohmann::json& status) {
  if (exporter_) {
    exporter_->set_sensor_status(status);
    exporter_->set_dissector_metrics(dissector_metrics(data_dir_));
  }
  const nlohmann::json* file = &status;
  nlohmann::json trimmed;
  if (status.is_object() && status.contains("flows") && status["flows"].is_object() &&
      status["flows"].contains("pair_series")) {
    trimmed = status;
    trimmed["flows"].erase("pair_series");  // up to tap.flows.metricsMaxPairs series: the exporter's only
    file = &trimmed;
  }
  if (!write_status_file(data_dir_, *file))
    std::fprintf(stderr, "tapwire-sensor: cannot write %s: %s\n", status_file_path(data_dir_).c_str(),
                 std::strerror(errno));
}

}  // namespace tapwire::sensor

// tapwire workloads: what the identity stream (DATA_DIR/identity, or a
// snapshot's) says was running at a time: pods with their workload, node,
// addresses and services, and the state of the Kubernetes watch. --records
// prints the stream itself, one JSON object per record.
#include <sys/stat.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "call.hpp"
#include "commands.hpp"
#include "identity_feed.hpp"
#include "identity_table.hpp"
#include "segment.hpp"
#include "timefmt.hpp"
#include "views.hpp"

namespace tapwire::cli {
namespace {

using nlohmann::json;

struct WorkloadsOptions {
  std::string data_dir, snapshot, at;
  bool json = false, records = false;
};

std::string identity_dir(const WorkloadsOptions& o) {
  std::string base = o.data_dir;
  if (!o.snapshot.empty()) {
    std::string segs = snapshot_segments_dir(o.snapshot, o.data_dir);
    base = segs.size() > 9 && segs.ends_with("/segments") ? segs.substr(0, segs.size() - 9) : segs;
  }
  std::string dir = identity::identity_dir_of(base);
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw CliError("no identity stream", dir,
                   "it is written by tapwire-sensor with identity on (tap.identity.enabled); a snapshot made by an "
                   "older tapwire has none");
  return dir;
}

std::string ip_text(uint8_t v, const uint8_t* a) { return identity::IpKey::from_wire(v, a).str(); }

json record_json(const identity::IdentityRecord& r) {
  return std::visit(
      [](const auto& x) -> json {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, identity::SocketRecord>) {
          const auto& e = x.ev;
          return {{"record", "socket"},
                  {"ts", dissect::format_ts(e.ts_ns)},
                  {"event", e.type == TW_IDENT_SOCK_OPEN ? "open" : "close"},
                  {"cookie", e.cookie},
                  {"cgroup_id", e.cgroup_id},
                  {"tgid", e.tgid},
                  {"pid", e.pid},
                  {"comm", identity::comm_string(e.comm)},
                  {"l4", e.l4_proto == 6 ? "tcp" : e.l4_proto == 17 ? "udp" : std::to_string(e.l4_proto)},
                  {"local", ip_text(e.ip_version, e.laddr) + ":" + std::to_string(e.lport)},
                  {"remote", ip_text(e.ip_version, e.raddr) + ":" + std::to_string(e.rport)},
                  {"flags", e.flags}};
        } else if constexpr (std::is_same_v<T, identity::ProcessRecord>) {
          const char* ev = x.type == TW_IDENT_EXEC ? "exec" : x.type == TW_IDENT_EXIT ? "exit" : "running";
          return {{"record", "process"}, {"ts", dissect::format_ts(x.ts_ns)}, {"event", ev},
                  {"tgid", x.tgid},      {"ppid", x.ppid},                    {"comm", x.comm},
                  {"exe", x.exe},        {"cgroup_id", x.cgroup_id},          {"dump", (x.flags & TW_IDENT_REC_F_DUMP) != 0}};
        } else if constexpr (std::is_same_v<T, identity::CgroupRecord>) {
          return {{"record", "cgroup"},
                  {"ts", dissect::format_ts(x.ts_ns)},
                  {"cgroup_id", x.cgroup_id},
                  {"path", x.path},
                  {"dump", (x.flags & TW_IDENT_REC_F_DUMP) != 0}};
        } else if constexpr (std::is_same_v<T, identity::WorkloadRecord>) {
          return {{"record", "workload"},
                  {"ts", dissect::format_ts(x.ts_ns)},
                  {"dump", (x.flags & TW_IDENT_REC_F_DUMP) != 0},
                  {"object", json::parse(identity::to_json(x.workload))}};
        } else {
          return {{"record", "dump"},
                  {"ts", dissect::format_ts(x.ts_ns)},
                  {"phase", x.phase == TW_DUMP_BEGIN ? "begin" : "end"},
                  {"records", x.records}};
        }
      },
      r);
}

int print_records(const std::string& dir) {
  for (auto& seg : shm::list_segments(dir)) {
    std::optional<shm::SegmentReader> reader;
    try {
      reader.emplace(shm::SegmentReader::open(seg.path));
    } catch (const shm::SegmentError& e) {
      std::fprintf(stderr, "tapwire: %s; skipped\n", e.what());
      continue;
    }
    while (auto rec = reader->next()) {
      if (!identity::is_identity_type(rec->type)) continue;
      std::string why;
      auto r = identity::decode_identity(rec->type, rec->body, &why);
      if (!r) {
        std::fprintf(stderr, "tapwire: %s: record at offset %" PRIu64 ": %s; skipped\n", seg.path.c_str(), rec->offset,
                     why.c_str());
        continue;
      }
      std::printf("%s\n", record_json(*r).dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    }
    if (reader->corrupt()) std::fprintf(stderr, "tapwire: %s: damaged record; the rest of it skipped\n", seg.path.c_str());
  }
  return 0;
}

// The identity stream read up to `at` (UINT64_MAX / 2: all of it).
struct IdentityAt {
  identity::IdentityTable table;
  std::unique_ptr<identity::IdentityFeed> feed;
};
std::unique_ptr<IdentityAt> read_identity(const std::string& dir, uint64_t at) {
  auto out = std::make_unique<IdentityAt>();
  out->feed = std::make_unique<identity::IdentityFeed>(dir, false, /*lookahead_ns=*/0);
  out->feed->advance(out->table, at);
  return out;
}

json pods_json(const IdentityAt& id, const std::optional<uint64_t>& at) {
  json out = {{"node", id.table.node()}, {"kubernetes", json::object()}, {"pods", json::array()}};
  if (at) out["at"] = dissect::format_ts(*at);
  for (auto& [res, k] : id.table.kube_state()) out["kubernetes"][res] = {{"state", k.state}, {"error", k.error}};
  for (auto& p : id.table.pods())
    out["pods"].push_back({{"namespace", p.namespace_},
                           {"name", p.name},
                           {"uid", p.uid},
                           {"workload", {{"kind", p.workload_kind}, {"name", p.workload_name}}},
                           {"node", p.node},
                           {"phase", p.phase},
                           {"hostNetwork", p.host_network},
                           {"ips", p.ips},
                           {"services", p.services},
                           {"containers", p.containers},
                           {"first_seen", dissect::format_ts(p.first_seen_ns)}});
  return out;
}

int run_workloads(const WorkloadsOptions& o) {
  const std::string dir = identity_dir(o);
  if (o.records) return print_records(dir);
  uint64_t at = UINT64_MAX / 2;
  if (!o.at.empty()) {
    auto t = parse_time_arg(o.at, realtime_now_ns());
    if (!t.ns) throw CliError("bad --at", o.at, t.error);
    at = *t.ns;
  }
  auto id = read_identity(dir, at);
  const identity::IdentityTable& table = id->table;
  const identity::IdentityFeed& feed = *id->feed;
  auto pods = table.pods();
  auto kube = table.kube_state();
  if (o.json) {
    std::printf("%s\n", pods_json(*id, o.at.empty() ? std::nullopt : std::optional<uint64_t>(at))
                            .dump(2, ' ', false, json::error_handler_t::replace)
                            .c_str());
    return 0;
  }
  std::printf("node %s", table.node().empty() ? "unknown" : table.node().c_str());
  if (kube.empty()) {
    std::printf("; Kubernetes: no data\n");
  } else {
    std::string state = "synced";
    for (auto& [res, k] : kube)
      if (k.state != "synced") state = "unknown (" + res + ": " + k.state + (k.error.empty() ? "" : ": " + k.error) + ")";
    std::printf("; Kubernetes: %s\n", state.c_str());
  }
  std::printf("%-20s %-36s %-28s %-16s %-18s %s\n", "NAMESPACE", "POD", "WORKLOAD", "NODE", "IP", "SERVICES");
  for (auto& p : pods) {
    std::string ips, svcs;
    for (auto& i : p.ips) ips += (ips.empty() ? "" : ",") + i;
    for (auto& s : p.services) svcs += (svcs.empty() ? "" : ",") + s;
    if (p.host_network) ips += " (host)";
    std::printf("%-20s %-36s %-28s %-16s %-18s %s\n", p.namespace_.c_str(), p.name.c_str(),
                (p.workload_kind + "/" + p.workload_name).c_str(), p.node.c_str(), ips.c_str(),
                svcs.empty() ? "-" : svcs.c_str());
  }
  if (!feed.error().empty()) std::fprintf(stderr, "tapwire: %s\n", feed.error().c_str());
  return 0;
}

}  // namespace

std::string identity_stream_dir(const std::string& data_dir, const std::string& snapshot) {
  WorkloadsOptions o;
  o.data_dir = data_dir;
  o.snapshot = snapshot;
  return identity_dir(o);
}

nlohmann::json workloads_json(const std::string& identity_dir, std::optional<uint64_t> at_ns, std::string* warning) {
  auto id = read_identity(identity_dir, at_ns.value_or(UINT64_MAX / 2));
  if (warning) *warning = id->feed->error();
  return pods_json(*id, at_ns);
}

nlohmann::json ips_json(const std::string& identity_dir, std::optional<uint64_t> at_ns, std::string* warning) {
  auto id = read_identity(identity_dir, at_ns.value_or(UINT64_MAX / 2));
  if (warning) *warning = id->feed->error();
  json out = {{"node", id->table.node()}, {"ips", json::array()}};
  if (at_ns) out["at"] = dissect::format_ts(*at_ns);
  // One entry per address and pod: a hostNetwork pod shares its node's
  // addresses with the node's other such pods.
  std::vector<std::pair<std::string, json>> rows;
  for (auto& p : id->table.pods())
    for (auto& ip : p.ips)
      rows.emplace_back(ip, json{{"ip", ip},
                                 {"namespace", p.namespace_},
                                 {"pod", p.name},
                                 {"workload", {{"kind", p.workload_kind}, {"name", p.workload_name}}},
                                 {"node", p.node},
                                 {"hostNetwork", p.host_network},
                                 {"services", p.services}});
  std::stable_sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (auto& [ip, j] : rows) out["ips"].push_back(std::move(j));
  return out;
}

void register_workloads(CLI::App& app, Action& action) {
  auto o = std::make_shared<WorkloadsOptions>();
  CLI::App* sub = app.add_subcommand("workloads", "List the pods, workloads and services known at a time");
  add_data_dir_option(*sub, o->data_dir);
  sub->add_option("--snapshot", o->snapshot, "read a snapshot's identity (NAME in DATA_DIR/snapshots/, or a directory)");
  sub->add_option("--at", o->at, "as known at this time (RFC 3339, Unix seconds, -5m); default: now / the end");
  sub->add_flag("--json", o->json, "as JSON");
  sub->add_flag("--records", o->records, "print the identity stream's records, one JSON object per line");
  sub->callback([o, &action] { action = [o] { return run_workloads(*o); }; });
}

}  // namespace tapwire::cli

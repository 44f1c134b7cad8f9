// tapwire flows: who talks to whom (docs/FLOWS.md), from the flow stream,
// a snapshot, a dissection DB or a pcap.
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <string>

#include "commands.hpp"
#include "flow_filter.hpp"
#include "flow_source.hpp"

namespace tapwire::cli {
namespace {

using json = nlohmann::ordered_json;

struct FlowsOptions {
  FlowSourceOptions src;
  FlowFilter filter;
  std::string sort = "first";
  size_t limit = 0;
  bool json = false;
};

uint64_t dir_num(const json& f, const char* dir, const char* k) {
  auto d = f.find(dir);
  if (d == f.end() || !d->is_object()) return 0;
  auto v = d->find(k);
  return v != d->end() && v->is_number() ? v->get<uint64_t>() : 0;
}

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b < 10000)
    std::snprintf(buf, sizeof buf, "%" PRIu64, b);
  else if (b < 10000ull * 1024)
    std::snprintf(buf, sizeof buf, "%.1fK", b / 1024.0);
  else if (b < 10000ull * 1024 * 1024)
    std::snprintf(buf, sizeof buf, "%.1fM", b / 1048576.0);
  else
    std::snprintf(buf, sizeof buf, "%.1fG", b / 1073741824.0);
  return buf;
}

constexpr const char* kFlowsHelp = R"(Columns of the table (--json writes the records of docs/FLOWS.md instead):
  ID        the flow's id (16 hex digits; tapwire packets --flow ID, tapwire export pcap --flow ID)
  CLIENT -> SERVER
            each end as namespace/pod:port when its pod is known, else ip:port; the server's
            (or client's) name from DNS answers seen on the node in parentheses (+N: more names)
  PROTO     tcp or udp
  STATE     tcp: syn_sent, syn_received, established, closing, closed, reset, refused, unanswered;
            udp: active, ended
  PKTS >/<  packets client to server / server to client (payload-less ACKs included)
  BYTES >/< bytes on the wire each way (frames, link-layer header included)
  RTT       the handshake RTT (first SYN to the ACK completing it), '-' without a handshake
  RETRANS   retransmissions both ways (tcp.analysis.retransmission: plain, fast and spurious)
Sources (one; default the live data directory's flows): --data-dir, --snapshot, --db, --pcap.
With --pcap the flows are computed from the capture as the sensor accounts them and end at its end.)";

int run_flows(const FlowsOptions& o) {
  LoadedFlows lf = load_flows(o.src);
  std::vector<const FlowRow*> rows;
  for (auto& r : lf.flows)
    if (o.filter.matches(r.rec)) rows.push_back(&r);
  auto total = [](const json& f, const char* k) { return dir_num(f, "client_to_server", k) + dir_num(f, "server_to_client", k); };
  auto rtt = [](const json& f) {
    auto it = f.find("handshake_rtt_us");
    return it != f.end() && it->is_number() ? it->get<double>() : -1.0;
  };
  if (o.sort == "bytes")
    std::stable_sort(rows.begin(), rows.end(), [&](auto a, auto b) { return total(a->rec, "bytes") > total(b->rec, "bytes"); });
  else if (o.sort == "packets")
    std::stable_sort(rows.begin(), rows.end(), [&](auto a, auto b) { return total(a->rec, "packets") > total(b->rec, "packets"); });
  else if (o.sort == "rtt")
    std::stable_sort(rows.begin(), rows.end(), [&](auto a, auto b) { return rtt(a->rec) > rtt(b->rec); });
  else if (o.sort == "retransmissions")
    std::stable_sort(rows.begin(), rows.end(),
                     [&](auto a, auto b) { return total(a->rec, "retransmissions") > total(b->rec, "retransmissions"); });
  else
    std::stable_sort(rows.begin(), rows.end(), [](auto a, auto b) { return a->first_ns < b->first_ns; });
  if (o.limit && rows.size() > o.limit) rows.resize(o.limit);

  if (o.json) {
    for (auto* r : rows) std::printf("%s\n", r->rec.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    return 0;
  }
  std::printf("%-16s  %-58s %-5s %-12s %15s %19s %10s %7s\n", "ID", "CLIENT -> SERVER", "PROTO", "STATE", "PKTS >/<",
              "BYTES >/<", "RTT", "RETRANS");
  for (auto* r : rows) {
    const json& f = r->rec;
    std::string ends = flow_end_label(f["client"]) + " -> " + flow_end_label(f["server"]);
    std::string pkts = std::to_string(dir_num(f, "client_to_server", "packets")) + "/" +
                       std::to_string(dir_num(f, "server_to_client", "packets"));
    std::string bytes = human_bytes(dir_num(f, "client_to_server", "bytes")) + "/" +
                        human_bytes(dir_num(f, "server_to_client", "bytes"));
    char rtts[32] = "-";
    if (double v = rtt(f); v >= 0) {
      if (v < 1000)
        std::snprintf(rtts, sizeof rtts, "%.0fus", v);
      else
        std::snprintf(rtts, sizeof rtts, "%.1fms", v / 1000.0);
    }
    std::string retrans = json_str(f, "protocol") == "tcp" ? std::to_string(total(f, "retransmissions")) : "-";
    std::printf("%-16s  %-58s %-5s %-12s %15s %19s %10s %7s\n", json_str(f, "id").c_str(), ends.c_str(),
                json_str(f, "protocol").c_str(), json_str(f, "state").c_str(), pkts.c_str(), bytes.c_str(), rtts,
                retrans.c_str());
  }
  if (rows.empty()) std::fprintf(stderr, "tapwire: no flows in %s match\n", lf.source.c_str());
  return 0;
}

}  // namespace

void register_flows(CLI::App& app, Action& action) {
  auto o = std::make_shared<FlowsOptions>();
  CLI::App* sub = app.add_subcommand("flows", "List TCP and UDP flows: who talked to whom, how much, how well");
  sub->footer(kFlowsHelp);
  add_flow_source_options(*sub, o->src);
  add_flow_filter_options(*sub, o->filter);
  sub->add_option("--sort", o->sort, "bytes, packets, rtt, retransmissions (largest first) or first (oldest first)")
      ->check(CLI::IsMember({"bytes", "packets", "rtt", "retransmissions", "first"}))
      ->capture_default_str();
  sub->add_option("--limit", o->limit, "at most N flows (after sorting)");
  sub->add_flag("--json", o->json, "one flow record (docs/FLOWS.md) per line");
  sub->callback([o, &action] { action = [o] { return run_flows(*o); }; });
}

}  // namespace tapwire::cli

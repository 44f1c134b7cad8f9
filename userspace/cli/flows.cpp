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

uint64_t total(const json& f, const char* k) { return dir_num(f, "client_to_server", k) + dir_num(f, "server_to_client", k); }

double rtt_of(const json& f) {
  auto it = f.find("handshake_rtt_us");
  return it != f.end() && it->is_number() ? it->get<double>() : -1.0;
}

// The sort key, larger first.
double sort_key(const json& f, const std::string& sort) {
  if (sort == "bytes") return static_cast<double>(total(f, "bytes"));
  if (sort == "packets") return static_cast<double>(total(f, "packets"));
  if (sort == "rtt") return rtt_of(f);
  return static_cast<double>(total(f, "retransmissions"));
}

void print_header() {
  std::printf("%-16s  %-58s %-5s %-12s %15s %19s %10s %7s\n", "ID", "CLIENT -> SERVER", "PROTO", "STATE", "PKTS >/<",
              "BYTES >/<", "RTT", "RETRANS");
}

void print_flow(const json& f, bool as_json) {
  if (as_json) {
    std::printf("%s\n", f.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    return;
  }
  std::string ends = flow_end_label(f["client"]) + " -> " + flow_end_label(f["server"]);
  std::string pkts = std::to_string(dir_num(f, "client_to_server", "packets")) + "/" +
                     std::to_string(dir_num(f, "server_to_client", "packets"));
  std::string bytes = human_bytes(dir_num(f, "client_to_server", "bytes")) + "/" +
                      human_bytes(dir_num(f, "server_to_client", "bytes"));
  char rtts[32] = "-";
  if (double v = rtt_of(f); v >= 0) {
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

// Flows are read in first_seen order and printed as they come for the
// default order; sorted otherwise, keeping with --limit only the N best (a
// bounded heap), without it every match as compact JSON text.
int run_flows(const FlowsOptions& o) {
  const bool by_first = o.sort == "first";
  size_t printed = 0, matched = 0;
  struct Kept {
    double key;
    uint64_t seq;  // ties: the earlier first
    std::string text;
  };
  auto better = [](const Kept& a, const Kept& b) { return a.key != b.key ? a.key > b.key : a.seq < b.seq; };
  std::vector<Kept> kept;  // with a limit: a heap whose top is the worst kept
  LoadedFlows lf = load_flows(o.src, [&](const FlowRow& r) {
    if (!o.filter.matches(r.rec)) return;
    matched++;
    if (by_first) {
      if (o.limit && printed >= o.limit) return;
      if (!o.json && printed == 0) print_header();
      print_flow(r.rec, o.json);
      printed++;
      return;
    }
    Kept k{sort_key(r.rec, o.sort), matched, {}};
    if (o.limit && kept.size() >= o.limit) {
      if (!better(k, kept.front())) return;
      std::pop_heap(kept.begin(), kept.end(), better);
      kept.pop_back();
    }
    k.text = r.rec.dump(-1, ' ', false, json::error_handler_t::replace);
    kept.push_back(std::move(k));
    if (o.limit) std::push_heap(kept.begin(), kept.end(), better);
  });
  if (!by_first) {
    std::sort(kept.begin(), kept.end(), better);
    if (!o.json && !kept.empty()) print_header();
    for (auto& k : kept) {
      if (o.json)
        std::printf("%s\n", k.text.c_str());
      else
        print_flow(json::parse(k.text), false);
    }
  }
  if (!matched) std::fprintf(stderr, "tapwire: no flows in %s match\n", lf.source.c_str());
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

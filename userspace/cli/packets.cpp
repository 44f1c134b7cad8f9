// tapwire packets: the stored packets of a flow (or of the flows an address,
// port or protocol picks), in time order.
#include <unistd.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>

#include "commands.hpp"
#include "flow_filter.hpp"
#include "flow_source.hpp"
#include "call.hpp"
#include "flow_tracker.hpp"
#include "packet_source.hpp"
#include "timefmt.hpp"

namespace tapwire::cli {
namespace {

using json = nlohmann::ordered_json;

struct PacketsOptions {
  FlowSourceOptions src;
  FlowFilter filter;
  std::string flow;
  bool absolute = false, json = false;
  size_t limit = 0;
};

struct KeyLess {
  bool operator()(const tw_flow_key& a, const tw_flow_key& b) const { return std::memcmp(&a, &b, sizeof a) < 0; }
};

std::string flag_text(uint8_t f) {
  static const char* names[] = {"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"};
  std::string out;
  for (int i = 0; i < 8; i++)
    if (f & (1u << i)) out += (out.empty() ? "" : ",") + std::string(names[i]);
  return out;
}

std::string addr_text(uint8_t v, const uint8_t* a) {
  dissect::Endpoint e;
  e.ip_version = v;
  std::memcpy(e.addr, a, v == 6 ? 16 : 4);
  return e.ip();
}

constexpr const char* kPacketsHelp = R"(Columns (--json: one object per packet with the same fields):
  TIME     the packet's capture time (UTC)
  DIR      -> client to server, <- server to client (the flow's client: the sender of the first SYN)
  SOURCE, DESTINATION   address:port of the sender and the receiver
  PROTO    tcp or udp
  FLAGS    TCP flags
  SEQ/ACK  TCP sequence and acknowledgement numbers relative to each side's initial sequence number
           as Wireshark shows them (--absolute: as on the wire)
  WIN      the TCP window as sent (unscaled)
  LEN      L4 payload bytes
The sensor stores packets with payload (and SYN, FIN, RST); payload-less ACKs are counted in the
flow record, not stored, so a flow from --data-dir or --snapshot lists fewer packets than it counted.
A pcap (--pcap) has every packet.)";

int run_packets(const PacketsOptions& o) {
  if (!o.src.db.empty()) throw CliError("packets are not in the DB", o.src.db, "use --data-dir, --snapshot or --pcap");
  uint64_t from_ns, to_ns;
  parse_window(o.src, from_ns, to_ns);
  std::string seg_dir;
  std::map<tw_flow_key, FlowRow, KeyLess> wanted;  // --flow: its key
  if (!o.flow.empty()) {
    if (o.flow.size() != 16 || o.flow.find_first_not_of("0123456789abcdef") != std::string::npos)
      throw CliError("invalid flow id", o.flow, "a flow id is 16 lower-case hex digits (see 'tapwire flows')");
    LoadedFlows lf = load_flows(o.src, [&](const FlowRow& r) {
      if (r.have_key && json_str(r.rec, "id") == o.flow) wanted[r.raw.key] = r;
    });
    if (wanted.empty())
      throw CliError("no flow with this id", o.flow, "in " + lf.source + " (see 'tapwire flows', mind --from/--to)");
    from_ns = wanted.begin()->second.first_ns;
    to_ns = wanted.begin()->second.last_ns;
  }
  std::unique_ptr<dissect::PacketSource> src;
  try {
    if (!o.src.pcap.empty()) {
      if (access(o.src.pcap.c_str(), R_OK) != 0) throw CliError("cannot read the capture", o.src.pcap, std::strerror(errno));
      src = dissect::open_pcap_source(o.src.pcap);
    } else {
      seg_dir = !o.src.snapshot.empty() ? snapshot_segments_dir(o.src.snapshot, o.src.data_dir) : o.src.data_dir + "/segments";
      src = dissect::open_segment_source(seg_dir, false);
    }
  } catch (const CliError&) {
    throw;
  } catch (const std::exception& e) {
    throw CliError("cannot read packets", e.what(), "check --data-dir, --snapshot or --pcap");
  }
  // Relative numbers: each (flow, side)'s base as Wireshark takes it (the
  // SYN's sequence number, else the first seen minus one); the flow
  // record's when --flow gave one.
  struct Bases {
    uint32_t base[2] = {0, 0};
    bool set[2] = {false, false};
    unsigned client = TW_SIDE_A;
    bool client_known = false;
  };
  std::map<tw_flow_key, Bases, KeyLess> bases;
  for (auto& [k, r] : wanted) {
    Bases& b = bases[k];
    b.client = (r.raw.st.bits & TW_FLOW_B_CLIENT_B) ? TW_SIDE_B : TW_SIDE_A;
    b.client_known = true;
    if (r.raw.st.dir[0].seen & TW_FD_BASE_SEQ_SET) b.base[0] = r.raw.st.dir[0].base_seq, b.set[0] = true;
    if (r.raw.st.dir[1].seen & TW_FD_BASE_SEQ_SET) b.base[1] = r.raw.st.dir[1].base_seq, b.set[1] = true;
  }
  if (!o.json)
    std::printf("%-30s %-2s %-45s %-45s %-5s %-15s %10s %10s %6s %6s\n", "TIME", "", "SOURCE", "DESTINATION", "PROTO",
                "FLAGS", "SEQ", "ACK", "WIN", "LEN");
  dissect::Packet p;
  size_t shown = 0;
  while (src->next(p) == dissect::PacketSource::Next::Packet) {
    const tw_pkt& m = p.meta;
    if (m.chunk_off != 0) continue;  // the rest of a large datagram stored in parts
    if (from_ns && m.ts_ns < from_ns) continue;
    if (to_ns && m.ts_ns > to_ns) continue;
    tw_flow_key key;
    uint8_t side;
    if (!flows::flow_key_of(m, key, side)) continue;
    if (!wanted.empty() && !wanted.count(key)) continue;
    if (wanted.empty()) {
      const std::string s = addr_text(m.ip_version, m.saddr), d = addr_text(m.ip_version, m.daddr);
      if (!o.filter.ip.empty() && s != o.filter.ip && d != o.filter.ip) continue;
      if (o.filter.port >= 0 && m.sport != o.filter.port && m.dport != o.filter.port) continue;
      if (!o.filter.protocol.empty() && (m.l4_proto == 6) != (o.filter.protocol == "tcp")) continue;
    }
    Bases& b = bases[key];
    if (!b.client_known) {
      // the sender of a SYN, else of the first packet, unless only the receiver has a port below 1024
      const bool syn = m.l4_proto == 6 && (m.tcp_flags & 0x12) == 0x02, synack = m.l4_proto == 6 && (m.tcp_flags & 0x12) == 0x12;
      bool sender_client = synack ? false : (syn ? true : !(m.sport < 1024 && m.dport >= 1024));
      b.client = sender_client ? side : side ^ 1u;
      b.client_known = true;
    }
    if (m.l4_proto == 6 && !b.set[side]) {
      b.base[side] = (m.tcp_flags & 0x02) ? m.seq : m.seq - 1;
      b.set[side] = true;
    }
    if (m.l4_proto == 6 && (m.tcp_flags & 0x10) && !b.set[side ^ 1]) {
      b.base[side ^ 1] = m.ack - 1;
      b.set[side ^ 1] = true;
    }
    const bool to_server = side == b.client;
    const uint32_t seq = o.absolute ? m.seq : m.seq - b.base[side];
    const uint32_t ack = o.absolute ? m.ack : ((m.tcp_flags & 0x10) ? m.ack - b.base[side ^ 1] : 0);
    const std::string s = addr_text(m.ip_version, m.saddr) + ":" + std::to_string(m.sport);
    const std::string d = addr_text(m.ip_version, m.daddr) + ":" + std::to_string(m.dport);
    const bool tcp = m.l4_proto == 6;
    if (o.json) {
      json j = {{"ts", format_rfc3339_ns(m.ts_ns)}, {"direction", to_server ? "client_to_server" : "server_to_client"},
                {"src", s}, {"dst", d}, {"protocol", tcp ? "tcp" : "udp"}, {"length", m.payload_len}};
      if (tcp) {
        j["flags"] = flag_text(m.tcp_flags);
        j["seq"] = seq;
        j["ack"] = ack;
        j["window"] = m.window;
      }
      std::printf("%s\n", j.dump().c_str());
    } else {
      std::printf("%-30s %-2s %-45s %-45s %-5s %-15s %10s %10s %6s %6u\n", format_rfc3339_ns(m.ts_ns).c_str(),
                  to_server ? "->" : "<-", s.c_str(), d.c_str(), tcp ? "tcp" : "udp", tcp ? flag_text(m.tcp_flags).c_str() : "",
                  tcp ? std::to_string(seq).c_str() : "", tcp ? std::to_string(ack).c_str() : "",
                  tcp ? std::to_string(m.window).c_str() : "", m.payload_len);
    }
    if (o.limit && ++shown >= o.limit) break;
  }
  if (!src->error().empty()) std::fprintf(stderr, "tapwire: warning: %s\n", src->error().c_str());
  return 0;
}

}  // namespace

void register_packets(CLI::App& app, Action& action) {
  auto o = std::make_shared<PacketsOptions>();
  CLI::App* sub = app.add_subcommand("packets", "List the stored packets of a flow, in time order");
  sub->footer(kPacketsHelp);
  add_data_dir_option(*sub, o->src.data_dir);
  sub->add_option("--snapshot", o->src.snapshot, "read a snapshot (NAME in DATA_DIR/snapshots/, or a directory)");
  sub->add_option("--pcap", o->src.pcap, "read a pcap/pcapng file");
  sub->add_option("--from", o->src.from, "first packet time: RFC 3339, Unix seconds, or relative (-5m)");
  sub->add_option("--to", o->src.to, "last packet time, same forms as --from");
  sub->add_option("--flow", o->flow, "the flow's id (16 hex digits, from 'tapwire flows')");
  add_flow_filter_options(*sub, o->filter, false);
  sub->add_flag("--absolute", o->absolute, "TCP sequence numbers as on the wire (default: relative to the ISN)");
  sub->add_option("--limit", o->limit, "at most N packets");
  sub->add_flag("--json", o->json, "one JSON object per packet");
  sub->callback([o, &action] { action = [o] { return run_packets(*o); }; });
}

}  // namespace tapwire::cli

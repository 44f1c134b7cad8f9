#include "flow_record.hpp"

#include <cstdio>
#include <cstring>

#include "json_out.hpp"

namespace tapwire::flows {

std::string Flow::id() const { return dissect::key_hex(rec.flow_id); }

const char* flow_end_name(uint8_t end) {
  switch (end) {
    case TW_FLOW_END_FIN: return "fin";
    case TW_FLOW_END_RST: return "rst";
    case TW_FLOW_END_TIMEOUT: return "timeout";
    case TW_FLOW_END_IDLE: return "idle";
    case TW_FLOW_END_EVICTED: return "evicted";
    case TW_FLOW_END_REUSED: return "reused";
    case TW_FLOW_END_STOPPED: return "stopped";
    default: return nullptr;
  }
}

const char* Flow::end() const { return flow_end_name(rec.end); }

// TCP states from the bits and the counts (docs/FLOWS.md):
//   refused      the server answered the client's SYN with RST
//   syn_sent     a SYN and nothing from the server; unanswered once the record is final
//   reset        an RST either way (after FINs too: tshark's view of how it ended)
//   closed       FIN both ways;  closing: one FIN
//   established  the handshake completed, or a flow joined mid-stream
//   syn_received a SYN-ACK, the handshake not completed
const char* Flow::state() const {
  const tw_flow_state& s = rec.st;
  if (!tcp()) return rec.end ? "ended" : "active";
  if (s.bits & TW_FLOW_B_REFUSED) return "refused";
  const tw_flow_dir &c = to_server(), &v = to_client();
  const bool answered = (s.bits & (TW_FLOW_B_SYNACK | TW_FLOW_B_MID_STREAM | TW_FLOW_B_ESTABLISHED)) || v.packets;
  if (!answered) return rec.end ? "unanswered" : "syn_sent";
  if (c.resets || v.resets) return "reset";
  if (c.fins && v.fins) return "closed";
  if (c.fins || v.fins) return "closing";
  if (s.bits & (TW_FLOW_B_ESTABLISHED | TW_FLOW_B_MID_STREAM)) return "established";
  if (s.bits & TW_FLOW_B_SYNACK) return "syn_received";
  return "established";  // the server sent something other than a SYN-ACK to a SYN
}

std::vector<std::string> Flow::flags() const {
  std::vector<std::string> out;
  const std::string st = state();
  if (st == "unanswered") out.push_back("unanswered");
  if (st == "refused") out.push_back("refused");
  if (st == "reset") out.push_back("reset");
  if (tcp() && retransmissions()) out.push_back("retransmitting");
  if (tcp() && (rec.st.bits & TW_FLOW_B_MID_STREAM)) out.push_back("mid_stream");
  if (rec.end == TW_FLOW_END_EVICTED) out.push_back("evicted");
  return out;
}

bool Flow::has_flag(const std::string& f) const {
  for (auto& x : flags())
    if (x == f) return true;
  return false;
}

Flow flow_from_record(const tw_seg_flow& rec) {
  Flow f;
  f.rec = rec;
  const tw_flow_key& k = rec.key;
  auto fill = [&](FlowEnd& e, unsigned side) {
    e.ip_version = k.ip_version;
    std::memcpy(e.addr, side == TW_SIDE_A ? k.addr_a : k.addr_b, 16);
    e.port = side == TW_SIDE_A ? k.port_a : k.port_b;
  };
  fill(f.client, f.client_side());
  fill(f.server, f.server_side());
  return f;
}

std::vector<std::string> completeness_names(uint8_t bits) {
  static const char* names[] = {"SYN", "SYN-ACK", "ACK", "DATA", "FIN", "RST"};
  std::vector<std::string> out;
  for (int i = 0; i < 6; i++)
    if (bits & (1u << i)) out.push_back(names[i]);
  return out;
}

std::string flow_ts(uint64_t ns) { return dissect::format_ts(ns); }

FlowJson flow_end_json(const FlowEnd& e) {
  std::string text;
  JsonOut j(text);
  dissect::write_endpoint(j, e);
  FlowJson out = FlowJson::parse(text);
  if (!e.names.empty()) out["names"] = e.names;
  return out;
}

namespace {

FlowJson dir_json(const tw_flow_dir& d, bool tcp) {
  FlowJson j = {{"packets", d.packets}, {"bytes", d.bytes}, {"payload_bytes", d.payload_bytes}};
  if (tcp) {
    j["retransmissions"] = tw_flow_retransmissions(&d);
    j["fast_retransmissions"] = d.fast_retransmissions;
    j["spurious_retransmissions"] = d.spurious_retransmissions;
    j["out_of_order"] = d.out_of_order;
    j["lost_segments"] = d.lost_segments;
    j["dup_acks"] = d.dup_acks;
    j["zero_windows"] = d.zero_windows;
    j["keep_alives"] = d.keep_alives;
    j["resets"] = d.resets;
  }
  return j;
}

}  // namespace

FlowJson flow_json(const Flow& f) {
  const tw_flow_state& s = f.rec.st;
  FlowJson j;
  j["id"] = f.id();
  if (!f.node.empty()) j["node"] = f.node;
  j["protocol"] = f.tcp() ? "tcp" : "udp";
  j["ip_version"] = f.rec.key.ip_version;
  j["client"] = flow_end_json(f.client);
  j["server"] = flow_end_json(f.server);
  j["first_seen"] = flow_ts(s.first_ns);
  j["last_seen"] = flow_ts(s.last_ns);
  j["duration_us"] = s.last_ns >= s.first_ns ? (s.last_ns - s.first_ns) / 1000 : 0;
  j["state"] = f.state();
  j["end"] = f.end() ? FlowJson(f.end()) : FlowJson(nullptr);
  if (f.tcp()) {
    j["completeness"] = s.completeness;
    j["completeness_flags"] = completeness_names(s.completeness);
    j["handshake_rtt_us"] = s.first_rtt_ns ? FlowJson(static_cast<double>(s.first_rtt_ns) / 1000.0)
                                           : FlowJson(nullptr);
  }
  j["client_to_server"] = dir_json(f.to_server(), f.tcp());
  j["server_to_client"] = dir_json(f.to_client(), f.tcp());
  j["flags"] = f.flags();
  return j;
}

}  // namespace tapwire::flows

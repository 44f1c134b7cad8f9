// A flow as docs/FLOWS.md shows it: the TW_REC_FLOW record (shm/segment_format.h)
// decoded into client and server, state, flags and per-direction counts,
// with the identity of both ends and their passive-DNS names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "call.hpp"
#include "endpoint_identity.hpp"
#include "segment_format.h"

namespace tapwire::flows {

// One end of a flow: address, port and identity (at first_seen) as a
// call's end, and the names passive DNS gave the address at first_seen.
struct FlowEnd : dissect::Endpoint {
  std::vector<std::string> names;
};

struct Flow {
  tw_seg_flow rec{};  // the last record of the flow (cumulative counts)
  std::string node;  // the node whose sensor saw it ("" if unknown)
  FlowEnd client, server;

  std::string id() const;  // rec.flow_id as 16 hex digits
  bool tcp() const { return rec.key.l4_proto == 6; }
  // The side (TW_SIDE_A/B) of the client and the server.
  unsigned client_side() const { return (rec.st.bits & TW_FLOW_B_CLIENT_B) ? TW_SIDE_B : TW_SIDE_A; }
  unsigned server_side() const { return client_side() ^ 1u; }
  const tw_flow_dir& to_server() const { return rec.st.dir[client_side()]; }  // the client's packets
  const tw_flow_dir& to_client() const { return rec.st.dir[server_side()]; }
  uint64_t packets() const { return to_server().packets + to_client().packets; }
  uint64_t bytes() const { return to_server().bytes + to_client().bytes; }
  uint64_t retransmissions() const {
    return tw_flow_retransmissions(&rec.st.dir[0]) + tw_flow_retransmissions(&rec.st.dir[1]);
  }
  // handshake RTT in microseconds, < 0 when unknown
  double rtt_us() const { return rec.st.first_rtt_ns ? static_cast<double>(rec.st.first_rtt_ns) / 1000.0 : -1.0; }

  const char* state() const;  // docs/FLOWS.md states
  const char* end() const;  // nullptr while live
  std::vector<std::string> flags() const;
  bool has_flag(const std::string& f) const;
};

// Fills client and server (addresses and ports) from rec's key and bits.
Flow flow_from_record(const tw_seg_flow& rec);
// tw_flow_end as docs/FLOWS.md names it; nullptr for TW_FLOW_END_NONE.
const char* flow_end_name(uint8_t end);
// TW_COMPLETE_* bits by name, lowest first.
std::vector<std::string> completeness_names(uint8_t bits);
// JSON objects that keep their members in the record's order.
using FlowJson = nlohmann::ordered_json;
// The flow record of docs/FLOWS.md.
FlowJson flow_json(const Flow& f);
// One end as the record shows it (the call record's endpoint, plus names).
FlowJson flow_end_json(const FlowEnd& e);
// RFC 3339 UTC with nanoseconds.
std::string flow_ts(uint64_t ns);

}  // namespace tapwire::flows

// Flows from packets in userspace (a pcap, tests): the kernel's flow
// accounting (bpf/tapwire_flow.h: tw_flow_init, tw_flow_tcp_update,
// tw_flow_udp_update) run packet by packet in capture order, so that a pcap
// of the traffic gives the flows the sensor would have recorded.
//
// Bounded: at most TrackerOptions::max_flows flows live at once (the
// default is tap.flows.maxFlows', 65536; about 400 bytes each). A packet of a
// new flow that finds the table full first ends the flow idle longest, with
// end = evicted, so a hostile capture with a million flows costs the same
// memory as one with 65536.
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "segment_format.h"
#include "tapwire_abi.h"

namespace tapwire::flows {

struct TrackerOptions {
  size_t max_flows = 65536;  // tap.flows.maxFlows
};

struct TrackerStats {
  uint64_t packets = 0;  // TCP and UDP packets counted
  uint64_t other = 0;  // packets of other protocols (not flows)
  uint64_t flows = 0;  // flows started
  uint64_t reused = 0;  // ended by a SYN with a new ISN
  uint64_t evicted = 0;  // ended because max_flows were live
};

// The canonical key of a packet's flow (side a: the smaller (address, port))
// and the side that sent it. False for anything but TCP and UDP.
bool flow_key_of(const tw_pkt& p, tw_flow_key& key, uint8_t& side);

class FlowTracker {
 public:
  // Gets every final record (end != 0), in the order flows end.
  using Sink = std::function<void(const tw_seg_flow&)>;
  FlowTracker(TrackerOptions opts, Sink sink);
  ~FlowTracker();
  FlowTracker(const FlowTracker&) = delete;
  FlowTracker& operator=(const FlowTracker&) = delete;

  // One packet: its capture metadata (ts_ns, addresses, ports, TCP seq, ack,
  // flags, window, payload_len, ifindex) and the frame's length on the wire
  // (pcap's orig len: link-layer header included).
  void packet(const tw_pkt& p, uint32_t wire_len);
  // End of input: ends every live flow (fin, rst, timeout for a SYN never
  // answered, else stopped).
  void finish();
  // The live flows' records (end 0), oldest activity first.
  std::vector<tw_seg_flow> live() const;
  size_t live_count() const;
  const TrackerStats& stats() const { return stats_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  TrackerStats stats_;
};

// The end a flow gets when its input ends while it is live.
uint8_t end_at_stop(const tw_flow_key& key, const tw_flow_state& st);

}  // namespace tapwire::flows

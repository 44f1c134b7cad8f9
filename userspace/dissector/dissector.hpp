// The dissection engine: packets in, calls out. Flows are keyed by 5-tuple;
// TCP flows are reassembled per direction, their protocol detected from
// content (the port is only a hint), parsed, and requests paired with
// responses. Time is packet time, so a pcap, a snapshot and the live tail
// of the same traffic dissect to the same calls.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "call.hpp"
#include "dns.hpp"
#include "http1.hpp"
#include "protocol.hpp"
#include "packet_source.hpp"
#include "tcp_reassembly.hpp"

namespace tapwire::dissect {

struct DissectorOptions {
  proto::HttpLimits http;
  proto::DnsLimits dns;
  ReassemblyLimits reassembly;
  size_t max_flows = 200000;  // TCP flows tracked at once; the least recently active go first
  size_t max_detect_bytes = 4096;  // bytes looked at to detect a protocol before a flow is ignored
  uint64_t flow_idle_ns = 120ull * 1000000000ull;  // a TCP flow without packets this long is closed
  uint64_t request_timeout_ns = 60ull * 1000000000ull;  // a request without response this long expires
  uint64_t dns_timeout_ns = 10ull * 1000000000ull;
  size_t max_dns_pending = 100000;  // DNS queries waiting for an answer, all flows together
  // The dissectors that run (tap.enabledDissectors, --dissectors): names of
  // proto::dissector_names(); all of them by default.
  std::vector<std::string> dissectors = proto::dissector_names();
  // Heap the engine's state may take, all flows together: flows and their
  // table entries, out-of-order segments, parser buffers, kept bodies,
  // requests and DNS queries waiting for their answer; 0: no limit. Beyond it
  // the engine sheds state (see Dissector) instead of growing.
  size_t memory_limit = 256ull << 20;

  bool enabled(std::string_view dissector) const;
};

// --dissectors (the dissector, `tapwire dissect`) and tap.enabledDissectors:
// a comma-separated list of dissector names (proto::dissector_names(): http,
// ws, dns), or none. Enables exactly the dissectors named; returns the first
// name it does not know, "" when it knows them all. tcp and udp (flow
// accounting, done by the kernel) are accepted and enable no L7 protocol.
std::string enable_dissectors(DissectorOptions& o, const std::string& list);
// Every dissector name, comma-separated: "http,ws,dns".
std::string dissector_list();

// Why state was shed to stay within DissectorOptions::memory_limit, in the
// order the engine sheds: out-of-order data, kept bodies, unparsed buffers
// (a header block still incomplete, detection, DNS over TCP), waiting DNS
// queries, whole flows.
enum class ShedReason : uint8_t { OutOfOrder, Body, Buffer, DnsQuery, Flow };
inline constexpr size_t kShedReasons = 5;
const char* shed_reason_name(ShedReason r);  // "out_of_order", "body", "buffer", "dns_query", "flow"

// Upper bounds (seconds) of the call duration histogram buckets; the last
// bucket is +Inf. Prometheus-style cumulative counts are derived on export.
inline constexpr double kDurationBuckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                              0.1,    0.25,  0.5,    1,     2.5,  5,     10};
inline constexpr size_t kDurationBucketCount = sizeof(kDurationBuckets) / sizeof(kDurationBuckets[0]) + 1;

struct DissectorMetrics {
  uint64_t packets = 0, bytes = 0;
  uint64_t tcp_flows = 0, udp_datagrams = 0, icmp_messages = 0;
  uint64_t flows_active = 0;
  uint64_t flows_evicted = 0;  // dropped because max_flows was reached
  uint64_t flows_ignored = 0;  // no supported protocol detected
  uint64_t reassembly_gaps = 0, reassembly_gap_bytes = 0;
  uint64_t calls_without_response = 0, orphan_responses = 0;
  uint64_t buffered_bytes = 0;  // reassembly + parser buffers now (payload bytes, at the last sweep)
  uint64_t reassembly_out_of_window = 0;  // segments beyond the window: dropped, the stream kept where it was
  uint64_t reassembly_resyncs = 0;  // streams found to have moved on beyond the window (capture loss)
  // The engine's heap now (an estimate that counts allocator and container
  // overhead), its highest value, and the limit (0: none).
  uint64_t memory_bytes = 0, memory_peak_bytes = 0, memory_limit = 0;
  // Shedding, by ShedReason: times (flows, or DNS queries) and estimated bytes freed.
  uint64_t shed[kShedReasons] = {};
  uint64_t shed_bytes[kShedReasons] = {};
  uint64_t dns_pending = 0, dns_pending_overflow = 0;
  // Call durations (calls with a response): bucket counts (not
  // cumulative), sum and count.
  struct Histogram {
    uint64_t buckets[kDurationBucketCount] = {};
    double sum_seconds = 0;
    uint64_t count = 0;
    void observe(double seconds);
  };
  // By protocol (every registered protocol has an entry): calls, input
  // that failed to parse, durations.
  std::map<std::string, uint64_t> calls, parse_errors;
  std::map<std::string, Histogram> durations;
  // The protocols' own counter families (proto::ProtocolCounters):
  // "http_methods" {"GET": n}, "http_status_class" {"2xx": n, "none": n},
  // "dns_rcodes", "grpc_status", "ws_messages".
  std::map<std::string, std::map<std::string, uint64_t>> breakdowns;

  uint64_t calls_of(const std::string& protocol) const;
  uint64_t calls_total() const;
  uint64_t parse_errors_total() const;
};

// The metrics as JSON (DATA_DIR/dissector.json, read by the exporter and by
// people): counters, calls by method / status class / rcode, and duration
// histograms with bucket upper bounds in seconds.
nlohmann::json metrics_json(const DissectorMetrics& m);

using CallSink = std::function<void(Call&&)>;

// Memory: every flow's state is counted as it changes (after each packet,
// O(1)); when the total passes DissectorOptions::memory_limit, state is shed
// until it is an eighth below the limit, least useful first: out-of-order
// data of the flows idle longest (their holes given up, as a timeout would),
// then the bodies kept for messages, then buffered bytes not yet parsed
// (an incomplete header block is reported as an incomplete call), then the
// oldest DNS queries waiting for an answer, then whole flows, idle longest
// first. Calls that lose something carry the flag memory_shed.
class Dissector {
 public:
  Dissector(DissectorOptions opts, CallSink sink);
  ~Dissector();
  Dissector(const Dissector&) = delete;
  Dissector& operator=(const Dissector&) = delete;

  void packet(const Packet& p);
  // Expires idle flows and requests older than the timeouts relative to
  // packet time `now_ns` (called periodically; packet() calls it as time moves).
  void advance_time(uint64_t now_ns);
  // End of input: closes every flow, reporting what is pending.
  void finish();
  // The metrics now (the protocols' counters folded in: not for every packet).
  const DissectorMetrics& metrics() const;
  uint64_t packets() const;  // packets seen: cheap

  // Live resume. The position of the first packet of the oldest flow or
  // query still in progress (or `current` if none): a dissector restarted
  // there rebuilds exactly the state this one has now.
  SourcePosition resume_position(SourcePosition current) const;
  // Calls completed by packets at or before `pos` were reported by an
  // earlier run: drop them instead of reporting them again.
  void suppress_through(SourcePosition pos);
  uint64_t suppressed() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tapwire::dissect

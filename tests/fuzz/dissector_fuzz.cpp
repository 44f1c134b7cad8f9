// The whole dissection engine (userspace/dissector/dissector.hpp): packets of
// a few TCP and UDP flows, both directions, with their capture metadata
// decoded from the input and their payload taken from it, through
// reassembly, protocol detection, the HTTP and DNS parsers and pairing, to
// the call records the dissector writes (JSON lines).
//
// Input: [opts u8] then per packet a 9-byte header and the payload:
//   [flow u8][pkt_flags u8][tcp_flags u8][seq_delta i16][len u16][extra u8][ts_step u8][len bytes]
//   flow bits 0-1: which of four address pairs; bit 2: the reverse direction;
//        bit 3: UDP (else TCP); bit 4: IPv6; bits 5-6: the server port (80,
//        53, 8080, 5353); bit 7: a chunk of a larger packet (chunk_off = extra * 64)
//   pkt_flags: TW_PKT_F_* (truncated, continuation, more); bit 7 with UDP:
//        an ICMP (ICMPv6 with IPv6) message instead, no ports

//   seq = what this direction of the flow sent so far + seq_delta (TCP)
//   len & 0x3fff payload bytes follow (fewer at the end of the input); the
//   packet's wire length is extra bytes longer when TW_PKT_F_TRUNCATED
//   ts_step: milliseconds after the last packet, or seconds with bit 7 (to
//   reach the idle and request timeouts)
//   opts bit 0: small limits (flows, detection, reassembly, HTTP, DNS);
//        bit 1: no HTTP; bit 2: no DNS; bit 3: no WebSocket, and the time goes
//        backwards now and then; bit 4: no ICMP
//
// Checked: every call is well formed (a protocol and the messages it says,
// limits kept) and serialises as a call record; the metrics stay consistent;
// finish() leaves no flow and nothing buffered.
// libFuzzer: -max_len=65536
#include <netinet/in.h>

#include "dissector.hpp"
#include "fuzz_common.hpp"

namespace {

using tapwire::fuzz::Reader;
using namespace tapwire::dissect;

DissectorOptions options_from(uint8_t o) {
  DissectorOptions opts;
  if (o & 1) {
    opts.max_flows = 2;
    opts.max_detect_bytes = 80;
    opts.reassembly.max_buffered_bytes = 2048;
    opts.reassembly.max_buffered_segments = 4;
    opts.http.max_header_bytes = 256;
    opts.http.max_body_kept = 16;
    opts.http.max_headers = 4;
    opts.http.max_pending = 2;
    opts.dns.max_records = 3;
    opts.max_dns_pending = 3;
  }
  opts.dissectors.clear();
  if (!(o & 2)) opts.dissectors.push_back("http");
  if (!(o & 4)) opts.dissectors.push_back("dns");
  if (!(o & 8)) opts.dissectors.push_back("ws");
  if (!(o & 16)) opts.dissectors.push_back("icmp");
  return opts;
}

void check_call(const Call& c, const DissectorOptions& opts) {
  const std::string_view protocol = c.protocol;
  FUZZ_CHECK(c.has_request() || c.has_response(), std::string(protocol) + " call with neither a request nor a response");
  const tapwire::proto::ProtocolInfo* info = tapwire::proto::find_protocol(protocol);
  FUZZ_CHECK(info != nullptr, "unknown protocol " + std::string(protocol));
  FUZZ_CHECK(opts.enabled(info->dissector), std::string(protocol) + " calls with its dissector off");
  if (protocol == "http") {
    FUZZ_CHECK(!c.dns_query() && !c.dns_response());
    for (const auto* m : {c.http_request(), c.http_response()}) {
      if (!m) continue;
      FUZZ_CHECK(m->body.size() <= opts.http.max_body_kept);
      FUZZ_CHECK(m->headers.size() <= opts.http.max_headers);
    }
    if (c.http_request()) FUZZ_CHECK(c.http_request()->is_request);
    if (c.http_response()) FUZZ_CHECK(!c.http_response()->is_request);
  } else if (protocol == "dns") {
    FUZZ_CHECK(!c.http_request() && !c.http_response());
    if (c.dns_query()) FUZZ_CHECK(!c.dns_query()->is_response);
    if (c.dns_response()) FUZZ_CHECK(c.dns_response()->is_response);
    if (c.dns_query() && c.dns_response()) FUZZ_CHECK(c.dns_query()->id == c.dns_response()->id);
  }
  // Every record is valid JSON text.
  std::string text;
  write_record(c, text);
  FUZZ_CHECK(nlohmann::json::accept(text), "record is not JSON: " + text.substr(0, 200));
  if (protocol == "icmp")
    FUZZ_CHECK(c.l4_proto == IPPROTO_ICMP || c.l4_proto == IPPROTO_ICMPV6 || c.l4_proto == IPPROTO_TCP ||
               c.l4_proto == IPPROTO_UDP);
  else
    FUZZ_CHECK(c.l4_proto == IPPROTO_TCP || c.l4_proto == IPPROTO_UDP);
  FUZZ_CHECK(c.id().size() == 16);
  // What tapwire-dissector --jsonl writes for it (main.cpp).
  std::string line = to_json(c).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  FUZZ_CHECK(line.find('\n') == std::string::npos);
}

void fill_addr(tw_pkt& p, int pair, bool v6, bool reverse) {
  uint8_t a[16] = {}, b[16] = {};
  if (v6) {
    a[0] = b[0] = 0xfd;
    a[15] = static_cast<uint8_t>(1 + pair);
    b[15] = 100;
  } else {
    a[0] = b[0] = 10;
    a[3] = static_cast<uint8_t>(1 + pair);
    b[3] = 100;
  }
  std::memcpy(reverse ? p.daddr : p.saddr, a, 16);
  std::memcpy(reverse ? p.saddr : p.daddr, b, 16);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t o = in.u8();
  const DissectorOptions opts = options_from(o);
  uint64_t calls = 0;
  Dissector d(opts, [&](Call&& c) {
    check_call(c, opts);
    calls++;
  });

  static constexpr uint16_t kServerPorts[] = {80, 53, 8080, 5353};
  uint32_t sent[2][4][2][2] = {};  // bytes sent by [udp][pair][v6][direction], for sequence numbers
  uint64_t ts = 1'700'000'000'000'000'000ull;
  uint64_t records = 0;
  while (in.left() >= 9) {
    const uint8_t flow = in.u8();
    Packet p;
    tw_pkt& m = p.meta;
    const uint8_t pkt_flags = in.u8();
    m.flags = pkt_flags & (TW_PKT_F_TRUNCATED | TW_PKT_F_CONTINUATION | TW_PKT_F_MORE);
    m.tcp_flags = in.u8();
    const auto delta = static_cast<int16_t>(in.u16());
    const size_t len = in.u16() & 0x3fffu;
    const uint8_t extra = in.u8();
    const uint8_t step = in.u8();
    p.payload = in.bytes(len);

    const int pair = flow & 3, udp = (flow >> 3) & 1, v6 = (flow >> 4) & 1;
    const bool reverse = flow & 4;
    m.ip_version = v6 ? 6 : 4;
    const bool icmp = udp && (pkt_flags & 0x80);
    m.l4_proto = static_cast<uint8_t>(icmp ? (v6 ? int{IPPROTO_ICMPV6} : int{IPPROTO_ICMP})
                                           : udp ? int{IPPROTO_UDP} : int{IPPROTO_TCP});
    fill_addr(m, pair, v6, reverse);
    const uint16_t server = kServerPorts[(flow >> 5) & 3], client = static_cast<uint16_t>(40000 + pair);
    m.sport = icmp ? 0 : reverse ? server : client;
    m.dport = icmp ? 0 : reverse ? client : server;
    uint32_t& s = sent[udp][pair][v6][reverse];
    m.seq = s + static_cast<uint32_t>(static_cast<int32_t>(delta));
    m.chunk_off = (flow & 0x80) ? extra * 64u : 0;
    m.cap_len = static_cast<uint32_t>(p.payload.size());
    m.payload_len = m.chunk_off + m.cap_len + ((m.flags & TW_PKT_F_TRUNCATED) ? extra : 0u);
    s = m.seq + m.cap_len + ((m.tcp_flags & (TW_TCP_SYN | TW_TCP_FIN)) ? 1 : 0);
    if ((o & 8) && step == 0xff)
      ts -= 5'000'000'000ull;  // a packet from before: sources are not perfectly ordered
    else
      ts += (step & 0x80) ? (step & 0x7fu) * 1'000'000'000ull : step * 1'000'000ull;
    m.ts_ns = ts;
    p.pos = {0, records++};
    d.packet(p);
    if ((records & 15) == 0) {
      d.advance_time(ts);
      FUZZ_CHECK(d.resume_position(p.pos) <= p.pos);
      FUZZ_CHECK(d.metrics().flows_active <= opts.max_flows);
    }
  }
  d.finish();
  const DissectorMetrics& mt = d.metrics();
  FUZZ_CHECK(mt.flows_active == 0 && mt.buffered_bytes == 0 && mt.dns_pending == 0);
  FUZZ_CHECK(mt.calls_total() == calls,
             std::to_string(mt.calls_total()) + " calls counted, " + std::to_string(calls) + " seen");
  FUZZ_CHECK(mt.packets == records);
  (void)metrics_json(mt).dump();
  return 0;
}

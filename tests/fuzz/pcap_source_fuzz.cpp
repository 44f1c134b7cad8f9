// The pcap/pcapng packet source (userspace/dissector/pcap_source.cpp), as
// `tapwire-dissector --pcap FILE` uses it: the input is the file; libpcap
// reads it, the source decodes link, IP and TCP/UDP headers the way the BPF
// programs do, and the packets go through the dissection engine.
//
// Checked: every packet handed out is TCP or UDP over IPv4 or IPv6 with
// cap_len payload bytes, no more than its wire length, flagged truncated
// exactly when it is cut; the counters add up.
// libFuzzer: -max_len=65536
#include <netinet/in.h>
#include <unistd.h>

#include <cstdlib>
#include <cstdio>
#include <stdexcept>

#include "dissector.hpp"
#include "fuzz_common.hpp"
#include "packet_source.hpp"

namespace {

using namespace tapwire::dissect;

std::string scratch_path() {
  return tapwire::fuzz::scratch_root() + "/tapwire-fuzz-pcap-" + std::to_string(getpid()) + ".pcap";
}

// A scratch file (tmpfs if there is one), one per fuzzing process, rewritten for every input.
const std::string& scratch() {
  static const std::string path = [] {
    std::atexit([] { std::remove(scratch_path().c_str()); });
    return scratch_path();
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = scratch();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);

  std::unique_ptr<PacketSource> src;
  try {
    src = open_pcap_source(path);
  } catch (const std::runtime_error&) {
    return 0;  // not a capture, or a link type the dissector does not take: one line, no packets
  }
  Dissector d({}, [](Call&& c) { (void)to_json(c).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); });
  Packet p;
  uint64_t packets = 0, bytes = 0;
  // A frame takes at least its 16-byte record header: more packets than that is a loop.
  for (size_t guard = 0; guard <= size / 16 + 1; guard++) {
    if (src->next(p) != PacketSource::Next::Packet) break;
    const tw_pkt& m = p.meta;
    FUZZ_CHECK(m.ip_version == 4 || m.ip_version == 6);
    FUZZ_CHECK(m.l4_proto == IPPROTO_TCP || m.l4_proto == IPPROTO_UDP || m.l4_proto == IPPROTO_ICMP ||
               m.l4_proto == IPPROTO_ICMPV6);  // ICMP: the whole message is the payload
    FUZZ_CHECK(p.payload.size() == m.cap_len);
    FUZZ_CHECK(m.cap_len <= m.payload_len);
    FUZZ_CHECK(!(m.flags & TW_PKT_F_TRUNCATED) == (m.cap_len == m.payload_len));
    // The payload points into libpcap's buffer: reading it all lets ASan
    // catch a span that runs past it.
    volatile uint8_t sum = 0;
    for (uint8_t b : p.payload) sum = static_cast<uint8_t>(sum + b);
    packets++;
    bytes += m.cap_len;
    d.packet(p);
  }
  FUZZ_CHECK(src->stats().packets == packets && src->stats().bytes == bytes);
  d.finish();
  return 0;
}

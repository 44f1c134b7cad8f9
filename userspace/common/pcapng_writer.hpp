// Writes captured records as a pcapng file that Wireshark/tshark open as if
// tcpdump had taken it. Segments hold only L4 payloads plus metadata
// (struct tw_pkt), so each packet's Ethernet / 802.1Q / IPv4|IPv6 / TCP|UDP
// headers are synthesized: lengths and checksums are computed, MAC addresses
// are fixed locally-administered ones derived from the IP addresses.
//
// Layout: one Section Header Block; one Interface Description Block per
// (ifindex, name) in order of first use (linktype ETHERNET, if_tsresol 9 =
// nanoseconds, snaplen 0); one Enhanced Packet Block per packet with
// epb_flags inbound (ingress) or outbound (egress).
//
// Large packets arrive as several records (chunk_off, CONTINUATION/MORE).
// TCP chunks become one frame each, with seq + chunk_off, so tshark
// reassembles the stream. UDP chunks are buffered (consecutive records of the
// same datagram) and written as one frame; a datagram whose chunks do not all
// arrive is written with what arrived, marked as cut (original length >
// captured length). A UDP continuation without its first chunk cannot be
// framed and is skipped (counted in orphan_chunks).
//
// Not thread-safe. Output goes through a large in-memory buffer.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tapwire_abi.h"

namespace tapwire {

struct PcapngStats {
  uint64_t packets = 0;  // Enhanced Packet Blocks written
  uint64_t payload_bytes = 0;  // captured L4 payload bytes in them
  uint64_t file_bytes = 0;  // bytes handed to the output
  uint64_t interfaces = 0;  // Interface Description Blocks written
  uint64_t truncated = 0;  // packets written with original length > captured length
  uint64_t malformed_records = 0;  // records that could not be decoded (skipped)
  uint64_t orphan_chunks = 0;  // UDP continuation records without their first chunk (skipped)
};

class PcapngWriter {
 public:
  // Writes to `out` (not owned, left open); the Section Header Block is
  // written at once. `application` goes into the shb_userappl option.
  explicit PcapngWriter(std::FILE* out, std::string_view application = "tapwire");
  ~PcapngWriter();  // does not flush: call finish()
  PcapngWriter(const PcapngWriter&) = delete;
  PcapngWriter& operator=(const PcapngWriter&) = delete;

  // Names ifindex for the packets that follow (a TW_REC_IFACE record). A
  // packet on an ifindex that has no name yet gets the IDB "ifindex<N>".
  void set_interface_name(uint32_t ifindex, std::string_view name);
  // Body of a TW_REC_IFACE record. Returns false if it is malformed.
  bool add_iface_record(std::span<const uint8_t> body);
  // Body of a TW_REC_PACKET record: struct tw_pkt + cap_len payload bytes.
  // Returns false (and counts malformed_records) if it cannot be decoded.
  bool add_packet_record(std::span<const uint8_t> body);
  // Same with the header and payload already split.
  bool add_packet(const tw_pkt& pkt, std::span<const uint8_t> payload);

  // Writes a pending UDP datagram and flushes the buffer to `out` (does not
  // fflush `out` itself). Returns false if a write failed; errno is kept.
  bool finish();
  // False once a write to `out` has failed.
  bool ok() const { return ok_; }
  const PcapngStats& stats() const { return stats_; }

 private:
  uint32_t interface_id(uint32_t ifindex);
  void write_tcp(const tw_pkt& pkt, std::span<const uint8_t> payload);
  void write_udp(const tw_pkt& pkt, std::span<const uint8_t> payload, uint32_t wire_payload_len);
  void flush_pending_udp();
  void write_frame(const tw_pkt& pkt, const uint8_t* l4hdr, size_t l4hdr_len, std::span<const uint8_t> payload,
                   uint32_t wire_payload_len);
  void put(const void* data, size_t len);
  void flush_buffer();

  std::FILE* out_;
  bool ok_ = true;
  PcapngStats stats_;
  std::vector<uint8_t> buf_;
  size_t buf_used_ = 0;
  std::map<uint32_t, std::string> names_;  // ifindex -> current name
  std::map<std::pair<uint32_t, std::string>, uint32_t> idb_ids_;  // (ifindex, name) -> IDB id

  // UDP datagram being reassembled from chunks.
  bool udp_pending_ = false;
  tw_pkt udp_hdr_{};
  uint32_t udp_next_off_ = 0;  // chunk_off the next chunk must have
  std::vector<uint8_t> udp_buf_;
};

}  // namespace tapwire

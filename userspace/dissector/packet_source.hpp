// Where the dissector's packets come from: the sensor's segments (followed
// live, or a finished snapshot directory) or a pcap/pcapng file. Every source
// yields the same thing — the capture metadata of struct tw_pkt and the
// payload bytes — so everything after it is one code path.
#pragma once

#include <compare>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "tapwire_abi.h"

namespace tapwire::dissect {

// Where a source is, so that a restarted dissector can resume there.
struct SourcePosition {
  uint64_t segment = 0;  // segment seq (segment sources)
  uint64_t offset = 0;  // record offset within it
  auto operator<=>(const SourcePosition&) const = default;
};

struct Packet {
  tw_pkt meta{};  // ts_ns is CLOCK_REALTIME
  std::span<const uint8_t> payload;  // meta.cap_len bytes; valid until the next call to next()
  SourcePosition pos;  // where this packet's record is (segment sources)
  uint32_t wire_len = 0;  // the frame's length on the wire (pcap's orig len); 0 when unknown (segments)
};

struct SourceStats {
  uint64_t packets = 0;  // packets handed out
  uint64_t bytes = 0;  // payload bytes handed out
  uint64_t skipped = 0;  // records or frames that could not be used (counted, not fatal)
  uint64_t loss_records = 0;  // capture losses reported by the sensor (TW_REC_LOSS)
  uint64_t segments_missed = 0;  // segments deleted by retention before they were read
  uint64_t input_bytes = 0;  // bytes of input consumed (file or segment bytes)
};

class PacketSource {
 public:
  enum class Next { Packet, Wait, End };
  virtual ~PacketSource() = default;
  // Packet: `out` is filled. Wait: nothing yet (live sources). End: done.
  virtual Next next(Packet& out) = 0;
  virtual SourcePosition position() const { return {}; }
  virtual const SourceStats& stats() const = 0;
  // A problem that ended the source early (a truncated pcap, a corrupt
  // segment), as one line; empty if none.
  virtual std::string error() const { return {}; }
  // Total input size when known (for progress), else 0.
  virtual uint64_t input_size() const { return 0; }
};

// Throws std::runtime_error with a one-line message if the file cannot be
// opened or its link type is not supported.
std::unique_ptr<PacketSource> open_pcap_source(const std::string& path);

// Segments of `dir` (a data dir's segments/ folder or a snapshot). follow:
// keep waiting for new records and segments (live); otherwise End after the
// last record of the last segment. Starts at `from` (segment 0 = the oldest).
std::unique_ptr<PacketSource> open_segment_source(const std::string& dir, bool follow, SourcePosition from = {});

}  // namespace tapwire::dissect

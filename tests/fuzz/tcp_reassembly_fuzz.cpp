// TCP reassembly (userspace/dissector/tcp_reassembly.hpp): one direction's
// segments, decoded from the input, with payload bytes that are a function of
// their sequence number, so that what comes out can be checked byte by byte.
//
// Input: [limits u8][hole_wait u8][isn u32] then 8 bytes per segment:
//   [tcp_flags u8][mode u8][delta i16][len u16][extra u8][ts_step u8]
//   seq = the highest sequence number sent so far + delta << (mode & 7)
//   len & 0x7ff bytes captured; mode bit 3: a continuation chunk (chunk_off =
//   extra * 16); bit 4: the capture cut extra * 8 bytes off the end; bit 5:
//   a wire length too large to be believed; ts_step * 10 ms after the last.
//
// Checked: delivery and gaps are contiguous from offset 0; every delivered
// byte is the byte the stream has at that offset (whatever the order,
// overlaps and retransmissions); held bytes stay within the cap after every
// segment; the stats add up; flush() leaves nothing held.
// libFuzzer: -max_len=4096
#include "fuzz_common.hpp"
#include "tcp_reassembly.hpp"

namespace {

using tapwire::fuzz::Reader;
using namespace tapwire::dissect;

constexpr uint8_t kFin = 0x01, kSyn = 0x02;

uint8_t byte_at(uint32_t seq) { return static_cast<uint8_t>((seq * 2654435761u) >> 24); }

struct Sink final : StreamSink {
  bool started = false;
  uint32_t start_seq = 0;  // sequence number of stream offset 0
  uint64_t expect = 0;  // offset of the next byte to be delivered or declared missing
  uint64_t delivered = 0, gap_bytes = 0, gaps = 0;

  void on_data(uint64_t offset, std::span<const uint8_t> data, uint64_t) override {
    FUZZ_CHECK(started);
    FUZZ_CHECK(offset == expect, "data at " + std::to_string(offset) + ", expected " + std::to_string(expect));
    FUZZ_CHECK(!data.empty());
    for (size_t i = 0; i < data.size(); i++)
      FUZZ_CHECK(data[i] == byte_at(start_seq + static_cast<uint32_t>(offset + i)),
                 "wrong byte at stream offset " + std::to_string(offset + i));
    expect += data.size();
    delivered += data.size();
  }
  void on_gap(uint64_t offset, uint64_t len) override {
    FUZZ_CHECK(offset == expect, "gap at " + std::to_string(offset) + ", expected " + std::to_string(expect));
    FUZZ_CHECK(len > 0);
    expect += len;
    gap_bytes += len;
    gaps++;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t l = in.u8();
  const uint8_t hw = in.u8();
  ReassemblyLimits lim;
  if (l & 0x0f) lim.max_buffered_bytes = (l & 0x0fu) * 256u;
  if (l >> 4) lim.max_buffered_segments = l >> 4;
  if (hw) lim.max_hole_wait_ns = hw * 10'000'000ull;
  const uint32_t isn = in.u32();

  TcpReassembler r(lim);
  Sink sink;
  uint32_t hint = isn;  // highest sequence number sent so far
  uint64_t ts = 1'000'000'000;
  std::vector<uint8_t> payload;
  while (in.left() >= 8) {
    const uint8_t flags = in.u8();
    const uint8_t mode = in.u8();
    const auto delta = static_cast<int16_t>(in.u16());
    const uint32_t len = in.u16() & 0x7ffu;
    const uint8_t extra = in.u8();
    ts += in.u8() * 10'000'000ull;

    const uint32_t seq = hint + static_cast<uint32_t>(static_cast<int32_t>(delta) * (1 << (mode & 7)));
    const uint32_t chunk_off = (mode & 8) ? extra * 16u : 0;
    uint32_t wire_len = chunk_off + len;
    if (mode & 16) wire_len += extra * 8u;
    if (mode & 32) wire_len = 0x7fffffffu;
    const uint32_t data_seq = seq + ((flags & kSyn) ? 1u : 0u) + chunk_off;
    payload.resize(len);
    for (uint32_t i = 0; i < len; i++) payload[i] = byte_at(data_seq + i);

    // Where the stream starts (tcp_reassembly.cpp): at ISN + 1 with a SYN,
    // else at the first segment that has bytes (captured or cut off).
    const bool tail = wire_len <= (16u << 20) && wire_len > chunk_off + len;
    if (!sink.started && ((flags & kSyn) || len > 0 || tail)) {
      sink.started = true;
      sink.start_seq = (flags & kSyn) ? seq + 1 : data_seq;
    }
    r.segment(seq, flags, payload, chunk_off, wire_len, ts, sink);

    FUZZ_CHECK(r.started() == sink.started);
    FUZZ_CHECK(r.buffered_bytes() <= lim.max_buffered_bytes,
               std::to_string(r.buffered_bytes()) + " bytes held, cap " + std::to_string(lim.max_buffered_bytes));
    FUZZ_CHECK(r.next_offset() == sink.expect, "gaps are reported before segment() returns");
    FUZZ_CHECK(r.stats().bytes_delivered == sink.delivered);
    FUZZ_CHECK(r.stats().gap_bytes == sink.gap_bytes && r.stats().gaps == sink.gaps);
    if (flags & kFin) FUZZ_CHECK(r.fin_seen());
    if (static_cast<int32_t>(data_seq + len - hint) > 0) hint = data_seq + len;
  }
  r.flush(sink);
  FUZZ_CHECK(r.buffered_bytes() == 0);
  FUZZ_CHECK(r.next_offset() == sink.expect,
             "next_offset " + std::to_string(r.next_offset()) + ", delivered and gaps " + std::to_string(sink.expect));
  FUZZ_CHECK(r.stats().bytes_delivered == sink.delivered && r.stats().gap_bytes == sink.gap_bytes);
  return 0;
}

// WebSocket frame parser (userspace/protocols/websocket/websocket.hpp), one
// direction, fed the way the dissector feeds it (unconsumed bytes presented
// again with more after them), in splits chosen by the input's first bytes;
// and the Sec-WebSocket-Extensions parser.
//
// Input: [flags u8][limits u8][seed u32][stream...]
//   flags bit 0: the client's direction (frames should be masked), else the server's
//         bit 1: permessage-deflate agreed
//         bit 2: server_no_context_takeover   bit 3: client_no_context_takeover
//         bit 4: small limits, from the limits byte (kept bytes, frame cap, inflate cap)
//         bit 5: lose chunks of the stream (on_gap) now and then
//         bit 6: on_close at the end
//         bit 7: the stream is two Sec-WebSocket-Extensions values instead
//                (request, NUL, response), negotiated
//
// Checked: what feed() returns (consumed within the input, NeedMoreData
// consumes nothing, at most a 14-byte frame header left unconsumed), the
// parser's memory within its caps, every record within its limits and
// consistent (sizes, flags, UTF-8 text), every byte accounted for (the
// records' wire sizes add up to what was consumed, unless the direction
// stopped), and, without gaps, the same records whatever the split.
// libFuzzer: -max_len=16384
#include <vector>

#include "body/body_text.hpp"
#include "fuzz_common.hpp"
#include "websocket/extensions.hpp"
#include "websocket/websocket.hpp"

namespace {

using tapwire::fuzz::chunk_size;
using tapwire::fuzz::Reader;
using tapwire::fuzz::Rng;
using namespace tapwire::proto;

constexpr size_t kMaxHeader = 14;  // 2 + 8 (64-bit length) + 4 (mask key)

WsLimits limits_from(uint8_t flags, uint8_t l) {
  WsLimits lim;
  // Inflating 16 MiB per message (the default) costs tens of ms: too slow
  // for fuzzing, and no other code path.
  lim.max_inflate = 1 << 20;
  if (flags & 16) {
    lim.max_message_kept = (l & 0x0f) * 9u;  // 0..135: around the 125-byte control frame limit
    lim.max_frame_payload = uint64_t{16} << ((l >> 4) & 7);  // 16..2048
    lim.max_inflate = (l & 0x80) ? 256 : 4096;
  }
  return lim;
}

void check_message(const WsMessage& m, bool client, const WsLimits& lim) {
  FUZZ_CHECK(m.from_client == client);
  FUZZ_CHECK(m.opcode <= 0x0f);
  FUZZ_CHECK(m.opcode_name() != nullptr);
  FUZZ_CHECK(m.payload.size() <= lim.max_message_kept,
             std::to_string(m.payload.size()) + " kept, cap " + std::to_string(lim.max_message_kept));
  FUZZ_CHECK(m.frames >= 1);
  FUZZ_CHECK(m.payload_size <= m.wire_size);
  FUZZ_CHECK(m.wire_size >= 2 * uint64_t{m.frames} || m.gap, "wire " + std::to_string(m.wire_size));
  FUZZ_CHECK(m.ts_first_ns <= m.ts_last_ns);
  FUZZ_CHECK(!m.protocol_error || !m.error.empty());
  if (m.opcode == kWsClose) {
    FUZZ_CHECK(m.payload.empty());
    FUZZ_CHECK(m.close_reason.size() + 2 <= std::max<size_t>(lim.max_message_kept, 2));
  } else {
    FUZZ_CHECK(m.close_code == 0 && m.close_reason.empty());
    FUZZ_CHECK(m.decoded_size >= m.payload.size());
    FUZZ_CHECK(m.decoded_size == m.payload.size() || m.truncated, "decoded " + std::to_string(m.decoded_size));
  }
  if (m.opcode & 0x08) FUZZ_CHECK(m.frames == 1, "control frames are never fragmented");
  if (m.compressed) {
    FUZZ_CHECK(m.opcode == kWsText || m.opcode == kWsBinary);
    FUZZ_CHECK(m.decoded_size <= lim.max_inflate);
  } else if (m.opcode != kWsClose) {
    FUZZ_CHECK(m.decoded_size == m.payload_size, "uncompressed: decoded " + std::to_string(m.decoded_size) +
                                                     ", payload " + std::to_string(m.payload_size));
  }
  // Text that passed is UTF-8 (what is kept may be cut inside a character).
  if (m.opcode == kWsText && !m.protocol_error && m.error.empty() && !m.incomplete) {
    const auto* p = reinterpret_cast<const uint8_t*>(m.payload.data());
    FUZZ_CHECK(is_utf8({p, m.payload.size()}, m.truncated || m.gap));
  }
}

bool same_message(const WsMessage& a, const WsMessage& b) {
  return a.from_client == b.from_client && a.opcode == b.opcode && a.payload == b.payload &&
         a.wire_size == b.wire_size && a.payload_size == b.payload_size && a.decoded_size == b.decoded_size &&
         a.frames == b.frames && a.close_code == b.close_code && a.close_reason == b.close_reason &&
         a.compressed == b.compressed && a.truncated == b.truncated && a.protocol_error == b.protocol_error &&
         a.incomplete == b.incomplete && a.gap == b.gap && a.error == b.error;
}

struct Outcome {
  std::vector<WsMessage> out;
  bool stopped = false;
  uint64_t frames = 0, errors = 0;
};

Outcome one_direction(std::span<const uint8_t> s, uint8_t flags, const WsDeflate& d, const WsLimits& lim, Rng rng,
                      size_t max_chunk, bool gaps) {
  const bool client = flags & 1;
  WebSocketParser p(client ? WebSocketParser::Sender::Client : WebSocketParser::Sender::Server, d, lim);
  Outcome o;
  std::vector<uint8_t> buf;
  size_t off = 0;
  uint64_t ts = 1, consumed = 0;
  // Heap the parser may hold: the message and the control frame in
  // progress (a string's capacity may be twice its size), the inflater
  // (32 KiB window + zlib's state) and the handed-out messages in waiting.
  const size_t mem_cap = 4 * (lim.max_message_kept + 256) + 64 * 1024;
  while (off < s.size()) {
    const size_t k = chunk_size(rng, s.size() - off, max_chunk);
    if (gaps && rng.below(8) == 0) {
      p.on_gap(k);
      buf.clear();
    } else {
      ts++;
      buf.insert(buf.end(), s.begin() + static_cast<std::ptrdiff_t>(off), s.begin() + static_cast<std::ptrdiff_t>(off + k));
      const ParseResult r = p.feed(buf, ts, o.out);
      FUZZ_CHECK(r.consumed <= buf.size());
      if (r.status == ParseStatus::NeedMoreData) FUZZ_CHECK(r.consumed == 0);
      if (r.status == ParseStatus::Invalid || r.status == ParseStatus::Ignored) FUZZ_CHECK(r.consumed == buf.size());
      consumed += r.consumed;
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(r.consumed));
      FUZZ_CHECK(buf.size() < kMaxHeader, "unconsumed " + std::to_string(buf.size()) + " bytes");
    }
    off += k;
    FUZZ_CHECK(p.memory_bytes() <= mem_cap, std::to_string(p.memory_bytes()) + " bytes held");
  }
  if (flags & 64) p.on_close(ts, o.out);
  uint64_t wire = 0;
  for (const WsMessage& m : o.out) {
    check_message(m, flags & 1, lim);
    wire += m.wire_size;
  }
  o.stopped = p.stopped();
  o.frames = p.frame_count();
  o.errors = p.protocol_error_count();
  uint64_t flagged = 0;
  for (const WsMessage& m : o.out) flagged += m.protocol_error;
  FUZZ_CHECK(flagged == o.errors, std::to_string(flagged) + " flagged, counter " + std::to_string(o.errors));
  if (!gaps) {
    // Every consumed byte is in a record's wire_size, once the stream is
    // closed (or nothing is in progress); after a stop the rest is skipped.
    FUZZ_CHECK(wire <= consumed);
    if ((flags & 64) && !o.stopped)
      FUZZ_CHECK(wire == consumed, std::to_string(wire) + " in records, " + std::to_string(consumed) + " consumed");
  }
  return o;
}

void extensions(std::string_view s) {
  const size_t nul = s.find('\0');
  const std::string_view req = s.substr(0, nul);
  const std::string_view resp = nul == std::string_view::npos ? std::string_view() : s.substr(nul + 1);
  for (const WsExtension& e : parse_ws_extensions(resp)) {
    FUZZ_CHECK(!e.name.empty());
    FUZZ_CHECK(e.params.size() <= 16);
    for (const auto& p : e.params) FUZZ_CHECK(!p.name.empty() && (p.has_value || p.value.empty()));
  }
  const WsDeflate d = negotiate_permessage_deflate(req, resp);
  FUZZ_CHECK(d.enabled == parse_permessage_deflate(resp, true).has_value());
  FUZZ_CHECK(d.server_max_window_bits >= 8 && d.server_max_window_bits <= 15);
  FUZZ_CHECK(d.client_max_window_bits >= 8 && d.client_max_window_bits <= 15);
  if (!d.enabled) FUZZ_CHECK(!d.server_no_context_takeover && !d.client_no_context_takeover && !d.malformed);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t flags = in.u8();
  const uint8_t lbyte = in.u8();
  const uint32_t seed = in.u32();
  const std::span<const uint8_t> stream = in.rest();
  if (flags & 128) {
    extensions(tapwire::fuzz::as_text(stream));
    return 0;
  }
  const WsLimits lim = limits_from(flags, lbyte);
  WsDeflate d;
  d.enabled = flags & 2;
  d.server_no_context_takeover = flags & 4;
  d.client_no_context_takeover = flags & 8;
  const bool gaps = flags & 32;

  Outcome split = one_direction(stream, flags, d, lim, Rng(seed), 64, gaps);
  if (gaps) return 0;
  // The parser is resumable: where the stream was cut must not change what it finds.
  Outcome whole = one_direction(stream, flags, d, lim, Rng(seed), 0, false);
  FUZZ_CHECK(split.out.size() == whole.out.size(),
             std::to_string(split.out.size()) + " records split, " + std::to_string(whole.out.size()) + " whole");
  for (size_t i = 0; i < split.out.size(); i++)
    FUZZ_CHECK(same_message(split.out[i], whole.out[i]), "record " + std::to_string(i));
  FUZZ_CHECK(split.stopped == whole.stopped && split.frames == whole.frames && split.errors == whole.errors);
  return 0;
}

// RESP parser (userspace/protocols/redis/resp.hpp), one direction, fed in
// splits chosen by the input; Redis detection; and the Redis session (both
// directions, pairing, pushes) through a minimal SessionContext.
//
// Input: [flags u8][limits u8][seed u32][stream...]
//   flags bit 0: the commands side, else the replies side
//         bit 1: small limits, from the limits byte (kept bytes, items, depth, line)
//         bit 2: lose chunks of the stream (on_gap) now and then
//         bit 3: on_close at the end
//         bit 4: the session instead: each chunk goes to the direction the
//                seed's generator picks; expire, shed and close on the way
//
// Checked: every byte taken; the parser's memory within its caps; each
// message within its limits (kept bytes, kept values, nesting), flagged
// truncated when something was not kept, wire sizes adding up to at most
// what was consumed; without gaps, the same messages whatever the split;
// detection's answer in range;
// the session's calls well formed and its memory bounded.
// libFuzzer: -max_len=16384
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "redis/resp.hpp"
#include "redis/session.hpp"

namespace {

using tapwire::fuzz::chunk_size;
using tapwire::fuzz::Reader;
using tapwire::fuzz::Rng;
using namespace tapwire::proto;

RespLimits limits_from(uint8_t flags, uint8_t l) {
  RespLimits lim;
  if (flags & 2) {
    lim.max_kept = (l & 0x0f) * 7u;
    lim.max_items = ((l >> 4) & 3) * 5u + 1;
    lim.max_depth = ((l >> 6) & 3) * 3u + 1;
    lim.max_line = 64;
    lim.max_bulk = 4096;
    lim.max_count = 100;
  }
  return lim;
}

struct Walk {
  size_t kept = 0, items = 0, depth = 0;
};

void walk(const RespValue& v, size_t depth, Walk& w, bool& truncated_seen) {
  w.kept += v.text.size();
  w.depth = std::max(w.depth, depth);
  if (v.truncated) truncated_seen = true;
  for (const RespValue& i : v.items) {
    w.items++;
    walk(i, depth + 1, w, truncated_seen);
  }
  if (v.aggregate() && !v.null && v.type != '%' && v.type != 'i')
    FUZZ_CHECK(v.items.size() <= static_cast<size_t>(std::max<int64_t>(v.count, 0)) || v.type == 'i');
}

std::string json_of(const RespValue& v) {
  std::string s;
  tapwire::JsonOut out(s);
  v.write_json(out);
  return s;
}

struct Outcome {
  std::vector<RespMessage> out;
};

Outcome one_direction(std::span<const uint8_t> s, uint8_t flags, const RespLimits& lim, Rng rng, size_t max_chunk,
                      bool gaps) {
  RespParser p((flags & 1) ? RespParser::Side::Commands : RespParser::Side::Replies, lim);
  Outcome o;
  uint64_t ts = 1, consumed = 0;
  const size_t mem_cap = 2 * (lim.max_kept + lim.max_items * (sizeof(RespValue) + 16)) + 4 * (lim.max_line + 64) +
                         4 * lim.max_depth * 32 + 1024;
  for (size_t off = 0; off < s.size();) {
    const size_t k = chunk_size(rng, s.size() - off, max_chunk);
    if (gaps && rng.below(8) == 0) {
      p.on_gap(k, o.out);
    } else {
      ts++;
      const ParseResult r = p.feed(s.subspan(off, k), ts, o.out);
      FUZZ_CHECK(r.consumed == k);
      consumed += k;
    }
    off += k;
    FUZZ_CHECK(p.memory_bytes() <= mem_cap, std::to_string(p.memory_bytes()) + " bytes held");
  }
  if (flags & 8) p.on_close(ts + 1, o.out);
  uint64_t wire = 0;
  for (const RespMessage& m : o.out) {
    Walk w;
    bool truncated_seen = false;
    walk(m.value, 0, w, truncated_seen);
    FUZZ_CHECK(w.kept <= lim.max_kept, std::to_string(w.kept) + " bytes kept");
    FUZZ_CHECK(w.items <= lim.max_items, std::to_string(w.items) + " values kept");
    FUZZ_CHECK(w.depth <= lim.max_depth + 1);
    FUZZ_CHECK(!truncated_seen || m.truncated);
    FUZZ_CHECK(!m.protocol_error || !m.error.empty());
    FUZZ_CHECK(m.ts_first_ns <= m.ts_last_ns || m.incomplete);
    FUZZ_CHECK(m.heap == resp_value_heap_bytes(m.value) + string_heap_bytes(m.error));
    (void)json_of(m.value);
    wire += m.wire_size;
  }
  if (!gaps) FUZZ_CHECK(wire <= consumed, std::to_string(wire) + " in messages, " + std::to_string(consumed));
  return o;
}

class Ctx final : public SessionContext {
 public:
  DissectLimits lim;
  ProtocolCounters counters_;
  uint64_t seq = 0;
  size_t calls = 0;
  void emit(CallContent&& c) override {
    calls++;
    FUZZ_CHECK(std::string(c.protocol) == kRedis);
    FUZZ_CHECK(c.has_request() || c.has_response());
    FUZZ_CHECK(c.status >= -1 && c.status <= 1);
    FUZZ_CHECK(c.has_response() || c.status == -1);
    FUZZ_CHECK(c.path.size() <= 1024);
    std::string s;
    tapwire::JsonOut out(s);
    if (c.request) c.request->write_json(out);
    if (c.response) c.response->write_json(out);
  }
  uint64_t next_seq() override { return ++seq; }
  uint64_t key_of(uint64_t ts, uint64_t extra) const override { return ts ^ extra; }
  ProtocolCounters& counters(std::string_view) override { return counters_; }
  bool enabled(std::string_view) const override { return true; }
  const DissectLimits& limits() const override { return lim; }
};

void session(std::span<const uint8_t> s, uint8_t flags, uint8_t l, Rng rng) {
  Ctx ctx;
  if (flags & 2) {
    ctx.lim.max_body_kept = (l & 0x0f) * 7u;
    ctx.lim.max_headers = ((l >> 4) & 3) * 5u + 1;
    ctx.lim.max_pending = ((l >> 6) & 3) * 2u + 1;
  }
  ctx.lim.request_timeout_ns = 50;
  RedisProtocol proto;
  auto sess = proto.open(ctx);
  uint64_t ts = 1;
  for (size_t off = 0; off < s.size();) {
    const size_t k = chunk_size(rng, s.size() - off, 64);
    const Dir d = rng.below(2) ? Dir::ClientToServer : Dir::ServerToClient;
    ts += rng.below(20);
    switch (rng.below(16)) {
      case 0:
        if (flags & 4) sess->gap(d, k);
        break;
      case 1:
        sess->expire(ts);
        break;
      case 2:
        sess->shed_bodies();
        break;
      case 3:
        sess->shed_buffers(ts);
        break;
      default:
        break;
    }
    sess->data(d, s.subspan(off, k), ts);
    off += k;
    // Waiting commands: at most max_pending of at most max_body_kept and their values each.
    const size_t cap = (ctx.lim.max_pending + 3) * (4 * ctx.lim.max_body_kept + 2 * ctx.lim.max_headers * 160 + 1024) +
                       (1 << 20);
    FUZZ_CHECK(sess->memory_bytes() <= cap, std::to_string(sess->memory_bytes()) + " bytes held");
  }
  sess->close(kFlagClosed, ts + 1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t flags = in.u8();
  const uint8_t lbyte = in.u8();
  const uint32_t seed = in.u32();
  const std::span<const uint8_t> stream = in.rest();

  const size_t cut = std::min<size_t>(stream.size(), 4096);
  const int whole = resp_detect(stream.subspan(0, cut));
  FUZZ_CHECK(whole >= -1 && whole <= 2);

  if (flags & 16) {
    session(stream, flags, lbyte, Rng(seed));
    return 0;
  }
  const RespLimits lim = limits_from(flags, lbyte);
  const bool gaps = flags & 4;
  Outcome split = one_direction(stream, flags, lim, Rng(seed), 64, gaps);
  if (gaps) return 0;
  Outcome all = one_direction(stream, flags, lim, Rng(seed), 0, false);
  FUZZ_CHECK(split.out.size() == all.out.size(),
             std::to_string(split.out.size()) + " split, " + std::to_string(all.out.size()) + " whole");
  for (size_t i = 0; i < split.out.size(); i++) {
    const RespMessage &a = split.out[i], &b = all.out[i];
    FUZZ_CHECK(json_of(a.value) == json_of(b.value), "message " + std::to_string(i));
    FUZZ_CHECK(a.wire_size == b.wire_size && a.truncated == b.truncated && a.protocol_error == b.protocol_error &&
                   a.incomplete == b.incomplete && a.error == b.error,
               "message " + std::to_string(i));
  }
  return 0;
}

// PostgreSQL session (userspace/protocols/postgres/), both directions, as
// the dissector drives it (its data/gap/expire/close and memory calls),
// through a SessionContext that keeps the calls; and detection.
//
// Input: [flags u8][seed u32] then chunks [h u8][len u16 LE][bytes]:
//   h bit 0: the server's bytes (else the client's)
//     bit 1: a gap in that direction before them
//     bit 2: expire() a minute later after them
//     bit 3: shed_bodies() and shed_buffers() after them
//   flags bit 0: small limits (8..71 bytes kept, 1..4 pending)
//         bit 1: close() at the end (else the calls still pending stay)
//
// Checked: the session's memory within a bound of its caps after every
// piece, every call's record JSON well formed (parses back), status in
// {-1, 0, 1}, a request or a response on every call; detection answers
// within its contract; and without gaps, sheds or parse errors the same
// calls whatever the split of each chunk.
// libFuzzer: -max_len=65536
#include <nlohmann/json.hpp>
#include <vector>

#include "fuzz_common.hpp"
#include "postgres/session.hpp"

namespace {

using tapwire::fuzz::chunk_size;
using tapwire::fuzz::Reader;
using tapwire::fuzz::Rng;
using namespace tapwire::proto;

class Ctx final : public SessionContext {
 public:
  explicit Ctx(const DissectLimits& l) : lim_(l) {}
  void emit(CallContent&& c) override {
    FUZZ_CHECK(c.has_request() || c.has_response());
    FUZZ_CHECK(c.status >= -1 && c.status <= 1, std::to_string(c.status));
    FUZZ_CHECK(std::string(c.protocol) == "postgres");
    std::string s = c.method + "|" + c.path + "|" + std::to_string(c.status) + "|" + std::to_string(c.flags) + "|" +
                    std::to_string(c.ts_ns) + "|" + std::to_string(c.end_ns) + "|";
    for (const MessagePtr& m : {c.request, c.response}) {
      std::string j;
      if (m) {
        tapwire::JsonOut out(j);
        m->write_json(out);
        FUZZ_CHECK(nlohmann::json::accept(j), j);
      } else {
        j = "null";
      }
      s += j + "|";
    }
    records.push_back(std::move(s));
  }
  uint64_t next_seq() override { return ++seq_; }
  uint64_t key_of(uint64_t ts, uint64_t extra) const override { return ts ^ extra; }
  ProtocolCounters& counters(std::string_view) override { return counters_; }
  bool enabled(std::string_view) const override { return true; }
  const DissectLimits& limits() const override { return lim_; }

  std::vector<std::string> records;
  ProtocolCounters counters_;

 private:
  DissectLimits lim_;
  uint64_t seq_ = 0;
};

struct Chunk {
  uint8_t h;
  std::span<const uint8_t> bytes;
};

struct Outcome {
  std::vector<std::string> records;
  uint64_t parse_errors = 0;
};

Outcome play(const std::vector<Chunk>& chunks, const DissectLimits& lim, uint8_t flags, uint32_t seed, bool split) {
  Ctx ctx(lim);
  PostgresProtocol proto;
  auto s = proto.open(ctx);
  Rng rng(seed);
  uint64_t ts = 1'000'000'000;
  // Buffers hold at most a header and the kept prefix of a message, or a
  // 64 KiB resync candidate, per direction; calls and remembered
  // statements are capped in count and size.
  const size_t kept = lim.max_body_kept;
  const size_t bound = 2 * (70000 + kept + 1024) * 2 + lim.max_pending * (6 * kept + 8192) + 512 * 1024 +
                       16 * (3 * kept + 4096) + (1 << 20);
  for (const Chunk& c : chunks) {
    const Dir d = (c.h & 1) ? Dir::ServerToClient : Dir::ClientToServer;
    ts += 1000;
    if (c.h & 2) s->gap(d, 100);
    size_t off = 0;
    while (off < c.bytes.size()) {
      const size_t k = split ? chunk_size(rng, c.bytes.size() - off, 64) : c.bytes.size() - off;
      s->data(d, c.bytes.subspan(off, k), ts);
      off += k;
      FUZZ_CHECK(s->memory_bytes() <= bound, std::to_string(s->memory_bytes()) + " bytes held");
      FUZZ_CHECK(s->buffered_bytes() <= s->memory_bytes());
    }
    if (c.h & 4) s->expire(ts + 61'000'000'000ull);
    if (c.h & 8) {
      s->shed_bodies();
      s->shed_buffers(ts);
    }
  }
  if (flags & 2) s->close(kFlagClosed, ts + 1);
  return {std::move(ctx.records), ctx.counters_.parse_errors};
}

void detection(std::span<const uint8_t> b) {
  PostgresProtocol p;
  FlowView fv;
  for (int side = 0; side < 2; side++) {
    const Detection d = p.detect(b, side, fv);
    FUZZ_CHECK(!(d.matched && d.need_more));
    if (d.matched) FUZZ_CHECK(d.client_side == 0 || d.client_side == 1);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t flags = in.u8();
  const uint32_t seed = in.u32();
  std::vector<Chunk> chunks;
  bool gaps = false;
  while (!in.empty() && chunks.size() < 512) {
    const uint8_t h = in.u8();
    const uint16_t n = in.u16();
    chunks.push_back({h, in.bytes(n)});
    gaps |= (h & 10) != 0;
  }
  DissectLimits lim;
  if (flags & 1) {
    lim.max_body_kept = 8 + (seed & 63);
    lim.max_pending = 1 + ((seed >> 8) & 3);
  }
  if (!chunks.empty()) detection(chunks.front().bytes);

  const Outcome a = play(chunks, lim, flags, seed, true);
  if (gaps) return 0;
  const Outcome b = play(chunks, lim, flags, seed, false);
  if (a.parse_errors || b.parse_errors) return 0;
  FUZZ_CHECK(a.records.size() == b.records.size(),
             std::to_string(a.records.size()) + " calls split, " + std::to_string(b.records.size()) + " whole");
  for (size_t i = 0; i < a.records.size(); i++)
    FUZZ_CHECK(a.records[i] == b.records[i], "call " + std::to_string(i) + ":\n" + a.records[i] + "\n" + b.records[i]);
  return 0;
}

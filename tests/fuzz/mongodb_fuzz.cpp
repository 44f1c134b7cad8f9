// MongoDB wire protocol (userspace/protocols/mongodb/): the session of one
// connection fed both directions in chunks chosen by the input (as the
// engine feeds it), the message parser and the BSON → JSON writer on the raw
// bytes, and detection.
//
// Input: [flags u8][seed u32][client length u16][client bytes][server bytes]
//   flags bit 0: small limits (max_body_kept 200, max_pending 4)
//         bit 1: lose chunks now and then (gap)
//         bit 2: close at the end instead of ending each direction
//         bit 3: shed bodies and buffers once, half-way
//
// Checked: every record is valid JSON within its caps (document at most
// max_body_kept plus closing brackets), flags and status consistent, the
// session's memory bounded (buffered bytes within a message's kept prefix or
// the scan window, pending requests within max_pending), nothing left after
// close; without gaps or shedding, the same records whatever the split;
// parse_mongo_message and bson_to_json never fail on any bytes; detection
// gives one answer (never matched and need_more at once).
// libFuzzer: -max_len=65536
#include <nlohmann/json.hpp>
#include <vector>

#include "fuzz_common.hpp"
#include "mongodb/session.hpp"
#include "mongodb/wire.hpp"

namespace {

using tapwire::fuzz::chunk_size;
using tapwire::fuzz::Reader;
using tapwire::fuzz::Rng;
using namespace tapwire::proto;

struct Ctx final : SessionContext {
  DissectLimits lim;
  ProtocolCounters counters_;
  std::vector<std::string> records;
  uint64_t seq = 0;
  void emit(CallContent&& c) override {
    std::string s;
    tapwire::JsonOut out(s);
    out.begin_object();
    out.field("method", c.method);
    out.field("path", c.path);
    out.field("status", c.status);
    out.field("flags", uint64_t{c.flags});
    out.key("request");
    if (c.request) c.request->write_json(out); else out.null();
    out.key("response");
    if (c.response) c.response->write_json(out); else out.null();
    out.end_object();
    FUZZ_CHECK(c.request || c.response);
    FUZZ_CHECK(c.status == -1 || c.response, "a status without a response");
    FUZZ_CHECK(!c.response || c.status != -1, "a response without a status");
    FUZZ_CHECK(c.method.size() <= 128 && c.path.size() <= 128 + 1 + 256);
    for (const MessagePtr* m : {&c.request, &c.response}) {
      if (!*m) continue;
      const auto& rec = static_cast<const MongoRecord&>(**m);
      FUZZ_CHECK(rec.msg.document.size() <= lim.max_body_kept + 2 * 64 + 16,
                 std::to_string(rec.msg.document.size()) + " bytes of document");
      FUZZ_CHECK(rec.msg.protocol_error == !rec.msg.error.empty());
    }
    const auto j = nlohmann::json::parse(s, nullptr, false);
    FUZZ_CHECK(!j.is_discarded(), "record is not JSON: " + s.substr(0, 300));
    records.push_back(std::move(s));
  }
  uint64_t next_seq() override { return ++seq; }
  uint64_t key_of(uint64_t ts, uint64_t extra) const override { return ts ^ extra; }
  ProtocolCounters& counters(std::string_view) override { return counters_; }
  bool enabled(std::string_view) const override { return true; }
  const DissectLimits& limits() const override { return lim; }
};

struct Outcome {
  std::vector<std::string> records;
};

Outcome run(std::span<const uint8_t> cs, std::span<const uint8_t> ss, uint8_t flags, uint64_t seed, size_t max_chunk) {
  Ctx ctx;
  if (flags & 1) {
    ctx.lim.max_body_kept = 200;
    ctx.lim.max_pending = 4;
  }
  MongoProtocol proto;
  auto s = proto.open(ctx);
  Rng rng(seed);
  size_t off[2] = {0, 0};
  const std::span<const uint8_t> in[2] = {cs, ss};
  uint64_t ts = 1;
  bool shed = false;
  const size_t cap = ctx.lim.max_body_kept + 16 * 1024;
  for (int guard = 0; guard < 1000000 && (off[0] < cs.size() || off[1] < ss.size()); guard++) {
    int d = static_cast<int>(rng.below(2));
    if (off[d] >= in[d].size()) d = 1 - d;
    const size_t k = chunk_size(rng, in[d].size() - off[d], max_chunk);
    const Dir dir = d == 0 ? Dir::ClientToServer : Dir::ServerToClient;
    if ((flags & 2) && rng.below(8) == 0)
      s->gap(dir, k);
    else
      s->data(dir, in[d].subspan(off[d], k), ts++);
    off[d] += k;
    FUZZ_CHECK(s->buffered_bytes() <= 2 * std::max<size_t>(cap, 4096), std::to_string(s->buffered_bytes()));
    FUZZ_CHECK(s->memory_bytes() <= 2 * (cap + 4096) + (ctx.lim.max_pending + 1) * (4 * cap + 4096) + 65536,
               std::to_string(s->memory_bytes()) + " bytes held");
    if ((flags & 8) && !shed && off[0] + off[1] >= (cs.size() + ss.size()) / 2) {
      s->shed_bodies();
      s->shed_buffers(ts);
      shed = true;
    }
    s->expire(ts);
  }
  if (flags & 4) {
    s->close(kFlagClosed, ts);
  } else {
    s->end(Dir::ClientToServer, ts);
    s->end(Dir::ServerToClient, ts);
    s->close(kFlagClosed, ts);
  }
  FUZZ_CHECK(s->buffered_bytes() == 0);
  return {std::move(ctx.records)};
}

std::string first_diff(const Outcome& a, const Outcome& b) {
  std::string s = std::to_string(a.records.size()) + " vs " + std::to_string(b.records.size()) + " records";
  for (size_t i = 0; i < std::min(a.records.size(), b.records.size()); i++)
    if (a.records[i] != b.records[i])
      return s + "; record " + std::to_string(i) + ":\n  " + a.records[i].substr(0, 600) + "\n  " + b.records[i].substr(0, 600);
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r(data, size);
  const uint8_t flags = r.u8();
  const uint32_t seed = r.u32();
  const uint16_t clen = r.u16();
  const auto cs = r.bytes(clen);
  const auto ss = r.rest();

  // The parser and the writer alone, on the raw bytes.
  MongoLimits lim;
  lim.max_json = 1024;
  for (auto b : {cs, ss}) {
    const MongoMessage m = parse_mongo_message(b.first(std::min<size_t>(b.size(), lim.max_message_kept)),
                                               b.size() >= 4 && mongo_u32(b.data()) == b.size(), lim);
    FUZZ_CHECK(m.document.size() <= lim.max_json + 2 * 64 + 16);
    std::string out;
    bool truncated = false;
    bson_to_json(b, out, lim, truncated);
    FUZZ_CHECK(out.empty() || !nlohmann::json::parse(out, nullptr, false).is_discarded(), out.substr(0, 200));
    // Detection on prefixes: never matched and waiting at once.
    MongoProtocol p;
    FlowView v;
    for (size_t n : {size_t{4}, size_t{16}, size_t{64}, size_t{512}, b.size()}) {
      if (n > b.size()) continue;
      const Detection d = p.detect(b.first(n), 0, v);
      FUZZ_CHECK(!(d.matched && d.need_more));
      FUZZ_CHECK(!d.matched || d.client_side == 0 || d.client_side == 1);
    }
  }

  const Outcome split = run(cs, ss, flags, seed, 64);
  if (flags & (2 | 8)) return 0;
  // Resumable: where the streams were cut must not change the records. The
  // interleaving of the two directions may (responses before their
  // requests), so compare one direction at a time.
  const Outcome whole_c = run(cs, {}, flags, seed, 0);
  const Outcome split_c = run(cs, {}, flags, seed, 64);
  FUZZ_CHECK(whole_c.records == split_c.records, "client records differ by split: " + first_diff(whole_c, split_c));
  const Outcome whole_s = run({}, ss, flags, seed, 0);
  const Outcome split_s = run({}, ss, flags, seed, 64);
  FUZZ_CHECK(whole_s.records == split_s.records, "server records differ by split: " + first_diff(whole_s, split_s));
  return 0;
}

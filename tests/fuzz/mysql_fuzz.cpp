// MySQL / MariaDB session (userspace/protocols/mysql/session.hpp), both
// directions of one connection, fed in splits chosen by the input, with
// gaps, request expiry, a direction's end and the close; and detection on
// each side's first bytes.
//
// Input: [flags u8][seed u32] then operations until the end:
//   [op u8][len u16][len bytes]
//   op bit 0: the server's direction, else the client's
//   op bits 1-2: 0 data (cut in chunks by the seed), 1 gap of len bytes,
//                2 expire (time moves on by len seconds), 3 that direction's end
//   flags bit 0: small limits (64 bytes kept per message, 4 pending)
//         bit 1: close at the end (flagged closed), else shed buffers and bodies first
//
// Checked: the session's memory within its caps after every operation,
// every call's record written as JSON (valid UTF-8 in, one object out), a
// method on every call with a request, the status consistent with the
// response (-1 without one), and, without gaps or expiry, the same records
// whatever the split.
// libFuzzer: -max_len=16384
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "json_out.hpp"
#include "mysql/mysql.hpp"
#include "mysql/session.hpp"

namespace {

using tapwire::fuzz::chunk_size;
using tapwire::fuzz::Reader;
using tapwire::fuzz::Rng;
using namespace tapwire::proto;

struct Ctx final : SessionContext {
  std::vector<std::string> records;
  ProtocolCounters c;
  DissectLimits lim;
  uint64_t seq = 0;
  void emit(CallContent&& call) override {
    std::string s;
    tapwire::JsonOut j(s);
    j.begin_object();
    j.field("method", call.method);
    j.field("path", call.path);
    j.field("status", call.status);
    j.field("flags", static_cast<uint64_t>(call.flags));
    j.key("request");
    if (call.request)
      call.request->write_json(j);
    else
      j.null();
    j.key("response");
    if (call.response)
      call.response->write_json(j);
    else
      j.null();
    j.end_object();
    FUZZ_CHECK(call.request || call.response);
    FUZZ_CHECK(!call.request || !call.method.empty());
    if (!call.response) FUZZ_CHECK(call.status == -1, std::to_string(call.status));
    if (call.response) FUZZ_CHECK(call.status >= 0 && call.status <= 0xffff, std::to_string(call.status));
    FUZZ_CHECK(call.end_ns == 0 || call.end_ns >= call.ts_ns || (call.flags & kFlagOrphanResponse));
    if (call.request) FUZZ_CHECK(call.request->body_bytes() <= lim.max_body_kept + 4);
    records.push_back(std::move(s));
  }
  uint64_t next_seq() override { return ++seq; }
  uint64_t key_of(uint64_t, uint64_t) const override { return 0; }
  ProtocolCounters& counters(std::string_view) override { return c; }
  bool enabled(std::string_view) const override { return true; }
  const DissectLimits& limits() const override { return lim; }
};

struct Op {
  uint8_t op;
  uint16_t len;
  std::span<const uint8_t> bytes;
};

std::vector<std::string> run(const std::vector<Op>& ops, uint8_t flags, Rng rng, size_t max_chunk) {
  Ctx ctx;
  if (flags & 1) {
    ctx.lim.max_body_kept = 64;
    ctx.lim.max_pending = 4;
  }
  MysqlProtocol p;
  auto s = p.open(ctx);
  uint64_t ts = 1'000'000'000;
  // The parsers' caps: a packet's kept bytes per direction (64 KiB / 1 KiB),
  // statement texts (256 KiB), pending calls, an inflater and its 16 KiB of
  // output, the resync holds.
  const size_t cap = 2 * ctx.lim.max_body_kept + (256 << 10) + ctx.lim.max_pending * (2 * ctx.lim.max_body_kept + 2048) +
                     (200 << 10);
  for (const Op& o : ops) {
    const Dir d = (o.op & 1) ? Dir::ServerToClient : Dir::ClientToServer;
    switch ((o.op >> 1) & 3) {
      case 0:
        for (size_t off = 0; off < o.bytes.size();) {
          const size_t k = chunk_size(rng, o.bytes.size() - off, max_chunk);
          s->data(d, o.bytes.subspan(off, k), ts);
          off += k;
        }
        break;
      case 1:
        s->gap(d, o.len);
        break;
      case 2:
        ts += uint64_t{o.len} * 1'000'000'000ull;
        s->expire(ts);
        break;
      case 3:
        s->end(d, ts);
        break;
    }
    ts += 1000;
    FUZZ_CHECK(s->memory_bytes() <= cap, std::to_string(s->memory_bytes()) + " bytes held, cap " + std::to_string(cap));
  }
  if (!(flags & 2)) {
    s->shed_bodies();
    s->shed_buffers(ts);
  }
  s->close(kFlagClosed, ts);
  return ctx.records;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t flags = in.u8();
  const uint32_t seed = in.u32();
  std::vector<Op> ops;
  bool calm = true;  // no gap, no expiry: the split must not matter
  std::vector<uint8_t> first[2];
  while (!in.empty() && ops.size() < 4096) {
    Op o;
    o.op = in.u8();
    o.len = in.u16();
    if (((o.op >> 1) & 3) == 0) {
      o.bytes = in.bytes(o.len);
      auto& f = first[o.op & 1];
      if (f.size() < 4096) f.insert(f.end(), o.bytes.begin(), o.bytes.begin() + std::min<size_t>(o.bytes.size(), 4096 - f.size()));
    } else if (((o.op >> 1) & 3) != 3) {
      calm = false;
    }
    ops.push_back(o);
  }
  MysqlProtocol p;
  FlowView v;
  for (int side = 0; side < 2; side++) {
    const Detection d = p.detect(first[side], side, v);
    FUZZ_CHECK(!(d.matched && d.need_more));
    if (d.matched) FUZZ_CHECK(d.client_side == 0 || d.client_side == 1);
  }
  const auto split = run(ops, flags, Rng(seed), 64);
  // Joined mid-connection (no greeting first), the answer is looked for at
  // the start of a chunk: that depends on the split.
  if (ops.empty() || (ops[0].op & 7) != 1 || tapwire::proto::mysql::looks_like_greeting(ops[0].bytes) != 1) calm = false;
  if (!calm) return 0;
  const auto whole = run(ops, flags, Rng(seed), 0);
  FUZZ_CHECK(split.size() == whole.size(),
             std::to_string(split.size()) + " calls split, " + std::to_string(whole.size()) + " whole");
  for (size_t i = 0; i < split.size(); i++) FUZZ_CHECK(split[i] == whole[i], "call " + std::to_string(i) + "\n" + split[i] + "\n" + whole[i]);
  return 0;
}

// AMQP 0-9-1 (userspace/protocols/amqp/): detection, and a session fed
// both directions of a connection the way the dissector feeds it, in
// segments that alternate between client and server, each segment whole and
// then cut into random chunks.
//
// Input: [flags u8][seed u32][cut u16][stream...]
//   flags bit 0: small limits (body kept, frame buffered, channels, table entries and depth)
//         bit 1: lose bytes now and then (gap) instead of checking split invariance
//         bit 2: the client's part starts with the protocol header
//         bit 3: shed bodies and buffers now and then
//   the stream's first `cut % (size+1)` bytes are the client's, the rest the server's.
//
// Checked: detection answers consistently (never matched and need_more,
// a side when the protocol header matched); every call is well formed
// (a request or a response, JSON that parses, kept body within the limit,
// the summary consistent with the record); the session's memory stays
// within a bound of its limits; the same calls whatever the split (when no
// bytes are lost); nothing pending after close.
// libFuzzer: -max_len=16384
#include <nlohmann/json.hpp>

#include <map>
#include <vector>

#include "amqp/session.hpp"
#include "fuzz_common.hpp"

namespace {

using tapwire::fuzz::chunk_size;
using tapwire::fuzz::Reader;
using tapwire::fuzz::Rng;
using namespace tapwire::proto;

class Ctx final : public SessionContext {
 public:
  explicit Ctx(const DissectLimits& l) : lim_(l) {}
  void emit(CallContent&& c) override {
    FUZZ_CHECK(c.request || c.response);
    FUZZ_CHECK(std::string(c.protocol) == "amqp");
    std::string s;
    tapwire::JsonOut out(s);
    out.begin_object();
    out.field("method", c.method);
    out.field("path", c.path);
    out.field("status", c.status);
    out.field("flags", uint64_t{c.flags});
    out.field("one", c.one_message);
    for (auto [name, m] : {std::pair{"request", c.request.get()}, {"response", c.response.get()}}) {
      out.key(name);
      if (!m) {
        out.null();
        continue;
      }
      m->write_json(out);
      FUZZ_CHECK(m->body_bytes() <= lim_.max_body_kept);
      FUZZ_CHECK(m->heap_bytes() > 0);
    }
    out.end_object();
    auto j = nlohmann::json::parse(s, nullptr, false);
    FUZZ_CHECK(!j.is_discarded(), s);
    FUZZ_CHECK(c.status >= -1 && c.status <= 0xffff);
    if (c.request && c.response && !(c.flags & kFlagOrphanResponse)) FUZZ_CHECK(c.status >= 0);
    const auto& main = c.request ? j["request"] : j["response"];
    FUZZ_CHECK(main["method"] == c.method, s);
    calls.push_back(std::move(s));
  }
  uint64_t next_seq() override { return ++seq_; }
  uint64_t key_of(uint64_t ts, uint64_t extra) const override { return ts ^ extra; }
  ProtocolCounters& counters(std::string_view p) override { return counters_[std::string(p)]; }
  bool enabled(std::string_view) const override { return true; }
  const DissectLimits& limits() const override { return lim_; }

  std::vector<std::string> calls;

 private:
  DissectLimits lim_;
  uint64_t seq_ = 0;
  std::map<std::string, ProtocolCounters> counters_;
};

struct Segment {
  bool client;
  std::span<const uint8_t> bytes;
};

// Runs the segments through a session; `split` cuts each segment into chunks.
std::vector<std::string> run(const std::vector<Segment>& segs, const DissectLimits& lim, uint64_t seed, bool split,
                             bool gaps, bool shed) {
  Ctx ctx(lim);
  AmqpProtocol p;
  auto s = p.open(ctx);
  Rng rng(seed);
  // A bound on what a session may hold: per direction a buffered frame and
  // the content of max channels, plus the pending requests (each a method
  // frame at most), with room for allocator overheads.
  const size_t bound = 4 * (128 * 1024 + 64 * (lim.max_body_kept + 16 * 1024)) + lim.max_pending * 160 * 1024;
  uint64_t ts = 1;
  for (const Segment& g : segs) {
    const Dir d = g.client ? Dir::ClientToServer : Dir::ServerToClient;
    size_t off = 0;
    while (off < g.bytes.size()) {
      const size_t k = split ? chunk_size(rng, g.bytes.size() - off, 64) : g.bytes.size() - off;
      if (gaps && rng.below(16) == 0) {
        s->gap(d, 1 + rng.below(64));
        off += std::min(k, g.bytes.size() - off);
        continue;
      }
      s->data(d, g.bytes.subspan(off, k), ts);
      off += k;
      FUZZ_CHECK(s->memory_bytes() <= bound, std::to_string(s->memory_bytes()));
      FUZZ_CHECK(s->buffered_bytes() <= 128 * 1024 + 64 + 8);
      if (shed && rng.below(8) == 0) {
        s->shed_bodies();
        s->shed_buffers(ts);
      }
    }
    ts++;
    if (ts % 4 == 0) s->expire(ts);
  }
  s->close(kFlagClosed, ts + 1);
  return std::move(ctx.calls);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r(data, size);
  const uint8_t flags = r.u8();
  const uint32_t seed = r.u32();
  const uint16_t cut_raw = r.u16();
  std::span<const uint8_t> stream = r.rest();

  // Detection, on each side's first bytes and every prefix of a few.
  AmqpProtocol p;
  FlowView view;
  for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{8}, size_t{11}, stream.size()}) {
    if (n > stream.size()) continue;
    Detection d = p.detect(stream.subspan(0, n), 0, view);
    FUZZ_CHECK(!(d.matched && d.need_more));
    if (d.matched) FUZZ_CHECK(d.client_side >= -1 && d.client_side <= 1);
  }

  DissectLimits lim;
  lim.request_timeout_ns = 3;
  if (flags & 1) {
    lim.max_body_kept = 1 + (seed & 0xff);
    lim.max_headers = 4;
    lim.max_pending = 1 + ((seed >> 8) & 7);
  }
  const size_t cut = stream.empty() ? 0 : cut_raw % (stream.size() + 1);
  static const uint8_t kHeader[8] = {'A', 'M', 'Q', 'P', 0, 0, 9, 1};
  std::vector<uint8_t> client;
  if (flags & 4) client.assign(kHeader, kHeader + 8);
  client.insert(client.end(), stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(cut));
  std::span<const uint8_t> server = stream.subspan(cut);

  // Alternating segments of random sizes.
  std::vector<Segment> segs;
  Rng rng(seed ^ 0x5eed);
  size_t ci = 0, si = 0;
  for (int turn = 0; (ci < client.size() || si < server.size()) && turn < 100000; turn++) {
    const bool c = turn % 2 == 0;
    std::span<const uint8_t> all = c ? std::span<const uint8_t>(client) : server;
    size_t& at = c ? ci : si;
    if (at >= all.size()) continue;
    const size_t k = std::min(all.size() - at, 1 + rng.below(512));
    segs.push_back({c, all.subspan(at, k)});
    at += k;
  }

  const bool gaps = flags & 2, shed = flags & 8;
  auto whole = run(segs, lim, seed, false, false, false);
  auto cut_run = run(segs, lim, seed, true, gaps, shed);
  if (!gaps && !shed) {
    FUZZ_CHECK(whole.size() == cut_run.size(),
               std::to_string(whole.size()) + " calls whole, " + std::to_string(cut_run.size()) + " split");
    for (size_t i = 0; i < whole.size(); i++) FUZZ_CHECK(whole[i] == cut_run[i], whole[i] + "\n" + cut_run[i]);
  }
  return 0;
}

// HTTP/2 connection parser (userspace/protocols/http2/http2.hpp), with the
// gRPC taps and message decoding on top (userspace/protocols/grpc/), fed
// both directions of one connection: the input's bytes are the client's then
// the server's, cut into segments sent alternately (the order a capture
// delivers them), each segment fed whole in one run and in chunks in another.
//
// Input: [flags u8][limits u8][seed u32][cut u16][stream...]
//   the first `cut` bytes of the stream are the client's, the rest the server's
//   flags bit 0: put the client preface in front (a connection seen from its start)
//         bit 1: small limits (from the limits byte)
//         bit 2: gRPC taps (grpc_tap_factory), and gRPC calls built and decoded
//         bit 3: lose a segment now and then (on_gap): no split comparison then
//         bit 4: one segment per direction (client then server), else segments of
//                1 to 256 bytes from the seed
//         bit 5: on_close at the end
//
// Checked: feed() takes every byte; the frame layer's buffers, the kept bytes,
// the streams tracked and memory_bytes() stay within what the limits allow;
// every exchange within its limits and consistent (kept body a prefix of
// body_size, flags); gRPC messages within their caps, protobuf JSON always
// serialisable; and, without gaps, the same exchanges, connection counters and
// gRPC calls whatever the chunking.
// libFuzzer: -max_len=65536
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fuzz_common.hpp"
#include "grpc/grpc.hpp"
#include "grpc/protobuf_wire.hpp"
#include "http2/http2.hpp"

namespace {

using tapwire::fuzz::chunk_size;
using tapwire::fuzz::Reader;
using tapwire::fuzz::Rng;
using namespace tapwire::proto;

Http2Limits limits_from(uint8_t flags, uint8_t l) {
  Http2Limits lim;
  if (flags & 2) {
    lim.max_frame_size = (l & 1) ? 1024 : lim.max_frame_size;
    lim.resync_max_frame = 64 + (l & 0x6) * 64;
    lim.max_header_block_bytes = 64 + ((l >> 3) & 3) * 256;
    lim.max_continuations = (l >> 5) & 3;
    lim.max_header_list_bytes = 100 + ((l >> 3) & 3) * 100;
    lim.max_headers = (l >> 6) & 3;
    lim.max_header_table_size = (l & 0x10) ? 0 : 512;
    lim.max_body_kept = (l >> 2) & 0x1f;
    lim.max_streams = 1 + ((l >> 5) & 3);
    lim.max_held_bytes = 256 + (l & 0xf) * 64;
    lim.max_interim = (l >> 4) & 1;
    lim.max_goaway_debug = l & 7;
  }
  return lim;
}

GrpcLimits grpc_limits(uint8_t flags, uint8_t l) {
  GrpcLimits g;
  if (flags & 2) {
    g.max_messages_kept = l & 3;
    g.max_message_kept = (l >> 2) & 0x3f;
  }
  return g;
}

// What the frame layer may buffer (http2.hpp): per direction, a boundary
// search (the preface, or a frame of at most resync_max_frame plus two
// headers) and a header block.
size_t buffer_bound(const Http2Limits& lim) {
  return 2 * (std::max<size_t>(kHttp2Preface.size(), lim.resync_max_frame + 2 * kHttp2FrameHeader) +
              lim.max_header_block_bytes);
}

size_t memory_bound(const Http2Limits& lim, bool taps) {
  // Streams (exchange, map and index nodes, taps' fixed part), what is kept,
  // buffers (vectors may have grown to twice what they hold), two HPACK tables.
  const size_t per_stream = 2048 + (taps ? 1024 : 0);
  return 64 * 1024 + lim.max_streams * per_stream + lim.max_held_bytes + 2 * buffer_bound(lim) +
         2 * (lim.max_header_table_size + 2048) + 2 * lim.max_goaway_debug;
}

void check_message(const Http2Message& m, const Http2Limits& lim) {
  FUZZ_CHECK(m.body.size() <= lim.max_body_kept);
  FUZZ_CHECK(m.body.size() <= m.body_size);
  FUZZ_CHECK(m.body_truncated == (m.body_size > m.body.size()),
             "body_size " + std::to_string(m.body_size) + ", kept " + std::to_string(m.body.size()));
  FUZZ_CHECK(m.headers.size() <= lim.max_headers && m.trailers.size() <= lim.max_headers);
  size_t kept = 0;
  for (const auto* list : {&m.headers, &m.trailers})
    for (const Header& h : *list) {
      FUZZ_CHECK(h.name.empty() || h.name[0] != ':', "pseudo-field " + h.name + " among fields");
      for (char c : h.name) FUZZ_CHECK(!(c >= 'A' && c <= 'Z'), "upper case in " + h.name);
      kept += h.name.size() + h.value.size() + 32;
    }
  FUZZ_CHECK(m.wire_bytes >= m.body_size);
  FUZZ_CHECK(m.frames > 0 || (m.wire_bytes == 0 && m.body_size == 0));
  (void)kept;
}

void check_exchange(const Http2Exchange& e, const Http2Limits& lim) {
  FUZZ_CHECK(e.stream_id != 0);
  check_message(e.request, lim);
  check_message(e.response, lim);
  FUZZ_CHECK(e.interim.size() <= lim.max_interim);
  FUZZ_CHECK(!e.pushed || (e.stream_id % 2 == 0 && e.promised_on % 2 == 1));
  FUZZ_CHECK(e.status == 0 || (e.status >= 200 && e.status <= 999), std::to_string(e.status));
  // Why it came out: ended both ways, or a flag says what cut it.
  const bool ended = e.request.end_stream && e.response.end_stream;
  const bool partial_end = e.partial && e.response.end_stream && e.request.frames == 0;
  FUZZ_CHECK(ended || partial_end || e.reset || e.goaway || e.incomplete || e.evicted, "exchange out for no reason");
}

void check_grpc(const Http2Exchange& e, const GrpcLimits& g) {
  if (!is_grpc(e)) return;
  const GrpcCall c = grpc_call(e, g);
  const SchemalessGrpcDecoder dec;
  for (const GrpcMessages* m : {&c.request, &c.response}) {
    FUZZ_CHECK(m->kept.size() <= g.max_messages_kept);
    FUZZ_CHECK(m->kept.size() <= m->count + 1);
    FUZZ_CHECK(m->compressed <= m->count);
    for (const GrpcMessage& k : m->kept) {
      FUZZ_CHECK(k.data.size() <= g.max_message_kept && k.data.size() <= k.length);
      FUZZ_CHECK(k.truncated == (k.data.size() < k.length) || k.truncated);
      (void)dec.decode(c.service, c.method, m == &c.request, k).dump();  // throws on invalid UTF-8
    }
  }
}

// The gRPC view of a call, for comparing runs.
std::string grpc_summary(const Http2Exchange& e, const GrpcLimits& g) {
  if (!is_grpc(e)) return "";
  const GrpcCall c = grpc_call(e, g);
  std::string s = c.service + "/" + c.method + " " + std::to_string(c.status) + " " + c.message;
  for (const GrpcMessages* m : {&c.request, &c.response}) {
    s += " [" + std::to_string(m->count) + " " + std::to_string(m->bytes) + " " + std::to_string(m->incomplete) +
         std::to_string(m->bad_flag) + std::to_string(m->unframed);
    for (const GrpcMessage& k : m->kept) s += " " + std::to_string(k.length) + ":" + k.data + ":" + std::to_string(k.truncated);
    s += "]";
  }
  return s;
}

std::string fields(const std::vector<Header>& hs) {
  std::string s;
  for (const Header& h : hs) s += h.name + ": " + h.value + "\n";
  return s;
}

// Everything but timestamps.
std::string describe(const Http2Exchange& e, const GrpcLimits& g) {
  std::string s = std::to_string(e.stream_id) + " " + e.method + " " + e.scheme + " " + e.authority + " " + e.path + " " +
                  e.protocol + " " + std::to_string(e.status) + "\n";
  for (int i : e.interim) s += std::to_string(i) + ",";
  for (const Http2Message* m : {&e.request, &e.response}) {
    s += fields(m->headers) + "--\n" + fields(m->trailers) + "--\n" + m->body + "\n" + std::to_string(m->body_size) + " " +
         std::to_string(m->header_bytes) + " " + std::to_string(m->wire_bytes) + " " + std::to_string(m->frames) + " " +
         std::to_string(m->has_headers) + std::to_string(m->end_stream) + std::to_string(m->headers_truncated) +
         std::to_string(m->body_truncated) + "\n";
  }
  const bool flags[] = {e.pushed, e.reset, e.goaway, e.incomplete, e.partial, e.gap, e.evicted,
                        e.hpack_unknown, e.hpack_error, e.header_overflow, e.memory_capped};
  for (bool f : flags) s += f ? '1' : '0';
  s += " " + std::to_string(e.promised_on) + " " + std::to_string(static_cast<int>(e.reset_by)) + " " +
       std::to_string(e.rst_error) + " " + std::to_string(e.goaway_error) + "\n";
  return s + grpc_summary(e, g);
}

std::string describe(const Http2ConnInfo& i) {
  std::string s = std::to_string(i.preface) + " " + std::to_string(i.streams) + " " + std::to_string(i.evicted_streams) +
                  " " + std::to_string(i.orphan_frames);
  for (int d = 0; d < 2; d++) {
    const uint64_t v[] = {i.resynced[d], i.skipped_bytes[d], i.stopped[d], i.frames[d], i.pings[d],
                          i.malformed_frames[d], i.hpack_errors[d], i.header_overflows[d], i.unknown_frames[d],
                          i.goaway[d], i.goaway_last_stream[d], i.goaway_error[d]};
    for (uint64_t x : v) s += " " + std::to_string(x);
    s += " " + i.goaway_debug[d];
  }
  return s;
}

struct Segment {
  Http2Dir dir;
  std::span<const uint8_t> bytes;
  bool lost;
};

// One run: segments in order, each whole (chunk_rng null) or in chunks.
std::string run(const std::vector<Segment>& segs, const Http2Limits& lim, const GrpcLimits& g, bool taps, bool close,
                Rng* chunk_rng) {
  Http2Parser p(lim, taps ? grpc_tap_factory(g) : Http2TapFactory{});
  std::vector<Http2Exchange> out;
  std::string all;
  const size_t buf_max = buffer_bound(lim), mem_max = memory_bound(lim, taps);
  uint64_t ts = 1;
  auto drain = [&] {
    for (const Http2Exchange& e : out) {
      check_exchange(e, lim);
      check_grpc(e, g);
      all += describe(e, g) + "\n";
    }
    out.clear();
  };
  for (const Segment& s : segs) {
    if (s.lost) {
      p.on_gap(s.dir, s.bytes.size());
      continue;
    }
    size_t off = 0;
    while (off < s.bytes.size()) {
      const size_t k = chunk_rng ? chunk_size(*chunk_rng, s.bytes.size() - off, 64) : s.bytes.size() - off;
      const ParseResult r = p.feed(s.dir, s.bytes.subspan(off, k), ts++, out);
      FUZZ_CHECK(r.consumed == k);
      FUZZ_CHECK(r.status != ParseStatus::NeedMoreData);
      off += k;
      FUZZ_CHECK(p.buffered_bytes() <= buf_max, "buffered " + std::to_string(p.buffered_bytes()));
      FUZZ_CHECK(p.held_bytes() <= lim.max_held_bytes, "held " + std::to_string(p.held_bytes()));
      FUZZ_CHECK(p.open_streams() <= lim.max_streams);
      FUZZ_CHECK(p.memory_bytes() <= mem_max, "memory " + std::to_string(p.memory_bytes()) + " > " + std::to_string(mem_max));
      drain();
    }
  }
  if (close) {
    p.on_close(ts, out);
    drain();
    FUZZ_CHECK(p.open_streams() == 0 && p.held_bytes() == 0);
  }
  const Http2ConnInfo& i = p.info();
  for (int d = 0; d < 2; d++) FUZZ_CHECK(i.goaway_debug[d].size() <= lim.max_goaway_debug);
  return all + describe(i);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t flags = in.u8();
  const uint8_t lbyte = in.u8();
  const uint32_t seed = in.u32();
  const size_t cut = in.u16();
  const std::span<const uint8_t> stream = in.rest();
  const Http2Limits lim = limits_from(flags, lbyte);
  const GrpcLimits g = grpc_limits(flags, lbyte);
  const bool taps = flags & 4, gaps = flags & 8, close = flags & 32;

  // Detection reads only what it is given.
  (void)looks_like_http2(stream);
  (void)looks_like_http2(stream, Http2Dir::ClientToServer);
  (void)looks_like_http2(stream, Http2Dir::ServerToClient);

  std::string client_bytes;
  if (flags & 1) client_bytes.assign(kHttp2Preface);
  const std::span<const uint8_t> c0 = stream.first(std::min(cut, stream.size()));
  client_bytes.append(reinterpret_cast<const char*>(c0.data()), c0.size());
  const std::span<const uint8_t> client(reinterpret_cast<const uint8_t*>(client_bytes.data()), client_bytes.size());
  const std::span<const uint8_t> server = stream.subspan(c0.size());

  // Segments, alternating while both sides have bytes left.
  std::vector<Segment> segs;
  Rng seg_rng(seed);
  size_t off[2] = {0, 0};
  const std::span<const uint8_t> side[2] = {client, server};
  for (int turn = 0; off[0] < side[0].size() || off[1] < side[1].size(); turn ^= 1) {
    if (off[turn] == side[turn].size()) continue;
    const size_t left = side[turn].size() - off[turn];
    const size_t k = (flags & 16) ? left : std::min(left, 1 + seg_rng.below(256));
    segs.push_back({static_cast<Http2Dir>(turn), side[turn].subspan(off[turn], k), gaps && seg_rng.below(8) == 0});
    off[turn] += k;
  }

  Rng chunk_rng(seed ^ 0x5bd1e995u);
  const std::string chunked = run(segs, lim, g, taps, close, &chunk_rng);
  if (gaps) return 0;
  // Resumable at every byte: the chunking must not change anything.
  const std::string whole = run(segs, lim, g, taps, close, nullptr);
  FUZZ_CHECK(chunked == whole, "chunked:\n" + chunked + "\nwhole:\n" + whole);
  return 0;
}

// HTTP/1.x parser (userspace/protocols/http1.hpp), both sides, fed the way
// the dissector feeds it (unconsumed bytes presented again with more after
// them), in splits chosen by the input's first bytes.
//
// Input: [flags u8][limits u8][seed u32][cut u16][stream...]
//   flags bit 0: Responses side (else Requests)
//         bit 1: a conversation: requests and responses interleaved, each
//                request's method told to the response parser (requests are
//                the first `cut` bytes of the stream, responses the rest)
//         bit 2: small limits (header bytes, kept body, headers, pending)
//         bit 3: lose chunks of the stream (on_gap) now and then
//         bit 4: on_close at the end
//         bits 5-7: HEAD / CONNECT / GET answered first (Responses side)
//
// Checked: what feed() returns (consumed within the input, NeedMoreData
// consumes nothing), the unconsumed bytes stay bounded (http1.hpp: at most
// max_header_bytes plus a short tail), every message within its limits and
// consistent, and, without gaps, the same messages whatever the split.
// libFuzzer: -max_len=16384
#include <vector>

#include "fuzz_common.hpp"
#include "http1.hpp"

namespace {

using tapwire::fuzz::chunk_size;
using tapwire::fuzz::Reader;
using tapwire::fuzz::Rng;
using namespace tapwire::proto;

// Leftover the parser may leave unconsumed beyond max_header_bytes: a short
// tail that may begin a message (http1.hpp says < 20 bytes; the longest
// method + SP + one target byte is 19).
constexpr size_t kTailSlack = 20;

bool is_tchar_lower(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

void check_fields(const std::vector<Header>& hs, const HttpLimits& lim) {
  FUZZ_CHECK(hs.size() <= lim.max_headers);
  for (const Header& h : hs) {
    FUZZ_CHECK(!h.name.empty());
    for (char c : h.name) FUZZ_CHECK(is_tchar_lower(c), "header name '" + h.name + "'");
    FUZZ_CHECK(h.value.find_first_of("\r\n") == std::string::npos);
  }
}

void check_message(const HttpMessage& m, bool requests, const HttpLimits& lim) {
  FUZZ_CHECK(m.is_request == requests);
  FUZZ_CHECK(m.body.size() <= lim.max_body_kept);
  FUZZ_CHECK(m.body_size >= m.body.size());
  // http1.hpp: body_truncated = "body longer than what is kept".
  FUZZ_CHECK(m.body_size == m.body.size() || m.body_truncated,
             "body_size " + std::to_string(m.body_size) + ", kept " + std::to_string(m.body.size()));
  FUZZ_CHECK(m.header_bytes <= lim.max_header_bytes);
  FUZZ_CHECK(m.wire_size >= m.header_bytes + m.body_size || m.gap);
  check_fields(m.headers, lim);
  check_fields(m.trailers, lim);
  if (requests) {
    FUZZ_CHECK(!m.method.empty() && !m.target.empty());
    FUZZ_CHECK(m.status == 0);
  } else {
    FUZZ_CHECK(m.status >= 100 && m.status <= 999, std::to_string(m.status));
    FUZZ_CHECK(!m.interim || (m.status < 200 && m.status != 101));
  }
  FUZZ_CHECK(m.version_minor >= 0 && m.version_minor <= 9);
  FUZZ_CHECK(!m.websocket || m.upgrade);
}

bool same_fields(const std::vector<Header>& a, const std::vector<Header>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (a[i].name != b[i].name || a[i].value != b[i].value) return false;
  return true;
}

// Everything but the timestamps, which follow the chunks.
bool same_message(const HttpMessage& a, const HttpMessage& b) {
  return a.is_request == b.is_request && a.method == b.method && a.target == b.target && a.status == b.status &&
         a.reason == b.reason && a.version_minor == b.version_minor && same_fields(a.headers, b.headers) &&
         same_fields(a.trailers, b.trailers) && a.header_bytes == b.header_bytes && a.body_size == b.body_size &&
         a.wire_size == b.wire_size && a.body == b.body && a.chunked == b.chunked &&
         a.body_truncated == b.body_truncated && a.headers_truncated == b.headers_truncated && a.gap == b.gap &&
         a.close_delimited == b.close_delimited && a.upgrade == b.upgrade && a.websocket == b.websocket &&
         a.interim == b.interim;
}

// One direction as the dissector drives it (dissector.cpp http_data).
struct Driver {
  Http1Parser parser;
  bool requests;
  HttpLimits lim;
  std::vector<uint8_t> buf;  // unconsumed bytes
  std::vector<HttpMessage> out;
  uint64_t ts = 1;

  Driver(bool req, const HttpLimits& l)
      : parser(req ? Http1Parser::Side::Requests : Http1Parser::Side::Responses, l), requests(req), lim(l) {}

  void data(std::span<const uint8_t> chunk) {
    ts++;
    buf.insert(buf.end(), chunk.begin(), chunk.end());
    size_t used = 0;
    for (int guard = 0; guard < 100000 && used < buf.size(); guard++) {
      const size_t avail = buf.size() - used;
      ParseResult r = parser.feed(std::span<const uint8_t>(buf).subspan(used), ts, out);
      FUZZ_CHECK(r.consumed <= avail);
      if (r.status == ParseStatus::NeedMoreData) FUZZ_CHECK(r.consumed == 0);
      used += r.consumed;
      if (r.status == ParseStatus::NeedMoreData || r.consumed == 0) break;
    }
    buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    FUZZ_CHECK(parser.switched_protocols() || buf.size() <= lim.max_header_bytes + kTailSlack,
               "unconsumed " + std::to_string(buf.size()) + " bytes");
  }
  void gap(uint64_t len) {
    parser.on_gap(len);
    buf.clear();  // the dissector drops what was unconsumed before a gap
  }
  void close() { parser.on_close(ts, out); }
};

HttpLimits limits_from(uint8_t flags, uint8_t l) {
  HttpLimits lim;
  if (flags & 4) {
    lim.max_header_bytes = 24 + (l & 0x3f) * 4;
    lim.max_body_kept = (l >> 2) & 0x1f;
    lim.max_headers = (l >> 4) & 3;
    lim.max_pending = (l >> 6) & 3;
  }
  return lim;
}

void expect_some(Http1Parser& p, uint8_t flags) {
  static constexpr const char* kMethods[] = {"HEAD", "CONNECT", "GET"};
  for (int i = 0; i < 3; i++)
    if (flags & (0x20 << i)) p.expect_response_to(kMethods[i]);
}

// One side, split by rng (max_chunk 0: in one piece).
std::vector<HttpMessage> one_side(std::span<const uint8_t> s, uint8_t flags, const HttpLimits& lim, Rng rng,
                                  size_t max_chunk, bool gaps, uint64_t* invalid) {
  const bool requests = !(flags & 1);
  Driver d(requests, lim);
  if (!requests) expect_some(d.parser, flags);
  size_t off = 0;
  while (off < s.size()) {
    const size_t k = chunk_size(rng, s.size() - off, max_chunk);
    if (gaps && rng.below(8) == 0)
      d.gap(k);
    else
      d.data(s.subspan(off, k));
    off += k;
    for (auto& m : d.out) check_message(m, requests, lim);
  }
  if (flags & 16) d.close();
  for (auto& m : d.out) check_message(m, requests, lim);
  if (invalid) *invalid = d.parser.invalid_count();
  return std::move(d.out);
}

void conversation(std::span<const uint8_t> s, size_t cut, uint8_t flags, const HttpLimits& lim, Rng rng, bool gaps) {
  cut = std::min(cut, s.size());
  std::span<const uint8_t> part[2] = {s.subspan(0, cut), s.subspan(cut)};
  size_t off[2] = {0, 0};
  Driver d[2] = {Driver(true, lim), Driver(false, lim)};
  while (off[0] < part[0].size() || off[1] < part[1].size()) {
    int side = static_cast<int>(rng.below(2));
    if (off[side] == part[side].size()) side = 1 - side;
    const size_t k = chunk_size(rng, part[side].size() - off[side], 64);
    if (gaps && rng.below(8) == 0)
      d[side].gap(k);
    else
      d[side].data(part[side].subspan(off[side], k));
    off[side] += k;
    for (auto& m : d[0].out) {
      check_message(m, true, lim);
      d[1].parser.expect_response_to(m.method);  // as the dissector does when a request is complete
    }
    d[0].out.clear();
    for (auto& m : d[1].out) check_message(m, false, lim);
    d[1].out.clear();
  }
  if (flags & 16) {
    d[0].close();
    d[1].close();
  }
  for (auto& m : d[0].out) check_message(m, true, lim);
  for (auto& m : d[1].out) check_message(m, false, lim);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t flags = in.u8();
  const HttpLimits lim = limits_from(flags, in.u8());
  const uint32_t seed = in.u32();
  const size_t cut = in.u16();
  const std::span<const uint8_t> stream = in.rest();
  const bool gaps = flags & 8;

  // Detection looks at the first bytes of a stream; it must not read past them.
  (void)looks_like_http1_request(stream);
  (void)looks_like_http1_response(stream);

  if (flags & 2) {
    conversation(stream, cut, flags, lim, Rng(seed), gaps);
    return 0;
  }
  uint64_t invalid_split = 0, invalid_whole = 0;
  std::vector<HttpMessage> split = one_side(stream, flags, lim, Rng(seed), 64, gaps, &invalid_split);
  if (gaps) return 0;
  // The parser is resumable: where the stream was cut must not change what it finds.
  std::vector<HttpMessage> whole = one_side(stream, flags, lim, Rng(seed), 0, false, &invalid_whole);
  FUZZ_CHECK(split.size() == whole.size(),
             std::to_string(split.size()) + " messages split, " + std::to_string(whole.size()) + " whole");
  for (size_t i = 0; i < split.size(); i++) FUZZ_CHECK(same_message(split[i], whole[i]), "message " + std::to_string(i));
  FUZZ_CHECK(invalid_split == invalid_whole,
             std::to_string(invalid_split) + " invalid split, " + std::to_string(invalid_whole) + " whole");
  return 0;
}

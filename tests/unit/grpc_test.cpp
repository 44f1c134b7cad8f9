// gRPC on HTTP/2 exchanges (unary, streaming, Trailers-Only, reset), message
// framing at every split, and the schema-less protobuf decoder on messages
// encoded by hand (scalars, nested, packed, strings vs bytes, caps).
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "grpc/grpc.hpp"
#include "grpc/protobuf_wire.hpp"
#include "http2/frame_writer.hpp"
#include "http2/http2.hpp"

namespace {

using namespace tapwire::proto;
namespace w = tapwire::proto::h2w;

// The fields without their "wire_type" (checked on its own below): the
// expectations name what each field reads as.
nlohmann::json no_wire(nlohmann::json j) {
  if (j.is_array()) {
    for (auto& x : j) x = no_wire(x);
  } else if (j.is_object()) {
    j.erase("wire_type");
    for (auto& [k, v] : j.items()) v = no_wire(v);
  }
  return j;
}
using nlohmann::json;

constexpr Http2Dir kC = Http2Dir::ClientToServer;
constexpr Http2Dir kS = Http2Dir::ServerToClient;

std::span<const uint8_t> bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

// ---- protobuf encoding, by hand --------------------------------------------------

std::string varint(uint64_t v) {
  std::string s;
  while (v >= 0x80) {
    s.push_back(static_cast<char>(0x80 | (v & 0x7f)));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
  return s;
}
std::string tag(uint32_t field, int wire) { return varint(uint64_t{field} << 3 | static_cast<uint64_t>(wire)); }
std::string pb_varint(uint32_t f, uint64_t v) { return tag(f, 0) + varint(v); }
std::string pb_len(uint32_t f, std::string_view b) { return tag(f, 2) + varint(b.size()) + std::string(b); }
std::string pb_fixed64(uint32_t f, uint64_t v) {
  std::string s = tag(f, 1);
  for (int i = 0; i < 8; i++) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return s;
}
std::string pb_fixed32(uint32_t f, uint32_t v) {
  std::string s = tag(f, 5);
  for (int i = 0; i < 4; i++) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return s;
}

ProtobufResult decode(std::string_view s, const ProtobufLimits& lim = {}) { return decode_protobuf(bytes(s), lim); }

// ---- protobuf ----------------------------------------------------------------------

TEST(ProtobufWire, ScalarsAndStrings) {
  // The encoding guide's examples: field 1 = 150, field 2 = "testing".
  const std::string m = std::string("\x08\x96\x01", 3) + pb_len(2, "testing");
  const ProtobufResult r = decode(m);
  ASSERT_TRUE(r.ok);
  EXPECT_FALSE(r.truncated);
  EXPECT_EQ(no_wire(r.fields), json::parse(R"([{"field":1,"type":"varint","value":150},
                                      {"field":2,"type":"string","value":"testing"}])"));
}

TEST(ProtobufWire, NestedMessages) {
  const std::string inner = pb_varint(1, 150) + pb_len(2, "x\x01y");  // "x\x01y" is not text: tried as a message, fails, UTF-8
  const std::string m = pb_varint(1, 7) + pb_len(3, inner) + pb_len(3, pb_len(1, pb_varint(5, 1)));
  const ProtobufResult r = decode(m);
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(no_wire(r.fields), json::parse(R"([
    {"field":1,"type":"varint","value":7},
    {"field":3,"type":"message","value":[
      {"field":1,"type":"varint","value":150},
      {"field":2,"type":"string","value":"x\u0001y"}]},
    {"field":3,"type":"message","value":[
      {"field":1,"type":"message","value":[{"field":5,"type":"varint","value":1}]}]}])"));
}

TEST(ProtobufWire, PackedRepeatedIsBytesWithVarints) {
  // repeated int32 d = 4 [packed]: 3, 270, 86942 (the encoding guide's example).
  const ProtobufResult r = decode(pb_len(4, std::string("\x03\x8e\x02\x9e\xa7\x05", 6)));
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(no_wire(r.fields), json::parse(R"([{"field":4,"type":"bytes","base64":"A44CnqcF","packed_varint":[3,270,86942]}])"));
}

TEST(ProtobufWire, StringsVersusBytes) {
  ProtobufLimits hex;
  hex.hex_bytes = true;
  // Not UTF-8, not a message (0xff: field 31 wire 7): bytes.
  EXPECT_EQ(no_wire(decode(pb_len(2, "\xff\xfe")).fields[0]), json::parse(R"({"field":2,"type":"bytes","base64":"//4="})"));
  EXPECT_EQ(no_wire(decode(pb_len(2, "\xff\xfe"), hex).fields[0]), json::parse(R"({"field":2,"type":"bytes","hex":"fffe"})"));
  // UTF-8 text.
  EXPECT_EQ(decode(pb_len(1, "h\xc3\xa9llo")).fields[0]["value"], "h\xc3\xa9llo");
  // "(a" parses as a message (field 5 = 97), but text wins.
  EXPECT_EQ(no_wire(decode(pb_len(1, "(a")).fields[0]), json::parse(R"({"field":1,"type":"string","value":"(a"})"));
  // An empty len field: an empty string.
  EXPECT_EQ(no_wire(decode(pb_len(1, "")).fields[0]), json::parse(R"({"field":1,"type":"string","value":""})"));
  // Long values are cut, on a character boundary.
  ProtobufLimits small;
  small.max_value_bytes = 4;
  EXPECT_EQ(no_wire(decode(pb_len(1, "ab\xc3\xa9\xc3\xa9"), small).fields[0]),
            json::parse(R"({"field":1,"type":"string","value":"ab\u00e9","truncated":true})"));
}

TEST(ProtobufWire, FixedWidthAndNegative) {
  uint64_t d;
  const double one_half = 1.5;
  std::memcpy(&d, &one_half, 8);
  uint32_t f;
  const float quarter = 0.25f;
  std::memcpy(&f, &quarter, 4);
  const ProtobufResult r = decode(pb_fixed64(1, d) + pb_fixed32(2, f) + pb_varint(3, static_cast<uint64_t>(-1)));
  ASSERT_TRUE(r.ok);
  EXPECT_EQ(r.fields[0]["wire_type"], "i64");
  EXPECT_EQ(r.fields[1]["wire_type"], "i32");
  EXPECT_EQ(r.fields[2]["wire_type"], "varint");
  EXPECT_EQ(r.fields[0]["type"], "i64");
  EXPECT_EQ(r.fields[0]["value"], d);
  EXPECT_EQ(r.fields[0]["double"], 1.5);
  EXPECT_EQ(r.fields[1]["type"], "i32");
  EXPECT_EQ(r.fields[1]["float"], 0.25);
  EXPECT_EQ(r.fields[2]["value"], UINT64_MAX);
  EXPECT_EQ(r.fields[2]["int64"], -1);
}

TEST(ProtobufWire, RefusesWhatIsNotAMessage) {
  EXPECT_FALSE(decode(tag(1, 3) + tag(1, 4)).ok);  // a group
  EXPECT_FALSE(decode(tag(1, 6)).ok);  // no such wire type
  EXPECT_FALSE(decode(std::string("\x08\x96", 2)).ok);  // varint cut short
  EXPECT_FALSE(decode(tag(1, 2) + varint(10) + "abc").ok);  // length past the end
  EXPECT_FALSE(decode(pb_varint(0, 1)).ok);  // field 0
  EXPECT_FALSE(decode(tag(1, 1) + "1234").ok);  // i64 cut short
  EXPECT_FALSE(decode(std::string("\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 11)).ok);  // over 64 bits
  EXPECT_TRUE(decode("").ok);  // the empty message
  // The JSON always serialises (strings are valid UTF-8).
  std::mt19937 rng(9);
  for (int i = 0; i < 2000; i++) {
    std::string s(rng() % 40, '\0');
    for (char& c : s) c = static_cast<char>(rng());
    EXPECT_NO_THROW((void)decode(s).fields.dump());
  }
}

TEST(ProtobufWire, DepthAndFieldCaps) {
  std::string m = pb_varint(1, 1);
  for (int i = 0; i < 40; i++) m = pb_len(2, m + pb_varint(3, 3));  // 40 levels
  ProtobufLimits lim;
  lim.max_depth = 8;
  const ProtobufResult r = decode(m, lim);
  ASSERT_TRUE(r.ok);
  int depth = 0;
  const json* j = &r.fields;
  while ((*j)[0]["type"] == "message") {
    j = &(*j)[0]["value"];
    depth++;
  }
  EXPECT_EQ(depth, 7);  // levels 0..7 are messages; the 8th level's len field is not tried as one
  EXPECT_NE((*j)[0]["type"], "message");

  std::string many;
  for (int i = 0; i < 10000; i++) many += pb_varint(1, static_cast<uint64_t>(i));
  lim.max_fields = 100;
  const ProtobufResult r2 = decode(many, lim);
  EXPECT_TRUE(r2.ok);
  EXPECT_TRUE(r2.truncated);
  EXPECT_EQ(r2.fields.size(), 100u);
  EXPECT_EQ(r2.fields[99]["value"], 99);
}

TEST(ProtobufWire, Utf8AndBase64) {
  // A len field that is neither text nor a message: a string when it is
  // well-formed UTF-8, else bytes (base64 with padding).
  auto type_of = [](std::string_view v) { return decode(pb_len(1, v)).fields[0]["type"].get<std::string>(); };
  EXPECT_EQ(type_of("\x01\xf0\x9f\x98\x80"), "string");  // U+1F600 (after a control character)
  EXPECT_EQ(type_of("\x01\xc0\x80"), "bytes");  // overlong NUL
  EXPECT_EQ(type_of("\x01\xed\xa0\x80"), "bytes");  // a surrogate
  EXPECT_EQ(type_of("\x01\xf4\x90\x80\x80"), "bytes");  // past U+10FFFF
  EXPECT_EQ(type_of("\x01\xe2\x82"), "bytes");  // cut short
  auto b64 = [](std::string_view v) { return decode(pb_len(1, v)).fields[0]["base64"].get<std::string>(); };
  EXPECT_EQ(b64("\xff"), "/w==");
  EXPECT_EQ(b64("\xff\x01"), "/wE=");
  EXPECT_EQ(b64("\xff\x01\x02"), "/wEC");
  EXPECT_EQ(b64(std::string_view("\xff" "f" "\x00" "ob" "\x80" "r", 7)), "/2YAb2KAcg==");
}

// ---- gRPC framing -------------------------------------------------------------------

std::string grpc_msg(std::string_view m, uint8_t flag = 0) {
  std::string s(1, static_cast<char>(flag));
  w::put_be32(s, static_cast<uint32_t>(m.size()));
  return s + std::string(m);
}

TEST(GrpcFramer, SameMessagesWhateverTheSplit) {
  const std::string stream = grpc_msg("") + grpc_msg("0123456789", 1) + grpc_msg(std::string(70000, 'z')) + grpc_msg("tail");
  GrpcLimits lim;
  lim.max_messages_kept = 3;
  lim.max_message_kept = 1000;
  auto check = [&](const GrpcMessages& m) {
    EXPECT_EQ(m.count, 4u);
    EXPECT_EQ(m.bytes, 70014u);
    EXPECT_EQ(m.compressed, 1u);
    EXPECT_EQ(m.largest, 70000u);
    ASSERT_EQ(m.kept.size(), 3u);
    EXPECT_EQ(m.kept[0].data, "");
    EXPECT_FALSE(m.kept[0].truncated);
    EXPECT_TRUE(m.kept[1].compressed);
    EXPECT_EQ(m.kept[1].data, "0123456789");
    EXPECT_EQ(m.kept[2].length, 70000u);
    EXPECT_EQ(m.kept[2].data.size(), 1000u);
    EXPECT_TRUE(m.kept[2].truncated);
    EXPECT_FALSE(m.incomplete);
    EXPECT_FALSE(m.bad_flag);
  };
  for (int way = 0; way < 3; way++) {
    SCOPED_TRACE(way);
    GrpcFramer f(lim);
    std::mt19937 rng(way);
    for (size_t i = 0; i < stream.size();) {
      const size_t k = way == 0 ? stream.size() : way == 1 ? 1 : 1 + rng() % 9;
      f.feed(bytes(std::string_view(stream).substr(i, k)));
      i += k;
    }
    f.finish();
    check(f.messages());
  }
}

TEST(GrpcFramer, IncompleteAndBadFlag) {
  GrpcFramer f;
  f.feed(bytes(grpc_msg("abc") + grpc_msg("abcdef").substr(0, 7)));
  f.finish();
  EXPECT_EQ(f.messages().count, 1u);
  EXPECT_TRUE(f.messages().incomplete);
  ASSERT_EQ(f.messages().kept.size(), 2u);
  EXPECT_TRUE(f.messages().kept[1].truncated);
  EXPECT_EQ(f.messages().kept[1].data, "ab");
  GrpcFramer g;
  g.feed(bytes(grpc_msg("x", 7)));
  EXPECT_TRUE(g.messages().bad_flag);
  EXPECT_EQ(g.messages().count, 1u);
}

TEST(GrpcCallTest, ContentTypeAndPath) {
  EXPECT_TRUE(is_grpc_content_type("application/grpc"));
  EXPECT_TRUE(is_grpc_content_type("application/grpc+proto"));
  EXPECT_TRUE(is_grpc_content_type("Application/GRPC;charset=utf-8"));
  EXPECT_FALSE(is_grpc_content_type("application/grpc-web"));
  EXPECT_FALSE(is_grpc_content_type("application/json"));
  EXPECT_FALSE(is_grpc_content_type("application/grp"));
  std::string s, m;
  EXPECT_TRUE(split_grpc_path("/helloworld.Greeter/SayHello", s, m));
  EXPECT_EQ(s, "helloworld.Greeter");
  EXPECT_EQ(m, "SayHello");
  for (std::string_view bad : {"", "/", "//x", "/svc/", "/svc", "svc/m", "/a/b/c"})
    EXPECT_FALSE(split_grpc_path(bad, s, m)) << bad;
  EXPECT_EQ(grpc_percent_decode("a%20b%E2%9C%93%zz%4"), "a b\xe2\x9c\x93%zz%4");
}

// ---- gRPC over a connection ------------------------------------------------------------

struct Seg {
  Http2Dir dir;
  std::string bytes;
};

struct Call {
  w::Deflater cd, sd;
  std::vector<Seg> conv;
  void c(std::string b) { conv.push_back({kC, std::move(b)}); }
  void s(std::string b) { conv.push_back({kS, std::move(b)}); }
  Call() {
    c(std::string(kHttp2Preface) + w::settings({}));
    s(w::settings({}) + w::settings_ack());
    c(w::settings_ack());
  }
  void request_headers(uint32_t sid, const std::string& path) {
    c(w::headers(sid, cd.block({{":method", "POST"}, {":scheme", "http"}, {":path", path}, {":authority", "localhost:50051"},
                                {"content-type", "application/grpc"}, {"te", "trailers"}, {"grpc-timeout", "1S"}})));
  }
  void response_headers(uint32_t sid) { s(w::headers(sid, sd.block({{":status", "200"}, {"content-type", "application/grpc+proto"}}))); }
  void trailers(uint32_t sid, const std::string& status, const std::string& message = "") {
    w::Fields f = {{"grpc-status", status}};
    if (!message.empty()) f.push_back({"grpc-message", message});
    s(w::headers(sid, sd.block(f), {.end_stream = true}));
  }
};

// Feeds at random splits; exchanges out.
std::vector<Http2Exchange> feed(const std::vector<Seg>& conv, uint32_t seed, Http2Limits lim = {}, bool tap = true,
                                GrpcLimits glim = {}) {
  Http2Parser p(lim, tap ? grpc_tap_factory(glim) : Http2TapFactory{});
  std::vector<Http2Exchange> out;
  std::mt19937 rng(seed);
  for (const Seg& s : conv)
    for (size_t i = 0; i < s.bytes.size();) {
      const size_t k = seed == 0 ? s.bytes.size() : 1 + rng() % 13;
      p.feed(s.dir, bytes(std::string_view(s.bytes).substr(i, k)), 1, out);
      i += k;
    }
  p.on_close(2, out);
  return out;
}

TEST(GrpcCallTest, Unary) {
  Call k;
  const std::string req = grpc_msg(pb_len(1, "world"));
  k.request_headers(1, "/helloworld.Greeter/SayHello");
  k.c(w::data(1, req.substr(0, 3), false) + w::data(1, req.substr(3), false) + w::data(1, "", true));  // split inside the prefix
  k.response_headers(1);
  k.s(w::data(1, grpc_msg(pb_len(1, "Hello world")), false));
  k.trailers(1, "0");
  const SchemalessGrpcDecoder dec;
  for (bool tap : {true, false})
    for (uint32_t seed : {0u, 1u, 2u}) {
      SCOPED_TRACE(testing::Message() << "tap " << tap << " seed " << seed);
      const auto out = feed(k.conv, seed, {}, tap);
      ASSERT_EQ(out.size(), 1u);
      ASSERT_TRUE(is_grpc(out[0]));
      const GrpcCall c = grpc_call(out[0]);
      EXPECT_EQ(c.framed_live, tap);
      EXPECT_EQ(c.stream_id, 1u);
      EXPECT_EQ(c.service, "helloworld.Greeter");
      EXPECT_EQ(c.method, "SayHello");
      EXPECT_EQ(c.content_type, "application/grpc");
      EXPECT_EQ(c.timeout, "1S");
      EXPECT_EQ(c.status, 0);
      EXPECT_EQ(c.message, "");
      EXPECT_FALSE(c.trailers_only);
      EXPECT_EQ(c.request.count, 1u);
      EXPECT_EQ(c.request.bytes, 7u);
      ASSERT_EQ(c.request.kept.size(), 1u);
      EXPECT_EQ(c.request.kept[0].data, pb_len(1, "world"));
      EXPECT_FALSE(c.request.incomplete || c.request.unframed);
      EXPECT_EQ(c.response.count, 1u);
      ASSERT_EQ(c.response.kept.size(), 1u);
      EXPECT_EQ(no_wire(dec.decode(c.service, c.method, true, c.request.kept[0])),
                json::parse(R"({"fields":[{"field":1,"type":"string","value":"world"}]})"));
      EXPECT_EQ(no_wire(dec.decode(c.service, c.method, false, c.response.kept[0])),
                json::parse(R"({"fields":[{"field":1,"type":"string","value":"Hello world"}]})"));
    }
}

TEST(GrpcCallTest, StreamingBothWays) {
  Call k;
  k.request_headers(1, "/chat.Chat/Talk");
  k.response_headers(1);
  std::string client;  // 5 messages; DATA frames cut them anywhere
  for (int i = 0; i < 5; i++) client += grpc_msg(pb_varint(1, static_cast<uint64_t>(i)) + pb_len(2, std::string(10 * i, 'm')));
  const size_t cuts[] = {0, 3, 4, 30, 31, 90, client.size()};
  for (size_t i = 0; i + 1 < std::size(cuts); i++) {
    k.c(w::data(1, client.substr(cuts[i], cuts[i + 1] - cuts[i]), false));
    if (i == 2) k.s(w::data(1, grpc_msg(pb_varint(1, 100)) + grpc_msg(pb_varint(1, 101)), false));
  }
  k.c(w::data(1, "", true));
  k.s(w::data(1, grpc_msg(pb_varint(1, 102)), false) + w::data(1, grpc_msg(std::string("\x1f\x8b", 2), 1), false));
  k.trailers(1, "0");
  Http2Limits small;
  small.max_body_kept = 32;  // far less than the request body
  GrpcLimits glim;
  glim.max_messages_kept = 3;
  for (uint32_t seed : {0u, 5u}) {
    const auto out = feed(k.conv, seed, small, true, glim);
    ASSERT_EQ(out.size(), 1u);
    const GrpcCall c = grpc_call(out[0], glim);
    EXPECT_TRUE(c.framed_live);
    EXPECT_EQ(c.request.count, 5u);  // every message, though the kept body is cut
    EXPECT_EQ(c.request.bytes, client.size() - 5 * 5);
    ASSERT_EQ(c.request.kept.size(), 3u);
    EXPECT_EQ(c.request.kept[2].data, pb_varint(1, 2) + pb_len(2, std::string(20, 'm')));
    EXPECT_FALSE(c.request.unframed || c.request.incomplete);
    EXPECT_EQ(c.response.count, 4u);
    EXPECT_EQ(c.response.compressed, 1u);
    EXPECT_EQ(c.status, 0);
    EXPECT_TRUE(out[0].request.body_truncated);
  }
  // Without the tap: only what the kept body holds, and it says so.
  const auto out = feed(k.conv, 0, small, false, glim);
  const GrpcCall c = grpc_call(out[0], glim);
  EXPECT_FALSE(c.framed_live);
  EXPECT_TRUE(c.request.unframed);
  EXPECT_LT(c.request.count, 5u);
  EXPECT_FALSE(c.response.unframed);
  EXPECT_EQ(c.response.count, 4u);
  // A compressed message is not decoded without its codec.
  GrpcMessage gz;
  gz.compressed = true;
  gz.data = pb_varint(1, 1);
  gz.length = 2;
  EXPECT_TRUE(SchemalessGrpcDecoder().decode(c.service, c.method, false, gz).is_null());
  gz.compressed = false;
  EXPECT_FALSE(SchemalessGrpcDecoder().decode(c.service, c.method, false, gz).is_null());
}

TEST(GrpcCallTest, TapSharesTheConnectionBudget) {
  Call k;
  k.request_headers(1, "/svc.S/Big");
  k.c(w::data(1, grpc_msg(std::string(1000, 'a')) + grpc_msg(std::string(1000, 'b')), false) +
      w::data(1, grpc_msg(std::string(1000, 'c')), true));
  Http2Limits lim;
  lim.max_held_bytes = 1500;
  lim.max_body_kept = 0;  // only the tap keeps message bytes
  Http2Parser p(lim, grpc_tap_factory());
  std::vector<Http2Exchange> out;
  size_t held = 0;
  for (const Seg& s : k.conv)
    for (size_t i = 0; i < s.bytes.size(); i += 7) {
      p.feed(s.dir, bytes(std::string_view(s.bytes).substr(i, 7)), 1, out);
      held = std::max(held, p.held_bytes());
    }
  EXPECT_LE(held, 1500u);
  EXPECT_GT(held, 1400u);
  p.on_close(2, out);
  ASSERT_EQ(out.size(), 1u);
  const GrpcCall c = grpc_call(out[0]);
  EXPECT_EQ(c.request.count, 3u);  // all counted
  ASSERT_EQ(c.request.kept.size(), 3u);
  EXPECT_EQ(c.request.kept[0].data, std::string(1000, 'a'));
  EXPECT_FALSE(c.request.kept[0].truncated);
  EXPECT_TRUE(c.request.kept[1].truncated);  // the budget ran out inside it: a prefix is kept
  EXPECT_EQ(c.request.kept[1].data, std::string(c.request.kept[1].data.size(), 'b'));
  EXPECT_EQ(c.request.kept[2].data, "");
}

TEST(GrpcCallTest, TrailersOnlyError) {
  Call k;
  k.request_headers(1, "/svc.S/Nope");
  k.c(w::data(1, grpc_msg(""), true));
  k.s(w::headers(1, k.sd.block({{":status", "200"}, {"content-type", "application/grpc"}, {"grpc-status", "12"},
                                 {"grpc-message", "unknown%20method%20%E2%9C%93"}}),
                 {.end_stream = true}));
  const auto out = feed(k.conv, 3);
  ASSERT_EQ(out.size(), 1u);
  const GrpcCall c = grpc_call(out[0]);
  EXPECT_EQ(c.status, 12);
  EXPECT_EQ(c.message, "unknown method \xe2\x9c\x93");
  EXPECT_TRUE(c.trailers_only);
  EXPECT_EQ(c.request.count, 1u);
  EXPECT_EQ(c.response.count, 0u);
}

TEST(GrpcCallTest, ResetCallHasNoStatus) {
  Call k;
  k.request_headers(1, "/svc.S/Slow");
  k.c(w::data(1, grpc_msg("abc"), false) + w::data(1, grpc_msg("abcdef").substr(0, 6), false));
  k.c(w::rst_stream(1, 8));
  const auto out = feed(k.conv, 1);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(out[0].reset);
  const GrpcCall c = grpc_call(out[0]);
  EXPECT_EQ(c.status, -1);
  EXPECT_EQ(c.request.count, 1u);
  ASSERT_EQ(c.request.kept.size(), 2u);
  EXPECT_TRUE(c.request.incomplete);  // the stream stopped inside the second message
  EXPECT_TRUE(c.request.kept[1].truncated);
}

TEST(GrpcCallTest, NotGrpc) {
  Call k;
  k.c(w::headers(1, k.cd.block({{":method", "GET"}, {":scheme", "https"}, {":path", "/"}}), {.end_stream = true}));
  k.s(w::headers(1, k.sd.block({{":status", "200"}, {"content-type", "text/html"}}), {.end_stream = true}));
  const auto out = feed(k.conv, 0);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_FALSE(is_grpc(out[0]));
  EXPECT_FALSE(out[0].tap);
}

}  // namespace

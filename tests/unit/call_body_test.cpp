// HTTP/1 bodies in the call record (issue: full payloads): the dissector
// keeps a message's body, undoes its Content-Encoding when the message is
// complete (gzip, deflate, br, zstd; decoded bytes capped at --max-body),
// and the record, the dissection DB (schema 3, migrated from 1 and 2), the
// HAR export and `tapwire calls --id` show it: text as text, binary as
// base64, cut bodies and corrupt codings flagged.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "body/body_text.hpp"
#include "call_db.hpp"
#include "dissector.hpp"
#include "temp_dir.hpp"

using namespace tapwire::dissect;
using nlohmann::json;
namespace proto = tapwire::proto;
using tapwire::test_util::TempDir;
using namespace std::string_literals;

namespace {

constexpr uint64_t kT0 = 1'795'000'000'000'000'000ull;

// ------------------------------------------------------------ packets ---

Packet pkt(uint16_t cport, bool from_client, uint8_t flags, const std::string& payload, uint64_t ts, uint32_t seq) {
  static const uint8_t caddr[4] = {10, 9, 0, 2}, saddr[4] = {10, 9, 0, 1};
  Packet p;
  p.meta.ts_ns = ts;
  p.meta.ip_version = 4;
  p.meta.l4_proto = 6;
  std::memcpy(p.meta.saddr, from_client ? caddr : saddr, 4);
  std::memcpy(p.meta.daddr, from_client ? saddr : caddr, 4);
  p.meta.sport = from_client ? cport : 80;
  p.meta.dport = from_client ? 80 : cport;
  p.meta.seq = seq;
  p.meta.tcp_flags = flags;
  p.meta.payload_len = p.meta.cap_len = static_cast<uint32_t>(payload.size());
  p.payload = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(payload.data()), payload.size());
  return p;
}

// One connection's exchanges through a Dissector; the calls it reports.
// Bytes go in segments of at most 1400 bytes (a body crosses packets).
std::vector<Call> dissect(const std::vector<std::pair<bool, std::string>>& exchange, size_t max_body = 64 * 1024,
                          uint16_t cport = 40000) {
  std::vector<Call> calls;
  DissectorOptions o;
  o.http.max_body_kept = max_body;
  Dissector d(o, [&](Call&& c) { calls.push_back(std::move(c)); });
  uint32_t cnext = 1001, snext = 50001;
  uint64_t ts = kT0;
  d.packet(pkt(cport, true, TW_TCP_SYN, "", ts += 1000, 1000));
  d.packet(pkt(cport, false, TW_TCP_SYN | TW_TCP_ACK, "", ts += 1000, 50000));
  for (auto& [client, bytes] : exchange) {
    for (size_t off = 0; off < bytes.size(); off += 1400) {
      const std::string seg = bytes.substr(off, 1400);
      uint32_t& next = client ? cnext : snext;
      d.packet(pkt(cport, client, TW_TCP_ACK | TW_TCP_PSH, seg, ts += 1000, next));
      next += static_cast<uint32_t>(seg.size());
    }
  }
  d.packet(pkt(cport, true, TW_TCP_FIN | TW_TCP_ACK, "", ts += 1000, cnext));
  d.packet(pkt(cport, false, TW_TCP_FIN | TW_TCP_ACK, "", ts += 1000, snext));
  d.finish();
  return calls;
}

std::string response(const std::string& headers, const std::string& body) {
  return "HTTP/1.1 200 OK\r\n" + headers + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::string chunked_response(const std::string& headers, const std::string& body) {
  std::string out = "HTTP/1.1 200 OK\r\n" + headers + "Transfer-Encoding: chunked\r\n\r\n";
  for (size_t off = 0; off < body.size(); off += 1000) {
    const std::string c = body.substr(off, 1000);
    char size[32];
    std::snprintf(size, sizeof size, "%zx\r\n", c.size());
    out += size + c + "\r\n";
  }
  return out + "0\r\n\r\n";
}

const std::string kGet = "GET /r HTTP/1.1\r\nHost: x\r\n\r\n";

// One GET answered by `resp`; its call.
Call get_call(const std::string& resp, size_t max_body = 64 * 1024) {
  auto calls = dissect({{true, kGet}, {false, resp}}, max_body);
  EXPECT_EQ(calls.size(), 1u);
  return calls.empty() ? Call{} : std::move(calls[0]);
}

// ---------------------------------------------------------- encoders ---

std::string zlib_compress(std::string_view in, int window_bits) {  // 15+16 gzip, 15 zlib, -15 raw
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&z, in.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(out.size() - z.avail_out);
  deflateEnd(&z);
  return out;
}
std::string gzip(std::string_view in) { return zlib_compress(in, 15 + 16); }

std::string zstd_compress(std::string_view in) {
  std::string out(ZSTD_compressBound(in.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 3);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

// BrotliEncoderCompress(quality 11, lgwin 22) of text20() (libbrotlienc
// 1.0.9; the unit tests do not link the encoder: tests/unit/body_test.cpp).
constexpr uint8_t kBrText[] = {
    0x1b, 0x1b, 0x02, 0xf8, 0x45, 0xdd, 0xd6, 0x5f, 0xd2, 0x72, 0xfd, 0x65, 0xe1, 0x20, 0x5c, 0xe6, 0xd0, 0xe0,
    0x30, 0x54, 0xc8, 0xae, 0xf3, 0xfc, 0x16, 0x51, 0x1a, 0xef, 0x86, 0x79, 0x8d, 0xc7, 0xe5, 0x51, 0x00,
};
std::string text20() {
  std::string s;
  for (int i = 0; i < 20; i++) s += "tapwire brotli test vector\n";
  return s;
}

std::string big_text(size_t lines = 5000) {
  std::string s;
  for (size_t i = 0; i < lines; i++) s += "line " + std::to_string(i) + ": {\"n\": " + std::to_string(i * 7919 % 10007) + "}\n";
  return s;
}

std::string random_bytes(size_t n, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

std::string from_base64(const std::string& in) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = c >= 'A' && c <= 'Z'   ? c - 'A'
            : c >= 'a' && c <= 'z' ? c - 'a' + 26
            : c >= '0' && c <= '9' ? c - '0' + 52
            : c == '+'             ? 62
            : c == '/'             ? 63
                                   : -1;
    if (v < 0) continue;
    acc = acc << 6 | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return out;
}

// The body bytes a record object shows.
std::string body_bytes(const json& m) {
  if (!m.contains("body")) return "";
  const std::string b = m["body"].get<std::string>();
  return m.value("body_encoding", "") == "base64" ? from_base64(b) : b;
}

// ---------------------------------------------------------------- DB ---

std::string fresh_db(const TempDir& dir, const char* name = "calls.db") { return dir.path() + "/" + name; }

std::vector<json> roundtrip(const TempDir& dir, const std::vector<Call>& calls) {
  const std::string path = fresh_db(dir, "roundtrip.db");
  {
    CallDb db(path);
    for (auto& c : calls) db.insert(c);
  }
  CallDb db(path, true);
  CallDb::Query q;
  q.by_rowid = true;
  return db.query(q);
}

struct Sql {
  sqlite3* db = nullptr;
  explicit Sql(const std::string& path) { EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK); }
  ~Sql() { sqlite3_close(db); }
  void exec(const std::string& sql) {
    char* err = nullptr;
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "") << "\n" << sql;
  }
  std::string rows(const std::string& sql) {
    sqlite3_stmt* st = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    std::string out;
    while (st && sqlite3_step(st) == SQLITE_ROW) {
      for (int i = 0; i < sqlite3_column_count(st); i++) {
        auto* t = sqlite3_column_text(st, i);
        out += (i ? "|" : "") + (t ? std::string(reinterpret_cast<const char*>(t), sqlite3_column_bytes(st, i))
                                   : std::string("NULL"));
      }
      out += "\n";
    }
    sqlite3_finalize(st);
    return out;
  }
};

}  // namespace

// ------------------------------------------------------- the record ---

TEST(CallBody, TextAndBinaryRequestBodies) {
  const std::string json_body = R"({"name": "tapwire", "n": 1, "ü": "✓"})";
  const std::string bin(random_bytes(3000));
  auto calls = dissect({{true, "POST /j HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                                   std::to_string(json_body.size()) + "\r\n\r\n" + json_body},
                        {false, response("", "ok")},
                        {true, "PUT /b HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                               "Content-Length: " + std::to_string(bin.size()) + "\r\n\r\n" + bin},
                        {false, response("Content-Type: text/plain\r\n", "stored\n")}});
  ASSERT_EQ(calls.size(), 2u);
  json a = to_json(calls[0]), b = to_json(calls[1]);
  EXPECT_EQ(a["request"]["body"], json_body);
  EXPECT_FALSE(a["request"].contains("body_encoding"));
  EXPECT_FALSE(a["request"].contains("content_encoding"));
  EXPECT_EQ(a["response"]["body"], "ok");  // no Content-Type: the bytes say text
  EXPECT_EQ(b["request"]["body_encoding"], "base64");
  EXPECT_EQ(body_bytes(b["request"]), bin);
  EXPECT_EQ(b["request"]["body_size"], 3000);
  EXPECT_EQ(b["response"]["body"], "stored\n");
  EXPECT_EQ(a["flags"], json::array());
  EXPECT_EQ(b["flags"], json::array());
}

TEST(CallBody, NoBodyNoFields) {
  auto calls = dissect({{true, kGet}, {false, "HTTP/1.1 204 No Content\r\nContent-Encoding: gzip\r\n\r\n"},
                        {true, "HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n"},
                        {false, "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 500\r\n\r\n"}});
  ASSERT_EQ(calls.size(), 2u);
  for (auto& c : calls) {
    json j = to_json(c);
    for (const char* m : {"request", "response"})
      for (const char* f : {"body", "body_encoding", "content_encoding", "body_decoded_size"})
        EXPECT_FALSE(j[m].contains(f)) << m << "." << f << ": " << j.dump();
    EXPECT_EQ(j["flags"], json::array());
  }
}

TEST(CallBody, EachContentCodingIsStoredDecoded) {
  const std::string text = big_text(300);
  struct Case {
    const char* coding;
    std::string encoded, decoded;
  };
  const Case cases[] = {
      {"gzip", gzip(text), text},
      {"x-gzip", gzip(text), text},
      {"deflate", zlib_compress(text, 15), text},
      {"deflate", zlib_compress(text, -15), text},  // raw deflate, as some servers send it
      {"br", std::string(reinterpret_cast<const char*>(kBrText), sizeof kBrText), text20()},
      {"zstd", zstd_compress(text), text},
      {"gzip, zstd", zstd_compress(gzip(text)), text},
  };
  for (const Case& k : cases) {
    for (bool chunked : {false, true}) {
      SCOPED_TRACE(std::string(k.coding) + (chunked ? " chunked" : ""));
      const std::string h = "Content-Type: application/json\r\nContent-Encoding: " + std::string(k.coding) + "\r\n";
      Call c = get_call(chunked ? chunked_response(h, k.encoded) : response(h, k.encoded));
      json j = to_json(c);
      const json& r = j["response"];
      EXPECT_EQ(r["body_size"], k.encoded.size());  // the body as sent
      EXPECT_EQ(r["body_decoded_size"], k.decoded.size());
      EXPECT_EQ(r["content_encoding"], k.coding);
      EXPECT_FALSE(r.contains("body_encoding"));
      EXPECT_TRUE(r["body"] == k.decoded) << "body differs";
      EXPECT_EQ(j["flags"], json::array());
      // Memory accounting follows the decoded body.
      EXPECT_EQ(c.http_response()->heap, proto::message_heap_bytes(*c.http_response()));
    }
  }
}

TEST(CallBody, BinaryDecodedBodyIsBase64) {
  const std::string bin = random_bytes(5000, 11);
  Call c = get_call(response("Content-Type: image/png\r\nContent-Encoding: gzip\r\n", gzip(bin)));
  json r = to_json(c)["response"];
  EXPECT_EQ(r["body_encoding"], "base64");
  EXPECT_EQ(r["content_encoding"], "gzip");
  EXPECT_EQ(r["body_decoded_size"], 5000);
  EXPECT_TRUE(body_bytes(r) == bin);
}

TEST(CallBody, IdentityIsNotAnEncoding) {
  Call c = get_call(response("Content-Encoding: identity\r\n", "plain"));
  json r = to_json(c)["response"];
  EXPECT_EQ(r["body"], "plain");
  EXPECT_FALSE(r.contains("content_encoding"));
}

TEST(CallBody, PlainBodyLongerThanMaxBodyIsCutAndFlagged) {
  const std::string text = big_text(100);
  Call c = get_call(response("Content-Type: text/plain\r\n", text), 1000);
  json j = to_json(c);
  EXPECT_EQ(j["response"]["body"], text.substr(0, 1000));
  EXPECT_EQ(j["response"]["body_size"], text.size());
  EXPECT_EQ(j["flags"], json::array({"body_truncated"}));
}

TEST(CallBody, DecodedBodyIsCappedAtMaxBody) {
  // Small on the wire, large decoded: the cap applies to the decoded bytes.
  const std::string text = big_text(5000);
  const std::string gz = gzip(text);
  ASSERT_LT(gz.size(), 64u * 1024);
  ASSERT_GT(text.size(), 64u * 1024);
  Call c = get_call(response("Content-Encoding: gzip\r\n", gz));
  json j = to_json(c);
  EXPECT_EQ(j["response"]["body_size"], gz.size());
  EXPECT_EQ(j["response"]["body_decoded_size"], 64 * 1024);
  EXPECT_TRUE(j["response"]["body"] == text.substr(0, 64 * 1024));
  EXPECT_EQ(j["flags"], json::array({"body_truncated"}));
  EXPECT_LE(proto::string_heap_bytes(c.http_response()->body), proto::heap_bytes(64 * 1024 + 1));
}

TEST(CallBody, EncodedBodyCutByMaxBodyDecodesItsBeginning) {
  // The encoded body is longer than what is kept: the kept part decodes to
  // the beginning of the body, not to an error.
  const std::string bin = random_bytes(20000, 3);  // does not compress
  const std::string gz = gzip(bin);
  Call c = get_call(response("Content-Type: application/octet-stream\r\nContent-Encoding: gzip\r\n", gz), 8000);
  json j = to_json(c);
  const json& r = j["response"];
  EXPECT_EQ(r["content_encoding"], "gzip");
  EXPECT_EQ(r["body_size"], gz.size());
  const std::string got = body_bytes(r);
  EXPECT_GT(got.size(), 7000u);
  EXPECT_LE(got.size(), 8000u);
  EXPECT_TRUE(bin.compare(0, got.size(), got) == 0) << "not a prefix of the body";
  EXPECT_EQ(r["body_decoded_size"], got.size());
  EXPECT_EQ(j["flags"], json::array({"body_truncated"}));
}

TEST(CallBody, CorruptOrUnknownCodingKeepsTheBytesAsSentFlagged) {
  const std::string text = big_text(200);
  std::string corrupt = gzip(text);
  for (size_t i = 40; i < 80; i++) corrupt[i] = static_cast<char>(corrupt[i] ^ 0x5a);
  std::string cut = gzip(text);
  cut.resize(cut.size() / 2);  // the stream ends before the (complete) body does
  const std::pair<const char*, std::string> cases[] = {
      {"gzip", "this is not gzip at all"}, {"gzip", corrupt}, {"br", corrupt}, {"zstd", corrupt},
      {"compress", text},  // a coding tapwire does not know
      {"gzip", cut},
  };
  for (auto& [coding, body] : cases) {
    SCOPED_TRACE(coding);
    Call c = get_call(response("Content-Type: text/plain\r\nContent-Encoding: " + std::string(coding) + "\r\n", body));
    json j = to_json(c);
    const json& r = j["response"];
    EXPECT_EQ(r["body_encoding"], "base64");
    EXPECT_TRUE(body_bytes(r) == body) << "not the bytes as sent";
    EXPECT_FALSE(r.contains("content_encoding"));
    EXPECT_FALSE(r.contains("body_decoded_size"));
    EXPECT_EQ(r["body_size"], body.size());
    EXPECT_EQ(j["flags"], json::array({"body_decode_error"}));
  }
}

TEST(CallBody, CompressedRequestBody) {
  const std::string text = R"({"items": [1, 2, 3]})";
  const std::string z = zstd_compress(text);
  auto calls = dissect({{true, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               "Content-Encoding: zstd\r\nContent-Length: " + std::to_string(z.size()) + "\r\n\r\n" + z},
                        {false, response("", "ok")}});
  ASSERT_EQ(calls.size(), 1u);
  json r = to_json(calls[0])["request"];
  EXPECT_EQ(r["body"], text);
  EXPECT_EQ(r["content_encoding"], "zstd");
  EXPECT_EQ(r["body_size"], z.size());
  EXPECT_EQ(r["body_decoded_size"], text.size());
}

TEST(CallBody, FinishBodyRunsOnce) {
  proto::HttpMessage m;
  m.headers = {{"content-encoding", "gzip"}};
  const std::string text = "hello hello hello\n";
  m.body = gzip(text);
  m.body_size = m.body.size();
  m.heap = proto::message_heap_bytes(m);
  proto::finish_body(m, 1024);
  EXPECT_EQ(m.body, text);
  proto::finish_body(m, 1024);  // the decoded body is not decoded again
  EXPECT_EQ(m.body, text);
  EXPECT_FALSE(m.body_decode_error);
  EXPECT_EQ(m.heap, proto::message_heap_bytes(m));
}

// ----------------------------------------------------------- the DB ---

namespace {

// Every kind of body the record has: the round trip must give back to_json().
// One connection each, from client ports 40000, 40001, ...
std::vector<Call> body_calls() {
  std::vector<Call> out;
  const std::string text = big_text(300);
  auto add = [&](std::vector<Call> cs) {
    for (auto& c : cs) out.push_back(std::move(c));
  };
  uint16_t port = 40000;
  auto dissect = [&port](const std::vector<std::pair<bool, std::string>>& exchange, size_t max_body = 64 * 1024) {
    return ::dissect(exchange, max_body, port++);
  };
  add(dissect({{true, "POST /j HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"a\": 1}\n"},
               {false, response("Content-Type: text/html\r\nContent-Encoding: gzip\r\n", gzip(text))}}));
  add(dissect({{true, kGet}, {false, response("Content-Encoding: br\r\n",
                                              std::string(reinterpret_cast<const char*>(kBrText), sizeof kBrText))}}));
  add(dissect({{true, kGet}, {false, response("Content-Encoding: zstd\r\n", zstd_compress(text))}}));
  add(dissect({{true, kGet}, {false, response("Content-Encoding: deflate\r\n", zlib_compress(text, 15))}}));
  add(dissect({{true, "PUT /b HTTP/1.1\r\nHost: x\r\nContent-Length: 256\r\n\r\n" + random_bytes(256)},
               {false, response("Content-Type: image/gif\r\n", random_bytes(100, 9))}}));
  add(dissect({{true, kGet}, {false, response("Content-Encoding: gzip\r\n", gzip(big_text(5000)))}}));  // capped
  add(dissect({{true, kGet}, {false, response("Content-Encoding: gzip\r\n", "garbage, not gzip")}}));  // corrupt
  add(dissect({{true, kGet}, {false, response("", text)}}, 100));  // cut by --max-body
  add(dissect({{true, kGet}, {false, response("Content-Type: text/plain; charset=latin1\r\n", "caf\xe9\n")}}));
  add(dissect({{true, kGet}, {false, response("Content-Type: text/plain\r\n", "nul\0byte"s)}}));
  add(dissect({{true, kGet}, {false, "HTTP/1.1 304 Not Modified\r\nContent-Encoding: gzip\r\n\r\n"}}));
  return out;
}

}  // namespace

TEST(CallBodyDb, RowsReadBackAsToJson) {
  TempDir dir("body-db");
  const auto calls = body_calls();
  ASSERT_EQ(calls.size(), 11u);
  const auto rows = roundtrip(dir, calls);
  ASSERT_EQ(rows.size(), calls.size());
  for (size_t i = 0; i < calls.size(); i++) {
    SCOPED_TRACE(i);
    EXPECT_EQ(rows[i].dump(), to_json(calls[i]).dump());
  }
  // The kinds the list is meant to cover are there.
  EXPECT_EQ(rows[0]["response"]["content_encoding"], "gzip");
  EXPECT_EQ(rows[1]["response"]["body"], text20());
  EXPECT_EQ(rows[4]["request"]["body_encoding"], "base64");
  EXPECT_EQ(rows[5]["flags"], json::array({"body_truncated"}));
  EXPECT_EQ(rows[6]["flags"], json::array({"body_decode_error"}));
  EXPECT_EQ(rows[7]["flags"], json::array({"body_truncated"}));
  EXPECT_EQ(rows[8]["response"]["body_encoding"], "base64");  // Latin-1 is not UTF-8
  EXPECT_EQ(rows[9]["response"]["body"], "nul\0byte"s);
}

TEST(CallBodyDb, Columns) {
  TempDir dir("body-db");
  const std::string path = fresh_db(dir);
  const auto calls = body_calls();
  {
    CallDb db(path);
    for (auto& c : calls) db.insert(c);
  }
  Sql s(path);
  EXPECT_EQ(s.rows("SELECT value FROM meta WHERE key = 'schema_version'"), "4\n");
  // Schema 4 keeps the record's request and response objects as JSON; the
  // body fields are theirs. The first call: a JSON request body (text), a
  // gzip response stored decoded.
  EXPECT_EQ(s.rows("SELECT json_extract(request, '$.body'), json_extract(request, '$.body_encoding'), "
                   "json_extract(response, '$.content_encoding'), "
                   "json_extract(response, '$.body_decoded_size') = length(json_extract(response, '$.body')), "
                   "json_extract(response, '$.body_size') < json_extract(response, '$.body_decoded_size') "
                   "FROM calls WHERE path = '/j'"),
            "{\"a\": 1}\n|NULL|gzip|1|1\n");
  EXPECT_EQ(s.rows("SELECT json_extract(request, '$.body_encoding'), json_extract(response, '$.body_encoding') "
                   "FROM calls WHERE path = '/b'"),
            "base64|base64\n");
  // No body: no body fields.
  EXPECT_EQ(s.rows("SELECT count(*) FROM calls WHERE json_extract(request, '$.body') IS NULL"), "9\n");
  EXPECT_EQ(s.rows("SELECT json_extract(response, '$.body'), json_extract(response, '$.content_encoding') "
                   "FROM calls WHERE status = 304"),
            "NULL|NULL\n");
  // The summary columns every protocol fills.
  EXPECT_EQ(s.rows("SELECT method, path, status FROM calls WHERE path = '/j'"), "POST|/j|200\n");
}

namespace {

// The schema-2 DDL exactly as tapwire wrote it before bodies.
const char* kSchemaV2 = R"sql(
CREATE TABLE calls (
  id TEXT NOT NULL, protocol TEXT NOT NULL, ts_ns INTEGER NOT NULL, duration_us INTEGER,
  src_ip TEXT NOT NULL, src_port INTEGER NOT NULL, dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL,
  has_request INTEGER NOT NULL, has_response INTEGER NOT NULL, method TEXT, path TEXT, version TEXT,
  req_headers TEXT, req_body_size INTEGER, status INTEGER, reason TEXT, resp_headers TEXT, resp_body_size INTEGER,
  dns_id INTEGER, qname TEXT, qtype TEXT, rcode TEXT, answers TEXT, flags TEXT NOT NULL,
  node TEXT, src_pid INTEGER, src_process TEXT, src_exe TEXT, src_container TEXT, src_container_id TEXT,
  src_pod TEXT, src_namespace TEXT, src_workload_kind TEXT, src_workload_name TEXT, src_service TEXT, src_node TEXT,
  dst_pid INTEGER, dst_process TEXT, dst_exe TEXT, dst_container TEXT, dst_container_id TEXT,
  dst_pod TEXT, dst_namespace TEXT, dst_workload_kind TEXT, dst_workload_name TEXT, dst_service TEXT, dst_node TEXT
);
CREATE INDEX calls_ts ON calls(ts_ns);
CREATE INDEX calls_src_namespace ON calls(src_namespace) WHERE src_namespace IS NOT NULL;
CREATE INDEX calls_dst_namespace ON calls(dst_namespace) WHERE dst_namespace IS NOT NULL;
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '2'), ('checkpoint', 'seg 9 off 1');
INSERT INTO calls (id, protocol, ts_ns, duration_us, src_ip, src_port, dst_ip, dst_port, has_request, has_response,
                   method, path, version, req_headers, req_body_size, status, reason, resp_headers, resp_body_size,
                   flags, node, src_pod, src_namespace)
  VALUES ('00000000000000aa', 'http', 1795000000000000000, 5, '10.0.0.1', 1234, '10.0.0.2', 80, 1, 1,
          'GET', '/v2', 'HTTP/1.1', 'host: x
', 0, 200, 'OK', 'content-type: text/plain
', 12, '', 'node-1', 'web-1', 'shop');
)sql";

std::string table_columns(const std::string& path) {
  Sql s(path);
  return s.rows("SELECT name, type FROM pragma_table_info('calls')");
}

}  // namespace

TEST(CallBodyDb, SchemaTwoIsMigratedInPlace) {
  TempDir dir("body-db");
  const std::string v2 = fresh_db(dir, "v2.db"), fresh = fresh_db(dir, "fresh.db");
  Sql(v2).exec(kSchemaV2);
  const std::string want_old =
      R"({"dst":{"ip":"10.0.0.2","port":80},"duration_us":5,"flags":[],"id":"00000000000000aa","node":"node-1",)"
      R"("protocol":"http","request":{"body_size":0,"headers":{"host":"x"},"method":"GET","path":"/v2",)"
      R"("version":"HTTP/1.1"},"response":{"body_size":12,"headers":{"content-type":"text/plain"},"reason":"OK",)"
      R"("status":200},"src":{"ip":"10.0.0.1","namespace":"shop","pod":"web-1","port":1234},)"
      R"("ts":"2026-11-18T11:06:40.000000000Z"})";

  // Read-only: not migrated, the row reads as before.
  auto reader = std::make_unique<CallDb>(v2, true);
  {
    auto rows = reader->query({});
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].dump(), want_old);
    EXPECT_EQ(Sql(v2).rows("SELECT value FROM meta WHERE key = 'schema_version'"), "2\n");
  }
  const auto calls = body_calls();
  {
    CallDb db(v2);  // writing: migrates
    EXPECT_EQ(db.meta("schema_version"), "4");
    EXPECT_EQ(db.meta("checkpoint"), "seg 9 off 1");
    db.insert(calls[0]);
  }
  { CallDb db(fresh); }
  EXPECT_EQ(table_columns(v2), table_columns(fresh));  // tapwire dissect merges with INSERT ... SELECT *
  // The reader opened before the migration sees the bodies now.
  auto rows = reader->query({});
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].dump(), want_old);
  EXPECT_EQ(rows[1].dump(), to_json(calls[0]).dump());
  // Again: nothing more changes.
  { CallDb db(v2); }
  EXPECT_EQ(table_columns(v2), table_columns(fresh));
}

TEST(CallBodyDb, SchemaOneIsMigratedToThree) {
  TempDir dir("body-db");
  const std::string v1 = fresh_db(dir, "v1.db"), fresh = fresh_db(dir, "fresh.db");
  {
    Sql s(v1);
    s.exec(
        "CREATE TABLE calls (id TEXT NOT NULL, protocol TEXT NOT NULL, ts_ns INTEGER NOT NULL, duration_us INTEGER, "
        "src_ip TEXT NOT NULL, src_port INTEGER NOT NULL, dst_ip TEXT NOT NULL, dst_port INTEGER NOT NULL, "
        "has_request INTEGER NOT NULL, has_response INTEGER NOT NULL, method TEXT, path TEXT, version TEXT, "
        "req_headers TEXT, req_body_size INTEGER, status INTEGER, reason TEXT, resp_headers TEXT, resp_body_size "
        "INTEGER, dns_id INTEGER, qname TEXT, qtype TEXT, rcode TEXT, answers TEXT, flags TEXT NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');");
  }
  {
    CallDb db(v1);
    EXPECT_EQ(db.meta("schema_version"), "4");
  }
  { CallDb db(fresh); }
  EXPECT_EQ(table_columns(v1), table_columns(fresh));
}

TEST(CallBodyDb, MergedPartsKeepTheirBodies) {
  // tapwire dissect --jobs N: INSERT INTO calls SELECT * FROM part.calls.
  TempDir dir("body-db");
  const std::string part = fresh_db(dir, "part.db"), target = fresh_db(dir, "target.db");
  const auto calls = body_calls();
  {
    CallDb db(part);
    for (auto& c : calls) db.insert(c);
  }
  { CallDb db(target); }
  Sql(target).exec("ATTACH DATABASE '" + part + "' AS part; INSERT INTO calls SELECT * FROM part.calls; DETACH part");
  CallDb db(target, true);
  CallDb::Query q;
  q.by_rowid = true;
  auto rows = db.query(q);
  ASSERT_EQ(rows.size(), calls.size());
  for (size_t i = 0; i < calls.size(); i++) EXPECT_EQ(rows[i].dump(), to_json(calls[i]).dump()) << i;
}

TEST(CallBodyDb, QueryById) {
  TempDir dir("body-db");
  const std::string path = fresh_db(dir);
  const auto calls = body_calls();
  {
    CallDb db(path);
    for (auto& c : calls) db.insert(c);
  }
  CallDb db(path, true);
  CallDb::Query q;
  q.id = calls[3].id();
  auto rows = db.query(q);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].dump(), to_json(calls[3]).dump());
  q.id = "0123456789abcdef";
  EXPECT_TRUE(db.query(q).empty());
}

TEST(CallBodyDb, SizeBoundHoldsWithLargeBodies) {
  // tap.capture.dbMaxSize: rows with bodies are large; the bound is checked
  // by the bytes of bodies written too, not only every 256 calls.
  TempDir dir("body-db");
  const std::string path = fresh_db(dir);
  constexpr uint64_t kMax = 1ull << 20;
  const std::string body = random_bytes(60 * 1024);
  CallDb db(path);
  db.set_auto_commit(false);
  db.set_max_size(kMax);
  for (uint16_t i = 0; i < 100; i++) {
    auto calls = dissect({{true, kGet}, {false, response("Content-Type: application/octet-stream\r\n", body)}},
                         64 * 1024, static_cast<uint16_t>(41000 + i));
    ASSERT_EQ(calls.size(), 1u);
    db.insert(calls[0]);
    ASSERT_LE(db.size_stats().bytes, kMax + kMax / 8) << "after " << i + 1 << " calls";
  }
  db.commit();
  EXPECT_LE(db.size_stats().bytes, kMax);
  EXPECT_GT(db.size_stats().calls_deleted, 0u);
}

// ----------------------------------------------- HAR and calls --id ---

namespace {

struct CliRun {
  int status = -1;
  std::string out, err;
};

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

CliRun run_tapwire(const TempDir& dir, const std::vector<std::string>& args) {
  const std::string bin = std::string(TW_BUILD_DIR) + "/tapwire";
  const std::string out_path = dir.path() + "/cli.out", err_path = dir.path() + "/cli.err";
  CliRun r;
  pid_t pid = fork();
  if (pid == 0) {
    FILE* o = std::freopen(out_path.c_str(), "w", stdout);
    FILE* e = std::freopen(err_path.c_str(), "w", stderr);
    if (!o || !e) _exit(126);
    std::vector<char*> argv{const_cast<char*>(bin.c_str())};
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = slurp(out_path);
  r.err = slurp(err_path);
  return r;
}

class BodyCli : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access((std::string(TW_BUILD_DIR) + "/tapwire").c_str(), X_OK) != 0)
      FAIL() << TW_BUILD_DIR "/tapwire not built: build the 'tapwire' target first";
    calls = body_calls();
    db = fresh_db(dir);
    CallDb w(db);
    for (auto& c : calls) w.insert(c);
  }
  TempDir dir{"body-cli"};
  std::vector<Call> calls;
  std::string db;
};

}  // namespace

TEST_F(BodyCli, HarHasPostDataAndContent) {
  const std::string har_path = dir.path() + "/calls.har";
  CliRun r = run_tapwire(dir, {"export", "har", "--db", db, "-o", har_path});
  ASSERT_EQ(r.status, 0) << r.err;
  json har = json::parse(slurp(har_path));
  auto& entries = har["log"]["entries"];
  ASSERT_EQ(entries.size(), calls.size());
  // HAR entries are in time order, as the calls were made.
  const json& e0 = entries[0];
  EXPECT_EQ(e0["request"]["postData"], (json{{"mimeType", "application/json"}, {"text", "{\"a\": 1}\n"}}));
  const json& c0 = e0["response"]["content"];
  const json rec0 = to_json(calls[0]);
  EXPECT_EQ(c0["mimeType"], "text/html");
  EXPECT_EQ(c0["text"], rec0["response"]["body"]);
  EXPECT_EQ(c0["size"], rec0["response"]["body_decoded_size"]);
  EXPECT_EQ(c0["compression"].get<int64_t>(),
            rec0["response"]["body_decoded_size"].get<int64_t>() - rec0["response"]["body_size"].get<int64_t>());
  EXPECT_EQ(e0["response"]["bodySize"], rec0["response"]["body_size"]);
  EXPECT_FALSE(c0.contains("encoding"));
  // Binary: base64 both ways.
  const json& e4 = entries[4];
  EXPECT_EQ(e4["request"]["postData"]["_encoding"], "base64");
  EXPECT_EQ(from_base64(e4["request"]["postData"]["text"]), random_bytes(256));
  EXPECT_EQ(e4["response"]["content"]["encoding"], "base64");
  EXPECT_EQ(from_base64(e4["response"]["content"]["text"]), random_bytes(100, 9));
  EXPECT_EQ(e4["response"]["content"]["size"], 100);
  EXPECT_FALSE(e4["response"]["content"].contains("compression"));
  // Capped decoded body: no saving claimed.
  EXPECT_FALSE(entries[5]["response"]["content"].contains("compression"));
  // GET: no postData.
  EXPECT_FALSE(entries[1]["request"].contains("postData"));
}

TEST_F(BodyCli, CallsIdPrintsTheWholeCall) {
  CliRun r = run_tapwire(dir, {"calls", "--db", db, "--id", calls[0].id()});
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string& o = r.out;
  for (const char* want :
       {"POST /j HTTP/1.1", "> content-type: application/json", "{\"a\": 1}", "< HTTP/1.1 200 OK",
        "< content-encoding: gzip", "line 0: {\"n\": 0}", "gzip", "decoded", "flags     none", "client    10.9.0.2:40000",
        "server    10.9.0.1:80", "duration"})
    EXPECT_NE(o.find(want), std::string::npos) << want << "\n" << o;
  EXPECT_NE(o.find(calls[0].id()), std::string::npos);

  // Binary: a hexdump; flags named.
  r = run_tapwire(dir, {"calls", "--db", db, "--id", calls[4].id()});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("  00000000  "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("binary"), std::string::npos) << r.out;
  r = run_tapwire(dir, {"calls", "--db", db, "--id", calls[6].id()});
  EXPECT_NE(r.out.find("flags     body_decode_error"), std::string::npos) << r.out;
  // A NUL or an escape in a text body does not reach the terminal as is.
  r = run_tapwire(dir, {"calls", "--db", db, "--id", calls[9].id()});
  EXPECT_NE(r.out.find("nul\\x00byte"), std::string::npos) << r.out;

  // --json: the record.
  r = run_tapwire(dir, {"calls", "--db", db, "--id", calls[0].id(), "--json"});
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(json::parse(r.out), to_json(calls[0]));

  // Unknown and malformed ids: one line, exit 1.
  for (const char* id : {"0123456789abcdef", "nothex", "0123"}) {
    r = run_tapwire(dir, {"calls", "--db", db, "--id", id});
    EXPECT_EQ(r.status, 1) << id;
    EXPECT_TRUE(r.out.empty()) << r.out;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << r.err;
  }
  r = run_tapwire(dir, {"calls", "--db", db, "--id", "0123456789abcdef"});
  EXPECT_NE(r.err.find("no call with this id"), std::string::npos) << r.err;
}

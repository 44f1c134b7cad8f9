// MongoDB wire protocol (userspace/protocols/mongodb/): messages built here
// by hand (BSON by libbson) — OP_MSG with body and document-sequence
// sections, checksum, moreToCome and exhaust; OP_QUERY / OP_REPLY; the
// legacy opcodes; OP_COMPRESSED with noop, snappy, zlib and zstd — run
// through the whole engine (a Dissector with a memory limit, synthetic TCP
// connections) whole, byte by byte and at random split points with the same
// records; pipelined and out-of-order replies; a connection joined in the
// middle; and hostile input: a 2^31 length, a 48 MB message, corrupt BSON
// lengths, deep nesting, huge arrays, a compression bomb, garbage — bounded
// memory, flagged, and the calls after them still dissected.
#include <bson/bson.h>
#include <gtest/gtest.h>
#include <snappy.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "dissector.hpp"
#include "engine_harness.hpp"
#include "mongodb/session.hpp"
#include "mongodb/wire.hpp"

using namespace tapwire::dissect;
namespace proto = tapwire::proto;
using nlohmann::json;

namespace {

constexpr size_t kLimit = 4u << 20;

// ------------------------------------------------------------- messages --

std::string bson_bytes(bson_t* b) {
  std::string s(reinterpret_cast<const char*>(bson_get_data(b)), b->len);
  bson_destroy(b);
  return s;
}

void put32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; i++) s.push_back(static_cast<char>(v >> (8 * i)));
}
void put64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; i++) s.push_back(static_cast<char>(v >> (8 * i)));
}

std::string header(uint32_t len, int32_t id, int32_t to, int32_t op) {
  std::string h;
  put32(h, len);
  put32(h, static_cast<uint32_t>(id));
  put32(h, static_cast<uint32_t>(to));
  put32(h, static_cast<uint32_t>(op));
  return h;
}

std::string with_header(int32_t id, int32_t to, int32_t op, const std::string& body) {
  return header(static_cast<uint32_t>(16 + body.size()), id, to, op) + body;
}

struct Seq {
  std::string id;
  std::vector<std::string> docs;
};

// OP_MSG: a body section, then document sequences; a CRC (any 4 bytes:
// the dissector does not check it) when the flag says so.
std::string op_msg(int32_t id, int32_t to, const std::string& body, const std::vector<Seq>& seqs = {},
                   uint32_t flags = 0) {
  std::string m;
  put32(m, flags);
  m.push_back(0);
  m += body;
  for (const Seq& s : seqs) {
    std::string sec = s.id + std::string(1, '\0');
    for (const auto& d : s.docs) sec += d;
    m.push_back(1);
    put32(m, static_cast<uint32_t>(4 + sec.size()));
    m += sec;
  }
  if (flags & proto::kMsgChecksumPresent) put32(m, 0xdeadbeef);
  return with_header(id, to, proto::kOpMsg, m);
}

std::string op_query(int32_t id, const std::string& ns, const std::string& q) {
  std::string m;
  put32(m, 0);
  m += ns + std::string(1, '\0');
  put32(m, 0);
  put32(m, static_cast<uint32_t>(-1));
  m += q;
  return with_header(id, 0, proto::kOpQuery, m);
}

std::string op_reply(int32_t id, int32_t to, const std::vector<std::string>& docs, int32_t flags = 8) {
  std::string m;
  put32(m, static_cast<uint32_t>(flags));
  put64(m, 0);
  put32(m, 0);
  put32(m, static_cast<uint32_t>(docs.size()));
  for (const auto& d : docs) m += d;
  return with_header(id, to, proto::kOpReply, m);
}

std::string compress(uint8_t c, const std::string& in) {
  switch (c) {
    case 0:
      return in;
    case 1: {
      std::string out;
      snappy::Compress(in.data(), in.size(), &out);
      return out;
    }
    case 2: {
      uLongf n = compressBound(in.size());
      std::string out(n, '\0');
      EXPECT_EQ(compress2(reinterpret_cast<Bytef*>(out.data()), &n, reinterpret_cast<const Bytef*>(in.data()), in.size(), 6), Z_OK);
      out.resize(n);
      return out;
    }
    default: {
      std::string out(ZSTD_compressBound(in.size()), '\0');
      const size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), 3);
      EXPECT_FALSE(ZSTD_isError(n));
      out.resize(n);
      return out;
    }
  }
}

// `msg` (a whole message) in OP_COMPRESSED.
std::string op_compressed(const std::string& msg, uint8_t compressor, int32_t claimed_size = -1) {
  const int32_t id = proto::mongo_i32(reinterpret_cast<const uint8_t*>(msg.data()) + 4);
  const int32_t to = proto::mongo_i32(reinterpret_cast<const uint8_t*>(msg.data()) + 8);
  const int32_t op = proto::mongo_i32(reinterpret_cast<const uint8_t*>(msg.data()) + 12);
  const std::string body = msg.substr(16);
  std::string m;
  put32(m, static_cast<uint32_t>(op));
  put32(m, static_cast<uint32_t>(claimed_size >= 0 ? claimed_size : static_cast<int32_t>(body.size())));
  m.push_back(static_cast<char>(compressor));
  m += compress(compressor, body);
  return with_header(id, to, proto::kOpCompressed, m);
}

std::string find_cmd(const char* coll, const char* db = "test") {
  return bson_bytes(BCON_NEW("find", BCON_UTF8(coll), "filter", "{", "x", BCON_INT32(1), "}", "$db", BCON_UTF8(db)));
}
std::string ok_reply() {
  return bson_bytes(BCON_NEW("cursor", "{", "firstBatch", "[", "{", "x", BCON_INT32(1), "}", "]", "id", BCON_INT64(0),
                             "ns", BCON_UTF8("test.c"), "}", "ok", BCON_DOUBLE(1.0)));
}
std::string err_reply(int32_t code, const char* msg, const char* name) {
  return bson_bytes(BCON_NEW("ok", BCON_DOUBLE(0.0), "errmsg", BCON_UTF8(msg), "code", BCON_INT32(code), "codeName",
                             BCON_UTF8(name)));
}

// ------------------------------------------------------------- traffic --

using Conn = tapwire::test::ConnOn<27017, 40000>;
using tapwire::test::Split;
using Result = tapwire::test::EngineRun;

Result run(const std::vector<Conn>& conns, Split split = Split::Whole, uint32_t seed = 0, bool handshake = true) {
  return tapwire::test::run_engine(conns, tapwire::test::run_options(kLimit, split, seed, handshake, false));
}

// Whole, byte by byte and at random splits: the same records; memory bounded.
Result run_all_ways(const std::vector<Conn>& conns) {
  return tapwire::test::run_all_ways(conns, tapwire::test::run_options(kLimit, Split::Whole, 0, true, false),
                                     {.peak_limit = kLimit});
}

std::string flags_of(uint32_t f) {
  std::string s;
  for (const std::string& n : proto::flag_names(f)) s += (s.empty() ? "" : ",") + n;
  return s;
}

const proto::MongoMessage* req_of(const Call* c) {
  auto* r = c->req<proto::MongoRecord>();
  return r ? &r->msg : nullptr;
}

json record(const Result& r, size_t i) { return json::parse(r.records.at(i)); }

// ---------------------------------------------------------------- tests --

TEST(MongoDb, OpMsgFindAndErrorPairedByRequestId) {
  Conn c;
  c.c(op_msg(1, 0, find_cmd("users")));
  c.s(op_msg(101, 1, ok_reply()));
  c.c(op_msg(2, 0, bson_bytes(BCON_NEW("replSetGetStatus", BCON_DOUBLE(1), "$db", BCON_UTF8("admin")))));
  c.s(op_msg(102, 2, err_reply(76, "not running with --replSet", "NoReplicationEnabled")));
  Result r = run_all_ways({c});
  ASSERT_EQ(r.calls.size(), 2u);
  const Call& a = r.calls[0];
  EXPECT_STREQ(a.protocol, "mongodb");
  EXPECT_EQ(a.method, "find");
  EXPECT_EQ(a.path, "test.users");
  EXPECT_EQ(a.status, 0);
  EXPECT_EQ(flags_of(a.flags), "");
  json j = record(r, 0);
  EXPECT_EQ(j["request"]["command"], "find");
  EXPECT_EQ(j["request"]["database"], "test");
  EXPECT_EQ(j["request"]["collection"], "users");
  EXPECT_EQ(j["request"]["document"], json::parse(R"({"find":"users","filter":{"x":1},"$db":"test"})"));
  EXPECT_EQ(j["response"]["ok"], 1);
  EXPECT_EQ(j["response"]["response_to"], 1);
  EXPECT_EQ(j["response"]["document"]["cursor"]["ns"], "test.c");
  const Call& b = r.calls[1];
  EXPECT_EQ(b.method, "replSetGetStatus");
  EXPECT_EQ(b.path, "admin");
  EXPECT_EQ(b.status, 76);
  j = record(r, 1);
  EXPECT_EQ(j["response"]["ok"], 0);
  EXPECT_EQ(j["response"]["error"], json::parse(R"({"code":76,"message":"not running with --replSet","code_name":"NoReplicationEnabled"})"));
}

TEST(MongoDb, DocumentSequenceChecksumAndWriteErrors) {
  Conn c;
  std::vector<std::string> docs;
  for (int i = 0; i < 3; i++) docs.push_back(bson_bytes(BCON_NEW("_id", BCON_INT32(i), "name", BCON_UTF8("n"))));
  const std::string body = bson_bytes(BCON_NEW("insert", BCON_UTF8("people"), "ordered", BCON_BOOL(true), "$db", BCON_UTF8("app")));
  c.c(op_msg(7, 0, body, {{"documents", docs}}, proto::kMsgChecksumPresent));
  c.s(op_msg(8, 7,
             bson_bytes(BCON_NEW("n", BCON_INT32(2), "writeErrors", "[", "{", "index", BCON_INT32(2), "code",
                                 BCON_INT32(11000), "errmsg", BCON_UTF8("E11000 duplicate key"), "}", "]", "ok",
                                 BCON_DOUBLE(1))),
             {}, proto::kMsgChecksumPresent));
  Result r = run_all_ways({c});
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].method, "insert");
  EXPECT_EQ(r.calls[0].path, "app.people");
  EXPECT_EQ(r.calls[0].status, 11000);
  json j = record(r, 0);
  EXPECT_EQ(j["request"]["checksum_present"], true);
  EXPECT_EQ(j["request"]["sequences"], json::parse(R"([{"identifier":"documents","documents":3}])"));
  EXPECT_EQ(j["request"]["document"]["documents"].size(), 3u);
  EXPECT_EQ(j["request"]["document"]["documents"][2]["_id"], 2);
  EXPECT_EQ(j["response"]["ok"], 1);
  EXPECT_EQ(j["response"]["error"]["code"], 11000);
  EXPECT_EQ(j["response"]["error"]["message"], "E11000 duplicate key");
}

TEST(MongoDb, MoreToComeAndExhaust) {
  Conn c;
  // An unacknowledged write: no reply, reported alone.
  c.c(op_msg(1, 0, bson_bytes(BCON_NEW("insert", BCON_UTF8("logs"), "$db", BCON_UTF8("t"))),
             {{"documents", {bson_bytes(BCON_NEW("a", BCON_INT32(1)))}}}, proto::kMsgMoreToCome));
  // An exhaust getMore: three replies, each answering the one before.
  c.c(op_msg(2, 0, bson_bytes(BCON_NEW("getMore", BCON_INT64(77), "collection", BCON_UTF8("logs"), "$db", BCON_UTF8("t"))),
             {}, proto::kMsgExhaustAllowed));
  c.s(op_msg(200, 2, ok_reply(), {}, proto::kMsgMoreToCome));
  c.s(op_msg(201, 200, ok_reply(), {}, proto::kMsgMoreToCome));
  c.s(op_msg(202, 201, ok_reply()));
  c.c(op_msg(3, 0, find_cmd("after")));
  c.s(op_msg(203, 3, ok_reply()));
  Result r = run_all_ways({c});
  ASSERT_EQ(r.calls.size(), 5u);
  EXPECT_EQ(r.calls[0].method, "insert");
  EXPECT_FALSE(r.calls[0].has_response());
  EXPECT_EQ(r.calls[0].status, -1);
  EXPECT_EQ(record(r, 0)["request"]["more_to_come"], true);
  EXPECT_EQ(r.calls[1].method, "getMore");
  EXPECT_EQ(r.calls[1].path, "t");  // getMore's first value is a cursor id, not a collection
  EXPECT_TRUE(r.calls[1].has_request() && r.calls[1].has_response());
  for (int i = 2; i < 4; i++) {
    EXPECT_FALSE(r.calls[i].has_request());
    EXPECT_EQ(r.calls[i].method, "getMore");
    EXPECT_EQ(flags_of(r.calls[i].flags), "") << "exhaust replies are not orphans";
  }
  EXPECT_EQ(r.calls[4].method, "find");
  EXPECT_EQ(r.calls[4].status, 0);
}

TEST(MongoDb, OpQueryOpReplyAndLegacyOps) {
  Conn c;
  c.c(op_query(1, "admin.$cmd", bson_bytes(BCON_NEW("isMaster", BCON_INT32(1), "client", "{", "driver", BCON_UTF8("x"), "}"))));
  c.s(op_reply(60, 1, {bson_bytes(BCON_NEW("ismaster", BCON_BOOL(true), "ok", BCON_DOUBLE(1)))}));
  c.c(op_query(2, "shop.items", bson_bytes(BCON_NEW("price", "{", "$gt", BCON_INT32(3), "}"))));
  c.s(op_reply(61, 2, {bson_bytes(BCON_NEW("$err", BCON_UTF8("bad query"), "code", BCON_INT32(2)))}, 2));
  // OP_INSERT: no reply.
  std::string ins;
  put32(ins, 0);
  ins += std::string("shop.items") + '\0' + bson_bytes(BCON_NEW("a", BCON_INT32(1)));
  c.c(with_header(3, 0, proto::kOpInsert, ins));
  c.c(op_msg(4, 0, find_cmd("next")));
  c.s(op_msg(62, 4, ok_reply()));
  Result r = run_all_ways({c});
  ASSERT_EQ(r.calls.size(), 4u);
  EXPECT_EQ(r.calls[0].method, "isMaster");
  EXPECT_EQ(r.calls[0].path, "admin");
  EXPECT_EQ(r.calls[0].status, 0);
  json j = record(r, 0);
  EXPECT_EQ(j["request"]["op"], "OP_QUERY");
  EXPECT_EQ(j["request"]["full_collection_name"], "admin.$cmd");
  EXPECT_EQ(j["response"]["op"], "OP_REPLY");
  EXPECT_EQ(j["response"]["number_returned"], 1);
  EXPECT_EQ(j["response"]["ok"], 1);
  EXPECT_EQ(r.calls[1].method, "find");
  EXPECT_EQ(r.calls[1].path, "shop.items");
  EXPECT_EQ(r.calls[1].status, 2);
  EXPECT_EQ(record(r, 1)["response"]["error"]["message"], "bad query");
  EXPECT_EQ(r.calls[2].method, "OP_INSERT");
  EXPECT_EQ(r.calls[2].path, "shop.items");
  EXPECT_EQ(record(r, 2)["request"]["documents"], 1);
  EXPECT_EQ(r.calls[3].method, "find");
}

TEST(MongoDb, OpCompressedEveryCodec) {
  for (uint8_t codec : {0, 1, 2, 3}) {
    SCOPED_TRACE("compressor " + std::to_string(codec));
    Conn c;
    c.c(op_compressed(op_msg(1, 0, find_cmd("zipped", "z")), codec));
    c.s(op_compressed(op_msg(9, 1, err_reply(13, "unauthorized", "Unauthorized")), codec));
    Result r = run_all_ways({c});
    ASSERT_EQ(r.calls.size(), 1u);
    EXPECT_EQ(r.calls[0].method, "find");
    EXPECT_EQ(r.calls[0].path, "z.zipped");
    EXPECT_EQ(r.calls[0].status, 13);
    EXPECT_EQ(flags_of(r.calls[0].flags), "");
    json j = record(r, 0);
    const char* names[] = {"noop", "snappy", "zlib", "zstd"};
    EXPECT_EQ(j["request"]["compressor"], names[codec]);
    EXPECT_EQ(j["request"]["op"], "OP_MSG");
    EXPECT_EQ(j["request"]["document"]["filter"]["x"], 1);
  }
}

TEST(MongoDb, PipelinedRepliesOutOfOrder) {
  Conn c;
  c.c(op_msg(1, 0, find_cmd("a")) + op_msg(2, 0, find_cmd("b")) + op_msg(3, 0, find_cmd("c")));
  c.s(op_msg(12, 2, ok_reply()) + op_msg(11, 1, ok_reply()));
  c.s(op_msg(13, 3, err_reply(50, "time limit", "MaxTimeMSExpired")));
  c.s(op_msg(14, 99, ok_reply()));  // answers nothing seen
  Result r = run_all_ways({c});
  ASSERT_EQ(r.calls.size(), 4u);
  EXPECT_EQ(r.calls[0].path, "test.b");
  EXPECT_EQ(r.calls[1].path, "test.a");
  EXPECT_EQ(r.calls[2].path, "test.c");
  EXPECT_EQ(r.calls[2].status, 50);
  EXPECT_FALSE(r.calls[3].has_request());
  EXPECT_EQ(flags_of(r.calls[3].flags), "orphan_response");
}

TEST(MongoDb, JoinedMidConnectionRecoversAtTheNextMessage) {
  // The capture starts inside a message of each direction (no handshake).
  const std::string first_req = op_msg(1, 0, find_cmd("lost"));
  const std::string first_resp = op_msg(100, 1, ok_reply());
  Conn c;
  c.c(first_req.substr(23) + op_msg(2, 0, find_cmd("seen")));
  c.s(first_resp.substr(30) + op_msg(101, 2, ok_reply()));
  c.c(op_msg(3, 0, find_cmd("also")));
  c.s(op_msg(102, 3, ok_reply()));
  for (int split = 0; split < 3; split++) {
    Result r = run({c}, split == 0 ? Split::Whole : split == 1 ? Split::Bytes : Split::Random, 5, false);
    ASSERT_EQ(r.calls.size(), 2u) << "split " << split;
    EXPECT_EQ(r.calls[0].path, "test.seen");
    EXPECT_EQ(r.calls[0].status, 0);
    EXPECT_EQ(r.calls[1].path, "test.also");
  }
}

TEST(MongoDb, GapInsideAndBetweenMessages) {
  // The engine gives a hole up at the connection's end: what follows it
  // comes then. 10 bytes of a request lost after its header and command
  // name: reported from what is kept, flagged; a hole inside a header: the
  // direction looks for the next message.
  Conn c;
  c.c(op_msg(1, 0, find_cmd("one")));
  c.s(op_msg(100, 1, ok_reply()));
  const std::string holed = op_msg(2, 0, find_cmd("two"));
  const std::string cut_header = op_msg(3, 0, find_cmd("three"));
  c.c(holed.substr(0, 45));
  c.msgs.push_back({true, holed.substr(55) + cut_header.substr(0, 10), 10});
  c.msgs.push_back({true, cut_header.substr(14) + op_msg(4, 0, find_cmd("four")), 4});
  Result r = run({c});
  ASSERT_EQ(r.calls.size(), 3u);
  EXPECT_EQ(r.calls[0].path, "test.one");
  EXPECT_EQ(r.calls[0].status, 0);
  EXPECT_EQ(r.calls[1].method, "find");
  EXPECT_EQ(r.calls[1].path, "two");  // $db was in the bytes lost
  EXPECT_EQ(flags_of(r.calls[1].flags), "gap,truncated,closed,body_truncated");
  EXPECT_EQ(r.calls[2].path, "test.four");
  EXPECT_EQ(flags_of(r.calls[2].flags), "gap,closed");
}

// ------------------------------------------------------------ hostile --

// BSON nested `depth` levels: {"a":{"a":{...}}}, built as bytes.
std::string nested_doc(int depth) {
  std::string d = std::string("\x05\x00\x00\x00\x00", 5);
  for (int i = 0; i < depth; i++) {
    std::string outer;
    put32(outer, static_cast<uint32_t>(4 + 1 + 2 + d.size() + 1));
    outer.push_back(0x03);
    outer += std::string("a") + '\0';
    outer += d;
    outer.push_back(0);
    d = outer;
  }
  return d;
}

TEST(MongoDb, HostileInputIsBoundedFlaggedAndTheNextCallsSurvive) {
  Conn c;
  // 1. Deep nesting: 5000 levels (35 KB), written to depth 32.
  std::string deep = nested_doc(5000);
  {
    bson_t* b = bson_new();
    BSON_APPEND_UTF8(b, "find", "deep");
    bson_t inner;
    ASSERT_TRUE(bson_init_static(&inner, reinterpret_cast<const uint8_t*>(deep.data()), deep.size()));
    BSON_APPEND_DOCUMENT(b, "filter", &inner);
    BSON_APPEND_UTF8(b, "$db", "h");
    c.c(op_msg(1, 0, bson_bytes(b)));
  }
  c.s(op_msg(100, 1, ok_reply()));
  // 2. A huge array: 200 000 int32 elements (1.6 MB), document kept to the cap.
  {
    bson_t* b = bson_new();
    BSON_APPEND_UTF8(b, "insert", "big");
    bson_t arr;
    bson_append_array_begin(b, "ids", 3, &arr);
    char key[16];
    for (int i = 0; i < 200000; i++) {
      const char* k = nullptr;
      const size_t kl = bson_uint32_to_string(static_cast<uint32_t>(i), &k, key, sizeof key);
      bson_append_int32(&arr, k, static_cast<int>(kl), i);
    }
    bson_append_array_end(b, &arr);
    BSON_APPEND_UTF8(b, "$db", "h");
    c.c(op_msg(2, 0, bson_bytes(b)));
  }
  c.s(op_msg(101, 2, ok_reply()));
  // 3. A body document whose length runs past the message: protocol error.
  {
    std::string doc = find_cmd("badlen");
    std::string m = op_msg(3, 0, doc);
    const uint32_t bad = 0x7ffffff0;
    std::memcpy(m.data() + 21, &bad, 4);
    c.c(m);
  }
  c.s(op_msg(102, 3, ok_reply()));
  // 4. Corrupt element inside: a string length past its document.
  {
    std::string doc = find_cmd("corrupt");
    const uint32_t bad = 0x00ffffff;
    std::memcpy(doc.data() + 4 + 1 + 5, &bad, 4);  // "find"'s string length
    c.c(op_msg(4, 0, doc));
  }
  c.s(op_msg(103, 4, ok_reply()));
  // 5. A zlib bomb: 40 MB of zeros claimed and sent compressed (40 KB).
  {
    std::string body;
    put32(body, 0);
    body.push_back(0);
    const std::string zeros(40'000'000, '\0');
    std::string z = compress(2, zeros);
    std::string m;
    put32(m, proto::kOpMsg);
    put32(m, 40'000'005);
    m.push_back(2);
    m += z;
    c.c(with_header(5, 0, proto::kOpCompressed, m));
  }
  c.s(op_msg(104, 5, ok_reply()));
  // 6. A 47 MB message, most of it skipped.
  {
    std::string big(47'000'000, 'x');
    bson_t* b = bson_new();
    BSON_APPEND_UTF8(b, "insert", "huge");
    BSON_APPEND_UTF8(b, "$db", "h");
    std::string body = bson_bytes(b);
    std::string doc;
    put32(doc, static_cast<uint32_t>(4 + 1 + 2 + 4 + big.size() + 1 + 1));
    doc.push_back(0x02);
    doc += std::string("v") + '\0';
    put32(doc, static_cast<uint32_t>(big.size() + 1));
    doc += big;
    doc.push_back(0);
    doc.push_back(0);
    c.c(op_msg(6, 0, body, {{"documents", {doc}}}));
  }
  c.s(op_msg(105, 6, ok_reply()));
  // 7. A 2^31 length, then garbage: the stream resynchronises at the next header.
  c.c(header(0x80000000u, 7, 0, proto::kOpMsg) + std::string(300, '\x5a'));
  c.c(op_msg(8, 0, find_cmd("after")));
  c.s(op_msg(107, 8, ok_reply()));
  Result r = run({c});
  EXPECT_LE(r.m.memory_peak_bytes, 2u << 20);
  for (size_t i = 0; i < kShedReasons; i++) EXPECT_EQ(r.m.shed[i], 0u) << shed_reason_name(static_cast<ShedReason>(i));
  ASSERT_EQ(r.calls.size(), 7u);
  for (size_t i = 0; i < r.records.size(); i++) EXPECT_TRUE(json::accept(r.records[i])) << i;
  EXPECT_EQ(r.calls[0].method, "find");
  EXPECT_TRUE(r.calls[0].flags & proto::kFlagBodyTruncated);
  EXPECT_EQ(r.calls[1].method, "insert");
  EXPECT_TRUE(r.calls[1].flags & proto::kFlagBodyTruncated);
  EXPECT_LE(req_of(&r.calls[1])->document.size(), 64u * 1024);
  EXPECT_TRUE(r.calls[2].flags & proto::kFlagProtocolError);
  EXPECT_TRUE(r.calls[3].flags & proto::kFlagProtocolError);
  EXPECT_EQ(r.calls[4].method, "OP_MSG");  // nothing of the command was decoded
  EXPECT_TRUE(r.calls[4].flags & proto::kFlagTruncated);
  EXPECT_EQ(r.calls[5].method, "insert");
  EXPECT_EQ(r.calls[5].path, "h.huge");
  EXPECT_TRUE(r.calls[5].flags & proto::kFlagTruncated);
  EXPECT_GT(req_of(&r.calls[5])->length, 47'000'000u);
  EXPECT_EQ(r.calls[6].path, "test.after");
  EXPECT_EQ(r.calls[6].status, 0);
  EXPECT_TRUE(r.calls[6].flags & proto::kFlagGap) << flags_of(r.calls[6].flags);
  EXPECT_GT(r.m.parse_errors_total(), 0u);
}

TEST(MongoDb, BsonToJsonTypesAndCaps) {
  bson_oid_t oid;
  bson_oid_init_from_string(&oid, "0123456789abcdef01234567");
  bson_decimal128_t dec;
  bson_decimal128_from_string("1.5", &dec);
  const uint8_t bin[3] = {1, 2, 3};
  bson_t* b = BCON_NEW("d", BCON_DOUBLE(0.5), "s", BCON_UTF8("x\"y"), "o", BCON_OID(&oid), "t", BCON_BOOL(true),
                       "dt", BCON_DATE_TIME(86400000), "n", BCON_NULL, "i", BCON_INT32(-3), "l", BCON_INT64(1ll << 40),
                       "b", BCON_BIN(BSON_SUBTYPE_BINARY, bin, 3), "dec", BCON_DECIMAL128(&dec), "ts",
                       BCON_TIMESTAMP(5, 6), "re", BCON_REGEX("^a", "i"), "mx", BCON_MAXKEY, "a", "[", BCON_INT32(1),
                       "]");
  const std::string doc = bson_bytes(b);
  std::string out;
  bool truncated = false;
  ASSERT_TRUE(proto::bson_to_json({reinterpret_cast<const uint8_t*>(doc.data()), doc.size()}, out, {}, truncated));
  EXPECT_FALSE(truncated);
  EXPECT_EQ(json::parse(out), json::parse(R"({"d":0.5,"s":"x\"y","o":{"$oid":"0123456789abcdef01234567"},"t":true,
    "dt":{"$date":"1970-01-02T00:00:00.000Z"},"n":null,"i":-3,"l":1099511627776,
    "b":{"$binary":{"base64":"AQID","subType":"00"}},"dec":{"$numberDecimal":"1.5"},
    "ts":{"$timestamp":{"t":5,"i":6}},"re":{"$regularExpression":{"pattern":"^a","options":"i"}},
    "mx":{"$maxKey":1},"a":[1]})"));
  // Capped: a small JSON budget keeps valid JSON and says so.
  proto::MongoLimits small;
  small.max_json = 40;
  out.clear();
  ASSERT_TRUE(proto::bson_to_json({reinterpret_cast<const uint8_t*>(doc.data()), doc.size()}, out, small, truncated));
  EXPECT_TRUE(truncated);
  EXPECT_LE(out.size(), 40u + 2);
  EXPECT_TRUE(json::accept(out));
}

TEST(MongoDb, DetectionIsStrict) {
  proto::MongoProtocol p;
  proto::FlowView v;
  auto det = [&](const std::string& s, int side = 0) {
    return p.detect({reinterpret_cast<const uint8_t*>(s.data()), s.size()}, side, v);
  };
  const std::string req = op_msg(1, 0, find_cmd("c"));
  auto d = det(req);
  EXPECT_TRUE(d.matched);
  EXPECT_EQ(d.client_side, 0);
  d = det(op_msg(5, 1, ok_reply()), 1);  // a reply seen first: the other side is the client
  EXPECT_TRUE(d.matched);
  EXPECT_EQ(d.client_side, 0);
  EXPECT_TRUE(det(req.substr(0, 10)).need_more);
  EXPECT_TRUE(det(op_query(1, "admin.$cmd", find_cmd("c"))).matched);
  for (const char* other : {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "*1\r\n$4\r\nPING\r\n", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                            "\x16\x03\x01\x00\xf1\x01\x00\x00\xed\x03\x03 some random bytes of a hello",
                            "AMQP\x00\x00\x09\x01", "\x00\x00\x00\x08\x04\xd2\x16\x2f"}) {
    const auto dd = det(std::string(other, std::strlen(other) ? std::strlen(other) : 8));
    EXPECT_FALSE(dd.matched) << other;
  }
  // A header whose section kind is wrong, or whose document does not fit.
  std::string bad = req;
  bad[20] = 7;
  EXPECT_FALSE(det(bad).matched);
  bad = req;
  bad[21] = '\x7f';
  EXPECT_FALSE(det(bad).matched);
}

}  // namespace

// gRPC messages decoded with .proto files (grpc/proto_schema.hpp): .proto
// files written to a temp dir (nested messages, repeated fields, enums, a
// oneof, a map, a well-known type, imports across files and directories),
// messages encoded by hand and with libprotobuf's DynamicMessage; load
// errors; fallbacks to the schema-less decoder; random and mutated bytes.
#include <gtest/gtest.h>

#include <google/protobuf/compiler/importer.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/text_format.h>

#include <atomic>
#include <bit>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "grpc/grpc.hpp"
#include "grpc/proto_schema.hpp"
#include "temp_dir.hpp"

namespace {

using namespace tapwire::proto;
using nlohmann::json;
using tapwire::test_util::TempDir;

::testing::AssertionResult contains(const std::string& s, const std::string& part) {
  if (s.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << s << "\" lacks \"" << part << "\"";
}

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
std::string pb_double(uint32_t f, double d) {
  const uint64_t v = std::bit_cast<uint64_t>(d);
  std::string s = tag(f, 1);
  for (int i = 0; i < 8; i++) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  return s;
}

std::string hex(std::string_view s) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 15]);
  }
  return out;
}

GrpcMessage msg(std::string data) {
  GrpcMessage m;
  m.length = static_cast<uint32_t>(data.size());
  m.data = std::move(data);
  return m;
}

void write(const std::string& path, const std::string& text) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path) << text;
}

// ---- the schema -------------------------------------------------------------------

constexpr const char* kTypes = R"(syntax = "proto3";
package demo.common;

enum Color {
  COLOR_UNSPECIFIED = 0;
  RED = 1;
  GREEN = 2;
}

message Point {
  int32 x = 1;
  int32 y = 2;
}
)";

constexpr const char* kShop = R"(syntax = "proto3";
package demo.shop;

import "common/types.proto";
import "google/protobuf/timestamp.proto";

message Item {
  message Detail {
    string note = 1;
    bytes blob = 2;
  }
  string name = 1;
  repeated int32 sizes = 2;
  demo.common.Color color = 3;
  demo.common.Point at = 4;
  Detail detail = 5;
  oneof price {
    int64 cents = 6;
    string free_text = 7;
  }
}

message OrderRequest {
  string customer_name = 1;
  repeated Item items = 2;
  map<string, int32> tags = 3;
  google.protobuf.Timestamp placed_at = 4;
  double total = 5;
  bool urgent = 6;
  uint64 order_id = 7;
  sint32 delta = 8;
  repeated string notes = 9;
}

message OrderReply {
  int32 code = 1;
  repeated demo.common.Point route = 2;
}

message Node {
  int32 value = 1;
  Node child = 2;
}

service Shop {
  rpc Order(OrderRequest) returns (OrderReply);
  rpc Walk(stream Node) returns (stream Node);
}
)";

// root/common/types.proto and root/shop/shop.proto, loaded as one directory.
struct Shop {
  TempDir dir{"grpc-schema"};
  std::unique_ptr<ProtoSchemaDecoder> dec;
  Shop(const ProtoSchemaLimits& lim = {}) {
    write(dir.path() + "/common/types.proto", kTypes);
    write(dir.path() + "/shop/shop.proto", kShop);
    std::string error;
    dec = ProtoSchemaDecoder::load({dir.path()}, error, lim);
    EXPECT_TRUE(dec) << error;
    EXPECT_EQ(error, "");
  }
};

std::string point(int32_t x, int32_t y) {
  return pb_varint(1, static_cast<uint64_t>(static_cast<int64_t>(x))) +
         pb_varint(2, static_cast<uint64_t>(static_cast<int64_t>(y)));
}

std::string order_request() {
  const std::string item1 = pb_len(1, "pen") + pb_len(2, varint(1) + varint(2) + varint(300)) +  // packed
                            pb_varint(3, 2) + pb_len(4, point(3, -4)) +
                            pb_len(5, pb_len(1, "blue") + pb_len(2, std::string("\x00\xff", 2))) + pb_varint(6, 1999);
  const std::string item2 = pb_len(1, "gift") + pb_varint(2, 5) +  // unpacked repeated: accepted too
                            pb_len(7, "on the house");
  return pb_len(1, "Ada") + pb_len(2, item1) + pb_len(2, item2) + pb_len(3, pb_len(1, "a") + pb_varint(2, 1)) +
         pb_len(3, pb_len(1, "b") + pb_varint(2, 2)) + pb_len(4, pb_varint(1, 1704164645) + pb_varint(2, 500000000)) +
         pb_double(5, 12.5) + pb_varint(6, 1) + pb_varint(7, (uint64_t{1} << 63) + 1) + pb_varint(8, 5) +  // zigzag -3
         pb_len(9, "x") + pb_len(9, "y");
}

const json kOrderRequest = json::parse(R"({
  "customer_name": "Ada",
  "items": [
    {"name": "pen", "sizes": [1, 2, 300], "color": "GREEN", "at": {"x": 3, "y": -4},
     "detail": {"note": "blue", "blob": "AP8="}, "cents": "1999"},
    {"name": "gift", "sizes": [5], "free_text": "on the house"}],
  "tags": {"a": 1, "b": 2},
  "placed_at": "2024-01-02T03:04:05.500Z",
  "total": 12.5,
  "urgent": true,
  "order_id": "9223372036854775809",
  "delta": -3,
  "notes": ["x", "y"]})");

std::string node_chain(int depth) {
  std::string m = pb_varint(1, static_cast<uint64_t>(depth));
  for (int i = depth - 1; i >= 1; i--) m = pb_varint(1, static_cast<uint64_t>(i)) + pb_len(2, m);
  return m;
}

json schemaless(std::string_view service, std::string_view method, bool request, const GrpcMessage& m) {
  return SchemalessGrpcDecoder().decode(service, method, request, m);
}

// ---- decoding -----------------------------------------------------------------------

TEST(GrpcSchema, LoadsADirectoryWithImportsAndNamesTheFields) {
  Shop s;
  ASSERT_TRUE(s.dec);
  EXPECT_EQ(s.dec->file_count(), 2u);
  EXPECT_EQ(s.dec->method_count(), 2u);
  EXPECT_EQ(s.dec->message_type("demo.shop.Shop", "Order", true), "demo.shop.OrderRequest");
  EXPECT_EQ(s.dec->message_type("demo.shop.Shop", "Order", false), "demo.shop.OrderReply");
  EXPECT_EQ(s.dec->message_type("demo.shop.Shop", "Nope", true), "");
  EXPECT_EQ(s.dec->message_type("Shop", "Order", true), "");  // the full name is needed

  EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Order", true, msg(order_request())), kOrderRequest);
  // The response type for the response direction.
  const std::string reply = pb_varint(1, 7) + pb_len(2, point(1, 0)) + pb_len(2, point(0, 2));
  EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Order", false, msg(reply)),
            json::parse(R"({"code": 7, "route": [{"x": 1}, {"y": 2}]})"));
  // The empty message: every field at its default.
  EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Order", false, msg("")), json::object());
  // Streaming methods alike.
  EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Walk", false, msg(node_chain(3))),
            json::parse(R"({"value": 1, "child": {"value": 2, "child": {"value": 3}}})"));
}

TEST(GrpcSchema, OneofKeepsTheLastMemberSent) {
  Shop s;
  ASSERT_TRUE(s.dec);
  const std::string item = pb_len(1, "pen") + pb_varint(6, 10) + pb_len(7, "free");
  EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Order", true, msg(pb_len(2, item))),
            json::parse(R"({"items": [{"name": "pen", "free_text": "free"}]})"));
}

TEST(GrpcSchema, UnknownFieldsAreKeptSchemaless) {
  Shop s;
  ASSERT_TRUE(s.dec);
  // A field the schema lacks (a newer peer), at the top and inside a
  // repeated message; a known field with another wire type (a wrong schema).
  const std::string reply =
      pb_varint(1, 7) + pb_varint(99, 5) + pb_len(2, point(1, 2) + pb_len(9, "hi")) + pb_len(2, point(3, 4));
  EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Order", false, msg(reply)), json::parse(R"({
    "code": 7,
    "@unknown": [{"field": 99, "wire_type": "varint", "type": "varint", "value": 5}],
    "route": [{"x": 1, "y": 2, "@unknown": [{"field": 9, "wire_type": "len", "type": "string", "value": "hi"}]}, {"x": 3, "y": 4}]})"));
  EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Order", true, msg(pb_varint(1, 42))),
            json::parse(R"({"@unknown": [{"field": 1, "wire_type": "varint", "type": "varint", "value": 42}]})"));
}

TEST(GrpcSchema, FilesFromTwoDirectoriesImportEachOther) {
  // Given as files: each one's directory is an import path. No package.
  TempDir dir("grpc-schema");
  write(dir.path() + "/a/api.proto", R"(syntax = "proto3";
import "model.proto";
service Catalog {
  rpc Get(Query) returns (Book);
}
message Query { repeated string isbn = 1; }
)");
  write(dir.path() + "/b/model.proto", R"(syntax = "proto2";
message Book {
  enum Kind { NOVEL = 1; ESSAY = 2; }
  required string title = 1;
  optional Kind kind = 2 [default = NOVEL];
  repeated Author authors = 3;
  message Author { optional string name = 1; optional int32 born = 2; }
}
)");
  std::string error;
  auto dec = ProtoSchemaDecoder::load({dir.path() + "/a/api.proto", dir.path() + "/b/model.proto"}, error);
  ASSERT_TRUE(dec) << error;
  EXPECT_EQ(dec->file_count(), 2u);
  EXPECT_EQ(dec->message_type("Catalog", "Get", false), "Book");

  // Encoded with libprotobuf itself: the test's own importer, a
  // DynamicMessage filled from text format.
  struct Quiet : google::protobuf::compiler::MultiFileErrorCollector {
    void AddError(const std::string& f, int l, int c, const std::string& m) override {
      ADD_FAILURE() << f << ":" << l << ":" << c << ": " << m;
    }
  } errors;
  google::protobuf::compiler::DiskSourceTree tree;
  tree.MapPath("", dir.path() + "/b");
  google::protobuf::compiler::Importer importer(&tree, &errors);
  ASSERT_TRUE(importer.Import("model.proto"));
  google::protobuf::DynamicMessageFactory factory(importer.pool());
  std::unique_ptr<google::protobuf::Message> book(
      factory.GetPrototype(importer.pool()->FindMessageTypeByName("Book"))->New());
  ASSERT_TRUE(google::protobuf::TextFormat::ParseFromString(
      R"(title: "Walden" kind: ESSAY authors { name: "Thoreau" born: 1817 } authors { name: "Anon" })", book.get()));
  EXPECT_EQ(dec->decode("Catalog", "Get", false, msg(book->SerializeAsString())), json::parse(R"({
    "title": "Walden", "kind": "ESSAY", "authors": [{"name": "Thoreau", "born": 1817}, {"name": "Anon"}]})"));
  // proto2: a missing required field is still shown (parsed partially).
  EXPECT_EQ(dec->decode("Catalog", "Get", false, msg(pb_varint(2, 1))), json::parse(R"({"kind": "NOVEL"})"));
  EXPECT_EQ(dec->decode("Catalog", "Get", true, msg(pb_len(1, "978-0") + pb_len(1, "978-1"))),
            json::parse(R"({"isbn": ["978-0", "978-1"]})"));
}

TEST(GrpcSchema, WellKnownTypesAnyAndCustomOptions) {
  // Imports of the well-known types and of descriptor.proto (custom
  // options) need no file on disk; Any names its type.
  TempDir dir("grpc-schema");
  write(dir.path() + "/env.proto", R"(syntax = "proto3";
package env;
import "google/protobuf/any.proto";
import "google/protobuf/descriptor.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/wrappers.proto";
extend google.protobuf.FieldOptions { string unit = 50001; }
message Point { int32 x = 1; }
message Envelope {
  google.protobuf.Any payload = 1;
  int32 size = 2 [(unit) = "bytes"];
  google.protobuf.Duration wait = 3;
  google.protobuf.StringValue label = 4;
}
service Box { rpc Put(Envelope) returns (Envelope); }
)");
  std::string error;
  auto dec = ProtoSchemaDecoder::load({dir.path()}, error);
  ASSERT_TRUE(dec) << error;
  const std::string any = pb_len(1, "type.googleapis.com/env.Point") + pb_len(2, pb_varint(1, 5));
  const std::string env = pb_len(1, any) + pb_varint(2, 10) + pb_len(3, pb_varint(1, 2) + pb_varint(2, 500000000)) +
                          pb_len(4, pb_len(1, "hi"));
  EXPECT_EQ(dec->decode("env.Box", "Put", true, msg(env)), json::parse(R"({
    "payload": {"@type": "type.googleapis.com/env.Point", "x": 5}, "size": 10, "wait": "2.500s", "label": "hi"})"));
  // An Any of a type the schema lacks cannot be printed: schema-less.
  const GrpcMessage stranger = msg(pb_len(1, pb_len(1, "type.googleapis.com/nope.Nope") + pb_len(2, pb_varint(1, 5))));
  EXPECT_EQ(dec->decode("env.Box", "Put", true, stranger), schemaless("env.Box", "Put", true, stranger));
}

TEST(GrpcSchema, ThreadsDecodeAtOnce) {
  Shop s;
  ASSERT_TRUE(s.dec);
  const GrpcMessage m = msg(order_request());
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int t = 0; t < 4; t++)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; i++)
        if (s.dec->decode("demo.shop.Shop", "Order", true, m) != kOrderRequest) bad++;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
}

// ---- fallbacks ----------------------------------------------------------------------

TEST(GrpcSchema, FallsBackToSchemaless) {
  Shop s;
  ASSERT_TRUE(s.dec);
  const GrpcMessage good = msg(order_request());
  // Unknown service or method: the schema-less result (fields by number).
  for (auto [svc, method] : {std::pair{"demo.shop.Other", "Order"}, std::pair{"demo.shop.Shop", "Refund"},
                             std::pair{"", ""}}) {
    const json j = s.dec->decode(svc, method, true, good);
    EXPECT_EQ(j, schemaless(svc, method, true, good));
    EXPECT_TRUE(j.contains("fields"));
  }
  // Bytes that are not an OrderRequest.
  for (const std::string& bad : {
           std::string("\xff\xff\xff", 3),                 // no message at all
           order_request() + std::string("\x00", 1),       // a zero tag after it
           order_request() + tag(3, 4),                    // an end-group with no group
           order_request().substr(0, 20),                  // cut inside a field
           pb_len(1, "\xc3\x28"),                          // a proto3 string that is not UTF-8
           pb_len(2, pb_varint(3, 1) + tag(4, 2) + "\x05"),  // a nested length past its end
           tag(1, 2) + varint(40'000'000) + "ab",          // a string claiming 40 MB (nothing reserved
                                                           // for it: ASAN_OPTIONS=max_allocation_size_mb=8)
       }) {
    const GrpcMessage m = msg(bad);
    EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Order", true, m), schemaless("demo.shop.Shop", "Order", true, m))
        << hex(bad);
  }
  // The invalid UTF-8 string: schema-less, it is bytes.
  EXPECT_FALSE(s.dec->decode("demo.shop.Shop", "Order", true, msg(pb_len(1, "\xc3\x28"))).is_null());

  // Compressed and cut messages are not decoded (the schema-less result is null).
  GrpcMessage compressed = good;
  compressed.compressed = true;
  EXPECT_TRUE(s.dec->decode("demo.shop.Shop", "Order", true, compressed).is_null());
  GrpcMessage cut = good;
  cut.truncated = true;
  EXPECT_TRUE(s.dec->decode("demo.shop.Shop", "Order", true, cut).is_null());
}

TEST(GrpcSchema, BoundsSizeAndDepth) {
  ProtoSchemaLimits lim;
  lim.max_message_bytes = 64;
  lim.max_depth = 8;
  Shop s(lim);
  ASSERT_TRUE(s.dec);
  const GrpcMessage big = msg(order_request());
  ASSERT_GT(big.data.size(), 64u);
  EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Order", true, big), schemaless("demo.shop.Shop", "Order", true, big));
  EXPECT_TRUE(s.dec->decode("demo.shop.Shop", "Order", true, big).contains("fields"));

  // A recursive type: messages nested up to the limit are named, deeper are not.
  EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Walk", true, msg(node_chain(9)))["child"]["child"]["value"], 3);
  const GrpcMessage deep = msg(node_chain(10));
  EXPECT_EQ(s.dec->decode("demo.shop.Shop", "Walk", true, deep), schemaless("demo.shop.Shop", "Walk", true, deep));

  // Default limits: a very deep message does not crash, and is schema-less.
  Shop d;
  ASSERT_TRUE(d.dec);
  const GrpcMessage deeper = msg(node_chain(1000));
  EXPECT_EQ(d.dec->decode("demo.shop.Shop", "Walk", true, deeper),
            schemaless("demo.shop.Shop", "Walk", true, deeper));
  EXPECT_EQ(d.dec->decode("demo.shop.Shop", "Walk", true, msg(node_chain(60)))["value"], 1);
}

// Random bytes and mutations of a valid message, on every method and
// direction: never a crash, always JSON that dumps, and the schema-less
// result whenever the schema could not be used.
TEST(GrpcSchema, RandomAndMutatedBytesDoNotCrash) {
  Shop s;
  ASSERT_TRUE(s.dec);
  std::mt19937 rng(1234);
  const std::string valid = order_request();
  int named = 0;
  for (int i = 0; i < 4000; i++) {
    std::string b;
    if (i % 2 == 0) {
      b.resize(rng() % 96);
      for (char& c : b) c = static_cast<char>(rng());
    } else {
      b = valid;
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int k = 0; k < flips; k++) b[rng() % b.size()] = static_cast<char>(rng());
      if (rng() % 4 == 0) b.resize(rng() % b.size());
    }
    const GrpcMessage m = msg(b);
    for (const char* method : {"Order", "Walk"})
      for (bool request : {true, false}) {
        const json j = s.dec->decode("demo.shop.Shop", method, request, m);
        ASSERT_NO_THROW((void)j.dump()) << hex(b);
        const json fallback = schemaless("demo.shop.Shop", method, request, m);
        if (j != fallback) {
          ASSERT_TRUE(j.is_object()) << hex(b);
          named++;
        }
      }
  }
  EXPECT_GT(named, 200);  // mutations often still parse with the schema
}

// ---- load errors --------------------------------------------------------------------

std::string load_error(const std::vector<std::string>& paths) {
  std::string error;
  auto dec = ProtoSchemaDecoder::load(paths, error);
  EXPECT_FALSE(dec);
  EXPECT_EQ(error.find('\n'), std::string::npos) << error;
  return error;
}

TEST(GrpcSchemaLoad, MissingPathsAreRefused) {
  TempDir dir("grpc-schema");
  EXPECT_EQ(load_error({dir.path() + "/nope.proto"}), dir.path() + "/nope.proto: no such file or directory");
  EXPECT_EQ(load_error({dir.path() + "/nope/"}), dir.path() + "/nope/: no such file or directory");
  EXPECT_EQ(load_error({}), "no .proto paths given");
  EXPECT_EQ(load_error({dir.path()}), dir.path() + ": no .proto file in this directory");
  // One bad path among good ones refuses them all.
  write(dir.path() + "/ok.proto", "syntax = \"proto3\";\nmessage M {}\n");
  EXPECT_EQ(load_error({dir.path() + "/ok.proto", "/no/such/dir"}), "/no/such/dir: no such file or directory");
}

TEST(GrpcSchemaLoad, SyntaxErrorSaysFileLineAndColumn) {
  TempDir dir("grpc-schema");
  write(dir.path() + "/bad.proto", R"(syntax = "proto3";
package bad;
message M {
  int32 = 1;
}
)");
  const std::string e = load_error({dir.path()});
  EXPECT_TRUE(contains(e, dir.path() + "/bad.proto:4:9: "));
  EXPECT_TRUE(contains(e, "Expected field name"));
}

TEST(GrpcSchemaLoad, ErrorsInImportsAndTypesArePlaced) {
  TempDir dir("grpc-schema");
  // An undefined type: found by the pool, placed by the parser's locations.
  write(dir.path() + "/t/undefined.proto", "syntax = \"proto3\";\n\nmessage M {\n  Missing m = 1;\n}\n");
  std::string e = load_error({dir.path() + "/t"});
  EXPECT_TRUE(contains(e, dir.path() + "/t/undefined.proto:4:3: "));
  EXPECT_TRUE(contains(e, "\"Missing\" is not defined"));

  // A missing import.
  write(dir.path() + "/i/main.proto", "syntax = \"proto3\";\nimport \"nowhere.proto\";\nmessage M {}\n");
  e = load_error({dir.path() + "/i/main.proto"});
  EXPECT_TRUE(contains(e, dir.path() + "/i/main.proto:2:1: "));
  EXPECT_TRUE(contains(e, "nowhere.proto"));

  // A syntax error in an imported file is reported in that file.
  write(dir.path() + "/s/a.proto", "syntax = \"proto3\";\nimport \"b.proto\";\nmessage A { B b = 1; }\n");
  write(dir.path() + "/s/b.proto", "syntax = \"proto3\";\nmessage B { int32 x = 1 }\n");
  e = load_error({dir.path() + "/s/a.proto"});
  EXPECT_TRUE(contains(e, dir.path() + "/s/b.proto:2:"));

  // The same name in two import paths: the second file could never be imported.
  write(dir.path() + "/x/same.proto", "syntax = \"proto3\";\npackage x;\n");
  write(dir.path() + "/y/same.proto", "syntax = \"proto3\";\npackage y;\n");
  e = load_error({dir.path() + "/x", dir.path() + "/y"});
  EXPECT_TRUE(contains(e, dir.path() + "/y/same.proto: shadowed by " + dir.path() + "/x/same.proto"));

  // Two files defining one symbol.
  write(dir.path() + "/d/one.proto", "syntax = \"proto3\";\npackage p;\nmessage M {}\n");
  write(dir.path() + "/d/two.proto", "syntax = \"proto3\";\npackage p;\nmessage M {}\n");
  e = load_error({dir.path() + "/d"});
  EXPECT_TRUE(contains(e, "two.proto:3:"));
  EXPECT_TRUE(contains(e, "\"p.M\" is already defined"));
}

}  // namespace

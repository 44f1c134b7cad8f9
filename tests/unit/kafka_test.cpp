// Kafka (userspace/protocols/kafka/): requests and responses of several API
// versions, flexible ones included, built here byte by byte after the
// protocol guide, parsed on their own and through the whole engine (whole,
// byte by byte, at random splits: the same records), pipelined, joined in
// the middle of a connection, and broken (a 2^31 size, garbage, a body cut
// short, hostile counts): bounded, flagged, and the calls after them still
// dissected. The captures of real traffic in tests/fixtures/kafka are read
// through the engine too, their fields as tshark shows them.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "dissector.hpp"
#include "engine_harness.hpp"
#include "kafka/kafka.hpp"
#include "kafka/session.hpp"
#include "packet_source.hpp"

using namespace tapwire::dissect;
namespace proto = tapwire::proto;
using proto::KafkaRequest;
using proto::KafkaResponse;

namespace {


// ------------------------------------------------------------ builders --

// A body in the Kafka encoding; `flex` switches strings, arrays and bytes
// to their compact forms.
struct W {
  std::string b;
  bool flex = false;
  W& i8(int v) {
    b.push_back(static_cast<char>(v));
    return *this;
  }
  W& i16(int v) {
    b.push_back(static_cast<char>((v >> 8) & 0xff));
    b.push_back(static_cast<char>(v & 0xff));
    return *this;
  }
  W& i32(int64_t v) {
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<char>((v >> s) & 0xff));
    return *this;
  }
  W& i64(int64_t v) {
    for (int s = 56; s >= 0; s -= 8) b.push_back(static_cast<char>((v >> s) & 0xff));
    return *this;
  }
  W& uvarint(uint64_t v) {
    while (v >= 0x80) {
      b.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    b.push_back(static_cast<char>(v));
    return *this;
  }
  W& str(const std::string& s) {
    if (flex)
      uvarint(s.size() + 1);
    else
      i16(static_cast<int>(s.size()));
    b += s;
    return *this;
  }
  W& null_str() { return flex ? uvarint(0) : i16(-1); }
  W& bytes(const std::string& s) {
    if (flex)
      uvarint(s.size() + 1);
    else
      i32(static_cast<int64_t>(s.size()));
    b += s;
    return *this;
  }
  W& arr(int64_t n) { return flex ? uvarint(static_cast<uint64_t>(n + 1)) : i32(n); }
  W& tags() { return flex ? uvarint(0) : *this; }
  W& raw(const std::string& s) {
    b += s;
    return *this;
  }
};

std::string frame(const std::string& body) {
  W w;
  w.i32(static_cast<int64_t>(body.size()));
  return w.b + body;
}

// A request header (v1, or v2 when flexible); the body goes on in `w`.
W request(int api, int ver, int32_t corr, const std::string& client, bool flex) {
  W w;
  w.i16(api).i16(ver).i32(corr).str(client);  // the header's client id is never compact
  w.flex = flex;
  w.tags();
  return w;
}
W response(int32_t corr, bool flex, bool header_tags = true) {
  W w;
  w.i32(corr);
  w.flex = flex;
  if (header_tags) w.tags();
  return w;
}

std::string records(size_t n) { return std::string(n, 'r'); }

// Produce: one topic per entry, partitions 0..k-1, each with a record set of `rec` bytes.
std::string produce_req(int ver, int32_t corr, std::vector<std::pair<std::string, int>> topics, int acks = -1,
                        size_t rec = 70) {
  const bool flex = ver >= 9;
  W w = request(0, ver, corr, "console-producer", flex);
  if (ver >= 3) w.null_str();
  w.i16(acks).i32(1500).arr(static_cast<int64_t>(topics.size()));
  for (auto& [name, parts] : topics) {
    w.str(name).arr(parts);
    for (int p = 0; p < parts; p++) w.i32(p).bytes(records(rec)).tags();
    w.tags();
  }
  w.tags();
  return frame(w.b);
}
std::string produce_resp(int ver, int32_t corr, const std::string& topic, std::vector<int> errors) {
  const bool flex = ver >= 9;
  W w = response(corr, flex);
  w.arr(1).str(topic).arr(static_cast<int64_t>(errors.size()));
  for (size_t p = 0; p < errors.size(); p++) {
    w.i32(static_cast<int64_t>(p)).i16(errors[p]).i64(35);
    if (ver >= 2) w.i64(-1);
    if (ver >= 5) w.i64(0);
    if (ver >= 8) w.arr(0).null_str();
    w.tags();
  }
  w.tags();
  if (ver >= 1) w.i32(0);
  w.tags();
  return frame(w.b);
}

std::string fetch_req(int ver, int32_t corr, const std::string& topic, int parts) {
  const bool flex = ver >= 12;
  W w = request(1, ver, corr, "consumer-1", flex);
  if (ver <= 14) w.i32(-1);
  w.i32(500).i32(1);
  if (ver >= 3) w.i32(52428800);
  if (ver >= 4) w.i8(0);
  if (ver >= 7) w.i32(0).i32(-1);
  w.arr(1);
  if (ver >= 13)
    w.raw(std::string("\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff", 16));
  else
    w.str(topic);
  w.arr(parts);
  for (int p = 0; p < parts; p++) {
    w.i32(p);
    if (ver >= 9) w.i32(0);
    w.i64(36);
    if (ver >= 12) w.i32(-1);
    if (ver >= 5) w.i64(-1);
    w.i32(1048576).tags();
  }
  w.tags();
  if (ver >= 7) w.arr(0);
  if (ver >= 11) w.str("");
  w.tags();
  return frame(w.b);
}
std::string fetch_resp(int ver, int32_t corr, int top_error, std::vector<int> errors, size_t rec = 100) {
  const bool flex = ver >= 12;
  W w = response(corr, flex);
  if (ver >= 1) w.i32(0);
  if (ver >= 7) w.i16(top_error).i32(0);
  w.arr(1);
  if (ver >= 13)
    w.raw(std::string(16, '\x01'));
  else
    w.str("t");
  w.arr(static_cast<int64_t>(errors.size()));
  for (size_t p = 0; p < errors.size(); p++) {
    w.i32(static_cast<int64_t>(p)).i16(errors[p]).i64(100);
    if (ver >= 4) w.i64(100);
    if (ver >= 5) w.i64(0);
    if (ver >= 4) w.arr(1).i64(7).i64(8).tags();  // one aborted transaction
    if (ver >= 11) w.i32(-1);
    w.bytes(records(rec)).tags();
  }
  w.tags();
  w.tags();
  return frame(w.b);
}

std::string metadata_req(int ver, int32_t corr, std::vector<std::string> topics) {
  const bool flex = ver >= 9;
  W w = request(3, ver, corr, "adminclient-1", flex);
  w.arr(static_cast<int64_t>(topics.size()));
  for (auto& t : topics) {
    if (ver >= 10) w.raw(std::string(16, '\0'));
    w.str(t).tags();
  }
  if (ver >= 4) w.i8(1);
  if (ver >= 8 && ver <= 10) w.i8(0);
  if (ver >= 8) w.i8(0);
  w.tags();
  return frame(w.b);
}
std::string metadata_resp(int ver, int32_t corr, int topic_error, int part_error) {
  const bool flex = ver >= 9;
  W w = response(corr, flex);
  if (ver >= 3) w.i32(0);
  w.arr(2);
  for (int n = 0; n < 2; n++) {
    w.i32(n).str("broker" + std::to_string(n)).i32(9092);
    if (ver >= 1) w.null_str();
    w.tags();
  }
  if (ver >= 2) w.str("cluster");
  if (ver >= 1) w.i32(0);
  w.arr(1).i16(topic_error).str("orders");
  if (ver >= 10) w.raw(std::string(16, '\x02'));
  if (ver >= 1) w.i8(0);
  w.arr(2);
  for (int p = 0; p < 2; p++) {
    w.i16(p == 1 ? part_error : 0).i32(p).i32(0);
    if (ver >= 7) w.i32(3);
    w.arr(2).i32(0).i32(1);
    w.arr(1).i32(0);
    if (ver >= 5) w.arr(0);
    w.tags();
  }
  if (ver >= 8) w.i32(-2147483648LL);
  w.tags();
  if (ver >= 8 && ver <= 10) w.i32(0);
  w.tags();
  return frame(w.b);
}

std::string offset_commit_req(int ver, int32_t corr) {
  const bool flex = ver >= 8;
  W w = request(8, ver, corr, "consumer-1", flex);
  w.str("group-a");
  if (ver >= 1) w.i32(5).str("member-1");
  if (ver >= 7) w.null_str();
  if (ver >= 2 && ver <= 4) w.i64(-1);
  w.arr(1).str("orders").arr(2);
  for (int p = 3; p < 5; p++) {
    w.i32(p).i64(1000);
    if (ver >= 6) w.i32(-1);
    if (ver == 1) w.i64(-1);
    w.str("").tags();
  }
  w.tags().tags();
  return frame(w.b);
}
std::string offset_commit_resp(int ver, int32_t corr, int err) {
  const bool flex = ver >= 8;
  W w = response(corr, flex);
  if (ver >= 3) w.i32(0);
  w.arr(1).str("orders").arr(2).i32(3).i16(0).tags().i32(4).i16(err).tags().tags().tags();
  return frame(w.b);
}

std::string offset_fetch_req(int ver, int32_t corr) {
  const bool flex = ver >= 6;
  W w = request(9, ver, corr, "consumer-1", flex);
  if (ver <= 7) {
    w.str("group-b").arr(1).str("orders").arr(2).i32(0).i32(1).tags();
    if (ver >= 7) w.i8(0);
  } else {
    w.arr(1).str("group-b");
    if (ver >= 9) w.null_str().i32(-1);
    w.arr(1).str("orders").arr(2).i32(0).i32(1).tags().tags().i8(0);
  }
  w.tags();
  return frame(w.b);
}
std::string offset_fetch_resp(int ver, int32_t corr, int part_err, int top_err) {
  const bool flex = ver >= 6;
  W w = response(corr, flex);
  if (ver >= 3) w.i32(0);
  auto topics = [&] {
    w.arr(1).str("orders").arr(1).i32(0).i64(10);
    if (ver >= 5) w.i32(-1);
    w.str("").i16(part_err).tags().tags();
  };
  if (ver <= 7) {
    topics();
    if (ver >= 2) w.i16(top_err);
  } else {
    w.arr(1).str("group-b");
    topics();
    w.i16(top_err).tags();
  }
  w.tags();
  return frame(w.b);
}

std::string find_coordinator_req(int ver, int32_t corr, const std::string& key) {
  const bool flex = ver >= 3;
  W w = request(10, ver, corr, "consumer-1", flex);
  if (ver <= 3) {
    w.str(key);
    if (ver >= 1) w.i8(0);
  } else {
    w.i8(0).arr(1).str(key);
  }
  w.tags();
  return frame(w.b);
}
std::string find_coordinator_resp(int ver, int32_t corr, int err) {
  const bool flex = ver >= 3;
  W w = response(corr, flex);
  if (ver >= 1) w.i32(0);
  if (ver <= 3) {
    w.i16(err);
    if (ver >= 1) w.null_str();
    w.i32(1).str("broker1").i32(9092);
  } else {
    w.arr(1).str("group-c").i32(1).str("broker1").i32(9092).i16(err).null_str().tags();
  }
  w.tags();
  return frame(w.b);
}

// JoinGroup, Heartbeat, LeaveGroup, SyncGroup: the group id is the first field.
std::string group_req(int api, int ver, int32_t corr, const std::string& group, bool flex) {
  W w = request(api, ver, corr, "consumer-1", flex);
  w.str(group).i32(45000).str("member").tags();
  return frame(w.b);
}
std::string group_resp(int ver_throttle, int32_t corr, int err, bool flex) {
  W w = response(corr, flex);
  if (ver_throttle) w.i32(0);
  w.i16(err).i32(-1).tags();
  return frame(w.b);
}

std::string api_versions_req(int32_t corr) {
  W w = request(18, 3, corr, "adminclient-1", true);
  w.str("apache-kafka-java").str("3.7.0").tags();
  return frame(w.b);
}
std::string api_versions_resp(int32_t corr, int err) {
  W w = response(corr, true, false);  // header v0
  w.i16(err).arr(1).i16(0).i16(0).i16(9).tags().i32(0).tags();
  return frame(w.b);
}

std::span<const uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}
std::span<const uint8_t> body_of(const std::string& framed) { return bytes_of(framed).subspan(4); }

KafkaRequest parse_req(const std::string& framed) {
  KafkaRequest q;
  EXPECT_TRUE(proto::parse_kafka_request(body_of(framed), static_cast<uint32_t>(framed.size() - 4), q));
  return q;
}
KafkaResponse parse_resp(const std::string& framed, int api, int ver) {
  KafkaResponse r;
  EXPECT_TRUE(proto::parse_kafka_response(body_of(framed), static_cast<uint32_t>(framed.size() - 4),
                                          static_cast<int16_t>(api), static_cast<int16_t>(ver), r));
  return r;
}

std::string topics_of(const KafkaRequest& q) {
  std::string s;
  for (const auto& t : q.topics) {
    s += (s.empty() ? "" : " ") + t.name + ":";
    for (size_t i = 0; i < t.partitions.size(); i++) s += (i ? "," : "") + std::to_string(t.partitions[i]);
  }
  return s;
}

// ---------------------------------------------------------- the parser --

TEST(KafkaParse, ProduceRequestsOfSeveralVersions) {
  for (int ver : {0, 2, 3, 7, 8, 9, 10, 11}) {
    SCOPED_TRACE(ver);
    KafkaRequest q = parse_req(produce_req(ver, 7, {{"orders", 2}, {"audit", 1}}));
    EXPECT_EQ(q.api_key, 0);
    EXPECT_EQ(q.api_version, ver);
    EXPECT_EQ(q.correlation_id, 7);
    EXPECT_EQ(q.client_id, "console-producer");
    EXPECT_EQ(topics_of(q), "orders:0,1 audit:0");
    EXPECT_EQ(q.record_sets, 3u);
    EXPECT_EQ(q.record_bytes, 210u);
    EXPECT_EQ(q.acks, -1);
    EXPECT_FALSE(q.malformed);
    EXPECT_FALSE(q.truncated);
  }
}

TEST(KafkaParse, ProduceResponsesGiveTheFirstPartitionError) {
  for (int ver : {0, 2, 5, 8, 9, 11}) {
    SCOPED_TRACE(ver);
    KafkaResponse r = parse_resp(produce_resp(ver, 7, "orders", {0, 6, 3}), 0, ver);
    EXPECT_EQ(r.correlation_id, 7);
    EXPECT_TRUE(r.has_error);
    EXPECT_EQ(r.error_code, 6);
    EXPECT_FALSE(r.malformed);
    r = parse_resp(produce_resp(ver, 8, "orders", {0, 0}), 0, ver);
    EXPECT_TRUE(r.has_error);
    EXPECT_EQ(r.error_code, 0);
  }
}

TEST(KafkaParse, FetchRequestsAndResponses) {
  for (int ver : {0, 3, 4, 7, 11, 12, 13, 15, 16}) {
    SCOPED_TRACE(ver);
    KafkaRequest q = parse_req(fetch_req(ver, 9, "events", 3));
    EXPECT_EQ(q.api_key, 1);
    EXPECT_FALSE(q.malformed);
    if (ver >= 13)
      EXPECT_EQ(topics_of(q), "00112233-4455-6677-8899-aabbccddeeff:0,1,2");
    else
      EXPECT_EQ(topics_of(q), "events:0,1,2");
    KafkaResponse r = parse_resp(fetch_resp(ver, 9, 0, {0, 1}), 1, ver);
    EXPECT_FALSE(r.malformed);
    EXPECT_EQ(r.error_code, 1);  // OFFSET_OUT_OF_RANGE, the second partition's
    if (ver >= 7) {
      r = parse_resp(fetch_resp(ver, 9, 70, {0, 1}), 1, ver);
      EXPECT_EQ(r.error_code, 70);  // the top-level error first
    }
  }
}

TEST(KafkaParse, MetadataRequestsAndResponses) {
  for (int ver : {0, 1, 4, 8, 9, 10, 12}) {
    SCOPED_TRACE(ver);
    KafkaRequest q = parse_req(metadata_req(ver, 3, {"orders", "audit"}));
    EXPECT_EQ(q.api_key, 3);
    EXPECT_EQ(topics_of(q), "orders: audit:");
    EXPECT_FALSE(q.malformed);
    KafkaResponse r = parse_resp(metadata_resp(ver, 3, 0, 0), 3, ver);
    EXPECT_FALSE(r.malformed);
    EXPECT_EQ(r.error_code, 0);
    r = parse_resp(metadata_resp(ver, 3, 3, 0), 3, ver);
    EXPECT_EQ(r.error_code, 3);
    r = parse_resp(metadata_resp(ver, 3, 0, 5), 3, ver);
    EXPECT_EQ(r.error_code, 5);
  }
  // v1+: a null topic array asks for every topic.
  W w = request(3, 1, 4, "c", false);
  w.i32(-1);
  KafkaRequest q = parse_req(frame(w.b));
  EXPECT_TRUE(q.topics.empty());
  EXPECT_FALSE(q.malformed);
}

TEST(KafkaParse, OffsetCommitAndOffsetFetch) {
  for (int ver : {0, 1, 2, 5, 6, 7, 8, 9}) {
    SCOPED_TRACE(ver);
    KafkaRequest q = parse_req(offset_commit_req(ver, 11));
    EXPECT_EQ(q.group_id, "group-a");
    EXPECT_EQ(topics_of(q), "orders:3,4");
    EXPECT_FALSE(q.malformed);
    KafkaResponse r = parse_resp(offset_commit_resp(ver, 11, 22), 8, ver);
    EXPECT_EQ(r.error_code, 22);
    EXPECT_FALSE(r.malformed);
  }
  for (int ver : {1, 2, 5, 6, 7, 8, 9}) {
    SCOPED_TRACE(ver);
    KafkaRequest q = parse_req(offset_fetch_req(ver, 12));
    EXPECT_EQ(q.group_id, "group-b");
    EXPECT_EQ(topics_of(q), "orders:0,1");
    EXPECT_FALSE(q.malformed);
    KafkaResponse r = parse_resp(offset_fetch_resp(ver, 12, 3, 0), 9, ver);
    EXPECT_EQ(r.error_code, 3);
    EXPECT_FALSE(r.malformed);
    if (ver >= 2) {
      EXPECT_EQ(parse_resp(offset_fetch_resp(ver, 12, 0, 16), 9, ver).error_code, 16);
    }
  }
}

TEST(KafkaParse, GroupApis) {
  for (int ver : {0, 1, 3, 4, 5}) {
    SCOPED_TRACE(ver);
    KafkaRequest q = parse_req(find_coordinator_req(ver, 2, "group-c"));
    EXPECT_EQ(q.group_id, "group-c");
    KafkaResponse r = parse_resp(find_coordinator_resp(ver, 2, 15), 10, ver);
    EXPECT_EQ(r.error_code, 15);
    EXPECT_FALSE(r.malformed);
  }
  struct G {
    int api, ver;
    bool flex;
    int throttle;
  } gs[] = {{11, 5, false, 1}, {11, 7, true, 1}, {11, 1, false, 0}, {12, 4, true, 1}, {12, 0, false, 0},
            {13, 4, true, 1},  {14, 3, false, 1}, {14, 5, true, 1}};
  for (const G& g : gs) {
    SCOPED_TRACE(std::to_string(g.api) + " v" + std::to_string(g.ver));
    KafkaRequest q = parse_req(group_req(g.api, g.ver, 5, "group-d", g.flex));
    EXPECT_EQ(q.group_id, "group-d");
    EXPECT_EQ(parse_resp(group_resp(g.throttle, 5, 27, g.flex), g.api, g.ver).error_code, 27);
  }
  KafkaRequest q = parse_req(api_versions_req(1));
  EXPECT_EQ(q.api_key, 18);
  EXPECT_EQ(q.client_id, "adminclient-1");
  KafkaResponse r = parse_resp(api_versions_resp(1, 35), 18, 3);
  EXPECT_EQ(r.error_code, 35);
  EXPECT_FALSE(r.malformed);
}

TEST(KafkaParse, ErrorNamesAndApiNames) {
  EXPECT_EQ(proto::kafka_error_name(0), "NONE");
  EXPECT_EQ(proto::kafka_error_name(-1), "UNKNOWN_SERVER_ERROR");
  EXPECT_EQ(proto::kafka_error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
  EXPECT_EQ(proto::kafka_error_name(6), "NOT_LEADER_OR_FOLLOWER");
  EXPECT_EQ(proto::kafka_error_name(25), "UNKNOWN_MEMBER_ID");
  EXPECT_EQ(proto::kafka_error_name(119), "INVALID_REGISTRATION");
  EXPECT_EQ(proto::kafka_error_name(999), "ERROR_999");
  EXPECT_EQ(proto::kafka_error_name(-7), "ERROR_-7");
  EXPECT_STREQ(proto::kafka_api_name(0), "Produce");
  EXPECT_STREQ(proto::kafka_api_name(18), "ApiVersions");
  EXPECT_EQ(proto::kafka_api_name(500), nullptr);
  EXPECT_TRUE(proto::kafka_flexible(18, 3));
  EXPECT_FALSE(proto::kafka_flexible(0, 8));
  EXPECT_TRUE(proto::kafka_flexible(0, 9));
}

TEST(KafkaParse, CapsAndHostileCounts) {
  // 200 topics of 100 partitions: 64 topics, 64 partitions each, flagged truncated.
  std::vector<std::pair<std::string, int>> many;
  for (int i = 0; i < 200; i++) many.emplace_back("t" + std::to_string(i), 100);
  KafkaRequest q = parse_req(produce_req(2, 1, many, -1, 1));
  EXPECT_EQ(q.topics.size(), proto::kKafkaMaxTopics);
  EXPECT_EQ(q.topics[0].partitions.size(), proto::kKafkaMaxPartitions);
  EXPECT_TRUE(q.truncated);
  EXPECT_FALSE(q.malformed);
  EXPECT_EQ(q.record_sets, 20000u);
  // A topic count of 2^31-1 in a small body: malformed, no crash, no big allocation.
  W w = request(0, 2, 1, "c", false);
  w.i16(1).i32(100).i32(0x7fffffff).str("t");
  q = parse_req(frame(w.b));
  EXPECT_TRUE(q.malformed);
  // A long topic name is cut to the cap.
  q = parse_req(produce_req(2, 1, {{std::string(1000, 'x'), 1}}));
  EXPECT_EQ(q.topics[0].name.size(), proto::kKafkaMaxString);
  EXPECT_TRUE(q.truncated);
  // Endless tagged fields (flexible): each needs bytes; no loop without them.
  W f = request(0, 9, 1, "c", true);
  f.uvarint(0xffffffff);
  q = parse_req(frame(f.b));
  EXPECT_TRUE(q.malformed);
  // A varint longer than 5 bytes.
  W g = request(3, 9, 1, "c", true);
  g.raw(std::string(10, '\xff'));
  q = parse_req(frame(g.b));
  EXPECT_TRUE(q.malformed);
}

TEST(KafkaParse, RequestStartCheck) {
  using proto::KafkaCheck;
  const std::string m = produce_req(2, 1, {{"t", 1}});
  for (size_t n = 0; n < 14 + 16; n++)
    EXPECT_EQ(proto::kafka_request_start(bytes_of(m).first(n)), KafkaCheck::NeedMore) << n;
  EXPECT_EQ(proto::kafka_request_start(bytes_of(m)), KafkaCheck::Yes);
  EXPECT_EQ(proto::kafka_request_start(bytes_of(std::string("GET / HTTP/1.1\r\n"))), KafkaCheck::No);
  EXPECT_EQ(proto::kafka_request_start(bytes_of(std::string("*1\r\n$4\r\nPING\r\n"))), KafkaCheck::No);
  EXPECT_EQ(proto::kafka_request_start(bytes_of(std::string("\x16\x03\x01\x02\x00", 5))), KafkaCheck::No);
  // An unknown API key, a version out of range, a client id not printable.
  W a = request(200, 0, 1, "c", false);
  EXPECT_EQ(proto::kafka_request_start(bytes_of(frame(a.b))), KafkaCheck::No);
  W b = request(0, 40, 1, "c", false);
  EXPECT_EQ(proto::kafka_request_start(bytes_of(frame(b.b))), KafkaCheck::No);
  W c = request(0, 2, 1, std::string("a\x01", 2), false);
  EXPECT_EQ(proto::kafka_request_start(bytes_of(frame(c.b))), KafkaCheck::No);
  // A size over 100 MiB.
  std::string big = m;
  big[0] = 0x07;
  EXPECT_EQ(proto::kafka_request_start(bytes_of(big)), KafkaCheck::No);
}

// ------------------------------------------------------------ the engine --

using Conn = tapwire::test::ConnOn<9092, 40000>;
using tapwire::test::Split;
using Result = tapwire::test::EngineRun;

// Whole messages go in pieces of at most 60000 bytes.
tapwire::test::RunOptions run_options(Split split = Split::Whole, uint32_t seed = 0, size_t limit = 1u << 20) {
  tapwire::test::RunOptions o = tapwire::test::run_options(limit, split, seed, true, /*parse_json=*/false);
  o.whole_piece_max = 60000;
  return o;
}

Result run(const std::vector<Conn>& conns, Split split = Split::Whole, uint32_t seed = 0, size_t limit = 1u << 20) {
  return tapwire::test::run_engine(conns, run_options(split, seed, limit));
}

uint64_t kafka_errors(const Result& r) {
  auto it = r.m.parse_errors.find("kafka");
  return it == r.m.parse_errors.end() ? 0 : it->second;
}

std::string flags_of(uint32_t f) {
  std::string s;
  for (const std::string& n : proto::flag_names(f)) s += (s.empty() ? "" : ",") + n;
  return s;
}

// method path status flags, one per call.
std::vector<std::string> summary(const Result& r) {
  std::vector<std::string> v;
  for (const Call& c : r.calls)
    v.push_back(std::string(c.protocol) + " " + c.method + " " + c.path + " " + std::to_string(c.status) + " [" +
                flags_of(c.flags) + "]");
  return v;
}

// Runs whole, byte by byte and at random splits: the same records each time.
Result run_all_ways(const std::vector<Conn>& conns) {
  return tapwire::test::run_all_ways(conns, run_options(),
                                     {.peak_limit = (1u << 20) + (64u << 10), .check_whole_peak = false, .check_parse_errors = true});
}

Conn conversation() {
  Conn c;
  c.c(api_versions_req(1));
  c.s(api_versions_resp(1, 0));
  c.c(metadata_req(9, 2, {"orders"}));
  c.s(metadata_resp(9, 2, 0, 0));
  c.c(produce_req(9, 3, {{"orders", 2}}));
  c.s(produce_resp(9, 3, "orders", {0, 6}));
  c.c(produce_req(7, 4, {{"orders", 1}}));
  c.s(produce_resp(7, 4, "orders", {0}));
  c.c(find_coordinator_req(4, 5, "group-c"));
  c.s(find_coordinator_resp(4, 5, 0));
  c.c(group_req(11, 7, 6, "group-c", true));
  c.s(group_resp(1, 6, -1, true));
  c.c(group_req(14, 5, 7, "group-c", true));
  c.s(group_resp(1, 7, 0, true));
  c.c(offset_fetch_req(8, 8));
  c.s(offset_fetch_resp(8, 8, 0, 0));
  c.c(fetch_req(12, 9, "orders", 2));
  c.s(fetch_resp(12, 9, 0, {0, 0}, 3000));
  c.c(offset_commit_req(8, 10));
  c.s(offset_commit_resp(8, 10, 0));
  c.c(group_req(12, 4, 11, "group-c", true));
  c.s(group_resp(1, 11, 27, true));
  c.c(group_req(13, 4, 12, "group-c", true));
  c.s(group_resp(1, 12, 0, true));
  return c;
}

const std::vector<std::string> kConversation = {
    "kafka ApiVersions  0 []",     "kafka Metadata orders 0 []",        "kafka Produce orders 6 []",
    "kafka Produce orders 0 []",   "kafka FindCoordinator group-c 0 []", "kafka JoinGroup group-c -1 []",
    "kafka SyncGroup group-c 0 []", "kafka OffsetFetch orders 0 []",     "kafka Fetch orders 0 []",
    "kafka OffsetCommit orders 0 []", "kafka Heartbeat group-c 27 []",  "kafka LeaveGroup group-c 0 []",
};

TEST(KafkaEngine, ConversationAnyWayItIsCut) {
  Result r = run_all_ways({conversation()});
  EXPECT_EQ(summary(r), kConversation);
  EXPECT_EQ(kafka_errors(r), 0u);
  ASSERT_GE(r.records.size(), 3u);
  // The record's fields.
  const std::string& p = r.records[2];
  EXPECT_NE(p.find(R"("protocol":"kafka")"), std::string::npos) << p;
  EXPECT_NE(p.find(R"("api_key":"Produce","api_version":9,"correlation_id":3,"client_id":"console-producer")"),
            std::string::npos)
      << p;
  EXPECT_NE(p.find(R"("topics":[{"name":"orders","partitions":[0,1]}])"), std::string::npos) << p;
  EXPECT_NE(p.find(R"("error_code":"NOT_LEADER_OR_FOLLOWER")"), std::string::npos) << p;
  const auto* q = r.calls[2].req<proto::KafkaRequestRecord>();
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->msg.record_bytes, 140u);
  EXPECT_GT(r.calls[2].duration_us(), 0);
}

TEST(KafkaEngine, PipelinedRequestsPairByCorrelationId) {
  Conn c;
  for (int i = 0; i < 20; i++) c.c(produce_req(2, 100 + i, {{"t" + std::to_string(i), 1}}));
  // Answered in order, but all after the last request.
  for (int i = 0; i < 20; i++) c.s(produce_resp(2, 100 + i, "t" + std::to_string(i), {i % 3}));
  Result r = run_all_ways({c});
  ASSERT_EQ(r.calls.size(), 20u);
  for (int i = 0; i < 20; i++) {
    EXPECT_EQ(r.calls[i].path, "t" + std::to_string(i));
    EXPECT_EQ(r.calls[i].status, i % 3);
    EXPECT_EQ(r.calls[i].flags, 0u);
  }
}

TEST(KafkaEngine, ProduceWithoutAcksHasNoResponse) {
  Conn c;
  c.c(produce_req(8, 1, {{"fire", 1}}, 0));
  c.c(metadata_req(1, 2, {"fire"}));
  c.s(metadata_resp(1, 2, 0, 0));
  Result r = run_all_ways({c});
  EXPECT_EQ(summary(r), (std::vector<std::string>{"kafka Produce fire -1 []", "kafka Metadata fire 0 []"}));
}

TEST(KafkaEngine, UnansweredAndOrphans) {
  Conn c;
  c.s(produce_resp(2, 77, "x", {0}));  // an answer to nothing seen: the server's side is not in step yet
  c.c(metadata_req(1, 1, {"a"}));
  c.s(metadata_resp(1, 1, 0, 0));
  c.s(produce_resp(2, 78, "x", {0}));  // in step now: an orphan
  c.c(metadata_req(1, 2, {"b"}));  // never answered
  Result r = run({c});
  EXPECT_EQ(summary(r), (std::vector<std::string>{"kafka Metadata a 0 []", "kafka   -1 [orphan_response]",
                                                  "kafka Metadata b -1 [closed]"}));
}

TEST(KafkaEngine, JoinedInTheMiddleOfAConnection) {
  // No handshake; the capture starts inside a large Produce request.
  Conn c;
  c.handshake = false;
  const std::string big = produce_req(2, 1, {{"orders", 1}}, -1, 5000);
  c.c(big.substr(2000));
  c.s(produce_resp(2, 1, "orders", {0}).substr(5));  // the rest of its answer
  c.c(produce_req(2, 2, {{"orders", 1}}));
  c.s(produce_resp(2, 2, "orders", {0}));
  c.c(metadata_req(1, 3, {"orders"}));
  c.s(metadata_resp(1, 3, 0, 3));
  Result r = run_all_ways({c});
  EXPECT_EQ(summary(r), (std::vector<std::string>{"kafka Produce orders 0 []", "kafka Metadata orders 3 []"}));
}

TEST(KafkaEngine, HostileSizesAndGarbageResynchronise) {
  Conn c;
  c.c(produce_req(2, 1, {{"a", 1}}));
  c.s(produce_resp(2, 1, "a", {0}));
  c.c(std::string("\x80\x00\x00\x00", 4) + std::string(100, 'z'));  // a 2^31 size, then junk
  c.c(produce_req(2, 2, {{"b", 1}}));
  c.s(produce_resp(2, 2, "b", {0}));
  c.s(std::string("\x7f\xff\xff\xff", 4) + std::string(50, '\0'));  // the server's side too
  c.c(metadata_req(1, 3, {"c"}));
  c.s(metadata_resp(1, 3, 0, 0));
  // A well-framed request whose body does not parse: flagged, the next one fine.
  W w = request(3, 1, 4, "c", false);
  w.i32(5).str("d");
  c.c(frame(w.b));
  c.s(metadata_resp(1, 4, 0, 0));
  c.c(metadata_req(1, 5, {"e"}));
  c.s(metadata_resp(1, 5, 0, 0));
  Result r = run_all_ways({c});
  EXPECT_EQ(summary(r), (std::vector<std::string>{"kafka Produce a 0 []", "kafka Produce b 0 [protocol_error]",
                                                  "kafka Metadata c 0 [protocol_error]",
                                                  "kafka Metadata d 0 [protocol_error]", "kafka Metadata e 0 []"}));
  EXPECT_GE(kafka_errors(r), 3u);
}

TEST(KafkaEngine, HugeMessagesStayBounded) {
  // A 20 MB Produce (its record set counted, not kept) and a 50 MB Fetch answer.
  Conn c;
  c.c(produce_req(9, 1, {{"big", 1}}, -1, 20u << 20));
  c.s(produce_resp(9, 1, "big", {10}));
  c.c(fetch_req(12, 2, "big", 1));
  c.s(fetch_resp(12, 2, 0, {0}, 50u << 20));
  c.c(metadata_req(9, 3, {"after"}));
  c.s(metadata_resp(9, 3, 0, 0));
  Result r = run({c});
  EXPECT_EQ(summary(r), (std::vector<std::string>{"kafka Produce big 10 []", "kafka Fetch big 0 []",
                                                  "kafka Metadata after 0 []"}));
  EXPECT_LE(r.m.memory_peak_bytes, (1u << 20) + (64u << 10));
  const auto* q = r.calls[0].req<proto::KafkaRequestRecord>();
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->msg.record_bytes, 20u << 20);
  EXPECT_TRUE(q->msg.truncated == false);
}

TEST(KafkaEngine, CutShortAndClosed) {
  Conn c;
  const std::string m = metadata_req(1, 1, {"a"});
  c.c(m);
  const std::string resp = metadata_resp(1, 1, 0, 0);
  c.s(resp.substr(0, resp.size() - 10));  // the connection ends inside the response
  Result r = run({c});
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_TRUE(r.calls[0].flags & proto::kFlagIncomplete) << flags_of(r.calls[0].flags);
  Conn d;
  d.c(m.substr(0, m.size() - 2));  // inside the request
  r = run({d});
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].status, -1);
  EXPECT_EQ(r.calls[0].flags & (proto::kFlagClosed | proto::kFlagIncomplete), proto::kFlagClosed | proto::kFlagIncomplete)
      << flags_of(r.calls[0].flags);
}

TEST(KafkaEngine, NotClaimedFromOtherProtocols) {
  proto::KafkaProtocol k;
  proto::FlowView v;
  v.port[0] = 40000;
  v.port[1] = 8080;
  auto det = [&](const std::string& s, int side = 0) { return k.detect(bytes_of(s), side, v); };
  EXPECT_FALSE(det("GET / HTTP/1.1\r\nHost: a\r\n\r\n").matched);
  EXPECT_FALSE(det("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").matched);
  EXPECT_FALSE(det("*1\r\n$4\r\nPING\r\n").matched);
  EXPECT_FALSE(det(std::string("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 11)).matched);
  EXPECT_FALSE(det(std::string("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 11)).need_more);
  // DNS over TCP: a query without RD and EDNS would pass the header checks but for its port.
  const std::string dns("\x00\x1d\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07" "example" "\x03" "com\x00\x00\x01\x00\x01",
                        31);
  v.port[1] = 53;
  EXPECT_FALSE(det(dns).matched);
  v.port[1] = 8080;
  EXPECT_FALSE(det(dns).matched);  // its client id would be empty: not without port 9092
  // A request: matched, on any port.
  proto::Detection d = det(produce_req(2, 1, {{"t", 1}}));
  EXPECT_TRUE(d.matched);
  EXPECT_EQ(d.client_side, 0);
  EXPECT_TRUE(det(produce_req(2, 1, {{"t", 1}}).substr(0, 12)).need_more);
  // A response alone: only from port 9092.
  EXPECT_FALSE(det(produce_resp(2, 4000, "t", {0}), 1).matched);
  v.port[1] = 9092;
  d = det(produce_resp(2, 4000, "t", {0}), 1);
  EXPECT_TRUE(d.matched);
  EXPECT_EQ(d.client_side, 0);
  // A response with a small correlation id reads as a request header too
  // (key 0, version = the id): from port 9092 it is taken as a response.
  d = det(produce_resp(2, 1, "t", {0}), 1);
  EXPECT_TRUE(d.matched);
  EXPECT_EQ(d.client_side, 0);
}

TEST(KafkaEngine, DisabledDissectorLeavesItAlone) {
  DissectorOptions opts;
  EXPECT_EQ(enable_dissectors(opts, "http,dns"), "");
  EXPECT_FALSE(opts.enabled("kafka"));
  EXPECT_EQ(enable_dissectors(opts, "kafka"), "");
  EXPECT_TRUE(opts.enabled("kafka"));
  // tcp and udp: flow accounting (the kernel's), no L7 protocol.
  EXPECT_EQ(enable_dissectors(opts, "tcp,udp"), "");
  EXPECT_TRUE(opts.dissectors.empty());
  EXPECT_EQ(enable_dissectors(opts, "tcp,dns"), "");
  EXPECT_EQ(opts.dissectors, std::vector<std::string>{"dns"});
}

// A session on its own, with a context that collects its calls.
class Ctx final : public proto::SessionContext {
 public:
  explicit Ctx(proto::DissectLimits l = {}) : lim_(l) {}
  void emit(proto::CallContent&& c) override { calls.push_back(std::move(c)); }
  uint64_t next_seq() override { return ++seq_; }
  uint64_t key_of(uint64_t ts, uint64_t extra) const override { return ts ^ extra; }
  proto::ProtocolCounters& counters(std::string_view) override { return counters_; }
  bool enabled(std::string_view) const override { return true; }
  const proto::DissectLimits& limits() const override { return lim_; }
  std::vector<proto::CallContent> calls;
  proto::ProtocolCounters counters_;

 private:
  proto::DissectLimits lim_;
  uint64_t seq_ = 0;
};

TEST(KafkaSession, TimeoutPendingCapAndShedding) {
  proto::KafkaProtocol k;
  proto::DissectLimits lim;
  lim.max_pending = 2;
  Ctx ctx(lim);
  auto s = k.open(ctx);
  const uint64_t t = 1000;
  for (int i = 1; i <= 3; i++) s->data(proto::Dir::ClientToServer, bytes_of(metadata_req(1, i, {"a"})), t);
  ASSERT_EQ(ctx.calls.size(), 1u);  // the oldest gave way to the third
  EXPECT_EQ(ctx.calls[0].flags, proto::kFlagTimeout);
  s->expire(t + lim.request_timeout_ns - 1);
  EXPECT_EQ(ctx.calls.size(), 1u);
  s->expire(t + lim.request_timeout_ns + 1);
  ASSERT_EQ(ctx.calls.size(), 3u);
  EXPECT_EQ(ctx.calls[2].flags, proto::kFlagTimeout);
  EXPECT_EQ(ctx.counters_.breakdowns["kafka_apis"]["Metadata"], 3u);
  // Half a message, its kept bytes shed: framed on, flagged memory_shed.
  const std::string m = produce_req(2, 9, {{"b", 1}}, -1, 10000);
  s->data(proto::Dir::ClientToServer, bytes_of(m).first(5000), t);
  EXPECT_GT(s->buffered_bytes(), 4000u);
  EXPECT_GT(s->shed_buffers(t), 4000u);
  EXPECT_LE(s->buffered_bytes(), 256u);
  s->data(proto::Dir::ClientToServer, bytes_of(m).subspan(5000), t);
  s->data(proto::Dir::ServerToClient, bytes_of(produce_resp(2, 9, "b", {0})), t);
  ASSERT_EQ(ctx.calls.size(), 4u);
  EXPECT_TRUE(ctx.calls[3].flags & proto::kFlagMemoryShed);
  EXPECT_EQ(ctx.calls[3].status, 0);
  s->close(proto::kFlagClosed, t);
  EXPECT_EQ(ctx.calls.size(), 4u);
  EXPECT_LT(s->memory_bytes(), 4096u);
}

// ------------------------------------------------------------- fixtures --

std::filesystem::path fixture_dir() {
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "fixtures" / "kafka";
}

Result run_pcap(const std::string& name) {
  Result r;
  DissectorOptions opts;
  Dissector d(opts, [&](Call&& c) { r.calls.push_back(std::move(c)); });
  auto src = open_pcap_source((fixture_dir() / name).string());
  Packet p;
  while (src->next(p) == PacketSource::Next::Packet) d.packet(p);
  d.finish();
  for (const Call& c : r.calls) write_record(c, r.records.emplace_back());
  return r;
}

// What tshark shows of each capture (tests/fixtures/kafka/README.md), and
// what it cannot decode (Produce v9, Fetch v12) read by hand from the bytes.
TEST(KafkaFixtures, RealCaptures) {
  struct F {
    const char* file;
    const char* summary;
    const char* request;
    const char* response;
  } fs[] = {
      {"00-produce-v2.pcap", "kafka Produce topic2 0 []",
       R"("api_key":"Produce","api_version":2,"correlation_id":1,"client_id":"console-producer","topics":[{"name":"topic2","partitions":[0]}])",
       R"("correlation_id":1,"error_code":"NONE")"},
      {"00-produce-v9.pcap", "kafka Produce zqy-test 0 []",
       R"("api_key":"Produce","api_version":9,"correlation_id":47,"client_id":"console-producer","topics":[{"name":"zqy-test","partitions":[0]}])",
       R"("correlation_id":47,"error_code":"NONE")"},
      {"01-fetch-v12-ok.pcap", "kafka Fetch zqy-test 0 []",
       R"("api_key":"Fetch","api_version":12,"correlation_id":15603,"client_id":"consumer-console-consumer-8919-1","topics":[{"name":"zqy-test","partitions":[0]}])",
       R"("correlation_id":15603,"error_code":"NONE")"},
      {"11-join-group-v7.pcap", "kafka JoinGroup zzzz12 -1 []",
       R"("api_key":"JoinGroup","api_version":7,"correlation_id":120,"client_id":"consumer-zzzz12-1","group_id":"zzzz12")",
       R"("correlation_id":120,"error_code":"UNKNOWN_SERVER_ERROR")"},
      {"18-api-versions-v3.pcap", "kafka ApiVersions  0 []",
       R"("api_key":"ApiVersions","api_version":3,"correlation_id":2,"client_id":"adminclient-1")",
       R"("correlation_id":2,"error_code":"NONE")"},
  };
  for (const F& f : fs) {
    SCOPED_TRACE(f.file);
    Result r = run_pcap(f.file);
    ASSERT_EQ(r.calls.size(), 1u);
    EXPECT_EQ(summary(r)[0], f.summary);
    EXPECT_NE(r.records[0].find(f.request), std::string::npos) << r.records[0];
    EXPECT_NE(r.records[0].find(f.response), std::string::npos) << r.records[0];
  }
}

TEST(KafkaFixtures, EveryFixtureSplitAnyWay) {
  // The fixtures' messages (their TCP payloads) in one connection, cut every way.
  Conn c;
  for (const char* name :
       {"00-produce-v2.pcap", "00-produce-v9.pcap", "01-fetch-v12-ok.pcap", "11-join-group-v7.pcap", "18-api-versions-v3.pcap"}) {
    auto src = open_pcap_source((fixture_dir() / name).string());
    Packet p;
    bool first = true;
    while (src->next(p) == PacketSource::Next::Packet) {
      if (p.payload.empty()) continue;
      std::string s(reinterpret_cast<const char*>(p.payload.data()), p.payload.size());
      if (first)
        c.c(s);
      else
        c.s(s);
      first = false;
    }
  }
  Result r = run_all_ways({c});
  EXPECT_EQ(summary(r),
            (std::vector<std::string>{"kafka Produce topic2 0 []", "kafka Produce zqy-test 0 []", "kafka Fetch zqy-test 0 []",
                                      "kafka JoinGroup zzzz12 -1 []", "kafka ApiVersions  0 []"}));
}

}  // namespace

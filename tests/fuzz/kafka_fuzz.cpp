// Kafka (userspace/protocols/kafka/): the message parsers on their own, and
// a whole session (both directions of a connection, as the engine drives
// it) fed a conversation in pieces.
//
// Input: [mode u8][seed u32][rest...]
//   mode & 3 == 0: rest is a request body: parse_kafka_request, and
//                  kafka_request_start on rest as a framed stream
//   mode & 3 == 1: rest is [api_key i8][api_version u8][response body]: parse_kafka_response
//   otherwise:     rest is a conversation: records [op u8][len u16][bytes]; op bit 0 the
//                  direction (1: server), op bits 1-2: 0 data, 1 a gap of len bytes,
//                  2 end of the direction, 3 expire at the record's time;
//                  mode bit 2: small limits (max_pending 4, max_body_kept 0)
//
// Checked: the parsers stay within the body and their caps (topics,
// partitions, strings); kafka_request_start is monotone (NeedMore never
// turns into a different answer than the longer input gives); the session
// emits well-formed records (JSON objects), kafka calls only, its memory
// within a bound whatever the input, nothing pending after close; and
// without gaps or expiry the records are the same whatever the split.
// libFuzzer: -max_len=16384
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "kafka/kafka.hpp"
#include "kafka/session.hpp"

namespace {

using tapwire::fuzz::chunk_size;
using tapwire::fuzz::Reader;
using tapwire::fuzz::Rng;
using namespace tapwire::proto;

void check_request(const KafkaRequest& q) {
  FUZZ_CHECK(q.topics.size() <= kKafkaMaxTopics);
  FUZZ_CHECK(q.client_id.size() <= kKafkaMaxString);
  FUZZ_CHECK(q.group_id.size() <= kKafkaMaxString);
  for (const KafkaTopic& t : q.topics) {
    FUZZ_CHECK(t.name.size() <= std::max<size_t>(kKafkaMaxString, 36));
    FUZZ_CHECK(t.partitions.size() <= kKafkaMaxPartitions);
  }
  FUZZ_CHECK(q.record_bytes <= q.size);
}

std::string to_json(const Message& m) {
  std::string s;
  tapwire::JsonOut out(s);
  m.write_json(out);
  return s;
}

class Ctx final : public SessionContext {
 public:
  Ctx(const DissectLimits& l, bool check) : check_json(check), lim_(l) {}
  bool check_json;
  void emit(CallContent&& c) override {
    FUZZ_CHECK(std::string(c.protocol) == kKafka);
    FUZZ_CHECK(c.has_request() || c.has_response());
    FUZZ_CHECK(c.has_response() || c.status == -1);
    std::string rec = c.method + "|" + c.path + "|" + std::to_string(c.status) + "|" + std::to_string(c.flags);
    for (const MessagePtr& m : {c.request, c.response}) {
      if (!m) {
        rec += "|null";
        continue;
      }
      const std::string j = to_json(*m);
      FUZZ_CHECK(j.size() >= 2 && j.front() == '{' && j.back() == '}', j);
      if (check_json) FUZZ_CHECK(nlohmann::json::accept(j), j);  // once per input: the split run gives the same text
      rec += "|" + j;
    }
    records.push_back(std::move(rec));
  }
  uint64_t next_seq() override { return ++seq_; }
  uint64_t key_of(uint64_t ts, uint64_t extra) const override { return ts ^ extra; }
  ProtocolCounters& counters(std::string_view) override { return counters_; }
  bool enabled(std::string_view) const override { return true; }
  const DissectLimits& limits() const override { return lim_; }
  std::vector<std::string> records;

 private:
  DissectLimits lim_;
  ProtocolCounters counters_;
  uint64_t seq_ = 0;
};

struct Op {
  int dir, kind;
  std::span<const uint8_t> bytes;
  size_t len;
};

std::vector<std::string> run_session(const std::vector<Op>& ops, const DissectLimits& lim, Rng rng, size_t max_chunk,
                                     bool check_json) {
  Ctx ctx(lim, check_json);
  KafkaProtocol p;
  auto s = p.open(ctx);
  uint64_t ts = 1000;
  // Bound: what the session may hold whatever it is fed: a kept prefix and
  // a resynchronisation window per direction, the pending requests
  // (topics and partitions capped), fixed parts.
  const size_t per_request = sizeof(KafkaRequest) + 3 * kKafkaMaxString + 128 +
                             kKafkaMaxTopics * (sizeof(KafkaTopic) + kKafkaMaxString + 64 + 4 * kKafkaMaxPartitions);
  const size_t keep = std::max<size_t>(lim.max_body_kept, 4096);
  const size_t bound = 4 * (2 * keep + 2048) + (lim.max_pending + 1) * per_request + 64 * 1024;
  for (const Op& op : ops) {
    ts += 1000;
    const Dir d = op.dir ? Dir::ServerToClient : Dir::ClientToServer;
    switch (op.kind) {
      case 0:
        for (size_t off = 0; off < op.bytes.size();) {
          const size_t k = chunk_size(rng, op.bytes.size() - off, max_chunk);
          s->data(d, op.bytes.subspan(off, k), ts);
          off += k;
        }
        break;
      case 1:
        s->gap(d, op.len);
        break;
      case 2:
        s->end(d, ts);
        break;
      default:
        s->expire(ts + op.len * 1000000000ull);
        break;
    }
    FUZZ_CHECK(s->memory_bytes() <= bound, std::to_string(s->memory_bytes()) + " bytes held");
    FUZZ_CHECK(s->buffered_bytes() <= 2 * (keep + 2048));
  }
  s->close(kFlagClosed, ts + 1);
  const size_t before = ctx.records.size();
  s->close(kFlagClosed, ts + 2);  // nothing left to flush
  FUZZ_CHECK(ctx.records.size() == before);
  s->shed_buffers(ts);
  return ctx.records;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader in(data, size);
  const uint8_t mode = in.u8();
  const uint32_t seed = in.u32();
  if ((mode & 3) == 0) {
    const auto body = in.rest();
    KafkaRequest q;
    if (parse_kafka_request(body, static_cast<uint32_t>(body.size()) + (mode & 8 ? 1000 : 0), q)) check_request(q);
    // kafka_request_start: a prefix's definite answer is the whole input's.
    const KafkaCheck whole = kafka_request_start(body);
    for (size_t n = 0; n < body.size() && n < 600; n++) {
      const KafkaCheck c = kafka_request_start(body.first(n));
      FUZZ_CHECK(c == KafkaCheck::NeedMore || c == whole, "prefix " + std::to_string(n));
    }
    return 0;
  }
  if ((mode & 3) == 1) {
    const int16_t key = static_cast<int8_t>(in.u8());
    const int16_t ver = in.u8();
    const auto body = in.rest();
    KafkaResponse r;
    if (parse_kafka_response(body, static_cast<uint32_t>(body.size()), key, ver, r)) {
      (void)kafka_error_name(r.error_code);
    }
    return 0;
  }
  std::vector<Op> ops;
  bool plain = true;  // data and end only: the split must not matter
  while (!in.empty() && ops.size() < 512) {
    const uint8_t op = in.u8();
    const size_t len = in.u16();
    Op o{op & 1, (op >> 1) & 3, {}, len};
    if (o.kind == 0) o.bytes = in.bytes(len);
    if (o.kind == 1 || o.kind == 3) plain = false;
    ops.push_back(o);
  }
  DissectLimits lim;
  if (mode & 4) {
    lim.max_pending = 4;
    lim.max_body_kept = 0;
  }
  const auto a = run_session(ops, lim, Rng(seed), 0, true);
  const auto b = run_session(ops, lim, Rng(seed), 64, false);
  if (plain) {
    FUZZ_CHECK(a.size() == b.size(), std::to_string(a.size()) + " vs " + std::to_string(b.size()));
    for (size_t i = 0; i < a.size(); i++) FUZZ_CHECK(a[i] == b[i], a[i] + "\n  vs\n" + b[i]);
  }
  return 0;
}

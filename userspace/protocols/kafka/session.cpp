#include "kafka/session.hpp"

#include <algorithm>
#include <deque>
#include <vector>

namespace tapwire::proto {
namespace {

constexpr uint16_t kKafkaPort = 9092;
// Bytes of one message kept to parse it, at least (the header, the topics):
// the rest of a large message (record sets) is counted and skipped.
constexpr size_t kMinKept = 4096;
// What a message in progress keeps when its buffer is shed.
constexpr size_t kKeptAfterShed = 256;
// Smallest body: a response's correlation id; a request's header is 10.
constexpr uint32_t kMinResponse = 4;
constexpr uint32_t kMinRequest = 10;

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

std::string api_label(int16_t key) {
  const char* n = kafka_api_name(key);
  return n ? n : "API_" + std::to_string(key);
}

// One direction's framing: [size][body], the body's first bytes kept.
struct Direction {
  enum class Mode : uint8_t { Size, Body, Resync } mode = Mode::Size;
  uint8_t hdr[4] = {};
  int hdr_n = 0;
  uint32_t size = 0;
  uint64_t remaining = 0;
  std::vector<uint8_t> kept;
  bool keeping = true;  // false once a gap or a shed lost part of the body
  bool checked = false;  // the message's start was found plausible
  // Messages of this direction were framed right (a request parsed; a
  // response matched its request): a broken one now is a protocol error,
  // and (responses) a response to nothing seen is an orphan. Before that
  // (joined in the middle, after a gap) bytes are skipped quietly until a
  // message start (a response to a pending request) is found.
  bool synced = false;
  uint64_t ts_first = 0, ts_last = 0;
  bool msg_gap = false, msg_shed = false;
  // For the next message of this direction.
  bool gap_next = false, shed_next = false, error_next = false;
  std::vector<uint8_t> rbuf;  // resynchronising: bytes being scanned for a message start
  uint64_t resync_dropped = 0;

  void reset_message() {
    hdr_n = 0;
    size = 0;
    remaining = 0;
    kept.clear();
    if (kept.capacity() > 2 * kMinKept) release(kept);
    keeping = true;
    checked = false;
    msg_gap = msg_shed = false;
  }
  size_t heap() const { return vector_heap_bytes(kept) + vector_heap_bytes(rbuf); }
};

class KafkaSession final : public StreamSession {
 public:
  explicit KafkaSession(SessionContext& ctx)
      : ctx_(ctx),
        counters_(ctx.counters(kKafka)),
        keep_cap_(std::max(ctx.limits().max_body_kept, kMinKept)),
        max_pending_(std::max<size_t>(ctx.limits().max_pending, 1)) {}

  void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts) override {
    Direction& s = dir_[dir_index(d)];
    std::vector<uint8_t> owned;  // bytes given back by resynchronisation
    std::span<const uint8_t> in = bytes;
    for (int guard = 0; guard < 1000000 && !in.empty(); guard++) {
      switch (s.mode) {
        case Direction::Mode::Size: {
          if (s.hdr_n == 0) s.ts_first = ts;
          const size_t k = std::min<size_t>(4 - s.hdr_n, in.size());
          std::copy_n(in.begin(), k, s.hdr + s.hdr_n);
          s.hdr_n += static_cast<int>(k);
          in = in.subspan(k);
          if (s.hdr_n < 4) break;
          s.size = be32(s.hdr);
          if (s.size < (d == Dir::ClientToServer ? kMinRequest : kMinResponse) || s.size > kKafkaMaxMessage) {
            start_resync(d, {}, in, owned);
            in = owned;
            break;
          }
          s.mode = Direction::Mode::Body;
          s.remaining = s.size;
          s.ts_last = ts;
          break;
        }
        case Direction::Mode::Body: {
          const size_t k = static_cast<size_t>(std::min<uint64_t>(s.remaining, in.size()));
          if (s.keeping && s.kept.size() < keep_cap_) {
            const size_t take = std::min(k, keep_cap_ - s.kept.size());
            s.kept.insert(s.kept.end(), in.begin(), in.begin() + static_cast<std::ptrdiff_t>(take));
          }
          s.remaining -= k;
          s.ts_last = ts;
          in = in.subspan(k);
          if (!s.checked && s.keeping && !check_start(d)) {
            // Not a message start after all: scan on from its second byte.
            start_resync(d, s.kept, in, owned);
            in = owned;
            break;
          }
          if (s.remaining == 0) finish(d, false);
          break;
        }
        case Direction::Mode::Resync:
          s.rbuf.insert(s.rbuf.end(), in.begin(), in.end());
          in = {};
          if (scan(d)) {
            std::vector<uint8_t> rest;
            rest.swap(s.rbuf);
            owned.swap(rest);
            in = owned;
            s.mode = Direction::Mode::Size;
            s.reset_message();
          }
          break;
      }
    }
  }

  void gap(Dir d, uint64_t len) override {
    Direction& s = dir_[dir_index(d)];
    if (s.mode == Direction::Mode::Body && len <= s.remaining) {
      // Inside a body: the framing holds, only the bytes are lost.
      s.msg_gap = true;
      s.keeping = false;
      s.remaining -= len;
      if (s.remaining == 0) finish(d, false);
      return;
    }
    // The size of a message (or the resynchronisation's bytes) lost: find the next one.
    if (s.mode == Direction::Mode::Body && s.kept.size() >= header_bytes(d)) {
      s.msg_gap = true;
      finish(d, true);
    }
    s.reset_message();
    s.mode = Direction::Mode::Resync;
    s.rbuf.clear();
    s.gap_next = true;
    s.synced = false;
  }

  void end(Dir d, uint64_t ts) override {
    Direction& s = dir_[dir_index(d)];
    if (s.mode == Direction::Mode::Body) {
      s.ts_last = std::max(s.ts_last, ts);
      finish(d, true);
    }
    s.reset_message();
    s.mode = Direction::Mode::Size;
    release(s.rbuf);
  }

  void close(uint32_t why, uint64_t ts) override {
    if (why & kFlagMemoryShed) dir_[0].shed_next = dir_[1].shed_next = true;
    end(Dir::ClientToServer, ts);
    end(Dir::ServerToClient, ts);
    while (!pending_.empty()) {
      emit(&pending_.front(), nullptr, why);
      pop_front();
    }
  }

  void expire(uint64_t now) override {
    const uint64_t t = ctx_.limits().request_timeout_ns;
    for (size_t i = 0; i < pending_.size();) {
      if (pending_[i].ts_last_ns + t < now) {
        emit(&pending_[i], nullptr, kFlagTimeout);
        erase(i);
      } else {
        i++;
      }
    }
  }

  size_t memory_bytes() const override {
    return heap_bytes(sizeof(*this)) + dir_[0].heap() + dir_[1].heap() + kDequeFixed + pending_heap_;
  }
  size_t buffered_bytes() const override {
    return dir_[0].kept.size() + dir_[1].kept.size() + dir_[0].rbuf.size() + dir_[1].rbuf.size();
  }

  size_t shed_buffers(uint64_t) override {
    size_t freed = 0;
    for (Direction& s : dir_) {
      const size_t before = s.heap();
      if (!s.kept.empty()) {
        // The message goes on being framed; what it keeps is gone but for
        // its first bytes (the header: the call is still named and paired).
        s.keeping = false;
        s.msg_shed = true;
        if (s.kept.size() > kKeptAfterShed) s.kept.resize(kKeptAfterShed);
        s.kept.shrink_to_fit();
      } else {
        release(s.kept);
      }
      if (!s.rbuf.empty()) s.shed_next = true;
      release(s.rbuf);
      freed += before - s.heap();
    }
    return freed;
  }

  void mark_shed(Dir d) override { dir_[dir_index(d)].shed_next = true; }

 private:
  SessionContext& ctx_;
  ProtocolCounters& counters_;
  size_t keep_cap_, max_pending_;
  Direction dir_[2];
  std::deque<KafkaRequest> pending_;  // in the order sent
  size_t pending_heap_ = 0;
  uint64_t* api_count_[80] = {};

  size_t header_bytes(Dir d) const { return d == Dir::ClientToServer ? kMinRequest : kMinResponse; }

  static size_t queued_bytes(const KafkaRequest& q) { return sizeof(KafkaRequest) + q.heap_bytes(); }
  void pop_front() {
    pending_heap_ -= queued_bytes(pending_.front());
    pending_.pop_front();
  }
  void erase(size_t i) {
    pending_heap_ -= queued_bytes(pending_[i]);
    pending_.erase(pending_.begin() + static_cast<std::ptrdiff_t>(i));
  }
  long find_pending(int32_t corr) const {
    for (size_t i = 0; i < pending_.size(); i++)
      if (pending_[i].correlation_id == corr) return static_cast<long>(i);
    return -1;
  }

  // Whether the message being read starts plausibly, once enough of it is
  // kept to tell: a request's header, or a response to a pending request
  // (any response, once the server's framing is known to be right).
  bool check_start(Dir d) {
    Direction& s = dir_[dir_index(d)];
    if (d == Dir::ClientToServer) {
      std::vector<uint8_t> probe;
      const size_t n = std::min<size_t>(s.kept.size(), 14 + kKafkaMaxClientIdCheck);
      probe.reserve(4 + n);
      probe.insert(probe.end(), s.hdr, s.hdr + 4);
      probe.insert(probe.end(), s.kept.begin(), s.kept.begin() + static_cast<std::ptrdiff_t>(n));
      const KafkaCheck c = kafka_request_start(probe);
      if (c == KafkaCheck::NeedMore) {
        // The whole message (or all that will be kept) is here: judge it by its parse.
        if (s.remaining == 0 || s.kept.size() >= keep_cap_) s.checked = true;
        return true;
      }
      s.checked = true;
      return c == KafkaCheck::Yes;
    }
    if (s.kept.size() < 4) return true;
    s.checked = true;
    if (s.synced) return true;
    return find_pending(static_cast<int32_t>(be32(s.kept.data()))) >= 0;
  }

  // Enters resynchronisation: `held` (the message's kept bytes, after its
  // size) and `rest` are scanned from the second byte of the size on.
  void start_resync(Dir d, std::span<const uint8_t> held, std::span<const uint8_t> rest, std::vector<uint8_t>& owned) {
    Direction& s = dir_[dir_index(d)];
    std::vector<uint8_t> buf;
    buf.reserve(3 + held.size() + rest.size());
    buf.insert(buf.end(), s.hdr + 1, s.hdr + 4);
    buf.insert(buf.end(), held.begin(), held.end());
    buf.insert(buf.end(), rest.begin(), rest.end());
    if (s.synced) {
      counters_.parse_errors++;
      s.error_next = true;
      s.synced = false;
    }
    s.reset_message();
    s.mode = Direction::Mode::Resync;
    s.rbuf.clear();
    owned.swap(buf);
  }

  // Scans rbuf for a message start. True: rbuf now starts with one. False:
  // rbuf keeps only the bytes that could still begin one.
  bool scan(Dir d) {
    Direction& s = dir_[dir_index(d)];
    const std::span<const uint8_t> b(s.rbuf);
    size_t i = 0;
    for (; i < b.size(); i++) {
      const KafkaCheck c = d == Dir::ClientToServer ? kafka_request_start(b.subspan(i)) : response_start(b.subspan(i));
      if (c == KafkaCheck::No) continue;
      if (c == KafkaCheck::Yes) {
        s.rbuf.erase(s.rbuf.begin(), s.rbuf.begin() + static_cast<std::ptrdiff_t>(i));
        s.resync_dropped += i;
        return true;
      }
      break;  // NeedMore: keep from here
    }
    s.resync_dropped += i;
    s.rbuf.erase(s.rbuf.begin(), s.rbuf.begin() + static_cast<std::ptrdiff_t>(i));
    if (s.rbuf.size() > 16 + kKafkaMaxClientIdCheck) s.rbuf.clear();  // defence in depth: NeedMore never holds more
    return false;
  }

  KafkaCheck response_start(std::span<const uint8_t> b) const {
    if (b.size() < 8) return pending_.empty() ? KafkaCheck::No : KafkaCheck::NeedMore;
    const uint32_t size = be32(b.data());
    if (size < kMinResponse || size > kKafkaMaxMessage) return KafkaCheck::No;
    return find_pending(static_cast<int32_t>(be32(b.data() + 4))) >= 0 ? KafkaCheck::Yes : KafkaCheck::No;
  }

  // The message read (or cut short: `cut`) comes out.
  void finish(Dir d, bool cut) {
    Direction& s = dir_[dir_index(d)];
    const bool shed = s.msg_shed || s.shed_next;
    const bool gap = s.msg_gap || s.gap_next;
    const bool err = s.error_next;
    s.shed_next = s.gap_next = s.error_next = false;
    if (d == Dir::ClientToServer) {
      KafkaRequest q;
      if (parse_kafka_request(s.kept, s.size, q)) {
        q.ts_first_ns = s.ts_first;
        q.ts_last_ns = s.ts_last;
        q.gap = gap;
        q.memory_shed = shed;
        q.incomplete = cut;
        q.protocol_error = err || q.malformed;
        if (q.malformed) counters_.parse_errors++;
        if (!q.malformed) s.synced = true;
        take_request(std::move(q));
      }
    } else if (s.kept.size() >= 4) {
      const int32_t corr = static_cast<int32_t>(be32(s.kept.data()));
      const long i = find_pending(corr);
      KafkaResponse r;
      if (i >= 0)
        parse_kafka_response(s.kept, s.size, pending_[static_cast<size_t>(i)].api_key,
                             pending_[static_cast<size_t>(i)].api_version, r);
      else
        parse_kafka_response(s.kept, s.size, -1, 0, r);
      r.ts_first_ns = s.ts_first;
      r.ts_last_ns = s.ts_last;
      r.gap = gap;
      r.memory_shed = shed;
      r.incomplete = cut;
      r.protocol_error = err || r.malformed;
      if (r.malformed) counters_.parse_errors++;
      if (i >= 0) {
        s.synced = true;
        emit(&pending_[static_cast<size_t>(i)], &r, 0);
        erase(static_cast<size_t>(i));
      } else {
        emit(nullptr, &r, 0);
      }
    }
    s.reset_message();
    s.mode = Direction::Mode::Size;
  }

  void take_request(KafkaRequest&& q) {
    if (q.api_key == 0 && q.acks == 0 && !q.incomplete) {  // Produce with acks=0: no response comes
      emit(&q, nullptr, 0);
      return;
    }
    if (pending_.size() >= max_pending_) {  // the oldest will not be answered any more
      emit(&pending_.front(), nullptr, kFlagTimeout);
      pop_front();
    }
    pending_heap_ += queued_bytes(q);
    pending_.push_back(std::move(q));
  }

  void count(int16_t key) {
    const size_t i = key >= 0 && key < 79 ? static_cast<size_t>(key) : 79;
    if (!api_count_[i]) api_count_[i] = &counters_.breakdowns["kafka_apis"][i < 79 ? api_label(key) : "OTHER"];
    ++*api_count_[i];
  }

  void emit(KafkaRequest* q, KafkaResponse* r, uint32_t extra) {
    CallContent c;
    c.protocol = kKafka;
    c.flags = extra;
    if (q) {
      count(q->api_key);
      c.ts_ns = q->ts_first_ns;
      if (q->gap) c.flags |= kFlagGap;
      if (q->truncated) c.flags |= kFlagTruncated;
      if (q->incomplete) c.flags |= kFlagIncomplete;
      if (q->memory_shed) c.flags |= kFlagMemoryShed;
      if (q->protocol_error) c.flags |= kFlagProtocolError;
      c.method = api_label(q->api_key);
      if (!q->topics.empty())
        c.path = q->topics.front().name;
      else
        c.path = q->group_id;
    }
    if (r) {
      if (!q) {
        c.ts_ns = r->ts_first_ns;
        c.flags |= kFlagOrphanResponse;
      }
      c.end_ns = r->ts_last_ns;
      if (r->gap) c.flags |= kFlagGap;
      if (r->truncated) c.flags |= kFlagTruncated;
      if (r->incomplete) c.flags |= kFlagIncomplete;
      if (r->memory_shed) c.flags |= kFlagMemoryShed;
      if (r->protocol_error) c.flags |= kFlagProtocolError;
      if (q) c.status = r->has_error ? r->error_code : 0;
    }
    c.key_extra = ctx_.next_seq();
    if (q) c.request = std::make_shared<KafkaRequestRecord>(std::move(*q));
    if (r) c.response = std::make_shared<KafkaResponseRecord>(std::move(*r));
    ctx_.emit(std::move(c));
  }
};

}  // namespace

void KafkaRequestRecord::write_json(JsonOut& out) const {
  const KafkaRequest& q = msg;
  out.begin_object();
  out.field("api_key", api_label(q.api_key));
  out.field("api_version", int{q.api_version});
  out.field("correlation_id", int64_t{q.correlation_id});
  out.key("client_id");
  if (q.client_id_null)
    out.null();
  else
    out.string(q.client_id);
  if (!q.group_id.empty()) out.field("group_id", q.group_id);
  out.key("topics");
  out.begin_array();
  for (const KafkaTopic& t : q.topics) {
    out.begin_object();
    out.field("name", t.name);
    out.key("partitions");
    out.begin_array();
    for (int32_t p : t.partitions) out.number(p);
    out.end_array();
    out.end_object();
  }
  out.end_array();
  if (q.api_key == 0) {
    out.field("acks", int{q.acks});
    out.field("record_sets", uint64_t{q.record_sets});
    out.field("record_bytes", q.record_bytes);
  }
  out.field("size", uint64_t{q.size});
  out.end_object();
}

void KafkaResponseRecord::write_json(JsonOut& out) const {
  const KafkaResponse& r = msg;
  out.begin_object();
  out.field("correlation_id", int64_t{r.correlation_id});
  if (r.has_error) {
    out.field("error_code", kafka_error_name(r.error_code));
    out.field("error", int{r.error_code});
  }
  out.field("size", uint64_t{r.size});
  out.end_object();
}

Detection KafkaProtocol::detect(std::span<const uint8_t> first, int side, const FlowView& flow) const {
  Detection d;
  const bool to_kafka_port = flow.port[1 - side] == kKafkaPort;
  const bool from_kafka_port = flow.port[side] == kKafkaPort;
  if (flow.port[0] == 53 || flow.port[1] == 53) return d;  // DNS over TCP is DNS's, never ours
  const KafkaCheck c = kafka_request_start(first);
  if (c == KafkaCheck::NeedMore) {
    d.need_more = true;
    return d;
  }
  if (c == KafkaCheck::Yes) {
    // An empty or null client id is legal but rare: then the port must say so too.
    const int16_t n = static_cast<int16_t>((first[12] << 8) | first[13]);
    const uint32_t size = be32(first.data());
    bool ok = n > 0 || to_kafka_port;
    // A second message right behind the first must be plausible too.
    if (ok && first.size() > size + 4ull) ok = kafka_request_start(first.subspan(size + 4)) != KafkaCheck::No;
    if (ok) {
      d.matched = true;
      // A response with a small correlation id reads as a request header
      // too (API key 0, version = the id): from the broker's port it is one.
      d.client_side = from_kafka_port && !to_kafka_port ? 1 - side : side;
      return d;
    }
    return d;
  }
  if (from_kafka_port) {
    // A response alone is weak evidence: only with the broker's port.
    if (first.size() < 8) {
      d.need_more = first.empty() || first[0] <= 0x06;
      return d;
    }
    const uint32_t size = be32(first.data());
    if (size >= kMinResponse && size <= kKafkaMaxMessage) {
      d.matched = true;
      d.client_side = 1 - side;
    }
    return d;
  }
  if (to_kafka_port) {
    // Joined in the middle of a request to the broker's port: a request
    // starts further on.
    for (size_t i = 1; i + 14 <= first.size(); i++)
      if (kafka_request_start(first.subspan(i)) == KafkaCheck::Yes) {
        d.matched = true;
        d.client_side = side;
        return d;
      }
  }
  return d;
}

std::unique_ptr<StreamSession> KafkaProtocol::open(SessionContext& ctx) const {
  return std::make_unique<KafkaSession>(ctx);
}

}  // namespace tapwire::proto

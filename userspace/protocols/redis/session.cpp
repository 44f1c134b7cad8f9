#include "redis/session.hpp"

#include <deque>

namespace tapwire::proto {
namespace {

constexpr size_t kMaxPath = 1024;  // the summary's path (a key) kept

std::string upper(std::string_view s) {
  std::string u(s.substr(0, 64));
  for (char& c : u)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  return u;
}

std::string lower(std::string_view s) {
  std::string u(s.substr(0, 64));
  for (char& c : u)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return u;
}

bool is_string(const RespValue& v) { return !v.aggregate() && !v.null; }

// A pub/sub reply or push: its kind ("message", "subscribe", ...), lower-cased; "" otherwise.
std::string pubsub_kind(const RespValue& v) {
  if ((v.type != '*' && v.type != '>') || v.items.empty() || !is_string(v.items[0])) return {};
  return lower(v.items[0].text);
}

bool is_confirmation(std::string_view k) {
  return k == "subscribe" || k == "psubscribe" || k == "ssubscribe" || k == "unsubscribe" || k == "punsubscribe" ||
         k == "sunsubscribe";
}

// A RESP2 pub/sub message array: ["message", channel, payload],
// ["pmessage", pattern, channel, payload], ["smessage", channel, payload].
bool is_message(const RespValue& v, std::string_view k) {
  return v.type == '*' && ((k == "message" || k == "smessage") ? v.count == 3 : k == "pmessage" && v.count == 4);
}

uint32_t message_flags(const RespMessage& m) {
  uint32_t f = 0;
  if (m.truncated) f |= kFlagTruncated;
  if (m.gap) f |= kFlagGap;
  if (m.incomplete) f |= kFlagIncomplete;
  if (m.protocol_error) f |= kFlagProtocolError;
  if (m.memory_shed) f |= kFlagMemoryShed;
  return f;
}

size_t queued_bytes(const RespMessage& m) { return sizeof(RespMessage) + m.heap; }

// Drops a message's kept strings; returns the bytes freed.
size_t shed_message(RespMessage& m) {
  size_t freed = 0;
  auto drop = [&](auto& self, RespValue& v) -> void {
    if (!v.text.empty()) v.truncated = true;
    freed += string_heap_bytes(v.text);
    std::string().swap(v.text);
    for (RespValue& i : v.items) self(self, i);
  };
  drop(drop, m.value);
  if (freed) {
    m.memory_shed = m.truncated = true;
    m.heap -= std::min(m.heap, freed);
  }
  return freed;
}

class RedisSession final : public StreamSession {
 public:
  explicit RedisSession(SessionContext& ctx)
      : ctx_(ctx),
        counters_(ctx.counters(kRedis)),
        parser_{RespParser(RespParser::Side::Commands, limits(ctx.limits())),
                RespParser(RespParser::Side::Replies, limits(ctx.limits()))} {}

  void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts) override {
    const int i = dir_index(d);
    const uint64_t errors = parser_[i].protocol_errors();
    parser_[i].feed(bytes, ts, out_);
    counters_.parse_errors += parser_[i].protocol_errors() - errors;
    take(d);
  }

  void gap(Dir d, uint64_t len) override {
    parser_[dir_index(d)].on_gap(len, out_);
    take(d);
    // The replies of the commands waiting may be in the bytes lost: those
    // commands come out unanswered, and pairing starts over.
    if (d == Dir::ServerToClient) flush(kFlagGap);
  }

  void end(Dir d, uint64_t ts) override {
    parser_[dir_index(d)].on_close(ts, out_);
    take(d);
  }

  void close(uint32_t why, uint64_t ts) override {
    end(Dir::ClientToServer, ts);
    end(Dir::ServerToClient, ts);
    flush(why);
  }

  void expire(uint64_t now) override {
    const uint64_t t = ctx_.limits().request_timeout_ns;
    while (!pending_.empty() && pending_.front().ts_last_ns + t < now) {
      RespMessage req = pop_front();
      emit_call(&req, nullptr, kFlagTimeout);
    }
  }

  size_t memory_bytes() const override {
    return heap_bytes(sizeof(*this)) + kDequeFixed + parser_[0].memory_bytes() + parser_[1].memory_bytes() +
           vector_heap_bytes(out_) + queued_;
  }

  size_t shed_bodies() override {
    size_t freed = 0;
    for (RespMessage& m : pending_) {
      const size_t f = shed_message(m);
      freed += f;
      queued_ -= std::min(queued_, f);
    }
    return freed;
  }

  size_t shed_buffers(uint64_t) override { return parser_[0].shed_partial() + parser_[1].shed_partial(); }

  void mark_shed(Dir d) override { parser_[dir_index(d)].mark_shed(); }

 private:
  SessionContext& ctx_;
  ProtocolCounters& counters_;
  RespParser parser_[2];
  std::vector<RespMessage> out_;
  std::deque<RespMessage> pending_;  // commands waiting for their reply, oldest first
  size_t queued_ = 0;  // queued_bytes of pending_
  bool subscribed_ = false;  // RESP2 subscribe mode: pub/sub messages arrive as arrays

  static RespLimits limits(const DissectLimits& l) {
    RespLimits r;
    r.max_kept = l.max_body_kept;
    r.max_items = std::max<size_t>(2 * l.max_headers, 8);
    return r;
  }

  RespMessage pop_front() {
    RespMessage m = std::move(pending_.front());
    pending_.pop_front();
    queued_ -= std::min(queued_, queued_bytes(m));
    return m;
  }

  void flush(uint32_t why) {
    while (!pending_.empty()) {
      RespMessage req = pop_front();
      emit_call(&req, nullptr, why);
    }
  }

  void count(const std::string& label) { counters_.breakdowns["redis_commands"][label]++; }

  void emit_call(RespMessage* req, RespMessage* resp, uint32_t flags) {
    CallContent c;
    c.protocol = kRedis;
    c.flags = flags;
    if (req) {
      c.ts_ns = req->ts_first_ns;
      c.flags |= message_flags(*req);
      c.method = redis_command_name(*req);
      const auto& items = req->value.items;
      if (c.method == "EVAL" || c.method == "EVALSHA" || c.method == "EVAL_RO" || c.method == "EVALSHA_RO" ||
          c.method == "FCALL" || c.method == "FCALL_RO") {
        if (items.size() > 3 && items[2].text != "0") c.path = items[3].text.substr(0, kMaxPath);
      } else if (items.size() > 1 && !redis_command_without_key(c.method)) {
        c.path = items[1].text.substr(0, kMaxPath);
      }
      const std::string_view known = redis_known_command(c.method);
      count(known.empty() ? "OTHER" : std::string(known));
    }
    if (resp) {
      if (!req) {
        c.ts_ns = resp->ts_first_ns;
        c.flags |= kFlagOrphanResponse;
      }
      c.end_ns = resp->ts_last_ns;
      c.flags |= message_flags(*resp);
      c.status = resp->value.is_error() ? 1 : 0;
    }
    c.key_extra = ctx_.next_seq();
    if (req) c.request = std::make_shared<RedisRecord>(std::move(*req), true);
    if (resp) c.response = std::make_shared<RedisRecord>(std::move(*resp), false);
    ctx_.emit(std::move(c));
  }

  // A push (RESP3 '>', or a RESP2 pub/sub array in subscribe mode): a call
  // of its own, response only.
  void emit_push(RespMessage& m, const std::string& kind) {
    CallContent c;
    c.protocol = kRedis;
    c.ts_ns = m.ts_first_ns;
    c.end_ns = m.ts_last_ns;
    c.one_message = true;
    c.flags = message_flags(m);
    c.method = kind.empty() ? "PUSH" : upper(kind);
    const auto& items = m.value.items;
    // The channel: ["message", channel, ...], ["pmessage", pattern, channel, ...].
    const size_t ch = kind == "pmessage" ? 2 : 1;
    if (items.size() > ch && is_string(items[ch])) c.path = items[ch].text.substr(0, kMaxPath);
    c.status = 0;
    static const char* kKinds[] = {"message", "pmessage", "smessage", "subscribe", "psubscribe", "ssubscribe",
                                   "unsubscribe", "punsubscribe", "sunsubscribe", "invalidate", "tracking-redir-broken"};
    std::string label = "push:other";
    for (const char* k : kKinds)
      if (kind == k) label = std::string("push:") + k;
    count(label);
    c.key_extra = ctx_.next_seq();
    c.response = std::make_shared<RedisRecord>(std::move(m), false);
    ctx_.emit(std::move(c));
  }

  void command(RespMessage&& m) {
    if (pending_.size() >= ctx_.limits().max_pending) {  // the oldest will never be answered in order
      RespMessage req = pop_front();
      emit_call(&req, nullptr, kFlagTimeout);
    }
    queued_ += queued_bytes(m);
    pending_.push_back(std::move(m));
  }

  void reply(RespMessage&& m) {
    const std::string kind = pubsub_kind(m.value);
    const std::string front = pending_.empty() ? std::string() : redis_command_name(pending_.front());
    if (m.value.type == '>') {
      // RESP3: a subscribe confirmation answers the command waiting for
      // it; every other push is out of band.
      if (!(is_confirmation(kind) && front == upper(kind))) return emit_push(m, kind);
    } else if (m.value.type == '*' && !kind.empty()) {
      if (is_message(m.value, kind) && (subscribed_ || pending_.empty())) return emit_push(m, kind);
      if (is_confirmation(kind) && m.value.count == 3 && m.value.items.size() == 3 && m.value.items[2].type == ':') {
        // Subscribe mode lasts while the connection has subscriptions.
        if (kind.find("unsubscribe") == std::string::npos)
          subscribed_ = true;
        else if (m.value.items[2].text == "0")
          subscribed_ = false;
        // One confirmation per channel: those after the first answer no command.
        if (front != upper(kind) && (subscribed_ || pending_.empty() || kind.find("unsubscribe") != std::string::npos))
          return emit_push(m, kind);
      }
    }
    if (pending_.empty()) return emit_call(nullptr, &m, 0);
    RespMessage req = pop_front();
    if (redis_command_name(req) == "RESET") subscribed_ = false;
    emit_call(&req, &m, 0);
  }

  void take(Dir d) {
    for (RespMessage& m : out_) {
      if (d == Dir::ClientToServer)
        command(std::move(m));
      else
        reply(std::move(m));
    }
    out_.clear();
  }
};

}  // namespace

std::string redis_command_name(const RespMessage& m) {
  if (m.value.items.empty() || !is_string(m.value.items[0])) return {};
  return upper(m.value.items[0].text);
}

size_t RedisRecord::body_bytes() const {
  size_t n = 0;
  auto add = [&](auto& self, const RespValue& v) -> void {
    n += v.text.size();
    for (const RespValue& i : v.items) self(self, i);
  };
  add(add, msg.value);
  return n;
}

void RedisRecord::write_json(JsonOut& out) const {
  const RespValue& v = msg.value;
  out.begin_object();
  if (request) {
    out.field("command", redis_command_name(msg));
    out.key("args");
    out.begin_array();
    for (size_t i = 1; i < v.items.size(); i++) v.items[i].write_json(out);
    out.end_array();
    out.field("argc", static_cast<uint64_t>(v.count > 0 ? v.count - 1 : 0));
    if (v.type == 'i') out.field("inline", true);
  } else {
    out.field("type", v.type_name());
    if (v.is_error()) {
      out.field("error", v.text);
    } else if (v.type) {  // (no value when broken before its type)
      out.key("value");
      v.write_json(out);
    }
    if (v.aggregate()) out.field("count", static_cast<uint64_t>(v.count > 0 ? v.count : 0));
  }
  out.field("size", msg.wire_size);
  if (msg.protocol_error) out.field("parse_error", msg.error);
  out.end_object();
}

Detection RedisProtocol::detect(std::span<const uint8_t> first, int side, const FlowView&) const {
  Detection d;
  switch (resp_detect(first)) {
    case -1:
      d.need_more = true;
      break;
    case 1:
      d.matched = true;
      d.client_side = side;
      break;
    case 2:
      d.matched = true;
      d.client_side = 1 - side;
      break;
    default:
      break;
  }
  return d;
}

std::unique_ptr<StreamSession> RedisProtocol::open(SessionContext& ctx) const {
  return std::make_unique<RedisSession>(ctx);
}

}  // namespace tapwire::proto

#include "amqp/session.hpp"

#include <cstring>
#include <deque>

#include "body/body_text.hpp"

namespace tapwire::proto {
namespace {

bool is_close(const AmqpMessage& m) {
  return (m.class_id == 20 && m.method_id == 40) || (m.class_id == 10 && m.method_id == 50);
}

uint32_t message_flags(const AmqpMessage& m) {
  uint32_t f = 0;
  if (m.gap) f |= kFlagGap;
  if (m.truncated) f |= m.body_received > m.body.size() ? kFlagBodyTruncated : kFlagTruncated;
  if (m.incomplete) f |= kFlagIncomplete;
  if (m.protocol_error) f |= kFlagProtocolError;
  if (m.memory_shed) f |= kFlagMemoryShed;
  return f;
}

// A reply code as the call's status: 200 (reply-success) is 0, the others as they are.
int status_of_code(uint64_t code) { return code == 200 ? 0 : static_cast<int>(code & 0xffff); }

// What the call is about: the queue where there is one, else exchange/routing-key, else the exchange.
std::string path_of(const AmqpMessage& req, const AmqpMessage* resp) {
  std::string_view q = req.str("queue");
  if (q.empty() && resp && resp->class_id == 50) q = resp->str("queue");  // a server-named queue
  if (!q.empty()) return std::string(q);
  if (req.field("routing_key")) {
    std::string_view ex = req.field("exchange") ? req.str("exchange") : req.str("source");
    return std::string(ex) + "/" + std::string(req.str("routing_key"));
  }
  if (!req.str("exchange").empty()) return std::string(req.str("exchange"));
  return {};
}

class AmqpSession final : public StreamSession {
 public:
  explicit AmqpSession(SessionContext& ctx)
      : ctx_(ctx),
        counters_(ctx.counters(kAmqp)),
        parser_{AmqpParser(true, limits(ctx)), AmqpParser(false, limits(ctx))} {}

  void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts) override {
    const int role = dir_index(d);
    auto& buf = buf_[role];
    std::span<const uint8_t> in = bytes;
    if (!buf.empty()) {
      buf.insert(buf.end(), bytes.begin(), bytes.end());
      in = buf;
    }
    size_t used = 0;
    const uint64_t errors_before = parser_[role].errors();
    for (int guard = 0; guard < 1000000 && used < in.size(); guard++) {
      ParseResult r = parser_[role].feed(in.subspan(used), ts, out_);
      used += r.consumed;
      if (!out_.empty()) drain(role);
      if (r.status == ParseStatus::NeedMoreData || (r.consumed == 0 && r.status != ParseStatus::Done)) break;
    }
    counters_.parse_errors += parser_[role].errors() - errors_before;
    // What is left is one frame not complete yet (the parser's cap bounds it).
    if (used >= in.size()) {
      buf.clear();
      if (buf.capacity() > kKeepBuffer) release(buf);
    } else if (in.data() == buf.data()) {
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    } else {
      buf.assign(in.begin() + static_cast<std::ptrdiff_t>(used), in.end());
    }
    if (buf.size() > lim_.max_frame_buffered + 64) {  // defence in depth
      const uint64_t n = buf.size();
      release(buf);
      parser_[role].on_gap(n, out_);
      counters_.parse_errors++;
      drain(role);
    }
  }

  void gap(Dir d, uint64_t len) override {
    const int role = dir_index(d);
    const uint64_t held = buf_[role].size();
    release(buf_[role]);
    parser_[role].on_gap(len + held, out_);
    drain(role);
  }

  void end(Dir d, uint64_t ts) override {
    const int role = dir_index(d);
    release(buf_[role]);
    parser_[role].on_close(ts, out_);
    drain(role);
  }

  void close(uint32_t why, uint64_t ts) override {
    close_why_ = why;
    end(Dir::ClientToServer, ts);
    end(Dir::ServerToClient, ts);
    while (!pending_.empty()) pop_unanswered(why);
  }

  void expire(uint64_t now) override {
    const uint64_t t = ctx_.limits().request_timeout_ns;
    while (!pending_.empty() && pending_.front().rec->msg.ts_last_ns + t < now) pop_unanswered(kFlagTimeout);
  }

  size_t memory_bytes() const override {
    size_t n = heap_bytes(sizeof(*this)) + kDequeFixed + parser_[0].memory_bytes() + parser_[1].memory_bytes() +
               vector_heap_bytes(buf_[0]) + vector_heap_bytes(buf_[1]) + vector_heap_bytes(out_);
    for (const AmqpMessage& m : out_) n += m.heap_bytes();
    for (const Pending& p : pending_) n += p.rec->heap_bytes();
    return n;
  }
  size_t buffered_bytes() const override { return buf_[0].size() + buf_[1].size(); }

  size_t shed_bodies() override { return parser_[0].shed_body() + parser_[1].shed_body(); }

  size_t shed_buffers(uint64_t) override {
    size_t freed = 0;
    for (int role = 0; role < 2; role++) {
      if (!buf_[role].capacity()) continue;
      freed += vector_heap_bytes(buf_[role]);
      const uint64_t n = buf_[role].size();
      release(buf_[role]);
      if (n) {
        parser_[role].on_gap(n, out_);
        shed_pending_[role] = true;
        drain(role);
      }
    }
    return freed;
  }

  void mark_shed(Dir d) override { shed_pending_[dir_index(d)] = true; }

 private:
  static constexpr size_t kKeepBuffer = 16 << 10;
  struct Pending {
    int role;  // who asked
    std::shared_ptr<AmqpRecord> rec;
  };

  SessionContext& ctx_;
  ProtocolCounters& counters_;
  AmqpLimits lim_;
  AmqpParser parser_[2];  // [0] the client's bytes, [1] the server's
  std::vector<uint8_t> buf_[2];
  std::vector<AmqpMessage> out_;
  std::deque<Pending> pending_;  // synchronous methods waiting for their reply, oldest first
  bool shed_pending_[2] = {false, false};
  uint32_t close_why_ = 0;

  AmqpLimits limits(SessionContext& ctx) {
    lim_.max_body_kept = ctx.limits().max_body_kept;
    lim_.max_table_entries = std::max<size_t>(ctx.limits().max_headers, 16);
    return lim_;
  }

  void drain(int role) {
    // handle() may emit, and emitting never feeds the parser: out_ is stable while we walk it.
    std::vector<AmqpMessage> msgs;
    msgs.swap(out_);
    for (AmqpMessage& m : msgs) handle(role, std::move(m));
    if (out_.empty()) {
      msgs.clear();
      if (msgs.capacity() <= 64) out_.swap(msgs);
    }
  }

  void handle(int role, AmqpMessage&& m) {
    ++counters_.breakdowns["amqp_methods"][m.name()];
    if (shed_pending_[role]) {
      m.memory_shed = true;
      shed_pending_[role] = false;
    }
    uint64_t v = 0;
    if (m.class_id == 10 && (m.method_id == 30 || m.method_id == 31) && m.num("frame_max", v)) {
      parser_[0].set_frame_max(static_cast<uint32_t>(v));
      parser_[1].set_frame_max(static_cast<uint32_t>(v));
    }
    const AmqpMethodInfo* info = m.info;
    auto rec = std::make_shared<AmqpRecord>(std::move(m));
    if (!info) return one_message(role, rec);
    if (info->kind == AmqpKind::Reply) {
      for (auto it = pending_.begin(); it != pending_.end(); ++it) {
        const AmqpMessage& q = it->rec->msg;
        if (it->role == role || q.channel != rec->msg.channel || q.class_id != info->class_id) continue;
        if (q.info->reply != info->method_id && q.info->reply2 != info->method_id) continue;
        Pending p = std::move(*it);
        pending_.erase(it);
        emit(p.rec, rec, 0, false);
        if (is_close(p.rec->msg)) crossed_close(role, rec->msg.channel);
        return;
      }
      return emit(nullptr, rec, kFlagOrphanResponse, false);
    }
    if (is_close(rec->msg)) {
      // The close answers what the other side still waits for on the channel (the connection).
      const bool connection = rec->msg.class_id == 10;
      for (auto it = pending_.begin(); it != pending_.end();) {
        if (it->role != role && (connection || it->rec->msg.channel == rec->msg.channel) && !is_close(it->rec->msg)) {
          Pending p = std::move(*it);
          it = pending_.erase(it);
          emit(p.rec, rec, 0, false);
        } else {
          ++it;
        }
      }
    }
    if (info->kind == AmqpKind::Async || rec->msg.flag("nowait")) return one_message(role, rec);
    if (pending_.size() >= ctx_.limits().max_pending) pop_unanswered(kFlagTimeout);
    pending_.push_back({role, std::move(rec)});
  }

  // Both sides closed the channel at once (a client's close crossing the
  // server's close with an error): the side that sent close-ok for the
  // other's close gets no close-ok for its own. Its close is a call of its
  // own, with its reply code.
  void crossed_close(int role, uint16_t channel) {
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (it->role != role || it->rec->msg.channel != channel || !is_close(it->rec->msg)) continue;
      Pending p = std::move(*it);
      pending_.erase(it);
      return one_message(role, p.rec);
    }
  }

  void pop_unanswered(uint32_t why) {
    Pending p = std::move(pending_.front());
    pending_.pop_front();
    emit(p.rec, nullptr, why, false);
  }

  // A message of its own: the client's as a request, the server's as a response.
  void one_message(int role, const std::shared_ptr<AmqpRecord>& rec) {
    if (role == 0)
      emit(rec, nullptr, 0, true);
    else
      emit(nullptr, rec, 0, true);
  }

  void emit(const std::shared_ptr<AmqpRecord>& req, const std::shared_ptr<AmqpRecord>& resp, uint32_t flags,
            bool one) {
    CallContent c;
    c.protocol = kAmqp;
    c.flags = flags;
    c.one_message = one;
    uint64_t code = 0;
    const AmqpMessage* main = req ? &req->msg : &resp->msg;
    c.method = main->name();
    c.path = path_of(*main, req && resp ? &resp->msg : nullptr);
    if (req) {
      c.ts_ns = req->msg.ts_first_ns;
      c.flags |= message_flags(req->msg);
      if (req->msg.incomplete) c.flags |= close_why_;
      c.request = req;
    }
    if (resp) {
      if (!req) c.ts_ns = resp->msg.ts_first_ns;
      c.end_ns = resp->msg.ts_last_ns;
      c.flags |= message_flags(resp->msg);
      if (resp->msg.incomplete) c.flags |= close_why_;
      c.response = resp;
    }
    if (resp && resp->msg.num("reply_code", code))
      c.status = status_of_code(code);
    else if (req && resp && is_close(req->msg) && req->msg.num("reply_code", code))
      c.status = status_of_code(code);
    else if (req && resp && !(flags & kFlagOrphanResponse))
      c.status = 0;
    else if (one && main->num("reply_code", code))
      c.status = status_of_code(code);
    if (one && c.ts_ns && !c.end_ns) c.end_ns = main->ts_last_ns;
    c.key_extra = ctx_.next_seq();
    ctx_.emit(std::move(c));
  }
};

// Walks the frames at the start of `p`: each of a known type with its frame
// end where its size puts it, at least one a method frame. Returns the
// first method frame's offset, -1 when the bytes are not AMQP frames, -2
// when they agree so far but are too few.
long frames_at(std::span<const uint8_t> p) {
  size_t at = 0;
  for (int k = 0; k < 8; k++) {
    std::span<const uint8_t> f = p.subspan(at);
    if (f.empty()) return -2;
    if (f[0] == kAmqpFrameMethod) {
      // Only a frame that fits in what detection holds (4 KiB) can be checked.
      if (at + 12 > 4096) return -1;
      bool need_more = false;
      if (amqp_method_frame_at(f, 4096 - 8 - at, need_more)) return static_cast<long>(at);
      return need_more ? -2 : -1;
    }
    if (f[0] != kAmqpFrameHeader && f[0] != kAmqpFrameBody && f[0] != kAmqpFrameHeartbeat) return -1;
    if (f.size() < 7) return -2;
    const uint64_t size = uint64_t{f[3]} << 24 | uint64_t{f[4]} << 16 | uint64_t{f[5]} << 8 | f[6];
    if (f[0] == kAmqpFrameHeartbeat && (size != 0 || f[1] || f[2])) return -1;
    if (f[0] == kAmqpFrameHeader && size < 14) return -1;
    if (at + size + 8 > 4096) return -1;  // cannot be checked within what detection holds
    if (f.size() < size + 8) return -2;
    if (f[size + 7] != kAmqpFrameEnd) return -1;
    at += size + 8;
  }
  return -1;
}

}  // namespace

int amqp_sender(const AmqpMethodInfo& m) {
  const uint16_t c = m.class_id, id = m.method_id;
  if ((c == 20 && (id == 20 || id == 21 || id == 40 || id == 41)) || (c == 10 && (id == 50 || id == 51)) ||
      (c == 60 && (id == 30 || id == 31 || id == 80 || id == 120)))
    return -1;  // close, flow, cancel and acks go both ways
  if (c == 10 && (id == 10 || id == 20 || id == 30 || id == 60 || id == 61)) return 1;
  if (c == 10 && (id == 11 || id == 21 || id == 31)) return 0;
  if (c == 60 && (id == 50 || id == 60)) return 1;
  if (m.kind == AmqpKind::Reply) return 1;
  return 0;
}

void AmqpRecord::write_json(JsonOut& out) const {
  const AmqpMessage& m = msg;
  out.begin_object();
  out.field("method", m.name());
  out.field("channel", uint64_t{m.channel});
  out.field("sender", m.from_client ? "client" : "server");
  if (!m.info) {
    out.field("class_id", uint64_t{m.class_id});
    out.field("method_id", uint64_t{m.method_id});
  }
  for (const AmqpField& f : m.fields) {
    switch (f.kind) {
      case 'b': out.field(f.name, f.num != 0); break;
      case 'u': out.field(f.name, f.num); break;
      case 's': out.field(f.name, f.text); break;
      case 'j':
        out.key(f.name);
        out.raw(f.text);
        break;
      case 'z': out.field(std::string(f.name) + "_size", f.num); break;
    }
  }
  if (m.has_content) {
    if (!m.properties_json.empty()) {
      out.key("properties");
      out.raw(m.properties_json);
    }
    out.field("body_size", m.body_size);
    if (!m.body.empty()) {
      auto bytes = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(m.body.data()), m.body.size());
      BodyText t = body_text(bytes, m.content_type.empty() || is_text(m.content_type, bytes));
      out.field("body", t.value);
      if (t.base64) out.field("body_encoding", "base64");
    }
  }
  if (!m.error.empty()) out.field("error", m.error);
  out.end_object();
}

Detection AmqpProtocol::detect(std::span<const uint8_t> first, int side, const FlowView&) const {
  Detection d;
  if (first.empty()) return d;
  if (first[0] == 'A') {
    // The protocol header, exactly 0-9-1's: other versions (0-8, 0-10, 1.0) are not claimed.
    const size_t n = std::min<size_t>(first.size(), 8);
    if (std::memcmp(first.data(), kAmqpProtocolHeader, n) != 0) return d;
    if (n < 8) {
      d.need_more = true;
      return d;
    }
    d.matched = true;
    d.client_side = side;
    return d;
  }
  // Joined in the middle: whole frames from the first byte, one of them a known method.
  const long at = frames_at(first);
  if (at == -2) {
    d.need_more = true;
    return d;
  }
  if (at < 0) return d;
  const auto* p = first.data() + at;
  const AmqpMethodInfo* info = amqp_method(static_cast<uint16_t>(p[7] << 8 | p[8]), static_cast<uint16_t>(p[9] << 8 | p[10]));
  d.matched = true;
  const int sender = info ? amqp_sender(*info) : -1;
  d.client_side = sender < 0 ? -1 : sender == 0 ? side : 1 - side;
  return d;
}

std::unique_ptr<StreamSession> AmqpProtocol::open(SessionContext& ctx) const {
  return std::make_unique<AmqpSession>(ctx);
}

}  // namespace tapwire::proto

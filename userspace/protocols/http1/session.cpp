#include "http1/session.hpp"

#include <algorithm>

#include "body/body_text.hpp"

namespace tapwire::proto {
namespace {

// An empty parser buffer keeps its allocation for the next message, up to
// this; a larger one (left by one big header block) goes back.
constexpr size_t kKeepBufferCapacity = 16 << 10;

void clear_buffer(std::vector<uint8_t>& b) {
  b.clear();
  if (b.capacity() > kKeepBufferCapacity) release(b);
}

bool is_interim(const HttpMessage& m) { return !m.is_request && m.status >= 100 && m.status < 200 && m.status != 101; }

size_t queued_message_bytes(const HttpMessage& m) { return sizeof(m) + m.heap; }

uint32_t message_flags(const HttpMessage& m) {
  uint32_t f = 0;
  if (m.gap) f |= kFlagGap;
  if (m.body_truncated) f |= kFlagBodyTruncated;
  if (m.body_decode_error) f |= kFlagBodyDecodeError;
  if (m.upgrade) f |= kFlagUpgrade;
  if (m.incomplete) f |= kFlagIncomplete;
  if (m.memory_shed) f |= kFlagMemoryShed;
  return f;
}

bool header_has_token(const HttpMessage& m, std::string_view name, std::string_view token) {
  for (const Header& h : m.headers) {
    if (h.name != name) continue;
    std::string_view v = h.value;
    while (!v.empty()) {
      size_t comma = v.find(',');
      std::string_view e = v.substr(0, comma);
      while (!e.empty() && (e.front() == ' ' || e.front() == '\t')) e.remove_prefix(1);
      while (!e.empty() && (e.back() == ' ' || e.back() == '\t')) e.remove_suffix(1);
      e = e.substr(0, e.find('/'));
      if (e.size() == token.size() && std::equal(e.begin(), e.end(), token.begin(), [](char a, char b) {
            return (a | 0x20) == (b | 0x20);
          }))
        return true;
      if (comma == std::string_view::npos) break;
      v.remove_prefix(comma + 1);
    }
  }
  return false;
}

class Http1Session final : public StreamSession {
 public:
  explicit Http1Session(SessionContext& ctx)
      : ctx_(ctx),
        lim_(http_limits(ctx.limits())),
        requests_(Http1Parser::Side::Requests, lim_),
        responses_(Http1Parser::Side::Responses, lim_),
        counters_(ctx.counters(kHttp1)) {}

  void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts) override {
    if (next_) return next_->data(d, bytes, ts);
    const int role = dir_index(d);
    auto& parser = role == 0 ? requests_ : responses_;
    auto& buf = buf_[role];
    std::span<const uint8_t> in = bytes;
    if (!buf.empty()) {
      buf.insert(buf.end(), bytes.begin(), bytes.end());
      in = buf;
    }
    size_t used = 0;
    for (int guard = 0; guard < 100000 && used < in.size(); guard++) {
      ParseResult r = parser.feed(in.subspan(used), ts, out_);
      used += r.consumed;
      if (r.status == ParseStatus::Invalid) counters_.parse_errors++;
      if (!out_.empty()) take(role);
      if (next_ || r.status == ParseStatus::NeedMoreData || r.consumed == 0) break;
    }
    if (parser.switched_protocols() || next_) {  // WebSocket, h2c or a CONNECT tunnel: no more HTTP/1 here
      std::vector<uint8_t> rest;
      if (next_ && used < in.size()) rest.assign(in.begin() + static_cast<std::ptrdiff_t>(used), in.end());
      release(buf_[0]);
      release(buf_[1]);
      if (next_ && !rest.empty()) next_->data(d, rest, ts);
      return;
    }
    // Keep what the parser left for later; it never leaves more than an
    // incomplete header block, which its own cap bounds.
    if (used >= in.size()) {
      clear_buffer(buf);
    } else if (in.data() == buf.data()) {
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    } else {
      buf.assign(in.begin() + static_cast<std::ptrdiff_t>(used), in.end());
    }
    if (buf.size() > 2 * lim_.max_header_bytes + 65536) {  // defence in depth
      clear_buffer(buf);
      counters_.parse_errors++;
    }
  }

  void gap(Dir d, uint64_t len) override {
    if (next_) return next_->gap(d, len);
    const int role = dir_index(d);
    (role == 0 ? requests_ : responses_).on_gap(len);
    clear_buffer(buf_[role]);
    gap_pending_[role] = true;
  }

  // One direction ended: its message in progress, and a header block cut
  // short in the bytes not parsed yet, come out as incomplete messages.
  void end(Dir d, uint64_t ts) override {
    if (next_) return next_->end(d, ts);
    const int role = dir_index(d);
    (role == 0 ? requests_ : responses_).on_close(ts, out_, buf_[role]);
    release(buf_[role]);
    if (!out_.empty()) take(role);
  }

  void close(uint32_t why, uint64_t ts) override {
    if (why & kFlagMemoryShed) shed_pending_[0] = shed_pending_[1] = true;
    if (!next_) {
      end(Dir::ClientToServer, ts);
      end(Dir::ServerToClient, ts);
    }
    flush_early(UINT64_MAX);
    while (!pending_.empty()) {
      emit_pair(front_out(pending_), nullptr, why);
      pending_.pop_front();
    }
    if (next_) next_->close(why, ts);
  }

  void expire(uint64_t now) override {
    if (now > lim_timeout()) flush_early(now - lim_timeout());
    while (!pending_.empty() && pending_.front().ts_last_ns + lim_timeout() < now) {
      emit_pair(front_out(pending_), nullptr, kFlagTimeout);
      pending_.pop_front();
    }
    if (next_) next_->expire(now);
  }

  size_t memory_bytes() const override {
    size_t n = heap_bytes(sizeof(*this)) + 2 * kDequeFixed + vector_heap_bytes(buf_[0]) + vector_heap_bytes(buf_[1]) +
               requests_.memory_bytes() + responses_.memory_bytes() + vector_heap_bytes(out_) + queued_;
    if (next_) n += next_->memory_bytes();
    return n;
  }

  size_t buffered_bytes() const override {
    return buf_[0].size() + buf_[1].size() + (next_ ? next_->buffered_bytes() : 0);
  }

  size_t shed_bodies() override {
    size_t freed = 0;
    for (auto* q : {&pending_, &early_})
      for (HttpMessage& msg : *q) {
        const size_t b = string_heap_bytes(msg.body);
        if (!b) continue;
        std::string().swap(msg.body);
        msg.memory_shed = true;
        msg.body_truncated = msg.body_size > 0;
        msg.heap -= b;
        queued_ -= b;
        freed += b;
      }
    freed += requests_.shed_body() + responses_.shed_body();
    if (next_) freed += next_->shed_bodies();
    return freed;
  }

  size_t shed_buffers(uint64_t ts) override {
    size_t freed = 0;
    for (int role = 0; role < 2; role++) {
      auto& buf = buf_[role];
      if (!buf.capacity()) continue;
      freed += vector_heap_bytes(buf);
      if (!buf.empty()) {
        auto& parser = role == 0 ? requests_ : responses_;
        if (!parser.shed_partial(buf, ts, out_)) shed_pending_[role] = true;
      }
      release(buf);
      if (!out_.empty()) take(role);
    }
    if (next_) freed += next_->shed_buffers(ts);
    return freed ? freed : 0;
  }

  void mark_shed(Dir d) override {
    if (next_) return next_->mark_shed(d);
    shed_pending_[dir_index(d)] = true;
  }

 private:
  SessionContext& ctx_;
  HttpLimits lim_;
  Http1Parser requests_, responses_;
  ProtocolCounters& counters_;
  std::vector<uint8_t> buf_[2];  // unconsumed bytes: [0] requests, [1] responses
  std::deque<HttpMessage> pending_;
  // Responses that completed while no request was waiting: a server may
  // answer (413, 401, or 200 after 100-continue) before the request body
  // has all arrived. Paired with the next request that started before
  // them; orphans otherwise.
  std::deque<HttpMessage> early_;
  std::vector<HttpMessage> out_;
  size_t queued_ = 0;  // queued_message_bytes of pending_ and early_
  bool gap_pending_[2] = {false, false};  // a gap hit this direction: flag its next message
  bool shed_pending_[2] = {false, false};  // state of this direction was shed: flag its next message
  std::unique_ptr<StreamSession> next_;  // the protocol the connection upgraded to
  // Each method's counter, found once (a string-keyed lookup per call is a
  // measurable part of the per-call cost). Index 9: "OTHER".
  uint64_t* method_count_[10] = {};
  uint64_t* class_count_[6] = {};

  static HttpLimits http_limits(const DissectLimits& l) {
    HttpLimits h;
    h.max_header_bytes = l.max_header_bytes;
    h.max_body_kept = l.max_body_kept;
    h.max_headers = l.max_headers;
    h.max_pending = l.max_pending;
    return h;
  }
  uint64_t lim_timeout() const { return ctx_.limits().request_timeout_ns; }

  void count(const HttpMessage* req, const HttpMessage* resp) {
    if (req) {
      static const char* kMethods[] = {"GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "CONNECT", "TRACE"};
      size_t i = 0;
      while (i < 9 && req->method != kMethods[i]) i++;
      if (!method_count_[i]) method_count_[i] = &counters_.breakdowns["http_methods"][i < 9 ? kMethods[i] : "OTHER"];
      ++*method_count_[i];
    }
    int cls = resp ? resp->status / 100 : 0;
    if (cls < 1 || cls > 5) cls = 0;
    if (!class_count_[cls])
      class_count_[cls] = &counters_.breakdowns["http_status_class"][cls == 0 ? "none" : std::to_string(cls) + "xx"];
    ++*class_count_[cls];
  }

  void emit_pair(HttpMessage* req, HttpMessage* resp, uint32_t extra_flags) {
    count(req, resp);
    CallContent c;
    c.protocol = kHttp1;
    c.flags = extra_flags;
    if (req) {
      c.ts_ns = req->ts_first_ns;
      c.flags |= message_flags(*req);
      c.method = req->method;
      c.path = req->target;
    }
    if (resp) {
      if (!req) {
        c.ts_ns = resp->ts_first_ns;
        c.flags |= kFlagOrphanResponse;
      }
      c.end_ns = resp->ts_last_ns;
      c.flags |= message_flags(*resp);
      c.status = resp->status;
    }
    c.key_extra = ctx_.next_seq();
    // A 101 to a WebSocket or h2c upgrade: the connection goes on in that protocol.
    if (req && resp && resp->status == 101 && !next_) upgrade(*req, *resp, ctx_.key_of(c.ts_ns, c.key_extra));
    if (req) c.request = std::make_shared<HttpRecord>(std::move(*req));
    if (resp) c.response = std::make_shared<HttpRecord>(std::move(*resp));
    ctx_.emit(std::move(c));
  }

  void upgrade(const HttpMessage& req, const HttpMessage& resp, uint64_t key) {
    if (header_has_token(resp, "upgrade", "websocket") && ctx_.enabled("ws"))
      next_ = open_websocket_upgrade(ctx_, req, resp, key);
    else if (header_has_token(resp, "upgrade", "h2c") && ctx_.enabled("http2"))
      next_ = open_h2c_upgrade(ctx_, req, resp.ts_last_ns);
  }

  // The queues of messages waiting for their pair, with their bytes counted.
  void enqueue(std::deque<HttpMessage>& q, HttpMessage&& msg) {
    queued_ += queued_message_bytes(msg);
    q.push_back(std::move(msg));
  }
  // The front message, its bytes off the count: the caller uses it, then pops it.
  HttpMessage* front_out(std::deque<HttpMessage>& q) {
    queued_ -= queued_message_bytes(q.front());
    return &q.front();
  }

  void flush_early(uint64_t older_than) {
    while (!early_.empty() && early_.front().ts_last_ns < older_than) {
      emit_pair(nullptr, front_out(early_), 0);
      early_.pop_front();
    }
  }

  void take(int role) {
    for (auto& msg : out_) {
      // Complete: its body decoded (at most max_body_kept bytes of it, as
      // kept before) before it waits for its pair, counted as it is now.
      finish_body(msg, lim_.max_body_kept);
      if (gap_pending_[role]) {
        msg.gap = true;
        gap_pending_[role] = false;
      }
      if (shed_pending_[role]) {
        msg.memory_shed = true;
        shed_pending_[role] = false;
      }
      if (role == 0) {
        // Responses that came before this request was complete, oldest
        // first: those that began before it started answer nothing we saw.
        while (!early_.empty() && early_.front().ts_first_ns < msg.ts_first_ns) {
          emit_pair(nullptr, front_out(early_), 0);
          early_.pop_front();
        }
        if (!early_.empty() && pending_.empty()) {
          emit_pair(&msg, front_out(early_), 0);
          early_.pop_front();
          continue;
        }
        responses_.expect_response_to(msg.method);
        if (pending_.size() >= lim_.max_pending) {  // the oldest will never be answered in order
          emit_pair(front_out(pending_), nullptr, kFlagTimeout);
          pending_.pop_front();
        }
        enqueue(pending_, std::move(msg));
      } else if (is_interim(msg)) {
        continue;  // 100 Continue, 103 Early Hints: the final response follows
      } else if (!pending_.empty()) {
        emit_pair(front_out(pending_), &msg, 0);
        pending_.pop_front();
      } else {
        if (early_.size() >= lim_.max_pending) {
          emit_pair(nullptr, front_out(early_), 0);
          early_.pop_front();
        }
        enqueue(early_, std::move(msg));
      }
    }
    out_.clear();
  }
};

}  // namespace

void write_headers_json(JsonOut& out, const std::vector<Header>& hs) {
  out.begin_object();
  for (size_t i = 0; i < hs.size(); i++) {
    bool seen = false;
    for (size_t k = 0; k < i && !seen; k++) seen = hs[k].name == hs[i].name;
    if (seen) continue;  // joined into the first
    bool repeated = false;
    for (size_t k = i + 1; k < hs.size() && !repeated; k++) repeated = hs[k].name == hs[i].name;
    if (!repeated) {
      out.field(hs[i].name, hs[i].value);
      continue;
    }
    // Repeated fields join with ", " as RFC 9110 allows (Set-Cookie aside, good enough to read).
    std::string v = hs[i].value;
    for (size_t k = i + 1; k < hs.size(); k++)
      if (hs[k].name == hs[i].name) v += ", " + hs[k].value;
    out.field(hs[i].name, v);
  }
  out.end_object();
}

void write_body_fields(JsonOut& out, const std::string& body, bool binary, const std::string& content_encoding,
                       uint64_t decoded_size) {
  if (!body.empty()) {
    BodyText t = body_text(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size()), !binary);
    out.field("body", t.value);
    if (t.base64) out.field("body_encoding", "base64");
  }
  if (!content_encoding.empty()) {
    out.field("content_encoding", content_encoding);
    out.field("body_decoded_size", decoded_size);
  }
}

void HttpRecord::write_json(JsonOut& out) const {
  const HttpMessage& m = msg;
  out.begin_object();
  if (m.is_request) {
    out.field("method", m.method);
    out.field("path", m.target);
    out.field("version", m.version_minor == 0 ? "HTTP/1.0" : "HTTP/1.1");
  } else {
    out.field("status", m.status);
    out.field("reason", m.reason);
  }
  out.key("headers");
  write_headers_json(out, m.headers);
  out.field("body_size", m.body_size);
  write_body_fields(out, m.body, m.body_binary, m.content_encoding, m.body_decoded_size);
  out.end_object();
}

Detection Http1Protocol::detect(std::span<const uint8_t> first, int side, const FlowView&) const {
  Detection d;
  if (looks_like_http1_request(first)) {
    d.matched = true;
    d.client_side = side;
  } else if (looks_like_http1_response(first)) {
    d.matched = true;
    d.client_side = 1 - side;
  }
  return d;
}

std::unique_ptr<StreamSession> Http1Protocol::open(SessionContext& ctx) const {
  return std::make_unique<Http1Session>(ctx);
}

}  // namespace tapwire::proto

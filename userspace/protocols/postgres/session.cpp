#include "postgres/session.hpp"

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>

namespace tapwire::proto {
namespace {

constexpr size_t kMaxStatements = 128;  // named statements remembered per connection
constexpr size_t kMaxStatementQuery = 8192;  // query text kept per remembered statement
constexpr size_t kMaxPortals = 16;
constexpr size_t kMaxParams = 64;  // parameters kept per Bind
constexpr size_t kMaxParamText = 1024;  // bytes kept of a text parameter
constexpr size_t kMaxParamHex = 32;  // bytes of a binary parameter shown as hex
constexpr size_t kMaxStatementsKept = 64;  // CommandCompletes kept per call
constexpr size_t kMaxColumns = 64;
constexpr size_t kMaxName = 128;  // column names, statement and portal names
constexpr size_t kMaxStartupParams = 32;
constexpr size_t kMaxStartupValue = 256;
constexpr size_t kMaxErrorMessage = 1024;

uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

struct Body {
  std::span<const uint8_t> b;
  size_t p = 0;
  bool ok = true;
  size_t left() const { return p < b.size() ? b.size() - p : 0; }
  std::string_view cstr() {
    if (!left()) return ok = false, std::string_view();
    const uint8_t* s = b.data() + p;
    const void* z = std::memchr(s, 0, left());
    const size_t n = z ? static_cast<size_t>(static_cast<const uint8_t*>(z) - s) : left();
    if (!z) ok = false;
    p += z ? n + 1 : n;
    return {reinterpret_cast<const char*>(s), n};
  }
  int32_t i16() {
    if (left() < 2) return ok = false, 0;
    const int16_t v = static_cast<int16_t>((b[p] << 8) | b[p + 1]);
    p += 2;
    return v;
  }
  int64_t i32() {
    if (left() < 4) return ok = false, 0;
    const int32_t v = static_cast<int32_t>(be32(b.data() + p));
    p += 4;
    return v;
  }
  uint8_t u8() {
    if (!left()) return ok = false, 0;
    return b[p++];
  }
  std::span<const uint8_t> take(uint64_t n) {
    const size_t k = static_cast<size_t>(std::min<uint64_t>(n, left()));
    if (k < n) ok = false;
    auto s = b.subspan(p, k);
    p += k;
    return s;
  }
};

std::string hex(std::span<const uint8_t> b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  s.reserve(b.size() * 2);
  for (uint8_t c : b) {
    s.push_back(d[c >> 4]);
    s.push_back(d[c & 15]);
  }
  return s;
}

// The command counter's labels: a fixed set, whatever the wire says.
const char* verb_label(std::string_view v) {
  static const char* kVerbs[] = {
      "SELECT",  "INSERT",   "UPDATE",     "DELETE",    "COPY",     "BEGIN",        "COMMIT",     "ROLLBACK",
      "START",   "END",      "ABORT",      "SAVEPOINT", "RELEASE",  "CREATE",       "DROP",       "ALTER",
      "TRUNCATE", "WITH",    "SET",        "SHOW",      "RESET",    "VACUUM",       "ANALYZE",    "EXPLAIN",
      "PREPARE", "EXECUTE",  "DEALLOCATE", "DECLARE",   "FETCH",    "MOVE",         "CLOSE",      "LISTEN",
      "NOTIFY",  "UNLISTEN", "GRANT",      "REVOKE",    "LOCK",     "DO",           "CALL",       "MERGE",
      "VALUES",  "TABLE",    "DISCARD",    "REFRESH",   "CLUSTER",  "REINDEX",      "COMMENT",    "CHECKPOINT",
      "STARTUP", "CANCEL",   "SSLREQUEST", "GSSENCREQUEST", "FUNCTION_CALL"};
  for (const char* k : kVerbs)
    if (v == k) return k;
  return v.empty() ? "NONE" : "OTHER";
}

enum class Item : uint8_t { Startup, Ssl, Query, Function, Parse, Bind, Describe, Execute, Close, Sync, Lost };

struct PgCall {
  std::shared_ptr<PgRequest> req;  // null: a response whose request was not seen
  std::shared_ptr<PgResponse> resp;
  uint64_t ts = 0, end = 0;
  uint32_t flags = 0;
  int items = 0;  // messages of it the server has still to answer
  bool open = true;  // the client may still add messages to it
  bool emitted = false;
  bool has_parse = false, has_bind = false, has_execute = false;
};
using CallPtr = std::shared_ptr<PgCall>;

struct Pending {
  Item kind;
  CallPtr call;
};

class PostgresSession final : public StreamSession {
 public:
  explicit PostgresSession(SessionContext& ctx)
      : ctx_(ctx),
        counters_(ctx.counters(kPostgres)),
        max_kept_(ctx.limits().max_body_kept),
        reader_{PgReader(true, prefix_cap(ctx)), PgReader(false, prefix_cap(ctx))} {}

  void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts) override {
    if (stopped_) return;
    const int i = dir_index(d);
    auto& buf = buf_[i];
    const size_t old = buf.size();
    std::span<const uint8_t> in = bytes;
    if (!buf.empty()) {
      buf.insert(buf.end(), bytes.begin(), bytes.end());
      in = buf;
    }
    size_t used = 0;
    for (int guard = 0; guard < 1000000 && used < in.size() && !stopped_; guard++) {
      const uint64_t msg_ts = used < old ? buf_ts_[i] : ts;
      if (i == 1 && !items_.empty() && items_.front().kind == Item::Ssl && reader_[1].skipping() == 0 &&
          ssl_answer(in[used], msg_ts, ts)) {
        used++;
        continue;
      }
      PgFrame f;
      const ParseResult r = reader_[i].next(in.subspan(used), f);
      used += r.consumed;
      if (r.status == ParseStatus::Invalid) {
        counters_.parse_errors++;
        error_pending_[i] = true;
        // Joined inside a request: the server answers it, absorbed until its ReadyForQuery.
        if (i == 0 && !client_seen_) {
          client_seen_ = true;
          push(Item::Lost, nullptr);
        }
      } else if (r.status == ParseStatus::Done) {
        if (i == 0) client_seen_ = true;
        if (i == 0)
          client(f, msg_ts);
        else
          server(f, ts);
      }
      if (r.status == ParseStatus::NeedMoreData || r.consumed == 0) break;
    }
    if (stopped_) {
      release(buf_[0]);
      release(buf_[1]);
      return;
    }
    if (used >= in.size()) {
      buf.clear();
      if (buf.capacity() > (64u << 10)) release(buf);
    } else {
      if (used >= old) buf_ts_[i] = ts;  // what is left came in this piece
      if (in.data() == buf.data())
        buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
      else
        buf.assign(in.begin() + static_cast<std::ptrdiff_t>(used), in.end());
    }
  }

  void gap(Dir d, uint64_t len) override {
    (void)len;
    if (stopped_) return;
    const int i = dir_index(d);
    release(buf_[i]);
    reader_[i].lose_sync();
    gap_pending_[i] = true;
    if (i == 0) {
      // The requests lost get answers: absorbed until the next ReadyForQuery.
      close_group();
      push(Item::Lost, nullptr);
    } else {
      // Answers lost: what waits for them comes out, flagged.
      flush_all(kFlagGap);
      push(Item::Lost, nullptr);
    }
  }

  void end(Dir d, uint64_t ts) override {
    (void)d;
    (void)ts;
  }

  void close(uint32_t why, uint64_t ts) override {
    (void)ts;
    flush_all(why);
    release(buf_[0]);
    release(buf_[1]);
  }

  void expire(uint64_t now) override {
    const uint64_t t = ctx_.limits().request_timeout_ns;
    for (const CallPtr& c : calls_)
      if (!c->emitted && c->ts + t < now) emit(c, kFlagTimeout);
    trim_calls();
  }

  size_t memory_bytes() const override {
    size_t n = heap_bytes(sizeof(*this)) + vector_heap_bytes(buf_[0]) + vector_heap_bytes(buf_[1]) + 2 * kDequeFixed +
               items_.size() * sizeof(Pending) + calls_.size() * sizeof(CallPtr) + statement_bytes_;
    for (const CallPtr& c : calls_) n += call_bytes(*c);
    for (const auto& [k, r] : portals_) n += heap_bytes(64) + string_heap_bytes(k) + r->heap_bytes();
    return n;
  }
  size_t buffered_bytes() const override { return buf_[0].size() + buf_[1].size(); }

  size_t shed_bodies() override {
    size_t freed = statement_bytes_;
    statements_.clear();
    statement_bytes_ = 0;
    for (const CallPtr& c : calls_) {
      if (c->emitted || !c->req) continue;
      const size_t b = string_heap_bytes(c->req->query);
      if (!b) continue;
      std::string().swap(c->req->query);
      c->flags |= kFlagMemoryShed;
      freed += b;
    }
    for (auto& [k, r] : portals_) freed += r->heap_bytes();
    portals_.clear();
    return freed;
  }

  size_t shed_buffers(uint64_t ts) override {
    (void)ts;
    size_t freed = 0;
    for (int i = 0; i < 2; i++) {
      if (!buf_[i].capacity()) continue;
      freed += vector_heap_bytes(buf_[i]);
      if (!buf_[i].empty()) {
        reader_[i].lose_sync();
        shed_pending_[i] = true;
      }
      release(buf_[i]);
    }
    return freed;
  }

  void mark_shed(Dir d) override { shed_pending_[dir_index(d)] = true; }

 private:
  SessionContext& ctx_;
  ProtocolCounters& counters_;
  size_t max_kept_;
  PgReader reader_[2];
  std::vector<uint8_t> buf_[2];
  uint64_t buf_ts_[2] = {0, 0};  // when the first byte of buf_[i] came
  std::deque<Pending> items_;  // client messages the server has still to answer, in order
  std::deque<CallPtr> calls_;  // calls not emitted yet (and emitted ones behind the oldest waiting)
  CallPtr group_;  // the extended-protocol call the client is building (Parse, Bind, Describe)
  CallPtr copy_call_;  // the call whose COPY FROM STDIN data the client sends
  std::map<std::string, std::string> statements_;  // prepared statement name -> query
  size_t statement_bytes_ = 0;
  std::map<std::string, std::shared_ptr<PgRequest>> portals_;  // bound portal -> its request
  bool skipping_ = false;  // the server skips to the next Sync after an error
  bool stopped_ = false;  // encrypted from here on
  bool client_seen_ = false;  // a client message was read (or its first bytes skipped)
  bool gap_pending_[2] = {false, false};
  bool shed_pending_[2] = {false, false};
  bool error_pending_[2] = {false, false};
  std::map<const char*, uint64_t*> verb_count_;

  static size_t prefix_cap(SessionContext& ctx) {
    return std::min<size_t>(ctx.limits().max_body_kept, 1u << 20) + 1024;
  }

  size_t max_pending() const { return std::max<size_t>(ctx_.limits().max_pending, 1); }
  size_t max_items() const { return 4 * max_pending() + 16; }

  static size_t call_bytes(const PgCall& c) {
    if (c.emitted) return heap_bytes(sizeof(PgCall));
    return heap_bytes(sizeof(PgCall)) + (c.req ? c.req->heap_bytes() : 0) + (c.resp ? c.resp->heap_bytes() : 0);
  }

  // ---------------------------------------------------------------- calls

  CallPtr make_call(PgKind k, uint64_t ts) {
    auto c = std::make_shared<PgCall>();
    c->req = std::make_shared<PgRequest>();
    c->req->kind = k;
    c->ts = ts;
    take_pending(*c, 0);
    while (calls_.size() >= max_pending()) {  // the oldest will never be answered in time
      if (!calls_.front()->emitted) emit(calls_.front(), kFlagTimeout);
      calls_.pop_front();
    }
    calls_.push_back(c);
    return c;
  }

  void take_pending(PgCall& c, int i) {
    if (gap_pending_[i]) c.flags |= kFlagGap;
    if (shed_pending_[i]) c.flags |= kFlagMemoryShed;
    if (error_pending_[i]) c.flags |= kFlagProtocolError;
    gap_pending_[i] = shed_pending_[i] = error_pending_[i] = false;
  }

  void push(Item k, const CallPtr& c) {
    if (items_.size() >= max_items()) {
      // Far more unanswered messages than calls may wait: pairing is lost.
      flush_all(kFlagTimeout);
      items_.push_back({Item::Lost, nullptr});
    }
    items_.push_back({k, c});
    if (c) c->items++;
  }

  void close_group() {
    if (!group_) return;
    CallPtr g = std::move(group_);
    group_.reset();
    g->open = false;
    maybe_emit(g);
  }

  void maybe_emit(const CallPtr& c) {
    if (c && !c->emitted && !c->open && c->items <= 0) emit(c, 0);
  }

  // Mutable response of a call still waiting, else null.
  PgResponse* resp_of(const CallPtr& c) {
    if (!c || c->emitted) return nullptr;
    if (!c->resp) c->resp = std::make_shared<PgResponse>();
    return c->resp.get();
  }

  void emit(const CallPtr& c, uint32_t extra) {
    if (c->emitted) return;
    c->emitted = true;
    if (c == copy_call_) copy_call_.reset();
    if (c == group_) group_.reset();  // timed out or evicted while the client was still building it
    CallContent out;
    out.protocol = kPostgres;
    out.ts_ns = c->ts;
    out.flags = c->flags | extra;
    const PgRequest* rq = c->req.get();
    if (rq) {
      switch (rq->kind) {
        case PgKind::Startup:
          out.method = "STARTUP";
          for (const auto& [k, v] : rq->startup)
            if (k == "database") out.path = v;
          break;
        case PgKind::Ssl: out.method = "SSLREQUEST"; break;
        case PgKind::GssEnc: out.method = "GSSENCREQUEST"; break;
        case PgKind::Cancel: out.method = "CANCEL"; break;
        case PgKind::Function: out.method = "FUNCTION_CALL"; break;
        default:
          out.method = rq->query_known ? pg_sql_verb(rq->query) : "EXECUTE";
          out.path = pg_sql_table(rq->query);
          if (out.path.empty()) out.path = rq->statement;
          break;
      }
    } else {
      out.flags |= kFlagOrphanResponse;
    }
    if (c->resp) {
      out.end_ns = std::max(c->end, c->ts);
      out.status = c->resp->error.present ? 1 : 0;
      if (!rq) out.ts_ns = c->ts;
    }
    const char* label = verb_label(out.method);
    uint64_t*& n = verb_count_[label];
    if (!n) n = &counters_.breakdowns["postgres_commands"][label];
    ++*n;
    out.key_extra = ctx_.next_seq();
    out.request = c->req;
    out.response = c->resp;
    c->req.reset();
    c->resp.reset();
    ctx_.emit(std::move(out));
  }

  void trim_calls() {
    while (!calls_.empty() && calls_.front()->emitted) calls_.pop_front();
  }

  void flush_all(uint32_t why) {
    group_.reset();
    for (const CallPtr& c : calls_) emit(c, why);
    calls_.clear();
    items_.clear();
    copy_call_.reset();
    skipping_ = false;
  }

  // A client message's items end: the call comes out when all are answered.
  void pop_front_item(bool answered, uint64_t ts) {
    Pending p = std::move(items_.front());
    items_.pop_front();
    if (!p.call) return;
    p.call->items--;
    if (answered && !p.call->emitted) {
      p.call->end = ts;
      resp_of(p.call);
    }
    maybe_emit(p.call);
    trim_calls();
  }

  // ---------------------------------------------------------------- client

  void client(const PgFrame& f, uint64_t ts) {
    if (f.type == 0) return startup_form(f, ts);
    Body b{f.body};
    switch (f.type) {
      case 'Q': {
        close_group();
        CallPtr c = make_call(PgKind::Simple, ts);
        set_query(*c, b.cstr(), f.cut);
        c->open = false;
        push(Item::Query, c);
        break;
      }
      case 'P': {
        const std::string name(b.cstr().substr(0, kMaxName));
        const std::string_view q = b.cstr();
        remember_statement(name, q);
        if (group_ && (group_->has_parse || group_->has_bind)) close_group();
        if (!group_) group_ = make_call(PgKind::Prepare, ts);
        group_->has_parse = true;
        group_->req->statement = name;
        set_query(*group_, q, f.cut);
        push(Item::Parse, group_);
        break;
      }
      case 'B': bind(b, f.cut, ts); break;
      case 'D': push(Item::Describe, group_); break;
      case 'E': {
        const std::string portal(b.cstr().substr(0, kMaxName));
        CallPtr c;
        if (group_ && group_->has_bind && !group_->has_execute && group_->req->portal == portal) {
          c = group_;
        } else {
          close_group();
          c = make_call(PgKind::Extended, ts);
          auto it = portals_.find(portal);
          if (it != portals_.end()) {
            *c->req = *it->second;
          } else {
            c->req->query_known = false;
            c->req->portal = portal;
          }
        }
        c->has_execute = true;
        c->req->kind = PgKind::Extended;
        push(Item::Execute, c);
        if (group_ == c) group_.reset();
        c->open = false;
        break;
      }
      case 'C': {
        const uint8_t k = b.u8();
        const std::string name(b.cstr());
        if (k == 'S') forget_statement(name);
        if (k == 'P') portals_.erase(name);
        push(Item::Close, nullptr);
        break;
      }
      case 'S':
        close_group();
        push(Item::Sync, nullptr);
        break;
      case 'F': {
        close_group();
        CallPtr c = make_call(PgKind::Function, ts);
        c->open = false;
        push(Item::Function, c);
        break;
      }
      case 'd':
        if (copy_call_ && !copy_call_->emitted && copy_call_->req) {
          copy_call_->req->copy_messages++;
          copy_call_->req->copy_bytes += f.length - 4;
        }
        break;
      case 'c':
        if (copy_call_ && !copy_call_->emitted && copy_call_->req) copy_call_->req->copy_done = true;
        break;
      case 'f':
        if (copy_call_ && !copy_call_->emitted && copy_call_->req) {
          copy_call_->req->copy_failed = true;
          copy_call_->req->copy_fail = std::string(b.cstr().substr(0, kMaxErrorMessage));
        }
        break;
      default:
        break;  // 'p' (password, SASL: never read), 'H' flush, 'X' terminate
    }
  }

  void startup_form(const PgFrame& f, uint64_t ts) {
    close_group();
    if (f.code == kPgSslRequest || f.code == kPgGssEncRequest) {
      CallPtr c = make_call(f.code == kPgSslRequest ? PgKind::Ssl : PgKind::GssEnc, ts);
      c->open = false;
      push(Item::Ssl, c);
      return;
    }
    if (f.code == kPgCancelRequest) {
      CallPtr c = make_call(PgKind::Cancel, ts);
      c->open = false;
      if (f.body.size() >= 4) c->req->backend_pid = be32(f.body.data());  // the secret key is not kept
      emit(c, 0);
      trim_calls();
      return;
    }
    CallPtr c = make_call(PgKind::Startup, ts);
    c->open = false;
    c->req->version = f.code;
    Body b{f.body};
    for (int i = 0; i < 256 && b.left() > 1; i++) {
      const std::string_view k = b.cstr();
      const std::string_view v = b.cstr();
      if (k.empty() || !b.ok) break;
      std::string lower(k.substr(0, kMaxName));
      for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (lower.find("password") != std::string::npos) continue;
      if (c->req->startup.size() < kMaxStartupParams)
        c->req->startup.emplace_back(std::string(k.substr(0, kMaxName)), std::string(v.substr(0, kMaxStartupValue)));
    }
    push(Item::Startup, c);
  }

  void set_query(PgCall& c, std::string_view q, bool cut) {
    if (q.size() > max_kept_ || cut) c.flags |= kFlagTruncated;
    c.req->query.assign(q.substr(0, max_kept_));
    c.req->query_known = true;
  }

  void remember_statement(const std::string& name, std::string_view q) {
    forget_statement(name);
    while (!statements_.empty() && (statements_.size() >= kMaxStatements || statement_bytes_ > 256u * 1024)) {
      auto it = statements_.begin();
      forget_statement(std::string(it->first));
    }
    auto [it, _] = statements_.emplace(name, std::string(q.substr(0, std::min(kMaxStatementQuery, max_kept_))));
    statement_bytes_ += statement_node_bytes(it->first, it->second);
  }

  static size_t statement_node_bytes(const std::string& k, const std::string& v) {
    return heap_bytes(32 + 2 * sizeof(std::string)) + string_heap_bytes(k) + string_heap_bytes(v);
  }

  void forget_statement(const std::string& name) {
    auto it = statements_.find(name);
    if (it == statements_.end()) return;
    statement_bytes_ -= statement_node_bytes(it->first, it->second);
    statements_.erase(it);
  }

  void bind(Body& b, bool cut, uint64_t ts) {
    const std::string portal(b.cstr().substr(0, kMaxName));
    const std::string stmt(b.cstr().substr(0, kMaxName));
    CallPtr c;
    if (group_ && group_->has_parse && !group_->has_bind && group_->req->statement == stmt) {
      c = group_;
    } else {
      close_group();
      c = group_ = make_call(PgKind::Extended, ts);
      c->req->statement = stmt;
      auto it = statements_.find(stmt);
      if (it != statements_.end()) {
        c->req->query = it->second;
        if (it->second.size() >= kMaxStatementQuery) c->flags |= kFlagTruncated;
      } else {
        c->req->query_known = false;
      }
    }
    c->has_bind = true;
    PgRequest& r = *c->req;
    r.kind = PgKind::Extended;
    r.portal = portal;
    // Parameter formats: none (all text), one (for all) or one each.
    const int32_t nfmt = b.i16();
    std::vector<uint8_t> fmts;
    for (int32_t i = 0; i < nfmt && b.ok; i++) {
      const int32_t v = b.i16();
      if (fmts.size() < kMaxParams) fmts.push_back(v == 1);
    }
    const int32_t n = b.i16();
    r.param_count = n > 0 ? static_cast<uint32_t>(n) : 0;
    size_t kept = 0;
    for (int32_t i = 0; i < n && b.ok; i++) {
      const int64_t len = b.i32();
      if (!b.ok) break;
      auto v = len > 0 ? b.take(static_cast<uint64_t>(len)) : std::span<const uint8_t>();
      if (r.params.size() >= kMaxParams || kept >= max_kept_) {
        c->flags |= kFlagTruncated;
        continue;
      }
      PgParam p;
      p.size = len > 0 ? static_cast<uint32_t>(len) : 0;
      const bool binary = nfmt == 1 ? (!fmts.empty() && fmts[0]) : (i < static_cast<int32_t>(fmts.size()) && fmts[i]);
      if (len < 0) {
        p.kind = PgParam::Null;
      } else if (binary) {
        p.kind = PgParam::Binary;
        p.value = hex(v.first(std::min(v.size(), kMaxParamHex)));
      } else {
        p.kind = PgParam::Text;
        const size_t k = std::min({v.size(), kMaxParamText, max_kept_ - kept});
        p.value.assign(reinterpret_cast<const char*>(v.data()), k);
        if (k < static_cast<uint64_t>(len)) c->flags |= kFlagTruncated;
      }
      kept += p.value.size();
      r.params.push_back(std::move(p));
    }
    if (!b.ok && cut) c->flags |= kFlagTruncated;
    // The portal's request, for an Execute of it later (a copy: the call goes on).
    portals_.erase(portal);
    if (portals_.size() >= kMaxPortals) portals_.erase(portals_.begin());
    portals_.emplace(portal, std::make_shared<PgRequest>(r));
    push(Item::Bind, c);
  }

  // ---------------------------------------------------------------- server

  // The one-byte answer to SSLRequest/GSSENCRequest; false: not one (an old
  // server's ErrorResponse), parsed as a message.
  bool ssl_answer(uint8_t b, uint64_t msg_ts, uint64_t ts) {
    (void)msg_ts;
    CallPtr c = items_.front().call;
    if (b != 'N' && b != 'S' && b != 'G') {
      if (c) c->flags |= kFlagProtocolError;
      pop_front_item(false, ts);
      return false;
    }
    if (PgResponse* r = resp_of(c)) r->ssl_answer = static_cast<char>(b);
    if (b != 'N' && c) c->flags |= kFlagUpgrade;
    pop_front_item(true, ts);
    if (b != 'N') {
      stopped_ = true;  // TLS or GSSAPI encryption: nothing more to read
      flush_all(0);
    }
    return true;
  }

  void server(const PgFrame& f, uint64_t ts) {
    const char t = f.type;
    Body b{f.body};
    if (t == 'A') return;  // NotificationResponse: asynchronous
    Pending* front = items_.empty() ? nullptr : &items_.front();
    if (t == 'N') {  // NoticeResponse: asynchronous
      if (front)
        if (PgResponse* r = resp_of(front->call)) r->notices++;
      return;
    }
    if (t == 'S' && !(front && front->kind == Item::Startup)) return;  // ParameterStatus: asynchronous
    if (skipping_) {
      // After an error the server skips to the Sync: the messages in between have no answer.
      while (!items_.empty() && items_.front().kind != Item::Sync) pop_front_item(false, ts);
      front = items_.empty() ? nullptr : &items_.front();
      if (t != 'Z') return;
    }
    if (!front) {
      if (t == 'R' || t == 'K' || t == 'v') return;
      // An answer to a request never seen (joined mid-connection): one
      // call without request up to the next ReadyForQuery.
      auto c = std::make_shared<PgCall>();
      c->ts = ts;
      take_pending(*c, 1);
      c->open = false;
      if (calls_.size() >= max_pending()) {
        if (!calls_.front()->emitted) emit(calls_.front(), kFlagTimeout);
        calls_.pop_front();
      }
      calls_.push_back(c);
      push(Item::Lost, c);
      front = &items_.front();
      if (t == 'Z') {
        resp_of(c)->transaction_status = b.left() ? static_cast<char>(b.u8()) : 0;
        pop_front_item(true, ts);
        return;
      }
    }
    CallPtr call = front->call;
    if (call) take_pending(*call, 1);
    const Item k = front->kind;
    PgResponse* r = resp_of(call);
    switch (t) {
      case 'R':
        if (k == Item::Startup && r && r->authentication.size() < 8) r->authentication.push_back(auth_name(b));
        return;
      case 'K':
        if (k == Item::Startup && r && f.body.size() >= 4) {
          r->backend_pid = be32(f.body.data());  // the secret key is not kept
          r->has_backend_pid = true;
        }
        return;
      case 'S':
        if (r && r->parameters.size() < kMaxStartupParams) {
          const std::string_view name = b.cstr(), value = b.cstr();
          r->parameters.emplace_back(std::string(name.substr(0, kMaxName)),
                                     std::string(value.substr(0, kMaxStartupValue)));
        }
        return;
      case 'v':
        return;
      case 'Z': {
        const char st = b.left() ? static_cast<char>(b.u8()) : 0;
        skipping_ = false;
        // Everything up to the Sync, Query or startup it answers ends here.
        size_t end = 0;
        while (end < items_.size() && !ends_at_ready(items_[end].kind)) end++;
        if (end == items_.size()) return;  // none waits: nothing to end
        for (size_t i = 0; i < end; i++) pop_front_item(false, ts);
        if (PgResponse* rr = resp_of(items_.front().call)) rr->transaction_status = st;
        pop_front_item(true, ts);
        return;
      }
      case 'E': {
        const PgError e = pg_parse_error(f.body, kMaxErrorMessage);
        if (k == Item::Startup) {
          if (r) r->error = e;
          pop_front_item(true, ts);
          return;
        }
        if (ends_at_ready(k) || k == Item::Sync) {
          if (r && !r->error.present) r->error = e;
          return;
        }
        // Extended protocol: the error belongs to this message's call (or
        // the next one before the Sync); the server skips to the Sync.
        CallPtr target = call;
        for (size_t i = 0; !target && i < items_.size() && items_[i].kind != Item::Sync; i++) target = items_[i].call;
        if (PgResponse* tr = resp_of(target)) {
          if (!tr->error.present) tr->error = e;
          target->end = ts;
        }
        while (!items_.empty() && items_.front().kind != Item::Sync) pop_front_item(false, ts);
        skipping_ = items_.empty();
        return;
      }
      case '1': return answer(Item::Parse, ts);
      case '2': return answer(Item::Bind, ts);
      case '3': return answer(Item::Close, ts);
      case 't': return;
      case 'T':
        if (r && (k == Item::Describe || k == Item::Query || k == Item::Lost || k == Item::Execute)) {
          r->columns.clear();
          const int32_t n = b.i16();
          r->column_count = n > 0 ? static_cast<uint32_t>(n) : 0;
          for (int32_t i = 0; i < n && b.ok && r->columns.size() < kMaxColumns; i++) {
            r->columns.emplace_back(b.cstr().substr(0, kMaxName));
            b.take(18);
          }
        }
        if (k == Item::Describe) pop_front_item(true, ts);
        return;
      case 'n':
        if (k == Item::Describe) pop_front_item(true, ts);
        return;
      case 'D':
        if (r) {
          r->rows++;
          r->rows_current++;
        }
        return;
      case 'C':
      case 'I':
        if (r) {
          if (t == 'I') r->empty_query = true;
          r->statement_count++;
          if (t == 'C' && r->statements.size() < kMaxStatementsKept)
            r->statements.push_back({std::string(b.cstr().substr(0, kMaxName)), r->rows_current});
          r->rows_current = 0;
        }
        if (k == Item::Execute) pop_front_item(true, ts);
        return;
      case 's':
        if (r) r->suspended = true;
        if (k == Item::Execute) pop_front_item(true, ts);
        return;
      case 'G':
      case 'H':
      case 'W':
        if (r) r->copy = t == 'G' ? 'i' : t == 'H' ? 'o' : 'b';
        if (t != 'H' && call && call->req) copy_call_ = call;  // an orphan has no request to count in
        return;
      case 'd':
        if (r) {
          r->copy_messages++;
          r->copy_bytes += f.length - 4;
        }
        return;
      case 'c':
        return;
      case 'V':
        return;
      default:
        return;
    }
  }

  static bool ends_at_ready(Item k) {
    return k == Item::Query || k == Item::Function || k == Item::Sync || k == Item::Startup || k == Item::Lost;
  }

  // ParseComplete, BindComplete, CloseComplete: the first such message
  // waiting (a few skipped ones that got no answer, when pairing slipped).
  void answer(Item kind, uint64_t ts) {
    size_t i = 0;
    while (i < items_.size() && i < 8 && items_[i].kind != kind) {
      if (ends_at_ready(items_[i].kind)) return;  // not before its ReadyForQuery
      i++;
    }
    if (i >= items_.size() || items_[i].kind != kind) {
      counters_.parse_errors++;
      return;
    }
    for (size_t j = 0; j < i; j++) pop_front_item(false, ts);
    pop_front_item(true, ts);
  }

  static std::string auth_name(Body& b) {
    const int64_t code = b.i32();
    switch (code) {
      case 0: return "ok";
      case 2: return "kerberos_v5";
      case 3: return "cleartext_password";
      case 5: return "md5_password";
      case 7: return "gss";
      case 8: return "gss_continue";
      case 9: return "sspi";
      case 10: {
        std::string s = "sasl";
        std::string_view m = b.cstr();
        if (!m.empty()) s += ":" + std::string(m.substr(0, 32));
        return s;
      }
      case 11: return "sasl_continue";
      case 12: return "sasl_final";
      default: return "code_" + std::to_string(code);
    }
  }
};

}  // namespace

Detection PostgresProtocol::detect(std::span<const uint8_t> first, int side, const FlowView&) const {
  Detection d;
  if (first.empty()) return d;
  if (first[0] == 0) {  // the client's first message: startup, SSLRequest, GSSENCRequest or CancelRequest
    const int r = pg_startup_plausible(first);
    if (r > 0) {
      d.matched = true;
      d.client_side = side;
    } else if (r == 0) {
      d.need_more = true;
    }
    return d;
  }
  // Joined mid-connection (or the server's first words): whole messages in a row.
  for (bool client : {true, false}) {
    const int r = pg_typed_plausible(first, client, true);
    if (r > 0) {
      d.matched = true;
      d.client_side = client ? side : 1 - side;
      return d;
    }
    if (r == 0) d.need_more = true;
  }
  if (first.size() >= 4096) d.need_more = false;
  return d;
}

std::unique_ptr<StreamSession> PostgresProtocol::open(SessionContext& ctx) const {
  return std::make_unique<PostgresSession>(ctx);
}

}  // namespace tapwire::proto

#include "mysql/session.hpp"

#include <deque>
#include <map>

#include "mysql/mysql.hpp"

namespace tapwire::proto {
namespace {

using namespace mysql;

constexpr size_t kServerKeep = 1024;  // bytes kept of a server packet: OK/ERR/greeting fit
constexpr size_t kMaxMessage = 512;  // an error message or info string kept
constexpr size_t kMaxStatements = 128;  // prepared statements remembered per connection
constexpr size_t kMaxStatementBytes = 256 << 10;  // their texts, all together
constexpr size_t kHold = 68;  // bytes looked at to resynchronise

size_t content_bytes(const CallContent& c) { return sizeof(CallContent) + content_heap_bytes(c); }

bool is_eof(const Packet& p) { return !p.data.empty() && static_cast<uint8_t>(p.data[0]) == 0xfe && p.length < 9; }

class MysqlSession final : public StreamSession {
 public:
  explicit MysqlSession(SessionContext& ctx)
      : ctx_(ctx),
        counters_(ctx.counters(kMysql)),
        readers_{PacketReader(ctx.limits().max_body_kept + 16), PacketReader(kServerKeep)} {}

  void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts) override {
    const int i = dir_index(d);
    if (phase_ == Phase::Tls || bytes.empty()) return;
    if (resync_[i]) {
      resync(i, bytes, ts);
      return;
    }
    feed(i, bytes, ts);
  }

  void gap(Dir d, uint64_t) override {
    const int i = dir_index(d);
    if (phase_ == Phase::Tls) return;
    readers_[i].reset();
    gap_pending_[i] = true;
    hold_[i].clear();
    if (phase_ == Phase::Start || phase_ == Phase::Handshake) {
      if (hs_) finish_handshake(kFlagGap);
      phase_ = Phase::Command;
    }
    resync_[i] = true;
    if (i == 1) {
      // The answer in progress is lost: what waits comes out now.
      armed_ = false;
      while (!pending_.empty()) pop_front(kFlagGap);
    }
  }

  void end(Dir, uint64_t) override {}

  void close(uint32_t why, uint64_t) override {
    if (why & kFlagMemoryShed) shed_pending_[0] = shed_pending_[1] = true;
    if (hs_) finish_handshake(why);
    while (!pending_.empty()) pop_front(why);
  }

  void expire(uint64_t now) override {
    const uint64_t t = ctx_.limits().request_timeout_ns;
    if (hs_ && hs_->ts_ns + t < now && hs_last_ + t < now) finish_handshake(kFlagTimeout);
    while (!pending_.empty() && pending_.front().call.ts_ns + t < now && pending_.front().ts_last + t < now)
      pop_front(kFlagTimeout);
  }

  size_t memory_bytes() const override {
    size_t n = heap_bytes(sizeof(*this)) + kDequeFixed + readers_[0].memory_bytes() + readers_[1].memory_bytes() +
               queued_ + statement_bytes_ + vector_heap_bytes(hold_[0]) + vector_heap_bytes(hold_[1]);
    n += statements_.size() * heap_bytes(sizeof(void*) * 4 + sizeof(std::pair<const uint32_t, Statement>));
    if (resp_) n += resp_->heap_bytes();
    if (hs_) n += content_bytes(*hs_);
    if (hs_resp_) n += hs_resp_->heap_bytes();
    return n;
  }
  size_t buffered_bytes() const override { return hold_[0].size() + hold_[1].size(); }

  size_t shed_bodies() override {
    size_t freed = 0;
    for (Pending& p : pending_) {
      if (!p.call.request) continue;
      const size_t b = p.call.request->shed_body();
      if (!b) continue;
      p.call.flags |= kFlagMemoryShed | kFlagTruncated;
      queued_ -= b;
      freed += b;
    }
    freed += statement_bytes_;
    statements_.clear();
    statement_bytes_ = 0;
    return freed;
  }

  size_t shed_buffers(uint64_t) override {
    size_t freed = 0;
    for (int i = 0; i < 2; i++) {
      freed += readers_[i].shed();
      freed += vector_heap_bytes(hold_[i]);
      release(hold_[i]);
    }
    return freed;
  }

  void mark_shed(Dir d) override { shed_pending_[dir_index(d)] = true; }

 private:
  enum class Phase : uint8_t { Start, Handshake, Command, Tls };
  enum class RState : uint8_t {
    First,  // the start of an answer, or of the next result of a multi-result one
    ColumnDefs,
    ColumnEof,
    Rows,
    PrepParams,
    PrepParamsEof,
    PrepCols,
    PrepColsEof,
    FieldList,
  };
  enum class Step : uint8_t { More, Done, Again };  // Again: done, and the packet is the next answer's
  struct Pending {
    CallContent call;
    uint8_t cmd = 0;
    uint64_t ts_last = 0;
  };
  struct Statement {
    std::string text;
    uint64_t size = 0;
    uint64_t order = 0;
  };

  SessionContext& ctx_;
  ProtocolCounters& counters_;
  PacketReader readers_[2];  // [0] the client's, [1] the server's
  Phase phase_ = Phase::Start;
  // The connection's capabilities (the client's answer, within the server's).
  uint32_t server_caps_ = 0;
  uint32_t caps_ = 0;
  bool metadata_optional_ = false;
  int deprecate_eof_ = -1;  // -1: not known (joined mid-connection), learnt from the first result set
  bool compress_ = false;
  bool binlog_ = false;  // a replication stream follows: server packets without a command are its events
  // The handshake call in progress.
  std::unique_ptr<CallContent> hs_;
  uint64_t hs_last_ = 0;
  bool hs_response_seen_ = false;
  // Commands waiting for their answer, in order, and the answer in progress.
  std::deque<Pending> pending_;
  size_t queued_ = 0;
  std::unique_ptr<MysqlResponse> resp_;
  RState rstate_ = RState::First;
  uint64_t cols_left_ = 0, params_left_ = 0;
  std::map<uint32_t, Statement> statements_;
  size_t statement_bytes_ = 0;
  uint64_t statement_order_ = 0;
  uint32_t last_prepared_ = 0;
  bool have_last_prepared_ = false;
  // Resynchronisation after a gap or joining mid-connection.
  bool resync_[2] = {false, false};
  bool armed_ = false;  // the server's: a command came since, its answer may start the next bytes
  std::vector<uint8_t> hold_[2];
  bool gap_pending_[2] = {false, false};
  bool fail_counted_[2] = {false, false};
  bool shed_pending_[2] = {false, false};
  uint64_t* command_count_[256] = {};

  void feed(int i, std::span<const uint8_t> in, uint64_t ts) {
    Packet p;
    for (int guard = 0; guard < (1 << 22); guard++) {
      bool got = false;
      const size_t n = readers_[i].feed(in, ts, p, got);
      in = in.subspan(std::min(n, in.size()));
      if (got) {
        if (i == 0)
          client_packet(p);
        else
          server_packet(p, 0);
        if (phase_ == Phase::Tls || resync_[i]) return;
        continue;
      }
      if (in.empty() || n == 0) break;
    }
    if (readers_[i].failed() && !fail_counted_[i]) {  // a compressed packet that did not inflate
      fail_counted_[i] = true;
      counters_.parse_errors++;
      if (!pending_.empty()) pending_.front().call.flags |= kFlagProtocolError;
    }
  }

  // Bytes after a gap (or joining): looks for a packet start at the start of
  // a chunk (TCP segments carry whole MySQL writes), holding the first bytes
  // of a chunk until there are enough to tell.
  void resync(int i, std::span<const uint8_t> bytes, uint64_t ts) {
    if (readers_[i].failed()) return;
    if (i == 1 && !armed_) return;  // no command since: these bytes answer what we lost
    auto& h = hold_[i];
    size_t used = 0;
    for (;;) {
      size_t want = 5;
      if (i == 0 && h.size() >= 4) {
        const uint32_t len = h[0] | (uint32_t{h[1]} << 8) | (uint32_t{h[2]} << 16);
        want = 4 + std::min<size_t>(std::max<uint32_t>(len, 1), kHold - 4);
      }
      if (h.size() >= want) break;
      if (used == bytes.size()) {
        if (h.size() < 5) return;  // the next bytes go on with this start
        break;  // judged on what this chunk had
      }
      const size_t take = std::min(want - h.size(), bytes.size() - used);
      h.insert(h.end(), bytes.begin() + static_cast<std::ptrdiff_t>(used),
               bytes.begin() + static_cast<std::ptrdiff_t>(used + take));
      used += take;
    }
    bool ok;
    if (i == 0) {
      ok = looks_like_command_start(h);
    } else {
      // The first packet of an answer: sequence id 1; OK, ERR, LOCAL INFILE, EOF or a column count.
      const uint32_t len = h[0] | (uint32_t{h[1]} << 8) | (uint32_t{h[2]} << 16);
      const uint8_t b = h[4];
      ok = h[3] == 1 && !pending_.empty() &&
           ((b == 0x00 && len >= 7 && len < 64) || (b == 0xff && len >= 3 && len < 1024) || (b == 0xfb && len < 4096) ||
            (b == 0xfe && len < 9) || (b >= 1 && b <= 250 && len <= 2) || (b == 0xfc && len >= 3 && len <= 4));
    }
    if (!ok) {  // not a start: drop this chunk, try the next
      h.clear();
      return;
    }
    resync_[i] = false;
    if (i == 1) armed_ = false;
    std::vector<uint8_t> held;
    held.swap(h);
    feed(i, held, ts);
    if (!resync_[i] && phase_ != Phase::Tls && used < bytes.size()) feed(i, bytes.subspan(used), ts);
  }

  uint32_t take_flags(int i, const Packet& p) {
    uint32_t f = 0;
    if (gap_pending_[i]) f |= kFlagGap;
    if (shed_pending_[i] || p.shed) f |= kFlagMemoryShed;
    gap_pending_[i] = shed_pending_[i] = false;
    return f;
  }

  // ----------------------------------------------------------- handshake --

  void start_handshake(const Packet& p, const Greeting* g) {
    hs_ = std::make_unique<CallContent>();
    hs_->protocol = kMysql;
    hs_->ts_ns = p.ts_first;
    hs_->method = "connect";
    hs_->key_extra = ctx_.next_seq();
    hs_->flags |= take_flags(1, p);
    hs_last_ = p.ts_last;
    auto req = std::make_shared<MysqlRequest>();
    req->command = "connect";
    hs_->request = req;
    auto resp = std::make_unique<MysqlResponse>();
    resp->connect = true;
    if (g) {
      resp->server_version = g->server_version;
      resp->connection_id = g->connection_id;
      resp->has_connection_id = true;
      server_caps_ = g->capabilities;
    }
    resp_.reset();
    hs_resp_ = std::move(resp);
  }
  std::unique_ptr<MysqlResponse> hs_resp_;

  void finish_handshake(uint32_t flags, bool answered = false) {
    if (!hs_) return;
    if (phase_ == Phase::Start || phase_ == Phase::Handshake) phase_ = Phase::Command;  // timed out, cut, or done
    CallContent c = std::move(*hs_);
    hs_.reset();
    c.flags |= flags;
    if (answered && hs_resp_) {
      c.status = hs_resp_->has_error ? hs_resp_->error_code : 0;
      c.end_ns = hs_last_;
      c.response = std::shared_ptr<MysqlResponse>(std::move(hs_resp_));
    }
    hs_resp_.reset();
    count("connect");
    ctx_.emit(std::move(c));
  }

  void handshake_client(const Packet& p) {
    if (!hs_ || !hs_resp_) return;
    auto* req = static_cast<MysqlRequest*>(hs_->request.get());
    if (hs_response_seen_) return;  // auth data: never kept
    HandshakeResponse r;
    if (!parse_handshake_response(p.data, r)) {
      hs_->flags |= kFlagProtocolError;
      counters_.parse_errors++;
      hs_response_seen_ = true;
      return;
    }
    hs_response_seen_ = true;
    caps_ = server_caps_ ? (r.capabilities & server_caps_) : r.capabilities;
    req->user = r.user;
    req->database = r.database;
    req->auth_plugin = r.auth_plugin;
    req->compress = (caps_ & kClientCompress) != 0;
    hs_->path = r.database;
    hs_last_ = p.ts_last;
    deprecate_eof_ = (caps_ & kClientDeprecateEof) ? 1 : 0;
    metadata_optional_ = (caps_ & kClientOptionalResultsetMetadata) || (r.mariadb_capabilities & kMariadbCacheMetadata);
    if (r.ssl_request) {
      // TLS from here on: nothing more to read.
      req->tls = true;
      hs_resp_->tls = true;
      phase_ = Phase::Tls;
      finish_handshake(0, true);
      readers_[0].reset();
      readers_[1].reset();
      release(hold_[0]);
      release(hold_[1]);
    }
  }

  void handshake_server(const Packet& p) {
    if (!hs_ || !hs_resp_) return;
    const uint8_t b = p.data.empty() ? 0 : static_cast<uint8_t>(p.data[0]);
    hs_last_ = p.ts_last;
    if (!hs_response_seen_) return;
    if (b == 0x00) {
      OkPacket ok;
      parse_ok(p.data, ok, kMaxMessage);
      hs_resp_->has_ok = true;
      phase_ = Phase::Command;
      compress_ = (caps_ & kClientCompress) != 0;
      finish_handshake(0, true);
      if (compress_) {
        readers_[0].set_compressed();
        readers_[1].set_compressed();
      }
    } else if (b == 0xff) {
      ErrPacket e;
      parse_err(p.data, e, kMaxMessage);
      hs_resp_->has_error = true;
      hs_resp_->error_code = e.code;
      hs_resp_->sqlstate = e.sqlstate;
      hs_resp_->error_message = e.message;
      phase_ = Phase::Command;
      finish_handshake(0, true);
    } else if (b == 0xfe) {  // AuthSwitchRequest: the plugin the server wants
      Cursor c(std::string_view(p.data).substr(1));
      std::string_view plugin;
      if (!c.nul_string(plugin)) plugin = c.rest();
      hs_resp_->auth_switch.assign(plugin.substr(0, 64));
    }
    // 0x01: AuthMoreData (caching_sha2_password's fast path, a public key): nothing to keep.
  }

  // ------------------------------------------------------------- commands --

  void count(const char* name, uint8_t cmd = 0xff) {
    if (cmd == 0xff) {
      counters_.breakdowns["mysql_commands"][name]++;
      return;
    }
    if (!command_count_[cmd]) command_count_[cmd] = &counters_.breakdowns["mysql_commands"][name];
    ++*command_count_[cmd];
  }

  void client_packet(const Packet& p) {
    if (phase_ == Phase::Start) {
      if (p.seq == 0 && !p.data.empty() && command_name(static_cast<uint8_t>(p.data[0]))) {
        // Joined mid-connection: the server's bytes held so far answer
        // something before this command; its answer starts a later chunk.
        phase_ = Phase::Command;
        resync_[1] = true;
        readers_[1].reset();
      } else {
        return;
      }
    }
    if (phase_ == Phase::Handshake) {
      if (p.seq != 0) return handshake_client(p);
      // A command: the handshake's end was missed.
      finish_handshake(kFlagIncomplete);
      phase_ = Phase::Command;
    }
    if (p.seq != 0 || p.data.empty()) return;  // LOCAL INFILE contents, auth data of COM_CHANGE_USER
    const uint8_t cmd = static_cast<uint8_t>(p.data[0]);
    const char* name = command_name(cmd);
    if (!name) {
      counters_.parse_errors++;
      return;
    }
    command(p, cmd, name);
  }

  void command(const Packet& p, uint8_t cmd, const char* name) {
    CallContent c;
    c.protocol = kMysql;
    c.ts_ns = p.ts_first;
    c.key_extra = ctx_.next_seq();
    c.flags |= take_flags(0, p);
    auto req = std::make_shared<MysqlRequest>();
    req->command = name;
    c.method = name;
    const std::string_view body = std::string_view(p.data).substr(1);
    switch (cmd) {
      case kComQuery:
      case kComStmtPrepare: {
        size_t skip = 0;
        if (cmd == kComQuery && (caps_ & kClientQueryAttributes)) {
          // Query attributes: a parameter count and a set count first; with
          // parameters, their types and values too (not read: the text is lost).
          Cursor cur(body);
          uint64_t nparams = 0, nsets = 0;
          if (cur.lenenc(nparams) && cur.lenenc(nsets) && nparams == 0) skip = body.size() - cur.left();
          else skip = body.size();
        }
        req->has_query = true;
        const size_t keep = ctx_.limits().max_body_kept;
        req->query.assign(body.substr(std::min(skip, body.size()), keep));
        req->query_size = p.length - 1 - std::min<uint64_t>(skip, p.length - 1);
        if (p.truncated() || req->query_size > keep) {
          c.flags |= kFlagTruncated;
        } else {
          // Some clients (mysqlslap) send the C string's NUL too: not part of the text.
          while (!req->query.empty() && req->query.back() == '\0') {
            req->query.pop_back();
            req->query_size--;
          }
        }
        if (cmd == kComQuery) {
          const std::string verb = sql_verb(req->query);
          if (!verb.empty()) c.method = verb;
        }
        break;
      }
      case kComStmtExecute:
      case kComStmtClose:
      case kComStmtReset:
      case kComStmtFetch:
      case kComStmtSendLongData: {
        Cursor cur(body);
        uint32_t id = 0;
        if (!cur.u32(id)) {
          c.flags |= kFlagProtocolError;
          break;
        }
        if (id == 0xffffffff && have_last_prepared_) id = last_prepared_;  // MariaDB: the last one prepared
        req->has_statement_id = true;
        req->statement_id = id;
        c.path = std::to_string(id);
        auto it = statements_.find(id);
        if (it != statements_.end() && cmd == kComStmtExecute) {
          req->has_query = true;
          req->query = it->second.text;
          req->query_size = it->second.size;
          const std::string verb = sql_verb(req->query);
          if (!verb.empty()) c.method = verb;
        }
        if (cmd == kComStmtClose && it != statements_.end()) {
          statement_bytes_ -= string_heap_bytes(it->second.text);
          statements_.erase(it);
        }
        break;
      }
      case kComInitDb:
      case kComCreateDb:
      case kComDropDb:
        req->database.assign(body.substr(0, 256));
        c.path = req->database;
        break;
      case kComFieldList: {
        Cursor cur(body);
        std::string_view table;
        if (!cur.nul_string(table)) table = body;
        req->table.assign(table.substr(0, 256));
        c.path = req->table;
        break;
      }
      case kComChangeUser: {
        Cursor cur(body);
        std::string_view user;
        if (cur.nul_string(user)) req->user.assign(user.substr(0, 256));
        break;
      }
      default:
        break;
    }
    count(name, cmd);
    c.request = std::move(req);
    if (cmd == kComQuit || cmd == kComStmtClose || cmd == kComStmtSendLongData) {
      ctx_.emit(std::move(c));  // no answer comes
      return;
    }
    if (cmd == kComBinlogDump || cmd == kComBinlogDumpGtid) binlog_ = true;
    if (pending_.size() >= ctx_.limits().max_pending) pop_front(kFlagTimeout);
    queued_ += content_bytes(c);
    pending_.push_back(Pending{std::move(c), cmd, p.ts_last});
    if (resync_[1]) armed_ = true;
  }

  // The oldest command comes out, with the answer read so far.
  void pop_front(uint32_t flags) {
    Pending& f = pending_.front();
    queued_ -= content_bytes(f.call);
    CallContent c = std::move(f.call);
    const uint64_t last = f.ts_last;
    pending_.pop_front();
    c.flags |= flags;
    if (resp_) {
      if (flags) c.flags |= kFlagIncomplete;
      c.status = resp_->has_error ? resp_->error_code : 0;
      c.end_ns = last;
      c.response = std::shared_ptr<MysqlResponse>(std::move(resp_));
    }
    resp_.reset();
    rstate_ = RState::First;
    ctx_.emit(std::move(c));
  }

  void remember_statement(uint32_t id, const MysqlRequest& req) {
    last_prepared_ = id;
    have_last_prepared_ = true;
    auto it = statements_.find(id);
    if (it != statements_.end()) {
      statement_bytes_ -= string_heap_bytes(it->second.text);
      statements_.erase(it);
    }
    while (!statements_.empty() &&
           (statements_.size() >= kMaxStatements || statement_bytes_ + req.query.size() > kMaxStatementBytes)) {
      auto oldest = statements_.begin();
      for (auto s = statements_.begin(); s != statements_.end(); ++s)
        if (s->second.order < oldest->second.order) oldest = s;
      statement_bytes_ -= string_heap_bytes(oldest->second.text);
      statements_.erase(oldest);
    }
    if (req.query.size() > kMaxStatementBytes) return;
    Statement s{req.query, req.query_size, statement_order_++};
    statement_bytes_ += string_heap_bytes(s.text);
    statements_.emplace(id, std::move(s));
  }

  // --------------------------------------------------------------- answers --

  void server_packet(const Packet& p, int depth) {
    if (phase_ == Phase::Start) {
      Greeting g;
      const uint8_t b = p.data.empty() ? 0 : static_cast<uint8_t>(p.data[0]);
      if (p.seq == 0 && b == 0x0a && parse_greeting(p.data, g)) {
        start_handshake(p, &g);
        phase_ = Phase::Handshake;
        return;
      }
      if (p.seq == 0 && b == 0xff) {  // refused before the handshake (too many connections, host blocked)
        start_handshake(p, nullptr);
        ErrPacket e;
        parse_err(p.data, e, kMaxMessage);
        hs_resp_->has_error = true;
        hs_resp_->error_code = e.code;
        hs_resp_->sqlstate = e.sqlstate;
        hs_resp_->error_message = e.message;
        phase_ = Phase::Command;
        finish_handshake(0, true);
        return;
      }
      return;  // joined mid-connection: an answer to something before
    }
    if (phase_ == Phase::Handshake) return handshake_server(p);
    if (pending_.empty()) return orphan(p);
    Pending& f = pending_.front();
    f.ts_last = p.ts_last;
    if (p.length == 0) f.call.flags |= kFlagProtocolError;  // no answer packet is empty
    if (!resp_) resp_ = std::make_unique<MysqlResponse>();
    const Step s = step(f, p);
    if (s == Step::More) return;
    if (s == Step::Done && p.truncated() && static_cast<uint8_t>(p.data[0]) == 0xff) f.call.flags |= kFlagTruncated;
    pop_front(0);
    if (s == Step::Again && depth == 0) server_packet(p, 1);
  }

  void orphan(const Packet& p) {
    const uint8_t b = p.data.empty() ? 0 : static_cast<uint8_t>(p.data[0]);
    if (binlog_ || p.seq != 1 || (b != 0x00 && b != 0xff)) return;  // rows or events of an answer we lost
    CallContent c;
    c.protocol = kMysql;
    c.ts_ns = p.ts_first;
    c.end_ns = p.ts_last;
    c.key_extra = ctx_.next_seq();
    c.flags |= kFlagOrphanResponse | take_flags(1, p);
    auto r = std::make_shared<MysqlResponse>();
    if (b == 0xff) {
      ErrPacket e;
      parse_err(p.data, e, kMaxMessage);
      r->has_error = true;
      r->error_code = e.code;
      r->sqlstate = e.sqlstate;
      r->error_message = e.message;
    } else {
      ok(*r, p);
    }
    c.status = r->has_error ? r->error_code : 0;
    c.response = std::move(r);
    ctx_.emit(std::move(c));
  }

  // An OK packet: its counts add to the answer's. Returns its status flags.
  uint16_t ok(MysqlResponse& r, const Packet& p) {
    OkPacket o;
    if (!parse_ok(p.data, o, kMaxMessage)) return 0;
    r.has_ok = true;
    r.affected_rows += o.affected_rows;
    if (o.last_insert_id) r.last_insert_id = o.last_insert_id;
    r.warnings += o.warnings;
    if (!o.info.empty()) r.info = o.info;
    return o.status;
  }

  bool error(MysqlResponse& r, const Packet& p) {
    ErrPacket e;
    if (!parse_err(p.data, e, kMaxMessage)) return false;
    r.has_error = true;
    r.error_code = e.code;
    r.sqlstate = e.sqlstate;
    r.error_message = e.message;
    return true;
  }

  // The packet that ends a result set's rows (EOF, or an OK with 0xfe with CLIENT_DEPRECATE_EOF).
  bool ends_rows(const Packet& p) const {
    if (p.data.empty() || static_cast<uint8_t>(p.data[0]) != 0xfe) return false;
    if (deprecate_eof_ == 0) return p.length < 9;
    return p.first_len < 0xffffff;
  }

  // The end of one result: more may follow.
  Step result_end(const Packet& p) {
    uint16_t status = 0;
    if (p.length < 9 && p.length >= 5) {
      status = static_cast<uint16_t>(static_cast<uint8_t>(p.data[3]) | (static_cast<uint8_t>(p.data[4]) << 8));
      resp_->warnings += static_cast<uint8_t>(p.data[1]) | (static_cast<uint8_t>(p.data[2]) << 8);
    } else {
      status = ok(*resp_, p);
    }
    if (status & kServerMoreResultsExists) {
      rstate_ = RState::First;
      return Step::More;
    }
    return Step::Done;
  }

  Step after_defs() {
    rstate_ = deprecate_eof_ == 1 ? RState::Rows : RState::ColumnEof;
    return Step::More;
  }

  Step step(Pending& f, const Packet& p) {
    MysqlResponse& r = *resp_;
    const uint8_t b = p.data.empty() ? 0 : static_cast<uint8_t>(p.data[0]);
    if (b == 0xff) {
      if (is_progress_report(p.data)) return Step::More;
      if (error(r, p)) return Step::Done;
    }
    switch (rstate_) {
      case RState::First:
        return first(f, p, b);
      case RState::ColumnDefs:
        if (cols_left_ > 0) cols_left_--;
        if (cols_left_ == 0) return after_defs();
        return Step::More;
      case RState::ColumnEof:
        if (is_eof(p)) {
          if (deprecate_eof_ < 0) deprecate_eof_ = 0;
          const uint16_t status =
              p.length >= 5 ? static_cast<uint16_t>(static_cast<uint8_t>(p.data[3]) | (static_cast<uint8_t>(p.data[4]) << 8)) : 0;
          if (f.cmd == kComStmtExecute && (status & kServerStatusCursorExists)) return Step::Done;  // rows by COM_STMT_FETCH
          rstate_ = RState::Rows;
          return Step::More;
        }
        if (deprecate_eof_ < 0) deprecate_eof_ = 1;
        rstate_ = RState::Rows;
        [[fallthrough]];
      case RState::Rows:
        if (ends_rows(p)) return result_end(p);
        r.rows++;
        return Step::More;
      case RState::PrepParams:
        if (params_left_ > 0) params_left_--;
        if (params_left_ > 0) return Step::More;
        if (deprecate_eof_ != 1) {
          rstate_ = RState::PrepParamsEof;
          return Step::More;
        }
        return prepared_columns();
      case RState::PrepParamsEof:
        if (is_eof(p)) {
          if (deprecate_eof_ < 0) deprecate_eof_ = 0;
          return prepared_columns();
        }
        if (deprecate_eof_ < 0) deprecate_eof_ = 1;
        if (prepared_columns() == Step::Done) return Step::Again;
        return step(f, p);
      case RState::PrepCols:
        if (cols_left_ > 0) cols_left_--;
        if (cols_left_ > 0) return Step::More;
        if (deprecate_eof_ == 1) return Step::Done;
        rstate_ = RState::PrepColsEof;
        return Step::More;
      case RState::PrepColsEof:
        if (is_eof(p)) {
          if (deprecate_eof_ < 0) deprecate_eof_ = 0;
          return Step::Done;
        }
        if (deprecate_eof_ < 0) deprecate_eof_ = 1;
        return Step::Again;
      case RState::FieldList:
        if (is_eof(p) || (b == 0xfe && deprecate_eof_ == 1)) return Step::Done;
        r.columns++;
        return Step::More;
    }
    return Step::Done;
  }

  Step prepared_columns() {
    if (cols_left_ == 0) return Step::Done;
    rstate_ = RState::PrepCols;
    return Step::More;
  }

  Step first(Pending& f, const Packet& p, uint8_t b) {
    MysqlResponse& r = *resp_;
    switch (f.cmd) {
      case kComStmtPrepare: {
        Cursor c(p.data);
        uint8_t h = 0;
        uint32_t id = 0;
        uint16_t cols = 0, params = 0;
        if (!c.u8(h) || h != 0x00 || !c.u32(id) || !c.u16(cols) || !c.u16(params)) {
          f.call.flags |= kFlagProtocolError;
          return Step::Done;
        }
        r.has_ok = true;
        r.prepared = true;
        r.statement_id = id;
        r.columns = cols;
        r.params = params;
        f.call.path = std::to_string(id);
        if (const auto* req = dynamic_cast<const MysqlRequest*>(f.call.request.get())) remember_statement(id, *req);
        cols_left_ = cols;
        params_left_ = params;
        if (params) {
          rstate_ = RState::PrepParams;
          return Step::More;
        }
        return prepared_columns();
      }
      case kComFieldList:
        if (is_eof(p)) return Step::Done;
        r.has_result_set = true;
        r.columns++;
        rstate_ = RState::FieldList;
        return Step::More;
      case kComStatistics:
        r.info.assign(std::string_view(p.data).substr(0, kMaxMessage));
        return Step::Done;
      case kComChangeUser:
        if (b == 0x00) {
          ok(r, p);
          return Step::Done;
        }
        return b == 0xfe || b == 0x01 ? Step::More : Step::Done;
      case kComStmtFetch:
        r.has_result_set = true;
        if (ends_rows(p) || is_eof(p)) return result_end(p);
        r.rows++;
        rstate_ = RState::Rows;
        return Step::More;
      case kComQuery:
      case kComStmtExecute:
      case kComProcessInfo:
        break;
      default:  // one packet: OK, EOF, or anything else
        if (b == 0x00) ok(r, p);
        else if (b == 0xfe) r.has_ok = true;
        return Step::Done;
    }
    if (b == 0x00) {
      const uint16_t status = ok(r, p);
      if (status & kServerMoreResultsExists) return Step::More;
      return Step::Done;
    }
    if (b == 0xfb && f.cmd == kComQuery) {  // LOCAL INFILE: the client sends the file, then the server answers
      r.local_infile.assign(std::string_view(p.data).substr(1, kMaxMessage));
      return Step::More;
    }
    if (b == 0xfe) {
      r.has_ok = true;
      return Step::Done;
    }
    Cursor c(p.data);
    uint64_t n = 0;
    if (!c.lenenc(n) || n == 0) {
      f.call.flags |= kFlagProtocolError;
      return Step::Done;
    }
    if (!r.has_result_set) r.columns = n;
    r.has_result_set = true;
    r.result_sets++;
    cols_left_ = n;
    if (metadata_optional_) {
      uint8_t follows = 1;
      c.u8(follows);
      if (follows == 0) return after_defs();
    }
    rstate_ = RState::ColumnDefs;
    return Step::More;
  }

};

}  // namespace

// ---------------------------------------------------------------- records --

void MysqlRequest::write_json(JsonOut& out) const {
  out.begin_object();
  out.field("command", command);
  if (has_query) {
    out.field("query", query);
    if (query_size != query.size()) out.field("query_size", query_size);
  }
  if (has_statement_id) out.field("statement_id", statement_id);
  if (!database.empty()) out.field("database", database);
  if (!table.empty()) out.field("table", table);
  if (!user.empty()) out.field("user", user);
  if (!auth_plugin.empty()) out.field("auth_plugin", auth_plugin);
  if (compress) out.field("compress", true);
  if (tls) out.field("tls", true);
  out.end_object();
}

size_t MysqlRequest::heap_bytes() const {
  return proto::heap_bytes(sizeof(MysqlRequest)) + string_heap_bytes(command) + string_heap_bytes(query) +
         string_heap_bytes(database) + string_heap_bytes(table) + string_heap_bytes(user) +
         string_heap_bytes(auth_plugin);
}

size_t MysqlRequest::shed_body() {
  const size_t b = string_heap_bytes(query);
  std::string().swap(query);
  return b;
}

void MysqlResponse::write_json(JsonOut& out) const {
  out.begin_object();
  if (has_error) {
    out.key("error");
    out.begin_object();
    out.field("code", uint32_t{error_code});
    out.field("sqlstate", sqlstate);
    out.field("message", error_message);
    out.end_object();
  }
  if (!server_version.empty()) out.field("server_version", server_version);
  if (has_connection_id) out.field("connection_id", connection_id);
  if (!auth_switch.empty()) out.field("auth_switch", auth_switch);
  if (tls) out.field("tls", true);
  if (prepared) {
    out.field("statement_id", statement_id);
    out.field("params", params);
    out.field("columns", columns);
  } else if (has_result_set) {
    out.field("columns", columns);
    out.field("rows", rows);
    if (result_sets > 1) out.field("result_sets", result_sets);
  }
  if (has_ok && !prepared && !connect) {
    out.field("affected_rows", affected_rows);
    if (last_insert_id) out.field("last_insert_id", last_insert_id);
    if (warnings) out.field("warnings", warnings);
  }
  if (!local_infile.empty()) out.field("local_infile", local_infile);
  if (!info.empty()) out.field("info", info);
  out.end_object();
}

size_t MysqlResponse::heap_bytes() const {
  return proto::heap_bytes(sizeof(MysqlResponse)) + string_heap_bytes(sqlstate) + string_heap_bytes(error_message) +
         string_heap_bytes(info) + string_heap_bytes(local_infile) + string_heap_bytes(server_version) +
         string_heap_bytes(auth_switch);
}

// -------------------------------------------------------------- detection --

Detection MysqlProtocol::detect(std::span<const uint8_t> first, int side, const FlowView&) const {
  Detection d;
  const int g = mysql::looks_like_greeting(first);
  if (g > 0) {
    d.matched = true;
    d.client_side = 1 - side;
    return d;
  }
  if (g < 0) {
    d.need_more = true;
    return d;
  }
  if (mysql::looks_like_commands(first)) {
    d.matched = true;
    d.client_side = side;
  }
  return d;
}

std::unique_ptr<StreamSession> MysqlProtocol::open(SessionContext& ctx) const {
  return std::make_unique<MysqlSession>(ctx);
}

}  // namespace tapwire::proto

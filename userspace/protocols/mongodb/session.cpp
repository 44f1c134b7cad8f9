#include "mongodb/session.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <deque>

namespace tapwire::proto {
namespace {

// Bytes a direction looking for a header holds at most: a header and the
// start of a body, enough for mongo_shape to decide.
constexpr size_t kScanWindow = 4096;
// Bytes of a candidate message looked at before it is taken as a message start.
constexpr size_t kScanLook = 512;
// Exhaust streams remembered (the server's last reply id of each).
constexpr size_t kMaxExhaust = 16;

// The command names counted by name in "mongodb_commands"; any other is
// "other" (the label set stays bounded whatever the wire says).
const char* const kCommands[] = {
    "find", "insert", "update", "delete", "aggregate", "getMore", "killCursors", "count", "distinct",
    "findAndModify", "bulkWrite", "create", "drop", "dropDatabase", "createIndexes", "dropIndexes", "listCollections",
    "listDatabases", "listIndexes", "renameCollection", "collMod", "explain", "mapReduce", "hello", "isMaster",
    "ismaster", "ping", "buildInfo", "buildinfo", "saslStart", "saslContinue", "authenticate", "logout", "endSessions",
    "startSession", "commitTransaction", "abortTransaction", "getLog", "getCmdLineOpts", "getParameter", "setParameter",
    "whatsmyuri", "serverStatus", "replSetGetStatus", "dbStats", "collStats", "connectionStatus", "hostInfo",
    "currentOp", "killOp", "listCommands", "getLastError", "getnonce", "OP_INSERT", "OP_UPDATE", "OP_DELETE",
    "OP_GET_MORE", "OP_KILL_CURSORS", "OP_QUERY", "OP_MSG"};

uint32_t message_flags(const MongoMessage& m) {
  uint32_t f = 0;
  if (m.gap) f |= kFlagGap;
  if (m.truncated) f |= kFlagTruncated;
  if (m.document_truncated) f |= kFlagBodyTruncated;
  if (m.protocol_error) f |= kFlagProtocolError;
  if (m.memory_shed) f |= kFlagMemoryShed;
  if (m.incomplete) f |= kFlagIncomplete;
  return f;
}

size_t queued_bytes(const MongoMessage& m) { return sizeof(MongoMessage) + m.heap_bytes(); }

bool no_reply(const MongoMessage& m) {
  return m.opcode == kOpInsert || m.opcode == kOpUpdate || m.opcode == kOpDelete || m.opcode == kOpKillCursors ||
         m.more_to_come();
}

struct Summary {
  std::string method, path;
};

Summary summary_of(const MongoMessage& m) {
  Summary s;
  s.method = m.command.empty() ? mongo_op_name(m.opcode) : m.command;
  s.path = m.database;
  if (!m.collection.empty()) s.path += (s.path.empty() ? "" : ".") + m.collection;
  return s;
}

class MongoSession final : public StreamSession {
 public:
  explicit MongoSession(SessionContext& ctx) : ctx_(ctx), counters_(ctx.counters(kMongoDb)) {
    lim_.max_json = ctx.limits().max_body_kept;
    lim_.max_message_kept = ctx.limits().max_body_kept + 16 * 1024;
  }

  void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts) override { feed(dir_index(d), bytes, ts); }

  void gap(Dir d, uint64_t len) override {
    Side& s = side_[dir_index(d)];
    if (s.synced && s.len != 0 && s.got + len < s.len) {
      // Inside the current message: it goes on, with a hole (what is kept
      // stops before it).
      s.got += len;
      s.keep = std::min<uint64_t>(s.keep, s.buf.size());
      s.msg_gap = true;
      return;
    }
    if (s.synced && s.len != 0 && s.got + len == s.len) {
      s.got = s.len;
      s.keep = std::min<uint64_t>(s.keep, s.buf.size());
      s.msg_gap = true;
      finish(dir_index(d), s.last_ts);
      return;
    }
    if (s.synced && s.len != 0) {  // the message ended somewhere in the hole
      s.keep = std::min<uint64_t>(s.keep, s.buf.size());
      s.msg_gap = true;
      s.got = s.len;
      finish(dir_index(d), s.last_ts);
    }
    reset(s);
    s.synced = false;
    s.gap_pending = true;
  }

  void end(Dir d, uint64_t ts) override {
    const int i = dir_index(d);
    Side& s = side_[i];
    if (s.synced && s.len != 0 && !s.dropping) {
      s.incomplete = true;
      s.keep = std::min<uint64_t>(s.keep, s.buf.size());
      s.got = s.len;
      finish(i, ts);
    }
    reset(s);
    release(s.buf);
  }

  void close(uint32_t why, uint64_t ts) override {
    if (why & kFlagMemoryShed) side_[0].shed_pending = side_[1].shed_pending = true;
    end(Dir::ClientToServer, ts);
    end(Dir::ServerToClient, ts);
    while (!pending_.empty()) {
      emit(&pending_.front(), nullptr, why, nullptr);
      pop_front();
    }
  }

  void expire(uint64_t now) override {
    const uint64_t t = ctx_.limits().request_timeout_ns;
    while (!pending_.empty() && pending_.front().ts_last_ns + t < now) {
      emit(&pending_.front(), nullptr, kFlagTimeout, nullptr);
      pop_front();
    }
  }

  size_t memory_bytes() const override {
    return heap_bytes(sizeof(*this)) + kDequeFixed + vector_heap_bytes(side_[0].buf) +
           vector_heap_bytes(side_[1].buf) + vector_heap_bytes(exhaust_) + queued_;
  }
  size_t buffered_bytes() const override { return side_[0].buf.size() + side_[1].buf.size(); }

  size_t shed_bodies() override {
    size_t freed = 0;
    for (MongoMessage& m : pending_) {
      const size_t b = string_heap_bytes(m.document);
      if (!b) continue;
      std::string().swap(m.document);
      m.memory_shed = true;
      m.document_truncated = true;
      queued_ -= b;
      freed += b;
    }
    return freed;
  }

  size_t shed_buffers(uint64_t) override {
    size_t freed = 0;
    for (Side& s : side_) {
      if (!s.buf.capacity()) continue;
      freed += vector_heap_bytes(s.buf);
      if (s.synced && s.len != 0) {
        s.dropping = true;  // the rest of this message is skipped; it is not reported
      } else if (!s.buf.empty()) {
        s.synced = false;  // a header cut in two, or bytes being searched: look again
        reset(s);
      }
      if (!s.buf.empty()) s.shed_pending = true;
      release(s.buf);
    }
    return freed;
  }

  void mark_shed(Dir d) override { side_[dir_index(d)].shed_pending = true; }

 private:
  struct Side {
    std::vector<uint8_t> buf;  // the current message's kept bytes, or (not synced) bytes searched for a header
    bool synced = false;  // at a message boundary we trust; the first message must show its shape too
    uint64_t len = 0;  // the current message's length (0: its header is not complete yet)
    uint64_t got = 0;  // its bytes seen so far
    uint64_t keep = 0;  // its bytes kept: min(len, cap), less after a hole
    uint64_t ts_first = 0, last_ts = 0;
    bool dropping = false;  // shed: skip the rest of this message
    bool msg_gap = false, incomplete = false;
    bool gap_pending = false, shed_pending = false;
  };

  SessionContext& ctx_;
  ProtocolCounters& counters_;
  MongoLimits lim_;
  Side side_[2];
  std::deque<MongoMessage> pending_;  // requests waiting for their reply, oldest first
  size_t queued_ = 0;  // queued_bytes of pending_
  // Exhaust replies: the id of the server's last reply with moreToCome, and
  // the request the stream answers.
  struct Exhaust {
    int32_t reply_id;
    Summary what;
  };
  std::vector<Exhaust> exhaust_;
  uint64_t* command_count_[std::size(kCommands) + 1] = {};

  static void reset(Side& s) {
    s.buf.clear();
    s.len = s.got = s.keep = 0;
    s.dropping = s.msg_gap = s.incomplete = false;
  }

  void feed(int i, std::span<const uint8_t> in, uint64_t ts) {
    Side& s = side_[i];
    s.last_ts = ts;
    for (int guard = 0; guard < 1000000; guard++) {
      if (s.synced) {
        if (in.empty()) break;
        step(i, in, ts);
        continue;
      }
      // Looking for a message start in what is held plus `in`.
      const size_t room = kScanWindow > s.buf.size() ? kScanWindow - s.buf.size() : 0;
      const size_t k = std::min(room, in.size());
      s.buf.insert(s.buf.end(), in.begin(), in.begin() + static_cast<std::ptrdiff_t>(k));
      in = in.subspan(k);
      const std::span<const uint8_t> b(s.buf);
      size_t at = 0;
      bool found = false;
      for (; at < b.size(); at++) {
        // Each candidate is judged on the same bytes however the stream
        // came in (the first kScanLook of its message, or all of a shorter
        // one): what more bytes would say must not depend on the split.
        const size_t avail = b.size() - at;
        if (avail < 4) break;
        const uint32_t len = mongo_u32(b.data() + at);
        if (len < kMongoHeaderSize + 4 || len > kMongoMaxMessage) continue;
        const size_t look = std::min<size_t>(len, kScanLook);
        // "No" stays no with more bytes; "Matched" may not (a document's end).
        const MongoShape sh = mongo_shape(b.subspan(at, std::min(avail, look)));
        if (sh == MongoShape::No) continue;
        if (avail < look) break;  // a message may start here: wait for its bytes
        if (sh == MongoShape::Matched) {
          found = true;
          break;
        }
      }
      if (!found) {
        s.buf.erase(s.buf.begin(), s.buf.begin() + static_cast<std::ptrdiff_t>(at));
        if (in.empty()) break;
        // A candidate waits for at most kScanLook bytes: the window never fills.
        if (s.buf.size() >= kScanWindow) s.buf.erase(s.buf.begin(), s.buf.begin() + 1);
        continue;
      }
      // Synchronised: what is held from there on goes through as message bytes.
      std::vector<uint8_t> held(b.begin() + static_cast<std::ptrdiff_t>(at), b.end());
      s.buf.clear();
      s.synced = true;
      std::span<const uint8_t> h(held);
      for (int g = 0; g < 1000000 && s.synced && !h.empty(); g++) step(i, h, ts);
      if (!h.empty()) s.buf.insert(s.buf.end(), h.begin(), h.end());  // lost sync again: search the rest
    }
  }

  // Message bytes at a boundary we trust: consumes some of `in`.
  void step(int i, std::span<const uint8_t>& in, uint64_t ts) {
    Side& s = side_[i];
    if (s.len == 0) {
      if (s.buf.empty()) s.ts_first = ts;
      const size_t k = std::min(in.size(), kMongoHeaderSize - s.buf.size());
      s.buf.insert(s.buf.end(), in.begin(), in.begin() + static_cast<std::ptrdiff_t>(k));
      in = in.subspan(k);
      if (s.buf.size() < kMongoHeaderSize) return;
      if (!mongo_header_plausible(s.buf)) {
        // Not a header where one should be: look for the next one after its first byte.
        counters_.parse_errors++;
        s.buf.erase(s.buf.begin());
        s.synced = false;
        s.gap_pending = true;
        return;
      }
      s.len = mongo_u32(s.buf.data());
      s.got = kMongoHeaderSize;
      s.keep = std::min<uint64_t>(s.len, lim_.max_message_kept);
      if (s.got == s.len) finish(i, ts);
      return;
    }
    const size_t k = static_cast<size_t>(std::min<uint64_t>(in.size(), s.len - s.got));
    if (!s.dropping && s.buf.size() < s.keep) {
      const size_t take = static_cast<size_t>(std::min<uint64_t>(k, s.keep - s.buf.size()));
      s.buf.insert(s.buf.end(), in.begin(), in.begin() + static_cast<std::ptrdiff_t>(take));
    }
    s.got += k;
    in = in.subspan(k);
    if (s.got == s.len) finish(i, ts);
  }

  void finish(int i, uint64_t ts) {
    Side& s = side_[i];
    if (s.dropping) {
      reset(s);
      return;
    }
    MongoMessage m = parse_mongo_message(s.buf, s.keep == s.len && !s.msg_gap && !s.incomplete, lim_);
    if (m.protocol_error) counters_.parse_errors++;
    m.ts_first_ns = s.ts_first;
    m.ts_last_ns = ts;
    m.gap = s.msg_gap || s.gap_pending;
    m.incomplete = s.incomplete;
    if (s.incomplete || s.msg_gap) m.truncated = true;
    s.gap_pending = false;
    if (s.shed_pending) {
      m.memory_shed = true;
      s.shed_pending = false;
    }
    // An empty parser buffer keeps a small allocation for the next message.
    reset(s);
    if (s.buf.capacity() > (16u << 10)) release(s.buf);
    message(i, std::move(m));
  }

  void count(const std::string& method) {
    size_t k = 0;
    while (k < std::size(kCommands) && method != kCommands[k]) k++;
    if (!command_count_[k])
      command_count_[k] = &counters_.breakdowns["mongodb_commands"][k < std::size(kCommands) ? kCommands[k] : "other"];
    ++*command_count_[k];
  }

  void pop_front() {
    queued_ -= queued_bytes(pending_.front());
    pending_.pop_front();
  }

  void message(int role, MongoMessage&& m) {
    if (role == 0) {  // the client's
      if (no_reply(m)) {
        emit(&m, nullptr, 0, nullptr);
        return;
      }
      if (pending_.size() >= std::max<size_t>(1, ctx_.limits().max_pending)) {
        emit(&pending_.front(), nullptr, kFlagTimeout, nullptr);
        pop_front();
      }
      queued_ += queued_bytes(m);
      pending_.push_back(std::move(m));
      return;
    }
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (it->request_id != m.response_to) continue;
      if (m.more_to_come()) remember_exhaust(m.request_id, summary_of(*it));
      emit(&*it, &m, 0, nullptr);
      queued_ -= queued_bytes(*it);
      pending_.erase(it);
      return;
    }
    for (auto it = exhaust_.begin(); it != exhaust_.end(); ++it) {
      if (it->reply_id != m.response_to) continue;
      Summary what = std::move(it->what);
      exhaust_.erase(it);
      if (m.more_to_come()) remember_exhaust(m.request_id, what);
      emit(nullptr, &m, 0, &what);
      return;
    }
    emit(nullptr, &m, kFlagOrphanResponse, nullptr);
  }

  void remember_exhaust(int32_t reply_id, Summary what) {
    if (exhaust_.size() >= kMaxExhaust) exhaust_.erase(exhaust_.begin());
    exhaust_.push_back({reply_id, std::move(what)});
  }

  // `what`: the summary of a request seen earlier (exhaust replies).
  void emit(MongoMessage* req, MongoMessage* resp, uint32_t extra, const Summary* what) {
    CallContent c;
    c.protocol = kMongoDb;
    c.flags = extra;
    if (req) {
      c.ts_ns = req->ts_first_ns;
      c.flags |= message_flags(*req);
      Summary s = summary_of(*req);
      c.method = std::move(s.method);
      c.path = std::move(s.path);
    } else if (what) {
      c.method = what->method;
      c.path = what->path;
    }
    if (resp) {
      if (!req) c.ts_ns = resp->ts_first_ns;
      c.end_ns = resp->ts_last_ns;
      c.flags |= message_flags(*resp);
      // 0: ok; the server's error code (1 when it gave none or 0).
      c.status = 0;
      if (resp->has_error)
        c.status = resp->has_code && resp->code != 0 ? static_cast<int>(std::clamp<int64_t>(resp->code, INT32_MIN, INT32_MAX)) : 1;
    }
    if (req || what) count(c.method);
    c.key_extra = ctx_.next_seq();
    if (req) c.request = std::make_shared<MongoRecord>(std::move(*req), true);
    if (resp) c.response = std::make_shared<MongoRecord>(std::move(*resp), false);
    ctx_.emit(std::move(c));
  }
};

void write_error(JsonOut& out, const MongoMessage& m) {
  out.key("error");
  out.begin_object();
  if (m.has_code) out.field("code", m.code);
  out.field("message", m.errmsg);
  if (!m.code_name.empty()) out.field("code_name", m.code_name);
  out.end_object();
}

const char* compressor_name(uint8_t c) {
  switch (c) {
    case 0: return "noop";
    case 1: return "snappy";
    case 2: return "zlib";
    case 3: return "zstd";
    default: return "unknown";
  }
}

}  // namespace

void MongoRecord::write_json(JsonOut& out) const {
  const MongoMessage& m = msg;
  out.begin_object();
  out.field("op", mongo_op_name(m.opcode));
  out.field("request_id", int64_t{m.request_id});
  if (!request || m.response_to) out.field("response_to", int64_t{m.response_to});
  if (m.compressed) out.field("compressor", compressor_name(m.compressor));
  if (request) {
    if (!m.command.empty()) out.field("command", m.command);
    out.field("database", m.database);
    out.field("collection", m.collection);
    if (!m.full_collection_name.empty()) out.field("full_collection_name", m.full_collection_name);
  }
  if (m.opcode == kOpMsg) {
    if (m.msg_flags & kMsgChecksumPresent) out.field("checksum_present", true);
    if (m.msg_flags & kMsgMoreToCome) out.field("more_to_come", true);
    if (m.msg_flags & kMsgExhaustAllowed) out.field("exhaust_allowed", true);
    if (!m.sequences.empty()) {
      out.key("sequences");
      out.begin_array();
      for (const MongoSequence& s : m.sequences) {
        out.begin_object();
        out.field("identifier", s.identifier);
        out.field("documents", uint64_t{s.count});
        if (s.truncated) out.field("truncated", true);
        out.end_object();
      }
      out.end_array();
    }
  }
  if (m.opcode == kOpReply) {
    out.field("response_flags", int64_t{m.query_flags});
    out.field("cursor_id", m.cursor_id);
    out.field("starting_from", int64_t{m.starting_from});
    out.field("number_returned", int64_t{m.number_returned});
  }
  if ((m.opcode == kOpReply || m.opcode == kOpInsert) && m.documents) out.field("documents", uint64_t{m.documents});
  if (!request) {
    if (m.has_ok) {
      out.key("ok");
      if (m.ok == 0 || m.ok == 1) {
        out.number(static_cast<int64_t>(m.ok));
      } else if (std::isfinite(m.ok)) {
        char buf[64];
        const auto r = std::to_chars(buf, buf + sizeof buf, m.ok);
        out.raw(std::string_view(buf, static_cast<size_t>(r.ptr - buf)));
      } else {
        out.null();  // NaN or infinite: no JSON number
      }
    }
    if (m.has_error) write_error(out, m);
  }
  if (!m.document.empty()) {
    out.key("document");
    out.raw(m.document);
  }
  if (m.document_truncated) out.field("document_truncated", true);
  out.field("size", uint64_t{m.length});
  if (m.protocol_error) out.field("protocol_error", m.error);
  out.end_object();
}

size_t MongoRecord::shed_body() {
  const size_t b = string_heap_bytes(msg.document);
  std::string().swap(msg.document);
  if (b) {
    msg.memory_shed = true;
    msg.document_truncated = true;
  }
  return b;
}

Detection MongoProtocol::detect(std::span<const uint8_t> first, int side, const FlowView&) const {
  Detection d;
  auto decide = [&](std::span<const uint8_t> at) {
    const int32_t response_to = mongo_i32(at.data() + 8);
    const int32_t op = mongo_i32(at.data() + 12);
    const bool response = op == kOpReply || response_to != 0;
    d.matched = true;
    d.client_side = response ? 1 - side : side;
  };
  const MongoShape sh = mongo_shape(first);
  if (sh == MongoShape::Matched) {
    decide(first);
    return d;
  }
  if (sh == MongoShape::NeedMore) {
    d.need_more = true;
    return d;
  }
  // Joined in the middle of a message: a whole message further on, of the
  // shape and content of a command or a reply, is enough to tell.
  for (size_t at = 1; at + kMongoHeaderSize + 5 <= first.size(); at++) {
    const auto b = first.subspan(at);
    if (mongo_shape(b) != MongoShape::Matched) continue;
    const uint32_t len = mongo_u32(b.data());
    const int32_t op = mongo_i32(b.data() + 12);
    if (len > b.size() || (op != kOpMsg && op != kOpQuery && op != kOpReply)) continue;
    const MongoMessage m = parse_mongo_message(b.first(len), true, MongoLimits{});
    if (m.protocol_error || (m.command.empty() && !m.has_ok)) continue;
    decide(b);
    return d;
  }
  return d;
}

std::unique_ptr<StreamSession> MongoProtocol::open(SessionContext& ctx) const {
  return std::make_unique<MongoSession>(ctx);
}

}  // namespace tapwire::proto

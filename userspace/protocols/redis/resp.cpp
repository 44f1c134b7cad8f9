#include "redis/resp.hpp"

#include <algorithm>
#include <cstring>
#include <iterator>

namespace tapwire::proto {
namespace {

bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
bool is_alpha(uint8_t c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }

// A strict decimal: digits only (a '-' first when `sign`), no leading zero,
// at most 19 digits. False on anything else.
bool parse_int(std::string_view s, bool sign, int64_t& v) {
  bool neg = false;
  if (sign && !s.empty() && s[0] == '-') {
    neg = true;
    s.remove_prefix(1);
  }
  if (s.empty() || s.size() > 19 || (s.size() > 1 && s[0] == '0')) return false;
  uint64_t n = 0;
  for (char c : s) {
    if (!is_digit(static_cast<uint8_t>(c))) return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  if (n > static_cast<uint64_t>(INT64_MAX)) return false;
  v = neg ? -static_cast<int64_t>(n) : static_cast<int64_t>(n);
  return true;
}

// The command names Redis 7 knows (top-level commands; "CLIENT SETNAME" is CLIENT).
constexpr std::string_view kCommands[] = {
    "ACL", "APPEND", "ASKING", "AUTH", "BGREWRITEAOF", "BGSAVE", "BITCOUNT", "BITFIELD", "BITFIELD_RO", "BITOP",
    "BITPOS", "BLMOVE", "BLMPOP", "BLPOP", "BRPOP", "BRPOPLPUSH", "BZMPOP", "BZPOPMAX", "BZPOPMIN", "CLIENT",
    "CLUSTER", "COMMAND", "CONFIG", "COPY", "DBSIZE", "DEBUG", "DECR", "DECRBY", "DEL", "DISCARD", "DUMP", "ECHO",
    "EVAL", "EVALSHA", "EVALSHA_RO", "EVAL_RO", "EXEC", "EXISTS", "EXPIRE", "EXPIREAT", "EXPIRETIME", "FAILOVER",
    "FCALL", "FCALL_RO", "FLUSHALL", "FLUSHDB", "FUNCTION", "GEOADD", "GEODIST", "GEOHASH", "GEOPOS", "GEORADIUS",
    "GEORADIUSBYMEMBER", "GEORADIUSBYMEMBER_RO", "GEORADIUS_RO", "GEOSEARCH", "GEOSEARCHSTORE", "GET", "GETBIT",
    "GETDEL", "GETEX", "GETRANGE", "GETSET", "HDEL", "HELLO", "HEXISTS", "HGET", "HGETALL", "HINCRBY",
    "HINCRBYFLOAT", "HKEYS", "HLEN", "HMGET", "HMSET", "HRANDFIELD", "HSCAN", "HSET", "HSETNX", "HSTRLEN", "HVALS",
    "INCR", "INCRBY", "INCRBYFLOAT", "INFO", "KEYS", "LASTSAVE", "LATENCY", "LCS", "LINDEX", "LINSERT", "LLEN",
    "LMOVE", "LMPOP", "LOLWUT", "LPOP", "LPOS", "LPUSH", "LPUSHX", "LRANGE", "LREM", "LSET", "LTRIM", "MEMORY", "MGET",
    "MIGRATE", "MODULE", "MONITOR", "MOVE", "MSET", "MSETNX", "MULTI", "OBJECT", "PERSIST", "PEXPIRE", "PEXPIREAT",
    "PEXPIRETIME", "PFADD", "PFCOUNT", "PFDEBUG", "PFMERGE", "PFSELFTEST", "PING", "PSETEX", "PSUBSCRIBE", "PSYNC",
    "PTTL", "PUBLISH", "PUBSUB", "PUNSUBSCRIBE", "QUIT", "RANDOMKEY", "READONLY", "READWRITE", "RENAME", "RENAMENX",
    "REPLCONF", "REPLICAOF", "RESET", "RESTORE", "RESTORE-ASKING", "ROLE", "RPOP", "RPOPLPUSH", "RPUSH", "RPUSHX",
    "SADD", "SAVE", "SCAN", "SCARD", "SCRIPT", "SDIFF", "SDIFFSTORE", "SELECT", "SET", "SETBIT", "SETEX", "SETNX",
    "SETRANGE", "SHUTDOWN", "SINTER", "SINTERCARD", "SINTERSTORE", "SISMEMBER", "SLAVEOF", "SLOWLOG", "SMEMBERS",
    "SMISMEMBER", "SMOVE", "SORT", "SORT_RO", "SPOP", "SPUBLISH", "SRANDMEMBER", "SREM", "SSCAN", "SSUBSCRIBE",
    "STRLEN", "SUBSCRIBE", "SUBSTR", "SUNION", "SUNIONSTORE", "SUNSUBSCRIBE", "SWAPDB", "SYNC", "TIME", "TOUCH", "TTL",
    "TYPE", "UNLINK", "UNSUBSCRIBE", "UNWATCH", "WAIT", "WAITAOF", "WATCH", "XACK", "XADD", "XAUTOCLAIM", "XCLAIM",
    "XDEL", "XGROUP", "XINFO", "XLEN", "XPENDING", "XRANGE", "XREAD", "XREADGROUP", "XREVRANGE", "XSETID", "XTRIM",
    "ZADD", "ZCARD", "ZCOUNT", "ZDIFF", "ZDIFFSTORE", "ZINCRBY", "ZINTER", "ZINTERCARD", "ZINTERSTORE", "ZLEXCOUNT",
    "ZMPOP", "ZMSCORE", "ZPOPMAX", "ZPOPMIN", "ZRANDMEMBER", "ZRANGE", "ZRANGEBYLEX", "ZRANGEBYSCORE", "ZRANGESTORE",
    "ZRANK", "ZREM", "ZREMRANGEBYLEX", "ZREMRANGEBYRANK", "ZREMRANGEBYSCORE", "ZREVRANGE", "ZREVRANGEBYLEX",
    "ZREVRANGEBYSCORE", "ZREVRANK", "ZSCAN", "ZSCORE", "ZUNION", "ZUNIONSTORE", "JSON.GET", "JSON.SET", "FT.SEARCH",
    "FT.CREATE", "SENTINEL"};

constexpr std::string_view kWithoutKey[] = {
    "ACL", "ASKING", "AUTH", "BGREWRITEAOF", "BGSAVE", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DBSIZE", "DEBUG",
    "DISCARD", "ECHO", "EXEC", "FAILOVER", "FLUSHALL", "FLUSHDB", "FUNCTION", "HELLO", "INFO", "LASTSAVE", "LATENCY",
    "LOLWUT", "MEMORY", "MODULE", "MONITOR", "MULTI", "PING", "PSYNC", "QUIT", "READONLY", "READWRITE", "REPLCONF",
    "REPLICAOF", "RESET", "ROLE", "SAVE", "SCRIPT", "SELECT", "SHUTDOWN", "SLAVEOF", "SLOWLOG", "SWAPDB", "SYNC",
    "TIME", "WAIT"};

// Error prefixes a Redis server sends (server-side detection).
constexpr std::string_view kErrorPrefixes[] = {
    "ERR",       "WRONGTYPE", "NOAUTH",    "WRONGPASS",   "NOPERM",      "MOVED",    "ASK",   "LOADING",
    "BUSY",      "NOSCRIPT",  "READONLY",  "EXECABORT",   "MISCONF",     "OOM",      "NOPROTO", "CROSSSLOT",
    "TRYAGAIN",  "CLUSTERDOWN", "BUSYKEY", "NOREPLICAS",  "MASTERDOWN",  "UNBLOCKED"};

std::string upper(std::string_view s) {
  std::string u(s);
  for (char& c : u)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  return u;
}

size_t line_cap(char type, const RespLimits& lim) {
  switch (type) {
    case '+':
    case '-':
    case '(':
    case 'i':
      return lim.max_line;
    case ',':
      return 64;
    default:
      return 24;  // a length or count, or an integer: "-9223372036854775808\r\n" and the type byte
  }
}

bool reply_type(uint8_t c) {
  switch (c) {
    case '+': case '-': case ':': case '$': case '*': case '_': case '#': case ',': case '(': case '!': case '=':
    case '%': case '~': case '|': case '>':
      return true;
    default:
      return false;
  }
}

// Splits an inline command as Redis does (sdssplitargs): words between
// spaces, "double quoted" with \ escapes, 'single quoted'.
std::vector<std::string> split_inline(std::string_view s, bool& ok) {
  std::vector<std::string> words;
  ok = true;
  size_t i = 0;
  while (true) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n' || s[i] == '\v' || s[i] == '\f')) i++;
    if (i >= s.size()) break;
    std::string w;
    bool inq = false, insq = false, done = false;
    while (!done) {
      if (inq) {
        if (i >= s.size()) {
          ok = false;
          return words;
        }
        if (s[i] == '\\' && i + 1 < s.size()) {
          i++;
          char c = s[i];
          w += c == 'n' ? '\n' : c == 'r' ? '\r' : c == 't' ? '\t' : c == 'b' ? '\b' : c == 'a' ? '\a' : c;
        } else if (s[i] == '"') {
          if (i + 1 < s.size() && s[i + 1] != ' ' && s[i + 1] != '\t') {
            ok = false;
            return words;
          }
          done = true;
        } else {
          w += s[i];
        }
      } else if (insq) {
        if (i >= s.size()) {
          ok = false;
          return words;
        }
        if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == '\'') {
          i++;
          w += '\'';
        } else if (s[i] == '\'') {
          if (i + 1 < s.size() && s[i + 1] != ' ' && s[i + 1] != '\t') {
            ok = false;
            return words;
          }
          done = true;
        } else {
          w += s[i];
        }
      } else {
        if (i >= s.size()) break;
        char c = s[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f') {
          done = true;
        } else if (c == '"') {
          inq = true;
        } else if (c == '\'') {
          insq = true;
        } else {
          w += c;
        }
      }
      if (i < s.size()) i++;
    }
    words.push_back(std::move(w));
    if (words.size() > 1024 * 1024) break;
  }
  return words;
}

}  // namespace

std::string_view redis_known_command(std::string_view name) {
  if (name.empty() || name.size() > 24) return {};
  const std::string u = upper(name);
  for (std::string_view c : kCommands)
    if (c == u) return c;
  return {};
}

bool redis_command_without_key(std::string_view u) {
  return std::find(std::begin(kWithoutKey), std::end(kWithoutKey), u) != std::end(kWithoutKey);
}

// --------------------------------------------------------------- values --

const char* RespValue::type_name() const {
  switch (type) {
    case '+': return "simple_string";
    case '-': return "error";
    case ':': return "integer";
    case '$': return "bulk_string";
    case '*': return "array";
    case '_': return "null";
    case '#': return "boolean";
    case ',': return "double";
    case '(': return "big_number";
    case '!': return "blob_error";
    case '=': return "verbatim_string";
    case '%': return "map";
    case '~': return "set";
    case '>': return "push";
    case 'i': return "inline";
    default: return "invalid";  // broken before its type was known
  }
}

void RespValue::write_json(JsonOut& out) const {
  if (null || type == '_') return out.null();
  switch (type) {
    case ':': {
      int64_t v = 0;
      if (parse_int(text, true, v)) return out.number(v);
      return out.string(text);
    }
    case '#':
      return out.boolean(text == "t");
    case '%': {
      out.begin_object();
      for (size_t i = 0; i + 1 < items.size(); i += 2) {
        out.key(items[i].aggregate() ? std::string_view("[...]") : std::string_view(items[i].text));
        items[i + 1].write_json(out);
      }
      return out.end_object();
    }
    case '*':
    case '~':
    case '>':
    case 'i':
      out.begin_array();
      for (const RespValue& v : items) v.write_json(out);
      return out.end_array();
    default:
      return out.string(text);
  }
}

size_t resp_value_heap_bytes(const RespValue& v) {
  size_t n = string_heap_bytes(v.text) + vector_heap_bytes(v.items);
  for (const RespValue& i : v.items) n += resp_value_heap_bytes(i);
  return n;
}

// --------------------------------------------------------------- parser --

bool RespParser::valid_start(uint8_t c) const {
  if (side_ == Side::Replies) return reply_type(c);
  // An inline command starts a stream, or follows a message; after a
  // resync (where a word may well be the tail of a value) only an array does.
  return c == '*' || (is_alpha(c) && !resynced_);
}

void RespParser::begin_message(uint64_t ts) {
  in_message_ = true;
  msg_.ts_first_ns = ts;
  if (gap_next_) msg_.gap = true;
  if (shed_next_) msg_.memory_shed = true;
  gap_next_ = shed_next_ = false;
}

void RespParser::reset_message() {
  msg_ = RespMessage();
  stack_.clear();
  line_.clear();
  if (line_.capacity() > 4096) std::string().swap(line_);
  bulk_node_ = nullptr;
  bulk_left_ = 0;
  kept_ = items_ = kept_held_ = 0;
  in_message_ = false;
}

RespValue* RespParser::new_element(char type) {
  RespValue* v = nullptr;
  if (stack_.empty()) {
    v = &msg_.value;
  } else {
    Frame& f = stack_.back();
    if (f.node && items_ < lim_.max_items) {
      v = &f.node->items.emplace_back();
      items_++;
    } else if (f.node) {
      f.node->truncated = true;
      msg_.truncated = true;
    }
  }
  if (v) v->type = type;
  return v;
}

void RespParser::keep(RespValue* v, std::string_view s) {
  if (!v || s.empty()) return;
  const size_t room = lim_.max_kept > kept_ ? lim_.max_kept - kept_ : 0;
  const size_t n = std::min(room, s.size());
  if (n < s.size()) {
    v->truncated = true;
    msg_.truncated = true;
  }
  v->text.append(s.substr(0, n));
  kept_ += n;
  kept_held_ += n;
}

void RespParser::finish(std::vector<RespMessage>& out) {
  msg_.heap = resp_value_heap_bytes(msg_.value) + string_heap_bytes(msg_.error);
  out.push_back(std::move(msg_));
  messages_++;
  seen_message_ = true;
  resynced_ = false;
  reset_message();
  state_ = State::Start;
}

void RespParser::fail(const std::string& why, std::vector<RespMessage>& out) {
  if (seen_message_) {
    protocol_errors_++;
    if (!in_message_) begin_message(msg_.ts_last_ns);
    msg_.protocol_error = true;
    msg_.incomplete = true;
    msg_.error = why;
    if (!msg_.value.type && side_ == Side::Commands) msg_.value.type = '*';
    finish(out);
    seen_message_ = false;
  } else {
    reset_message();
  }
  state_ = State::Resync;
  resynced_ = true;
}

// A scalar or an aggregate was completed: it counts as an element of the
// aggregate around it (attributes aside); the message is done when the
// outermost value is.
void RespParser::element_done(std::vector<RespMessage>& out) {
  state_ = State::Start;
  while (true) {
    if (stack_.empty()) return finish(out);
    Frame& f = stack_.back();
    if (--f.left > 0) return;
    const bool attribute = f.attribute;
    stack_.pop_back();
    if (attribute) return;  // an attribute annotates the value after it: not an element itself
  }
}

bool RespParser::inline_command() {
  std::string_view s(line_);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.remove_suffix(1);
  bool ok = true;
  std::vector<std::string> words = split_inline(s, ok);
  if (words.empty()) return true;  // an empty line: Redis ignores it (no reply)
  if (!seen_message_ && redis_known_command(words[0]).empty()) return false;
  msg_.value.type = 'i';
  msg_.value.count = static_cast<int64_t>(words.size());
  for (const std::string& w : words) {
    if (items_ >= lim_.max_items) {
      msg_.value.truncated = msg_.truncated = true;
      break;
    }
    RespValue& v = msg_.value.items.emplace_back();
    items_++;
    v.type = '$';
    v.count = static_cast<int64_t>(w.size());
    keep(&v, w);
  }
  if (!ok) {
    msg_.protocol_error = true;
    msg_.error = "unbalanced quotes in inline command";
    protocol_errors_++;
  }
  return true;
}

// The header line in line_ (type byte first, CRLF last) is complete.
bool RespParser::take_line(uint64_t ts, std::vector<RespMessage>& out) {
  const char type = line_[0];
  const bool top = stack_.empty();
  if (side_ == Side::Commands && type != '*' && top) {
    msg_.ts_last_ns = ts;
    if (!inline_command()) {  // not in sync yet, and not a command Redis knows: keep looking
      reset_message();
      resynced_ = true;
      return false;
    }
    if (msg_.value.type) {
      msg_.wire_size = line_.size();
      finish(out);
    } else {
      reset_message();  // an empty line
      state_ = State::Start;
    }
    return true;
  }
  if (line_.size() < 3 || line_[line_.size() - 2] != '\r') {
    fail("line not ended by CRLF", out);
    return false;
  }
  const std::string_view body(line_.data() + 1, line_.size() - 3);
  if (side_ == Side::Commands && ((top && type != '*') || (!top && type != '$'))) {
    fail(std::string("expected '$', got '") + type + "'", out);
    return false;
  }
  int64_t n = 0;
  switch (type) {
    case '+':
    case '-':
    case '(':
    case ',': {
      if (type == '(' && (body.empty() || body.find_first_not_of("-0123456789") != std::string_view::npos)) {
        fail("bad big number", out);
        return false;
      }
      if (type == ',' && body.empty()) {
        fail("empty double", out);
        return false;
      }
      RespValue* v = new_element(type);
      if (v) v->count = static_cast<int64_t>(body.size());
      keep(v, body);
      element_done(out);
      return true;
    }
    case ':':
      if (!parse_int(body, true, n)) {
        fail("bad integer", out);
        return false;
      }
      keep(new_element(type), body);
      element_done(out);
      return true;
    case '#':
      if (body != "t" && body != "f") {
        fail("bad boolean", out);
        return false;
      }
      keep(new_element(type), body);
      element_done(out);
      return true;
    case '_':
      if (!body.empty()) {
        fail("bad null", out);
        return false;
      }
      if (RespValue* v = new_element(type)) v->null = true;
      element_done(out);
      return true;
    case '$':
    case '!':
    case '=': {
      if (type == '$' && body == "-1" && side_ == Side::Replies) {
        if (RespValue* v = new_element(type)) v->null = true;
        element_done(out);
        return true;
      }
      if (!parse_int(body, false, n) || static_cast<uint64_t>(n) > lim_.max_bulk) {
        fail("bad bulk length '" + std::string(body.substr(0, 24)) + "'", out);
        return false;
      }
      bulk_node_ = new_element(type);
      if (bulk_node_) bulk_node_->count = n;
      bulk_left_ = static_cast<uint64_t>(n);
      state_ = n ? State::Bulk : State::BulkCr;
      return true;
    }
    case '*':
    case '%':
    case '~':
    case '>':
    case '|': {
      if (type == '*' && body == "-1") {
        if (side_ == Side::Commands) {  // Redis ignores it
          reset_message();
          state_ = State::Start;
          return true;
        }
        if (RespValue* v = new_element(type)) v->null = true;
        element_done(out);
        return true;
      }
      if (!parse_int(body, false, n) || static_cast<uint64_t>(n) > lim_.max_count) {
        fail(std::string("bad count '") + std::string(body.substr(0, 24)) + "'", out);
        return false;
      }
      if (stack_.size() >= lim_.max_depth) {
        fail("nesting deeper than " + std::to_string(lim_.max_depth), out);
        return false;
      }
      if (side_ == Side::Commands && n == 0) {  // "*0": Redis ignores it
        reset_message();
        state_ = State::Start;
        return true;
      }
      const uint64_t elements = (type == '%' || type == '|') ? 2 * static_cast<uint64_t>(n) : static_cast<uint64_t>(n);
      if (type == '|') {
        if (elements) stack_.push_back({nullptr, elements, true});
        state_ = State::Start;
        return true;
      }
      RespValue* v = new_element(type);
      if (v) v->count = n;
      if (elements == 0) {
        element_done(out);
        return true;
      }
      stack_.push_back({v, elements, false});
      state_ = State::Start;
      return true;
    }
    default:
      fail(std::string("unknown type byte 0x") + "0123456789abcdef"[(type >> 4) & 15] + "0123456789abcdef"[type & 15],
           out);
      return false;
  }
}

ParseResult RespParser::feed(std::span<const uint8_t> in, uint64_t ts, std::vector<RespMessage>& out) {
  size_t i = 0;
  while (i < in.size()) {
    const uint8_t c = in[i];
    switch (state_) {
      case State::Resync:
        i++;
        if (c == '\n') state_ = State::ResyncLineStart;
        continue;
      case State::ResyncLineStart:
        if (valid_start(c)) {
          state_ = State::Start;
        } else {
          i++;
          if (c != '\n') state_ = State::Resync;
        }
        continue;
      case State::Start:
        if (!in_message_) {
          if (side_ == Side::Commands && (c == '\r' || c == '\n')) {  // stray line ends between commands
            i++;
            continue;
          }
          if (!seen_message_ && !valid_start(c)) {
            state_ = State::Resync;
            resynced_ = true;
            continue;
          }
          begin_message(ts);
        }
        line_.assign(1, static_cast<char>(c));
        msg_.wire_size++;
        msg_.ts_last_ns = ts;
        i++;
        state_ = State::Line;
        continue;
      case State::Line: {
        // Up to the line's end at once.
        const char type = line_[0];
        const bool inline_cmd = side_ == Side::Commands && type != '*' && stack_.empty();
        const size_t cap = line_cap(inline_cmd ? 'i' : type, lim_);
        const uint8_t* p = in.data() + i;
        const uint8_t* lf = static_cast<const uint8_t*>(std::memchr(p, '\n', in.size() - i));
        const size_t n = lf ? static_cast<size_t>(lf - p) + 1 : in.size() - i;
        if (line_.size() + n > cap + 2) {
          // One byte past the cap (so the same whatever the split; the line's end is further on).
          const size_t k = cap + 3 - line_.size();
          msg_.wire_size += k;
          i += k;
          fail(inline_cmd ? "inline command longer than " + std::to_string(cap) + " bytes"
                          : "header line longer than " + std::to_string(cap) + " bytes",
               out);
          continue;
        }
        line_.append(reinterpret_cast<const char*>(p), n);
        msg_.wire_size += n;
        msg_.ts_last_ns = ts;
        i += n;
        if (lf && !take_line(ts, out)) state_ = State::ResyncLineStart;
        continue;
      }
      case State::Bulk: {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(bulk_left_, in.size() - i));
        keep(bulk_node_, std::string_view(reinterpret_cast<const char*>(in.data() + i), n));
        bulk_left_ -= n;
        msg_.wire_size += n;
        msg_.ts_last_ns = ts;
        i += n;
        if (!bulk_left_) state_ = State::BulkCr;
        continue;
      }
      case State::BulkCr:
      case State::BulkLf:
        msg_.wire_size++;
        msg_.ts_last_ns = ts;
        i++;
        if (c != (state_ == State::BulkCr ? '\r' : '\n')) {
          fail("bulk string not ended by CRLF", out);
          if (c == '\n') state_ = State::ResyncLineStart;
          continue;
        }
        if (state_ == State::BulkCr) {
          state_ = State::BulkLf;
          continue;
        }
        if (bulk_node_ && bulk_node_->type == '=' && bulk_node_->text.size() >= 4 && bulk_node_->text[3] == ':')
          bulk_node_->text.erase(0, 4);  // "txt:": the format of a verbatim string
        bulk_node_ = nullptr;
        element_done(out);
        continue;
    }
  }
  return {ParseStatus::Done, in.size()};
}

void RespParser::on_gap(uint64_t, std::vector<RespMessage>& out) {
  if (in_message_ && seen_message_) {
    msg_.gap = msg_.incomplete = true;
    finish(out);
  } else {
    reset_message();
  }
  seen_message_ = false;
  resynced_ = true;
  gap_next_ = true;
  state_ = State::ResyncLineStart;
}

void RespParser::on_close(uint64_t ts, std::vector<RespMessage>& out) {
  if (in_message_ && seen_message_) {
    msg_.incomplete = true;
    if (!msg_.ts_last_ns) msg_.ts_last_ns = ts;
    finish(out);
  } else {
    reset_message();
  }
  state_ = State::Start;
}

size_t RespParser::shed_partial() {
  if (!in_message_ || !kept_) return 0;
  // The kept strings go; the structure (and the budget used) stays, so
  // the rest of the message is parsed as before.
  size_t freed = 0;
  auto drop = [&](auto& self, RespValue& v) -> void {
    freed += string_heap_bytes(v.text);
    if (!v.text.empty()) v.truncated = true;
    std::string().swap(v.text);
    for (RespValue& i : v.items) self(self, i);
  };
  drop(drop, msg_.value);
  msg_.memory_shed = msg_.truncated = true;
  kept_held_ = 0;
  return freed;
}

size_t RespParser::memory_bytes() const {
  // The message in progress: its kept strings and elements (vectors may be
  // twice their size), the header line and the stack.
  return string_heap_bytes(line_) + vector_heap_bytes(stack_) + 2 * (kept_held_ + items_ * (sizeof(RespValue) + 16));
}

// ------------------------------------------------------------ detection --

namespace {
int detect_start(std::span<const uint8_t> s);
}  // namespace

int resp_detect(std::span<const uint8_t> s) {
  const int r = detect_start(s);
  if (r != 0) return r;
  // Joined in the middle: a command (a RESP array of bulk strings whose
  // first is a command Redis knows) starting on a line of its own further on.
  const std::string_view t(reinterpret_cast<const char*>(s.data()), s.size());
  for (size_t at = t.find("\r\n*"); at != std::string_view::npos; at = t.find("\r\n*", at + 2))
    if (detect_start(s.subspan(at + 2)) == 1) return 1;
  return 0;
}

namespace {
int detect_start(std::span<const uint8_t> s) {
  if (s.empty()) return -1;
  const std::string_view t(reinterpret_cast<const char*>(s.data()), s.size());
  // A line of the input from `at`: its body (without CRLF), or -1 for more bytes, 0 for no.
  auto line = [&](size_t at, size_t max, std::string_view& body) -> int {
    const size_t lf = t.find('\n', at);
    if (lf == std::string_view::npos) return t.size() - at > max + 1 ? 0 : -1;
    if (lf == at || t[lf - 1] != '\r' || lf - 1 - at > max) return 0;
    body = t.substr(at, lf - 1 - at);
    return 1;
  };
  auto digits = [](std::string_view b, int64_t lo, int64_t hi) {
    int64_t v = 0;
    return parse_int(b, false, v) && v >= lo && v <= hi;
  };
  const uint8_t c0 = s[0];
  std::string_view b;
  switch (c0) {
    case '*': {  // *<n>\r\n$<len>\r\n<name>\r\n
      int r = line(1, 8, b);
      if (r <= 0) return r;
      if (!digits(b, 1, 1 << 20)) return 0;
      size_t at = 1 + b.size() + 2;
      if (at >= t.size()) return -1;
      if (t[at] != '$') return 0;
      r = line(at + 1, 10, b);
      if (r <= 0) return r;
      int64_t len = 0;
      if (!parse_int(b, false, len) || len < 1 || len > 512 * 1024 * 1024) return 0;
      at += 1 + b.size() + 2;
      if (len > 64) return 2;  // not a command name: a reply's bulk string
      if (t.size() < at + static_cast<size_t>(len) + 2) return -1;
      const std::string_view name = t.substr(at, static_cast<size_t>(len));
      if (t.substr(at + static_cast<size_t>(len), 2) != "\r\n") return 0;
      return redis_known_command(name).empty() ? 2 : 1;
    }
    case '+': {
      int r = line(1, 16, b);
      if (r <= 0) return r;
      return (b == "OK" || b == "PONG" || b == "QUEUED") ? 2 : 0;
    }
    case '-': {
      int r = line(1, 512, b);
      if (r <= 0) return r;
      const std::string_view word = b.substr(0, b.find(' '));
      if (word.size() == b.size()) return 0;
      if (std::find(std::begin(kErrorPrefixes), std::end(kErrorPrefixes), word) == std::end(kErrorPrefixes)) return 0;
      for (char c : b)
        if (static_cast<uint8_t>(c) < 0x20 || static_cast<uint8_t>(c) > 0x7e) return 0;
      return 2;
    }
    case ':': {
      int r = line(1, 20, b);
      if (r <= 0) return r;
      int64_t v = 0;
      return parse_int(b, true, v) ? 2 : 0;
    }
    case '$': {
      int r = line(1, 10, b);
      if (r <= 0) return r;
      if (b == "-1") return 2;
      int64_t len = 0;
      if (!parse_int(b, false, len) || len > 512 * 1024 * 1024) return 0;
      const size_t end = 1 + b.size() + 2 + static_cast<size_t>(len);
      if (end + 2 > 4096) return 2;  // more than detection holds: the header has to do
      if (t.size() < end + 2) return -1;
      return t.substr(end, 2) == "\r\n" ? 2 : 0;
    }
    default:
      break;
  }
  // An inline command: a name Redis knows, then a space or the line's end;
  // the whole line printable.
  if (!is_alpha(c0)) return 0;
  size_t i = 0;
  while (i < t.size() && i < 32 && (is_alpha(static_cast<uint8_t>(t[i])) || t[i] == '.')) i++;
  if (i == t.size()) return i < 32 ? -1 : 0;
  if (t[i] != ' ' && t[i] != '\r' && t[i] != '\n') return 0;
  if (redis_known_command(t.substr(0, i)).empty()) return 0;
  const size_t lf = t.find('\n');
  if (lf == std::string_view::npos) return t.size() < 512 ? -1 : 0;
  if (lf > 512) return 0;
  if (t.substr(0, lf).find(" HTTP/") != std::string_view::npos) return 0;  // an HTTP request line
  for (size_t k = 0; k < lf; k++) {
    const uint8_t c = s[k];
    if ((c < 0x20 || c > 0x7e) && c != '\t' && !(c == '\r' && k + 1 == lf)) return 0;
  }
  return 1;
}

}  // namespace

}  // namespace tapwire::proto

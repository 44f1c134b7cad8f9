#include "amqp/amqp.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "json_out.hpp"

namespace tapwire::proto {
namespace {

using K = AmqpKind;

// AMQP 0-9-1 (amqp0-9-1.xml) with RabbitMQ's extensions (exchange.bind /
// unbind, basic.nack, confirm, connection.blocked / unblocked / update-secret).
constexpr AmqpMethodInfo kMethods[] = {
    {10, 10, "connection.start", K::Sync, 11, 0, false,
     "o.version_major o.version_minor F.server_properties T.mechanisms T.locales"},
    {10, 11, "connection.start-ok", K::Reply, 0, 0, false, "F.client_properties S.mechanism X.response S.locale"},
    {10, 20, "connection.secure", K::Sync, 21, 0, false, "X.challenge"},
    {10, 21, "connection.secure-ok", K::Reply, 0, 0, false, "X.response"},
    {10, 30, "connection.tune", K::Sync, 31, 0, false, "s.channel_max l.frame_max s.heartbeat"},
    {10, 31, "connection.tune-ok", K::Reply, 0, 0, false, "s.channel_max l.frame_max s.heartbeat"},
    {10, 40, "connection.open", K::Sync, 41, 0, false, "S.virtual_host S.reserved b.reserved"},
    {10, 41, "connection.open-ok", K::Reply, 0, 0, false, "S.reserved"},
    {10, 50, "connection.close", K::Sync, 51, 0, false, "s.reply_code S.reply_text s.class_id s.method_id"},
    {10, 51, "connection.close-ok", K::Reply, 0, 0, false, ""},
    {10, 60, "connection.blocked", K::Async, 0, 0, false, "S.reason"},
    {10, 61, "connection.unblocked", K::Async, 0, 0, false, ""},
    {10, 70, "connection.update-secret", K::Sync, 71, 0, false, "X.new_secret S.reason"},
    {10, 71, "connection.update-secret-ok", K::Reply, 0, 0, false, ""},
    {20, 10, "channel.open", K::Sync, 11, 0, false, "S.reserved"},
    {20, 11, "channel.open-ok", K::Reply, 0, 0, false, "T.reserved"},
    {20, 20, "channel.flow", K::Sync, 21, 0, false, "b.active"},
    {20, 21, "channel.flow-ok", K::Reply, 0, 0, false, "b.active"},
    {20, 40, "channel.close", K::Sync, 41, 0, false, "s.reply_code S.reply_text s.class_id s.method_id"},
    {20, 41, "channel.close-ok", K::Reply, 0, 0, false, ""},
    {30, 10, "access.request", K::Sync, 11, 0, false, "S.realm b.exclusive b.passive b.active b.write b.read"},
    {30, 11, "access.request-ok", K::Reply, 0, 0, false, "s.reserved"},
    {40, 10, "exchange.declare", K::Sync, 11, 0, false,
     "s.reserved S.exchange S.type b.passive b.durable b.auto_delete b.internal b.nowait F.arguments"},
    {40, 11, "exchange.declare-ok", K::Reply, 0, 0, false, ""},
    {40, 20, "exchange.delete", K::Sync, 21, 0, false, "s.reserved S.exchange b.if_unused b.nowait"},
    {40, 21, "exchange.delete-ok", K::Reply, 0, 0, false, ""},
    {40, 30, "exchange.bind", K::Sync, 31, 0, false,
     "s.reserved S.destination S.source S.routing_key b.nowait F.arguments"},
    {40, 31, "exchange.bind-ok", K::Reply, 0, 0, false, ""},
    {40, 40, "exchange.unbind", K::Sync, 51, 0, false,
     "s.reserved S.destination S.source S.routing_key b.nowait F.arguments"},
    {40, 51, "exchange.unbind-ok", K::Reply, 0, 0, false, ""},
    {50, 10, "queue.declare", K::Sync, 11, 0, false,
     "s.reserved S.queue b.passive b.durable b.exclusive b.auto_delete b.nowait F.arguments"},
    {50, 11, "queue.declare-ok", K::Reply, 0, 0, false, "S.queue l.message_count l.consumer_count"},
    {50, 20, "queue.bind", K::Sync, 21, 0, false, "s.reserved S.queue S.exchange S.routing_key b.nowait F.arguments"},
    {50, 21, "queue.bind-ok", K::Reply, 0, 0, false, ""},
    {50, 30, "queue.purge", K::Sync, 31, 0, false, "s.reserved S.queue b.nowait"},
    {50, 31, "queue.purge-ok", K::Reply, 0, 0, false, "l.message_count"},
    {50, 40, "queue.delete", K::Sync, 41, 0, false, "s.reserved S.queue b.if_unused b.if_empty b.nowait"},
    {50, 41, "queue.delete-ok", K::Reply, 0, 0, false, "l.message_count"},
    {50, 50, "queue.unbind", K::Sync, 51, 0, false, "s.reserved S.queue S.exchange S.routing_key F.arguments"},
    {50, 51, "queue.unbind-ok", K::Reply, 0, 0, false, ""},
    {60, 10, "basic.qos", K::Sync, 11, 0, false, "l.prefetch_size s.prefetch_count b.global"},
    {60, 11, "basic.qos-ok", K::Reply, 0, 0, false, ""},
    {60, 20, "basic.consume", K::Sync, 21, 0, false,
     "s.reserved S.queue S.consumer_tag b.no_local b.no_ack b.exclusive b.nowait F.arguments"},
    {60, 21, "basic.consume-ok", K::Reply, 0, 0, false, "S.consumer_tag"},
    {60, 30, "basic.cancel", K::Sync, 31, 0, false, "S.consumer_tag b.nowait"},
    {60, 31, "basic.cancel-ok", K::Reply, 0, 0, false, "S.consumer_tag"},
    {60, 40, "basic.publish", K::Async, 0, 0, true, "s.reserved S.exchange S.routing_key b.mandatory b.immediate"},
    {60, 50, "basic.return", K::Async, 0, 0, true, "s.reply_code S.reply_text S.exchange S.routing_key"},
    {60, 60, "basic.deliver", K::Async, 0, 0, true,
     "S.consumer_tag L.delivery_tag b.redelivered S.exchange S.routing_key"},
    {60, 70, "basic.get", K::Sync, 71, 72, false, "s.reserved S.queue b.no_ack"},
    {60, 71, "basic.get-ok", K::Reply, 0, 0, true,
     "L.delivery_tag b.redelivered S.exchange S.routing_key l.message_count"},
    {60, 72, "basic.get-empty", K::Reply, 0, 0, false, "S.reserved"},
    {60, 80, "basic.ack", K::Async, 0, 0, false, "L.delivery_tag b.multiple"},
    {60, 90, "basic.reject", K::Async, 0, 0, false, "L.delivery_tag b.requeue"},
    {60, 100, "basic.recover-async", K::Async, 0, 0, false, "b.requeue"},
    {60, 110, "basic.recover", K::Sync, 111, 0, false, "b.requeue"},
    {60, 111, "basic.recover-ok", K::Reply, 0, 0, false, ""},
    {60, 120, "basic.nack", K::Async, 0, 0, false, "L.delivery_tag b.multiple b.requeue"},
    {85, 10, "confirm.select", K::Sync, 11, 0, false, "b.nowait"},
    {85, 11, "confirm.select-ok", K::Reply, 0, 0, false, ""},
    {90, 10, "tx.select", K::Sync, 11, 0, false, ""},
    {90, 11, "tx.select-ok", K::Reply, 0, 0, false, ""},
    {90, 20, "tx.commit", K::Sync, 21, 0, false, ""},
    {90, 21, "tx.commit-ok", K::Reply, 0, 0, false, ""},
    {90, 30, "tx.rollback", K::Sync, 31, 0, false, ""},
    {90, 31, "tx.rollback-ok", K::Reply, 0, 0, false, ""},
};

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t be32(const uint8_t* p) {
  return uint32_t{p[0]} << 24 | uint32_t{p[1]} << 16 | uint32_t{p[2]} << 8 | uint32_t{p[3]};
}
uint64_t be64(const uint8_t* p) { return uint64_t{be32(p)} << 32 | be32(p + 4); }

// Reads big-endian fields off a span; a read past the end sets `bad` and gives zeros.
struct Cursor {
  std::span<const uint8_t> p;
  size_t at = 0;
  bool bad = false;

  bool has(size_t n) {
    if (p.size() - at >= n) return true;
    bad = true;
    return false;
  }
  uint8_t u8() { return has(1) ? p[at++] : 0; }
  uint16_t u16() {
    if (!has(2)) return 0;
    at += 2;
    return be16(&p[at - 2]);
  }
  uint32_t u32() {
    if (!has(4)) return 0;
    at += 4;
    return be32(&p[at - 4]);
  }
  uint64_t u64() {
    if (!has(8)) return 0;
    at += 8;
    return be64(&p[at - 8]);
  }
  std::string_view bytes(size_t n) {
    if (!has(n)) return {};
    at += n;
    return {reinterpret_cast<const char*>(&p[at - n]), n};
  }
  std::string_view shortstr() { return bytes(u8()); }
  std::string_view longstr() {
    const uint32_t n = u32();
    return bad ? std::string_view{} : bytes(n);
  }
};

// Field tables and arrays as JSON, within the limits: entries counted
// across the message, depth capped, strings cut. A value beyond a limit
// is skipped by its length (tables and arrays carry theirs).
struct TableWriter {
  const AmqpLimits& lim;
  AmqpMessage& m;
  size_t entries = 0;

  std::string_view cut(std::string_view s) {
    if (s.size() <= lim.max_string) return s;
    m.truncated = true;
    return s.substr(0, lim.max_string);
  }

  void real(JsonOut& out, double v) {
    if (!std::isfinite(v)) return out.string(std::isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity");
    char b[40];
    std::snprintf(b, sizeof b, "%.17g", v);
    out.raw(b);
  }

  // One value of type `t`; false when it cannot be read (the rest of the table is lost).
  bool value(JsonOut& out, Cursor& c, uint8_t t, int depth) {
    switch (t) {
      case 't': out.boolean(c.u8() != 0); break;
      case 'b': out.number(static_cast<int8_t>(c.u8())); break;
      case 'B': out.number(c.u8()); break;
      case 's': out.number(static_cast<int16_t>(c.u16())); break;
      case 'u': out.number(c.u16()); break;
      case 'I': out.number(static_cast<int32_t>(c.u32())); break;
      case 'i': out.number(c.u32()); break;
      case 'l': out.number(static_cast<int64_t>(c.u64())); break;
      case 'T': out.unsigned_number(c.u64()); break;
      case 'f': {
        const uint32_t u = c.u32();
        float f;
        std::memcpy(&f, &u, 4);
        real(out, f);
        break;
      }
      case 'd': {
        const uint64_t u = c.u64();
        double d;
        std::memcpy(&d, &u, 8);
        real(out, d);
        break;
      }
      case 'D': {
        const uint8_t scale = c.u8();
        const int32_t v = static_cast<int32_t>(c.u32());
        real(out, v / std::pow(10.0, scale));
        break;
      }
      case 'S':
      case 'x': out.string(cut(c.longstr())); break;
      case 'V': out.null(); break;
      case 'F':
      case 'A': {
        const uint32_t n = c.u32();
        if (c.bad || !c.has(n)) {
          out.null();  // the key has its value: the JSON stays whole
          return false;
        }
        Cursor inner{c.p.subspan(c.at, n)};
        c.at += n;
        if (depth >= lim.max_table_depth) {
          m.truncated = true;
          out.string("(nested too deep)");
          break;
        }
        if (t == 'F')
          table(out, inner, depth + 1);
        else
          array(out, inner, depth + 1);
        break;
      }
      default:
        m.protocol_error = true;
        if (m.error.empty()) m.error = "unknown field value type";
        out.null();
        return false;
    }
    return !c.bad;
  }

  // A table's body (its length already taken off).
  void table(JsonOut& out, Cursor& c, int depth) {
    out.begin_object();
    while (c.at < c.p.size()) {
      if (++entries > lim.max_table_entries) {
        m.truncated = true;
        break;
      }
      std::string_view k = c.shortstr();
      const uint8_t t = c.u8();
      if (c.bad) break;
      out.key(cut(k));
      if (!value(out, c, t, depth)) {
        if (c.bad) mark_short();
        break;
      }
    }
    out.end_object();
  }

  void array(JsonOut& out, Cursor& c, int depth) {
    out.begin_array();
    while (c.at < c.p.size()) {
      if (++entries > lim.max_table_entries) {
        m.truncated = true;
        break;
      }
      const uint8_t t = c.u8();
      if (c.bad || !value(out, c, t, depth)) {
        if (c.bad) mark_short();
        break;
      }
    }
    out.end_array();
  }

  void mark_short() {
    m.protocol_error = true;
    if (m.error.empty()) m.error = "field table runs past its length";
  }

  // A table argument at the cursor (u32 length, then entries) as JSON text.
  std::string read(Cursor& c) {
    std::string s;
    JsonOut out(s);
    const uint32_t n = c.u32();
    if (c.bad || !c.has(n)) {
      c.bad = true;
      return "{}";
    }
    Cursor inner{c.p.subspan(c.at, n)};
    c.at += n;
    table(out, inner, 1);
    return s;
  }
};

bool known_frame_type(uint8_t t) {
  return t == kAmqpFrameMethod || t == kAmqpFrameHeader || t == kAmqpFrameBody || t == kAmqpFrameHeartbeat;
}

}  // namespace

const AmqpMethodInfo* amqp_method(uint16_t class_id, uint16_t method_id) {
  for (const AmqpMethodInfo& m : kMethods)
    if (m.class_id == class_id && m.method_id == method_id) return &m;
  return nullptr;
}

bool amqp_method_frame_at(std::span<const uint8_t> p, size_t max_size, bool& need_more) {
  need_more = false;
  if (p.empty() || p[0] != kAmqpFrameMethod) return false;
  if (p.size() < 7) {
    need_more = true;
    return false;
  }
  const uint32_t size = be32(&p[3]);
  if (size < 4 || size > max_size) return false;
  if (p.size() < 11) {
    need_more = true;
    return false;
  }
  if (!amqp_method(be16(&p[7]), be16(&p[9]))) return false;
  if (p.size() < size_t{size} + 8) {
    need_more = true;
    return false;
  }
  return p[7 + size] == kAmqpFrameEnd;
}

std::string AmqpMessage::name() const {
  if (info) return info->name;
  return std::to_string(class_id) + "." + std::to_string(method_id);
}

const AmqpField* AmqpMessage::field(std::string_view n) const {
  for (const AmqpField& f : fields)
    if (n == f.name) return &f;
  return nullptr;
}

std::string_view AmqpMessage::str(std::string_view n) const {
  const AmqpField* f = field(n);
  return f && f->kind == 's' ? std::string_view(f->text) : std::string_view{};
}

bool AmqpMessage::num(std::string_view n, uint64_t& v) const {
  const AmqpField* f = field(n);
  if (!f || f->kind != 'u') return false;
  v = f->num;
  return true;
}

bool AmqpMessage::flag(std::string_view n) const {
  const AmqpField* f = field(n);
  return f && f->kind == 'b' && f->num;
}

size_t AmqpMessage::heap_bytes() const {
  size_t n = vector_heap_bytes(fields) + string_heap_bytes(properties_json) + string_heap_bytes(body) +
             string_heap_bytes(content_type) + string_heap_bytes(error);
  for (const AmqpField& f : fields) n += string_heap_bytes(f.text);
  return n;
}

bool amqp_decode_args(const AmqpMethodInfo& info, std::span<const uint8_t> args, const AmqpLimits& lim,
                      AmqpMessage& m) {
  Cursor c{args};
  TableWriter tables{lim, m};
  int bit = 8;  // bits pack into octets: the next bit's position in `bits`
  uint8_t bits = 0;
  std::string_view spec = info.args;
  while (!spec.empty() && !c.bad) {
    const size_t sp = spec.find(' ');
    std::string_view a = spec.substr(0, sp);
    spec = sp == std::string_view::npos ? std::string_view{} : spec.substr(sp + 1);
    const char t = a[0];
    const char* name = a.data() + 2;  // the spec's names end at a space: copy them below
    const size_t name_len = a.size() - 2;
    const bool shown = a.substr(2) != "reserved";
    if (t != 'b') bit = 8;
    AmqpField f{{}, 'u', 0, {}};
    switch (t) {
      case 'o': f.num = c.u8(); break;
      case 's': f.num = c.u16(); break;
      case 'l': f.num = c.u32(); break;
      case 'L':
      case 't': f.num = c.u64(); break;
      case 'b':
        if (bit == 8) {
          bits = c.u8();
          bit = 0;
        }
        f.kind = 'b';
        f.num = (bits >> bit++) & 1;
        break;
      case 'S':
      case 'T': {
        std::string_view s = t == 'S' ? c.shortstr() : c.longstr();
        f.kind = 's';
        if (s.size() > lim.max_string) {
          m.truncated = true;
          s = s.substr(0, lim.max_string);
        }
        f.text.assign(s);
        break;
      }
      case 'X':
        f.kind = 'z';
        f.num = c.longstr().size();
        break;
      case 'F':
        f.kind = 'j';
        f.text = tables.read(c);
        break;
      default: break;
    }
    if (c.bad) break;
    if (!shown) continue;
    f.name = std::string_view(name, name_len);  // into the static spec text
    m.fields.push_back(std::move(f));
  }
  if (c.bad) {
    m.protocol_error = true;
    if (m.error.empty()) m.error = "method arguments run past the frame";
    return false;
  }
  return true;
}

// ------------------------------------------------------------------ parser --

AmqpParser::Content* AmqpParser::content_of(uint16_t channel) {
  for (Content& c : contents_)
    if (c.msg.channel == channel) return &c;
  return nullptr;
}

void AmqpParser::finish_content(size_t i, std::vector<AmqpMessage>& out) {
  out.push_back(std::move(contents_[i].msg));
  contents_.erase(contents_.begin() + static_cast<std::ptrdiff_t>(i));
  if (contents_.empty()) release(contents_);
}

void AmqpParser::broken(std::string_view why) {
  errors_++;
  state_ = State::Hunt;
  gap_pending_ = true;  // the next message follows lost framing
  for (Content& c : contents_) {
    c.msg.protocol_error = true;
    if (c.msg.error.empty()) c.msg.error = why;
  }
}

void AmqpParser::set_frame_max(uint32_t v) {
  frame_max_ = v == 0 ? lim_.max_frame : std::min(std::max<uint32_t>(v, 4096), lim_.max_frame);
}

size_t AmqpParser::shed_body() {
  size_t freed = 0;
  for (Content& c : contents_) {
    const size_t b = string_heap_bytes(c.msg.body);
    if (!b) continue;
    std::string().swap(c.msg.body);
    c.msg.memory_shed = true;
    c.msg.truncated = true;
    freed += b;
  }
  return freed;
}

size_t AmqpParser::memory_bytes() const {
  size_t n = vector_heap_bytes(contents_);
  for (const Content& c : contents_) n += c.msg.heap_bytes();
  return n;
}

void AmqpParser::on_gap(uint64_t len, std::vector<AmqpMessage>& out) {
  if (state_ == State::BodyPayload && len <= left_) {  // the frame's length says where it ends: still in step
    left_ -= len;
    if (Content* c = content_of(channel_)) {
      c->msg.gap = true;
      c->msg.body_received += len;
      c->msg.truncated = true;
    }
    if (left_ == 0) state_ = State::BodyEnd;
    return;
  }
  if (state_ == State::Skip && len <= left_) {
    left_ -= len;
    if (left_ == 0) state_ = State::SkipEnd;
    return;
  }
  for (Content& c : contents_) {
    c.msg.gap = true;
    c.msg.incomplete = true;
    out.push_back(std::move(c.msg));
  }
  release(contents_);
  state_ = State::Hunt;
  gap_pending_ = true;
}

void AmqpParser::on_close(uint64_t ts, std::vector<AmqpMessage>& out) {
  for (Content& c : contents_) {
    c.msg.incomplete = true;
    if (!c.msg.ts_last_ns) c.msg.ts_last_ns = ts;
    out.push_back(std::move(c.msg));
  }
  release(contents_);
}

ParseResult AmqpParser::hunt(std::span<const uint8_t> in) {
  const size_t max = std::min<size_t>(lim_.max_frame_buffered, frame_max_);
  for (size_t i = 0; i < in.size(); i++) {
    if (in[i] != kAmqpFrameMethod) {
      const void* next = std::memchr(in.data() + i, kAmqpFrameMethod, in.size() - i);
      if (!next) return {ParseStatus::Invalid, in.size()};
      i = static_cast<size_t>(static_cast<const uint8_t*>(next) - in.data());
    }
    bool need_more = false;
    if (amqp_method_frame_at(in.subspan(i), max, need_more)) {
      state_ = State::Frame;
      return {i ? ParseStatus::Invalid : ParseStatus::Done, i};
    }
    if (need_more) return {i ? ParseStatus::Invalid : ParseStatus::NeedMoreData, i};
  }
  return {ParseStatus::Invalid, in.size()};
}

ParseResult AmqpParser::feed(std::span<const uint8_t> in, uint64_t ts, std::vector<AmqpMessage>& out) {
  if (in.empty()) return {ParseStatus::NeedMoreData, 0};
  switch (state_) {
    case State::Start: {
      // "AMQP" then the version: 0 0 9 1 is ours; another version (or
      // the server's answer naming the one it speaks) ends this side's
      // framing until a method frame shows up.
      if (in[0] != 'A') {
        state_ = State::Hunt;
        return {ParseStatus::Done, 0};
      }
      if (in.size() < 8) return {ParseStatus::NeedMoreData, 0};
      if (std::memcmp(in.data(), kAmqpProtocolHeader, 8) == 0) {
        state_ = State::Frame;
        return {ParseStatus::Done, 8};
      }
      if (std::memcmp(in.data(), kAmqpProtocolHeader, 4) == 0) errors_++;  // another AMQP version
      state_ = State::Hunt;
      return {ParseStatus::Done, 0};
    }
    case State::Hunt:  // bytes skipped here were not lost: a message after them is flagged only after a gap or broken framing
      return hunt(in);
    case State::Frame: {
      if (in.size() < 7) return {ParseStatus::NeedMoreData, 0};
      const uint8_t type = in[0];
      const uint16_t channel = be16(&in[1]);
      const uint32_t size = be32(&in[3]);
      if (!known_frame_type(type)) {
        broken("unknown frame type");
        return {ParseStatus::Invalid, 1};
      }
      if (size > frame_max_) {
        broken("frame larger than frame-max");
        return {ParseStatus::Invalid, 1};
      }
      if (type == kAmqpFrameBody) {
        channel_ = channel;
        left_ = size;
        Content* c = content_of(channel);
        if (!c || !c->header_seen) errors_++;  // a body no method announced: skipped
        if (c) {
          c->msg.frames++;
          c->msg.ts_last_ns = ts;
        }
        state_ = left_ ? State::BodyPayload : State::BodyEnd;
        return {ParseStatus::Done, 7};
      }
      if (size > lim_.max_frame_buffered) {  // a method or header frame too large to parse: skipped
        channel_ = channel;
        left_ = size;
        errors_++;
        if (Content* c = content_of(channel)) {
          c->msg.truncated = c->msg.protocol_error = true;
          if (c->msg.error.empty()) c->msg.error = "frame too large to parse";
        }
        state_ = left_ ? State::Skip : State::SkipEnd;
        return {ParseStatus::Done, 7};
      }
      const size_t whole = size_t{size} + 8;
      if (in.size() < whole) return {ParseStatus::NeedMoreData, 0};
      if (in[whole - 1] != kAmqpFrameEnd) {
        broken("frame end missing");
        return {ParseStatus::Invalid, 1};
      }
      auto payload = in.subspan(7, size);
      if (type == kAmqpFrameMethod)
        method_frame(channel, payload, ts, out);
      else if (type == kAmqpFrameHeader)
        header_frame(channel, payload, ts, out);
      else
        heartbeats_++;
      return {ParseStatus::Done, whole};
    }
    case State::BodyPayload: {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left_, in.size()));
      body_bytes(in.subspan(0, n), ts);
      left_ -= n;
      if (left_ == 0) state_ = State::BodyEnd;
      return {ParseStatus::Done, n};
    }
    case State::Skip: {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(left_, in.size()));
      left_ -= n;
      if (left_ == 0) state_ = State::SkipEnd;
      return {ParseStatus::Done, n};
    }
    case State::BodyEnd:
    case State::SkipEnd: {
      const bool body = state_ == State::BodyEnd;
      if (in[0] != kAmqpFrameEnd) {
        broken("frame end missing");
        return {ParseStatus::Invalid, 1};
      }
      state_ = State::Frame;
      if (body) body_frame_done(out);
      return {ParseStatus::Done, 1};
    }
  }
  return {ParseStatus::Invalid, in.size()};
}

void AmqpParser::body_bytes(std::span<const uint8_t> p, uint64_t ts) {
  Content* c = content_of(channel_);
  if (!c || !c->header_seen) return;
  AmqpMessage& m = c->msg;
  m.ts_last_ns = ts;
  m.body_received += p.size();
  const size_t room = m.body.size() < lim_.max_body_kept ? lim_.max_body_kept - m.body.size() : 0;
  const size_t k = std::min(room, p.size());
  if (!m.memory_shed) m.body.append(reinterpret_cast<const char*>(p.data()), k);
  if (k < p.size() || m.memory_shed) m.truncated = true;
}

void AmqpParser::body_frame_done(std::vector<AmqpMessage>& out) {
  for (size_t i = 0; i < contents_.size(); i++) {
    AmqpMessage& m = contents_[i].msg;
    if (m.channel != channel_ || !contents_[i].header_seen) continue;
    if (m.body_received >= m.body_size) {
      if (m.body_received > m.body_size) {
        m.protocol_error = true;
        if (m.error.empty()) m.error = "body longer than its content header says";
      }
      finish_content(i, out);
    }
    return;
  }
}

void AmqpParser::method_frame(uint16_t channel, std::span<const uint8_t> p, uint64_t ts,
                              std::vector<AmqpMessage>& out) {
  // A method on a channel whose content was still coming: that content ends here.
  for (size_t i = 0; i < contents_.size(); i++)
    if (contents_[i].msg.channel == channel) {
      contents_[i].msg.incomplete = true;
      contents_[i].msg.protocol_error = true;
      if (contents_[i].msg.error.empty()) contents_[i].msg.error = "content cut by a method";
      finish_content(i, out);
      break;
    }
  if (p.size() < 4) {  // no class and method
    errors_++;
    gap_pending_ = true;
    return;
  }
  AmqpMessage m;
  m.from_client = client_;
  m.channel = channel;
  m.class_id = be16(&p[0]);
  m.method_id = be16(&p[2]);
  m.info = amqp_method(m.class_id, m.method_id);
  m.frames = 1;
  m.ts_first_ns = m.ts_last_ns = ts;
  if (gap_pending_) {
    m.gap = true;
    gap_pending_ = false;
  }
  if (!m.info) {
    m.protocol_error = true;
    m.error = "unknown method";
    errors_++;
  } else if (!amqp_decode_args(*m.info, p.subspan(4), lim_, m)) {
    errors_++;
  }
  if (m.info && m.info->content) {
    m.has_content = true;
    if (contents_.size() >= lim_.max_channels) {
      contents_.front().msg.incomplete = true;
      finish_content(0, out);
    }
    contents_.push_back({std::move(m), false});
    return;
  }
  out.push_back(std::move(m));
}

void AmqpParser::header_frame(uint16_t channel, std::span<const uint8_t> p, uint64_t ts,
                              std::vector<AmqpMessage>& out) {
  Content* c = content_of(channel);
  if (!c || c->header_seen) {  // a content header nothing announced: skipped
    errors_++;
    return;
  }
  AmqpMessage& m = c->msg;
  m.frames++;
  m.ts_last_ns = ts;
  Cursor cur{p};
  cur.u16();  // class id (basic)
  cur.u16();  // weight
  m.body_size = cur.u64();
  // Property flags: 16-bit words, bit 0 says another word follows.
  std::vector<uint16_t> words;
  for (int k = 0; k < 4 && !cur.bad; k++) {
    const uint16_t w = cur.u16();
    words.push_back(w);
    if (!(w & 1)) break;
  }
  static constexpr struct {
    const char* name;
    char type;  // S short string, F table, o octet, t timestamp
  } kProps[] = {{"content_type", 'S'},   {"content_encoding", 'S'}, {"headers", 'F'},    {"delivery_mode", 'o'},
                {"priority", 'o'},       {"correlation_id", 'S'},   {"reply_to", 'S'},   {"expiration", 'S'},
                {"message_id", 'S'},     {"timestamp", 't'},        {"type", 'S'},       {"user_id", 'S'},
                {"app_id", 'S'},         {"cluster_id", 'S'}};
  std::string props;
  JsonOut out_json(props);
  TableWriter tables{lim_, m};
  out_json.begin_object();
  const uint16_t flags = words.empty() ? 0 : words[0];
  for (int i = 0; i < 14 && !cur.bad; i++) {
    if (!(flags & (0x8000 >> i))) continue;
    switch (kProps[i].type) {
      case 'S': {
        std::string_view s = cur.shortstr();
        if (cur.bad) break;
        out_json.field(kProps[i].name, s);
        if (i == 0) m.content_type.assign(s);
        break;
      }
      case 'F': {
        std::string t = tables.read(cur);
        if (cur.bad) break;
        out_json.key(kProps[i].name);
        out_json.raw(t);
        break;
      }
      case 'o': {
        const uint8_t v = cur.u8();
        if (!cur.bad) out_json.field(kProps[i].name, uint64_t{v});
        break;
      }
      case 't': {
        const uint64_t v = cur.u64();
        if (!cur.bad) out_json.field(kProps[i].name, v);
        break;
      }
    }
  }
  out_json.end_object();
  m.properties_json = std::move(props);
  c->header_seen = true;
  if (cur.bad) {
    m.protocol_error = true;
    if (m.error.empty()) m.error = "content header runs past the frame";
    errors_++;
  }
  if (m.body_size == 0) {
    for (size_t i = 0; i < contents_.size(); i++)
      if (&contents_[i] == c) return finish_content(i, out);
  }
}

}  // namespace tapwire::proto

// AMQP 0-9-1 framing (one direction of a connection): the protocol header,
// frames (method, content header, body, heartbeat) checked against their
// frame end and a size bound, method arguments decoded from the spec's
// method table (RabbitMQ's extensions included), field tables rendered as
// JSON with bounded nesting and entries, and content (a basic.publish,
// deliver, return or get-ok with its header frame and body frames, per
// channel) assembled into one message with its body kept up to a cap.
//
// Resumable: feed() consumes what it can and asks for the rest again with
// more bytes after it; it never holds more than one non-body frame (body
// frames stream through). After broken framing or a gap it hunts for the
// next method frame (type 1, a known class and method, its frame end where
// its size says), which is also how a connection joined in the middle is
// picked up.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "parse.hpp"

namespace tapwire::proto {

inline constexpr uint8_t kAmqpFrameMethod = 1, kAmqpFrameHeader = 2, kAmqpFrameBody = 3, kAmqpFrameHeartbeat = 8;
inline constexpr uint8_t kAmqpFrameEnd = 0xCE;
inline constexpr char kAmqpProtocolHeader[8] = {'A', 'M', 'Q', 'P', 0, 0, 9, 1};

// What a method is for pairing.
enum class AmqpKind : uint8_t {
  Sync,  // waits for a reply (reply / reply2) from the other side, on its channel
  Reply,  // the -ok (or get-empty) of a Sync method
  Async,  // a message of its own (publish, deliver, ack, ...)
};

struct AmqpMethodInfo {
  uint16_t class_id, method_id;
  const char* name;  // "basic.publish"
  AmqpKind kind;
  uint16_t reply, reply2;  // method ids of the replies (same class), for Sync
  bool content;  // followed by a content header and body
  // Arguments, space separated "type.name": o octet, s short, l long,
  // L long long, S short string, T long string, X long string not kept
  // (credentials: only its size), b bit, F field table, t timestamp.
  // "reserved" names are read and not shown.
  const char* args;
};
// The method, or null when the class/method pair is not AMQP 0-9-1's.
const AmqpMethodInfo* amqp_method(uint16_t class_id, uint16_t method_id);

// One decoded argument.
struct AmqpField {
  std::string_view name;  // static text
  char kind;  // 'b' boolean, 'u' number, 's' string, 'j' JSON value (a table), 'z' secret: `num` is its size
  uint64_t num = 0;
  std::string text;
};

struct AmqpLimits {
  size_t max_body_kept = 64 * 1024;
  size_t max_frame_buffered = 128 * 1024;  // method and content header frames are parsed whole, up to this
  uint32_t max_frame = 16u << 20;  // any frame, until connection.tune-ok says less
  size_t max_channels = 64;  // channels with content in progress, per direction
  size_t max_table_entries = 256;  // field table entries rendered per message (all tables)
  int max_table_depth = 8;  // nested tables and arrays
  size_t max_string = 4096;  // bytes kept of one string in a table or argument
};

// A method (with its content, when it carries one) as one side sent it.
struct AmqpMessage {
  bool from_client = false;
  uint16_t channel = 0;
  uint16_t class_id = 0, method_id = 0;
  const AmqpMethodInfo* info = nullptr;  // null: an unknown method
  std::vector<AmqpField> fields;
  bool has_content = false;
  std::string properties_json;  // content header properties as a JSON object ("" when none)
  uint64_t body_size = 0;  // as the content header declares it
  uint64_t body_received = 0;  // body bytes seen (or skipped over a gap)
  std::string body;  // the first max_body_kept bytes
  std::string content_type;
  uint32_t frames = 0;
  uint64_t ts_first_ns = 0, ts_last_ns = 0;
  bool gap = false;  // bytes of it were lost
  bool truncated = false;  // a string or table was cut, or the body beyond what is kept
  bool incomplete = false;  // its content never completed
  bool protocol_error = false;
  bool memory_shed = false;
  std::string error;

  std::string name() const;  // "basic.publish", or "class.method" numbers for an unknown one
  const AmqpField* field(std::string_view n) const;
  std::string_view str(std::string_view n) const;  // a string argument, "" if none
  bool num(std::string_view n, uint64_t& v) const;
  bool flag(std::string_view n) const;  // a bit argument
  size_t heap_bytes() const;  // its strings and fields
};

class AmqpParser {
 public:
  AmqpParser(bool from_client, AmqpLimits lim) : client_(from_client), lim_(lim), frame_max_(lim.max_frame) {}

  // Consumes what it can of `in`: Done (some consumed), Invalid (bytes
  // skipped while hunting for a frame), NeedMoreData (nothing consumed:
  // present these bytes again with more after them). Finished messages go
  // to `out`.
  ParseResult feed(std::span<const uint8_t> in, uint64_t ts, std::vector<AmqpMessage>& out);
  // `len` bytes lost: in a body frame it keeps its place, elsewhere it
  // hunts for the next method frame; content in progress comes out flagged.
  void on_gap(uint64_t len, std::vector<AmqpMessage>& out);
  // The direction ended: content in progress comes out incomplete.
  void on_close(uint64_t ts, std::vector<AmqpMessage>& out);
  // connection.tune-ok's frame-max (0: no limit): frames beyond it are broken.
  void set_frame_max(uint32_t v);
  // Drops kept bodies of content in progress; returns the bytes freed.
  size_t shed_body();
  size_t memory_bytes() const;
  bool synced() const { return state_ != State::Hunt; }
  uint64_t heartbeats() const { return heartbeats_; }
  uint64_t errors() const { return errors_; }

 private:
  enum class State : uint8_t { Start, Frame, BodyPayload, BodyEnd, Skip, SkipEnd, Hunt };
  struct Content {
    AmqpMessage msg;
    bool header_seen = false;
  };

  bool client_;
  AmqpLimits lim_;
  uint32_t frame_max_;
  State state_ = State::Start;
  uint16_t channel_ = 0;  // of the body frame (or skipped frame) in progress
  uint64_t left_ = 0;  // its payload bytes still to come
  bool gap_pending_ = false;
  std::vector<Content> contents_;  // content in progress, by channel
  uint64_t heartbeats_ = 0, errors_ = 0;

  Content* content_of(uint16_t channel);
  void finish_content(size_t i, std::vector<AmqpMessage>& out);
  void broken(std::string_view why);  // framing lost: count it and hunt
  void method_frame(uint16_t channel, std::span<const uint8_t> p, uint64_t ts, std::vector<AmqpMessage>& out);
  void header_frame(uint16_t channel, std::span<const uint8_t> p, uint64_t ts, std::vector<AmqpMessage>& out);
  void body_bytes(std::span<const uint8_t> p, uint64_t ts);
  void body_frame_done(std::vector<AmqpMessage>& out);
  ParseResult hunt(std::span<const uint8_t> in);
};

// Whether `p` starts with a whole method frame that looks right: type 1,
// a size within `max_size`, a known class and method, the frame end where
// the size puts it. need_more: the bytes so far agree but are too few.
bool amqp_method_frame_at(std::span<const uint8_t> p, size_t max_size, bool& need_more);

// A decoded method argument list, for tests and detection.
bool amqp_decode_args(const AmqpMethodInfo& info, std::span<const uint8_t> args, const AmqpLimits& lim,
                      AmqpMessage& m);

}  // namespace tapwire::proto

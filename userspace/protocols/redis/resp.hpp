// RESP, the Redis serialization protocol (RESP2 and RESP3), one direction
// of a connection at a time: a push parser that takes every byte it is
// given and keeps state between calls, so that any split of the stream
// gives the same messages and nothing but a header line (capped) is ever
// buffered. Bulk strings are kept up to a byte budget per message and the
// rest skipped as it passes; aggregates are kept up to an element budget
// and a nesting depth; lengths and counts are checked against Redis's own
// limits. Commands are arrays of bulk strings or inline lines ("PING\r\n");
// replies are any RESP value, RESP3 attributes ('|') dropped before the
// reply they annotate.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "json_out.hpp"
#include "parse.hpp"

namespace tapwire::proto {

struct RespLimits {
  size_t max_kept = 64 * 1024;  // string bytes kept per message (values and arguments together)
  size_t max_items = 256;  // values kept per message (elements of aggregates, all levels)
  size_t max_depth = 32;  // nesting of aggregates; deeper is a protocol error
  size_t max_line = 64 * 1024;  // an inline command or a simple string / error line (Redis: 64 KiB inline)
  uint64_t max_bulk = 512ull << 20;  // a bulk string's length (Redis's proto-max-bulk-len)
  uint64_t max_count = (1ull << 31) - 1;  // an aggregate's element count
};

// One RESP value as kept. Aggregates keep their first elements (within the
// message's budget); `count` is how many they had.
struct RespValue {
  char type = 0;  // the RESP type byte: + - : $ * _ # , ( ! = % ~ >  ('i' for an inline command)
  bool null = false;  // $-1, *-1 (RESP2 nulls), or '_'
  bool truncated = false;  // string cut, or elements dropped (here or below)
  int64_t count = 0;  // aggregates: elements (a map: pairs); strings: bytes on the wire
  std::string text;  // scalars: the value as sent (verbatim strings without their "txt:" prefix)
  std::vector<RespValue> items;  // aggregates: kept elements (a map: key, value, key, ...)

  bool aggregate() const { return type == '*' || type == '%' || type == '~' || type == '>' || type == 'i'; }
  bool is_error() const { return type == '-' || type == '!'; }
  const char* type_name() const;
  void write_json(JsonOut& out) const;
};
size_t resp_value_heap_bytes(const RespValue& v);  // without the value itself

// One message of a direction: a command, or a reply (or a push).
struct RespMessage {
  RespValue value;
  uint64_t ts_first_ns = 0, ts_last_ns = 0;
  uint64_t wire_size = 0;  // bytes it took on the wire
  bool truncated = false;  // something was not kept (a string cut, elements dropped)
  bool gap = false;  // bytes before or inside it were lost in capture
  bool incomplete = false;  // the stream ended or was lost inside it
  bool protocol_error = false;  // broken RESP; `error` says how
  bool memory_shed = false;
  std::string error;
  size_t heap = 0;  // resp_value_heap_bytes(value) + error's
};

class RespParser {
 public:
  enum class Side : uint8_t { Commands, Replies };
  RespParser(Side side, RespLimits lim) : side_(side), lim_(lim) {}

  // Takes all of `in` (consumed is always in.size()); messages completed go to `out`.
  ParseResult feed(std::span<const uint8_t> in, uint64_t ts_ns, std::vector<RespMessage>& out);
  // `len` bytes were lost: a message in progress comes out (gap, incomplete),
  // and the parser looks for the next message boundary.
  void on_gap(uint64_t len, std::vector<RespMessage>& out);
  // The direction ended: a message in progress comes out incomplete.
  void on_close(uint64_t ts_ns, std::vector<RespMessage>& out);
  // Drops the kept strings of the message in progress; returns bytes freed.
  size_t shed_partial();
  void mark_shed() { shed_next_ = true; }

  size_t memory_bytes() const;
  uint64_t messages() const { return messages_; }
  uint64_t protocol_errors() const { return protocol_errors_; }
  bool syncing() const { return state_ == State::Resync; }

 private:
  enum class State : uint8_t { Start, Line, Bulk, BulkCr, BulkLf, Resync, ResyncLineStart };
  struct Frame {
    RespValue* node = nullptr;  // kept aggregate, or null (its elements are not kept)
    uint64_t left = 0;  // elements still to come
    bool attribute = false;  // a '|' frame: dropped, not an element of its parent
  };

  Side side_;
  RespLimits lim_;
  State state_ = State::Start;
  bool in_message_ = false;  // bytes of a message have been taken
  bool seen_message_ = false;  // a message boundary was found (the stream is in sync)
  bool resynced_ = false;  // bytes were skipped to find a boundary since the last message
  bool gap_next_ = false, shed_next_ = false;
  std::string line_;  // the header line (type byte first) in progress
  uint64_t bulk_left_ = 0;  // bytes of the bulk string still to come
  RespValue* bulk_node_ = nullptr;  // where they are kept, or null
  std::vector<Frame> stack_;
  RespMessage msg_;
  size_t kept_ = 0, items_ = 0;  // the message's budget used
  size_t kept_held_ = 0;  // string bytes held now (kept_ less what was shed)
  uint64_t messages_ = 0, protocol_errors_ = 0;

  void begin_message(uint64_t ts);
  bool take_line(uint64_t ts, std::vector<RespMessage>& out);  // false: a protocol error
  bool inline_command();
  RespValue* new_element(char type);
  void keep(RespValue* v, std::string_view s);
  void element_done(std::vector<RespMessage>& out);
  void finish(std::vector<RespMessage>& out);
  void fail(const std::string& why, std::vector<RespMessage>& out);
  void reset_message();
  bool valid_start(uint8_t c) const;
};

// Detection: the first bytes a side sent. 1: a command (this side is the
// client); 2: a reply (this side is the server); 0: neither; -1: too few bytes to tell.
int resp_detect(std::span<const uint8_t> first);

// The upper-cased command name when it is one Redis knows, else "".
std::string_view redis_known_command(std::string_view name);
// A command whose first argument is not a key (PING, AUTH, CONFIG, ...).
bool redis_command_without_key(std::string_view upper);

}  // namespace tapwire::proto

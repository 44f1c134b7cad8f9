// The MongoDB wire protocol (mongodb.com/docs/manual/reference/mongodb-wire-protocol):
// the standard message header, OP_MSG (flag bits, body and document
// sequence sections, checksum), OP_QUERY / OP_REPLY, OP_COMPRESSED (snappy,
// zlib, zstd) and the legacy opcodes, taken off hostile bytes.
//
// A message is parsed from its kept prefix: the session keeps at most
// MongoLimits::max_message_kept bytes of each message (the header, the body
// document, the start of a document sequence) and skips the rest, so a
// 48 MB insert costs the cap and no more. BSON goes to JSON through
// libbson's bounds-checked iterator (bson_iter_*), written by our own
// bounded writer: nesting depth and JSON text are capped, a corrupt
// document stops the writer where it breaks (flagged), nothing recurses or
// allocates by what the wire claims.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tapwire::proto {

inline constexpr int32_t kOpReply = 1;
inline constexpr int32_t kOpUpdate = 2001;
inline constexpr int32_t kOpInsert = 2002;
inline constexpr int32_t kOpQuery = 2004;
inline constexpr int32_t kOpGetMore = 2005;
inline constexpr int32_t kOpDelete = 2006;
inline constexpr int32_t kOpKillCursors = 2007;
inline constexpr int32_t kOpCompressed = 2012;
inline constexpr int32_t kOpMsg = 2013;

inline constexpr uint32_t kMongoHeaderSize = 16;
// maxMessageSizeBytes of every server since 3.6: 48 000 000.
inline constexpr uint32_t kMongoMaxMessage = 48'000'000;

// OP_MSG flagBits.
inline constexpr uint32_t kMsgChecksumPresent = 1u << 0;
inline constexpr uint32_t kMsgMoreToCome = 1u << 1;
inline constexpr uint32_t kMsgExhaustAllowed = 1u << 16;

// "OP_MSG", "OP_QUERY", ...; "OP_UNKNOWN" for others.
const char* mongo_op_name(int32_t opcode);
bool mongo_known_opcode(int32_t opcode);

struct MongoLimits {
  size_t max_message_kept = 64 * 1024 + 16 * 1024;  // bytes of one message kept (its prefix)
  size_t max_json = 64 * 1024;  // JSON text of one document (the record's `document`)
  size_t max_depth = 32;  // nesting of documents and arrays written; deeper: elided, truncated
  size_t max_sequences = 8;  // document sequences (OP_MSG kind 1) described per message
};

struct MongoSequence {
  std::string identifier;
  uint32_t count = 0;  // documents seen in the kept bytes
  bool truncated = false;  // the sequence went on past the kept bytes
};

// One message as the record shows it.
struct MongoMessage {
  // Header.
  uint32_t length = 0;  // messageLength: the message as sent
  int32_t request_id = 0;
  int32_t response_to = 0;
  int32_t opcode = 0;  // the message's own opcode (inside OP_COMPRESSED: the original one)
  bool compressed = false;  // came in OP_COMPRESSED
  uint8_t compressor = 0;  // 0 noop, 1 snappy, 2 zlib, 3 zstd
  // OP_MSG.
  uint32_t msg_flags = 0;
  std::vector<MongoSequence> sequences;
  // OP_QUERY, OP_REPLY and the legacy ops.
  std::string full_collection_name;
  int32_t query_flags = 0;  // OP_QUERY flags, OP_REPLY responseFlags
  int64_t cursor_id = 0;  // OP_REPLY
  int32_t starting_from = 0, number_returned = 0;  // OP_REPLY
  uint32_t documents = 0;  // OP_REPLY / OP_INSERT documents seen

  // Taken from the command (the body document; OP_QUERY on db.$cmd: the query).
  std::string command;  // the first key
  std::string database;  // "$db" (OP_QUERY: before the first '.')
  std::string collection;  // the first key's value when it is a string
  // The body document as relaxed Extended JSON (kind 1 sequences appended
  // as arrays under their identifiers), at most MongoLimits::max_json bytes.
  std::string document;
  bool document_truncated = false;

  // Reply fields.
  bool has_ok = false;
  double ok = 0;
  bool has_error = false;  // ok:0, $err, a query failure, or writeErrors
  bool has_code = false;
  int64_t code = 0;
  std::string errmsg, code_name;

  bool truncated = false;  // only a prefix of the message was kept (or decompressed)
  bool protocol_error = false;
  std::string error;  // what was wrong with it, when protocol_error
  bool gap = false, memory_shed = false, incomplete = false;
  uint64_t ts_first_ns = 0, ts_last_ns = 0;

  bool more_to_come() const { return opcode == kOpMsg && (msg_flags & kMsgMoreToCome); }
  // A response: OP_REPLY, or an OP_MSG that answers something.
  bool is_response() const { return opcode == kOpReply || (opcode == kOpMsg && response_to != 0); }
  size_t heap_bytes() const;
};

inline uint32_t mongo_u32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
inline int32_t mongo_i32(const uint8_t* p) { return static_cast<int32_t>(mongo_u32(p)); }

// A 16-byte header that could start a message: a sane length and a known opcode.
bool mongo_header_plausible(std::span<const uint8_t> h);

// What detection and resynchronisation check at the start of `b`: a
// plausible header and, as far as the bytes go, a body of that opcode's
// shape (OP_MSG flag bits and section kind, document lengths within the
// message, OP_QUERY's collection name, OP_COMPRESSED's original opcode and
// compressor). Matched: the bytes seen agree and enough was seen (the first
// document's length at least); NeedMore: they agree so far; No: they do not.
enum class MongoShape : uint8_t { No, NeedMore, Matched };
MongoShape mongo_shape(std::span<const uint8_t> b);

// Parses one message from its kept bytes `b` (the first min(length, cap)
// bytes; `complete`: all of it). Never fails: what it cannot read is
// flagged (protocol_error + error, or truncated).
MongoMessage parse_mongo_message(std::span<const uint8_t> b, bool complete, const MongoLimits& lim);

// A BSON document (its first `b.size()` bytes; the declared length may be
// more: then `truncated`) as relaxed Extended JSON, appended to `out` within
// lim.max_json and lim.max_depth. Returns false when the document is corrupt
// (it stops there; what was written is still valid JSON).
bool bson_to_json(std::span<const uint8_t> b, std::string& out, const MongoLimits& lim, bool& truncated);

}  // namespace tapwire::proto

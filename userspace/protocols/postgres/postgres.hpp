// PostgreSQL frontend/backend protocol v3: message framing (one direction,
// resumable, bounded), the checks detection and resynchronisation use, and
// the parsed messages as the record shows them. Pairing is in session.cpp.
//
// A message is a type byte, a 4-byte big-endian length (itself included)
// and a body; the client's first messages (StartupMessage, SSLRequest,
// GSSENCRequest, CancelRequest) have no type byte.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "parse.hpp"
#include "protocol.hpp"

namespace tapwire::proto {

inline constexpr const char* kPostgres = "postgres";

inline constexpr uint32_t kPgProtocol3 = 196608;  // 3.0
inline constexpr uint32_t kPgSslRequest = 80877103;
inline constexpr uint32_t kPgGssEncRequest = 80877104;
inline constexpr uint32_t kPgCancelRequest = 80877102;
inline constexpr uint32_t kPgMaxStartup = 10000;  // the server's MAX_STARTUP_PACKET_LENGTH
inline constexpr uint64_t kPgMaxMessage = 1u << 30;  // PostgreSQL's own limit (MaxAllocSize)
// While looking for a message boundary (joined mid-connection, after a gap)
// a candidate longer than this is not believed.
inline constexpr uint32_t kPgMaxResyncMessage = 64u << 10;

// One message off the wire: its body, or the first `body.size()` bytes of it.
struct PgFrame {
  char type = 0;  // 0: a startup-form message (no type byte)
  uint32_t code = 0;  // startup form: the request code
  uint64_t length = 0;  // the declared length (the 4 length bytes included)
  std::span<const uint8_t> body;  // startup form: after the code
  bool cut = false;  // body is only the message's beginning
};

// Is `t` a type byte the client (frontend) / the server (backend) sends?
bool pg_frontend_type(uint8_t t);
bool pg_backend_type(uint8_t t);

// Structural check of a whole message body (or of the prefix, when cut):
// detection and resynchronisation believe a boundary only after it.
bool pg_body_plausible(bool client, char type, std::span<const uint8_t> body, bool cut);
// The length a message of that type may have: the exact length for
// fixed-size messages, else a sane range.
bool pg_length_plausible(bool client, char type, uint64_t length, uint32_t max);

// A startup-form message whose first `have` bytes are in `b`: 1 plausible,
// 0 need more bytes to tell, -1 not one.
int pg_startup_plausible(std::span<const uint8_t> b);

// Typed messages from offset 0: 1 matched (`strong` enough for detection),
// 0 need more, -1 not PostgreSQL.
int pg_typed_plausible(std::span<const uint8_t> b, bool client, bool detection);

// One direction's framing. The caller presents its unconsumed bytes again
// with more after them (the dissector's way); it never leaves more than a
// message header plus `prefix_cap` bytes unconsumed.
class PgReader {
 public:
  PgReader(bool client, size_t prefix_cap) : client_(client), prefix_cap_(prefix_cap) {}

  // Done: `out` is a message (its span points into `in`); Ignored: the rest
  // of a long message skipped; Invalid: bytes skipped looking for a boundary;
  // NeedMoreData: nothing consumed.
  ParseResult next(std::span<const uint8_t> in, PgFrame& out);

  void set_startup_form(bool on) { startup_form_ = on; }
  bool startup_form() const { return startup_form_; }
  // Lost bytes: the next message boundary must be found again.
  void lose_sync() {
    synced_ = false;
    skip_ = 0;
    first_ = false;
  }
  bool synced() const { return synced_; }
  uint64_t skipping() const { return skip_; }

 private:
  bool client_;
  size_t prefix_cap_;
  bool first_ = true;  // nothing read yet: the first byte says startup form (0) or typed
  bool startup_form_ = false;
  bool synced_ = true;
  uint64_t skip_ = 0;  // bytes of a long message still to skip

  size_t want(char type, uint64_t length) const;
};

// ------------------------------------------------------------- records --

struct PgError {
  std::string severity, sqlstate, message;
  bool present = false;
};
// ErrorResponse / NoticeResponse fields: S (or V), C, M.
PgError pg_parse_error(std::span<const uint8_t> body, size_t cap);

struct PgParam {
  enum Kind : uint8_t { Null, Text, Binary } kind = Null;
  std::string value;  // text, or the hex of a binary value's first bytes
  uint32_t size = 0;  // bytes on the wire
};

enum class PgKind : uint8_t { Simple, Extended, Prepare, Function, Startup, Ssl, GssEnc, Cancel };
const char* pg_kind_name(PgKind k);

struct PgRequest final : Message {
  PgKind kind = PgKind::Simple;
  std::string query, statement, portal;
  bool query_known = true;  // extended: the statement's Parse was seen
  std::vector<PgParam> params;
  uint32_t param_count = 0;  // as bound (more than kept when capped)
  std::vector<std::pair<std::string, std::string>> startup;  // startup parameters, passwords never
  uint32_t version = 0;  // startup: the protocol code
  uint32_t backend_pid = 0;  // cancel
  uint64_t copy_messages = 0, copy_bytes = 0;  // COPY FROM STDIN data sent
  bool copy_done = false, copy_failed = false;
  std::string copy_fail;

  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override;
  size_t body_bytes() const override { return query.size(); }
};

struct PgStatementResult {
  std::string tag;
  uint64_t rows = 0;
};

struct PgResponse final : Message {
  std::vector<PgStatementResult> statements;  // one per CommandComplete (kept up to a cap)
  uint64_t statement_count = 0;
  uint64_t rows = 0;  // DataRow messages, all statements
  uint64_t rows_current = 0;  // of the statement in progress
  std::vector<std::string> columns;  // of the last RowDescription (kept up to a cap)
  uint32_t column_count = 0;
  PgError error;
  uint32_t notices = 0;
  bool empty_query = false, suspended = false;
  char copy = 0;  // 'i' in, 'o' out, 'b' both
  uint64_t copy_messages = 0, copy_bytes = 0;  // COPY TO STDOUT data received
  char transaction_status = 0;
  // startup
  std::vector<std::string> authentication;
  std::vector<std::pair<std::string, std::string>> parameters;
  uint32_t backend_pid = 0;
  bool has_backend_pid = false;
  // SSLRequest / GSSENCRequest answer
  char ssl_answer = 0;

  void write_json(JsonOut& out) const override;
  size_t heap_bytes() const override;
};

// The SQL verb: the first keyword, upper-case (comments and spaces before
// it skipped); "" when none.
std::string pg_sql_verb(std::string_view query);
// The table of a simple statement (INSERT INTO t, UPDATE t, DELETE FROM t,
// COPY t, SELECT … FROM t); "" when not easy to tell.
std::string pg_sql_table(std::string_view query);

}  // namespace tapwire::proto

// MySQL / MariaDB client/server protocol: the packet framing of one
// direction (3-byte length + sequence id, 0xffffff payloads continued in the
// next packet; the compressed framing with its 7-byte header and zlib), and
// the decoders of the packets the session reads (HandshakeV10,
// HandshakeResponse41, OK, ERR, EOF, length-encoded integers).
#pragma once

#include <zlib.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "parse.hpp"

namespace tapwire::proto::mysql {

// Capability flags (the client's answer in HandshakeResponse41 decides).
inline constexpr uint32_t kClientConnectWithDb = 1u << 3;
inline constexpr uint32_t kClientCompress = 1u << 5;
inline constexpr uint32_t kClientProtocol41 = 1u << 9;
inline constexpr uint32_t kClientSsl = 1u << 11;
inline constexpr uint32_t kClientSecureConnection = 1u << 15;
inline constexpr uint32_t kClientPluginAuth = 1u << 19;
inline constexpr uint32_t kClientConnectAttrs = 1u << 20;
inline constexpr uint32_t kClientPluginAuthLenencData = 1u << 21;
inline constexpr uint32_t kClientDeprecateEof = 1u << 24;
inline constexpr uint32_t kClientOptionalResultsetMetadata = 1u << 25;
inline constexpr uint32_t kClientQueryAttributes = 1u << 27;
// MariaDB's extended capabilities (the last 4 bytes of the filler).
inline constexpr uint32_t kMariadbCacheMetadata = 1u << 4;

// Server status flags.
inline constexpr uint16_t kServerMoreResultsExists = 0x0008;
inline constexpr uint16_t kServerStatusCursorExists = 0x0040;

// Command bytes.
enum Command : uint8_t {
  kComSleep = 0x00,
  kComQuit = 0x01,
  kComInitDb = 0x02,
  kComQuery = 0x03,
  kComFieldList = 0x04,
  kComCreateDb = 0x05,
  kComDropDb = 0x06,
  kComRefresh = 0x07,
  kComShutdown = 0x08,
  kComStatistics = 0x09,
  kComProcessInfo = 0x0a,
  kComConnect = 0x0b,
  kComProcessKill = 0x0c,
  kComDebug = 0x0d,
  kComPing = 0x0e,
  kComTime = 0x0f,
  kComDelayedInsert = 0x10,
  kComChangeUser = 0x11,
  kComBinlogDump = 0x12,
  kComTableDump = 0x13,
  kComConnectOut = 0x14,
  kComRegisterSlave = 0x15,
  kComStmtPrepare = 0x16,
  kComStmtExecute = 0x17,
  kComStmtSendLongData = 0x18,
  kComStmtClose = 0x19,
  kComStmtReset = 0x1a,
  kComSetOption = 0x1b,
  kComStmtFetch = 0x1c,
  kComDaemon = 0x1d,
  kComBinlogDumpGtid = 0x1e,
  kComResetConnection = 0x1f,
};
// "COM_QUERY", ...; null for a byte that is no command.
const char* command_name(uint8_t cmd);

// One logical packet: its payload's first bytes (up to the reader's cap),
// continuation packets joined.
struct Packet {
  uint8_t seq = 0;
  uint64_t length = 0;  // payload bytes on the wire, continuations included
  uint32_t first_len = 0;  // the first physical packet's length (0xffffff: continued)
  std::string data;  // the first min(length, keep) payload bytes
  uint64_t ts_first = 0, ts_last = 0;
  bool shed = false;  // kept bytes were dropped under memory pressure
  bool truncated() const { return data.size() < length; }
};

// The packets of one direction, resumable: feed() consumes bytes and stops
// after each complete packet; it never asks for bytes again, so nothing but
// a packet header, the kept prefix of the packet in progress and (in the
// compressed framing) up to 16 KiB of inflated bytes is held.
class PacketReader {
 public:
  explicit PacketReader(size_t keep) : keep_(keep < 64 ? 64 : keep) {}
  ~PacketReader();
  PacketReader(const PacketReader&) = delete;
  PacketReader& operator=(const PacketReader&) = delete;

  // Reads from `in` until a packet completes (then `got` is set and `out`
  // holds it) or `in` is used up. Returns the bytes of `in` consumed (0 is
  // possible when a packet completes from bytes already inflated).
  size_t feed(std::span<const uint8_t> in, uint64_t ts, Packet& out, bool& got);
  // The compressed framing, from the next byte on (after the handshake's OK).
  void set_compressed();
  bool compressed() const { return compressed_; }
  // The framing broke (a compressed packet that does not inflate to its
  // length): nothing more is read until reset().
  bool failed() const { return failed_; }
  // Bytes were lost: forget the packet in progress.
  void reset();
  // Somewhere inside a packet (its header read, its end not yet).
  bool in_packet() const { return hdr_have_ > 0 || in_payload_ || continuing_; }
  size_t memory_bytes() const;
  // Drops what is kept of the packet in progress but its first bytes;
  // returns the bytes freed.
  size_t shed();
  uint64_t inflate_errors() const { return inflate_errors_; }

 private:
  size_t keep_;
  // Plain framing.
  uint8_t hdr_[4] = {};
  size_t hdr_have_ = 0;
  bool in_payload_ = false;
  bool continuing_ = false;  // the last physical packet was 0xffffff long
  uint32_t remaining_ = 0;  // payload bytes of the physical packet still to come
  Packet cur_;
  // Compressed framing.
  bool compressed_ = false;
  bool failed_ = false;
  uint8_t chdr_[7] = {};
  size_t chdr_have_ = 0;
  uint32_t c_remaining_ = 0;  // compressed payload bytes still to come
  uint32_t c_expect_ = 0;  // the inflated length the header announced (0: stored)
  uint32_t c_produced_ = 0;
  bool c_in_payload_ = false;
  bool c_more_out_ = false;
  bool fail_pending_ = false;  // the compressed packet broke: stop once what it gave is read  // inflate filled its output: more may come without input
  z_stream* z_ = nullptr;
  std::string scratch_;  // inflated bytes not yet read by the plain framing
  size_t scratch_off_ = 0;
  uint64_t inflate_errors_ = 0;

  size_t feed_plain(std::span<const uint8_t> in, uint64_t ts, Packet& out, bool& got);
  void fail();
};

// A reader of one packet's payload, every read bounds-checked.
class Cursor {
 public:
  explicit Cursor(std::string_view s) : s_(s) {}
  bool u8(uint8_t& v);
  bool u16(uint16_t& v);
  bool u24(uint32_t& v);
  bool u32(uint32_t& v);
  bool lenenc(uint64_t& v);  // length-encoded integer; false on 0xfb/0xff or too few bytes
  bool skip(size_t n);
  bool nul_string(std::string_view& v);  // up to a NUL (consumed); false without one
  bool bytes(size_t n, std::string_view& v);
  bool lenenc_string(std::string_view& v);
  std::string_view rest() const { return s_.substr(at_); }
  size_t left() const { return s_.size() - at_; }

 private:
  std::string_view s_;
  size_t at_ = 0;
};

struct Greeting {
  std::string server_version;
  uint32_t connection_id = 0;
  uint32_t capabilities = 0;
  std::string auth_plugin;
};
// HandshakeV10 (the payload after the 0x0a protocol byte is checked too).
bool parse_greeting(std::string_view payload, Greeting& g);

struct HandshakeResponse {
  uint32_t capabilities = 0;
  uint32_t mariadb_capabilities = 0;  // MariaDB's extended ones (when it says it is MariaDB)
  bool ssl_request = false;  // the short form that precedes TLS
  std::string user, database, auth_plugin;
};
bool parse_handshake_response(std::string_view payload, HandshakeResponse& r);

struct OkPacket {
  uint64_t affected_rows = 0, last_insert_id = 0;
  uint16_t status = 0, warnings = 0;
  std::string info;
};
// An OK packet (header 0x00, or 0xfe ending a result set with CLIENT_DEPRECATE_EOF).
bool parse_ok(std::string_view payload, OkPacket& ok, size_t max_info);

struct ErrPacket {
  uint16_t code = 0;
  std::string sqlstate, message;
};
bool parse_err(std::string_view payload, ErrPacket& e, size_t max_message);
// A MariaDB progress report (0xff, code 0xffff): not an error.
bool is_progress_report(std::string_view payload);

// The first word of a statement, upper-cased (leading blanks, comments and
// parentheses skipped); empty when there is none.
std::string sql_verb(std::string_view sql);

// Detection of the server's HandshakeV10 at the start of a connection:
// 1 yes, 0 no, -1 cannot tell yet.
int looks_like_greeting(std::span<const uint8_t> s);
// Detection of a client's command packets joined mid-connection: the bytes
// are one or more complete, consistent commands, each with sequence id 0.
bool looks_like_commands(std::span<const uint8_t> s);
// The start of one command packet (resynchronising after a gap): enough
// bytes to tell (at least 5), sequence id 0, a known command, a length that
// fits it.
bool looks_like_command_start(std::span<const uint8_t> s);

}  // namespace tapwire::proto::mysql

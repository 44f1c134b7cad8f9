// WebSocket (RFC 6455) after the opening handshake (HTTP/1.1 101, or an
// RFC 8441 extended CONNECT stream): a resumable frame parser for one
// direction of a connection, which reassembles fragmented messages, unmasks,
// undoes permessage-deflate (RFC 7692) and hands out one record per message.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "extensions.hpp"
#include "parse.hpp"

namespace tapwire::proto {

// Frame opcodes (RFC 6455 5.2). 3-7 and 0xB-0xF are reserved.
enum WsOpcode : uint8_t {
  kWsContinuation = 0x0,
  kWsText = 0x1,
  kWsBinary = 0x2,
  kWsClose = 0x8,
  kWsPing = 0x9,
  kWsPong = 0xA,
};
// "continuation", "text", "binary", "close", "ping", "pong", or "reserved".
const char* ws_opcode_name(uint8_t opcode);

struct WsLimits {
  size_t max_message_kept = 64 * 1024;  // payload bytes kept per message (decoded); the rest is counted only
  // A frame longer than this (or with the 64-bit length's top bit set) is
  // taken for garbage, not a frame: the direction stops there (nothing is
  // allocated for it, yet all of the stream after it is lost). Raise it for
  // flows known to carry frames that long.
  uint64_t max_frame_payload = uint64_t{256} << 20;
  // Decompressed bytes produced per compressed message, kept or not.
  // Beyond: decompression of that message stops (`truncated`), and with
  // context takeover the direction's later compressed messages cannot be
  // decoded (their dictionary is gone). Bounds the CPU a deflate bomb costs.
  uint64_t max_inflate = uint64_t{16} << 20;
};

// One message: text or binary (all its frames), or a control frame.
struct WsMessage {
  bool from_client = false;
  uint8_t opcode = 0;  // of its first frame; a continuation frame with no message to continue: 0
  // The payload, unmasked and decompressed: its first max_message_kept
  // bytes. Close: empty (close_code and close_reason hold it).
  std::string payload;
  uint64_t wire_size = 0;  // bytes of its frames on the wire, headers included
  uint64_t payload_size = 0;  // payload bytes on the wire (compressed, when compressed)
  // Payload bytes after decompression (payload_size when not compressed),
  // counted past what is kept; when decompression stopped (max_inflate, an
  // error, a gap) what it produced up to there.
  uint64_t decoded_size = 0;
  uint32_t frames = 0;
  uint16_t close_code = 0;  // Close: the status code; 0 when the payload has none
  std::string close_reason;  // Close: the reason (UTF-8), when given
  bool compressed = false;  // RSV1 on its first frame, with permessage-deflate agreed
  bool truncated = false;  // `payload` is not all of the decoded payload
  // Not as RFC 6455 / 7692 say (unmasked client frame, RSV bits, reserved
  // opcode, control frame too long or fragmented, bad close code, text not
  // UTF-8, corrupt compressed data, …): `error` says what, the first such thing.
  bool protocol_error = false;
  bool incomplete = false;  // the stream ended, or the direction stopped, before its last frame did
  bool gap = false;  // bytes of it were lost in capture
  std::string error;  // why protocol_error (or why the payload could not be decoded)
  uint64_t ts_first_ns = 0;  // timestamp of its first byte
  uint64_t ts_last_ns = 0;  // of its last byte

  const char* opcode_name() const { return ws_opcode_name(opcode); }
};

// Heap bytes a message owns beyond its own size (its strings).
size_t ws_message_heap_bytes(const WsMessage& m);

// Parses one direction of a WebSocket connection. feed() consumes what it
// can: a frame header (2 to 14 bytes) received in part is left unconsumed
// (present it again with more bytes after it: the timestamp of its first
// byte is remembered); payload bytes are consumed as they come and only the
// first max_message_kept bytes of a message are kept. Control frames
// (ping, pong, close) between the fragments of a message are their own
// records, handed out when they end, before the message they interrupt.
//
// feed() returns Done when it consumed frame bytes, NeedMoreData (consumed
// 0) when it needs more, Invalid once, with everything consumed, when the
// direction stops (a frame length of 2^63 or above max_frame_payload: the
// framing is lost, there is no resynchronising in WebSocket), and Ignored,
// everything consumed, after that. Other violations (see
// WsMessage::protocol_error) are flagged on the message and parsing goes on.
class WebSocketParser {
 public:
  enum class Sender : uint8_t { Client, Server };  // who sends this direction: clients mask, servers do not
  WebSocketParser(Sender sender, WsDeflate deflate = {}, WsLimits limits = {});
  ~WebSocketParser();
  WebSocketParser(WebSocketParser&&) noexcept;
  WebSocketParser& operator=(WebSocketParser&&) noexcept;

  ParseResult feed(std::span<const uint8_t> data, uint64_t ts_ns, std::vector<WsMessage>& out);
  // `len` bytes of the stream were lost. Inside a frame's payload that has
  // `len` bytes to go, the stream stays in step: the message is flagged
  // `gap` (and truncated; a compressed one is not decoded further, and with
  // context takeover neither are the direction's later compressed messages).
  // Anywhere else the framing is lost: the message in progress is handed
  // out by the next feed/on_close, flagged gap and incomplete, and the
  // direction stops. Unconsumed bytes from before the gap are dropped:
  // present only what follows it.
  void on_gap(uint64_t len);
  // The stream ended: a message (or control frame) in progress is handed
  // out, flagged incomplete, with what it got (its ts_last_ns stays the
  // time of the last byte it got; ts_ns is when the stream ended). The
  // inflate context is released.
  void on_close(uint64_t ts_ns, std::vector<WsMessage>& out);

  bool stopped() const;  // the direction stopped: the rest is skipped
  // Heap bytes held: messages in progress, the inflate context (about 40
  // KiB once a compressed message was seen).
  size_t memory_bytes() const;
  uint64_t frame_count() const;  // frame headers parsed
  uint64_t protocol_error_count() const;  // messages handed out flagged protocol_error

 private:
  struct Inflater;
  enum class State : uint8_t { Header, Payload, Stopped };

  bool begin_frame(const uint8_t* h, size_t header_len, uint64_t ts_first, std::vector<WsMessage>& out);
  void payload(const uint8_t* p, size_t n);
  void end_frame(uint64_t ts, std::vector<WsMessage>& out);
  void emit(WsMessage& m, std::vector<WsMessage>& out);  // hands m out (or into ready_), resets it
  void hand_out_ready(std::vector<WsMessage>& out);
  void stop();
  void keep(WsMessage& m, const uint8_t* p, size_t n);  // decoded bytes: counted, kept up to the cap
  void start_inflate();
  void inflate_bytes(const uint8_t* p, size_t n);
  void finish_inflate();
  void stop_inflate(const char* why, bool error);
  WsMessage& current() { return control_ ? ctl_ : msg_; }
  bool takeover() const;

  Sender sender_;
  WsDeflate deflate_;
  WsLimits lim_;
  State st_ = State::Header;
  // The frame in progress.
  bool fin_ = false, control_ = false;
  uint8_t mask_[4] = {0, 0, 0, 0};
  bool masked_ = false;
  uint64_t remaining_ = 0;  // payload bytes to go
  uint64_t mask_off_ = 0;  // payload bytes of the frame seen (the mask key's phase)
  // The data message in progress (possibly across frames), and the control frame in progress.
  WsMessage msg_, ctl_;
  bool msg_active_ = false;
  bool keep_msg_ = true, keep_ctl_ = true;  // false after a gap: what is kept stays a prefix
  bool inflating_ = false;  // msg_ is compressed and being decompressed
  bool undecodable_ = false;  // msg_'s payload could not be decoded to its end
  bool stream_end_ = false;  // the deflate stream of msg_ ended (a block with BFINAL)
  bool ctx_lost_ = false;  // context takeover, and the context is gone: later compressed messages are not decoded
  bool reset_next_ = false;  // the inflater must start afresh at the next compressed message
  std::unique_ptr<Inflater> inflater_;  // created at the first compressed message
  bool partial_header_ = false;  // a frame header was left unconsumed, partial_ts_ its first byte's time
  uint64_t partial_ts_ = 0;
  std::vector<WsMessage> ready_;  // messages on_gap finished, handed out by the next feed/on_close
  uint64_t frames_ = 0;
  uint64_t protocol_errors_ = 0;
};

}  // namespace tapwire::proto

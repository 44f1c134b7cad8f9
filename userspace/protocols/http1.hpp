// HTTP/1.0 and HTTP/1.1: a resumable parser for one direction of a
// connection (requests, or responses), and the stitching of responses to
// requests. RFC 9112 message framing.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "parse.hpp"

namespace tapwire::proto {

struct HttpLimits {
  size_t max_header_bytes = 64 * 1024;  // start line + header block; beyond: Invalid (counted)
  size_t max_body_kept = 64 * 1024;  // body bytes kept in HttpMessage::body; the rest is counted only
  size_t max_headers = 128;  // header fields kept; beyond: dropped and flagged
  size_t max_pending = 256;  // requests waiting for a response per connection (pipelining)
};

struct HttpMessage {
  bool is_request = true;
  // Request line
  std::string method;
  std::string target;  // request-target as sent (path and query)
  // Status line
  int status = 0;
  std::string reason;
  int version_minor = 1;  // HTTP/1.<minor>
  std::vector<Header> headers;
  std::vector<Header> trailers;  // chunked trailers
  uint64_t header_bytes = 0;  // start line + headers + CRLF on the wire
  uint64_t body_size = 0;  // body bytes (after de-chunking)
  uint64_t wire_size = 0;  // all bytes of the message on the wire
  std::string body;  // the first max_body_kept bytes of the body (decoded, after finish_body())
  // Set by finish_body() when the message is complete: the body's Content-
  // Encoding undone ("gzip", "gzip, br": the codings as listed, lower-case;
  // "" when the body is not encoded, or was not decoded), the size of the
  // decoded bytes, and how the record shows them.
  std::string content_encoding;
  uint64_t body_decoded_size = 0;  // bytes decoded (of the part kept, when body_truncated)
  bool body_binary = false;  // the kept body is not text (base64 in the record)
  bool body_decode_error = false;  // a Content-Encoding could not be undone: `body` is the bytes as sent
  bool chunked = false;
  bool body_truncated = false;  // body longer than what is kept
  bool headers_truncated = false;  // more than max_headers fields
  bool gap = false;  // bytes of this message were lost in capture
  bool close_delimited = false;  // body ended by connection close
  bool upgrade = false;  // 101 Switching Protocols (or a request asking for an Upgrade)
  bool websocket = false;  // Upgrade: websocket handshake
  bool interim = false;  // 1xx response other than 101
  bool incomplete = false;  // the stream ended (or its bytes were shed) before the message did
  bool memory_shed = false;  // part of it (its kept body, its header block) was dropped to stay within memory
  // Heap bytes it owns (strings, header lists), counted by the parser as it
  // built the message: memory accounting without walking the headers again.
  uint64_t heap = 0;
  uint64_t ts_first_ns = 0;  // timestamp of the first byte
  uint64_t ts_last_ns = 0;  // timestamp of the last byte

  const std::string* header(std::string_view lower_name) const;  // first field with that name
};

// Heap bytes a message owns beyond its own size (strings, header lists),
// counted again from scratch, O(headers): what HttpMessage::heap keeps.
size_t message_heap_bytes(const HttpMessage& m);

// Once a message is complete (not per packet): undoes the Content-Encoding
// of its kept body (gzip, deflate, br, zstd; body/content_coding.hpp),
// keeping at most `max_body` decoded bytes, and tells text from binary
// (body/body_text.hpp). A body cut short (by max_body, a gap, the end of the
// stream) decodes to the beginning of the decoded body, flagged
// body_truncated. A body that does not decode (corrupt, an unknown coding,
// a compressed stream that ends before the body does) stays as sent, binary,
// flagged body_decode_error. Updates `heap`. Runs once per message: a second
// call changes nothing.
void finish_body(HttpMessage& m, size_t max_body);

// Parses one direction. feed() consumes what it can: complete messages are
// appended to `out`; a partially received start line or header block is left
// unconsumed (present it again with more bytes after it); body bytes are
// consumed as they come (a body is never buffered beyond max_body_kept).
//
// feed() returns Done when it consumed HTTP bytes (messages, body bytes),
// NeedMoreData (consumed 0) when it needs more, Invalid once per malformed
// message, with `consumed` up to where it found the next plausible start (a
// known method at a line start; "HTTP/1." for responses), and Ignored when
// all it consumed was skipped without a new error (a tunnel after 101 or
// CONNECT 2xx; resynchronising after on_gap). It never holds more than
// max_header_bytes of unconsumed input, except a tail of < 20 bytes that may
// begin a message. obs-fold is joined with SP (rejected on Content-Length,
// Transfer-Encoding, and as the first field line); bare LF ends a line.
// On the Requests side, bytes that cannot start a request after a CONNECT or
// Upgrade request mean the server switched: switched_protocols() turns true.
class Http1Parser {
 public:
  enum class Side { Requests, Responses };
  Http1Parser(Side side, HttpLimits limits = {});

  ParseResult feed(std::span<const uint8_t> data, uint64_t ts_ns, std::vector<HttpMessage>& out);
  // For the Responses side: the method of the next request still waiting
  // for its response, in order (HEAD and CONNECT change how a response is
  // framed). Called by the owner as requests are parsed.
  void expect_response_to(std::string_view method);
  // `len` bytes of the stream were lost. The message in progress is flagged
  // `gap`; the parser skips to the next plausible message start. (Inside a
  // body of known length that still has `len` bytes to go, the bytes are
  // counted as body and the stream stays in step.) Unconsumed bytes from
  // before the gap are dropped: present only what follows it.
  void on_gap(uint64_t len);
  // The stream ended (FIN/RST or idle timeout): completes a close-delimited
  // body; an incomplete message in progress is emitted with what it has,
  // flagged `incomplete` (and body_truncated when its body never ended).
  // `unconsumed` is what the caller still holds of the stream (what feed()
  // left unconsumed): a header block cut short there is emitted too, as an
  // incomplete message with the start line and the fields it got, when its
  // start line got far enough to say what it is (a known method and a target;
  // a status code).
  void on_close(uint64_t ts_ns, std::vector<HttpMessage>& out, std::span<const uint8_t> unconsumed = {});

  // Memory pressure (the dissector's memory limit). shed_body() drops the
  // kept body of the message in progress and keeps no more of it (flagged
  // memory_shed, body_truncated once it ends); returns the heap bytes freed.
  // shed_partial() gives up a header (or trailer) block still incomplete in
  // `unconsumed`, which the caller then drops: the message is emitted as
  // incomplete and memory_shed when there is enough of it to say what it
  // is, and the parser resynchronises on what follows. True if it emitted.
  size_t shed_body();
  bool shed_partial(std::span<const uint8_t> unconsumed, uint64_t ts_ns, std::vector<HttpMessage>& out);
  // Heap bytes held for the message in progress and the parser's queues.
  size_t memory_bytes() const;
  // After a 101 response (or a CONNECT 2xx) the stream is no longer HTTP.
  bool switched_protocols() const;

  uint64_t invalid_count() const;  // times input failed to parse and was skipped

 private:
  // Where the byte stream is. Start covers the start line and header block,
  // which stay unconsumed until the blank line arrives; every other state
  // consumes its bytes at once.
  enum class State : uint8_t {
    Start,  // before/inside a start line + header block
    Body,  // Content-Length body: remaining_ bytes to go
    ChunkSize,  // hex digits of a chunk-size line
    ChunkExt,  // chunk extensions up to LF
    ChunkSizeLF,  // CR seen after the chunk size
    ChunkData,  // remaining_ bytes of chunk data
    ChunkDataCR,  // CRLF after chunk data
    ChunkDataLF,
    Trailers,  // trailer section after the last chunk (unconsumed until complete)
    UntilClose,  // close-delimited body
    Resync,  // skipping to the next plausible message start
    Tunnel,  // after 101 / CONNECT 2xx: no longer HTTP
  };
  enum class Expect : uint8_t { Other, Head, Connect };  // what the response answers
  enum class Block : uint8_t { NeedMore, Complete, Bad, TooBig };

  Expect pop_expect();

  Block scan_block(const uint8_t* b, size_t n, bool trailers);
  bool start_line(std::string_view line);
  bool field_line(std::string_view line, bool trailers);
  bool begin_body(uint64_t ts, std::vector<HttpMessage>& out);  // after the header block; false: invalid framing
  void keep_body(const uint8_t* p, size_t n);
  void finish(uint64_t ts, std::vector<HttpMessage>& out);
  void reset_message();
  void enter_resync(bool at_line_start);
  bool take_partial(std::span<const uint8_t> unconsumed, uint64_t ts, std::vector<HttpMessage>& out);

  Side side_;
  HttpLimits lim_;
  State st_ = State::Start;
  HttpMessage msg_;
  // Header block scan, offsets from the block's first byte (the caller
  // presents the unconsumed block again, so the scan resumes, never restarts).
  size_t scan_pos_ = 0;  // bytes searched for the end of the block
  size_t line_start_ = 0;  // start of the current, incomplete line
  size_t lines_ = 0;  // complete lines seen in this block
  bool last_kept_ = false;  // the previous field line was stored (for obs-fold)
  bool last_framing_ = false;  // the previous field line was Content-Length/Transfer-Encoding
  // Framing facts of the message in progress.
  uint64_t content_length_ = 0;
  bool has_cl_ = false, bad_cl_ = false, has_te_ = false, te_chunked_ = false;
  bool conn_upgrade_ = false, has_upgrade_ = false, upgrade_ws_ = false;
  bool body_keep_ = true;  // false after a gap inside the body: the kept body is a prefix
  uint64_t remaining_ = 0;  // body or chunk bytes still to come
  uint64_t chunk_size_ = 0;
  unsigned chunk_digits_ = 0;
  size_t ext_len_ = 0;
  bool resync_line_start_ = false;  // Resync: the next byte begins a line
  bool after_upgrade_request_ = false;  // Requests: the last request was CONNECT or asked to Upgrade
  bool switched_ = false;
  std::vector<Expect> expect_;  // a queue: [expect_head_, size); a deque would allocate even when empty
  size_t expect_head_ = 0;
  std::vector<HttpMessage> ready_;  // completed by on_gap, handed out by the next feed/on_close
  uint64_t invalid_ = 0;
  uint64_t last_ts_ = 0;
};

// Quick content check for protocol detection: could these first bytes of a
// client->server stream be an HTTP/1.x request (method token + SP)? And a
// server->client stream a response ("HTTP/1.")?
bool looks_like_http1_request(std::span<const uint8_t> first_bytes);
bool looks_like_http1_response(std::span<const uint8_t> first_bytes);

}  // namespace tapwire::proto

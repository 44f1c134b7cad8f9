// HTTP/2 (RFC 9113) for a passive observer of one TCP connection: the two
// directions are fed separately, each in order, in whatever chunks the
// capture delivers; completed streams come out as request/response
// exchanges. Not a protocol implementation: it never answers, enforces only
// what it needs to stay in step and bounded, and records what it could not
// see (a connection joined late, header blocks it cannot decode, streams
// reset or cut) as flags instead of giving up.
//
// Memory is bounded for any input: frames are parsed as they stream (a DATA
// payload is never buffered; a header block is, up to
// max_header_block_bytes), decoded header lists and kept bodies have caps
// per message and a budget per connection (max_held_bytes), streams a cap
// (max_streams), HPACK tables a size (max_header_table_size).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "http2/hpack.hpp"
#include "parse.hpp"

namespace tapwire::proto {

// The client connection preface (RFC 9113 3.4).
inline constexpr std::string_view kHttp2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

enum class Http2Dir : uint8_t { ClientToServer = 0, ServerToClient = 1 };

// Frame types (RFC 9113 6) and flags; other types are skipped.
enum class Http2FrameType : uint8_t {
  Data = 0x0,
  Headers = 0x1,
  Priority = 0x2,
  RstStream = 0x3,
  Settings = 0x4,
  PushPromise = 0x5,
  Ping = 0x6,
  Goaway = 0x7,
  WindowUpdate = 0x8,
  Continuation = 0x9,
};
namespace h2flag {
inline constexpr uint8_t kEndStream = 0x01;
inline constexpr uint8_t kAck = 0x01;
inline constexpr uint8_t kEndHeaders = 0x04;
inline constexpr uint8_t kPadded = 0x08;
inline constexpr uint8_t kPriority = 0x20;
}  // namespace h2flag
inline constexpr size_t kHttp2FrameHeader = 9;

struct Http2Limits {
  // Hard cap on a frame's length. A longer frame (or, once the receiver's
  // SETTINGS were seen, one longer than the SETTINGS_MAX_FRAME_SIZE it
  // announced) is a connection error: that direction stops being parsed.
  uint32_t max_frame_size = (1u << 24) - 1;  // the largest the 24-bit field can say
  // Joining mid-connection: a frame we restart on is at most this long (we
  // wait for the header of the frame after it to confirm the boundary).
  uint32_t resync_max_frame = 16384;
  size_t max_header_block_bytes = 64 * 1024;  // encoded block (HEADERS/PUSH_PROMISE + CONTINUATIONs) buffered
  size_t max_continuations = 64;  // CONTINUATION frames in one block (a CONTINUATION flood)
  size_t max_header_list_bytes = 64 * 1024;  // decoded fields kept per block (name + value + 32 each)
  size_t max_headers = 128;  // regular fields kept per message (headers, and trailers)
  size_t max_header_table_size = 64 * 1024;  // HPACK dynamic table per direction
  size_t max_body_kept = 64 * 1024;  // body bytes kept per message; the rest is counted
  size_t max_streams = 1024;  // streams tracked at once: beyond, the oldest is emitted, flagged evicted
  size_t max_held_bytes = 4 << 20;  // kept fields and bodies of all tracked streams together
  size_t max_interim = 4;  // 1xx statuses kept per exchange
  size_t max_goaway_debug = 256;  // GOAWAY debug data kept
};

struct Http2Message {
  std::vector<Header> headers;  // regular fields of the header block, in order (pseudo-headers: in Http2Exchange)
  std::vector<Header> trailers;  // the trailing header block
  std::string body;  // the first max_body_kept bytes of the DATA payloads (padding excluded)
  uint64_t body_size = 0;  // DATA payload bytes
  uint64_t header_bytes = 0;  // decoded size of its header blocks: name + value + 32 per field (RFC 9113 6.5.2)
  uint64_t wire_bytes = 0;  // its frames on the wire, frame headers and padding included
  uint32_t frames = 0;
  bool has_headers = false;  // its (initial) header block was seen
  bool end_stream = false;  // END_STREAM was seen
  bool headers_truncated = false;  // fields dropped: max_headers, max_header_list_bytes, max_held_bytes
  bool body_truncated = false;  // body longer than what is kept
  uint64_t ts_first_ns = 0;  // timestamp of the chunk its first frame began in
  uint64_t ts_last_ns = 0;  // timestamp of the chunk its last byte came in

  const std::string* header(std::string_view lower_name) const;  // first field with that name
  const std::string* trailer(std::string_view lower_name) const;
};

struct Http2Exchange;

// A streaming consumer of a stream's DATA payloads (gRPC message framing
// counts every message, not only those in the kept body). A factory given to
// the parser is asked, each time a stream's initial header block arrives,
// whether it wants to watch the stream; the tap then sees every DATA byte
// that follows, and leaves with the exchange.
class Http2BodyTap {
 public:
  virtual ~Http2BodyTap() = default;
  // Returns how many of these bytes it copied to keep, at most `budget`:
  // they count against max_held_bytes, like kept bodies.
  virtual size_t data(Http2Dir dir, std::span<const uint8_t> bytes, size_t budget) = 0;
  virtual void end(Http2Dir dir) = 0;  // END_STREAM in that direction
  virtual size_t memory_bytes() const = 0;  // heap it holds beyond the bytes data() reported
};
using Http2TapFactory = std::function<std::unique_ptr<Http2BodyTap>(const Http2Exchange&)>;

// One stream: a request and its response (a pushed stream: the promised
// request and the pushed response).
struct Http2Exchange {
  uint32_t stream_id = 0;
  // Request pseudo-header fields (RFC 9113 8.3.1); :protocol is RFC 8441's.
  std::string method, path, authority, scheme, protocol;
  int status = 0;  // final response :status; 0 if none was seen
  std::vector<int> interim;  // 1xx statuses, in order (at most max_interim)
  Http2Message request, response;

  bool pushed = false;  // server push: the request is the PUSH_PROMISE's header block
  uint32_t promised_on = 0;  // pushed: the stream that carried the PUSH_PROMISE

  bool reset = false;  // RST_STREAM
  Http2Dir reset_by = Http2Dir::ClientToServer;
  uint32_t rst_error = 0;  // its error code
  bool goaway = false;  // cut by GOAWAY: above the last stream id the peer said it would process
  uint32_t goaway_error = 0;
  bool incomplete = false;  // the connection closed (or stopped parsing) before the stream ended
  bool partial = false;  // the stream began before what was observed (joined mid-connection, a gap)
  bool gap = false;  // bytes of the connection were lost while the stream was open
  bool evicted = false;  // pushed out by max_streams before it ended
  bool hpack_unknown = false;  // fields referred to HPACK table entries never seen: lost, or named kHpackUnknownName
  bool hpack_error = false;  // a header block failed to decode: fields from the error on are lost
  bool header_overflow = false;  // a header block over max_header_block_bytes/max_continuations, or cut: its fields lost
  bool memory_capped = false;  // max_held_bytes reached: fields or body bytes not kept

  std::unique_ptr<Http2BodyTap> tap;  // from the tap factory, if it wanted this stream

  Http2Message& message(Http2Dir d) { return d == Http2Dir::ClientToServer ? request : response; }
  const Http2Message& message(Http2Dir d) const { return d == Http2Dir::ClientToServer ? request : response; }
};

// What a SETTINGS frame said (RFC 9113 6.5.2), last value of each.
struct Http2Settings {
  bool seen = false;
  uint32_t header_table_size = 4096;
  uint32_t enable_push = 1;
  uint32_t max_concurrent_streams = UINT32_MAX;
  uint32_t initial_window_size = 65535;
  uint32_t max_frame_size = 16384;
  uint32_t max_header_list_size = UINT32_MAX;
  uint32_t largest_max_frame_size = 16384;  // the largest SETTINGS_MAX_FRAME_SIZE announced
};

// The connection as a whole; arrays are indexed by Http2Dir.
struct Http2ConnInfo {
  bool preface = false;  // the client preface was seen: observed from the start
  bool resynced[2] = {false, false};  // parsing (re)started on a frame boundary found by looking
  uint64_t skipped_bytes[2] = {0, 0};  // bytes not parsed as frames (before a boundary, after a stop)
  bool stopped[2] = {false, false};  // a connection error (frame over the size cap): the direction is no longer parsed
  Http2Settings settings[2];  // as sent by each side
  uint64_t frames[2] = {0, 0};
  uint64_t pings[2] = {0, 0};
  uint64_t malformed_frames[2] = {0, 0};  // wrong length, bad padding, stray CONTINUATION...: skipped
  uint64_t hpack_errors[2] = {0, 0};  // header blocks that failed to decode
  uint64_t header_overflows[2] = {0, 0};  // header blocks dropped whole (too big, CONTINUATION flood, cut)
  uint64_t unknown_frames[2] = {0, 0};  // frames of types this parser does not know (skipped)
  bool goaway[2] = {false, false};
  uint32_t goaway_last_stream[2] = {0, 0};
  uint32_t goaway_error[2] = {0, 0};
  std::string goaway_debug[2];  // its first max_goaway_debug bytes, raw (not necessarily text)
  uint64_t streams = 0;  // streams seen
  uint64_t evicted_streams = 0;
  uint64_t orphan_frames = 0;  // frames on streams not tracked (closed, or never seen opening): ignored
};

// Parses one connection. feed() takes every byte it is given (it keeps what
// it needs across calls, bounded: a frame header, a frame's fixed fields, a
// header block up to max_header_block_bytes, and while looking for a frame
// boundary up to resync_max_frame + 18 bytes); exchanges whose streams ended
// are appended to `out` as they end: both sides sent END_STREAM, or one sent
// RST_STREAM, or a GOAWAY cut it, or max_streams pushed it out.
//
// Status: Done when frame bytes were parsed, Ignored when every byte was
// skipped (looking for a boundary, a stopped direction), Invalid when the
// direction hit a connection error (once). consumed is always data.size().
//
// The client direction begins with the preface, or the connection was
// joined late: both directions then look for a frame boundary (a plausible
// frame header of at most resync_max_frame bytes followed by another
// plausible header). A server direction whose first bytes are a SETTINGS
// frame header is taken as the start. Settings that concern the other
// direction (HEADER_TABLE_SIZE once acked, MAX_FRAME_SIZE) assume the two
// directions are fed in the order the bytes were sent, as a capture does.
class Http2Parser {
 public:
  explicit Http2Parser(Http2Limits limits = {}, Http2TapFactory taps = {});
  ~Http2Parser();
  Http2Parser(const Http2Parser&) = delete;
  Http2Parser& operator=(const Http2Parser&) = delete;

  ParseResult feed(Http2Dir dir, std::span<const uint8_t> data, uint64_t ts_ns, std::vector<Http2Exchange>& out);
  // `len` bytes of that direction were lost in capture: the frame in
  // progress is abandoned (a header block in it too, and with it the HPACK
  // table: later blocks decode as after a late join), open streams are
  // flagged `gap`, and the direction looks for the next frame boundary.
  void on_gap(Http2Dir dir, uint64_t len);
  // HTTP/1 `Upgrade: h2c` (RFC 9113 3.2 of RFC 7540): the upgrade's request
  // is stream 1, half-closed by the client, answered in HTTP/2 frames.
  // Called before any byte is fed.
  void open_upgraded(std::string method, std::string path, std::string authority, std::vector<Header> headers,
                     uint64_t body_size, uint64_t ts_first_ns, uint64_t ts_last_ns);
  // The connection ended: every stream still open comes out, flagged incomplete.
  void on_close(uint64_t ts_ns, std::vector<Http2Exchange>& out);

  const Http2ConnInfo& info() const { return info_; }
  size_t open_streams() const { return streams_.size(); }
  // Bytes of fields and bodies kept for open streams (at most max_held_bytes).
  size_t held_bytes() const { return held_; }
  // Bytes buffered by the frame layer: boundary search and header blocks.
  size_t buffered_bytes() const;
  // Heap held, about: streams, kept data, buffers, HPACK tables, taps.
  size_t memory_bytes() const;

 private:
  enum class Phase : uint8_t { Preface, Start, Resync, Header, Payload, Stopped };
  enum class Stage : uint8_t { Prefix, Body, Padding };

  struct Stream {
    Http2Exchange ex;
    uint64_t seq = 0;  // creation order (eviction takes the lowest)
    size_t held = 0;  // bytes of ex counted in held_
  };

  struct Side {
    Phase phase = Phase::Start;
    std::vector<uint8_t> pending;  // Preface/Start/Resync: bytes not yet parsed
    uint8_t fh[kHttp2FrameHeader] = {};
    size_t fh_have = 0;
    // The frame in progress.
    uint32_t len = 0, sid = 0;
    uint8_t type = 0, flags = 0;
    uint64_t frame_ts = 0;
    Stage stage = Stage::Prefix;
    uint32_t left = 0;  // bytes of the current stage still to come
    uint32_t pad = 0;  // padding after the body
    uint8_t fix[9] = {};  // fixed fields before the body (pad length, priority, promised id...)
    uint32_t fix_need = 0, fix_have = 0;
    uint8_t entry[6] = {};  // SETTINGS: the entry in progress
    uint32_t entry_have = 0;
    int64_t set_min = -1, set_last = -1;  // SETTINGS: HEADER_TABLE_SIZE values in this frame (-1: none)
    bool skip = false;  // the rest of this frame is ignored (malformed, or on no stream we track)
    uint64_t data_seq = 0;  // DATA: the seq of the stream it belongs to
    // The header block in progress (HEADERS or PUSH_PROMISE, then CONTINUATIONs).
    bool in_block = false;
    bool block_push = false;
    bool block_end_stream = false;
    bool block_overflow = false;
    uint32_t block_sid = 0, block_promised = 0;
    size_t block_conts = 0;
    uint32_t block_frames = 0;
    uint64_t block_wire = 0;
    uint64_t block_ts = 0;
    std::vector<uint8_t> block;
    // SETTINGS this side sent, waiting for the other side's ACK: (min, last) HEADER_TABLE_SIZE, or none.
    std::vector<std::pair<int64_t, int64_t>> unacked;
    std::unique_ptr<HpackDecoder> hpack;
    HpackResult decoded;  // scratch, reused
  };

  void look_for_start(int d, std::span<const uint8_t> data, std::vector<Http2Exchange>& out, size_t& parsed);
  void run(int d, const uint8_t* p, size_t n, std::vector<Http2Exchange>& out, size_t& parsed);
  void frame_begin(int d, std::vector<Http2Exchange>& out);
  void prefix_done(int d, std::vector<Http2Exchange>& out);
  void body_bytes(int d, const uint8_t* p, size_t n);
  void frame_end(int d, std::vector<Http2Exchange>& out);
  void settings_entry(int d, const uint8_t* e);
  void settings_ack(int d);
  void goaway(int d, std::vector<Http2Exchange>& out);
  void block_lost(int d);
  void block_done(int d, std::vector<Http2Exchange>& out);
  void apply_block(Stream& st, int d, HpackResult& r, bool end, std::vector<Http2Exchange>& out);
  void stop(int d);

  Stream* find(uint32_t sid);
  Stream* data_stream(int d);
  Stream* open(uint32_t sid, bool partial, std::vector<Http2Exchange>& out);
  void touch(Stream& st, int d, uint64_t wire, uint32_t frames, uint64_t first_ts);
  bool keep(Stream& st, size_t n);
  void end_stream(Stream& st, int d, std::vector<Http2Exchange>& out);
  void emit(uint32_t sid, std::vector<Http2Exchange>& out);
  bool recently_closed(uint32_t sid) const;
  bool late_join() const;  // some of the connection was not seen: streams may predate what we saw
  uint32_t frame_cap(int d) const;

  Http2Limits lim_;
  Http2TapFactory taps_;
  Side side_[2];
  Http2ConnInfo info_;
  std::unordered_map<uint32_t, Stream> streams_;
  std::map<uint64_t, uint32_t> order_;  // seq -> stream id: the oldest first
  uint64_t seq_ = 0;
  uint64_t cur_ts_ = 0;
  size_t held_ = 0;
  // Streams recently emitted, so that their late frames (WINDOW_UPDATE,
  // a DATA in flight after RST_STREAM) do not open them again.
  uint32_t closed_[32] = {};
  size_t closed_next_ = 0;
};

// Could these first bytes of one direction be HTTP/2? The client preface
// (whole, or the first >= 14 bytes of it when that is all there is), or a
// plausible frame header sequence from the first byte: known type, flags
// that type defines, length within the SETTINGS_MAX_FRAME_SIZE default
// (16384) for the first frame, fixed lengths right, stream id 0 exactly for
// connection frames, odd for streams a client opens (when `dir` says the
// client sent them), each header followed by another plausible one as far
// as the bytes go. A lone frame that fills the bytes exactly counts when it
// is a SETTINGS frame (a server's first bytes).
bool looks_like_http2(std::span<const uint8_t> first_bytes, std::optional<Http2Dir> dir = std::nullopt);

}  // namespace tapwire::proto

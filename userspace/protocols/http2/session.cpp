#include "http2/session.hpp"

#include <nlohmann/json.hpp>

#include "body/body_text.hpp"
#include "body/content_coding.hpp"
#include "http1.hpp"
#include "http1/session.hpp"

namespace tapwire::proto {
namespace {

std::shared_ptr<const GrpcMessageDecoder>& grpc_decoder() {
  static std::shared_ptr<const GrpcMessageDecoder> d = std::make_shared<SchemalessGrpcDecoder>();
  return d;
}

size_t headers_heap(const std::vector<Header>& hs) {
  size_t n = heap_bytes(hs.capacity() * sizeof(Header));
  for (const Header& h : hs) n += string_heap_bytes(h.name) + string_heap_bytes(h.value);
  return n;
}

// The body kept of one side, its content-encoding undone as HTTP/1's is
// (finish_body: the same codings, caps and text test). Returns the flags
// decoding adds, as HTTP/1's message_flags would: body_truncated when the
// decoded body is longer than what is kept (a compression bomb whose
// encoded bytes were all kept), body_decode_error when it did not decode.
uint32_t take_body(Http2Record& r, Http2Message& m, size_t max_body) {
  HttpMessage tmp;
  tmp.is_request = r.is_request;
  for (const Header& h : m.headers)
    if (h.name == "content-encoding" || h.name == "content-type") tmp.headers.push_back(h);
  tmp.body = std::move(m.body);
  tmp.body_truncated = m.body_truncated;
  finish_body(tmp, max_body);
  r.body = std::move(tmp.body);
  r.body_binary = tmp.body_binary;
  r.content_encoding = std::move(tmp.content_encoding);
  r.body_decoded_size = tmp.body_decoded_size;
  return (tmp.body_truncated ? kFlagBodyTruncated : 0u) | (tmp.body_decode_error ? kFlagBodyDecodeError : 0u);
}

uint32_t exchange_flags(const Http2Exchange& ex) {
  uint32_t f = 0;
  if (ex.reset || ex.goaway) f |= kFlagReset;
  if (ex.incomplete || ex.evicted) f |= kFlagIncomplete;
  if (ex.gap) f |= kFlagGap;
  if (ex.partial && !ex.request.has_headers) f |= kFlagOrphanResponse;
  if (ex.hpack_unknown || ex.hpack_error || ex.header_overflow || ex.request.headers_truncated ||
      ex.response.headers_truncated)
    f |= kFlagHeadersLost;
  if (ex.memory_capped) f |= kFlagMemoryShed;
  if (ex.request.body_truncated || ex.response.body_truncated) f |= kFlagBodyTruncated;
  return f;
}

class Http2Session final : public StreamSession {
 public:
  explicit Http2Session(SessionContext& ctx)
      : ctx_(ctx),
        grpc_on_(ctx.enabled(kGrpc)),
        parser_(limits(ctx), grpc_on_ ? grpc_tap_factory() : Http2TapFactory{}),
        counters_(ctx.counters(kHttp2)),
        grpc_counters_(ctx.counters(kGrpc)) {}

  Http2Parser& parser() { return parser_; }

  void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts) override {
    if (parser_.feed(static_cast<Http2Dir>(d), bytes, ts, out_).status == ParseStatus::Invalid)
      counters_.parse_errors++;
    drain(0);
  }
  void gap(Dir d, uint64_t len) override { parser_.on_gap(static_cast<Http2Dir>(d), len); }
  void end(Dir, uint64_t) override {}
  void close(uint32_t why, uint64_t ts) override {
    parser_.on_close(ts, out_);
    drain(why);
  }
  size_t memory_bytes() const override { return heap_bytes(sizeof(*this)) + parser_.memory_bytes(); }
  size_t buffered_bytes() const override { return parser_.buffered_bytes(); }
  void mark_shed(Dir d) override { shed_pending_[dir_index(d)] = true; }

 private:
  SessionContext& ctx_;
  bool grpc_on_;
  Http2Parser parser_;
  ProtocolCounters& counters_;
  ProtocolCounters& grpc_counters_;
  std::vector<Http2Exchange> out_;
  bool shed_pending_[2] = {false, false};

  static Http2Limits limits(SessionContext& ctx) {
    Http2Limits l;
    l.max_body_kept = ctx.limits().max_body_kept;
    l.max_headers = ctx.limits().max_headers;
    l.max_header_list_bytes = ctx.limits().max_header_bytes;
    return l;
  }

  void drain(uint32_t why) {
    for (Http2Exchange& ex : out_) {
      CallContent c;
      const bool grpc = grpc_on_ && is_grpc(ex);
      c.protocol = grpc ? kGrpc : kHttp2;
      c.flags = exchange_flags(ex);
      if (ex.incomplete) c.flags |= why;
      for (int s = 0; s < 2; s++)
        if (shed_pending_[s]) {
          c.flags |= kFlagMemoryShed;
          shed_pending_[s] = false;
        }
      bool have_req = ex.request.has_headers || !ex.method.empty();
      bool have_resp = ex.response.has_headers || ex.status != 0 ||
                       (ex.reset && ex.reset_by == Http2Dir::ServerToClient);
      if (!have_req && !have_resp) {
        // A stream whose header blocks were all lost (cut, overflowed,
        // undecodable) or that was shut before any: it is still a call, shown
        // by the side it was seen from, the client's if neither.
        if (ex.response.frames > 0 && ex.request.frames == 0)
          have_resp = true;
        else
          have_req = true;
        c.flags |= kFlagHeadersLost;
      }
      c.ts_ns = have_req && ex.request.ts_first_ns ? ex.request.ts_first_ns : ex.response.ts_first_ns;
      if (!c.ts_ns) c.ts_ns = std::max(ex.request.ts_last_ns, ex.response.ts_last_ns);
      if (have_resp) c.end_ns = std::max(ex.response.ts_last_ns, ex.request.ts_last_ns);
      c.key_extra = (ctx_.next_seq() << 32) | ex.stream_id;
      if (grpc)
        grpc_records(c, ex, have_req, have_resp);
      else
        http2_records(c, ex, have_req, have_resp);
      ctx_.emit(std::move(c));
    }
    out_.clear();
  }

  void http2_records(CallContent& c, Http2Exchange& ex, bool have_req, bool have_resp) {
    c.method = ex.method;
    c.path = ex.path;
    if (ex.status) c.status = ex.status;
    const std::string rst = ex.reset ? http2_error_name(ex.rst_error) : std::string();
    const size_t max_body = ctx_.limits().max_body_kept;
    if (have_req) {
      auto r = std::make_shared<Http2Record>();
      r->is_request = true;
      r->method = std::move(ex.method);
      r->path = std::move(ex.path);
      r->authority = std::move(ex.authority);
      r->scheme = std::move(ex.scheme);
      r->protocol = std::move(ex.protocol);
      r->stream_id = ex.stream_id;
      r->pushed = ex.pushed;
      r->promised_on = ex.promised_on;
      r->body_size = ex.request.body_size;
      c.flags |= take_body(*r, ex.request, max_body);
      r->headers = std::move(ex.request.headers);
      r->trailers = std::move(ex.request.trailers);
      if (ex.reset && ex.reset_by == Http2Dir::ClientToServer) r->rst_stream = rst;
      c.request = std::move(r);
    }
    if (have_resp) {
      auto r = std::make_shared<Http2Record>();
      r->is_request = false;
      r->stream_id = ex.stream_id;
      r->status = ex.status;
      r->interim = std::move(ex.interim);
      r->body_size = ex.response.body_size;
      c.flags |= take_body(*r, ex.response, max_body);
      r->headers = std::move(ex.response.headers);
      r->trailers = std::move(ex.response.trailers);
      if (ex.reset && ex.reset_by == Http2Dir::ServerToClient) r->rst_stream = rst;
      c.response = std::move(r);
    }
  }

  void grpc_records(CallContent& c, Http2Exchange& ex, bool have_req, bool have_resp) {
    GrpcCall g = grpc_call(ex);
    c.method = g.service.empty() ? ex.path : g.service + "/" + g.method;
    c.path = ex.path;
    if (g.status >= 0) c.status = g.status;
    grpc_counters_.breakdowns["grpc_status"][g.status >= 0 ? grpc_status_name(g.status) : "none"]++;
    if (g.request.incomplete || g.response.incomplete) c.flags |= kFlagIncomplete;
    if (g.request.bad_flag || g.response.bad_flag) c.flags |= kFlagProtocolError;
    const std::string rst = ex.reset ? http2_error_name(ex.rst_error) : std::string();
    if (have_req) {
      auto r = std::make_shared<GrpcRecord>();
      r->is_request = true;
      r->service = g.service;
      r->method = g.method;
      r->path = std::move(ex.path);
      r->authority = std::move(ex.authority);
      r->encoding = g.request_encoding;
      r->timeout = g.timeout;
      r->stream_id = ex.stream_id;
      r->headers = std::move(ex.request.headers);
      r->trailers = std::move(ex.request.trailers);
      r->messages = std::move(g.request);
      if (ex.reset && ex.reset_by == Http2Dir::ClientToServer) r->rst_stream = rst;
      c.request = std::move(r);
    }
    if (have_resp) {
      auto r = std::make_shared<GrpcRecord>();
      r->is_request = false;
      r->service = g.service;
      r->method = g.method;
      r->encoding = g.response_encoding;
      r->stream_id = ex.stream_id;
      r->http_status = ex.status;
      r->grpc_status = g.status;
      r->grpc_message = g.message;
      r->headers = std::move(ex.response.headers);
      r->trailers = std::move(ex.response.trailers);
      r->messages = std::move(g.response);
      if (ex.reset && ex.reset_by == Http2Dir::ServerToClient) r->rst_stream = rst;
      c.response = std::move(r);
    }
  }
};

void write_messages(JsonOut& out, const GrpcRecord& r) {
  const GrpcMessages& m = r.messages;
  out.field("message_count", m.count);
  out.field("message_bytes", m.bytes);
  out.key("messages");
  out.begin_array();
  for (const GrpcMessage& msg : m.kept) {
    out.begin_object();
    out.field("size", uint64_t{msg.length});
    out.field("compressed", msg.compressed);
    GrpcMessage shown = msg;
    // A compressed message in a coding known here is shown decoded.
    if (msg.compressed && !msg.truncated && !r.encoding.empty()) {
      DecodedBody d = decode_content(
          r.encoding, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(msg.data.data()), msg.data.size()));
      if (d.decoded && d.error.empty() && !d.truncated && !d.incomplete) {
        shown.data = std::move(d.data);
        shown.compressed = false;
        shown.length = static_cast<uint32_t>(shown.data.size());
      }
    }
    nlohmann::json data = grpc_decoder()->decode(r.service, r.method, r.is_request, shown);
    if (data.is_null()) {
      out.key("data");
      out.null();
      BodyText t = body_text(
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(msg.data.data()), msg.data.size()), false);
      if (!msg.data.empty()) {
        out.field("body", t.value);
        out.field("body_encoding", "base64");
      }
    } else {
      out.key("data");
      out.raw(data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    }
    if (msg.truncated) out.field("truncated", true);
    out.end_object();
  }
  out.end_array();
  if (m.unframed) out.field("unframed", true);
}

}  // namespace

void Http2Record::write_json(JsonOut& out) const {
  out.begin_object();
  if (is_request) {
    out.field("method", method);
    out.field("path", path);
    out.field("authority", authority);
    out.field("scheme", scheme);
    if (!protocol.empty()) out.field("protocol", protocol);
    out.field("version", "HTTP/2");
    if (pushed) {
      out.field("pushed", true);
      out.field("promised_on", promised_on);
    }
  } else if (status) {
    out.field("status", status);
  }
  out.field("stream_id", stream_id);
  if (!interim.empty()) {
    out.key("interim");
    out.begin_array();
    for (int s : interim) out.number(s);
    out.end_array();
  }
  out.key("headers");
  write_headers_json(out, headers);
  if (!trailers.empty()) {
    out.key("trailers");
    write_headers_json(out, trailers);
  }
  out.field("body_size", body_size);
  write_body_fields(out, body, body_binary, content_encoding, body_decoded_size);
  if (!rst_stream.empty()) out.field("rst_stream", rst_stream);
  out.end_object();
}

size_t Http2Record::heap_bytes() const {
  return proto::heap_bytes(sizeof(Http2Record)) + headers_heap(headers) + headers_heap(trailers) +
         string_heap_bytes(method) + string_heap_bytes(path) + string_heap_bytes(authority) + string_heap_bytes(body);
}

void GrpcRecord::write_json(JsonOut& out) const {
  out.begin_object();
  out.field("service", service);
  out.field("method", method);
  if (is_request) {
    out.field("path", path);
    out.field("authority", authority);
    if (!timeout.empty()) out.field("timeout", timeout);
  } else {
    if (http_status) out.field("status", http_status);
    out.key("grpc_status");
    if (grpc_status >= 0) {
      out.number(grpc_status);
      out.field("grpc_status_name", grpc_status_name(grpc_status));
      out.field("grpc_message", grpc_message);
    } else {
      out.null();
    }
  }
  out.field("stream_id", stream_id);
  if (!encoding.empty() && encoding != "identity") out.field("encoding", encoding);
  out.key("headers");
  write_headers_json(out, headers);
  if (!trailers.empty()) {
    out.key("trailers");
    write_headers_json(out, trailers);
  }
  write_messages(out, *this);
  if (!rst_stream.empty()) out.field("rst_stream", rst_stream);
  out.end_object();
}

size_t GrpcRecord::heap_bytes() const {
  size_t n = proto::heap_bytes(sizeof(GrpcRecord)) + headers_heap(headers) + headers_heap(trailers) +
             string_heap_bytes(service) + string_heap_bytes(method) + string_heap_bytes(path);
  for (const GrpcMessage& m : messages.kept) n += sizeof(GrpcMessage) + string_heap_bytes(m.data);
  return n;
}

size_t GrpcRecord::body_bytes() const {
  size_t n = 0;
  for (const GrpcMessage& m : messages.kept) n += m.data.size();
  return n;
}

std::string grpc_status_name(int code) {
  static const char* kNames[] = {"OK",
                                 "CANCELLED",
                                 "UNKNOWN",
                                 "INVALID_ARGUMENT",
                                 "DEADLINE_EXCEEDED",
                                 "NOT_FOUND",
                                 "ALREADY_EXISTS",
                                 "PERMISSION_DENIED",
                                 "RESOURCE_EXHAUSTED",
                                 "FAILED_PRECONDITION",
                                 "ABORTED",
                                 "OUT_OF_RANGE",
                                 "UNIMPLEMENTED",
                                 "INTERNAL",
                                 "UNAVAILABLE",
                                 "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  if (code >= 0 && code <= 16) return kNames[code];
  return "UNKNOWN_" + std::to_string(code);
}

std::string http2_error_name(uint32_t code) {
  static const char* kNames[] = {"NO_ERROR",       "PROTOCOL_ERROR",      "INTERNAL_ERROR",     "FLOW_CONTROL_ERROR",
                                 "SETTINGS_TIMEOUT", "STREAM_CLOSED",     "FRAME_SIZE_ERROR",   "REFUSED_STREAM",
                                 "CANCEL",         "COMPRESSION_ERROR",   "CONNECT_ERROR",      "ENHANCE_YOUR_CALM",
                                 "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"};
  if (code < sizeof kNames / sizeof kNames[0]) return kNames[code];
  return "0x" + [&] {
    char buf[16];
    std::snprintf(buf, sizeof buf, "%x", code);
    return std::string(buf);
  }();
}

void set_grpc_decoder(std::shared_ptr<const GrpcMessageDecoder> decoder) {
  grpc_decoder() = decoder ? std::move(decoder) : std::make_shared<SchemalessGrpcDecoder>();
}

Detection Http2Protocol::detect(std::span<const uint8_t> first, int side, const FlowView&) const {
  Detection d;
  const size_t n = std::min(first.size(), kHttp2Preface.size());
  if (n > 0 && std::string_view(reinterpret_cast<const char*>(first.data()), n) == kHttp2Preface.substr(0, n)) {
    if (n < 14) {
      d.need_more = true;  // "PRI * HTTP/2.0" is also an HTTP/1 request line's start: wait
      return d;
    }
    d.matched = true;
    d.client_side = side;
    return d;
  }
  // Joined mid-connection: frames from the first byte.
  if (first.size() >= 2 * kHttp2FrameHeader && looks_like_http2(first)) d.matched = true;
  return d;
}

std::unique_ptr<StreamSession> Http2Protocol::open(SessionContext& ctx) const {
  return std::make_unique<Http2Session>(ctx);
}

std::unique_ptr<StreamSession> open_h2c_upgrade(SessionContext& ctx, const HttpMessage& request, uint64_t ts_ns) {
  auto s = std::make_unique<Http2Session>(ctx);
  std::string authority;
  if (const std::string* h = request.header("host")) authority = *h;
  std::vector<Header> headers;
  for (const Header& h : request.headers)
    if (h.name != "host" && h.name != "connection" && h.name != "upgrade" && h.name != "http2-settings")
      headers.push_back(h);
  s->parser().open_upgraded(request.method, request.target, authority, std::move(headers), request.body_size,
                            request.ts_first_ns, ts_ns);
  return s;
}

}  // namespace tapwire::proto

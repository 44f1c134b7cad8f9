#include "websocket/session.hpp"

#include "body/body_text.hpp"
#include "http1/session.hpp"

namespace tapwire::proto {
namespace {

std::string header_list(const HttpMessage& m, std::string_view name) {
  std::string v;
  for (const Header& h : m.headers)
    if (h.name == name) v += (v.empty() ? "" : ", ") + h.value;
  return v;
}

class WebSocketSession final : public StreamSession {
 public:
  WebSocketSession(SessionContext& ctx, WsDeflate deflate, uint64_t link_key)
      : ctx_(ctx),
        counters_(ctx.counters(kWebSocket)),
        link_(link_key),
        parser_{WebSocketParser(WebSocketParser::Sender::Client, deflate, limits(ctx)),
                WebSocketParser(WebSocketParser::Sender::Server, deflate, limits(ctx))} {}

  void data(Dir d, std::span<const uint8_t> bytes, uint64_t ts) override {
    const int i = dir_index(d);
    auto& buf = buf_[i];
    std::span<const uint8_t> in = bytes;
    if (!buf.empty()) {
      buf.insert(buf.end(), bytes.begin(), bytes.end());
      in = buf;
    }
    size_t used = 0;
    for (int guard = 0; guard < 100000 && used < in.size(); guard++) {
      ParseResult r = parser_[i].feed(in.subspan(used), ts, out_);
      used += r.consumed;
      if (r.status == ParseStatus::Invalid) counters_.parse_errors++;
      drain(d);
      if (r.status == ParseStatus::NeedMoreData || r.consumed == 0) break;
    }
    // What is left is a frame header received in part (at most 14 bytes).
    if (used >= in.size())
      buf.clear();
    else if (in.data() == buf.data())
      buf.erase(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(used));
    else
      buf.assign(in.begin() + static_cast<std::ptrdiff_t>(used), in.end());
  }

  void gap(Dir d, uint64_t len) override {
    buf_[dir_index(d)].clear();
    parser_[dir_index(d)].on_gap(len);
  }

  void end(Dir d, uint64_t ts) override {
    parser_[dir_index(d)].on_close(ts, out_);
    drain(d);
  }

  void close(uint32_t why, uint64_t ts) override {
    for (Dir d : {Dir::ClientToServer, Dir::ServerToClient}) {
      close_why_ = why;
      end(d, ts);
    }
  }

  size_t memory_bytes() const override {
    return heap_bytes(sizeof(*this)) + parser_[0].memory_bytes() + parser_[1].memory_bytes() +
           heap_bytes(buf_[0].capacity()) + heap_bytes(buf_[1].capacity()) +
           heap_bytes(out_.capacity() * sizeof(WsMessage));
  }
  size_t buffered_bytes() const override { return buf_[0].size() + buf_[1].size(); }
  void mark_shed(Dir d) override { shed_pending_[dir_index(d)] = true; }

 private:
  SessionContext& ctx_;
  ProtocolCounters& counters_;
  uint64_t link_;
  WebSocketParser parser_[2];
  std::vector<uint8_t> buf_[2];
  std::vector<WsMessage> out_;
  bool shed_pending_[2] = {false, false};
  uint32_t close_why_ = 0;
  uint64_t* opcode_count_[16] = {};

  static WsLimits limits(SessionContext& ctx) {
    WsLimits l;
    l.max_message_kept = ctx.limits().max_body_kept;
    return l;
  }

  void drain(Dir d) {
    for (WsMessage& m : out_) {
      const uint8_t op = m.opcode & 15;
      if (!opcode_count_[op]) opcode_count_[op] = &counters_.breakdowns["ws_messages"][m.opcode_name()];
      ++*opcode_count_[op];
      CallContent c;
      c.protocol = kWebSocket;
      c.ts_ns = m.ts_first_ns;
      c.end_ns = m.ts_last_ns;
      c.key_extra = ctx_.next_seq();
      c.link_key = link_;
      c.one_message = true;
      c.method = m.opcode_name();
      if (m.opcode == kWsClose && m.close_code) c.status = m.close_code;
      if (m.truncated) c.flags |= kFlagTruncated;
      if (m.gap) c.flags |= kFlagGap;
      if (m.incomplete) c.flags |= kFlagIncomplete | close_why_;
      if (m.protocol_error) c.flags |= kFlagProtocolError;
      if (shed_pending_[dir_index(d)]) {
        c.flags |= kFlagMemoryShed;
        shed_pending_[dir_index(d)] = false;
      }
      auto rec = std::make_shared<WsRecord>(std::move(m));
      if (d == Dir::ClientToServer)
        c.request = std::move(rec);
      else
        c.response = std::move(rec);
      ctx_.emit(std::move(c));
    }
    out_.clear();
  }
};

}  // namespace

void WsRecord::write_json(JsonOut& out) const {
  const WsMessage& m = msg;
  out.begin_object();
  out.field("opcode", m.opcode_name());
  out.field("size", m.decoded_size);
  out.field("wire_size", m.payload_size);  // payload bytes as sent (compressed, when compressed)
  out.field("frames", m.frames);
  out.field("compressed", m.compressed);
  if (!m.payload.empty()) {
    auto bytes = std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(m.payload.data()), m.payload.size());
    BodyText t = body_text(bytes, m.opcode == kWsText);
    out.field("body", t.value);
    if (t.base64) out.field("body_encoding", "base64");
  }
  if (m.opcode == kWsClose) {
    if (m.close_code) out.field("close_code", uint64_t{m.close_code});
    out.field("close_reason", m.close_reason);
  }
  if (!m.error.empty()) out.field("error", m.error);
  out.end_object();
}

size_t WsRecord::heap_bytes() const { return proto::heap_bytes(sizeof(WsRecord)) + ws_message_heap_bytes(msg); }

std::unique_ptr<StreamSession> open_websocket_upgrade(SessionContext& ctx, const HttpMessage& request,
                                                      const HttpMessage& response, uint64_t link_key) {
  WsDeflate deflate = negotiate_permessage_deflate(header_list(request, "sec-websocket-extensions"),
                                                   header_list(response, "sec-websocket-extensions"));
  return std::make_unique<WebSocketSession>(ctx, deflate, link_key);
}

}  // namespace tapwire::proto

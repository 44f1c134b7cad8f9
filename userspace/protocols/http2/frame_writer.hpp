// Writes HTTP/2 frames and HPACK header blocks (libnghttp2's deflater):
// what the tests and the fuzz target's seeds are made of. Not used by the
// parser; header-only so that it costs nothing where it is not included.
#pragma once

#include <nghttp2/nghttp2.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http2/http2.hpp"

namespace tapwire::proto::h2w {

inline void put_be32(std::string& s, uint32_t v) {
  for (int k = 24; k >= 0; k -= 8) s.push_back(static_cast<char>((v >> k) & 0xff));
}

// One frame: 9-byte header then the payload as given.
inline std::string frame(Http2FrameType type, uint8_t flags, uint32_t sid, std::string_view payload) {
  std::string s;
  const size_t n = payload.size();
  s.push_back(static_cast<char>((n >> 16) & 0xff));
  s.push_back(static_cast<char>((n >> 8) & 0xff));
  s.push_back(static_cast<char>(n & 0xff));
  s.push_back(static_cast<char>(type));
  s.push_back(static_cast<char>(flags));
  put_be32(s, sid & 0x7fffffffu);
  s.append(payload);
  return s;
}

// A frame header alone (for lengths nobody would send in full).
inline std::string frame_header(uint8_t type, uint8_t flags, uint32_t sid, uint32_t len) {
  std::string s = frame(static_cast<Http2FrameType>(type), flags, sid, {});
  s[0] = static_cast<char>((len >> 16) & 0xff);
  s[1] = static_cast<char>((len >> 8) & 0xff);
  s[2] = static_cast<char>(len & 0xff);
  return s;
}

inline std::string settings(const std::vector<std::pair<uint16_t, uint32_t>>& entries) {
  std::string p;
  for (const auto& [id, v] : entries) {
    p.push_back(static_cast<char>(id >> 8));
    p.push_back(static_cast<char>(id & 0xff));
    put_be32(p, v);
  }
  return frame(Http2FrameType::Settings, 0, 0, p);
}
inline std::string settings_ack() { return frame(Http2FrameType::Settings, h2flag::kAck, 0, {}); }

// DATA; pad >= 0 adds PADDED with that many padding bytes.
inline std::string data(uint32_t sid, std::string_view body, bool end_stream, int pad = -1) {
  std::string p;
  uint8_t flags = end_stream ? h2flag::kEndStream : 0;
  if (pad >= 0) {
    flags |= h2flag::kPadded;
    p.push_back(static_cast<char>(pad));
  }
  p.append(body);
  if (pad > 0) p.append(static_cast<size_t>(pad), '\0');
  return frame(Http2FrameType::Data, flags, sid, p);
}

struct HeadersOpts {
  bool end_stream = false;
  bool end_headers = true;
  int pad = -1;  // >= 0: PADDED
  bool priority = false;  // PRIORITY: 5 bytes of dependency and weight
};
inline std::string headers(uint32_t sid, std::string_view block, HeadersOpts o = {}) {
  std::string p;
  uint8_t flags = 0;
  if (o.end_stream) flags |= h2flag::kEndStream;
  if (o.end_headers) flags |= h2flag::kEndHeaders;
  if (o.pad >= 0) {
    flags |= h2flag::kPadded;
    p.push_back(static_cast<char>(o.pad));
  }
  if (o.priority) {
    flags |= h2flag::kPriority;
    put_be32(p, 0x80000000u | 1);  // exclusive, on stream 1
    p.push_back(static_cast<char>(15));  // weight 16
  }
  p.append(block);
  if (o.pad > 0) p.append(static_cast<size_t>(o.pad), '\0');
  return frame(Http2FrameType::Headers, flags, sid, p);
}

inline std::string continuation(uint32_t sid, std::string_view fragment, bool end_headers) {
  return frame(Http2FrameType::Continuation, end_headers ? h2flag::kEndHeaders : 0, sid, fragment);
}

inline std::string push_promise(uint32_t sid, uint32_t promised, std::string_view block, bool end_headers = true) {
  std::string p;
  put_be32(p, promised);
  p.append(block);
  return frame(Http2FrameType::PushPromise, end_headers ? h2flag::kEndHeaders : 0, sid, p);
}

inline std::string rst_stream(uint32_t sid, uint32_t error) {
  std::string p;
  put_be32(p, error);
  return frame(Http2FrameType::RstStream, 0, sid, p);
}

inline std::string goaway(uint32_t last, uint32_t error, std::string_view debug = {}) {
  std::string p;
  put_be32(p, last);
  put_be32(p, error);
  p.append(debug);
  return frame(Http2FrameType::Goaway, 0, 0, p);
}

inline std::string ping(bool ack = false) { return frame(Http2FrameType::Ping, ack ? h2flag::kAck : 0, 0, "12345678"); }

inline std::string window_update(uint32_t sid, uint32_t inc) {
  std::string p;
  put_be32(p, inc);
  return frame(Http2FrameType::WindowUpdate, 0, sid, p);
}

inline std::string priority(uint32_t sid) {
  std::string p;
  put_be32(p, 0);
  p.push_back(static_cast<char>(200));
  return frame(Http2FrameType::Priority, 0, sid, p);
}

using Fields = std::vector<std::pair<std::string, std::string>>;

// An HPACK encoder (one per direction, as in a real connection).
class Deflater {
 public:
  explicit Deflater(size_t max_table = 4096) {
    if (nghttp2_hd_deflate_new(&d_, max_table) != 0) throw std::runtime_error("nghttp2_hd_deflate_new");
  }
  ~Deflater() { nghttp2_hd_deflate_del(d_); }
  Deflater(const Deflater&) = delete;
  Deflater& operator=(const Deflater&) = delete;

  // The peer acknowledged SETTINGS_HEADER_TABLE_SIZE: the next block starts with a size update.
  void change_table_size(size_t n) { nghttp2_hd_deflate_change_table_size(d_, n); }

  // `never_index`: fields sent as "never indexed" literals (and not added to the table).
  std::string block(const Fields& fields, bool never_index = false) {
    std::vector<nghttp2_nv> nv;
    for (const auto& [n, v] : fields) {
      nv.push_back(nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                              reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(),
                              static_cast<uint8_t>(never_index ? NGHTTP2_NV_FLAG_NO_INDEX : NGHTTP2_NV_FLAG_NONE)});
    }
    std::string out(nghttp2_hd_deflate_bound(d_, nv.data(), nv.size()), '\0');
#if NGHTTP2_VERSION_NUM >= 0x013d00  // 1.61: the ssize_t API is deprecated
    const auto n = nghttp2_hd_deflate_hd2(d_, reinterpret_cast<uint8_t*>(out.data()), out.size(), nv.data(), nv.size());
#else
    const auto n = nghttp2_hd_deflate_hd(d_, reinterpret_cast<uint8_t*>(out.data()), out.size(), nv.data(), nv.size());
#endif
    if (n < 0) throw std::runtime_error("nghttp2_hd_deflate_hd");
    out.resize(static_cast<size_t>(n));
    return out;
  }

 private:
  nghttp2_hd_deflater* d_ = nullptr;
};

}  // namespace tapwire::proto::h2w

// gRPC calls from HTTP/2 exchanges. See grpc.hpp.
#include "grpc/grpc.hpp"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

namespace tapwire::proto {

namespace {

constexpr size_t kPrefix = 5;  // compressed flag + 4-byte length

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// grpc-status: a decimal code (0-16 today; any small number is kept).
int parse_status(const std::string* v) {
  if (!v || v->empty() || v->size() > 9) return -1;
  int n = 0;
  for (char c : *v) {
    if (c < '0' || c > '9') return -1;
    n = n * 10 + (c - '0');
  }
  return n;
}

// Both directions of one stream, framed as the DATA streams by.
class GrpcTap final : public Http2BodyTap {
 public:
  explicit GrpcTap(const GrpcLimits& lim) : framer_{GrpcFramer(lim), GrpcFramer(lim)} {}
  size_t data(Http2Dir dir, std::span<const uint8_t> bytes, size_t budget) override {
    return framer_[static_cast<int>(dir)].feed(bytes, budget);
  }
  void end(Http2Dir dir) override { framer_[static_cast<int>(dir)].finish(); }
  size_t memory_bytes() const override {
    // The message bytes were reported to the parser as they were kept.
    return sizeof(*this) + heap_bytes(framer_[0].messages().kept.capacity() * sizeof(GrpcMessage)) +
           heap_bytes(framer_[1].messages().kept.capacity() * sizeof(GrpcMessage));
  }
  GrpcFramer framer_[2];
};

}  // namespace

size_t GrpcFramer::feed(std::span<const uint8_t> bytes, size_t budget) {
  const uint8_t* p = bytes.data();
  const size_t n = bytes.size();
  size_t i = 0, kept = 0;
  while (i < n) {
    if (!in_body_) {
      const size_t take = std::min(kPrefix - have_, n - i);
      std::memcpy(prefix_ + have_, p + i, take);
      have_ += take;
      i += take;
      if (have_ < kPrefix) break;
      have_ = 0;
      in_body_ = true;
      left_ = uint32_t{prefix_[1]} << 24 | uint32_t{prefix_[2]} << 16 | uint32_t{prefix_[3]} << 8 | prefix_[4];
      // Only 0 and 1 are defined: anything else suggests we are not on a
      // message boundary (or a future extension); counted, framing goes on.
      if (prefix_[0] > 1) out_.bad_flag = true;
      cur_ = SIZE_MAX;
      cur_cut_ = false;
      if (out_.kept.size() < lim_.max_messages_kept) {
        GrpcMessage& m = out_.kept.emplace_back();
        m.compressed = prefix_[0] & 1;
        m.length = left_;
        cur_ = out_.kept.size() - 1;
      }
      if (left_ == 0) complete();
      continue;
    }
    const size_t take = std::min<size_t>(left_, n - i);
    if (cur_ != SIZE_MAX && !cur_cut_) {
      std::string& data = out_.kept[cur_].data;
      const size_t want = std::min(take, lim_.max_message_kept - std::min(lim_.max_message_kept, data.size()));
      const size_t k = std::min(want, budget - kept);
      if (k < want) cur_cut_ = true;
      data.append(reinterpret_cast<const char*>(p + i), k);
      kept += k;
    }
    left_ -= static_cast<uint32_t>(take);
    i += take;
    if (left_ == 0) complete();
  }
  return kept;
}

void GrpcFramer::complete() {
  const uint32_t len = uint32_t{prefix_[1]} << 24 | uint32_t{prefix_[2]} << 16 | uint32_t{prefix_[3]} << 8 | prefix_[4];
  out_.count++;
  out_.bytes += len;
  if (prefix_[0] & 1) out_.compressed++;
  out_.largest = std::max(out_.largest, len);
  if (cur_ != SIZE_MAX) out_.kept[cur_].truncated = out_.kept[cur_].data.size() < len;
  cur_ = SIZE_MAX;
  in_body_ = false;
}

void GrpcFramer::finish() {
  if (in_body_ || have_ > 0) {
    out_.incomplete = true;
    if (cur_ != SIZE_MAX) out_.kept[cur_].truncated = true;
  }
  in_body_ = false;
  have_ = 0;
  cur_ = SIZE_MAX;
}

size_t GrpcFramer::memory_bytes() const {
  size_t n = heap_bytes(out_.kept.capacity() * sizeof(GrpcMessage));
  for (const GrpcMessage& m : out_.kept) n += string_heap_bytes(m.data);
  return n;
}

bool is_grpc_content_type(std::string_view ct) {
  static constexpr std::string_view kType = "application/grpc";
  if (ct.size() < kType.size()) return false;
  for (size_t i = 0; i < kType.size(); i++)
    if (lower(ct[i]) != kType[i]) return false;
  // "application/grpc-web" is another protocol (trailers in the body).
  return ct.size() == kType.size() || ct[kType.size()] == '+' || ct[kType.size()] == ';';
}

bool is_grpc(const Http2Exchange& ex) {
  const std::string* ct = ex.request.header("content-type");
  if (!ct) ct = ex.response.header("content-type");
  return ct && is_grpc_content_type(*ct);
}

bool split_grpc_path(std::string_view path, std::string& service, std::string& method) {
  // "/" Service-Name "/" Method-Name, both non-empty.
  if (path.size() < 4 || path[0] != '/') return false;
  const size_t slash = path.find('/', 1);
  if (slash == std::string_view::npos || slash == 1 || slash + 1 == path.size() ||
      path.find('/', slash + 1) != std::string_view::npos)
    return false;
  service.assign(path.substr(1, slash - 1));
  method.assign(path.substr(slash + 1));
  return true;
}

std::string grpc_percent_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '%' && i + 2 < s.size() && hex_digit(s[i + 1]) >= 0 && hex_digit(s[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex_digit(s[i + 1]) << 4 | hex_digit(s[i + 2])));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

GrpcCall grpc_call(const Http2Exchange& ex, const GrpcLimits& limits) {
  GrpcCall c;
  c.stream_id = ex.stream_id;
  split_grpc_path(ex.path, c.service, c.method);
  const std::string* ct = ex.request.header("content-type");
  if (!ct) ct = ex.response.header("content-type");
  if (ct) c.content_type = *ct;
  if (const std::string* e = ex.request.header("grpc-encoding")) c.request_encoding = *e;
  if (const std::string* e = ex.response.header("grpc-encoding")) c.response_encoding = *e;
  if (const std::string* t = ex.request.header("grpc-timeout")) c.timeout = *t;

  // Trailers carry the status; a Trailers-Only response (an error before
  // any message) puts it in its only header block.
  const std::string* status = ex.response.trailer("grpc-status");
  const std::string* message = ex.response.trailer("grpc-message");
  if (!status) {
    status = ex.response.header("grpc-status");
    if (status) {
      message = ex.response.header("grpc-message");
      c.trailers_only = true;
    }
  }
  c.status = parse_status(status);
  if (message) c.message = grpc_percent_decode(*message);

  if (const auto* tap = dynamic_cast<const GrpcTap*>(ex.tap.get())) {
    c.framed_live = true;
    // A copy, finished: a stream reset or cut inside a message never ended
    // its framers.
    for (int d = 0; d < 2; d++) {
      GrpcFramer f = tap->framer_[d];
      f.finish();
      (d == 0 ? c.request : c.response) = std::move(f.messages());
    }
    return c;
  }
  for (int d = 0; d < 2; d++) {
    const Http2Message& m = ex.message(static_cast<Http2Dir>(d));
    GrpcFramer f(limits);
    f.feed({reinterpret_cast<const uint8_t*>(m.body.data()), m.body.size()});
    f.finish();
    GrpcMessages& out = d == 0 ? c.request : c.response;
    out = std::move(f.messages());
    // The kept body is a prefix of what was sent when it was cut; a stream
    // joined late may have sent messages before we looked.
    if (m.body_truncated || (ex.partial && !m.has_headers)) out.unframed = true;
  }
  return c;
}

Http2TapFactory grpc_tap_factory(GrpcLimits limits) {
  return [limits](const Http2Exchange& ex) -> std::unique_ptr<Http2BodyTap> {
    if (!is_grpc(ex)) return nullptr;
    auto tap = std::make_unique<GrpcTap>(limits);
    // A direction whose DATA began before the tap (its header block was not
    // seen: a late join) is framed from an unknown offset.
    for (int d = 0; d < 2; d++) {
      const Http2Message& m = ex.message(static_cast<Http2Dir>(d));
      if (m.body_size > 0 || (ex.partial && !m.has_headers)) tap->framer_[d].messages().unframed = true;
    }
    return tap;
  };
}

nlohmann::json SchemalessGrpcDecoder::decode(std::string_view, std::string_view, bool, const GrpcMessage& m) const {
  if (m.compressed || m.truncated) return nullptr;
  ProtobufResult r = decode_protobuf({reinterpret_cast<const uint8_t*>(m.data.data()), m.data.size()}, lim_);
  if (!r.ok) return nullptr;
  nlohmann::json out = {{"fields", std::move(r.fields)}};
  if (r.truncated) out["truncated"] = true;
  return out;
}

}  // namespace tapwire::proto

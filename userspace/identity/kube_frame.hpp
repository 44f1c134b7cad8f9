// Framing of tapwire-kube-watch's stdout: a 4-byte little-endian length (1 to
// 4 MiB), then that many bytes of one compact JSON workload object.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tapwire::identity::kube {

inline constexpr size_t kMaxFrame = 4u << 20;

// The frame for payload; std::nullopt if it is empty or over kMaxFrame.
std::optional<std::string> encode_frame(std::string_view payload);

// Splits a byte stream into frame payloads. A length of 0 or over kMaxFrame
// is an error that stops the reader (the stream is out of step).
class FrameReader {
 public:
  void feed(std::string_view bytes);
  // The next complete payload, if any.
  std::optional<std::string> next();
  bool failed() const { return !error_.empty(); }
  const std::string& error() const { return error_; }
  size_t buffered() const { return buf_.size() - pos_; }

 private:
  std::string buf_;
  size_t pos_ = 0;
  std::string error_;
};

}  // namespace tapwire::identity::kube

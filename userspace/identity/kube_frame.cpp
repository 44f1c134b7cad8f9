#include "kube_frame.hpp"

namespace tapwire::identity::kube {

std::optional<std::string> encode_frame(std::string_view payload) {
  if (payload.empty() || payload.size() > kMaxFrame) return std::nullopt;
  std::string out;
  out.reserve(4 + payload.size());
  auto n = static_cast<uint32_t>(payload.size());
  for (int i = 0; i < 4; ++i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  out.append(payload);
  return out;
}

void FrameReader::feed(std::string_view bytes) {
  if (failed()) return;
  if (pos_ > 0 && pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > (1u << 20)) {  // drop what was consumed, now and then
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  buf_.append(bytes);
}

std::optional<std::string> FrameReader::next() {
  if (failed() || buffered() < 4) return std::nullopt;
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i) n |= static_cast<uint32_t>(static_cast<unsigned char>(buf_[pos_ + i])) << (8 * i);
  if (n == 0 || n > kMaxFrame) {
    error_ = "frame length " + std::to_string(n) + " is outside 1.." + std::to_string(kMaxFrame);
    return std::nullopt;
  }
  if (buffered() < 4 + static_cast<size_t>(n)) return std::nullopt;
  std::string out = buf_.substr(pos_ + 4, n);
  pos_ += 4 + n;
  return out;
}

}  // namespace tapwire::identity::kube

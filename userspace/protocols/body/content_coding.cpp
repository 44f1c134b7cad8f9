// Content codings, undone as a pipeline of streaming decoders: the body goes
// into the decoder of the last coding applied, whose output goes, in pieces
// of kStageBuf bytes, into the next one, and the last one's output into the
// result until max_output. Nothing is ever inflated whole: a compression
// bomb costs max_output bytes of memory and the CPU to produce them, and
// stops there.
#include "content_coding.hpp"

#include <brotli/decode.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <climits>
#include <memory>
#include <vector>

namespace tapwire::proto {

namespace {

constexpr size_t kStageBuf = 16 * 1024;  // output of one decoder step, handed down the chain
// zstd frames declare their window; the decoder allocates it. 2^23 (8 MiB) is
// what RFC 9659 lets HTTP recipients insist on; libzstd's default limit is
// 2^27 (128 MiB), too much to allocate for one hostile body.
constexpr int kZstdWindowLogMax = 23;

enum class Step : uint8_t {
  Ok,  // progress made, or more input / output space needed
  End,  // the compressed stream is over; what input is left is not part of it
  Error,  // corrupt: see Stage::error
};

class Stage {
 public:
  virtual ~Stage() = default;
  // Decodes from [in, in + in_left) into [out, out + out_left), advancing both.
  virtual Step run(const uint8_t*& in, size_t& in_left, uint8_t*& out, size_t& out_left) = 0;
  // The input so far ends where a stream ends (not inside one).
  virtual bool complete() const = 0;
  std::string error;
};

// gzip (RFC 1952, and zlib streams: windowBits 15+32 detects either),
// deflate: zlib-wrapped (RFC 1950) as the spec says, or raw (RFC 1951) as
// some servers send it and every browser accepts.
class ZlibStage final : public Stage {
 public:
  enum class Mode : uint8_t { Gzip, Deflate };
  explicit ZlibStage(Mode m) : mode_(m) {}
  ~ZlibStage() override {
    if (init_) inflateEnd(&z_);
  }
  ZlibStage(const ZlibStage&) = delete;
  ZlibStage& operator=(const ZlibStage&) = delete;

  Step run(const uint8_t*& in, size_t& in_left, uint8_t*& out, size_t& out_left) override {
    if (!init_) {
      int bits = 15 + 32;
      if (mode_ == Mode::Deflate) {
        // The first two bytes tell a zlib header (CM 8, CINFO <= 7, FCHECK)
        // from raw deflate; keep them aside until both are there.
        while (stash_n_ < 2 && in_left > 0) {
          stash_[stash_n_++] = *in++;
          in_left--;
        }
        if (stash_n_ < 2) return Step::Ok;
        const bool zlib = (stash_[0] & 0x0f) == 8 && (stash_[0] >> 4) <= 7 &&
                          ((unsigned{stash_[0]} << 8) | stash_[1]) % 31 == 0;
        bits = zlib ? 15 : -15;
      }
      z_ = z_stream{};
      if (inflateInit2(&z_, bits) != Z_OK) {
        error = name() + ": cannot initialise the decoder";
        return Step::Error;
      }
      init_ = true;
    }
    if (stash_pos_ < stash_n_) {
      const uint8_t* s = stash_ + stash_pos_;
      size_t s_left = stash_n_ - stash_pos_;
      const Step r = inflate_some(s, s_left, out, out_left);
      stash_pos_ = stash_n_ - s_left;
      if (r != Step::Ok || stash_pos_ < stash_n_) return r;
    }
    return inflate_some(in, in_left, out, out_left);
  }

  bool complete() const override { return ended_; }

 private:
  std::string name() const { return mode_ == Mode::Gzip ? "gzip" : "deflate"; }

  Step inflate_some(const uint8_t*& in, size_t& in_left, uint8_t*& out, size_t& out_left) {
    if (ended_) {
      // gzip allows several members one after the other (RFC 1952 2.2);
      // anything else after the end is ignored.
      if (mode_ != Mode::Gzip || in_left == 0) return in_left == 0 ? Step::Ok : Step::End;
      if (in[0] != 0x1f) return Step::End;
      inflateReset(&z_);
      ended_ = false;
    }
    z_.next_in = const_cast<Bytef*>(in);
    z_.avail_in = static_cast<uInt>(std::min<size_t>(in_left, UINT_MAX));
    z_.next_out = out;
    z_.avail_out = static_cast<uInt>(std::min<size_t>(out_left, UINT_MAX));
    const uInt in0 = z_.avail_in, out0 = z_.avail_out;
    const int r = inflate(&z_, Z_NO_FLUSH);
    in += in0 - z_.avail_in;
    in_left -= in0 - z_.avail_in;
    out += out0 - z_.avail_out;
    out_left -= out0 - z_.avail_out;
    switch (r) {
      case Z_OK:
      case Z_BUF_ERROR:  // no progress possible: needs input (or output space)
        return Step::Ok;
      case Z_STREAM_END:
        ended_ = true;
        return mode_ == Mode::Gzip ? Step::Ok : Step::End;  // gzip: another member may follow
      case Z_NEED_DICT:
        error = name() + ": the stream needs a preset dictionary";
        return Step::Error;
      case Z_MEM_ERROR:
        error = name() + ": out of memory";
        return Step::Error;
      default:
        error = name() + ": " + (z_.msg ? z_.msg : "corrupt data");
        return Step::Error;
    }
  }

  Mode mode_;
  z_stream z_{};
  bool init_ = false;
  bool ended_ = false;
  uint8_t stash_[2] = {0, 0};
  uint8_t stash_n_ = 0, stash_pos_ = 0;
};

class BrotliStage final : public Stage {
 public:
  BrotliStage() : st_(BrotliDecoderCreateInstance(nullptr, nullptr, nullptr)) {}
  ~BrotliStage() override {
    if (st_) BrotliDecoderDestroyInstance(st_);
  }
  BrotliStage(const BrotliStage&) = delete;
  BrotliStage& operator=(const BrotliStage&) = delete;

  Step run(const uint8_t*& in, size_t& in_left, uint8_t*& out, size_t& out_left) override {
    if (!st_) {
      error = "br: cannot initialise the decoder";
      return Step::Error;
    }
    if (ended_) return Step::End;
    const BrotliDecoderResult r = BrotliDecoderDecompressStream(st_, &in_left, &in, &out_left, &out, nullptr);
    switch (r) {
      case BROTLI_DECODER_RESULT_SUCCESS:
        ended_ = true;
        return Step::End;
      case BROTLI_DECODER_RESULT_NEEDS_MORE_INPUT:
      case BROTLI_DECODER_RESULT_NEEDS_MORE_OUTPUT:
        return Step::Ok;
      default:
        error = std::string("br: ") + BrotliDecoderErrorString(BrotliDecoderGetErrorCode(st_));
        return Step::Error;
    }
  }

  bool complete() const override { return ended_; }

 private:
  BrotliDecoderState* st_;
  bool ended_ = false;
};

class ZstdStage final : public Stage {
 public:
  ZstdStage() : d_(ZSTD_createDCtx()) {
    if (d_) ZSTD_DCtx_setParameter(d_, ZSTD_d_windowLogMax, kZstdWindowLogMax);
  }
  ~ZstdStage() override { ZSTD_freeDCtx(d_); }
  ZstdStage(const ZstdStage&) = delete;
  ZstdStage& operator=(const ZstdStage&) = delete;

  Step run(const uint8_t*& in, size_t& in_left, uint8_t*& out, size_t& out_left) override {
    if (!d_) {
      error = "zstd: cannot initialise the decoder";
      return Step::Error;
    }
    ZSTD_inBuffer ib{in, in_left, 0};
    ZSTD_outBuffer ob{out, out_left, 0};
    const size_t r = ZSTD_decompressStream(d_, &ob, &ib);
    in += ib.pos;
    in_left -= ib.pos;
    out += ob.pos;
    out_left -= ob.pos;
    if (ZSTD_isError(r)) {
      error = std::string("zstd: ") + ZSTD_getErrorName(r);
      return Step::Error;
    }
    // 0: a frame is complete and flushed. More input is a further frame
    // (RFC 8878 allows several), which libzstd starts by itself. (A call
    // that took and gave nothing says nothing new.)
    if (ib.pos > 0 || ob.pos > 0) frame_end_ = r == 0;
    return Step::Ok;
  }

  bool complete() const override { return frame_end_; }

 private:
  ZSTD_DCtx* d_;
  bool frame_end_ = false;
};

enum class Coding : uint8_t { Identity, Gzip, Deflate, Br, Zstd, Unknown };

Coding coding_of(std::string_view lower) {
  if (lower == "gzip" || lower == "x-gzip") return Coding::Gzip;
  if (lower == "deflate") return Coding::Deflate;
  if (lower == "br") return Coding::Br;
  if (lower == "zstd") return Coding::Zstd;
  if (lower == "identity") return Coding::Identity;
  return Coding::Unknown;
}

std::unique_ptr<Stage> make_stage(Coding c) {
  switch (c) {
    case Coding::Gzip: return std::make_unique<ZlibStage>(ZlibStage::Mode::Gzip);
    case Coding::Deflate: return std::make_unique<ZlibStage>(ZlibStage::Mode::Deflate);
    case Coding::Br: return std::make_unique<BrotliStage>();
    case Coding::Zstd: return std::make_unique<ZstdStage>();
    default: return nullptr;
  }
}

// The decoders of a chain, stages_[0] taking the body as sent.
class Pipeline {
 public:
  Pipeline(std::vector<std::unique_ptr<Stage>> stages, const DecodeLimits& lim, DecodedBody& res)
      : stages_(std::move(stages)), lim_(lim), res_(res), bufs_(stages_.size()), ended_(stages_.size(), false) {
    for (auto& b : bufs_) b.resize(kStageBuf);
  }

  void run(std::span<const uint8_t> body) {
    if (!push(0, body.data(), body.size())) return;  // stopped: an error or a cap
    // Every stage got all its input: a stage not at the end of a stream was cut short.
    for (const auto& s : stages_)
      if (!s->complete()) res_.incomplete = true;
  }

 private:
  // Feeds n bytes to stage i, its output on down the chain. False: stop
  // (an error, or a cap reached).
  bool push(size_t i, const uint8_t* p, size_t n) {
    if (ended_[i]) return true;  // after the end of its stream: ignored
    Stage& s = *stages_[i];
    for (;;) {
      uint8_t* o = bufs_[i].data();
      size_t room = kStageBuf;
      const size_t n0 = n;
      const Step r = s.run(p, n, o, room);
      const size_t produced = kStageBuf - room;
      if (produced > 0 && !emit(i + 1, bufs_[i].data(), produced)) return false;
      if (r == Step::Error) {
        res_.error = s.error;
        return false;
      }
      if (r == Step::End) {
        ended_[i] = true;
        return true;
      }
      if (produced == 0 && n == n0) return true;  // no progress: all input taken, needs more
    }
  }

  bool emit(size_t j, const uint8_t* p, size_t n) {
    if (j == stages_.size()) {
      const size_t room = lim_.max_output - std::min(lim_.max_output, res_.data.size());
      res_.data.append(reinterpret_cast<const char*>(p), std::min(n, room));
      if (n > room) {
        res_.truncated = true;
        return false;
      }
      return true;
    }
    const size_t take = std::min(n, lim_.max_intermediate - std::min(lim_.max_intermediate, intermediate_));
    intermediate_ += take;
    if (take > 0 && !push(j, p, take)) return false;
    if (take < n) {
      res_.truncated = true;
      return false;
    }
    return true;
  }

  std::vector<std::unique_ptr<Stage>> stages_;
  const DecodeLimits& lim_;
  DecodedBody& res_;
  std::vector<std::vector<uint8_t>> bufs_;  // stage i's output, before stage i+1 takes it
  std::vector<bool> ended_;
  size_t intermediate_ = 0;
};

std::string_view trim_ows(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) b++;
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t')) e--;
  return s.substr(b, e - b);
}

}  // namespace

DecodedBody decode_content(std::string_view content_encoding, std::span<const uint8_t> bytes,
                           const DecodeLimits& limits) {
  DecodedBody res;
  res.encoded_size = bytes.size();

  // The codings in the order they were applied; empty elements skipped.
  std::vector<Coding> codings;
  std::string unknown;
  while (!content_encoding.empty()) {
    const size_t comma = content_encoding.find(',');
    const std::string_view e = trim_ows(content_encoding.substr(0, comma));
    if (!e.empty()) {
      std::string lower(e);
      for (char& c : lower)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
      if (!res.encoding.empty()) res.encoding += ", ";
      res.encoding += lower;
      const Coding c = coding_of(lower);
      if (c == Coding::Unknown && unknown.empty()) unknown = lower;
      if (c != Coding::Identity) codings.push_back(c);
    }
    if (comma == std::string_view::npos) break;
    content_encoding.remove_prefix(comma + 1);
  }

  auto as_is = [&] {
    res.data.assign(reinterpret_cast<const char*>(bytes.data()), std::min(bytes.size(), limits.max_output));
    res.truncated = bytes.size() > limits.max_output;
  };
  if (!unknown.empty()) {
    res.error = "unsupported content coding \"" + unknown + "\"";
    as_is();
    return res;
  }
  if (codings.size() > limits.max_codings) {
    // Each coding may multiply the size: a long chain is a bomb, not a body.
    res.error = std::to_string(codings.size()) + " content codings, more than the " +
                std::to_string(limits.max_codings) + " decoded";
    as_is();
    return res;
  }
  res.decoded = true;
  if (codings.empty() || bytes.empty()) {  // identity, or no body (HEAD, 204, 304) to decode
    as_is();
    return res;
  }
  std::vector<std::unique_ptr<Stage>> stages;
  for (auto it = codings.rbegin(); it != codings.rend(); ++it) stages.push_back(make_stage(*it));
  Pipeline(std::move(stages), limits, res).run(bytes);
  return res;
}

}  // namespace tapwire::proto

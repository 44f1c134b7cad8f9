// Content codings and body text (userspace/protocols/body/): real gzip,
// deflate (zlib-wrapped and raw) and zstd streams made here with zlib and
// libzstd, brotli streams made with libbrotlienc (embedded below: the unit
// tests do not link the encoder), chains of codings, compression bombs that
// must stop at the cap, corrupt and cut-short input; text detection, UTF-8,
// base64, and the JSON body field.
#include <gtest/gtest.h>
#include <zlib.h>
#include <zstd.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "body/body_json.hpp"
#include "body/body_text.hpp"
#include "body/content_coding.hpp"

namespace {

using namespace tapwire::proto;

std::span<const uint8_t> bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }
template <size_t N>
std::string str(const uint8_t (&a)[N]) {
  return std::string(reinterpret_cast<const char*>(a), N);
}

// Brotli streams made with libbrotlienc 1.0.9. kBrText, kBrOfGzipText:
// BrotliEncoderCompress(quality 11, lgwin 22, BROTLI_MODE_GENERIC) of
// kText20 and of its gzip (zlib 1.2.13, level 9, windowBits 15+16);
// kBrZeros100M: quality 5, streamed, 100 MiB of zero bytes.
constexpr uint8_t kBrText[] = {
    0x1b, 0x1b, 0x02, 0xf8, 0x45, 0xdd, 0xd6, 0x5f, 0xd2, 0x72, 0xfd, 0x65, 0xe1, 0x20, 0x5c, 0xe6,
    0xd0, 0xe0, 0x30, 0x54, 0xc8, 0xae, 0xf3, 0xfc, 0x16, 0x51, 0x1a, 0xef, 0x86, 0x79, 0x8d, 0xc7,
    0xe5, 0x51, 0x00,
};
// 56 bytes
constexpr uint8_t kBrOfGzipText[] = {
    0x8b, 0x19, 0x80, 0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0x2b, 0x49, 0x2c,
    0x28, 0xcf, 0x2c, 0x4a, 0x55, 0x48, 0x2a, 0xca, 0x2f, 0xc9, 0xc9, 0x54, 0x28, 0x49, 0x2d, 0x2e,
    0x51, 0x28, 0x4b, 0x4d, 0x2e, 0xc9, 0x2f, 0xe2, 0x2a, 0x19, 0x95, 0x1a, 0xd9, 0x52, 0x00, 0x54,
    0x71, 0x5a, 0x67, 0x1c, 0x02, 0x00, 0x00, 0x03,
};
// 165 bytes
constexpr uint8_t kBrZeros100M[] = {
    0xcb, 0xff, 0xff, 0x3f, 0x00, 0x24, 0x00, 0xe2, 0xb1, 0x40, 0x72, 0xef, 0xff, 0xf8, 0xff, 0xff,
    0x07, 0x80, 0x04, 0x40, 0x1c, 0x16, 0x80, 0xee, 0xfd, 0x1f, 0xff, 0xff, 0xff, 0x00, 0x90, 0x00,
    0x88, 0xc3, 0x02, 0xd0, 0xbd, 0xff, 0xe3, 0xff, 0xff, 0x1f, 0x00, 0x12, 0x00, 0x71, 0x58, 0x00,
    0xba, 0xf7, 0x7f, 0xfc, 0xff, 0xff, 0x03, 0x40, 0x02, 0x20, 0x0e, 0x0b, 0x40, 0xf7, 0xfe, 0x8f,
    0xff, 0xff, 0x7f, 0x00, 0x48, 0x00, 0xc4, 0x61, 0x01, 0xe8, 0xde, 0xff, 0xf1, 0xff, 0xff, 0x0f,
    0x00, 0x09, 0x80, 0x38, 0x2c, 0x00, 0xdd, 0xfb, 0x3f, 0xfe, 0xff, 0xff, 0x01, 0x20, 0x01, 0x10,
    0x87, 0x05, 0xa0, 0x7b, 0xff, 0xc7, 0xff, 0xff, 0x3f, 0x00, 0x24, 0x00, 0xe2, 0xb0, 0x00, 0x74,
    0xef, 0xff, 0xf8, 0xff, 0xff, 0x07, 0x80, 0x04, 0x40, 0x1c, 0x16, 0x80, 0xee, 0xfd, 0x1f, 0xff,
    0xff, 0xff, 0x00, 0x90, 0x00, 0x88, 0xc3, 0x02, 0xd0, 0xbd, 0xff, 0xe3, 0xff, 0xff, 0x1f, 0x00,
    0x12, 0x00, 0x71, 0x58, 0x00, 0xba, 0xf7, 0x7f, 0xf9, 0xff, 0xff, 0x03, 0x40, 0x02, 0x20, 0x0e,
    0x0b, 0x40, 0xf7, 0xfe, 0x07,
};

std::string text20() {  // what kBrText and kBrOfGzipText hold
  std::string s;
  for (int i = 0; i < 20; i++) s += "tapwire brotli test vector\n";
  return s;
}

// Some 200 KiB of text that compresses, but not to nothing: corruption in
// the middle of it leaves a good part decoded before the damage.
std::string big_text() {
  std::string s;
  for (int i = 0; i < 5000; i++) s += "line " + std::to_string(i) + ": the quick brown fox " + std::to_string(i * 7919 % 10007) + "\n";
  return s;
}

// windowBits: 15+16 gzip, 15 zlib, -15 raw deflate.
std::string zlib_compress(std::string_view in, int window_bits, int level = 6) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, level, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out;
  out.resize(deflateBound(&z, in.size()));
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(out.size() - z.avail_out);
  deflateEnd(&z);
  return out;
}
std::string gzip(std::string_view in) { return zlib_compress(in, 15 + 16); }

// `mib` MiB of zero bytes, gzip, streamed (never 100 MiB in memory).
std::string gzip_zeros(size_t mib) {
  z_stream z{};
  EXPECT_EQ(deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 9, Z_DEFAULT_STRATEGY), Z_OK);
  std::vector<uint8_t> zeros(1 << 20, 0);
  std::string out;
  std::vector<uint8_t> buf(1 << 16);
  for (size_t i = 0; i <= mib; i++) {
    const bool last = i == mib;
    z.next_in = zeros.data();
    z.avail_in = last ? 0 : static_cast<uInt>(zeros.size());
    int r;
    do {
      z.next_out = buf.data();
      z.avail_out = static_cast<uInt>(buf.size());
      r = deflate(&z, last ? Z_FINISH : Z_NO_FLUSH);
      out.append(reinterpret_cast<char*>(buf.data()), buf.size() - z.avail_out);
    } while (z.avail_out == 0 || (last && r != Z_STREAM_END));
  }
  deflateEnd(&z);
  return out;
}

std::string zstd_compress(std::string_view in, int level = 3) {
  std::string out(ZSTD_compressBound(in.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), level);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

// `mib` MiB of zero bytes as one zstd frame of unknown size, window 2^window_log.
std::string zstd_zeros(size_t mib, int window_log = 20) {
  ZSTD_CCtx* c = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(c, ZSTD_c_windowLog, window_log);
  std::vector<uint8_t> zeros(1 << 20, 0), buf(1 << 16);
  std::string out;
  for (size_t i = 0; i <= mib; i++) {
    const bool last = i == mib;
    ZSTD_inBuffer in{zeros.data(), last ? 0 : zeros.size(), 0};
    size_t left;
    do {
      ZSTD_outBuffer o{buf.data(), buf.size(), 0};
      left = ZSTD_compressStream2(c, &o, &in, last ? ZSTD_e_end : ZSTD_e_continue);
      EXPECT_FALSE(ZSTD_isError(left));
      out.append(reinterpret_cast<char*>(buf.data()), o.pos);
    } while (in.pos < in.size || (last && left != 0));
  }
  ZSTD_freeCCtx(c);
  return out;
}

// Bytes a and b have in common at their start (big strings are not printed
// by a failing EXPECT_EQ: compare through this).
size_t common_prefix(const std::string& a, const std::string& b) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) i++;
  return i;
}
bool is_prefix(const std::string& p, const std::string& of) { return p.size() <= of.size() && common_prefix(p, of) == p.size(); }

DecodedBody decode(std::string_view coding, std::string_view body, DecodeLimits lim = {}) {
  return decode_content(coding, bytes(body), lim);
}

// ---- decode_content ----------------------------------------------------------

TEST(BodyDecode, IdentityAndNoCoding) {
  const std::string body = "plain body\n";
  for (std::string_view coding : {"", "identity", " Identity ,"}) {
    const DecodedBody d = decode(coding, body);
    EXPECT_EQ(d.data, body) << coding;
    EXPECT_TRUE(d.decoded);
    EXPECT_FALSE(d.truncated);
    EXPECT_FALSE(d.incomplete);
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.encoded_size, 11u);
  }
  EXPECT_EQ(decode("", body).encoding, "");
  EXPECT_EQ(decode(" Identity ,", body).encoding, "identity");
  // Identity is capped like the rest.
  const DecodedBody d = decode("identity", body, {.max_output = 5});
  EXPECT_EQ(d.data, "plain");
  EXPECT_TRUE(d.truncated);
}

TEST(BodyDecode, Gzip) {
  const std::string text = big_text();
  const std::string gz = gzip(text);
  ASSERT_LT(gz.size(), text.size() / 3);
  for (std::string_view coding : {"gzip", "x-gzip", "GZIP", " gzip "}) {
    const DecodedBody d = decode(coding, gz);
    EXPECT_TRUE(d.data == text) << coding;
    EXPECT_TRUE(d.decoded);
    EXPECT_FALSE(d.truncated);
    EXPECT_FALSE(d.incomplete);
    EXPECT_EQ(d.error, "");
    EXPECT_EQ(d.encoded_size, gz.size());
  }
  EXPECT_EQ(decode("X-Gzip", gz).encoding, "x-gzip");
  // A zlib stream labelled gzip decodes too (15+32: either header).
  EXPECT_TRUE(decode("gzip", zlib_compress(text, 15)).data == text);
}

TEST(BodyDecode, GzipMembersAndTrailingBytes) {
  // Two gzip members one after the other are one body (RFC 1952 2.2).
  const DecodedBody two = decode("gzip", gzip("first half, ") + gzip("second half"));
  EXPECT_EQ(two.data, "first half, second half");
  EXPECT_EQ(two.error, "");
  EXPECT_FALSE(two.incomplete);
  // Bytes after the end of the stream that do not begin a member are ignored.
  const DecodedBody junk = decode("gzip", gzip("body") + std::string("\r\n\0\0junk", 8));
  EXPECT_EQ(junk.data, "body");
  EXPECT_EQ(junk.error, "");
}

TEST(BodyDecode, DeflateZlibWrappedAndRaw) {
  const std::string text = big_text();
  const std::string wrapped = zlib_compress(text, 15);
  const std::string raw = zlib_compress(text, -15);
  ASSERT_EQ(static_cast<uint8_t>(wrapped[0]), 0x78);  // a zlib header: CM 8, 32 KiB window
  const DecodedBody a = decode("deflate", wrapped);
  const DecodedBody b = decode("deflate", raw);
  EXPECT_TRUE(a.data == text);
  EXPECT_TRUE(b.data == text);
  EXPECT_EQ(a.error, "");
  EXPECT_EQ(b.error, "");
  EXPECT_FALSE(b.incomplete);
  // Tiny streams, where the first two bytes are all there is to go by.
  EXPECT_EQ(decode("deflate", zlib_compress("x", -15)).data, "x");
  EXPECT_EQ(decode("deflate", zlib_compress("", 15)).data, "");
  EXPECT_EQ(decode("deflate", zlib_compress("", 15)).error, "");
  EXPECT_EQ(decode("deflate", zlib_compress("", -15)).data, "");
  EXPECT_FALSE(decode("deflate", zlib_compress("", -15)).incomplete);
  // One byte of a stream: nothing decoded, cut short.
  const DecodedBody one = decode("deflate", raw.substr(0, 1));
  EXPECT_EQ(one.data, "");
  EXPECT_TRUE(one.incomplete);
}

TEST(BodyDecode, Brotli) {
  const DecodedBody d = decode("br", str(kBrText));
  EXPECT_EQ(d.data, text20());
  EXPECT_EQ(d.data.size(), 540u);
  EXPECT_EQ(d.encoded_size, 35u);
  EXPECT_EQ(d.encoding, "br");
  EXPECT_EQ(d.error, "");
  EXPECT_FALSE(d.incomplete);
  // Cut short: what decoded, and incomplete.
  const DecodedBody cut = decode("br", str(kBrText).substr(0, 20));
  EXPECT_TRUE(cut.incomplete);
  EXPECT_EQ(cut.error, "");
  EXPECT_EQ(text20().substr(0, cut.data.size()), cut.data);
}

TEST(BodyDecode, Zstd) {
  const std::string text = big_text();
  const std::string z = zstd_compress(text);
  const DecodedBody d = decode("zstd", z);
  EXPECT_TRUE(d.data == text);
  EXPECT_EQ(d.error, "");
  EXPECT_FALSE(d.incomplete);
  // Several frames (RFC 8878 3.1).
  const DecodedBody two = decode("zstd", zstd_compress("one ") + zstd_compress("two"));
  EXPECT_EQ(two.data, "one two");
  EXPECT_EQ(two.error, "");
  // Cut short.
  const DecodedBody cut = decode("zstd", z.substr(0, z.size() / 2));
  EXPECT_TRUE(cut.incomplete);
  EXPECT_EQ(cut.error, "");
  EXPECT_TRUE(is_prefix(cut.data, text));
}

TEST(BodyDecode, ZstdWindowAboveEightMiBRefused) {
  // A frame asking for a 128 MiB window: refused before allocating it.
  const DecodedBody d = decode("zstd", zstd_zeros(1, 27));
  EXPECT_EQ(d.data, "");
  EXPECT_EQ(d.error.rfind("zstd: ", 0), 0u) << d.error;
  // The same with an 8 MiB window decodes.
  const DecodedBody ok = decode("zstd", zstd_zeros(1, 23));
  EXPECT_EQ(ok.data, std::string(1 << 20, '\0'));
  EXPECT_EQ(ok.error, "");
}

TEST(BodyDecode, Chains) {
  const std::string text = text20();
  // "gzip, br": gzip applied first, then br; decoded br first.
  const DecodedBody a = decode("gzip, br", str(kBrOfGzipText));
  EXPECT_EQ(a.data, text);
  EXPECT_EQ(a.encoding, "gzip, br");
  EXPECT_EQ(a.error, "");
  EXPECT_FALSE(a.incomplete);
  // "br, gzip": the gzip of the brotli stream.
  const DecodedBody b = decode("br,gzip", gzip(str(kBrText)));
  EXPECT_EQ(b.data, text);
  EXPECT_EQ(b.encoding, "br, gzip");
  // Three codings, identity in between, zstd outermost.
  const std::string big = big_text();
  const DecodedBody c = decode("deflate, identity, gzip, zstd", zstd_compress(gzip(zlib_compress(big, -15))));
  EXPECT_TRUE(c.data == big);
  EXPECT_EQ(c.encoding, "deflate, identity, gzip, zstd");
  EXPECT_EQ(c.error, "");
  // In the wrong order: the outer decoder sees no stream of its kind.
  const DecodedBody wrong = decode("br, gzip", str(kBrOfGzipText));
  EXPECT_EQ(wrong.data, "");
  EXPECT_EQ(wrong.error.rfind("gzip: ", 0), 0u) << wrong.error;
}

TEST(BodyDecode, GzipBombStopsAtTheCap) {
  const std::string bomb = gzip_zeros(100);  // 100 MiB of zeros in about 100 KiB
  ASSERT_LT(bomb.size(), 200u * 1024);
  const DecodedBody d = decode("gzip", bomb, {.max_output = 1 << 20});
  EXPECT_EQ(d.data.size(), size_t{1} << 20);
  EXPECT_EQ(d.data.find_first_not_of('\0'), std::string::npos);
  EXPECT_TRUE(d.truncated);
  EXPECT_FALSE(d.incomplete);
  EXPECT_EQ(d.error, "");
  EXPECT_EQ(d.encoded_size, bomb.size());
  // Wrapped again: the inner bomb stops at the cap too.
  const DecodedBody twice = decode("gzip, gzip", gzip(bomb), {.max_output = 1 << 20});
  EXPECT_EQ(twice.data.size(), size_t{1} << 20);
  EXPECT_TRUE(twice.truncated);
  EXPECT_EQ(twice.error, "");
}

TEST(BodyDecode, BrotliAndZstdBombsStopAtTheCap) {
  const DecodedBody br = decode("br", str(kBrZeros100M), {.max_output = 300000});
  EXPECT_EQ(br.data, std::string(300000, '\0'));
  EXPECT_TRUE(br.truncated);
  EXPECT_EQ(br.error, "");
  const std::string z = zstd_zeros(100);
  ASSERT_LT(z.size(), 64u * 1024);
  const DecodedBody zs = decode("zstd", z, {.max_output = 300000});
  EXPECT_EQ(zs.data, std::string(300000, '\0'));
  EXPECT_TRUE(zs.truncated);
  EXPECT_EQ(zs.error, "");
}

TEST(BodyDecode, IntermediateCap) {
  // What passes between the stages counts too: 100 KB that do not compress
  // (so the middle stage's output is as big as the body), 10 KB allowed.
  std::string noise;
  uint32_t x = 12345;
  for (int i = 0; i < 100000; i++) {
    x = x * 1103515245 + 12345;
    noise.push_back(static_cast<char>(x >> 24));
  }
  const DecodedBody d = decode("gzip, gzip", gzip(gzip(noise)), {.max_output = 10 << 20, .max_intermediate = 10000});
  EXPECT_TRUE(d.truncated);
  EXPECT_EQ(d.error, "");
  EXPECT_GT(d.data.size(), 1000u);
  EXPECT_LT(d.data.size(), 20000u);
  EXPECT_TRUE(is_prefix(d.data, noise));
  // Without the cap, all of it.
  EXPECT_TRUE(decode("gzip, gzip", gzip(gzip(noise))).data == noise);
}

TEST(BodyDecode, ExactlyAtTheCapIsNotTruncated) {
  const std::string text = big_text();
  const DecodedBody d = decode("gzip", gzip(text), {.max_output = text.size()});
  EXPECT_TRUE(d.data == text);
  EXPECT_FALSE(d.truncated);
  const DecodedBody one_less = decode("gzip", gzip(text), {.max_output = text.size() - 1});
  EXPECT_TRUE(one_less.data == text.substr(0, text.size() - 1));
  EXPECT_TRUE(one_less.truncated);
}

TEST(BodyDecode, CorruptInputKeepsWhatDecoded) {
  const std::string text = big_text();
  std::string gz = gzip(text);
  // Damage in the middle of the compressed data.
  std::string mid = gz;
  for (size_t i = mid.size() / 2; i < mid.size() / 2 + 16; i++) mid[i] = static_cast<char>(mid[i] ^ 0x5a);
  const DecodedBody d = decode("gzip", mid);
  EXPECT_NE(d.error, "");
  EXPECT_EQ(d.error.rfind("gzip: ", 0), 0u) << d.error;
  EXPECT_LT(d.data.size(), text.size());
  // What decoded before the damage is right (the damaged block may write
  // some garbage before zlib notices).
  EXPECT_GT(common_prefix(d.data, text), text.size() / 4);
  // A bad CRC-32 at the very end: everything decoded, and the error.
  std::string crc = gz;
  crc[crc.size() - 8] = static_cast<char>(crc[crc.size() - 8] ^ 1);
  const DecodedBody c = decode("gzip", crc);
  EXPECT_TRUE(c.data == text);
  EXPECT_EQ(c.error, "gzip: incorrect data check");
  // Not gzip at all.
  const DecodedBody junk = decode("gzip", "this is not gzip");
  EXPECT_EQ(junk.data, "");
  EXPECT_EQ(junk.error, "gzip: incorrect header check");
  // Corrupt brotli and zstd.
  std::string br = str(kBrText);
  br[10] = static_cast<char>(br[10] ^ 0xff);
  const DecodedBody b = decode("br", br);
  EXPECT_EQ(b.error.rfind("br: ", 0), 0u) << b.error;
  const DecodedBody z = decode("zstd", "\x28\xb5\x2f\xfd garbage after the magic");
  EXPECT_EQ(z.error.rfind("zstd: ", 0), 0u) << z.error;
  EXPECT_TRUE(z.decoded);
}

TEST(BodyDecode, CutShortIsIncompleteNotAnError) {
  const std::string text = big_text();
  const std::string gz = gzip(text);
  const DecodedBody d = decode("gzip", gz.substr(0, gz.size() / 2));
  EXPECT_TRUE(d.incomplete);
  EXPECT_EQ(d.error, "");
  EXPECT_GT(d.data.size(), 1000u);
  EXPECT_TRUE(is_prefix(d.data, text));
}

TEST(BodyDecode, UnknownCodingAndLongChains) {
  const DecodedBody u = decode("gzip, compress", "\x1f\x9d\x90...");
  EXPECT_FALSE(u.decoded);
  EXPECT_EQ(u.error, "unsupported content coding \"compress\"");
  EXPECT_EQ(u.data, "\x1f\x9d\x90...");
  EXPECT_EQ(u.encoding, "gzip, compress");
  const DecodedBody l = decode("gzip, gzip, gzip, gzip, gzip", gzip(gzip(gzip(gzip(gzip("x"))))));
  EXPECT_FALSE(l.decoded);
  EXPECT_EQ(l.error, "5 content codings, more than the 4 decoded");
  // With the limit raised, they decode.
  const DecodedBody ok =
      decode("gzip, gzip, gzip, gzip, gzip", gzip(gzip(gzip(gzip(gzip("x"))))), {.max_codings = 5});
  EXPECT_EQ(ok.data, "x");
  EXPECT_TRUE(ok.decoded);
}

TEST(BodyDecode, EmptyBody) {
  // A HEAD response, a 204, a 304: Content-Encoding and no body.
  for (std::string_view coding : {"gzip", "br", "zstd", "deflate"}) {
    const DecodedBody d = decode(coding, "");
    EXPECT_EQ(d.data, "");
    EXPECT_EQ(d.error, "");
    EXPECT_FALSE(d.incomplete);
    EXPECT_TRUE(d.decoded);
  }
}

// ---- text, UTF-8, base64, JSON --------------------------------------------

TEST(BodyText, Base64Rfc4648Vectors) {
  EXPECT_EQ(base64_encode(bytes("")), "");
  EXPECT_EQ(base64_encode(bytes("f")), "Zg==");
  EXPECT_EQ(base64_encode(bytes("fo")), "Zm8=");
  EXPECT_EQ(base64_encode(bytes("foo")), "Zm9v");
  EXPECT_EQ(base64_encode(bytes("foob")), "Zm9vYg==");
  EXPECT_EQ(base64_encode(bytes("fooba")), "Zm9vYmE=");
  EXPECT_EQ(base64_encode(bytes("foobar")), "Zm9vYmFy");
  EXPECT_EQ(base64_encode(bytes(std::string_view("\xff\xfe\xfd\x00\x3e\x3f", 6))), "//79AD4/");
  // Every byte value, against Python's base64.b64encode(bytes(range(256))).
  std::string all;
  for (int i = 0; i < 256; i++) all.push_back(static_cast<char>(i));
  EXPECT_EQ(base64_encode(bytes(all)).substr(0, 24), "AAECAwQFBgcICQoLDA0ODxAR");
  EXPECT_EQ(base64_encode(bytes(all)).substr(320), "8PHy8/T19vf4+fr7/P3+/w==");
}

TEST(BodyText, Utf8) {
  EXPECT_TRUE(is_utf8(bytes("")));
  EXPECT_TRUE(is_utf8(bytes("plain ASCII, long enough for the 8-byte stride")));
  EXPECT_TRUE(is_utf8(bytes("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf")));  // é € 😀 U+10FFFF
  EXPECT_FALSE(is_utf8(bytes("\xc0\x80")));  // overlong NUL
  EXPECT_FALSE(is_utf8(bytes("\xe0\x80\xaf")));  // overlong '/'
  EXPECT_FALSE(is_utf8(bytes("\xed\xa0\x80")));  // surrogate U+D800
  EXPECT_FALSE(is_utf8(bytes("\xf4\x90\x80\x80")));  // above U+10FFFF
  EXPECT_FALSE(is_utf8(bytes("\xf5\x80\x80\x80")));
  EXPECT_FALSE(is_utf8(bytes("\x80")));  // lone continuation byte
  EXPECT_FALSE(is_utf8(bytes("caf\xe9")));  // Latin-1
  EXPECT_EQ(utf8_valid_prefix(bytes("caf\xe9!")), 3u);
  EXPECT_EQ(utf8_valid_prefix(bytes("12345678\xc3\xa9x\xff")), 11u);
  // Cut at the end, inside a character: allowed only when asked.
  EXPECT_FALSE(is_utf8(bytes("emoji \xf0\x9f\x98")));
  EXPECT_TRUE(is_utf8(bytes("emoji \xf0\x9f\x98"), true));
  EXPECT_TRUE(is_utf8(bytes("\xc3"), true));
  EXPECT_FALSE(is_utf8(bytes("\xe0\x80"), true));  // no character begins like that
  EXPECT_FALSE(is_utf8(bytes("\xc3\xa9\xc3\x28"), true));  // not at the end: bad
}

TEST(BodyText, IsTextByContentType) {
  const auto bin = bytes(std::string_view("\x00\x01\x02\xff", 4));
  const auto txt = bytes("hello");
  for (std::string_view ct : {"text/html; charset=utf-8", "TEXT/PLAIN", "text/event-stream", "application/json",
                              "Application/JSON;charset=UTF-8", "application/problem+json", "application/vnd.api+json",
                              "application/x-ndjson", "application/x-amz-json-1.1", "application/xml",
                              "image/svg+xml", "application/javascript", "application/x-www-form-urlencoded",
                              "application/graphql", "application/yaml", "application/grpc-web-text"})
    EXPECT_TRUE(is_text(ct, bin)) << ct;
  for (std::string_view ct : {"image/png", "audio/ogg", "video/mp4", "font/woff2", "application/octet-stream",
                              "application/grpc", "application/grpc+proto", "application/x-protobuf",
                              "application/zip", "application/pdf", "application/wasm", "application/msgpack",
                              "application/vnd.openxmlformats-officedocument.wordprocessingml.document"})
    EXPECT_FALSE(is_text(ct, txt)) << ct;
}

TEST(BodyText, IsTextSniffsUnknownTypes) {
  for (std::string_view ct : {"", "multipart/form-data; boundary=x", "application/x-unknown", "nonsense"}) {
    EXPECT_TRUE(is_text(ct, bytes("key=value\r\n\tmore \xc3\xa9\n"))) << ct;
    EXPECT_TRUE(is_text(ct, bytes(""))) << ct;
    EXPECT_TRUE(is_text(ct, bytes("\x1b[1mbold\x1b[0m"))) << ct;  // ESC: terminal colours
    EXPECT_TRUE(is_text(ct, bytes("cut \xe2\x82"))) << ct;  // cut inside a character by a cap
    EXPECT_FALSE(is_text(ct, bytes(std::string_view("a\0b", 3)))) << ct;
    EXPECT_FALSE(is_text(ct, bytes("\x12\x05hello\x18\x01"))) << ct;  // protobuf: valid UTF-8, but tags are controls
    EXPECT_FALSE(is_text(ct, bytes("caf\xe9 au lait"))) << ct;  // Latin-1
  }
}

TEST(BodyText, BodyTextAndJson) {
  BodyText t = body_text(bytes("{\"a\":1}"), true);
  EXPECT_EQ(t.value, "{\"a\":1}");
  EXPECT_FALSE(t.base64);
  t = body_text(bytes(std::string_view("\x00\x01", 2)), false);
  EXPECT_EQ(t.value, "AAE=");
  EXPECT_TRUE(t.base64);
  // Said to be text, but not UTF-8 (Latin-1): base64, nothing lost.
  t = body_text(bytes("caf\xe9 au lait"), true);
  EXPECT_EQ(t.value, "Y2Fm6SBhdSBsYWl0");
  EXPECT_TRUE(t.base64);
  // Text cut inside a character: the cut bytes are dropped.
  t = body_text(bytes("caf\xc3"), true);
  EXPECT_EQ(t.value, "caf");
  EXPECT_FALSE(t.base64);

  EXPECT_EQ(body_json(bytes("h\xc3\xa9\n"), true).dump(), "{\"body\":\"h\xc3\xa9\\n\"}");
  EXPECT_EQ(body_json(bytes(std::string_view("\x00\x01", 2)), false).dump(),
            "{\"body\":\"AAE=\",\"body_encoding\":\"base64\"}");
  EXPECT_EQ(body_json(bytes(""), true).dump(), "{\"body\":\"\"}");
}

}  // namespace

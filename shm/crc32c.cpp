// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI,
// ext4 and SCTP. `crc` chains like zlib's crc32: crc32c(b, crc32c(a)) equals
// crc32c(a followed by b); crc32c("123456789") == 0xE3069283.
//
// The SSE4.2 CRC32 instruction does 8 bytes per instruction; a slicing-by-8
// table is the fallback for CPUs without it, chosen once at run time. On other
// architectures ISA-L has its own instructions and the table is the fallback.
#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

#include <array>
#include <cstring>

#include <isa-l/crc.h>

#include "segment.hpp"

namespace tapwire::shm {
namespace detail {

namespace {

constexpr uint32_t kPoly = 0x82F63B78u;

struct Tables {
  uint32_t t[8][256];
};

constexpr Tables make_tables() {
  Tables tb{};
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    tb.t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = tb.t[0][i];
    for (int s = 1; s < 8; s++) {
      c = (c >> 8) ^ tb.t[0][c & 0xff];
      tb.t[s][i] = c;
    }
  }
  return tb;
}

constexpr Tables kTables = make_tables();

}  // namespace

// Not static: the unit tests check both paths against each other.
uint32_t crc32c_portable(const uint8_t* p, size_t n, uint32_t crc) {
  uint32_t c = ~crc;
  const auto& t = kTables.t;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);  // little-endian host (x86-64, aarch64)
    w ^= c;
    c = t[7][w & 0xff] ^ t[6][(w >> 8) & 0xff] ^ t[5][(w >> 16) & 0xff] ^ t[4][(w >> 24) & 0xff] ^
        t[3][(w >> 32) & 0xff] ^ t[2][(w >> 40) & 0xff] ^ t[1][(w >> 48) & 0xff] ^ t[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n--) c = (c >> 8) ^ t[0][(c ^ *p++) & 0xff];
  return ~c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(const uint8_t* p, size_t n, uint32_t crc) {
  uint64_t c = static_cast<uint32_t>(~crc);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<uint32_t>(c);
  if (n >= 4) {
    uint32_t w;
    std::memcpy(&w, p, 4);
    c32 = _mm_crc32_u32(c32, w);
    p += 4;
    n -= 4;
  }
  while (n--) c32 = _mm_crc32_u8(c32, *p++);
  return ~c32;
}

bool crc32c_has_sse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#else
uint32_t crc32c_sse42(const uint8_t* p, size_t n, uint32_t crc) { return crc32c_portable(p, n, crc); }
bool crc32c_has_sse42() { return false; }
#endif

}  // namespace detail

// The hot path uses ISA-L, which runs three CRC streams in parallel and
// folds them with carry-less multiplication (several times the speed of one
// crc32 instruction chain: the sensor checksums every byte it stores).
// ISA-L's crc32_iscsi neither inverts on entry nor on exit.
uint32_t crc32c(std::span<const uint8_t> data, uint32_t crc) {
  if (data.empty()) return crc;
  if (data.size() <= static_cast<size_t>(INT32_MAX))
    return ~crc32_iscsi(const_cast<unsigned char*>(data.data()), static_cast<int>(data.size()), ~crc);
  if (detail::crc32c_has_sse42()) return detail::crc32c_sse42(data.data(), data.size(), crc);
  return detail::crc32c_portable(data.data(), data.size(), crc);
}

}  // namespace tapwire::shm

// HPACK decoding: a walk over each block's representations (RFC 7541 6),
// rewriting references to unknown dynamic-table entries, then libnghttp2's
// inflater. See hpack.hpp.
#include "http2/hpack.hpp"

#include <nghttp2/nghttp2.h>

#include <algorithm>

namespace tapwire::proto {

namespace {

constexpr uint64_t kStaticEntries = 61;  // RFC 7541 Appendix A

// An HPACK integer with an N-bit prefix (RFC 7541 5.1) at b[i]. False when
// cut short or above 2^32-1 (nghttp2's bound too): no legitimate index,
// length or table size is that large.
bool read_int(std::span<const uint8_t> b, size_t& i, unsigned prefix, uint64_t& v) {
  if (i >= b.size()) return false;
  const uint64_t mask = (uint64_t{1} << prefix) - 1;
  v = b[i++] & mask;
  if (v < mask) return true;
  for (unsigned shift = 0; shift <= 28; shift += 7) {
    if (i >= b.size()) return false;
    const uint8_t c = b[i++];
    v += uint64_t{c & 0x7fu} << shift;
    if (!(c & 0x80)) return v <= UINT32_MAX;
  }
  return false;
}

void put_int(std::vector<uint8_t>& o, uint8_t high_bits, unsigned prefix, uint64_t v) {
  const uint64_t mask = (uint64_t{1} << prefix) - 1;
  if (v < mask) {
    o.push_back(static_cast<uint8_t>(high_bits | v));
    return;
  }
  o.push_back(static_cast<uint8_t>(high_bits | mask));
  v -= mask;
  while (v >= 128) {
    o.push_back(static_cast<uint8_t>(0x80 | (v & 0x7f)));
    v >>= 7;
  }
  o.push_back(static_cast<uint8_t>(v));
}

// A string literal (H bit, 7-bit prefix length, bytes): skipped, not decoded.
bool skip_string(std::span<const uint8_t> b, size_t& i) {
  uint64_t len = 0;
  if (!read_int(b, i, 7, len) || len > b.size() - i) return false;
  i += static_cast<size_t>(len);
  return true;
}

// One step of the inflater (the ssize_t API is deprecated from nghttp2 1.61 on).
int64_t inflate(nghttp2_hd_inflater* inf, nghttp2_nv* nv, int* flags, const uint8_t* in, size_t len) {
#if NGHTTP2_VERSION_NUM >= 0x013d00
  return nghttp2_hd_inflate_hd3(inf, nv, flags, in, len, 1);
#else
  return nghttp2_hd_inflate_hd2(inf, nv, flags, in, len, 1);
#endif
}

struct Walk {
  std::vector<uint8_t> out;  // the rewritten block, when `changed`
  bool changed = false;
  size_t valid = 0;  // bytes of complete, well-formed representations at the start of the block
  uint32_t dropped = 0;  // indexed fields referring to unknown entries (left out)
  bool corrupt = false;
};

// Walks a block's representations, `known` the dynamic entries the inflater
// holds. Size updates above `table_limit` are clamped to it: an observer
// that missed the SETTINGS would otherwise fail the block.
void walk(std::span<const uint8_t> b, uint64_t known, uint64_t table_limit, Walk& w) {
  const size_t n = b.size();
  size_t i = 0;
  auto change = [&](size_t rep_start) {
    if (w.changed) return;
    w.changed = true;
    w.out.assign(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(rep_start));
  };
  auto keep = [&](size_t from, size_t to) {
    if (w.changed) w.out.insert(w.out.end(), b.begin() + static_cast<std::ptrdiff_t>(from), b.begin() + static_cast<std::ptrdiff_t>(to));
  };
  while (i < n) {
    const size_t start = i;
    const uint8_t c = b[i];
    uint64_t v = 0;
    if (c & 0x80) {  // indexed field
      if (!read_int(b, i, 7, v) || v == 0) break;
      if (v > kStaticEntries + known) {
        change(start);  // dropped
        w.dropped++;
      } else {
        keep(start, i);
      }
    } else if ((c & 0xe0) == 0x20) {  // dynamic table size update
      if (!read_int(b, i, 5, v)) break;
      if (v > table_limit) {
        change(start);
        put_int(w.out, 0x20, 5, table_limit);
        v = table_limit;
      } else {
        keep(start, i);
      }
      if (v == 0) known = 0;  // the table was emptied
    } else {  // literal: with incremental indexing (01), without (0000), never indexed (0001)
      const bool indexing = c & 0x40;
      const unsigned prefix = indexing ? 6 : 4;
      const uint8_t high = indexing ? 0x40 : (c & 0x10);
      if (!read_int(b, i, prefix, v)) break;
      if (v == 0 && !skip_string(b, i)) break;  // a literal name
      const size_t value_start = i;
      if (!skip_string(b, i)) break;
      if (v > kStaticEntries + known) {  // its name is an entry never seen: keep the value
        change(start);
        put_int(w.out, high, prefix, 0);
        put_int(w.out, 0x00, 7, kHpackUnknownName.size());
        w.out.insert(w.out.end(), kHpackUnknownName.begin(), kHpackUnknownName.end());
        w.out.insert(w.out.end(), b.begin() + static_cast<std::ptrdiff_t>(value_start),
                     b.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        keep(start, i);
      }
      if (indexing) known++;  // (evictions are not followed: an evicted reference fails in nghttp2)
    }
    w.valid = i;
  }
  w.corrupt = w.valid != n;
}

}  // namespace

HpackDecoder::HpackDecoder(size_t max_table_size) : max_table_(max_table_size) {
  limit_ = std::min<size_t>(4096, max_table_);  // SETTINGS_HEADER_TABLE_SIZE starts at 4096
  fresh();
}

HpackDecoder::~HpackDecoder() {
  if (inf_) nghttp2_hd_inflate_del(inf_);
}

// A new inflater whose table is limit_ bytes at most, set by a size update
// decoded before any real block (change_table_size alone, when it lowers
// the size, makes nghttp2 demand that update from the encoder, which owes
// it nobody).
void HpackDecoder::fresh() {
  if (inf_) nghttp2_hd_inflate_del(inf_);
  inf_ = nullptr;
  if (nghttp2_hd_inflate_new(&inf_) != 0) {
    inf_ = nullptr;  // out of memory: every block is an error until the next reset
    return;
  }
  nghttp2_hd_inflate_change_table_size(inf_, limit_);
  std::vector<uint8_t> update;
  put_int(update, 0x20, 5, limit_);
  nghttp2_nv nv;
  int flags = 0;
  if (inflate(inf_, &nv, &flags, update.data(), update.size()) >= 0) nghttp2_hd_inflate_end_headers(inf_);
}

void HpackDecoder::reset() {
  // Joined late: we do not know the table size in force. A table as large as
  // allowed loses nothing: indices count from the newest entry, so entries
  // kept here that the encoder has evicted are never referred to.
  synced_ = false;
  limit_ = max_table_;
  fresh();
}

void HpackDecoder::settings_acked(uint32_t min_size, uint32_t last_size) {
  // Late joiners run with the largest table (reset()): a smaller size acked
  // now would make nghttp2 demand a size update the encoder may not owe.
  if (!synced_ || !inf_) return;
  // Our table never grows past max_table_; below it nghttp2 follows the
  // encoder's obligations exactly (RFC 7541 4.2: the smallest value first).
  const size_t lo = std::min<size_t>(min_size, max_table_);
  const size_t last = std::min<size_t>(last_size, max_table_);
  if (lo < last) nghttp2_hd_inflate_change_table_size(inf_, lo);
  nghttp2_hd_inflate_change_table_size(inf_, last);
  limit_ = last;
}

void HpackDecoder::decode(std::span<const uint8_t> block, size_t max_list_bytes, HpackResult& out) {
  out = HpackResult{};
  if (!inf_) fresh();
  if (!inf_) {
    out.error = true;
    return;
  }
  Walk w;
  walk(block, nghttp2_hd_inflate_get_num_table_entries(inf_) - kStaticEntries, limit_, w);
  out.unknown += w.dropped;
  std::span<const uint8_t> in = w.changed ? std::span<const uint8_t>(w.out) : block.first(w.valid);

  size_t kept_bytes = 0;
  bool failed = false;
  const uint8_t* p = in.data();
  size_t left = in.size();
  for (;;) {
    nghttp2_nv nv;
    int flags = 0;
    const int64_t rv = inflate(inf_, &nv, &flags, p, left);
    if (rv < 0) {
      failed = true;
      break;
    }
    p += rv;
    left -= static_cast<size_t>(rv);
    if (flags & NGHTTP2_HD_INFLATE_EMIT) {
      const std::string_view name(reinterpret_cast<const char*>(nv.name), nv.namelen);
      const size_t cost = nv.namelen + nv.valuelen + 32;
      out.list_bytes += cost;
      if (name == kHpackUnknownName) out.unknown++;
      if (kept_bytes + cost <= max_list_bytes) {
        kept_bytes += cost;
        Header& h = out.fields.emplace_back();
        h.name.resize(nv.namelen);
        for (size_t k = 0; k < nv.namelen; k++) {
          const char ch = static_cast<char>(nv.name[k]);
          h.name[k] = ch >= 'A' && ch <= 'Z' ? static_cast<char>(ch + 32) : ch;
        }
        h.value.assign(reinterpret_cast<const char*>(nv.value), nv.valuelen);
      } else {
        out.dropped++;
      }
    }
    if (flags & NGHTTP2_HD_INFLATE_FINAL) {
      nghttp2_hd_inflate_end_headers(inf_);
      break;
    }
    if (!(flags & NGHTTP2_HD_INFLATE_EMIT) && left == 0) break;
  }
  if (failed || w.corrupt) {
    // The encoder's table after this block is unknown: start over.
    out.error = true;
    reset();
  }
}

size_t HpackDecoder::memory_bytes() const {
  // The dynamic table (its size counts 32 bytes of overhead per entry, about
  // what nghttp2 allocates) and the inflater with its buffers.
  return (inf_ ? nghttp2_hd_inflate_get_dynamic_table_size(inf_) : 0) + 1024;
}

}  // namespace tapwire::proto

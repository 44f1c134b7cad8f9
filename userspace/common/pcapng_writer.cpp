#include "pcapng_writer.hpp"

#include <algorithm>
#include <cstring>

#include "segment_format.h"

namespace tapwire {
namespace {

constexpr size_t kBufferSize = 4u << 20;
// A UDP datagram is at most 65535 bytes with its header; no more is buffered.
constexpr size_t kUdpMaxPayload = 65535 - 8;

constexpr uint32_t kBlockSHB = 0x0A0D0D0A;
constexpr uint32_t kBlockIDB = 0x00000001;
constexpr uint32_t kBlockEPB = 0x00000006;
constexpr uint32_t kByteOrderMagic = 0x1A2B3C4D;
constexpr uint16_t kLinktypeEthernet = 1;
constexpr uint16_t kOptEnd = 0;
constexpr uint16_t kOptShbUserAppl = 4;
constexpr uint16_t kOptIfName = 2;
constexpr uint16_t kOptIfTsresol = 9;
constexpr uint16_t kOptEpbFlags = 2;
constexpr uint32_t kEpbInbound = 1;
constexpr uint32_t kEpbOutbound = 2;

constexpr uint8_t kProtoTcp = 6;
constexpr uint8_t kProtoUdp = 17;
constexpr uint8_t kProtoIcmp = 1, kProtoIcmp6 = 58;

constexpr size_t pad4(size_t n) { return (n + 3) & ~size_t{3}; }

// Builds a block in memory: small (headers and options only).
class BlockBuilder {
 public:
  void u16(uint16_t v) { raw(&v, 2); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    data.insert(data.end(), b, b + n);
  }
  void option(uint16_t code, const void* p, size_t n) {
    u16(code);
    u16(static_cast<uint16_t>(n));
    raw(p, n);
    data.resize(pad4(data.size()), 0);
  }
  void end_options() {
    u16(kOptEnd);
    u16(0);
  }
  std::vector<uint8_t> data;
};

// Wraps `body` into a block of `type`: type, total length, body, total length.
std::vector<uint8_t> make_block(uint32_t type, const std::vector<uint8_t>& body) {
  const uint32_t total = static_cast<uint32_t>(12 + pad4(body.size()));
  BlockBuilder b;
  b.u32(type);
  b.u32(total);
  b.raw(body.data(), body.size());
  b.data.resize(8 + pad4(body.size()), 0);
  b.u32(total);
  return b.data;
}

void store_be16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
void store_be32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

// Internet checksum (RFC 1071) partial sum over bytes in memory order. Pieces
// summed separately may be added as long as every piece but the last has an
// even length.
uint64_t csum_partial(const uint8_t* p, size_t n, uint64_t sum = 0) {
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    sum += (w & 0xffffffffu) + (w >> 32);
    p += 8;
    n -= 8;
  }
  if (n > 0) {
    uint64_t w = 0;
    std::memcpy(&w, p, n);
    sum += (w & 0xffffffffu) + (w >> 32);
  }
  return sum;
}

// Folds a partial sum and stores its complement at `dst` in memory order.
void csum_store(uint64_t sum, uint8_t* dst, bool zero_as_ffff) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  uint16_t c = static_cast<uint16_t>(~sum);
  if (c == 0 && zero_as_ffff) c = 0xffff;
  std::memcpy(dst, &c, 2);
}

// Locally administered unicast MAC derived from an IP address, so that a
// host keeps one MAC across the file: 02:00:a:b:c:d for IPv4, 02:fe:<FNV-1a
// of the 16 bytes> for IPv6. (02:01-02:20 would show as MS-NLB in Wireshark.)
void mac_from_ip(const uint8_t* addr, unsigned ip_version, uint8_t* mac) {
  mac[0] = 0x02;
  if (ip_version == 4) {
    mac[1] = 0x00;
    std::memcpy(mac + 2, addr, 4);
    return;
  }
  uint32_t h = 2166136261u;
  for (int i = 0; i < 16; ++i) h = (h ^ addr[i]) * 16777619u;
  mac[1] = 0xfe;
  store_be32(mac + 2, h);
}

}  // namespace

PcapngWriter::PcapngWriter(std::FILE* out, std::string_view application) : out_(out), buf_(kBufferSize) {
  BlockBuilder body;
  body.u32(kByteOrderMagic);
  body.u16(1);  // major
  body.u16(0);  // minor
  body.u64(~uint64_t{0});  // section length unknown
  body.option(kOptShbUserAppl, application.data(), application.size());
  body.end_options();
  const auto block = make_block(kBlockSHB, body.data);
  put(block.data(), block.size());
}

PcapngWriter::~PcapngWriter() = default;

void PcapngWriter::set_interface_name(uint32_t ifindex, std::string_view name) {
  names_[ifindex] = std::string(name);
}

bool PcapngWriter::add_iface_record(std::span<const uint8_t> body) {
  if (body.size() < sizeof(tw_seg_iface)) {
    ++stats_.malformed_records;
    return false;
  }
  tw_seg_iface rec;
  std::memcpy(&rec, body.data(), sizeof rec);
  const size_t len = strnlen(rec.name, sizeof rec.name);
  if (len == 0) {
    ++stats_.malformed_records;
    return false;
  }
  set_interface_name(rec.ifindex, std::string_view(rec.name, len));
  return true;
}

bool PcapngWriter::add_packet_record(std::span<const uint8_t> body) {
  if (body.size() < sizeof(tw_pkt)) {
    ++stats_.malformed_records;
    return false;
  }
  tw_pkt pkt;
  std::memcpy(&pkt, body.data(), sizeof pkt);
  return add_packet(pkt, body.subspan(sizeof pkt));
}

bool PcapngWriter::add_packet(const tw_pkt& pkt, std::span<const uint8_t> payload) {
  if ((pkt.ip_version != 4 && pkt.ip_version != 6) || (pkt.l4_proto != kProtoTcp && pkt.l4_proto != kProtoUdp && pkt.l4_proto != kProtoIcmp &&
       pkt.l4_proto != kProtoIcmp6) ||
      payload.size() != pkt.cap_len) {
    ++stats_.malformed_records;
    return false;
  }
  const bool continuation = pkt.flags & TW_PKT_F_CONTINUATION;
  const bool more = pkt.flags & TW_PKT_F_MORE;

  if (pkt.l4_proto == kProtoTcp) {
    flush_pending_udp();
    write_tcp(pkt, payload);
    return true;
  }

  if (!continuation) {
    flush_pending_udp();
    if (!more) {
      write_udp(pkt, payload, pkt.payload_len);
      return true;
    }
    udp_pending_ = true;
    udp_hdr_ = pkt;
    udp_next_off_ = pkt.cap_len;
    udp_buf_.assign(payload.begin(), payload.begin() + std::min(payload.size(), kUdpMaxPayload));
    return true;
  }

  // A continuation belongs to the pending datagram only if it is the next
  // chunk of the same packet.
  const bool same = udp_pending_ && pkt.chunk_off == udp_next_off_ && pkt.ts_ns == udp_hdr_.ts_ns &&
                    pkt.ifindex == udp_hdr_.ifindex && pkt.payload_len == udp_hdr_.payload_len &&
                    pkt.sport == udp_hdr_.sport && pkt.dport == udp_hdr_.dport &&
                    pkt.ip_version == udp_hdr_.ip_version && pkt.direction == udp_hdr_.direction &&
                    std::memcmp(pkt.saddr, udp_hdr_.saddr, 16) == 0 && std::memcmp(pkt.daddr, udp_hdr_.daddr, 16) == 0;
  if (!same) {
    flush_pending_udp();
    ++stats_.orphan_chunks;
    return true;
  }
  const size_t room = kUdpMaxPayload - std::min(udp_buf_.size(), kUdpMaxPayload);
  udp_buf_.insert(udp_buf_.end(), payload.begin(), payload.begin() + std::min(payload.size(), room));
  udp_next_off_ += pkt.cap_len;
  if (!more) flush_pending_udp();
  return true;
}

void PcapngWriter::flush_pending_udp() {
  if (!udp_pending_) return;
  udp_pending_ = false;
  write_udp(udp_hdr_, udp_buf_, udp_hdr_.payload_len);
  udp_buf_.clear();
}

void PcapngWriter::write_tcp(const tw_pkt& pkt, std::span<const uint8_t> payload) {
  const bool more = pkt.flags & TW_PKT_F_MORE;
  // Bytes of the L4 payload that belong to this record: a record followed by
  // more is exactly its bytes; the last record owns the rest of the packet,
  // of which it may hold only a part (cut by snap length or chunk limit).
  uint32_t wire_len = pkt.cap_len;
  if (!more && pkt.payload_len > pkt.chunk_off) wire_len = std::max(wire_len, pkt.payload_len - pkt.chunk_off);

  // Each chunk becomes its own segment: SYN only on the first, FIN/PSH/RST
  // only on the last, as if the sender had segmented the data itself.
  uint8_t flags = pkt.tcp_flags;
  if (pkt.flags & TW_PKT_F_CONTINUATION) flags &= static_cast<uint8_t>(~TW_TCP_SYN);
  if (more) flags &= static_cast<uint8_t>(~(TW_TCP_FIN | TW_TCP_PSH | TW_TCP_RST));

  // A SYN carries its window scale option (NOP + WS), so that tools scale
  // the windows of the packets that follow as the endpoints did.
  const bool wscale = (flags & TW_TCP_SYN) && pkt.tcp_wscale != TW_WSCALE_NONE;
  uint8_t th[24] = {};
  const size_t th_len = wscale ? 24 : 20;
  store_be16(th + 0, pkt.sport);
  store_be16(th + 2, pkt.dport);
  store_be32(th + 4, pkt.seq + pkt.chunk_off);
  store_be32(th + 8, pkt.ack);
  th[12] = static_cast<uint8_t>((th_len / 4) << 4);
  th[13] = flags;
  store_be16(th + 14, pkt.window);
  if (wscale) {
    th[20] = 1;  // NOP
    th[21] = 3;  // window scale
    th[22] = 3;
    th[23] = pkt.tcp_wscale;
  }
  write_frame(pkt, th, th_len, payload, wire_len);
}

void PcapngWriter::write_udp(const tw_pkt& pkt, std::span<const uint8_t> payload, uint32_t wire_payload_len) {
  if (pkt.l4_proto != kProtoUdp) {  // ICMP, ICMPv6: the payload is the message, its header and checksum included
    write_frame(pkt, nullptr, 0, payload, std::max<uint32_t>(wire_payload_len, static_cast<uint32_t>(payload.size())));
    return;
  }
  uint8_t uh[8] = {};
  store_be16(uh + 0, pkt.sport);
  store_be16(uh + 2, pkt.dport);
  write_frame(pkt, uh, sizeof uh, payload, std::max<uint32_t>(wire_payload_len, static_cast<uint32_t>(payload.size())));
}

void PcapngWriter::write_frame(const tw_pkt& pkt, const uint8_t* l4hdr_in, size_t l4hdr_len,
                               std::span<const uint8_t> payload, uint32_t wire_payload_len) {
  const bool v4 = pkt.ip_version == 4;
  const bool tcp = pkt.l4_proto == kProtoTcp;
  const size_t l3_len = v4 ? 20 : 40;
  // IP length fields are 16 bits: a larger super-packet is described as the
  // largest packet they can express, and marked as cut.
  const size_t max_payload = 65535 - l4hdr_len - (v4 ? l3_len : 0);
  if (wire_payload_len > max_payload) wire_payload_len = static_cast<uint32_t>(max_payload);
  if (payload.size() > wire_payload_len) payload = payload.first(wire_payload_len);
  const uint16_t l4_total = static_cast<uint16_t>(l4hdr_len + wire_payload_len);

  uint8_t hdr[18 + 40 + 20];
  size_t pos = 0;
  mac_from_ip(pkt.daddr, pkt.ip_version, hdr + 0);
  mac_from_ip(pkt.saddr, pkt.ip_version, hdr + 6);
  pos = 12;
  if (pkt.flags & TW_PKT_F_VLAN) {
    store_be16(hdr + pos, 0x8100);
    store_be16(hdr + pos + 2, pkt.vlan_tci);
    pos += 4;
  }
  store_be16(hdr + pos, v4 ? 0x0800 : 0x86DD);
  pos += 2;

  uint8_t* ip = hdr + pos;
  std::memset(ip, 0, l3_len);
  uint64_t pseudo = 0;
  if (v4) {
    ip[0] = 0x45;
    store_be16(ip + 2, static_cast<uint16_t>(20 + l4_total));
    store_be16(ip + 6, 0x4000);  // DF
    ip[8] = pkt.ttl;
    ip[9] = pkt.l4_proto;
    std::memcpy(ip + 12, pkt.saddr, 4);
    std::memcpy(ip + 16, pkt.daddr, 4);
    csum_store(csum_partial(ip, 20), ip + 10, false);
    uint8_t ph[12] = {};
    std::memcpy(ph, pkt.saddr, 4);
    std::memcpy(ph + 4, pkt.daddr, 4);
    ph[9] = pkt.l4_proto;
    store_be16(ph + 10, l4_total);
    pseudo = csum_partial(ph, sizeof ph);
  } else {
    ip[0] = 0x60;
    store_be16(ip + 4, l4_total);
    ip[6] = pkt.l4_proto;
    ip[7] = pkt.ttl;
    std::memcpy(ip + 8, pkt.saddr, 16);
    std::memcpy(ip + 24, pkt.daddr, 16);
    uint8_t ph[40] = {};
    std::memcpy(ph, pkt.saddr, 16);
    std::memcpy(ph + 16, pkt.daddr, 16);
    store_be32(ph + 32, l4_total);
    ph[39] = pkt.l4_proto;
    pseudo = csum_partial(ph, sizeof ph);
  }
  pos += l3_len;

  uint8_t* l4 = hdr + pos;
  if (l4hdr_len) std::memcpy(l4, l4hdr_in, l4hdr_len);
  if (pkt.l4_proto == kProtoUdp) store_be16(l4 + 4, l4_total);
  pos += l4hdr_len;
  // The checksum covers the captured bytes; for a cut packet it cannot be
  // right, and Wireshark does not check it on one.
  if (l4hdr_len) {
    uint64_t sum = csum_partial(l4, l4hdr_len, pseudo);
    sum = csum_partial(payload.data(), payload.size(), sum);
    csum_store(sum, l4 + (tcp ? 16 : 6), /*zero_as_ffff=*/!tcp);
  }

  const uint32_t iface = interface_id(pkt.ifindex);
  const uint32_t cap_len = static_cast<uint32_t>(pos + payload.size());
  const uint32_t orig_len = static_cast<uint32_t>(pos + wire_payload_len);
  const size_t data_padded = pad4(cap_len);
  const uint32_t total = static_cast<uint32_t>(28 + data_padded + 8 /*epb_flags*/ + 4 /*end*/ + 4);

  uint32_t head[7] = {kBlockEPB,
                      total,
                      iface,
                      static_cast<uint32_t>(pkt.ts_ns >> 32),
                      static_cast<uint32_t>(pkt.ts_ns),
                      cap_len,
                      orig_len};
  put(head, sizeof head);
  put(hdr, pos);
  put(payload.data(), payload.size());
  static const uint8_t kZero[4] = {};
  put(kZero, data_padded - cap_len);
  const uint32_t dir = pkt.direction == TW_DIR_EGRESS ? kEpbOutbound : kEpbInbound;
  const uint32_t tail[4] = {kOptEpbFlags | (4u << 16), dir, kOptEnd, total};
  put(tail, sizeof tail);

  ++stats_.packets;
  stats_.payload_bytes += payload.size();
  if (orig_len > cap_len) ++stats_.truncated;
}

uint32_t PcapngWriter::interface_id(uint32_t ifindex) {
  auto nit = names_.find(ifindex);
  std::string name = nit != names_.end() ? nit->second : "ifindex" + std::to_string(ifindex);
  auto key = std::make_pair(ifindex, std::move(name));
  auto it = idb_ids_.find(key);
  if (it != idb_ids_.end()) return it->second;

  BlockBuilder body;
  body.u16(kLinktypeEthernet);
  body.u16(0);  // reserved
  body.u32(0);  // snaplen: none
  body.option(kOptIfName, key.second.data(), key.second.size());
  const uint8_t tsresol = 9;  // 10^-9 s
  body.option(kOptIfTsresol, &tsresol, 1);
  body.end_options();
  const auto block = make_block(kBlockIDB, body.data);
  put(block.data(), block.size());

  const uint32_t id = static_cast<uint32_t>(stats_.interfaces++);
  idb_ids_.emplace(std::move(key), id);
  return id;
}

void PcapngWriter::put(const void* data, size_t len) {
  if (len == 0) return;
  stats_.file_bytes += len;
  if (buf_used_ + len > buf_.size()) flush_buffer();
  if (len >= buf_.size() / 2) {
    if (ok_ && std::fwrite(data, 1, len, out_) != len) ok_ = false;
    return;
  }
  std::memcpy(buf_.data() + buf_used_, data, len);
  buf_used_ += len;
}

void PcapngWriter::flush_buffer() {
  if (buf_used_ == 0) return;
  if (ok_ && std::fwrite(buf_.data(), 1, buf_used_, out_) != buf_used_) ok_ = false;
  buf_used_ = 0;
}

bool PcapngWriter::finish() {
  flush_pending_udp();
  flush_buffer();
  return ok_;
}

}  // namespace tapwire

// A pcap or pcapng file read with libpcap, decoded into tw_pkt + payload the
// way the BPF programs do it (bpf/capture.bpf.c), so that a tcpdump capture
// and the sensor's segments dissect alike.
#include <arpa/inet.h>
#include <pcap/pcap.h>
#include <sys/stat.h>

#include <cstring>
#include <stdexcept>

#include "packet_source.hpp"

namespace tapwire::dissect {
namespace {

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t be32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 | p[3];
}

constexpr uint16_t kEthIp = 0x0800, kEthIp6 = 0x86dd, kEthVlan = 0x8100, kEthQinQ = 0x88a8;

class PcapSource final : public PacketSource {
 public:
  explicit PcapSource(const std::string& path) {
    char err[PCAP_ERRBUF_SIZE] = {};
    pcap_ = pcap_open_offline_with_tstamp_precision(path.c_str(), PCAP_TSTAMP_PRECISION_NANO, err);
    if (!pcap_) throw std::runtime_error(path + ": cannot read as pcap or pcapng: " + err);
    linktype_ = pcap_datalink(pcap_);
    switch (linktype_) {
      case DLT_EN10MB:
      case DLT_LINUX_SLL:
      case DLT_LINUX_SLL2:
      case DLT_RAW:
      case DLT_NULL:
      case DLT_LOOP:
      case DLT_IPV4:
      case DLT_IPV6:
        break;
      default: {
        std::string name = pcap_datalink_val_to_name(linktype_) ? pcap_datalink_val_to_name(linktype_) : "?";
        pcap_close(pcap_);
        pcap_ = nullptr;
        throw std::runtime_error(path + ": unsupported link type " + std::to_string(linktype_) + " (" + name +
                                 "): capture on Ethernet, Linux cooked or raw IP interfaces");
      }
    }
    struct stat st {};
    if (stat(path.c_str(), &st) == 0) size_ = static_cast<uint64_t>(st.st_size);
    path_ = path;
  }
  ~PcapSource() override {
    if (pcap_) pcap_close(pcap_);
  }

  Next next(Packet& out) override {
    for (;;) {
      if (!pcap_) return Next::End;
      pcap_pkthdr* h;
      const u_char* data;
      int rc = pcap_next_ex(pcap_, &h, &data);
      if (rc == PCAP_ERROR_BREAK) return Next::End;
      if (rc == PCAP_ERROR) {
        // A truncated or damaged file: keep what was read, report once.
        error_ = path_ + ": " + pcap_geterr(pcap_) + " (after " + std::to_string(frames_) + " frames)";
        pcap_close(pcap_);
        pcap_ = nullptr;
        return Next::End;
      }
      if (rc != 1) continue;
      frames_++;
      stats_.input_bytes += h->caplen + 16;
      if (decode(h, data, out)) {
        stats_.packets++;
        stats_.bytes += out.meta.cap_len;
        return Next::Packet;
      }
    }
  }

  const SourceStats& stats() const override { return stats_; }
  std::string error() const override { return error_; }
  uint64_t input_size() const override { return size_; }

 private:
  pcap_t* pcap_ = nullptr;
  int linktype_ = 0;
  uint64_t size_ = 0, frames_ = 0;
  std::string path_, error_;
  SourceStats stats_;

  bool decode(const pcap_pkthdr* h, const uint8_t* d, Packet& out) {
    const uint32_t cap = h->caplen;
    uint32_t off = 0;
    uint16_t proto = 0;
    tw_pkt& p = out.meta;
    p = tw_pkt{};
    p.ts_ns = static_cast<uint64_t>(h->ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(h->ts.tv_usec);
    switch (linktype_) {
      case DLT_EN10MB:
        if (cap < 14) return skip();
        proto = be16(d + 12);
        off = 14;
        for (int i = 0; i < 2 && (proto == kEthVlan || proto == kEthQinQ); i++) {
          if (cap < off + 4) return skip();
          if (!(p.flags & TW_PKT_F_VLAN)) {
            p.vlan_tci = be16(d + off);
            p.flags |= TW_PKT_F_VLAN;
          }
          proto = be16(d + off + 2);
          off += 4;
        }
        break;
      case DLT_LINUX_SLL:
        if (cap < 16) return skip();
        proto = be16(d + 14);
        p.direction = be16(d) == 4 ? TW_DIR_EGRESS : TW_DIR_INGRESS;
        off = 16;
        break;
      case DLT_LINUX_SLL2:
        if (cap < 20) return skip();
        proto = be16(d);
        p.ifindex = be32(d + 4);
        p.direction = d[10] == 4 ? TW_DIR_EGRESS : TW_DIR_INGRESS;
        off = 20;
        break;
      case DLT_NULL:
      case DLT_LOOP: {
        if (cap < 4) return skip();
        uint32_t fam;
        std::memcpy(&fam, d, 4);
        if (linktype_ == DLT_LOOP) fam = ntohl(fam);
        proto = fam == 2 ? kEthIp : kEthIp6;
        off = 4;
        break;
      }
      default:  // raw IP: the version nibble says which
        if (cap < 1) return skip();
        proto = (d[0] >> 4) == 6 ? kEthIp6 : kEthIp;
        break;
    }

    uint32_t l4off, l3end;
    uint8_t l4;
    if (proto == kEthIp) {
      if (cap < off + 20 || (d[off] >> 4) != 4) return skip();
      uint32_t ihl = (d[off] & 0x0f) * 4u;
      if (ihl < 20 || cap < off + ihl) return skip();
      if (be16(d + off + 6) & 0x1fff) return skip();  // non-first fragment
      uint32_t tot = be16(d + off + 2);
      l4 = d[off + 9];
      p.ip_version = 4;
      p.ttl = d[off + 8];
      std::memcpy(p.saddr, d + off + 12, 4);
      std::memcpy(p.daddr, d + off + 16, 4);
      l4off = off + ihl;
      l3end = tot ? off + tot : h->len;  // tot_len 0: TSO super-packet as captured on the host
    } else if (proto == kEthIp6) {
      if (cap < off + 40 || (d[off] >> 4) != 6) return skip();
      uint32_t plen = be16(d + off + 4);
      l4 = d[off + 6];
      p.ip_version = 6;
      p.ttl = d[off + 7];
      std::memcpy(p.saddr, d + off + 8, 16);
      std::memcpy(p.daddr, d + off + 24, 16);
      l4off = off + 40;
      l3end = plen ? l4off + plen : h->len;
      for (int i = 0; i < 4 && (l4 == 0 || l4 == 43 || l4 == 60 || l4 == 44); i++) {
        if (cap < l4off + 8) return skip();
        if (l4 == 44) {
          if (be16(d + l4off + 2) & 0xfff8) return skip();  // non-first fragment
          l4 = d[l4off];
          l4off += 8;
        } else {
          uint8_t next = d[l4off];
          l4off += (d[l4off + 1] + 1u) * 8;
          l4 = next;
        }
      }
    } else {
      return skip();
    }
    if (l3end > h->len) l3end = h->len;

    uint32_t payload_off;
    p.l4_proto = l4;
    if (l4 == IPPROTO_TCP) {
      if (cap < l4off + 20) return skip();
      uint32_t doff = (d[l4off + 12] >> 4) * 4u;
      if (doff < 20) return skip();
      p.sport = be16(d + l4off);
      p.dport = be16(d + l4off + 2);
      p.seq = be32(d + l4off + 4);
      p.ack = be32(d + l4off + 8);
      p.tcp_flags = d[l4off + 13];
      p.window = be16(d + l4off + 14);
      payload_off = l4off + doff;
    } else if (l4 == IPPROTO_UDP) {
      if (cap < l4off + 8) return skip();
      p.sport = be16(d + l4off);
      p.dport = be16(d + l4off + 2);
      payload_off = l4off + 8;
    } else {
      return skip();
    }
    if (payload_off > l3end) return skip();
    p.payload_len = l3end - payload_off;
    uint32_t avail = cap > payload_off ? cap - payload_off : 0;
    p.cap_len = p.payload_len < avail ? p.payload_len : avail;
    if (p.cap_len < p.payload_len) p.flags |= TW_PKT_F_TRUNCATED;
    out.payload = std::span<const uint8_t>(d + payload_off, p.cap_len);
    return true;
  }

  bool skip() {
    stats_.skipped++;
    return false;
  }
};

}  // namespace

std::unique_ptr<PacketSource> open_pcap_source(const std::string& path) {
  return std::make_unique<PcapSource>(path);
}

}  // namespace tapwire::dissect

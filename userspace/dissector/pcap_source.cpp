// A pcap or pcapng file read with libpcap, decoded into tw_pkt + payload the
// way the BPF programs do it (bpf/capture.bpf.c), so that a tcpdump capture
// and the sensor's segments dissect alike.
//
// Fast path: a regular file in the classic pcap format as tcpdump writes it
// (version 2.4, this machine's byte order, micro- or nanosecond stamps) is
// read in large blocks and its records are taken in place, without libpcap's
// two stdio copies and small reads per packet. Any record that is not plain
// (a captured length beyond the snapshot length, a truncated record at the
// end, a read error) hands the file over to libpcap at that record, so that
// what libpcap does with it — the packet, or the error it reports — stays
// exactly what the source does.
#include <arpa/inet.h>
#include <pcap/pcap.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>

#include "packet_source.hpp"

namespace tapwire::dissect {
namespace {

uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }
uint32_t be32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 | p[3];
}

constexpr uint16_t kEthIp = 0x0800, kEthIp6 = 0x86dd, kEthVlan = 0x8100, kEthQinQ = 0x88a8;

// Classic pcap (pcap-savefile(5)), in this machine's byte order.
constexpr uint32_t kPcapMagicUsec = 0xa1b2c3d4, kPcapMagicNsec = 0xa1b23c4d;
constexpr size_t kFileHeader = 24, kRecordHeader = 16;
// libpcap's largest sane captured length for the link types taken here
// (MAXIMUM_SNAPLEN): a record beyond it is an error libpcap reports.
constexpr uint32_t kMaxSnaplen = 262144;
// The read block: large enough for the largest record libpcap would accept.
constexpr size_t kBlock = 512 * 1024;
static_assert(kBlock >= kRecordHeader + kMaxSnaplen);

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
    start_fast_path();
  }
  ~PcapSource() override {
    if (pcap_) pcap_close(pcap_);
  }

  Next next(Packet& out) override {
    if (fast_) {
      switch (next_fast(out)) {
        case Next::Packet:
          return Next::Packet;
        case Next::End:
          return Next::End;
        case Next::Wait:
          break;  // handed over to libpcap: go on below
      }
    }
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

  // Fast path (see the top of this file).
  bool fast_ = false, nsec_ = false, eof_ = false;
  int fd_ = -1;
  uint32_t snaplen_ = 0;  // libpcap's snapshot length for the file (as it adjusted it)
  std::unique_ptr<uint8_t[]> block_;
  size_t pos_ = 0, end_ = 0;  // unread bytes: block_[pos_, end_)
  uint64_t read_off_ = 0;  // file offset of block_[end_]
  uint64_t rec_off_ = 0;  // file offset of block_[pos_], the next record
  pcap_pkthdr fast_hdr_{};

  void start_fast_path() {
    FILE* fp = pcap_file(pcap_);
    if (!fp) return;
    const int fd = fileno(fp);
    struct stat st {};
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return;
    uint8_t h[kFileHeader];
    if (pread(fd, h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) return;
    uint32_t magic;
    uint16_t major, minor;
    std::memcpy(&magic, h, 4);
    std::memcpy(&major, h + 4, 2);
    std::memcpy(&minor, h + 6, 2);
    if ((magic != kPcapMagicUsec && magic != kPcapMagicNsec) || major != 2 || minor != 4) return;
    const int snap = pcap_snapshot(pcap_);
    if (snap <= 0) return;
    snaplen_ = static_cast<uint32_t>(snap);
    nsec_ = magic == kPcapMagicNsec;
    fd_ = fd;
    block_.reset(new uint8_t[kBlock]);
    read_off_ = rec_off_ = kFileHeader;
    fast_ = true;
  }

  // Makes at least `need` unread bytes available, if the file has them.
  bool fill(size_t need) {
    if (end_ - pos_ >= need) return true;
    if (pos_ > 0) {
      std::memmove(block_.get(), block_.get() + pos_, end_ - pos_);
      end_ -= pos_;
      pos_ = 0;
    }
    while (end_ < need && !eof_) {
      const ssize_t n = pread(fd_, block_.get() + end_, kBlock - end_, static_cast<off_t>(read_off_));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        eof_ = true;  // end of file, or an error libpcap will meet and report
        break;
      }
      end_ += static_cast<size_t>(n);
      read_off_ += static_cast<uint64_t>(n);
    }
    return end_ - pos_ >= need;
  }

  // Packet or End; Wait: the file goes on with libpcap from the next record.
  Next next_fast(Packet& out) {
    for (;;) {
      if (!fill(kRecordHeader)) {
        if (pos_ == end_) return Next::End;  // the file ends after a whole record
        return hand_over();
      }
      const uint8_t* r = block_.get() + pos_;
      uint32_t sec, frac, caplen, len;
      std::memcpy(&sec, r, 4);
      std::memcpy(&frac, r + 4, 4);
      std::memcpy(&caplen, r + 8, 4);
      std::memcpy(&len, r + 12, 4);
      if (caplen > snaplen_ || caplen > kMaxSnaplen) return hand_over();
      if (!fill(kRecordHeader + caplen)) return hand_over();
      r = block_.get() + pos_;
      // As libpcap gives them: 32-bit signed fields, microseconds scaled up.
      fast_hdr_.ts.tv_sec = static_cast<int32_t>(sec);
      fast_hdr_.ts.tv_usec = nsec_ ? static_cast<int32_t>(frac) : static_cast<int64_t>(static_cast<int32_t>(frac)) * 1000;
      fast_hdr_.caplen = caplen;
      fast_hdr_.len = len;
      pos_ += kRecordHeader + caplen;
      rec_off_ += kRecordHeader + caplen;
      frames_++;
      stats_.input_bytes += caplen + 16;
      if (decode(&fast_hdr_, r + kRecordHeader, out)) {
        stats_.packets++;
        stats_.bytes += out.meta.cap_len;
        return Next::Packet;
      }
    }
  }

  // libpcap reads on from the record at rec_off_.
  Next hand_over() {
    fast_ = false;
    block_.reset();
    pos_ = end_ = 0;
    if (fseeko(pcap_file(pcap_), static_cast<off_t>(rec_off_), SEEK_SET) != 0) {
      error_ = path_ + ": cannot seek to frame " + std::to_string(frames_ + 1) + ": " + std::strerror(errno);
      pcap_close(pcap_);
      pcap_ = nullptr;
      return Next::End;
    }
    return Next::Wait;
  }

  bool decode(const pcap_pkthdr* h, const uint8_t* d, Packet& out) {
    const uint32_t cap = h->caplen;
    uint32_t off = 0;
    uint16_t proto = 0;
    tw_pkt& p = out.meta;
    p = tw_pkt{};
    out.wire_len = h->len;
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
    } else if (l4 == IPPROTO_ICMP || l4 == IPPROTO_ICMPV6) {
      payload_off = l4off;  // the payload of an ICMP packet is the whole ICMP message
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

// tapwire-synflood: a SYN flood for the flow table's bounds (test_flows.py).
//
//   tapwire-synflood --interface DEV --dst-ip A.B.C.D --dst-port N
//                    [--count N] [--seed S] [--dst-mac MAC] [--src-mac MAC]
//                    [--src-net A.B.C.D/P] [--batch N] [--qdisc-bypass]
//
// Sends COUNT (default 1,000,000) TCP SYNs out of DEV as fast as it can:
// Ethernet frames built a batch at a time and handed to an AF_PACKET socket
// with sendmmsg(2). Every SYN comes from another spoofed source: address and
// port are a seeded permutation of the SYN's index over SRC-NET (default
// 198.18.0.0/15, the benchmarking range) x ports 1024..(1024 + 2^15 - 1), so
// no two SYNs of one run share a 4-tuple (up to 2^(32-P+15) SYNs) and a run
// with the same seed sends the same SYNs. Sequence numbers and IP ids come
// from the same seeded generator; an MSS option makes the SYNs look like a
// kernel's. Checksums are right.
//
// DST-MAC defaults to the broadcast address (the peer's stack then drops the
// SYNs in TCP: no answer; TC and tcpdump see them all the same); give the
// peer's address to have its stack treat them as real. SRC-MAC defaults to
// DEV's. --qdisc-bypass sends with PACKET_QDISC_BYPASS (skips DEV's qdisc and
// TC egress hook). Run it in DEV's network namespace. Prints one JSON line:
// {"sent":N,"seconds":S,"pps":R,"errors":E,"interface":"DEV"}. Exit 1 with
// one line on stderr on failure; 2 on bad usage.
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "tapwire-synflood: %s\n", msg.c_str());
  std::exit(1);
}

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr,
               "tapwire-synflood: %s\nusage: tapwire-synflood --interface DEV --dst-ip A.B.C.D --dst-port N "
               "[--count N] [--seed S] [--dst-mac MAC] [--src-mac MAC] [--src-net A.B.C.D/P] [--batch N] "
               "[--qdisc-bypass]\n",
               msg.c_str());
  std::exit(2);
}

uint64_t parse_u64(const std::string& s, const char* what, uint64_t max) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s.c_str(), &end, 0);
  if (errno || end == s.c_str() || *end || v > max || s[0] == '-') usage(std::string("bad ") + what + ": " + s);
  return v;
}

bool parse_mac(const std::string& s, uint8_t out[6]) {
  unsigned v[6];
  char extra;
  if (std::sscanf(s.c_str(), "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &extra) != 6)
    return false;
  for (int i = 0; i < 6; i++) {
    if (v[i] > 255) return false;
    out[i] = static_cast<uint8_t>(v[i]);
  }
  return true;
}

// splitmix64: the seeded generator.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
};

// A bijection of [0, 2^bits): xor with a key, then rounds of multiply by an
// odd number and xorshift, all modulo 2^bits. Distinct indexes give distinct
// values, so distinct SYNs get distinct (address, port).
struct Permutation {
  unsigned bits;
  uint64_t mask, key, mul[3];
  Permutation(unsigned b, Rng& rng) : bits(b), mask(b >= 64 ? ~0ull : (1ull << b) - 1) {
    key = rng.next() & mask;
    for (auto& m : mul) m = (rng.next() | 1) & mask;
  }
  uint64_t operator()(uint64_t x) const {
    x = (x ^ key) & mask;
    for (uint64_t m : mul) {
      x = (x * m) & mask;
      x ^= x >> (bits / 2 + 1);
    }
    return x;
  }
};

uint32_t csum_add(uint32_t sum, const uint8_t* p, size_t n) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += (uint32_t(p[i]) << 8) | p[i + 1];
  if (n & 1) sum += uint32_t(p[n - 1]) << 8;
  return sum;
}

uint16_t csum_fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
  return static_cast<uint16_t>(~sum & 0xFFFF);
}

constexpr size_t kEth = 14, kIp = 20, kTcp = 24, kFrame = kEth + kIp + kTcp;  // TCP: 20 + MSS option

void put16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v >> 8), p[1] = uint8_t(v); }
void put32(uint8_t* p, uint32_t v) { put16(p, uint16_t(v >> 16)), put16(p + 2, uint16_t(v)); }

void build_syn(uint8_t* f, const uint8_t dmac[6], const uint8_t smac[6], uint32_t saddr, uint32_t daddr,
               uint16_t sport, uint16_t dport, uint32_t seq, uint16_t ipid) {
  std::memcpy(f, dmac, 6);
  std::memcpy(f + 6, smac, 6);
  put16(f + 12, ETHERTYPE_IP);
  uint8_t* ip = f + kEth;
  std::memset(ip, 0, kIp);
  ip[0] = 0x45;
  put16(ip + 2, kIp + kTcp);
  put16(ip + 4, ipid);
  put16(ip + 6, 0x4000);  // DF
  ip[8] = 64;
  ip[9] = IPPROTO_TCP;
  put32(ip + 12, saddr);
  put32(ip + 16, daddr);
  put16(ip + 10, csum_fold(csum_add(0, ip, kIp)));
  uint8_t* t = ip + kIp;
  std::memset(t, 0, kTcp);
  put16(t, sport);
  put16(t + 2, dport);
  put32(t + 4, seq);
  t[12] = (kTcp / 4) << 4;
  t[13] = 0x02;  // SYN
  put16(t + 14, 64240);
  t[20] = 2, t[21] = 4;  // MSS 1460
  put16(t + 22, 1460);
  uint8_t pseudo[12];
  put32(pseudo, saddr);
  put32(pseudo + 4, daddr);
  pseudo[8] = 0, pseudo[9] = IPPROTO_TCP;
  put16(pseudo + 10, kTcp);
  put16(t + 16, csum_fold(csum_add(csum_add(0, pseudo, 12), t, kTcp)));
}

}  // namespace

int main(int argc, char** argv) {
  std::string dev, dst_ip, dst_mac_s = "ff:ff:ff:ff:ff:ff", src_mac_s, src_net = "198.18.0.0/15";
  uint64_t count = 1000000, seed = 1, batch = 512;
  long dst_port = -1;
  bool bypass = false;
  for (int i = 1; i < argc; i++) {
    std::string a = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--interface" || a == "-i") dev = val();
    else if (a == "--dst-ip") dst_ip = val();
    else if (a == "--dst-port") dst_port = long(parse_u64(val(), "--dst-port", 65535));
    else if (a == "--count") count = parse_u64(val(), "--count", 1ull << 40);
    else if (a == "--seed") seed = parse_u64(val(), "--seed", ~0ull);
    else if (a == "--dst-mac") dst_mac_s = val();
    else if (a == "--src-mac") src_mac_s = val();
    else if (a == "--src-net") src_net = val();
    else if (a == "--batch") batch = parse_u64(val(), "--batch", 1024);
    else if (a == "--qdisc-bypass") bypass = true;
    else if (a == "-h" || a == "--help") usage("help");
    else usage("unknown argument " + a);
  }
  if (dev.empty() || dst_ip.empty() || dst_port < 1) usage("--interface, --dst-ip and --dst-port are required");
  if (batch == 0) usage("--batch must be at least 1");

  in_addr daddr{}, net{};
  if (inet_pton(AF_INET, dst_ip.c_str(), &daddr) != 1) usage("bad --dst-ip " + dst_ip);
  auto slash = src_net.find('/');
  if (slash == std::string::npos || inet_pton(AF_INET, src_net.substr(0, slash).c_str(), &net) != 1)
    usage("bad --src-net " + src_net);
  unsigned prefix = unsigned(parse_u64(src_net.substr(slash + 1), "--src-net prefix", 30));
  if (prefix < 8) usage("--src-net: a prefix of at least /8");
  const unsigned host_bits = 32 - prefix, port_bits = 15, bits = host_bits + port_bits;
  if (count > (1ull << bits)) usage("--count exceeds the distinct (address, port) pairs of --src-net");
  const uint32_t base = ntohl(net.s_addr) & ~((host_bits >= 32) ? ~0u : ((1u << host_bits) - 1));

  uint8_t dmac[6], smac[6];
  if (!parse_mac(dst_mac_s, dmac)) usage("bad --dst-mac " + dst_mac_s);

  int fd = socket(AF_PACKET, SOCK_RAW, 0);  // protocol 0: sends only, receives nothing
  if (fd < 0) die(std::string("socket(AF_PACKET): ") + std::strerror(errno));
  unsigned ifindex = if_nametoindex(dev.c_str());
  if (!ifindex) die("no interface " + dev + " in this network namespace");
  if (src_mac_s.empty()) {
    ifreq ifr{};
    std::snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", dev.c_str());
    if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) die(std::string("SIOCGIFHWADDR: ") + std::strerror(errno));
    std::memcpy(smac, ifr.ifr_hwaddr.sa_data, 6);
  } else if (!parse_mac(src_mac_s, smac)) {
    usage("bad --src-mac " + src_mac_s);
  }
  sockaddr_ll sll{};
  sll.sll_family = AF_PACKET;
  sll.sll_ifindex = int(ifindex);
  sll.sll_protocol = htons(ETH_P_IP);
  sll.sll_halen = 6;
  std::memcpy(sll.sll_addr, dmac, 6);
  if (bind(fd, reinterpret_cast<sockaddr*>(&sll), sizeof sll) < 0)
    die(std::string("bind to ") + dev + ": " + std::strerror(errno));
  if (bypass) {
    int one = 1;
    if (setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0)
      die(std::string("PACKET_QDISC_BYPASS: ") + std::strerror(errno));
  }
  int sndbuf = 8 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);  // best effort

  Rng rng{seed};
  Permutation perm(bits, rng);
  std::vector<uint8_t> frames(batch * kFrame);
  std::vector<iovec> iov(batch);
  std::vector<mmsghdr> msgs(batch);
  for (uint64_t j = 0; j < batch; j++) {
    iov[j] = {frames.data() + j * kFrame, kFrame};
    std::memset(&msgs[j], 0, sizeof msgs[j]);
    msgs[j].msg_hdr.msg_iov = &iov[j];
    msgs[j].msg_hdr.msg_iovlen = 1;
  }

  uint64_t sent = 0, errors = 0;
  const auto t0 = std::chrono::steady_clock::now();
  while (sent < count) {
    const uint64_t n = std::min<uint64_t>(batch, count - sent);
    for (uint64_t j = 0; j < n; j++) {
      const uint64_t x = perm(sent + j);
      const uint32_t host = uint32_t(x >> port_bits), saddr = base | host;
      const uint16_t sport = uint16_t(1024 + (x & ((1u << port_bits) - 1)));
      const uint64_t r = rng.next();
      build_syn(frames.data() + j * kFrame, dmac, smac, saddr, ntohl(daddr.s_addr), sport, uint16_t(dst_port),
                uint32_t(r), uint16_t(r >> 32));
    }
    uint64_t done = 0;
    int tries = 0;
    while (done < n) {
      int k = sendmmsg(fd, msgs.data() + done, unsigned(n - done), 0);
      if (k < 0) {
        if (errno == EINTR) continue;
        if ((errno == ENOBUFS || errno == EAGAIN) && ++tries < 1000) {
          errors++;
          usleep(100);
          continue;
        }
        die(std::string("sendmmsg: ") + std::strerror(errno) + " after " + std::to_string(sent + done) + " SYNs");
      }
      done += uint64_t(k);
    }
    sent += n;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  close(fd);
  std::printf("{\"sent\":%llu,\"seconds\":%.3f,\"pps\":%.0f,\"errors\":%llu,\"interface\":\"%s\"}\n",
              static_cast<unsigned long long>(sent), secs, secs > 0 ? double(sent) / secs : 0.0,
              static_cast<unsigned long long>(errors), dev.c_str());
  return 0;
}

// `tapwire export pcap` and PcapngWriter, checked against tshark as the
// reference dissector: records are written into a segment directory with
// shm::SegmentWriter, exported with the built `tapwire` binary, and every
// field tshark reads back is compared with what was written. Also: the time
// parser/formatter (timefmt) and `tapwire status`.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "temp_dir.hpp"
#include "pcapng_writer.hpp"
#include "segment.hpp"
#include "status_file.hpp"
#include "tapwire_abi.h"
#include "timefmt.hpp"

namespace {

namespace fs = std::filesystem;
using tapwire::shm::SegmentWriter;

constexpr uint64_t kSec = 1000000000ull;
constexpr uint64_t kBase = 1795398720ull * kSec;  // 2026-11-23T01:52:00Z

// ------------------------------------------------------------ helpers ---

struct CmdResult {
  int status = -1;  // exit code, or -1 if it did not exit normally
  std::string out;
  std::string err;
};

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

using tapwire::test_util::TempDir;

// Runs `cmd` through sh; stdout and stderr captured separately.
CmdResult run_cmd(const std::string& cmd, const std::string& scratch_dir) {
  const std::string err_path = scratch_dir + "/.stderr";
  CmdResult r;
  std::FILE* p = popen(("(" + cmd + ") 2>" + err_path).c_str(), "r");
  if (!p) return r;
  std::array<char, 65536> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.err = read_file(err_path);
  std::remove(err_path.c_str());
  return r;
}

std::string tapwire_bin() { return std::string(TW_BUILD_DIR) + "/tapwire"; }

bool tool_present(const std::string& name) { return std::system(("command -v " + name + " >/dev/null 2>&1").c_str()) == 0; }

// Fails under CI=true (conventions: a test that cannot run there fails).
#define REQUIRE_TOOLS()                                                                                         \
  do {                                                                                                          \
    if (!fs::exists(tapwire_bin())) FAIL() << tapwire_bin() << " not built: build the 'tapwire' target first"; \
    if (!tool_present("tshark")) {                                                                              \
      const char* ci = std::getenv("CI");                                                                       \
      if (ci && std::string(ci) == "true") FAIL() << "tshark is not installed";                                 \
      GTEST_SKIP() << "tshark is not installed";                                                                \
    }                                                                                                           \
  } while (0)

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(cur);
  return out;
}

std::vector<std::string> lines(const std::string& s) {
  std::vector<std::string> out = split(s, '\n');
  while (!out.empty() && out.back().empty()) out.pop_back();
  return out;
}

std::string hex(const std::vector<uint8_t>& v, size_t n = SIZE_MAX) {
  static const char* d = "0123456789abcdef";
  std::string s;
  n = std::min(n, v.size());
  s.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    s += d[v[i] >> 4];
    s += d[v[i] & 15];
  }
  return s;
}

std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1103515245u + 12345u;
    b = static_cast<uint8_t>(x >> 16);
  }
  return v;
}

std::vector<uint8_t> text(const std::string& s) { return std::vector<uint8_t>(s.begin(), s.end()); }

void set_v4(uint8_t* a, uint8_t b0, uint8_t b1, uint8_t b2, uint8_t b3) {
  std::memset(a, 0, 16);
  a[0] = b0;
  a[1] = b1;
  a[2] = b2;
  a[3] = b3;
}
void set_v6(uint8_t* a, uint16_t last) {  // fd00::<last>
  std::memset(a, 0, 16);
  a[0] = 0xfd;
  a[14] = static_cast<uint8_t>(last >> 8);
  a[15] = static_cast<uint8_t>(last);
}

// One packet as the test wrote it, and what tshark must show for it.
struct Expected {
  uint64_t ts;
  std::string iface;
  int direction;  // pcapng: 1 inbound, 2 outbound
  int ip_version;
  std::string src, dst;
  bool tcp;
  uint16_t sport, dport;
  uint32_t seq, ack;
  uint8_t tcp_flags;
  uint8_t ttl;
  uint16_t window;
  int vlan_id;  // -1: none
  std::vector<uint8_t> captured;  // L4 payload bytes in the frame
  uint32_t wire_len;  // L4 payload bytes on the wire
};

tw_pkt base_pkt(uint64_t ts, uint32_t ifindex, int ipv, uint8_t proto, uint8_t dir) {
  tw_pkt p{};
  p.ts_ns = ts;
  p.ifindex = ifindex;
  p.ip_version = static_cast<uint8_t>(ipv);
  p.l4_proto = proto;
  p.direction = dir;
  p.ttl = 64;
  return p;
}

// Writes records into segments and remembers the frames they must become.
class Capture {
 public:
  explicit Capture(std::string seg_dir) : dir_(std::move(seg_dir)) { fs::create_directories(dir_); }

  void open_segment(uint64_t seq) {
    if (w_) w_->seal();
    w_.emplace(SegmentWriter::create(dir_, seq, 4u << 20));
  }
  void seal() {
    if (w_) w_->seal();
    w_.reset();
  }

  void iface(uint32_t ifindex, const std::string& name, uint64_t ts) {
    tw_seg_iface rec{};
    rec.ifindex = ifindex;
    std::memcpy(rec.name, name.c_str(), std::min(name.size(), sizeof rec.name));
    rec.ts_ns = ts;
    ASSERT_TRUE(w_->append(TW_REC_IFACE, {reinterpret_cast<const uint8_t*>(&rec), sizeof rec}, {}, ts));
    names_[ifindex] = name;
  }

  // Appends one record holding `bytes` (the whole captured part of the chunk).
  void record(const tw_pkt& p, const std::vector<uint8_t>& bytes, size_t off, size_t len) {
    tw_pkt r = p;
    r.chunk_off = static_cast<uint32_t>(off);
    r.cap_len = static_cast<uint32_t>(len);
    ASSERT_TRUE(w_->append(TW_REC_PACKET, {reinterpret_cast<const uint8_t*>(&r), sizeof r},
                           {bytes.data() + off, len}, r.ts_ns));
  }

  // A packet whose payload `bytes` (captured part) is split into records of
  // at most TW_CHUNK_MAX like the BPF program does; p.payload_len is the
  // wire length (> bytes.size() means cut).
  void packet(tw_pkt p, const std::vector<uint8_t>& bytes) {
    if (p.payload_len == 0) p.payload_len = static_cast<uint32_t>(bytes.size());
    const bool cut = p.payload_len > bytes.size();
    size_t off = 0;
    do {
      const size_t len = std::min<size_t>(TW_CHUNK_MAX, bytes.size() - off);
      tw_pkt r = p;
      r.flags = static_cast<uint16_t>(p.flags & TW_PKT_F_VLAN);
      if (off > 0) r.flags |= TW_PKT_F_CONTINUATION;
      if (off + len < bytes.size()) r.flags |= TW_PKT_F_MORE;
      if (cut && off + len == bytes.size()) r.flags |= TW_PKT_F_TRUNCATED;
      record(r, bytes, off, len);
      off += len;
    } while (off < bytes.size());
  }

  std::string iface_name(uint32_t ifindex) const {
    auto it = names_.find(ifindex);
    return it != names_.end() ? it->second : "ifindex" + std::to_string(ifindex);
  }

 private:
  std::string dir_;
  std::optional<SegmentWriter> w_;
  std::map<uint32_t, std::string> names_;
};

std::string addr_text(const uint8_t* a, int ipv) {
  char buf[64];
  if (ipv == 4) {
    std::snprintf(buf, sizeof buf, "%u.%u.%u.%u", a[0], a[1], a[2], a[3]);
    return buf;
  }
  // fd00::<last> only in this test
  std::snprintf(buf, sizeof buf, "fd00::%x", (a[14] << 8) | a[15]);
  return buf;
}

// Expected frames of TCP packet `p` with captured `bytes`: one frame per chunk.
void expect_tcp(std::vector<Expected>& out, const Capture& cap, const tw_pkt& p, const std::vector<uint8_t>& bytes) {
  const uint32_t wire = p.payload_len ? p.payload_len : static_cast<uint32_t>(bytes.size());
  size_t off = 0;
  do {
    const size_t len = std::min<size_t>(TW_CHUNK_MAX, bytes.size() - off);
    const bool last = off + len == bytes.size();
    Expected e{};
    e.ts = p.ts_ns;
    e.iface = cap.iface_name(p.ifindex);
    e.direction = p.direction == TW_DIR_EGRESS ? 2 : 1;
    e.ip_version = p.ip_version;
    e.src = addr_text(p.saddr, p.ip_version);
    e.dst = addr_text(p.daddr, p.ip_version);
    e.tcp = true;
    e.sport = p.sport;
    e.dport = p.dport;
    e.seq = p.seq + static_cast<uint32_t>(off);
    e.ack = p.ack;
    e.tcp_flags = p.tcp_flags;
    if (off > 0) e.tcp_flags &= static_cast<uint8_t>(~TW_TCP_SYN);
    if (!last) e.tcp_flags &= static_cast<uint8_t>(~(TW_TCP_FIN | TW_TCP_PSH | TW_TCP_RST));
    e.ttl = p.ttl;
    e.window = p.window;
    e.vlan_id = (p.flags & TW_PKT_F_VLAN) ? (p.vlan_tci & 0x0fff) : -1;
    e.captured.assign(bytes.begin() + static_cast<long>(off), bytes.begin() + static_cast<long>(off + len));
    e.wire_len = last ? wire - static_cast<uint32_t>(off) : static_cast<uint32_t>(len);
    out.push_back(e);
    off += len;
  } while (off < bytes.size());
}

void expect_udp(std::vector<Expected>& out, const Capture& cap, const tw_pkt& p, const std::vector<uint8_t>& bytes) {
  Expected e{};
  e.ts = p.ts_ns;
  e.iface = cap.iface_name(p.ifindex);
  e.direction = p.direction == TW_DIR_EGRESS ? 2 : 1;
  e.ip_version = p.ip_version;
  e.src = addr_text(p.saddr, p.ip_version);
  e.dst = addr_text(p.daddr, p.ip_version);
  e.tcp = false;
  e.sport = p.sport;
  e.dport = p.dport;
  e.ttl = p.ttl;
  e.vlan_id = (p.flags & TW_PKT_F_VLAN) ? (p.vlan_tci & 0x0fff) : -1;
  e.captured = bytes;
  e.wire_len = p.payload_len ? p.payload_len : static_cast<uint32_t>(bytes.size());
  out.push_back(e);
}

const char* kFields[] = {
    "frame.time_epoch", "frame.interface_name", "frame.packet_flags_direction", "frame.len", "frame.cap_len",
    "vlan.id", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "ip.len", "ip.ttl", "ip.flags.df", "ipv6.plen",
    "ipv6.hlim", "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.flags", "tcp.window_size_value",
    "tcp.len", "tcp.hdr_len", "tcp.payload", "udp.srcport", "udp.dstport", "udp.length", "udp.payload",
    "ip.checksum.status", "tcp.checksum.status", "udp.checksum.status",
};
constexpr size_t kNumFields = sizeof kFields / sizeof kFields[0];

// tshark's view of every frame: field name -> value.
std::vector<std::map<std::string, std::string>> tshark_frames(const std::string& file, const std::string& scratch) {
  std::string cmd = "tshark -n -r " + file +
                    " -o ip.check_checksum:TRUE -o tcp.check_checksum:TRUE -o udp.check_checksum:TRUE"
                    " -T fields -E separator=/t -E occurrence=f";
  for (const char* f : kFields) cmd += std::string(" -e ") + f;
  const CmdResult r = run_cmd(cmd, scratch);
  EXPECT_EQ(r.status, 0) << cmd << "\n" << r.err;
  std::vector<std::map<std::string, std::string>> frames;
  for (const auto& line : lines(r.out)) {
    const auto cols = split(line, '\t');
    EXPECT_EQ(cols.size(), kNumFields) << line.substr(0, 200);
    std::map<std::string, std::string> m;
    for (size_t i = 0; i < cols.size() && i < kNumFields; ++i) m[kFields[i]] = cols[i];
    frames.push_back(std::move(m));
  }
  return frames;
}

std::string epoch_text(uint64_t ts) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%" PRIu64 ".%09" PRIu64, ts / kSec, ts % kSec);
  return buf;
}

void check_frame(const std::map<std::string, std::string>& f, const Expected& e, size_t index) {
  SCOPED_TRACE("frame " + std::to_string(index + 1) + " (" + e.src + ":" + std::to_string(e.sport) + " -> " + e.dst +
               ":" + std::to_string(e.dport) + ")");
  auto at = [&](const char* k) { return f.count(k) ? f.at(k) : std::string("<missing>"); };
  EXPECT_EQ(at("frame.time_epoch"), epoch_text(e.ts));
  EXPECT_EQ(at("frame.interface_name"), e.iface);
  EXPECT_EQ(std::stoul(at("frame.packet_flags_direction"), nullptr, 0), static_cast<unsigned long>(e.direction));
  const size_t l2 = e.vlan_id >= 0 ? 18 : 14;
  const size_t l3 = e.ip_version == 4 ? 20 : 40;
  const size_t l4 = e.tcp ? 20 : 8;
  EXPECT_EQ(at("frame.len"), std::to_string(l2 + l3 + l4 + e.wire_len));
  EXPECT_EQ(at("frame.cap_len"), std::to_string(l2 + l3 + l4 + e.captured.size()));
  EXPECT_EQ(at("vlan.id"), e.vlan_id >= 0 ? std::to_string(e.vlan_id) : "");
  if (e.ip_version == 4) {
    EXPECT_EQ(at("ip.src"), e.src);
    EXPECT_EQ(at("ip.dst"), e.dst);
    EXPECT_EQ(at("ip.len"), std::to_string(l3 + l4 + e.wire_len));
    EXPECT_EQ(at("ip.ttl"), std::to_string(e.ttl));
    EXPECT_EQ(at("ip.flags.df"), "1");
    EXPECT_EQ(at("ip.checksum.status"), "1") << "IPv4 header checksum";
    EXPECT_EQ(at("ipv6.src"), "");
  } else {
    EXPECT_EQ(at("ipv6.src"), e.src);
    EXPECT_EQ(at("ipv6.dst"), e.dst);
    EXPECT_EQ(at("ipv6.plen"), std::to_string(l4 + e.wire_len));
    EXPECT_EQ(at("ipv6.hlim"), std::to_string(e.ttl));
    EXPECT_EQ(at("ip.src"), "");
  }
  const bool cut = e.captured.size() < e.wire_len;
  if (e.tcp) {
    EXPECT_EQ(at("tcp.srcport"), std::to_string(e.sport));
    EXPECT_EQ(at("tcp.dstport"), std::to_string(e.dport));
    EXPECT_EQ(at("tcp.seq_raw"), std::to_string(e.seq));
    EXPECT_EQ(at("tcp.ack_raw"), std::to_string(e.ack));
    char flags[16];
    std::snprintf(flags, sizeof flags, "0x%04x", e.tcp_flags);
    EXPECT_EQ(at("tcp.flags"), flags);
    EXPECT_EQ(at("tcp.window_size_value"), std::to_string(e.window));
    EXPECT_EQ(at("tcp.hdr_len"), "20");
    EXPECT_EQ(at("tcp.len"), std::to_string(e.wire_len));
    if (!cut) {
      EXPECT_EQ(at("tcp.payload"), hex(e.captured));
      EXPECT_EQ(at("tcp.checksum.status"), "1") << "TCP checksum";
    } else {
      // tshark shows no payload field for a cut segment; the captured bytes
      // are checked through the frame bytes instead (raw_payload_check).
      EXPECT_EQ(at("tcp.checksum.status"), "2") << "a cut segment's checksum cannot be verified";
    }
    EXPECT_EQ(at("udp.srcport"), "");
  } else {
    EXPECT_EQ(at("udp.srcport"), std::to_string(e.sport));
    EXPECT_EQ(at("udp.dstport"), std::to_string(e.dport));
    EXPECT_EQ(at("udp.length"), std::to_string(8 + e.wire_len));
    if (!cut) {
      EXPECT_EQ(at("udp.payload"), hex(e.captured));
      EXPECT_EQ(at("udp.checksum.status"), "1") << "UDP checksum";
    }
    EXPECT_EQ(at("tcp.srcport"), "");
  }
}

// `tshark -z expert` lists Errors/Warnings sections only when it has some.
void expect_no_expert_problems(const std::string& file, const std::string& scratch) {
  const CmdResult r = run_cmd("tshark -n -r " + file + " -q -z expert", scratch);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.out.find("Errors ("), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("Warnings ("), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("Malformed"), std::string::npos) << r.out;
  EXPECT_EQ(r.err.find("appears to have been cut short"), std::string::npos) << r.err;
  // tshark's only stderr output should be its warning about running as root.
  std::string err;
  for (const auto& l : lines(r.err))
    if (l.find("Running as user") == std::string::npos) err += l + "\n";
  EXPECT_EQ(err, "") << "tshark complained while reading the file";
}

// The whole test capture: two segments, packets of every kind.
struct Scenario {
  std::vector<Expected> frames;  // in file order
  std::vector<uint8_t> big;  // the 40000-byte TCP payload
};

Scenario write_scenario(const std::string& data_dir) {
  Scenario s;
  Capture cap(data_dir + "/segments");

  // --- segment 1: base+0 .. base+3
  cap.open_segment(1);
  cap.iface(2, "eth0", kBase);
  cap.iface(1, "lo", kBase);
  {
    tw_pkt p = base_pkt(kBase + 0, 2, 4, 6, TW_DIR_EGRESS);
    set_v4(p.saddr, 10, 1, 0, 1);
    set_v4(p.daddr, 10, 1, 0, 2);
    p.sport = 43210;
    p.dport = 8080;
    p.seq = 1000;
    p.ack = 2000;
    p.tcp_flags = TW_TCP_PSH | TW_TCP_ACK;
    p.window = 502;
    const auto req = text("GET /api.json HTTP/1.1\r\nHost: 10.1.0.2:8080\r\nUser-Agent: test\r\n\r\n");
    cap.packet(p, req);
    expect_tcp(s.frames, cap, p, req);

    tw_pkt q = base_pkt(kBase + 1 * kSec + 123456789, 2, 4, 6, TW_DIR_INGRESS);
    set_v4(q.saddr, 10, 1, 0, 2);
    set_v4(q.daddr, 10, 1, 0, 1);
    q.sport = 8080;
    q.dport = 43210;
    q.seq = 2000;
    q.ack = 1000 + static_cast<uint32_t>(req.size());
    q.tcp_flags = TW_TCP_PSH | TW_TCP_ACK;
    q.window = 509;
    q.ttl = 63;
    const auto resp = text("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{\"ok\":true}\n");
    cap.packet(q, resp);
    expect_tcp(s.frames, cap, q, resp);
  }
  {
    tw_pkt p = base_pkt(kBase + 2 * kSec, 1, 6, 6, TW_DIR_EGRESS);
    set_v6(p.saddr, 1);
    set_v6(p.daddr, 2);
    p.sport = 50000;
    p.dport = 40123;
    p.seq = 0xfffffff0u;  // wraps within the payload
    p.ack = 77;
    p.tcp_flags = TW_TCP_PSH | TW_TCP_ACK;
    p.window = 1024;
    p.ttl = 55;
    const auto data = pattern(333, 6);
    cap.packet(p, data);
    expect_tcp(s.frames, cap, p, data);
  }
  {
    tw_pkt p = base_pkt(kBase + 3 * kSec, 2, 4, 17, TW_DIR_EGRESS);
    set_v4(p.saddr, 10, 1, 0, 1);
    set_v4(p.daddr, 10, 1, 0, 3);
    p.sport = 40001;
    p.dport = 40002;
    const auto data = pattern(101, 17);  // odd length: checksum padding
    cap.packet(p, data);
    expect_udp(s.frames, cap, p, data);
  }
  cap.seal();

  // --- segment 2: base+10 .. base+14
  cap.open_segment(2);
  cap.iface(2, "eth0", kBase + 10 * kSec);
  {
    // 40000 bytes -> records of 16384, 16384 and 7232 bytes.
    tw_pkt p = base_pkt(kBase + 10 * kSec, 2, 4, 6, TW_DIR_INGRESS);
    set_v4(p.saddr, 10, 1, 0, 2);
    set_v4(p.daddr, 10, 1, 0, 1);
    p.sport = 40200;
    p.dport = 40201;
    p.seq = 1;
    p.ack = 1;
    p.tcp_flags = TW_TCP_PSH | TW_TCP_ACK;
    p.window = 4000;
    s.big = pattern(40000, 40);
    cap.packet(p, s.big);
    expect_tcp(s.frames, cap, p, s.big);
  }
  {
    // A 20000-byte UDP datagram in two records -> one frame.
    tw_pkt p = base_pkt(kBase + 11 * kSec, 2, 4, 17, TW_DIR_INGRESS);
    set_v4(p.saddr, 10, 1, 0, 4);
    set_v4(p.daddr, 10, 1, 0, 1);
    p.sport = 40301;
    p.dport = 40302;
    const auto data = pattern(20000, 20);
    cap.packet(p, data);
    expect_udp(s.frames, cap, p, data);
  }
  {
    // VLAN 100, priority 1, on an interface without an IFACE record.
    tw_pkt p = base_pkt(kBase + 12 * kSec, 7, 6, 17, TW_DIR_EGRESS);
    set_v6(p.saddr, 0x10);
    set_v6(p.daddr, 0x20);
    p.sport = 40401;
    p.dport = 40402;
    p.flags = TW_PKT_F_VLAN;
    p.vlan_tci = (1 << 13) | 100;
    const auto data = pattern(64, 7);
    cap.packet(p, data);
    expect_udp(s.frames, cap, p, data);
  }
  {
    // Cut by the snap length: 3000 bytes on the wire, 1000 captured.
    tw_pkt p = base_pkt(kBase + 13 * kSec, 2, 4, 6, TW_DIR_EGRESS);
    set_v4(p.saddr, 10, 1, 0, 1);
    set_v4(p.daddr, 10, 1, 0, 5);
    p.sport = 40501;
    p.dport = 40502;
    p.seq = 9000;
    p.ack = 1;
    p.tcp_flags = TW_TCP_ACK;
    p.window = 100;
    p.payload_len = 3000;
    const auto data = pattern(1000, 13);
    cap.packet(p, data);
    expect_tcp(s.frames, cap, p, data);
  }
  {
    // Cut in its second chunk: 30000 on the wire, 20000 captured (16384 + 3616).
    tw_pkt p = base_pkt(kBase + 14 * kSec, 2, 6, 6, TW_DIR_INGRESS);
    set_v6(p.saddr, 5);
    set_v6(p.daddr, 6);
    p.sport = 40601;
    p.dport = 40602;
    p.seq = 5;
    p.ack = 6;
    p.tcp_flags = TW_TCP_ACK | TW_TCP_FIN;
    p.window = 100;
    p.payload_len = 30000;
    const auto data = pattern(20000, 14);
    cap.packet(p, data);
    expect_tcp(s.frames, cap, p, data);
  }
  cap.seal();
  return s;
}

CmdResult export_pcap(const std::string& data_dir, const std::string& out, const std::string& extra = "") {
  return run_cmd(tapwire_bin() + " export pcap --data-dir " + data_dir + " -o " + out + " " + extra,
                 fs::path(out).parent_path().string());
}

// -------------------------------------------------------------- tests ---

TEST(PcapngExport, EveryFieldMatchesWhatWasWritten) {
  REQUIRE_TOOLS();
  TempDir tmp;
  const Scenario s = write_scenario(tmp.path());
  const std::string out = tmp.path() + "/all.pcapng";
  const CmdResult r = export_pcap(tmp.path(), out);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(lines(r.err).size(), 1u) << r.err;
  EXPECT_NE(r.err.find("exported " + std::to_string(s.frames.size()) + " packets"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("from 2 of 2 segments"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out + ".tmp"));

  const auto frames = tshark_frames(out, tmp.path());
  ASSERT_EQ(frames.size(), s.frames.size());
  for (size_t i = 0; i < frames.size(); ++i) check_frame(frames[i], s.frames[i], i);
  expect_no_expert_problems(out, tmp.path());
}

TEST(PcapngExport, CutPacketsKeepTheirCapturedBytes) {
  REQUIRE_TOOLS();
  TempDir tmp;
  const Scenario s = write_scenario(tmp.path());
  const std::string out = tmp.path() + "/all.pcapng";
  ASSERT_EQ(export_pcap(tmp.path(), out).status, 0);
  // For cut frames tshark has no tcp.payload: compare the frame's tail.
  const CmdResult r = run_cmd("tshark -n -r " + out + " -T fields -e frame.number -e frame.len -e frame.cap_len" +
                                  " -Y 'frame.len > frame.cap_len'",
                              tmp.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(lines(r.out).size(), 2u) << r.out;  // the 3000/1000 packet, the last chunk of the 30000/20000 one
  for (size_t i = 0; i < s.frames.size(); ++i) {
    const Expected& e = s.frames[i];
    if (e.captured.size() == e.wire_len) continue;
    // -x prints a hex dump of the frame: "0000  02 00 0a ...  ascii".
    std::string all;
    const CmdResult x = run_cmd("tshark -n -r " + out + " -x -Y 'frame.number == " + std::to_string(i + 1) + "'", tmp.path());
    for (const auto& line : lines(x.out)) {
      if (line.empty() && !all.empty()) break;  // only the frame's own bytes
      if (line.size() < 8 || line[4] != ' ' || line[5] != ' ' || !std::isxdigit(static_cast<unsigned char>(line[0])))
        continue;
      for (const auto& b : split(line.substr(6, 47), ' '))
        if (b.size() == 2) all += b;
    }
    const std::string want = hex(e.captured);
    ASSERT_GE(all.size(), want.size()) << "frame " << i + 1;
    EXPECT_EQ(all.substr(all.size() - want.size()), want) << "frame " << i + 1;
  }
}

TEST(PcapngExport, LargeTcpPayloadReassemblesInTshark) {
  REQUIRE_TOOLS();
  TempDir tmp;
  const Scenario s = write_scenario(tmp.path());
  const std::string out = tmp.path() + "/all.pcapng";
  ASSERT_EQ(export_pcap(tmp.path(), out).status, 0);
  // The 40000-byte packet's stream, as tshark reassembles it.
  const CmdResult idx = run_cmd("tshark -n -r " + out + " -T fields -e tcp.stream -Y 'tcp.srcport == 40200' | head -1", tmp.path());
  ASSERT_EQ(idx.status, 0);
  const std::string stream = lines(idx.out).at(0);
  const CmdResult r = run_cmd("tshark -n -r " + out + " -q -z follow,tcp,raw," + stream, tmp.path());
  ASSERT_EQ(r.status, 0) << r.err;
  std::string got;
  for (const auto& line : lines(r.out)) {
    if (line.empty() || line[0] == '=' || line.find(':') != std::string::npos) continue;
    std::string l = line;
    if (!l.empty() && l[0] == '\t') l = l.substr(1);
    got += l;
  }
  EXPECT_EQ(got.size(), s.big.size() * 2);
  EXPECT_TRUE(got == hex(s.big)) << "reassembled stream differs from the written payload";
}

TEST(PcapngExport, TimeWindowSelectsPacketsAndSkipsSegments) {
  REQUIRE_TOOLS();
  TempDir tmp;
  const Scenario s = write_scenario(tmp.path());
  const std::string out = tmp.path() + "/win.pcapng";

  auto frames_between = [&](uint64_t from, uint64_t to) {
    std::vector<Expected> v;
    for (const auto& e : s.frames)
      if (e.ts >= from && e.ts <= to) v.push_back(e);
    return v;
  };
  struct Case {
    std::string args;
    uint64_t from, to;
    std::string segments;
  };
  const std::vector<Case> cases = {
      // Unix seconds with a fraction and RFC 3339: base+1.5 s .. base+11 s inclusive.
      {"--from 1795398721.5 --to 2026-11-23T01:52:11Z", kBase + 1500000000ull, kBase + 11 * kSec, "from 2 of 2 segments"},
      // Only the second segment: the first is skipped without being read.
      {"--from 2026-11-23T02:52:10+01:00", kBase + 10 * kSec, UINT64_MAX, "from 1 of 2 segments"},
      // Only the first, with nanosecond precision at the edge.
      {"--to 2026-11-23T01:52:01.123456789Z", 0, kBase + 1 * kSec + 123456789, "from 1 of 2 segments"},
      {"--to 2026-11-23T01:52:01.123456788Z", 0, kBase + 1 * kSec + 123456788, "from 1 of 2 segments"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.args);
    const CmdResult r = export_pcap(tmp.path(), out, c.args);
    ASSERT_EQ(r.status, 0) << r.err;
    const auto want = frames_between(c.from, c.to);
    EXPECT_NE(r.err.find("exported " + std::to_string(want.size()) + " packets"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(c.segments), std::string::npos) << r.err;
    const auto frames = tshark_frames(out, tmp.path());
    ASSERT_EQ(frames.size(), want.size());
    for (size_t i = 0; i < frames.size(); ++i) check_frame(frames[i], want[i], i);
  }
  // Relative times: everything was captured years from now... or ago; either
  // way a window of the last 5 minutes before now holds nothing.
  const uint64_t now = tapwire::realtime_now_ns();
  if (now > kBase + 15 * kSec) {
    const CmdResult r = export_pcap(tmp.path(), out, "--from=-5m");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.err.find("exported 0 packets"), std::string::npos) << r.err;
  } else {
    const CmdResult r = export_pcap(tmp.path(), out, "--to -5m");
    ASSERT_EQ(r.status, 0) << r.err;
    EXPECT_NE(r.err.find("exported 0 packets"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("from 0 of 2 segments"), std::string::npos) << r.err;
  }
}

TEST(PcapngExport, WritesToStdoutAndFifosWithoutRenaming) {
  REQUIRE_TOOLS();
  TempDir tmp;
  write_scenario(tmp.path());
  const std::string file = tmp.path() + "/file.pcapng";
  ASSERT_EQ(export_pcap(tmp.path(), file).status, 0);
  const std::string want = read_file(file);
  ASSERT_GT(want.size(), 1000u);

  const std::string piped = tmp.path() + "/piped.pcapng";
  CmdResult r = run_cmd(tapwire_bin() + " export pcap --data-dir " + tmp.path() + " -o - > " + piped, tmp.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(read_file(piped) == want);

  // A FIFO (like /dev/null or /dev/stdout) is written in place, not replaced.
  const std::string fifo = tmp.path() + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const std::string via_fifo = tmp.path() + "/via-fifo.pcapng";
  r = run_cmd("cat " + fifo + " > " + via_fifo + " & " + tapwire_bin() + " export pcap --data-dir " + tmp.path() +
                  " -o " + fifo + "; st=$?; wait; exit $st",
              tmp.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_TRUE(fs::is_fifo(fifo));
  EXPECT_FALSE(fs::exists(fifo + ".tmp"));
  EXPECT_TRUE(read_file(via_fifo) == want);
}

TEST(PcapngExport, OpenSegmentIsReadUpToWhatIsPublished) {
  REQUIRE_TOOLS();
  TempDir tmp;
  const std::string seg_dir = tmp.path() + "/segments";
  fs::create_directories(seg_dir);
  SegmentWriter w = SegmentWriter::create(seg_dir, 1, 1u << 20);
  const auto data = pattern(100, 1);
  for (int i = 0; i < 3; ++i) {
    tw_pkt p = base_pkt(kBase + static_cast<uint64_t>(i) * kSec, 2, 4, 17, TW_DIR_INGRESS);
    set_v4(p.saddr, 10, 0, 0, 1);
    set_v4(p.daddr, 10, 0, 0, 2);
    p.sport = 40000;
    p.dport = 40001;
    p.payload_len = p.cap_len = 100;
    ASSERT_TRUE(w.append(TW_REC_PACKET, {reinterpret_cast<const uint8_t*>(&p), sizeof p}, data, p.ts_ns));
    if (i == 1) w.publish();  // the third record stays unpublished
  }
  const std::string out = tmp.path() + "/open.pcapng";
  const CmdResult r = export_pcap(tmp.path(), out);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.err.find("exported 2 packets"), std::string::npos) << r.err;
  const auto frames = tshark_frames(out, tmp.path());
  ASSERT_EQ(frames.size(), 2u);
  EXPECT_EQ(frames[0].at("frame.interface_name"), "ifindex2");
  EXPECT_EQ(frames[1].at("udp.payload"), hex(data));
}

TEST(PcapngExport, InterfacesInOrderOfFirstUse) {
  REQUIRE_TOOLS();
  TempDir tmp;
  write_scenario(tmp.path());
  const std::string out = tmp.path() + "/all.pcapng";
  ASSERT_EQ(export_pcap(tmp.path(), out).status, 0);
  const CmdResult r = run_cmd("tshark -n -r " + out + " -T fields -e frame.interface_id -e frame.interface_name", tmp.path());
  ASSERT_EQ(r.status, 0) << r.err;
  std::vector<std::string> order;
  for (const auto& l : lines(r.out))
    if (order.empty() || std::find(order.begin(), order.end(), l) == order.end()) order.push_back(l);
  const std::vector<std::string> want = {"0\teth0", "1\tlo", "2\tifindex7"};
  EXPECT_EQ(order, want);
}

TEST(PcapngExport, ErrorsAreOneLineAndLeaveNoOutput) {
  REQUIRE_TOOLS();
  TempDir tmp;
  write_scenario(tmp.path());
  const std::string out = tmp.path() + "/bad.pcapng";
  auto check_error = [&](const CmdResult& r, const std::string& needle) {
    EXPECT_EQ(r.status, 1) << r.err;
    EXPECT_EQ(lines(r.err).size(), 1u) << r.err;
    EXPECT_EQ(r.err.rfind("tapwire: ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(needle), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out));
    EXPECT_FALSE(fs::exists(out + ".tmp"));
  };

  // A file in segments/ that is not a segment.
  const std::string junk = tmp.path() + "/segments/0000000000000003.twseg";
  {
    std::ofstream f(junk, std::ios::binary);
    f << std::string(8192, 'x');
  }
  check_error(export_pcap(tmp.path(), out), junk);
  fs::remove(junk);

  check_error(export_pcap(tmp.path() + "/nope", out), tmp.path() + "/nope");
  check_error(export_pcap(tmp.path(), out, "--from yesterday"), "yesterday");
  check_error(export_pcap(tmp.path(), out, "--from 1795398730 --to 1795398720"), "--from");
  const std::string empty = tmp.path() + "/empty";
  fs::create_directories(empty + "/segments");
  check_error(export_pcap(empty, out), empty + "/segments");

  // A usage error is one line too (exit 2).
  const CmdResult u = run_cmd(tapwire_bin() + " export pcap --data-dir " + tmp.path(), tmp.path());
  EXPECT_EQ(u.status, 2);
  EXPECT_EQ(lines(u.err).size(), 1u) << u.err;
}

// Direct use of the writer: UDP chunk edge cases that the sensor should not
// produce but a damaged segment might.
TEST(PcapngWriter, UdpChunksWithoutTheirStartAreSkipped) {
  char* buf = nullptr;
  size_t len = 0;
  std::FILE* mem = open_memstream(&buf, &len);
  ASSERT_NE(mem, nullptr);
  {
    tapwire::PcapngWriter w(mem);
    tw_pkt p = base_pkt(kBase, 3, 4, 17, TW_DIR_INGRESS);
    set_v4(p.saddr, 1, 2, 3, 4);
    set_v4(p.daddr, 5, 6, 7, 8);
    p.payload_len = 20000;
    const auto data = pattern(20000, 1);
    // continuation without its start
    p.flags = TW_PKT_F_CONTINUATION;
    p.chunk_off = 16384;
    p.cap_len = 3616;
    EXPECT_TRUE(w.add_packet(p, {data.data() + 16384, 3616}));
    // start, then a different datagram interrupts: the first is written cut
    p.flags = TW_PKT_F_MORE;
    p.chunk_off = 0;
    p.cap_len = 16384;
    EXPECT_TRUE(w.add_packet(p, {data.data(), 16384}));
    tw_pkt q = p;
    q.flags = 0;
    q.payload_len = 10;
    q.cap_len = 10;
    EXPECT_TRUE(w.add_packet(q, {data.data(), 10}));
    // malformed: wrong cap_len
    q.cap_len = 11;
    EXPECT_FALSE(w.add_packet(q, {data.data(), 10}));
    EXPECT_TRUE(w.finish());
    EXPECT_EQ(w.stats().packets, 2u);
    EXPECT_EQ(w.stats().orphan_chunks, 1u);
    EXPECT_EQ(w.stats().truncated, 1u);
    EXPECT_EQ(w.stats().malformed_records, 1u);
    EXPECT_EQ(w.stats().interfaces, 1u);
  }
  std::fclose(mem);
  ASSERT_GE(len, 28u);
  uint32_t type;
  std::memcpy(&type, buf, 4);
  EXPECT_EQ(type, 0x0A0D0D0Au);
  EXPECT_EQ(len % 4, 0u);
  std::free(buf);
}

TEST(PcapngWriter, Throughput) {
  // Not a benchmark: catches an accidental per-byte slow path.
  std::FILE* null = std::fopen("/dev/null", "wb");
  ASSERT_NE(null, nullptr);
  tapwire::PcapngWriter w(null);
  tw_pkt p = base_pkt(kBase, 2, 4, 6, TW_DIR_INGRESS);
  set_v4(p.saddr, 1, 2, 3, 4);
  set_v4(p.daddr, 5, 6, 7, 8);
  const auto data = pattern(1448, 3);
  p.payload_len = p.cap_len = 1448;
  const auto t0 = std::chrono::steady_clock::now();
  const int n = 200000;  // ~290 MB
  for (int i = 0; i < n; ++i) {
    p.seq += 1448;
    w.add_packet(p, data);
  }
  ASSERT_TRUE(w.finish());
  std::fclose(null);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double mbps = static_cast<double>(w.stats().file_bytes) / secs / 1e6;
  RecordProperty("MBps", static_cast<int>(mbps));
  std::printf("PcapngWriter: %.0f MB/s (informative; speed is measured by make bench)\n", mbps);
  EXPECT_EQ(w.stats().packets, static_cast<uint64_t>(n));
}

// ------------------------------------------------------------- status ---

TEST(CliStatus, ShowsEveryDropReasonAndStaleness) {
  if (!fs::exists(tapwire_bin())) FAIL() << tapwire_bin() << " not built";
  TempDir tmp;
  nlohmann::json st = {
      {"version", "0.1.0"},
      {"pid", 2147483000},  // no such process
      {"state", "capturing"},
      {"started_ns", kBase},
      {"updated_ns", kBase + 60 * kSec},
      {"interfaces", nlohmann::json::array({{{"name", "eth0"}, {"ifindex", 2}}})},
      {"counters", {{"packets_seen", 1234567}, {"packets_captured", 1234000}, {"bytes_captured", 987654321}}},
      {"drops", {{"ringbuf_full", 17}, {"storage_write_failed", 2}}},
      {"storage", {{"dir", tmp.path() + "/segments"}, {"segments", 3}, {"bytes_stored", 3u << 20}, {"storage_size", 1u << 30}}},
  };
  ASSERT_TRUE(tapwire::write_status_file(tmp.path(), st));
  CmdResult r = run_cmd(tapwire_bin() + " status --data-dir " + tmp.path(), tmp.path());
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_NE(r.out.find("not running"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("eth0"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1,234,567"), std::string::npos) << r.out;
  for (const char* reason : {"ringbuf_full", "no_ring", "load_failed", "ip_fragment", "bad_header", "no_scratch",
                             "storage_write_failed"})
    EXPECT_NE(r.out.find(reason), std::string::npos) << reason << "\n" << r.out;

  st["pid"] = getpid();
  st["updated_ns"] = tapwire::realtime_now_ns();
  ASSERT_TRUE(tapwire::write_status_file(tmp.path(), st));
  r = run_cmd(tapwire_bin() + " status --json --data-dir " + tmp.path(), tmp.path());
  ASSERT_EQ(r.status, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("running"), true);
  EXPECT_EQ(j.at("drops").at("ringbuf_full"), 17);

  r = run_cmd(tapwire_bin() + " status --data-dir " + tmp.path() + "/missing", tmp.path());
  EXPECT_EQ(r.status, 1);
  EXPECT_EQ(lines(r.err).size(), 1u) << r.err;
  fs::remove(tapwire::status_file_path(tmp.path()));
  r = run_cmd(tapwire_bin() + " status --data-dir " + tmp.path(), tmp.path());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("status.json"), std::string::npos) << r.err;
}

// ------------------------------------------------------------ timefmt ---

TEST(TimeFmt, ParsesRfc3339) {
  using tapwire::parse_time_arg;
  const uint64_t now = kBase + 3600 * kSec;
  EXPECT_EQ(parse_time_arg("2026-11-23T01:52:00Z", now).ns, kBase);
  EXPECT_EQ(parse_time_arg("2026-11-23t01:52:00z", now).ns, kBase);
  EXPECT_EQ(parse_time_arg("2026-11-23 01:52:00Z", now).ns, kBase);
  EXPECT_EQ(parse_time_arg("2026-11-23T01:52:00.5Z", now).ns, kBase + 500000000);
  EXPECT_EQ(parse_time_arg("2026-11-23T01:52:00.123456789Z", now).ns, kBase + 123456789);
  EXPECT_EQ(parse_time_arg("2026-11-23T01:52:00.1234567891Z", now).ns, kBase + 123456789);  // cut, not rounded
  EXPECT_EQ(parse_time_arg("2026-11-23T03:52:00+02:00", now).ns, kBase);
  EXPECT_EQ(parse_time_arg("2026-11-22T20:22:00-05:30", now).ns, kBase);
  EXPECT_EQ(parse_time_arg("1970-01-01T00:00:00Z", now).ns, 0u);
  EXPECT_EQ(parse_time_arg("2024-02-29T00:00:00Z", now).ns, 1709164800ull * kSec);
  EXPECT_EQ(parse_time_arg("2016-12-31T23:59:60Z", now).ns, 1483228800ull * kSec);  // leap second
}

TEST(TimeFmt, ParsesUnixAndRelative) {
  using tapwire::parse_time_arg;
  const uint64_t now = kBase + 3600 * kSec;
  EXPECT_EQ(parse_time_arg("1795398720", now).ns, kBase);
  EXPECT_EQ(parse_time_arg("1795398720.25", now).ns, kBase + 250000000);
  EXPECT_EQ(parse_time_arg("1795398720.000000001", now).ns, kBase + 1);
  EXPECT_EQ(parse_time_arg("0", now).ns, 0u);
  EXPECT_EQ(parse_time_arg(" 1795398720 ", now).ns, kBase);
  EXPECT_EQ(parse_time_arg("now", now).ns, now);
  EXPECT_EQ(parse_time_arg("-30s", now).ns, now - 30 * kSec);
  EXPECT_EQ(parse_time_arg("-5m", now).ns, now - 300 * kSec);
  EXPECT_EQ(parse_time_arg("-2h", now).ns, now - 7200 * kSec);
  EXPECT_EQ(parse_time_arg("-1d", now).ns, now - 86400 * kSec);
  EXPECT_EQ(parse_time_arg("-250ms", now).ns, now - 250000000);
  EXPECT_EQ(parse_time_arg("-1h30m", now).ns, now - 5400 * kSec);
  EXPECT_EQ(parse_time_arg("-1.5h", now).ns, now - 5400 * kSec);
  EXPECT_EQ(parse_time_arg("-10us", now).ns, now - 10000);
  EXPECT_EQ(parse_time_arg("-7ns", now).ns, now - 7);
}

TEST(TimeFmt, RejectsBadInput) {
  using tapwire::parse_time_arg;
  const uint64_t now = kBase;
  for (const char* bad : {"", "   ", "yesterday", "-5", "-m", "-5x", "-5 m", "--5m", "-", "1.2.3", ".", "12a",
                          "2026-11-23", "2026-11-23T01:52:00", "2026-11-23T01:52Z", "2026-13-01T00:00:00Z",
                          "2026-02-29T00:00:00Z", "2026-11-31T00:00:00Z", "2026-11-23T24:00:00Z",
                          "2026-11-23T01:60:00Z", "2026-11-23T01:52:61Z", "2026-11-23T01:52:00.Z",
                          "2026-11-23T01:52:00+2:00", "2026-11-23T01:52:00+02", "2026-11-23T01:52:00Zjunk",
                          "1969-12-31T23:59:59Z", "1970-01-01T00:30:00+01:00", "99999999999999999999",
                          "-999999999d", "+5m"}) {
    const auto r = parse_time_arg(bad, now);
    EXPECT_FALSE(r.ns.has_value()) << "'" << bad << "' parsed as " << *r.ns;
    EXPECT_FALSE(r.error.empty()) << bad;
  }
}

TEST(TimeFmt, FormatsRfc3339WithNanoseconds) {
  using tapwire::format_rfc3339_ns;
  EXPECT_EQ(format_rfc3339_ns(kBase), "2026-11-23T01:52:00.000000000Z");
  EXPECT_EQ(format_rfc3339_ns(kBase + 123456789), "2026-11-23T01:52:00.123456789Z");
  EXPECT_EQ(format_rfc3339_ns(0), "1970-01-01T00:00:00.000000000Z");
  EXPECT_EQ(format_rfc3339_ns(951782400ull * kSec + 1), "2000-02-29T00:00:00.000000001Z");
  // Round trip over a spread of times.
  for (uint64_t t = 0; t < 4102444800ull * kSec; t += 7777777777777777ull) {
    const auto r = tapwire::parse_time_arg(format_rfc3339_ns(t), 0);
    ASSERT_TRUE(r.ns.has_value()) << format_rfc3339_ns(t) << ": " << r.error;
    EXPECT_EQ(*r.ns, t) << format_rfc3339_ns(t);
  }
}

}  // namespace

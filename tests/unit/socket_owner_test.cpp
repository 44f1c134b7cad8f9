// The owner of a socket older than the identity hooks
// (userspace/sensor/socket_owner.cpp), found as `ss -p` finds it, in a fake
// /proc and cgroup2 tree: the cgroup's processes, their network
// namespace's socket tables, and who holds the socket's inode open.
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "identity_test_helpers.hpp"
#include "socket_owner.hpp"

namespace {

namespace fs = std::filesystem;
using tapwire::sensor::SocketOwnerResolver;
using namespace tapwire::identity;
using namespace tapwire::identity::testing;

constexpr int kEstablished = 0x01, kListen = 0x0A, kUdpIdle = 0x07;

// "ADDR:PORT" as /proc/net/{tcp,udp}[6] print it: each 32-bit word of the
// address as the host reads it, in hex, then the port in hex.
std::string proc_addr(const char* text, uint16_t port, bool v6_table) {
  IpKey k = ip(text);
  if (v6_table && k.version == 4) {  // an IPv4 address in a v6 table: mapped
    uint8_t m[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    std::memcpy(m + 12, k.addr, 4);
    std::memcpy(k.addr, m, 16);
    k.version = 6;
  }
  std::string out;
  for (int w = 0; w < (k.version == 6 ? 4 : 1); w++) {
    uint32_t v;
    std::memcpy(&v, k.addr + 4 * w, 4);
    char buf[9];
    std::snprintf(buf, sizeof buf, "%08X", v);
    out += buf;
  }
  char p[6];
  std::snprintf(p, sizeof p, ":%04X", port);
  return out + p;
}

struct Line {
  const char *local, *remote;
  uint16_t lport, rport;
  int state;
  uint64_t inode;
};

class FakeHost {
 public:
  FakeHost() {
    char tmpl[] = "/tmp/tw-socket-owner-test-XXXXXX";
    const char* p = mkdtemp(tmpl);
    if (!p) throw std::runtime_error("mkdtemp failed");
    root_ = p;
    fs::create_directories(cgroup2());
    fs::create_directories(proc());
  }
  ~FakeHost() {
    std::error_code ec;
    fs::remove_all(root_, ec);
  }
  std::string cgroup2() const { return root_ + "/cgroup"; }
  std::string proc() const { return root_ + "/proc"; }

  void cgroup(const std::string& path, const std::vector<uint32_t>& pids) {
    const std::string dir = cgroup2() + path;
    fs::create_directories(dir);
    std::ofstream f(dir + "/cgroup.procs");
    for (auto p : pids) f << p << "\n";
  }
  // A process (thread group leader unless tgid says otherwise) in network
  // namespace `netns`, holding `inodes` open as fds 3, 4, ...
  void process(uint32_t pid, const std::string& comm, uint64_t netns, const std::vector<uint64_t>& inodes,
               uint32_t tgid = 0) {
    const std::string dir = proc() + "/" + std::to_string(pid);
    fs::create_directories(dir + "/fd");
    fs::create_directories(dir + "/ns");
    fs::create_directories(dir + "/net");
    std::ofstream(dir + "/comm") << comm << "\n";
    std::ofstream(dir + "/status") << "Name:\t" << comm << "\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t"
                                   << (tgid ? tgid : pid) << "\nNgid:\t0\nPid:\t" << pid << "\nPPid:\t1\n";
    fs::create_symlink("net:[" + std::to_string(netns) + "]", dir + "/ns/net");
    fs::create_symlink("/dev/null", dir + "/fd/0");
    int fd = 3;
    for (auto i : inodes) fs::create_symlink("socket:[" + std::to_string(i) + "]", dir + "/fd/" + std::to_string(fd++));
    for (const char* t : {"tcp", "tcp6", "udp", "udp6"}) table(pid, t, {});
  }
  void table(uint32_t pid, const char* name, const std::vector<Line>& lines) {
    const bool v6 = std::strchr(name, '6') != nullptr;
    std::ofstream f(proc() + "/" + std::to_string(pid) + "/net/" + name);
    f << "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    int n = 0;
    for (auto& l : lines) {
      char st[3];
      std::snprintf(st, sizeof st, "%02X", l.state);
      f << "   " << n++ << ": " << proc_addr(l.local, l.lport, v6) << " " << proc_addr(l.remote, l.rport, v6) << " "
        << st << " 00000000:00000000 00:00000000 00000000  1000        0 " << l.inode
        << " 1 0000000000000000 100 0 0 10 0\n";
    }
  }

 private:
  std::string root_;
};

tw_sock_event event(uint8_t l4, const char* local, uint16_t lport, const char* remote, uint16_t rport,
                    uint64_t cgroup = 42) {
  return sock_event({.ts = at(0), .cookie = 1, .cgroup = cgroup, .tgid = 0, .l4 = l4, .local = local, .lport = lport,
                     .remote = remote, .rport = rport, .flags = TW_SOCK_F_NO_CREATOR},
                    TW_IDENT_SOCK_OPEN);
}

const std::string kPodCg = "/kubepods/burstable/pod11111111-2222-4333-8444-555555555555/" + container_id(1);

// nginx: master 100 holds the listener on :8080; worker 101 holds the
// accepted connection from 10.0.0.9:50000; both in one network namespace.
struct SocketOwnerNginx : ::testing::Test {
  FakeHost h;
  SocketOwnerResolver r{h.cgroup2(), h.proc()};
  void SetUp() override {
    h.cgroup(kPodCg, {100, 101});
    h.process(100, "nginx", 4026532000, {1000});
    h.process(101, "nginx-worker", 4026532000, {2000});
    h.table(100, "tcp",
            {{"0.0.0.0", "0.0.0.0", 8080, 0, kListen, 1000},
             {"10.244.1.7", "10.0.0.9", 8080, 50000, kEstablished, 2000},
             {"10.244.1.7", "10.0.0.9", 8080, 50001, kEstablished, 2001}});  // not accepted yet: nobody holds it
  }
};

TEST_F(SocketOwnerNginx, TheConnectionsHolder) {
  auto ev = event(IPPROTO_TCP, "10.244.1.7", 8080, "10.0.0.9", 50000);
  ASSERT_TRUE(r.resolve(ev, kPodCg, at(0)));
  EXPECT_EQ(ev.tgid, 101u);
  EXPECT_EQ(ev.pid, 101u);
  EXPECT_STREQ(ev.comm, "nginx-worker");
  EXPECT_EQ(r.lookups(), 1u);
  EXPECT_EQ(r.found(), 1u);
}

TEST_F(SocketOwnerNginx, NotYetAcceptedBelongsToTheListenersOwner) {
  auto ev = event(IPPROTO_TCP, "10.244.1.7", 8080, "10.0.0.9", 50001);
  ASSERT_TRUE(r.resolve(ev, kPodCg, at(0)));
  EXPECT_EQ(ev.tgid, 100u);
  EXPECT_STREQ(ev.comm, "nginx");
  // Not in the table at all: the listener too.
  SocketOwnerResolver fresh(h.cgroup2(), h.proc());
  auto ev2 = event(IPPROTO_TCP, "10.244.1.7", 8080, "10.0.0.10", 1234);
  ASSERT_TRUE(fresh.resolve(ev2, kPodCg, at(0)));
  EXPECT_EQ(ev2.tgid, 100u);
}

TEST_F(SocketOwnerNginx, NothingOnThePortOrNoProcesses) {
  auto ev = event(IPPROTO_TCP, "10.244.1.7", 9999, "10.0.0.9", 50000);
  EXPECT_FALSE(r.resolve(ev, kPodCg, at(0)));
  EXPECT_EQ(ev.tgid, 0u);
  h.cgroup("/empty", {});
  auto ev2 = event(IPPROTO_TCP, "10.244.1.7", 8080, "10.0.0.9", 50000);
  EXPECT_FALSE(r.resolve(ev2, "/empty", at(0)));
  EXPECT_FALSE(r.resolve(ev2, "/does/not/exist", at(0)));
  EXPECT_EQ(r.found(), 0u);
}

TEST_F(SocketOwnerNginx, CachedPerCgroupProtocolAndPort) {
  auto ev = event(IPPROTO_TCP, "10.244.1.7", 8080, "10.0.0.9", 50000);
  ASSERT_TRUE(r.resolve(ev, kPodCg, at(0)));
  // /proc changes (the worker is gone): within 30 s the cache answers.
  fs::remove_all(h.proc() + "/101");
  auto again = event(IPPROTO_TCP, "10.244.1.7", 8080, "10.0.0.9", 50000);
  ASSERT_TRUE(r.resolve(again, kPodCg, at(29)));
  EXPECT_EQ(again.tgid, 101u);
  EXPECT_EQ(r.lookups(), 1u);
  EXPECT_EQ(r.found(), 2u);
  // Later: looked up again, now the listener's owner.
  auto later = event(IPPROTO_TCP, "10.244.1.7", 8080, "10.0.0.9", 50000);
  ASSERT_TRUE(r.resolve(later, kPodCg, at(31)));
  EXPECT_EQ(later.tgid, 100u);
  EXPECT_EQ(r.lookups(), 2u);
  // Another cgroup id is another key.
  auto other = event(IPPROTO_TCP, "10.244.1.7", 8080, "10.0.0.9", 50000, 43);
  ASSERT_TRUE(r.resolve(other, kPodCg, at(31)));
  EXPECT_EQ(r.lookups(), 3u);
}

TEST_F(SocketOwnerNginx, RateLimitedTo50LookupsASecond) {
  // Each port a miss; misses are not cached.
  int found = 0;
  for (uint16_t p = 1; p <= 60; p++) {
    auto ev = event(IPPROTO_TCP, "10.244.1.7", p, "10.0.0.9", 50000);
    found += r.resolve(ev, kPodCg, at(0.5));
  }
  EXPECT_EQ(found, 0);
  EXPECT_EQ(r.lookups(), 50u);
  // Spent: even a socket that would be found is not looked up this second.
  auto ev = event(IPPROTO_TCP, "10.244.1.7", 8080, "10.0.0.9", 50000);
  EXPECT_FALSE(r.resolve(ev, kPodCg, at(1.4)));
  EXPECT_EQ(r.lookups(), 50u);
  // The next second.
  EXPECT_TRUE(r.resolve(ev, kPodCg, at(1.6)));
  EXPECT_EQ(r.lookups(), 51u);
  EXPECT_EQ(ev.tgid, 101u);
}

TEST(SocketOwner, UdpBoundSocket) {
  FakeHost h;
  h.cgroup("/system.slice/dnsmasq.service", {300});
  h.process(300, "dnsmasq", 4026531992, {3000, 3001});
  h.table(300, "udp", {{"0.0.0.0", "0.0.0.0", 53, 0, kUdpIdle, 3000}});
  h.table(300, "udp6", {{"::", "::", 547, 0, kUdpIdle, 3001}});
  SocketOwnerResolver r(h.cgroup2(), h.proc());
  auto ev = event(IPPROTO_UDP, "10.0.0.5", 53, "10.0.0.9", 40000);
  ASSERT_TRUE(r.resolve(ev, "/system.slice/dnsmasq.service", at(0)));
  EXPECT_EQ(ev.tgid, 300u);
  EXPECT_STREQ(ev.comm, "dnsmasq");
  // IPv4 on a dual-stack UDP socket bound to [::].
  auto v4 = event(IPPROTO_UDP, "10.0.0.5", 547, "10.0.0.9", 546);
  ASSERT_TRUE(r.resolve(v4, "/system.slice/dnsmasq.service", at(0)));
  EXPECT_EQ(v4.tgid, 300u);
  // TCP on the UDP port: nothing.
  auto tcp = event(IPPROTO_TCP, "10.0.0.5", 53, "10.0.0.9", 40000);
  EXPECT_FALSE(r.resolve(tcp, "/system.slice/dnsmasq.service", at(0)));
}

TEST(SocketOwner, Ipv4OnATcp6Listener) {
  // A dual-stack server: the listener in tcp6 ([::]:8443), held by the
  // master (400); an accepted IPv4 connection shows in tcp6 as
  // ::ffff:a.b.c.d, held by a worker (401).
  FakeHost h;
  h.cgroup(kPodCg, {400, 401});
  h.process(400, "server", 4026532100, {4000});
  h.process(401, "server-w", 4026532100, {4001});
  h.table(400, "tcp6",
          {{"::", "::", 8443, 0, kListen, 4000},
           {"10.244.1.7", "10.0.0.9", 8443, 51000, kEstablished, 4001},
           {"fd00::7", "fd00::9", 8443, 51000, kEstablished, 4002}});
  SocketOwnerResolver r(h.cgroup2(), h.proc());
  auto conn = event(IPPROTO_TCP, "10.244.1.7", 8443, "10.0.0.9", 51000);
  ASSERT_TRUE(r.resolve(conn, kPodCg, at(0)));
  EXPECT_EQ(conn.tgid, 401u);
  EXPECT_STREQ(conn.comm, "server-w");
  // Another IPv4 peer: not in the table: the listener's owner.
  SocketOwnerResolver r2(h.cgroup2(), h.proc());
  auto other = event(IPPROTO_TCP, "10.244.1.7", 8443, "10.0.0.10", 51000);
  ASSERT_TRUE(r2.resolve(other, kPodCg, at(0)));
  EXPECT_EQ(other.tgid, 400u);
}

TEST(SocketOwner, ThreadsAreNamedByTheirThreadGroup) {
  // The fd is found under a thread's id (as /proc lists tasks too): the
  // owner is its thread group, named by the group leader's comm.
  FakeHost h;
  h.cgroup("/app", {500, 501});
  h.process(500, "java", 4026532200, {});
  h.process(501, "http-nio-8080", 4026532200, {5000}, /*tgid=*/500);
  h.table(500, "tcp", {{"0.0.0.0", "0.0.0.0", 8080, 0, kListen, 5000}});
  SocketOwnerResolver r(h.cgroup2(), h.proc());
  auto ev = event(IPPROTO_TCP, "10.0.0.5", 8080, "10.0.0.9", 1);
  ASSERT_TRUE(r.resolve(ev, "/app", at(0)));
  EXPECT_EQ(ev.tgid, 500u);
  EXPECT_STREQ(ev.comm, "java");
}

TEST(SocketOwner, RootCgroupAndOtherNamespaces) {
  // The root cgroup ("/") reads the mount's own cgroup.procs. Of two
  // processes in different network namespaces, each one's tables count.
  FakeHost h;
  h.cgroup("", {600, 601});
  h.process(600, "a", 1, {});
  h.process(601, "b", 2, {6000});
  h.table(601, "tcp", {{"0.0.0.0", "0.0.0.0", 7000, 0, kListen, 6000}});
  SocketOwnerResolver r(h.cgroup2(), h.proc());
  auto ev = event(IPPROTO_TCP, "10.0.0.5", 7000, "10.0.0.9", 1);
  ASSERT_TRUE(r.resolve(ev, "/", at(0)));
  EXPECT_EQ(ev.tgid, 601u);
  EXPECT_STREQ(ev.comm, "b");
}

}  // namespace

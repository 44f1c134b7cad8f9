// The identity table (userspace/identity/identity_table.cpp): both ends of a
// call named as they were at the call's time, by socket and by address;
// state dumps, pruning, caps; and the identity records it is fed
// (identity_records.cpp).
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "identity_table.hpp"
#include "identity_test_helpers.hpp"

namespace {

using namespace tapwire::identity;
using namespace tapwire::identity::testing;

constexpr uint8_t TCP = IPPROTO_TCP, UDP = IPPROTO_UDP;

const std::string kWebUid = "11111111-2222-4333-8444-555555555555";
const std::string kApiUid = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";
const std::string kDbUid = "0d0d0d0d-0000-4000-8000-0000000000db";
const std::string kGhostUid = "99999999-9999-4999-8999-999999999999";  // a pod the API never told of

// Every field, so that a mismatch shows as one readable line.
std::string describe(const EndpointIdentityPtr& p) {
  if (!p) return "(nullptr)";
  const EndpointIdentity& i = *p;
  return "pid=" + std::to_string(i.pid) + " process=" + i.process + " exe=" + i.exe + " container=" + i.container +
         " container_id=" + i.container_id + " pod=" + i.pod + " ns=" + i.namespace_ + " workload=" + i.workload_kind +
         "/" + i.workload_name + " service=" + i.service + " node=" + i.node;
}

// A resolution, for tests: `->` on nothing fails the test (instead of
// crashing it) and reads as an empty identity.
struct Id {
  EndpointIdentityPtr p;
  Id(EndpointIdentityPtr x) : p(std::move(x)) {}
  const EndpointIdentity* operator->() const {
    static const EndpointIdentity none;
    if (!p) ADD_FAILURE() << "resolved to nothing";
    return p ? p.get() : &none;
  }
  operator EndpointIdentityPtr() const { return p; }
  const EndpointIdentity* get() const { return p.get(); }
  explicit operator bool() const { return p != nullptr; }
  bool operator==(std::nullptr_t) const { return !p; }
};
void PrintTo(const Id& id, std::ostream* os) { *os << describe(id.p); }

Id R(IdentityTable& t, uint8_t l4, const char* a, uint16_t ap, const char* b, uint16_t bp, uint64_t ts) {
  return t.resolve(l4, ip(a), ap, ip(b), bp, ts);
}

EndpointIdentityPtr want(EndpointIdentity i) { return std::make_shared<const EndpointIdentity>(std::move(i)); }

void apply_all(IdentityTable& t, const std::vector<IdentityRecord>& rs) {
  for (auto& r : rs) t.apply(r);
}

// The node and its pods, as a sensor on node-1 records them:
//   web (bare pod, 10.244.1.7, process 500 "web") talks to
//   api (Deployment api, 10.244.2.9 + fd00:244::9, process 600 "api"), which
//   the Service api (10.96.0.12) fronts; db-0 runs on node-2; sshd is the
//   node's own (cgroup 103).
std::vector<IdentityRecord> world() {
  return {
      self_up(at(0), "node-1", {"10.0.0.5", "fd00::5"}),
      node_up(at(0), "n1", "node-1", {"10.0.0.5"}),
      node_up(at(0), "n2", "node-2", {"10.0.0.6"}),
      cgroup(at(0), 101, container_cgroup(kWebUid, container_id(1))),
      cgroup(at(0), 102, container_cgroup(kApiUid, container_id(2))),
      cgroup(at(0), 103, "/system.slice/sshd.service"),
      cgroup(at(0), 104, container_cgroup(kApiUid, container_id(9))),  // a container the pod spec does not list (yet)
      cgroup(at(0), 105, container_cgroup(kGhostUid, container_id(5))),
      pod_up(at(0), {.uid = kWebUid,
                     .ns = "shop",
                     .name = "web-5d8f",
                     .ips = {"10.244.1.7"},
                     .containers = {{"web", container_id(1), "containerd"}}}),
      pod_up(at(0), {.uid = kApiUid,
                     .ns = "shop",
                     .name = "api-7d9c-x2x",
                     .ips = {"10.244.2.9", "fd00:244::9"},
                     .owner_kind = "Deployment",
                     .owner_name = "api",
                     .containers = {{"api", container_id(2), "containerd"}, {"istio-proxy", container_id(3), ""}}}),
      pod_up(at(0), {.uid = kDbUid,
                     .ns = "data",
                     .name = "db-0",
                     .node = "node-2",
                     .ips = {"10.244.3.3"},
                     .owner_kind = "StatefulSet",
                     .owner_name = "db"}),
      service_up(at(0), "svc-api", "shop", "api", {"10.96.0.12"}),
      slice_up(at(0), "es-api", "shop", "api", {"10.244.2.9", "fd00:244::9"}),
      process(at(0), 500, TW_PROC_SCAN, "web", "/usr/bin/web", 101),
      process(at(0), 600, TW_PROC_SCAN, "api", "/app/api", 102),
      process(at(0), 700, TW_PROC_SCAN, "sshd", "/usr/sbin/sshd", 103),
      // web:40000 -> api:8080, both ends local; the socket was made by a
      // thread with a name of its own.
      sock_open({.ts = at(10), .cookie = 1, .cgroup = 101, .tgid = 500, .local = "10.244.1.7", .lport = 40000,
                 .remote = "10.244.2.9", .rport = 8080, .comm = "worker-1"}),
      sock_open({.ts = at(10), .cookie = 2, .cgroup = 102, .tgid = 600, .local = "10.244.2.9", .lport = 8080,
                 .remote = "10.244.1.7", .rport = 40000, .comm = "api", .flags = TW_SOCK_F_ACCEPTED}),
  };
}

EndpointIdentity web_id() {
  EndpointIdentity i;
  i.pid = 500;
  i.process = "web";
  i.exe = "/usr/bin/web";
  i.container = "web";
  i.container_id = container_id(1);
  i.pod = "web-5d8f";
  i.namespace_ = "shop";
  i.workload_kind = "Pod";  // no controller: the pod is its own workload
  i.workload_name = "web-5d8f";
  i.node = "node-1";
  return i;
}

EndpointIdentity api_id() {
  EndpointIdentity i;
  i.pid = 600;
  i.process = "api";
  i.exe = "/app/api";
  i.container = "api";
  i.container_id = container_id(2);
  i.pod = "api-7d9c-x2x";
  i.namespace_ = "shop";
  i.workload_kind = "Deployment";
  i.workload_name = "api";
  i.service = "api";
  i.node = "node-1";
  return i;
}

// What an address alone says of a pod: no process, no container.
EndpointIdentity pod_by_address(EndpointIdentity i) {
  i.pid = 0;
  i.process.clear();
  i.exe.clear();
  i.container.clear();
  i.container_id.clear();
  return i;
}

struct IdentityTableWorld : ::testing::Test {
  IdentityTable t;
  void SetUp() override { apply_all(t, world()); }
  Id r(uint8_t l4, const char* a, uint16_t ap, const char* b, uint16_t bp, uint64_t ts) { return R(t, l4, a, ap, b, bp, ts); }
  Id client(uint64_t ts) { return r(TCP, "10.244.1.7", 40000, "10.244.2.9", 8080, ts); }
  Id server(uint64_t ts) { return r(TCP, "10.244.2.9", 8080, "10.244.1.7", 40000, ts); }
};

// ------------------------------------------------------- by socket --

TEST_F(IdentityTableWorld, ConnectionBetweenLocalProcessesResolvesBothEnds) {
  EXPECT_EQ(describe(client(at(20))), describe(want(web_id())));
  EXPECT_EQ(describe(server(at(20))), describe(want(api_id())));
  EXPECT_EQ(t.stats().resolved_by_socket, 2u);
  EXPECT_EQ(t.node(), "node-1");
}

TEST_F(IdentityTableWorld, ProcessNameFallsBackToTheSocketsComm) {
  // No process record for 650: the creator's comm is all there is.
  t.apply(sock_open({.ts = at(10), .cookie = 3, .cgroup = 102, .tgid = 650, .local = "10.244.2.9", .lport = 9090,
                     .remote = "10.244.1.7", .rport = 41000, .comm = "grpc-worker"}));
  auto id = r(TCP, "10.244.2.9", 9090, "10.244.1.7", 41000, at(20));
  EndpointIdentity w = api_id();
  w.pid = 650;
  w.process = "grpc-worker";
  w.exe = "";
  EXPECT_EQ(describe(id), describe(want(w)));
}

TEST_F(IdentityTableWorld, ContainerNotInThePodSpecIsNamedByItsId) {
  t.apply(sock_open({.ts = at(10), .cookie = 4, .cgroup = 104, .tgid = 600, .local = "10.244.2.9", .lport = 15000,
                     .remote = "10.244.1.7", .rport = 41001}));
  auto id = r(TCP, "10.244.2.9", 15000, "10.244.1.7", 41001, at(20));
  ASSERT_TRUE(id);
  EXPECT_EQ(id->container_id, container_id(9));
  EXPECT_EQ(id->container, container_id(9).substr(0, 12));
  EXPECT_EQ(id->pod, "api-7d9c-x2x");
}

TEST_F(IdentityTableWorld, NodeProcessesAndUnknownCgroups) {
  t.apply(sock_open({.ts = at(10), .cookie = 5, .cgroup = 103, .tgid = 700, .local = "10.0.0.5", .lport = 22,
                     .remote = "192.168.1.50", .rport = 51000, .comm = "sshd"}));
  t.apply(sock_open({.ts = at(10), .cookie = 6, .cgroup = 999, .tgid = 701, .local = "10.0.0.5", .lport = 9100,
                     .remote = "192.168.1.50", .rport = 51001, .comm = "exporter"}));
  EndpointIdentity sshd;
  sshd.pid = 700;
  sshd.process = "sshd";
  sshd.exe = "/usr/sbin/sshd";
  sshd.node = "node-1";  // the node's own process: the Self node
  EXPECT_EQ(describe(r(TCP, "10.0.0.5", 22, "192.168.1.50", 51000, at(20))), describe(want(sshd)));
  EndpointIdentity exporter;
  exporter.pid = 701;
  exporter.process = "exporter";
  exporter.node = "node-1";
  EXPECT_EQ(describe(r(TCP, "10.0.0.5", 9100, "192.168.1.50", 51001, at(20))), describe(want(exporter)));
  // The far end is nobody the stream knows.
  EXPECT_EQ(r(TCP, "192.168.1.50", 51000, "10.0.0.5", 22, at(20)), nullptr);
  EXPECT_EQ(t.stats().unresolved, 1u);
}

TEST_F(IdentityTableWorld, PodCgroupOfAPodNotYetKnown) {
  // The cgroup says pod and container; the API has not told of the pod.
  t.apply(sock_open({.ts = at(10), .cookie = 7, .cgroup = 105, .tgid = 720, .local = "10.244.9.9", .lport = 80,
                     .remote = "10.244.1.7", .rport = 41002, .comm = "nginx"}));
  EndpointIdentity w;
  w.pid = 720;
  w.process = "nginx";
  w.container = container_id(5).substr(0, 12);
  w.container_id = container_id(5);
  w.node = "node-1";
  EXPECT_EQ(describe(r(TCP, "10.244.9.9", 80, "10.244.1.7", 41002, at(20))), describe(want(w)));
}

TEST_F(IdentityTableWorld, UnconnectedUdpMatchesByLocalAddressOnly) {
  t.apply(sock_open({.ts = at(10), .cookie = 8, .cgroup = 102, .tgid = 600, .l4 = UDP, .local = "10.244.2.9", .lport = 53}));
  // A connected UDP socket on the same port is more specific for its peer.
  t.apply(sock_open({.ts = at(10), .cookie = 9, .cgroup = 102, .tgid = 610, .l4 = UDP, .local = "10.244.2.9", .lport = 53,
                     .remote = "10.244.1.7", .rport = 5353, .comm = "resolver"}));
  EXPECT_EQ(r(UDP, "10.244.2.9", 53, "10.244.1.7", 33333, at(20))->pid, 600u);
  EXPECT_EQ(r(UDP, "10.244.2.9", 53, "10.244.3.3", 1, at(20))->pid, 600u);
  EXPECT_EQ(r(UDP, "10.244.2.9", 53, "10.244.1.7", 5353, at(20))->pid, 610u);
  // Not TCP on the same port, and not another local address.
  EXPECT_EQ(r(TCP, "10.244.2.9", 53, "10.244.1.7", 33333, at(20))->pid, 0u);
  EXPECT_EQ(describe(r(UDP, "fd00:244::9", 53, "10.244.1.7", 33333, at(20))), describe(want(pod_by_address(api_id()))));
}

TEST_F(IdentityTableWorld, SlackAroundOpenAndClose) {
  // Socket 2 opened at 10 s; closed at 100 s. Slack: 2 s either side.
  t.apply(sock_close(2, at(100)));
  EXPECT_EQ(server(at(8.5))->pid, 600u);
  EXPECT_EQ(server(at(101.5))->pid, 600u);
  // Beyond the slack the address still names the pod, not the process.
  EXPECT_EQ(describe(server(at(7.5))), describe(want(pod_by_address(api_id()))));
  EXPECT_EQ(describe(server(at(102.5))), describe(want(pod_by_address(api_id()))));
  // Socket 1 is still open: any later time.
  EXPECT_EQ(client(at(100000))->pid, 500u);
}

TEST_F(IdentityTableWorld, ReusedTupleResolvesByTime) {
  Sock a{.ts = at(200), .cookie = 20, .cgroup = 103, .tgid = 800, .local = "10.0.0.5", .lport = 5000,
         .remote = "10.0.0.6", .rport = 6000, .comm = "first"};
  Sock b = a;
  b.ts = at(230);
  b.cookie = 21;
  b.tgid = 801;
  b.comm = "second";
  t.apply(sock_open(a));
  t.apply(sock_close(20, at(210)));
  t.apply(sock_open(b));
  auto q = [&](double s) { return r(TCP, "10.0.0.5", 5000, "10.0.0.6", 6000, at(s)); };
  EXPECT_EQ(q(205)->pid, 800u);
  EXPECT_EQ(q(205)->process, "first");
  EXPECT_EQ(q(240)->pid, 801u);
  EXPECT_EQ(q(240)->process, "second");
  EXPECT_EQ(q(1e6)->pid, 801u);
  // Between the two (outside both slacks): the node address only.
  EXPECT_EQ(q(220)->pid, 0u);
  EXPECT_EQ(q(220)->node, "node-1");
  // Closing the second by cookie leaves the first as it was.
  t.apply(sock_close(21, at(300)));
  EXPECT_EQ(q(205)->pid, 800u);
  EXPECT_EQ(q(310)->pid, 0u);
}

TEST_F(IdentityTableWorld, CloseByCookieClosesEveryAddressOfTheSocket) {
  // An unconnected UDP socket announced at two local addresses.
  t.apply(sock_open({.ts = at(10), .cookie = 30, .cgroup = 103, .tgid = 700, .l4 = UDP, .local = "10.0.0.5", .lport = 123}));
  t.apply(sock_open({.ts = at(11), .cookie = 30, .cgroup = 103, .tgid = 700, .l4 = UDP, .local = "fd00::5", .lport = 123}));
  EXPECT_EQ(r(UDP, "10.0.0.5", 123, "1.1.1.1", 123, at(20))->pid, 700u);
  EXPECT_EQ(r(UDP, "fd00::5", 123, "2001:db8::1", 123, at(20))->pid, 700u);
  t.apply(sock_close(30, at(50)));
  t.apply(sock_close(12345, at(50)));  // never opened: nothing to do
  EXPECT_EQ(r(UDP, "10.0.0.5", 123, "1.1.1.1", 123, at(60))->pid, 0u);
  EXPECT_EQ(r(UDP, "fd00::5", 123, "2001:db8::1", 123, at(60))->pid, 0u);
  EXPECT_EQ(r(UDP, "10.0.0.5", 123, "1.1.1.1", 123, at(40))->pid, 700u);
}

TEST_F(IdentityTableWorld, AnnouncedTwiceIsOneSocket) {
  auto s = sock_open({.ts = at(10), .cookie = 1, .cgroup = 101, .tgid = 500, .local = "10.244.1.7", .lport = 40000,
                      .remote = "10.244.2.9", .rport = 8080, .comm = "worker-1"});
  const uint64_t before = t.stats().sockets;
  s.ev.ts_ns = at(50);
  t.apply(s);
  EXPECT_EQ(t.stats().sockets, before);
  // Still opened at 10 s.
  EXPECT_EQ(client(at(9))->pid, 500u);
}

TEST_F(IdentityTableWorld, Ipv6Sockets) {
  t.apply(sock_open({.ts = at(10), .cookie = 40, .cgroup = 102, .tgid = 600, .local = "fd00:244::9", .lport = 8080,
                     .remote = "fd00:244::7", .rport = 40001}));
  EXPECT_EQ(describe(r(TCP, "fd00:244::9", 8080, "fd00:244::7", 40001, at(20))), describe(want(api_id())));
  // The same bytes as IPv4 are another address.
  EXPECT_EQ(r(TCP, "10.244.2.9", 8080, "fd00:244::7", 40001, at(20))->pid, 0u);
}

TEST_F(IdentityTableWorld, ProcessAndServiceAreTakenAtTheCallsTime) {
  // Process 900 runs /bin/sh, opens a socket, then execs python3 (the
  // socket survives the exec); a slice starts listing web's address later.
  t.apply(process(at(1), 900, TW_IDENT_EXEC, "sh", "/bin/sh", 101));
  t.apply(sock_open({.ts = at(5), .cookie = 50, .cgroup = 101, .tgid = 900, .local = "10.244.1.7", .lport = 7000,
                     .remote = "10.0.0.6", .rport = 443, .comm = "sh"}));
  t.apply(process(at(100), 900, TW_IDENT_EXEC, "python3", "/usr/bin/python3", 101));
  t.apply(slice_up(at(100), "es-web", "shop", "web", {"10.244.1.7"}));
  auto q = [&](double s) { return r(TCP, "10.244.1.7", 7000, "10.0.0.6", 443, at(s)); };
  // Everything is applied first; the calls come in any order after.
  auto early = q(50), late = q(150), early_again = q(50);
  EXPECT_EQ(early->exe, "/bin/sh");
  EXPECT_EQ(early->process, "sh");
  EXPECT_EQ(early->service, "");
  EXPECT_EQ(late->exe, "/usr/bin/python3");
  EXPECT_EQ(late->process, "python3");
  EXPECT_EQ(late->service, "web");
  EXPECT_EQ(describe(early_again), describe(early));
  // And by address: db-0 joins a service at 100 s.
  t.apply(service_up(at(100), "svc-db", "data", "db", {"10.96.0.30"}));
  t.apply(slice_up(at(100), "es-db", "data", "db", {"10.244.3.3"}));
  auto db_early = r(TCP, "10.244.3.3", 5432, "10.0.0.6", 1000, at(50));
  auto db_late = r(TCP, "10.244.3.3", 5432, "10.0.0.6", 1000, at(150));
  ASSERT_TRUE(db_early && db_late);
  EXPECT_EQ(db_early->service, "");
  EXPECT_EQ(db_late->service, "db");
  EXPECT_EQ(r(TCP, "10.244.3.3", 5432, "10.0.0.6", 1000, at(50))->service, "");
}

TEST_F(IdentityTableWorld, ExitEndsTheProcess) {
  t.apply(process(at(300), 500, TW_IDENT_EXIT, "", ""));
  EXPECT_EQ(client(at(200))->process, "web");
  // After the exit (and its slack) only the socket's own comm is left.
  auto after = client(at(400));
  EXPECT_EQ(after->process, "worker-1");
  EXPECT_EQ(after->exe, "");
  EXPECT_EQ(after->pid, 500u);
}

// ------------------------------------------------------ by address --

TEST_F(IdentityTableWorld, PodAddressesNameThePod) {
  EndpointIdentity db;
  db.pod = "db-0";
  db.namespace_ = "data";
  db.workload_kind = "StatefulSet";
  db.workload_name = "db";
  db.node = "node-2";  // the pod's node, not the one that saw it
  EXPECT_EQ(describe(r(TCP, "10.244.3.3", 5432, "10.244.1.7", 40000, at(20))), describe(want(db)));
  EXPECT_EQ(describe(r(TCP, "fd00:244::9", 8080, "fd00::7", 1, at(20))), describe(want(pod_by_address(api_id()))));
  // A known address is known at any port.
  EXPECT_EQ(r(UDP, "10.244.3.3", 1, "10.244.1.7", 2, at(20))->pod, "db-0");
  EXPECT_GE(t.stats().resolved_by_ip, 3u);
}

TEST_F(IdentityTableWorld, ServiceClusterIpNodeAndUnknown) {
  EndpointIdentity svc;
  svc.service = "api";
  svc.namespace_ = "shop";
  EXPECT_EQ(describe(r(TCP, "10.96.0.12", 80, "10.244.1.7", 40000, at(20))), describe(want(svc)));
  EndpointIdentity n2;
  n2.node = "node-2";
  EXPECT_EQ(describe(r(TCP, "10.0.0.6", 10250, "10.244.1.7", 40000, at(20))), describe(want(n2)));
  EndpointIdentity self;
  self.node = "node-1";
  EXPECT_EQ(describe(r(TCP, "fd00::5", 10250, "10.244.1.7", 40000, at(20))), describe(want(self)));  // Self only
  EXPECT_EQ(r(TCP, "8.8.8.8", 53, "10.244.1.7", 40000, at(20)), nullptr);
  EXPECT_EQ(r(TCP, "10.244.2.10", 53, "10.244.1.7", 40000, at(20)), nullptr);
}

TEST_F(IdentityTableWorld, AddressReusedByANewPod) {
  // old owns 10.244.5.5 until t1 = 100 s; new gets it at t2 = 105 s.
  t.apply(pod_up(at(50), {.uid = "old", .ns = "ns", .name = "old-pod", .ips = {"10.244.5.5"}}));
  t.apply(pod_del(at(100), "old"));
  t.apply(pod_up(at(105), {.uid = "new", .ns = "ns", .name = "new-pod", .ips = {"10.244.5.5"}}));
  auto pod_at = [&](double s) {
    auto id = r(TCP, "10.244.5.5", 80, "10.244.1.7", 1, at(s));
    return id ? id->pod : std::string("(none)");
  };
  EXPECT_EQ(pod_at(60), "old-pod");
  EXPECT_EQ(pod_at(99.9), "old-pod");
  EXPECT_EQ(pod_at(100.5), "new-pod");  // in between: the upcoming owner, within the future slack
  EXPECT_EQ(pod_at(104.9), "new-pod");
  EXPECT_EQ(pod_at(105), "new-pod");
  EXPECT_EQ(pod_at(1000), "new-pod");
}

TEST_F(IdentityTableWorld, FutureAndPastSlackOfAddresses) {
  // A gap longer than both slacks: 10 s ahead of an add, 2 s after a delete.
  t.apply(pod_up(at(200), {.uid = "p1", .ns = "ns", .name = "p1", .ips = {"10.244.6.6"}}));
  t.apply(pod_del(at(300), "p1"));
  t.apply(pod_up(at(400), {.uid = "p2", .ns = "ns", .name = "p2", .ips = {"10.244.6.6"}}));
  auto pod_at = [&](double s) {
    auto id = r(TCP, "10.244.6.6", 80, "10.244.1.7", 1, at(s));
    return id ? id->pod : std::string("(none)");
  };
  EXPECT_EQ(pod_at(189), "(none)");
  EXPECT_EQ(pod_at(191), "p1");
  EXPECT_EQ(pod_at(301.5), "p1");
  EXPECT_EQ(pod_at(302.5), "(none)");
  EXPECT_EQ(pod_at(389), "(none)");
  EXPECT_EQ(pod_at(391), "p2");
}

TEST_F(IdentityTableWorld, PodAddressChange) {
  t.apply(pod_up(at(100), {.uid = kDbUid,
                           .ns = "data",
                           .name = "db-0",
                           .node = "node-2",
                           .ips = {"10.244.3.4"},
                           .owner_kind = "StatefulSet",
                           .owner_name = "db"}));
  EXPECT_EQ(r(TCP, "10.244.3.3", 1, "10.0.0.5", 1, at(50))->pod, "db-0");
  EXPECT_EQ(r(TCP, "10.244.3.3", 1, "10.0.0.5", 1, at(150)), nullptr);
  EXPECT_EQ(r(TCP, "10.244.3.4", 1, "10.0.0.5", 1, at(150))->pod, "db-0");
  EXPECT_EQ(r(TCP, "10.244.3.4", 1, "10.0.0.5", 1, at(50)), nullptr);
}

TEST_F(IdentityTableWorld, HostNetworkPodsNeverClaimTheNodesAddress) {
  t.apply(pod_up(at(0), {.uid = "hn", .ns = "kube-system", .name = "kube-proxy-x", .ips = {"10.0.0.5"},
                         .owner_kind = "DaemonSet", .owner_name = "kube-proxy", .host_network = true}));
  t.apply(pod_up(at(0), {.uid = "hn2", .ns = "kube-system", .name = "agent-y", .node = "node-2", .ips = {"10.0.0.6"},
                         .host_network = true}));
  auto id = r(TCP, "10.0.0.5", 10256, "10.244.1.7", 1, at(20));
  ASSERT_TRUE(id);
  EXPECT_EQ(id->pod, "");
  EXPECT_EQ(id->node, "node-1");
  EXPECT_EQ(r(TCP, "10.0.0.6", 9000, "10.244.1.7", 1, at(20))->pod, "");
  // Its sockets are told apart by their cgroup.
  const std::string uid = "12345678-1234-4234-8234-123456789012";
  t.apply(pod_up(at(0), {.uid = uid, .ns = "kube-system", .name = "kube-proxy-z", .ips = {"10.0.0.5"},
                         .owner_kind = "DaemonSet", .owner_name = "kube-proxy",
                         .containers = {{"kube-proxy", container_id(11), "containerd"}}, .host_network = true}));
  t.apply(cgroup(at(0), 111, container_cgroup(uid, container_id(11))));
  t.apply(sock_open({.ts = at(10), .cookie = 60, .cgroup = 111, .tgid = 1000, .local = "10.0.0.5", .lport = 10256,
                     .remote = "10.244.1.7", .rport = 1, .comm = "kube-proxy"}));
  auto kp = r(TCP, "10.0.0.5", 10256, "10.244.1.7", 1, at(20));
  EXPECT_EQ(kp->pod, "kube-proxy-z");
  EXPECT_EQ(kp->workload_kind, "DaemonSet");
  EXPECT_EQ(kp->container, "kube-proxy");
  // Other traffic of the node's address stays the node's.
  EXPECT_EQ(r(TCP, "10.0.0.5", 22, "10.244.1.7", 1, at(20))->pod, "");
  // And pods() shows it as host network.
  for (auto& p : t.pods())
    if (p.name == "kube-proxy-z") {
      EXPECT_TRUE(p.host_network);
      EXPECT_EQ(p.ips, std::vector<std::string>{"10.0.0.5"});
    }
}

TEST_F(IdentityTableWorld, HostNetworkServicesAreToldApartByPort) {
  // Two hostNetwork pods of node-1 behind two services: both slices list
  // the node's address; only the port says which is which.
  const std::string exporter = "e0e0e0e0-0000-4000-8000-00000000e0e0", proxy = "f0f0f0f0-0000-4000-8000-00000000f0f0";
  t.apply(pod_up(at(0), {.uid = exporter, .ns = "monitoring", .name = "node-exporter-a", .ips = {"10.0.0.5"},
                         .owner_kind = "DaemonSet", .owner_name = "node-exporter", .host_network = true}));
  t.apply(pod_up(at(0), {.uid = proxy, .ns = "kube-system", .name = "kube-proxy-b", .ips = {"10.0.0.5"},
                         .owner_kind = "DaemonSet", .owner_name = "kube-proxy", .host_network = true}));
  t.apply(cgroup(at(0), 120, container_cgroup(exporter, container_id(20))));
  t.apply(cgroup(at(0), 121, container_cgroup(proxy, container_id(21))));
  auto slice = [](const char* uid, const char* ns, const char* svc, uint16_t port) {
    EndpointSliceObject e;
    e.uid = uid;
    e.namespace_ = ns;
    e.name = std::string(svc) + "-x";
    e.service = svc;
    e.addresses = {ip("10.0.0.5")};
    e.ports = {{"metrics", port, "TCP"}};
    return workload(at(0), Workload{WorkloadOp::Upsert, e});
  };
  t.apply(slice("es-ne", "monitoring", "node-exporter", 9100));
  t.apply(slice("es-kp", "kube-system", "kube-proxy-metrics", 10249));
  t.apply(sock_open({.ts = at(10), .cookie = 70, .cgroup = 120, .tgid = 1100, .local = "10.0.0.5", .lport = 9100,
                     .remote = "10.244.1.7", .rport = 1, .comm = "node_exporter"}));
  t.apply(sock_open({.ts = at(10), .cookie = 71, .cgroup = 121, .tgid = 1200, .local = "10.0.0.5", .lport = 10249,
                     .remote = "10.244.1.7", .rport = 2, .comm = "kube-proxy"}));
  t.apply(sock_open({.ts = at(10), .cookie = 72, .cgroup = 121, .tgid = 1200, .local = "10.0.0.5", .lport = 45000,
                     .remote = "10.96.0.1", .rport = 443, .comm = "kube-proxy"}));
  auto ne = r(TCP, "10.0.0.5", 9100, "10.244.1.7", 1, at(20));
  EXPECT_EQ(ne->pod, "node-exporter-a");
  EXPECT_EQ(ne->service, "node-exporter");
  auto kp = r(TCP, "10.0.0.5", 10249, "10.244.1.7", 2, at(20));
  EXPECT_EQ(kp->pod, "kube-proxy-b");
  EXPECT_EQ(kp->service, "kube-proxy-metrics");
  // Its connection out is no service's endpoint.
  auto out = r(TCP, "10.0.0.5", 45000, "10.96.0.1", 443, at(20));
  EXPECT_EQ(out->pod, "kube-proxy-b");
  EXPECT_EQ(out->service, "");
  // By address alone (no socket of this peer): the port decides too, and
  // the node's other ports are the node's.
  EndpointIdentity by_port;
  by_port.service = "node-exporter";
  by_port.namespace_ = "monitoring";
  by_port.node = "node-1";
  EXPECT_EQ(describe(r(TCP, "10.0.0.5", 9100, "10.244.3.3", 7, at(20))), describe(want(by_port)));
  EndpointIdentity node_only;
  node_only.node = "node-1";
  EXPECT_EQ(describe(r(TCP, "10.0.0.5", 22, "10.244.3.3", 7, at(20))), describe(want(node_only)));
}

TEST_F(IdentityTableWorld, ServiceAndNodeLifecycles) {
  t.apply(workload(at(100), Workload{WorkloadOp::Delete, ServiceObject{"svc-api", "shop", "api", "", {}, {}}}));
  t.apply(workload(at(100), Workload{WorkloadOp::Delete, NodeObject{"n2", "node-2", {}}}));
  EXPECT_EQ(r(TCP, "10.96.0.12", 80, "10.244.1.7", 1, at(50))->service, "api");
  EXPECT_EQ(r(TCP, "10.96.0.12", 80, "10.244.1.7", 1, at(150)), nullptr);
  EXPECT_EQ(r(TCP, "10.0.0.6", 1, "10.244.1.7", 1, at(50))->node, "node-2");
  EXPECT_EQ(r(TCP, "10.0.0.6", 1, "10.244.1.7", 1, at(150)), nullptr);
  // A service that changes its cluster IP.
  t.apply(service_up(at(200), "svc-api", "shop", "api", {"10.96.0.13"}));
  EXPECT_EQ(r(TCP, "10.96.0.13", 80, "10.244.1.7", 1, at(250))->service, "api");
  EXPECT_EQ(r(TCP, "10.96.0.12", 80, "10.244.1.7", 1, at(250)), nullptr);
  // A slice that stops listing a pod.
  t.apply(slice_up(at(300), "es-api", "shop", "api", {"fd00:244::9"}));
  EXPECT_EQ(r(TCP, "10.244.2.9", 8080, "10.244.1.7", 1, at(250))->service, "api");
  EXPECT_EQ(r(TCP, "10.244.2.9", 8080, "10.244.1.7", 1, at(350))->service, "");
  EXPECT_EQ(r(TCP, "fd00:244::9", 8080, "10.244.1.7", 1, at(350))->service, "api");
}

// ------------------------------------------------------------ dumps --

// A dump at `ts` restating only some of the world.
std::vector<IdentityRecord> partial_dump(uint64_t ts) {
  const uint8_t F = TW_IDENT_REC_F_DUMP;
  auto s1 = sock_open({.ts = at(10), .cookie = 1, .cgroup = 101, .tgid = 500, .local = "10.244.1.7", .lport = 40000,
                       .remote = "10.244.2.9", .rport = 8080, .comm = "worker-1", .flags = TW_SOCK_F_DUMP});
  std::vector<IdentityRecord> d = {
      dump_begin(ts),
      self_up(at(0), "node-1", {"10.0.0.5", "fd00::5"}, F),
      node_up(at(0), "n1", "node-1", {"10.0.0.5"}, F),
      cgroup(at(0), 101, container_cgroup(kWebUid, container_id(1)), F),
      pod_up(at(0),
             {.uid = kWebUid, .ns = "shop", .name = "web-5d8f", .ips = {"10.244.1.7"},
              .containers = {{"web", container_id(1), "containerd"}}},
             F),
      process(at(0), 500, TW_PROC_SCAN, "web", "/usr/bin/web", 101, F),
      s1,
  };
  d.push_back(dump_end(ts, d.size()));
  return d;
}

TEST_F(IdentityTableWorld, WhatADumpDoesNotRestateEndsAtItsTime) {
  auto d = partial_dump(at(500));
  // Until the end marker, nothing ends.
  for (size_t i = 0; i + 1 < d.size(); i++) t.apply(d[i]);
  EXPECT_EQ(server(at(600))->pid, 600u);
  EXPECT_EQ(t.pods().size(), 3u);
  t.apply(d.back());
  EXPECT_EQ(t.stats().dumps, 1u);
  // Restated: as before, at any time.
  EXPECT_EQ(describe(client(at(600))), describe(want(web_id())));
  // Not restated: known before the dump's time, gone after it.
  EXPECT_EQ(describe(server(at(400))), describe(want(api_id())));
  EXPECT_EQ(server(at(600)), nullptr);  // neither socket, pod, service nor node any more
  EXPECT_EQ(r(TCP, "10.244.3.3", 1, "10.0.0.5", 1, at(400))->pod, "db-0");
  EXPECT_EQ(r(TCP, "10.244.3.3", 1, "10.0.0.5", 1, at(600)), nullptr);
  EXPECT_EQ(r(TCP, "10.96.0.12", 1, "10.0.0.5", 1, at(600)), nullptr);
  EXPECT_EQ(r(TCP, "10.0.0.6", 1, "10.0.0.5", 1, at(400))->node, "node-2");
  EXPECT_EQ(r(TCP, "10.0.0.6", 1, "10.0.0.5", 1, at(600)), nullptr);
  std::vector<std::string> names;
  for (auto& p : t.pods()) names.push_back(p.name);
  EXPECT_EQ(names, std::vector<std::string>{"web-5d8f"});
}

TEST_F(IdentityTableWorld, ProcessesNotRestatedEnd) {
  // Socket 2 restated, its process (600) not.
  auto d = partial_dump(at(500));
  d.pop_back();
  d.push_back(sock_open({.ts = at(10), .cookie = 2, .cgroup = 102, .tgid = 600, .local = "10.244.2.9", .lport = 8080,
                         .remote = "10.244.1.7", .rport = 40000, .comm = "api",
                         .flags = TW_SOCK_F_ACCEPTED | TW_SOCK_F_DUMP}));
  d.push_back(dump_end(at(500), d.size()));
  apply_all(t, d);
  EXPECT_EQ(server(at(400))->process, "api");
  EXPECT_EQ(server(at(400))->exe, "/app/api");
  auto later = server(at(600));
  ASSERT_TRUE(later);
  EXPECT_EQ(later->pid, 600u);
  EXPECT_EQ(later->exe, "");  // the process record ended
}

TEST_F(IdentityTableWorld, ADumpAloneTellsTheState) {
  IdentityTable fresh;
  apply_all(fresh, partial_dump(at(500)));
  EXPECT_EQ(fresh.node(), "node-1");
  EXPECT_EQ(describe(R(fresh, TCP, "10.244.1.7", 40000, "10.244.2.9", 8080, at(600))),
            describe(want(web_id())));
  // The restated socket keeps its own open time.
  EXPECT_EQ(R(fresh, TCP, "10.244.1.7", 40000, "10.244.2.9", 8080, at(20))->pid, 500u);
  ASSERT_EQ(fresh.pods().size(), 1u);
  EXPECT_EQ(fresh.pods()[0].first_seen_ns, at(0));
}

TEST_F(IdentityTableWorld, ADumpAppliedTwiceChangesNothing) {
  auto d = partial_dump(at(500));
  apply_all(t, d);
  auto snapshot = [&] {
    std::vector<std::string> out;
    for (double s : {5.0, 20.0, 400.0, 499.0, 501.0, 600.0, 5000.0}) {
      out.push_back(describe(client(at(s))));
      out.push_back(describe(server(at(s))));
      out.push_back(describe(r(TCP, "10.244.3.3", 1, "10.0.0.5", 1, at(s))));
      out.push_back(describe(r(TCP, "10.0.0.5", 1, "10.0.0.6", 1, at(s))));
    }
    for (auto& p : t.pods()) out.push_back(p.uid + " " + std::to_string(p.first_seen_ns));
    const auto& st = t.stats();
    out.push_back(std::to_string(st.sockets) + " " + std::to_string(st.processes) + " " + std::to_string(st.cgroups) +
                  " " + std::to_string(st.pods));
    return out;
  };
  const auto once = snapshot();
  apply_all(t, d);
  EXPECT_EQ(snapshot(), once);
  EXPECT_EQ(t.stats().dumps, 2u);
}

TEST_F(IdentityTableWorld, ADumpRestatingAChangeAppliesItFromTheDumpsTime) {
  // The sensor missed db-0's address change (it was not running); the dump
  // at 500 s restates db-0, first seen at 0 s, with its new address.
  auto d = partial_dump(at(500));
  d.pop_back();
  d.push_back(pod_up(at(0),
                     {.uid = kDbUid, .ns = "data", .name = "db-0", .node = "node-2", .ips = {"10.244.3.4"},
                      .owner_kind = "StatefulSet", .owner_name = "db"},
                     TW_IDENT_REC_F_DUMP));
  d.push_back(dump_end(at(500), d.size()));
  apply_all(t, d);
  // What was recorded before the dump still holds before it.
  EXPECT_EQ(r(TCP, "10.244.3.3", 1, "10.0.0.5", 1, at(400))->pod, "db-0");
  EXPECT_EQ(r(TCP, "10.244.3.3", 1, "10.0.0.5", 1, at(600)), nullptr);
  EXPECT_EQ(r(TCP, "10.244.3.4", 1, "10.0.0.5", 1, at(600))->pod, "db-0");
}

TEST_F(IdentityTableWorld, AnIncompleteDumpEndsNothing) {
  // The end marker counts more records than the dump holds: some did not
  // fit its segment, so what is missing may well be alive.
  auto d = partial_dump(at(500));
  d.back() = dump_end(at(500), d.size() + 100);
  apply_all(t, d);
  EXPECT_EQ(server(at(600))->pid, 600u);
  EXPECT_EQ(t.pods().size(), 3u);
  EXPECT_EQ(r(TCP, "10.0.0.6", 1, "10.0.0.5", 1, at(600))->node, "node-2");
}

TEST_F(IdentityTableWorld, DumpMarkersOutOfOrder) {
  // An end without a begin, or a begin without an end: nothing ends.
  t.apply(dump_end(at(500), 1));
  EXPECT_EQ(t.pods().size(), 3u);
  t.apply(dump_begin(at(500)));
  t.apply(pod_up(at(510), {.uid = "late", .ns = "ns", .name = "late", .ips = {"10.244.7.7"}}));
  EXPECT_EQ(t.pods().size(), 4u);
  EXPECT_EQ(server(at(600))->pid, 600u);
}

// ------------------------------------------------------ prune, caps --

TEST(IdentityTablePrune, EndedEntriesGoLiveOnesStay) {
  TableLimits lim;
  lim.keep_ended_ns = 100 * kSec;
  IdentityTable t(lim);
  apply_all(t, world());
  t.apply(sock_close(2, at(50)));
  t.apply(process(at(50), 600, TW_IDENT_EXIT, "", ""));
  t.apply(pod_del(at(50), kDbUid));
  EXPECT_EQ(t.stats().sockets, 2u);
  t.prune(at(149));  // ended at 50 s: kept until 150 s
  EXPECT_EQ(t.stats().sockets, 2u);
  EXPECT_EQ(R(t, TCP, "10.244.2.9", 8080, "10.244.1.7", 40000, at(40))->pid, 600u);
  EXPECT_EQ(R(t, TCP, "10.244.3.3", 1, "10.0.0.5", 1, at(40))->pod, "db-0");
  t.prune(at(151));
  EXPECT_EQ(t.stats().sockets, 1u);
  EXPECT_EQ(t.stats().processes, 2u);
  EXPECT_EQ(t.stats().pods, 2u);
  // The closed socket and its process are gone even for times they covered;
  // the address still names the pod, which is alive.
  auto s = R(t, TCP, "10.244.2.9", 8080, "10.244.1.7", 40000, at(40));
  ASSERT_TRUE(s);
  EXPECT_EQ(s->pid, 0u);
  EXPECT_EQ(s->pod, "api-7d9c-x2x");
  EXPECT_EQ(R(t, TCP, "10.244.3.3", 1, "10.0.0.5", 1, at(40)), nullptr);
  // Live ones stay however late.
  t.prune(at(1e6));
  EXPECT_EQ(R(t, TCP, "10.244.1.7", 40000, "10.244.2.9", 8080, at(1e6))->process, "web");
  EXPECT_EQ(t.pods().size(), 2u);
  // A prune before keep_ended_ns has passed since 0 does nothing.
  IdentityTable early(lim);
  apply_all(early, world());
  early.apply(sock_close(1, 1));
  early.prune(5);
  EXPECT_EQ(early.stats().sockets, 2u);
}

TEST(IdentityTableCaps, Sockets) {
  TableLimits lim;
  lim.max_sockets = 3;
  IdentityTable t(lim);
  for (uint16_t i = 0; i < 5; i++)
    t.apply(sock_open({.ts = at(i), .cookie = 100u + i, .tgid = 1000u + i, .local = "10.0.0.5",
                       .lport = static_cast<uint16_t>(1000 + i), .remote = "10.0.0.6", .rport = 80}));
  EXPECT_EQ(t.stats().sockets, 3u);
  EXPECT_EQ(t.stats().evicted_sockets, 2u);
  for (uint16_t i = 0; i < 5; i++) {
    auto id = R(t, TCP, "10.0.0.5", static_cast<uint16_t>(1000 + i), "10.0.0.6", 80, at(10));
    EXPECT_EQ(id ? id->pid : 0u, i < 2 ? 0u : 1000u + i) << i;  // the oldest went
  }
  // Closed and pruned sockets make room without eviction.
  for (uint64_t c = 102; c < 105; c++) t.apply(sock_close(c, at(20)));
  t.prune(at(20) + TableLimits{}.keep_ended_ns + 1);
  EXPECT_EQ(t.stats().sockets, 0u);
  for (uint16_t i = 0; i < 3; i++)
    t.apply(sock_open({.ts = at(1000), .cookie = 200u + i, .tgid = 2000u + i, .local = "10.0.0.5",
                       .lport = static_cast<uint16_t>(2000 + i), .remote = "10.0.0.6", .rport = 80}));
  EXPECT_EQ(t.stats().sockets, 3u);
  EXPECT_EQ(t.stats().evicted_sockets, 2u);
}

TEST(IdentityTableCaps, Processes) {
  TableLimits lim;
  lim.max_processes = 2;
  IdentityTable t(lim);
  for (uint32_t p = 1; p <= 3; p++) t.apply(process(at(p), p, TW_PROC_SCAN, "proc" + std::to_string(p), "/bin/x"));
  EXPECT_EQ(t.stats().processes, 2u);
  EXPECT_EQ(t.stats().evicted_processes, 1u);
  for (uint32_t p = 1; p <= 3; p++)
    t.apply(sock_open({.ts = at(10), .cookie = p, .tgid = p, .local = "10.0.0.5", .lport = static_cast<uint16_t>(p),
                       .remote = "10.0.0.6", .rport = 80, .comm = "thread"}));
  auto name = [&](uint16_t p) { return R(t, TCP, "10.0.0.5", p, "10.0.0.6", 80, at(20))->process; };
  EXPECT_EQ(name(1), "thread");  // evicted: only the socket's comm
  EXPECT_EQ(name(2), "proc2");
  EXPECT_EQ(name(3), "proc3");
}

TEST(IdentityTableCaps, ProcessesReusedPidAfterPruneIsYoung) {
  // 6 and 8 live; 7 lived between them, exited and was pruned; then 7 is
  // reused. When the cap bites, the oldest entries alive go (6, then 8),
  // never the reused pid's new process.
  TableLimits lim;
  lim.max_processes = 3;
  lim.keep_ended_ns = 10 * kSec;
  IdentityTable t(lim);
  t.apply(process(at(0), 6, TW_PROC_SCAN, "p6", "/bin/6"));
  t.apply(process(at(1), 7, TW_PROC_SCAN, "old7", "/bin/old"));
  t.apply(process(at(2), 7, TW_IDENT_EXIT, "", ""));
  t.apply(process(at(3), 8, TW_PROC_SCAN, "p8", "/bin/8"));
  t.prune(at(100));
  EXPECT_EQ(t.stats().processes, 2u);
  t.apply(process(at(101), 7, TW_IDENT_EXEC, "new7", "/bin/new"));
  t.apply(process(at(102), 9, TW_IDENT_EXEC, "p9", "/bin/9"));  // 4 > 3: 6 goes
  t.apply(process(at(103), 10, TW_IDENT_EXEC, "p10", "/bin/10"));  // 4 > 3: 8 goes
  EXPECT_EQ(t.stats().processes, 3u);
  EXPECT_EQ(t.stats().evicted_processes, 2u);
  for (uint32_t p = 6; p <= 10; p++)
    t.apply(sock_open({.ts = at(110), .cookie = p, .tgid = p, .local = "10.0.0.5", .lport = static_cast<uint16_t>(p),
                       .remote = "10.0.0.6", .rport = 80, .comm = "sock"}));
  auto name = [&](uint16_t p) { return R(t, TCP, "10.0.0.5", p, "10.0.0.6", 80, at(120))->process; };
  EXPECT_EQ(name(6), "sock");
  EXPECT_EQ(name(8), "sock");
  EXPECT_EQ(name(7), "new7");
  EXPECT_EQ(name(9), "p9");
  EXPECT_EQ(name(10), "p10");
}

TEST(IdentityTableCaps, Cgroups) {
  TableLimits lim;
  lim.max_cgroups = 2;
  IdentityTable t(lim);
  apply_all(t, world());  // 5 cgroups into 2
  EXPECT_EQ(t.stats().cgroups, 2u);
  EXPECT_EQ(t.stats().evicted_cgroups, 3u);
  // 101 (web's) went: its socket is a process of the node now.
  auto id = R(t, TCP, "10.244.1.7", 40000, "10.244.2.9", 8080, at(20));
  EXPECT_EQ(id->pid, 500u);
  EXPECT_EQ(id->pod, "");
  EXPECT_EQ(id->node, "node-1");
  // 104 and 105 stay.
  t.apply(sock_open({.ts = at(10), .cookie = 7, .cgroup = 105, .tgid = 720, .local = "10.244.9.9", .lport = 80,
                     .remote = "10.244.1.7", .rport = 1}));
  EXPECT_EQ(R(t, TCP, "10.244.9.9", 80, "10.244.1.7", 1, at(20))->container_id, container_id(5));
}

TEST(IdentityTableCaps, Objects) {
  TableLimits lim;
  lim.max_objects = 2;
  IdentityTable t(lim);
  t.apply(pod_up(at(1), {.uid = "a", .ns = "ns", .name = "a", .ips = {"10.244.0.1"}}));
  t.apply(pod_up(at(2), {.uid = "b", .ns = "ns", .name = "b", .ips = {"10.244.0.2"}}));
  t.apply(service_up(at(3), "s", "ns", "svc", {"10.96.0.1"}));
  EXPECT_EQ(t.stats().evicted_objects, 1u);
  EXPECT_EQ(t.stats().pods + t.stats().services, 2u);
  EXPECT_EQ(R(t, TCP, "10.244.0.1", 1, "10.0.0.1", 1, at(10)), nullptr);
  EXPECT_EQ(R(t, TCP, "10.244.0.2", 1, "10.0.0.1", 1, at(10))->pod, "b");
  EXPECT_EQ(R(t, TCP, "10.96.0.1", 1, "10.0.0.1", 1, at(10))->service, "svc");
  ASSERT_EQ(t.pods().size(), 1u);
  EXPECT_EQ(t.pods()[0].name, "b");
}

TEST(IdentityTableCaps, ObjectsComingBackAreYoungAgain) {
  // a is deleted and comes back after b: the cap then evicts b, the oldest.
  TableLimits lim;
  lim.max_objects = 2;
  IdentityTable t(lim);
  t.apply(pod_up(at(1), {.uid = "a", .ns = "ns", .name = "a", .ips = {"10.244.0.1"}}));
  t.apply(pod_up(at(2), {.uid = "b", .ns = "ns", .name = "b", .ips = {"10.244.0.2"}}));
  t.apply(pod_del(at(3), "a"));
  t.apply(pod_up(at(4), {.uid = "a", .ns = "ns", .name = "a", .ips = {"10.244.0.1"}}));
  t.apply(pod_up(at(5), {.uid = "c", .ns = "ns", .name = "c", .ips = {"10.244.0.3"}}));
  std::vector<std::string> names;
  for (auto& p : t.pods()) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "c"}));
  EXPECT_EQ(t.stats().evicted_objects, 1u);
}

// ------------------------------------------------- pods, kube, node --

TEST_F(IdentityTableWorld, PodsListsLivePodsWithServices) {
  t.apply(pod_up(at(30), {.uid = "gone", .ns = "shop", .name = "aaa-gone", .ips = {"10.244.8.8"}}));
  t.apply(pod_del(at(40), "gone"));
  const auto pods = t.pods();
  ASSERT_EQ(pods.size(), 3u);
  // By namespace, then name.
  EXPECT_EQ(pods[0].namespace_ + "/" + pods[0].name, "data/db-0");
  EXPECT_EQ(pods[1].namespace_ + "/" + pods[1].name, "shop/api-7d9c-x2x");
  EXPECT_EQ(pods[2].namespace_ + "/" + pods[2].name, "shop/web-5d8f");
  const PodRow& api = pods[1];
  EXPECT_EQ(api.uid, kApiUid);
  EXPECT_EQ(api.node, "node-1");
  EXPECT_EQ(api.phase, "Running");
  EXPECT_EQ(api.workload_kind, "Deployment");
  EXPECT_EQ(api.workload_name, "api");
  EXPECT_EQ(api.ips, (std::vector<std::string>{"10.244.2.9", "fd00:244::9"}));
  EXPECT_EQ(api.services, std::vector<std::string>{"api"});
  EXPECT_EQ(api.containers, (std::vector<std::string>{"api", "istio-proxy"}));
  EXPECT_EQ(api.first_seen_ns, at(0));
  EXPECT_FALSE(api.host_network);
  EXPECT_EQ(pods[2].workload_kind, "Pod");
  EXPECT_EQ(pods[2].workload_name, "web-5d8f");
  EXPECT_TRUE(pods[2].services.empty());
  EXPECT_EQ(pods[0].node, "node-2");
}

TEST(IdentityTableKube, SyncStates) {
  IdentityTable t;
  EXPECT_TRUE(t.kube_state().empty());
  EXPECT_EQ(t.node(), "");
  t.apply(sync(at(1), "pods", "synced"));
  t.apply(sync(at(2), "services", "synced"));
  t.apply(sync(at(3), "services", "lost", "401 Unauthorized"));
  t.apply(sync(at(4), "pods", "synced"));  // a relist: no change of state
  auto k = t.kube_state();
  ASSERT_EQ(k.size(), 2u);
  EXPECT_EQ(k["pods"].state, "synced");
  EXPECT_EQ(k["pods"].since_ns, at(1));
  EXPECT_EQ(k["services"].state, "lost");
  EXPECT_EQ(k["services"].error, "401 Unauthorized");
  EXPECT_EQ(k["services"].since_ns, at(3));
  t.apply(sync(at(5), "services", "synced"));
  k = t.kube_state();
  EXPECT_EQ(k["services"].state, "synced");
  EXPECT_EQ(k["services"].error, "");
  EXPECT_EQ(k["services"].since_ns, at(5));
  t.apply(self_up(at(6), "node-7", {}));
  EXPECT_EQ(t.node(), "node-7");
}

// --------------------------------------------------------- sharing --

TEST_F(IdentityTableWorld, IdentitiesAreSharedUntilSomethingChanges) {
  auto a = client(at(20)), b = client(at(30));
  EXPECT_EQ(a.get(), b.get());
  auto p1 = r(TCP, "10.244.3.3", 1, "10.0.0.5", 1, at(20)), p2 = r(TCP, "10.244.3.3", 2, "10.0.0.5", 9, at(21));
  EXPECT_EQ(p1.get(), p2.get());
  auto s1 = r(TCP, "10.96.0.12", 80, "10.0.0.5", 1, at(20)), s2 = r(TCP, "10.96.0.12", 80, "10.0.0.5", 2, at(21));
  EXPECT_EQ(s1.get(), s2.get());
  // web gets an owner: a new object with the new name; the old one is unchanged.
  t.apply(pod_up(at(40), {.uid = kWebUid, .ns = "shop", .name = "web-5d8f", .ips = {"10.244.1.7"},
                          .owner_kind = "Deployment", .owner_name = "web",
                          .containers = {{"web", container_id(1), "containerd"}}}));
  auto c = client(at(50));
  EXPECT_NE(c.get(), a.get());
  EXPECT_EQ(c->workload_kind, "Deployment");
  EXPECT_EQ(a->workload_kind, "Pod");
  EXPECT_EQ(client(at(51)).get(), c.get());
  // Distinct sockets are distinct identities.
  EXPECT_NE(server(at(50)).get(), c.get());
}

// ---------------------------------------------- records from bytes --

TEST(IdentityTableBytes, InvalidRecordsAreCounted) {
  IdentityTable t;
  auto [body, type] = encode(pod_up(at(1), {.uid = "a", .ns = "ns", .name = "a", .ips = {"10.244.0.1"}}));
  EXPECT_TRUE(t.apply(type, body));
  EXPECT_FALSE(t.apply(type, std::span<const uint8_t>(body).first(10)));
  EXPECT_FALSE(t.apply(TW_REC_PACKET, body));
  EXPECT_EQ(t.stats().invalid, 2u);
  EXPECT_EQ(t.stats().records, 1u);
  EXPECT_EQ(t.pods().size(), 1u);
}

// ------------------------------------------------- identity records --

template <typename T>
T decoded(const IdentityRecord& r) {
  auto [body, type] = encode(r);
  std::string error;
  auto back = decode_identity(type, body, &error);
  EXPECT_TRUE(back) << error;
  EXPECT_TRUE(back && std::holds_alternative<T>(*back));
  return back && std::holds_alternative<T>(*back) ? std::get<T>(*back) : T{};
}

TEST(IdentityRecords, EachTypeRoundTrips) {
  // Socket: the kernel's struct as it is, 96 bytes.
  auto s = sock_open({.ts = at(1), .cookie = 0xfeedfacecafebeefull, .cgroup = 77, .tgid = 4242, .l4 = UDP,
                      .local = "fd00::1", .lport = 5353, .remote = "fd00::2", .rport = 53, .comm = "resolver",
                      .flags = TW_SOCK_F_DUMP});
  EXPECT_EQ(encode(s).first.size(), 96u);
  EXPECT_EQ(encode(s).second, TW_REC_SOCKET);
  auto s2 = decoded<SocketRecord>(s);
  EXPECT_EQ(std::memcmp(&s2.ev, &s.ev, sizeof s.ev), 0);

  // Process: 48 bytes + the path; the comm is 15 characters at most (NUL-padded 16).
  auto p = process(at(2), 31337, TW_IDENT_EXEC, "a-very-long-command-name", "/usr/local/bin/thing", 88,
                   TW_IDENT_REC_F_DUMP);
  p.ppid = 17;
  EXPECT_EQ(encode(p).first.size(), 48u + p.exe.size());
  EXPECT_EQ(encode(p).second, TW_REC_PROCESS);
  auto p2 = decoded<ProcessRecord>(p);
  EXPECT_EQ(p2.ts_ns, at(2));
  EXPECT_EQ(p2.cgroup_id, 88u);
  EXPECT_EQ(p2.tgid, 31337u);
  EXPECT_EQ(p2.ppid, 17u);
  EXPECT_EQ(p2.type, TW_IDENT_EXEC);
  EXPECT_EQ(p2.flags, TW_IDENT_REC_F_DUMP);
  EXPECT_EQ(p2.comm, "a-very-long-com");
  EXPECT_EQ(p2.exe, "/usr/local/bin/thing");
  // An exit has no path.
  auto e = decoded<ProcessRecord>(process(at(3), 5, TW_IDENT_EXIT, "x", ""));
  EXPECT_EQ(e.type, TW_IDENT_EXIT);
  EXPECT_EQ(e.exe, "");

  // Cgroup: 24 bytes + the path.
  auto c = cgroup(at(4), 0x1234567890ull, container_cgroup(kApiUid, container_id(2)), TW_IDENT_REC_F_DUMP);
  EXPECT_EQ(encode(c).first.size(), 24u + c.path.size());
  auto c2 = decoded<CgroupRecord>(c);
  EXPECT_EQ(c2.ts_ns, at(4));
  EXPECT_EQ(c2.cgroup_id, 0x1234567890ull);
  EXPECT_EQ(c2.flags, TW_IDENT_REC_F_DUMP);
  EXPECT_EQ(c2.path, c.path);

  // Workload: 16 bytes + the JSON.
  auto w = pod_up(at(5), {.uid = kApiUid, .ns = "shop", .name = "api", .ips = {"10.244.2.9"}, .owner_kind = "Deployment",
                          .owner_name = "api", .containers = {{"api", container_id(2), "containerd"}}},
                  TW_IDENT_REC_F_DUMP);
  EXPECT_EQ(encode(w).first.size(), 16u + to_json(w.workload).size());
  auto w2 = decoded<WorkloadRecord>(w);
  EXPECT_EQ(w2.ts_ns, at(5));
  EXPECT_EQ(w2.flags, TW_IDENT_REC_F_DUMP);
  EXPECT_EQ(w2.workload, w.workload);

  // Dump markers: 24 bytes.
  for (auto d : {dump_begin(at(6)), dump_end(at(7), 123456789012ull)}) {
    EXPECT_EQ(encode(d).first.size(), 24u);
    auto d2 = decoded<DumpRecord>(d);
    EXPECT_EQ(d2.ts_ns, d.ts_ns);
    EXPECT_EQ(d2.phase, d.phase);
    EXPECT_EQ(d2.records, d.records);
  }
}

TEST(IdentityRecords, LongPathsAreCutAt4096Bytes) {
  auto p = process(at(1), 1, TW_IDENT_EXEC, "x", std::string(5000, 'p'));
  EXPECT_EQ(decoded<ProcessRecord>(p).exe, std::string(4096, 'p'));
  auto c = cgroup(at(1), 1, "/" + std::string(5000, 'c'));
  EXPECT_EQ(decoded<CgroupRecord>(c).path, "/" + std::string(4095, 'c'));
}

TEST(IdentityRecords, TruncatedBodiesAreRefused) {
  const std::vector<std::pair<IdentityRecord, size_t>> cases = {
      {sock_open({.ts = at(1), .cookie = 1, .local = "10.0.0.1", .lport = 1}), 96},
      {process(at(1), 1, TW_IDENT_EXEC, "x", ""), 48},
      {cgroup(at(1), 1, ""), 24},
      {pod_up(at(1), {.uid = "u", .ns = "n", .name = "p"}), 16},
      {dump_begin(at(1)), 24},
  };
  for (auto& [rec, size] : cases) {
    auto [body, type] = encode(rec);
    ASSERT_GE(body.size(), size);
    for (size_t n = 0; n < size; n++) {
      std::string error;
      EXPECT_FALSE(decode_identity(type, std::span<const uint8_t>(body).first(n), &error)) << type << " " << n;
      EXPECT_NE(error.find("shorter than its struct"), std::string::npos) << error;
    }
  }
}

TEST(IdentityRecords, PathRunningPastTheBodyIsRefused) {
  for (auto rec : {IdentityRecord(process(at(1), 1, TW_IDENT_EXEC, "x", "/bin/true")),
                   IdentityRecord(cgroup(at(1), 1, "/system.slice/x.service"))}) {
    auto [body, type] = encode(rec);
    std::string error;
    // One byte of the path missing.
    EXPECT_FALSE(decode_identity(type, std::span<const uint8_t>(body).first(body.size() - 1), &error));
    EXPECT_NE(error.find("runs past its body"), std::string::npos) << error;
    // A length field far past the end (0xffff) with the bytes to back it is
    // still refused: more than 4096 bytes of path.
    const size_t len_at = type == TW_REC_PROCESS ? 26 : 16;  // tw_seg_process.exe_len, tw_seg_cgroup.path_len
    std::vector<uint8_t> big(body.begin(), body.begin() + (type == TW_REC_PROCESS ? 48 : 24));
    big.resize(big.size() + 0xffff, 'a');
    big[len_at] = 0xff;
    big[len_at + 1] = 0xff;
    error.clear();
    EXPECT_FALSE(decode_identity(type, big, &error));
    EXPECT_NE(error.find("runs past its body"), std::string::npos) << error;
    // 4096 exactly is fine.
    big[len_at] = 0x00;
    big[len_at + 1] = 0x10;
    EXPECT_TRUE(decode_identity(type, big, &error)) << error;
  }
}

TEST(IdentityRecords, LongerBodiesAreAccepted) {
  // A later version may append fields: the known prefix is used.
  const std::vector<uint8_t> extra = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  auto s = sock_open({.ts = at(1), .cookie = 9, .cgroup = 3, .tgid = 4, .local = "10.0.0.1", .lport = 80,
                      .remote = "10.0.0.2", .rport = 1234, .comm = "nginx"});
  auto p = process(at(2), 1, TW_IDENT_EXEC, "sh", "/bin/sh");
  auto c = cgroup(at(3), 5, "/kubepods");
  auto d = dump_end(at(4), 7);
  for (IdentityRecord rec : {IdentityRecord(s), IdentityRecord(p), IdentityRecord(c), IdentityRecord(d)}) {
    auto [body, type] = encode(rec);
    body.insert(body.end(), extra.begin(), extra.end());
    std::string error;
    auto back = decode_identity(type, body, &error);
    ASSERT_TRUE(back) << type << ": " << error;
    EXPECT_EQ(encode(*back).first, encode(rec).first) << type;
  }
}

TEST(IdentityRecords, UnknownValuesAreRefused) {
  auto s = sock_open({.ts = at(1), .cookie = 1, .local = "10.0.0.1", .lport = 1});
  for (uint8_t type : {0, 3, 4, 255}) {
    auto bad = s;
    bad.ev.type = type;
    std::string error;
    auto [body, t] = encode(bad);
    EXPECT_FALSE(decode_identity(t, body, &error)) << int(type);
    EXPECT_EQ(error, "socket record of unknown event type");
  }
  for (uint8_t v : {0, 5, 46}) {
    auto bad = s;
    bad.ev.ip_version = v;
    std::string error;
    auto [body, t] = encode(bad);
    EXPECT_FALSE(decode_identity(t, body, &error)) << int(v);
    EXPECT_EQ(error, "socket record with IP version " + std::to_string(v));
  }
  auto d = dump_begin(at(1));
  d.phase = 3;
  auto [dbody, dtype] = encode(d);
  EXPECT_FALSE(decode_identity(dtype, dbody));
  // A workload record whose JSON is bad says why.
  std::vector<uint8_t> wbody(16, 0);
  const std::string json = R"({"v":1,"kind":"Pod","op":"upsert","uid":"u"})";
  wbody.insert(wbody.end(), json.begin(), json.end());
  std::string error;
  EXPECT_FALSE(decode_identity(TW_REC_WORKLOAD, wbody, &error));
  EXPECT_EQ(error, "workload record: Pod: namespace: missing");
  // Types outside the identity stream.
  for (uint16_t type : {0, 1, 2, 3, 9, 0xffff}) {
    EXPECT_FALSE(is_identity_type(type)) << type;
    error.clear();
    EXPECT_FALSE(decode_identity(type, dbody, &error));
    EXPECT_EQ(error, "not an identity record type: " + std::to_string(type));
  }
  for (uint16_t type = TW_REC_SOCKET; type <= TW_REC_DUMP; type++) EXPECT_TRUE(is_identity_type(type));
}

TEST(IdentityRecords, TimeAndDumpMembership) {
  auto s = sock_open({.ts = at(1), .cookie = 1, .local = "10.0.0.1", .lport = 1});
  EXPECT_EQ(record_ts(s), at(1));
  EXPECT_FALSE(record_in_dump(s));
  s.ev.flags |= TW_SOCK_F_DUMP;
  EXPECT_TRUE(record_in_dump(s));
  EXPECT_FALSE(record_in_dump(process(at(2), 1, TW_PROC_SCAN, "", "")));
  EXPECT_TRUE(record_in_dump(process(at(2), 1, TW_PROC_SCAN, "", "", 0, TW_IDENT_REC_F_DUMP)));
  EXPECT_EQ(record_ts(process(at(2), 1, TW_PROC_SCAN, "", "")), at(2));
  EXPECT_TRUE(record_in_dump(cgroup(at(3), 1, "/", TW_IDENT_REC_F_DUMP)));
  EXPECT_FALSE(record_in_dump(sync(at(4), "pods", "synced")));
  EXPECT_EQ(record_ts(sync(at(4), "pods", "synced")), at(4));
  EXPECT_TRUE(record_in_dump(dump_end(at(5), 0)));  // the markers are part of the dump
  EXPECT_EQ(record_ts(dump_end(at(5), 0)), at(5));
  const char full[16] = {'0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'};
  EXPECT_EQ(comm_string(full), "0123456789abcdef");  // no NUL: all 16
  const char part[16] = {'s', 'h'};
  EXPECT_EQ(comm_string(part), "sh");
}

}  // namespace

// Flows in userspace (userspace/flows/): the tracker over the crafted and
// lab pcaps of tests/fixtures/flows, whose expected numbers are tshark 4.0's
// on the same files (tests/fixtures/flows/README.md; scripts/flows-vs-tshark.py
// compares every counter); the record's state, flags and JSON; the flow
// stream reader; passive DNS; the DB's flows and dns_names tables.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>

#include "call_db.hpp"
#include "flow_record.hpp"
#include "flow_sources.hpp"
#include "flow_tracker.hpp"
#include "passive_dns.hpp"
#include "segment.hpp"
#include "temp_dir.hpp"

namespace tapwire::flows {
namespace {

std::string fixture(const char* name) {
  return (std::filesystem::path(__FILE__).parent_path().parent_path() / "fixtures" / "flows" / name).string();
}

std::vector<Flow> flows_of(const char* name, PassiveDns* dns = nullptr) {
  return annotate(flows_from_pcap(fixture(name), {}, dns), "", dns);
}

struct Dir {
  uint64_t packets, bytes, payload;
};
void expect_dir(const tw_flow_dir& d, Dir want, const char* what) {
  EXPECT_EQ(d.packets, want.packets) << what;
  EXPECT_EQ(d.bytes, want.bytes) << what;
  EXPECT_EQ(d.payload_bytes, want.payload) << what;
}

TEST(Flows, Handshake) {
  auto fl = flows_of("handshake.pcap");
  ASSERT_EQ(fl.size(), 1u);
  const Flow& f = fl[0];
  EXPECT_EQ(f.client.ip(), "10.0.0.1");
  EXPECT_EQ(f.client.port, 40000);
  EXPECT_EQ(f.server.port, 80);
  EXPECT_STREQ(f.state(), "closed");
  EXPECT_STREQ(f.end(), "fin");
  EXPECT_EQ(f.rec.st.completeness, 31);  // tshark -2: tcp.completeness 31
  EXPECT_EQ(f.rec.st.first_rtt_ns, 1000000u);  // tcp.analysis.initial_rtt 0.001
  expect_dir(f.to_server(), {6, 424, 100}, "client");
  expect_dir(f.to_client(), {4, 416, 200}, "server");
  EXPECT_EQ(f.retransmissions(), 0u);
  EXPECT_TRUE(f.flags().empty());
  auto j = flow_json(f);
  EXPECT_EQ(j["id"], f.id());
  EXPECT_EQ(j["protocol"], "tcp");
  EXPECT_EQ(j["handshake_rtt_us"], 1000.0);
  EXPECT_EQ(j["completeness_flags"], FlowJson::parse(R"(["SYN","SYN-ACK","ACK","DATA","FIN"])"));
  EXPECT_EQ(j["client_to_server"]["packets"], 6);
  EXPECT_EQ(j["server_to_client"]["payload_bytes"], 200);
  EXPECT_EQ(j["duration_us"], 1700);
  EXPECT_EQ(f.rec.flow_id, tw_flow_id(&f.rec.key, f.rec.st.first_ns));
}

TEST(Flows, RetransmittedSyn) {
  auto fl = flows_of("syn_retransmitted.pcap");
  ASSERT_EQ(fl.size(), 1u);  // one tcp.stream: the same ISN is the same conversation
  const Flow& f = fl[0];
  EXPECT_EQ(f.to_server().retransmissions, 1u);  // frame 2: tcp.analysis.retransmission
  EXPECT_EQ(f.rec.st.first_rtt_ns, 2000000u);  // from the most recent SYN
  expect_dir(f.to_server(), {6, 334, 10}, "client");
  expect_dir(f.to_client(), {3, 162, 0}, "server");
  EXPECT_TRUE(f.has_flag("retransmitting"));
  EXPECT_STREQ(f.state(), "closed");
}

TEST(Flows, RefusedAndUnanswered) {
  auto fl = flows_of("refused.pcap");
  ASSERT_EQ(fl.size(), 2u);
  const Flow& r = fl[0];
  EXPECT_EQ(r.server.port, 81);
  EXPECT_STREQ(r.state(), "refused");
  EXPECT_STREQ(r.end(), "rst");
  EXPECT_EQ(r.flags(), std::vector<std::string>{"refused"});
  EXPECT_EQ(r.rec.st.completeness, 37);  // SYN, ACK (the RST-ACK), RST
  EXPECT_EQ(r.to_client().resets, 1u);
  EXPECT_EQ(r.rec.st.first_rtt_ns, 50000u);  // tshark takes the RST-ACK as the first ACK
  const Flow& u = fl[1];
  EXPECT_EQ(u.server.port, 82);
  EXPECT_STREQ(u.state(), "unanswered");
  EXPECT_STREQ(u.end(), "timeout");
  EXPECT_EQ(u.to_server().retransmissions, 2u);
  EXPECT_EQ(u.rec.st.completeness, 1);
  EXPECT_EQ(u.rec.st.first_rtt_ns, 0u);
  EXPECT_TRUE(flow_json(u)["handshake_rtt_us"].is_null());
  EXPECT_TRUE(u.has_flag("unanswered"));
}

TEST(Flows, PortReuseStartsANewFlow) {
  auto fl = flows_of("reuse.pcap");
  ASSERT_EQ(fl.size(), 2u);  // tcp.stream 0 and 1
  EXPECT_STREQ(fl[0].end(), "reused");
  EXPECT_STREQ(fl[0].state(), "closed");
  expect_dir(fl[0].to_server(), {6, 374, 50}, "first client");
  expect_dir(fl[0].to_client(), {3, 222, 60}, "first server");
  EXPECT_STREQ(fl[1].end(), "fin");
  expect_dir(fl[1].to_server(), {5, 340, 70}, "second client");
  expect_dir(fl[1].to_client(), {3, 162, 0}, "second server");
  EXPECT_NE(fl[0].id(), fl[1].id());
  EXPECT_EQ(fl[1].rec.st.completeness, 31);
}

TEST(Flows, SequenceWraparound) {
  auto fl = flows_of("wraparound.pcap");
  ASSERT_EQ(fl.size(), 1u);
  expect_dir(fl[0].to_server(), {9, 886, 400}, "client");
  expect_dir(fl[0].to_client(), {7, 678, 300}, "server");
  EXPECT_EQ(fl[0].retransmissions(), 0u);
  EXPECT_EQ(fl[0].to_server().out_of_order + fl[0].to_server().lost_segments, 0u);
  EXPECT_STREQ(fl[0].state(), "closed");
}

TEST(Flows, DupAcksThenFastRetransmission) {
  auto fl = flows_of("fast_retransmission.pcap");
  ASSERT_EQ(fl.size(), 1u);
  const Flow& f = fl[0];
  EXPECT_EQ(f.to_server().dup_acks, 3u);  // frames 7, 9, 11
  EXPECT_EQ(f.to_client().lost_segments, 1u);  // frame 6
  EXPECT_EQ(f.to_client().fast_retransmissions, 1u);  // frame 12
  EXPECT_EQ(tw_flow_retransmissions(&f.to_client()), 1u);
  expect_dir(f.to_client(), {7, 5378, 5000}, "server");
  EXPECT_EQ(f.rec.st.first_rtt_ns, 5000000u);
}

TEST(Flows, OutOfOrderWithinTheInitialRtt) {
  auto fl = flows_of("out_of_order.pcap");
  ASSERT_EQ(fl.size(), 1u);
  const Flow& f = fl[0];
  EXPECT_EQ(f.to_server().lost_segments, 1u);  // frame 4 comes before the segment behind it
  EXPECT_EQ(f.to_server().out_of_order, 1u);  // frame 5, 200 us later: within the 10 ms iRTT
  EXPECT_EQ(f.to_server().spurious_retransmissions, 1u);  // frame 7: data the server had acknowledged
  EXPECT_EQ(tw_flow_retransmissions(&f.to_server()), 1u);
  EXPECT_EQ(f.to_client().dup_acks, 1u);  // frame 8
  expect_dir(f.to_server(), {7, 1878, 1500}, "client");
}

TEST(Flows, Udp) {
  auto fl = flows_of("udp.pcap");
  ASSERT_EQ(fl.size(), 2u);
  const Flow& d = fl[0];
  EXPECT_FALSE(d.tcp());
  EXPECT_EQ(d.client.port, 50000);
  EXPECT_EQ(d.server.port, 53);
  expect_dir(d.to_server(), {2, 145, 61}, "client");
  expect_dir(d.to_client(), {2, 265, 181}, "server");
  EXPECT_STREQ(d.state(), "ended");
  // The first datagram came from port 123: only that side has a port below 1024, so it is the server.
  const Flow& n = fl[1];
  EXPECT_EQ(n.client.port, 50001);
  EXPECT_EQ(n.server.port, 123);
  expect_dir(n.to_client(), {1, 90, 48}, "server");
  expect_dir(n.to_server(), {0, 0, 0}, "client");
  auto j = flow_json(d);
  EXPECT_FALSE(j.contains("completeness"));
  EXPECT_FALSE(j["client_to_server"].contains("retransmissions"));
}

TEST(Flows, LabCaptureWithLoss) {
  // tcpdump on a veth while an nftables rule dropped 1 in 20 of the server's
  // segments in the client's namespace: tshark's counts, flow by flow.
  std::map<uint16_t, const Flow*> by_port;
  auto fl = flows_of("lab_loss.pcap");
  for (auto& f : fl) by_port[f.client.port] = &f;
  ASSERT_EQ(fl.size(), 10u);
  const Flow& a = *by_port.at(46330);
  expect_dir(a.to_client(), {118, 3339593, 3331797}, "46330 server");
  EXPECT_EQ(tw_flow_retransmissions(&a.to_client()), 5u);
  EXPECT_EQ(a.to_client().out_of_order, 20u);
  const Flow& b = *by_port.at(46334);
  EXPECT_EQ(tw_flow_retransmissions(&b.to_client()), 8u);
  EXPECT_EQ(b.to_client().out_of_order, 6u);
  EXPECT_EQ(b.to_server().dup_acks, 1u);
  const Flow& c = *by_port.at(46314);
  EXPECT_EQ(tw_flow_retransmissions(&c.to_server()), 1u);
  EXPECT_EQ(c.to_client().dup_acks, 1u);
  const Flow& r = *by_port.at(39318);
  EXPECT_STREQ(r.state(), "refused");
  EXPECT_EQ(r.rec.st.completeness, 37);
}

TEST(Flows, LabIpv6ZeroWindows) {
  auto fl = flows_of("lab_ipv6_zero_window.pcap");
  ASSERT_EQ(fl.size(), 3u);
  const Flow& s = fl[0];
  EXPECT_EQ(s.client.ip(), "fd77::2");
  EXPECT_EQ(s.rec.key.ip_version, 6);
  expect_dir(s.to_server(), {583, 50470, 0}, "client");
  EXPECT_EQ(s.to_server().zero_windows, 9u);
  EXPECT_EQ(s.to_server().dup_acks, 17u);
  EXPECT_EQ(tw_flow_retransmissions(&s.to_client()), 34u);
  EXPECT_EQ(s.to_client().out_of_order, 2u);
  EXPECT_EQ(fl[1].to_server().zero_windows, 5u);
  EXPECT_EQ(tw_flow_retransmissions(&fl[1].to_client()), 49u);
}

TEST(Flows, LabKeepAlives) {
  auto fl = flows_of("lab_keepalive.pcap");
  ASSERT_EQ(fl.size(), 2u);
  expect_dir(fl[0].to_server(), {10, 673, 5}, "client");
  expect_dir(fl[0].to_client(), {8, 538, 2}, "server");
  EXPECT_EQ(fl[0].to_server().keep_alives, 4u);  // tcp.analysis.keep_alive
  EXPECT_EQ(fl[0].to_client().dup_acks, 0u);  // the keep-alive ACKs are not duplicate ACKs
  EXPECT_EQ(fl[0].retransmissions(), 0u);
  expect_dir(fl[1].to_server(), {57, 3003770, 3000000}, "upload");
}

TEST(Flows, LabImpaired) {
  // Drops, swaps and late segments through a TUN relay (tests/integration/flowlab.py).
  std::map<std::pair<uint8_t, uint16_t>, const Flow*> by;
  auto fl = flows_of("lab_impaired.pcap");
  ASSERT_EQ(fl.size(), 5u);
  for (auto& f : fl) by[{f.rec.key.ip_version, f.server.port}] = &f;
  const Flow& fetch = *by.at({4, 9001});
  expect_dir(fetch.to_server(), {469, 28856, 8}, "fetch client");
  EXPECT_EQ(fetch.to_server().dup_acks, 105u);
  expect_dir(fetch.to_client(), {752, 1122440, fetch.to_client().payload_bytes}, "fetch server");
  EXPECT_EQ(tw_flow_retransmissions(&fetch.to_client()), 5u);
  EXPECT_EQ(fetch.to_client().fast_retransmissions, 5u);
  EXPECT_EQ(fetch.to_client().out_of_order, 19u);
  const Flow& send = *by.at({4, 9002});
  EXPECT_EQ(tw_flow_retransmissions(&send.to_server()), 19u);
  EXPECT_EQ(send.to_server().fast_retransmissions, 18u);
  EXPECT_EQ(send.to_server().spurious_retransmissions, 1u);
  EXPECT_EQ(send.to_server().out_of_order, 23u);
  EXPECT_EQ(send.to_server().lost_segments, 40u);
  EXPECT_EQ(send.to_client().dup_acks, 191u);
  const Flow& send6 = *by.at({6, 9002});
  EXPECT_EQ(tw_flow_retransmissions(&send6.to_server()), 6u);
  EXPECT_EQ(send6.to_server().spurious_retransmissions, 2u);
  EXPECT_EQ(send6.to_server().lost_segments, 16u);
  EXPECT_EQ(send6.to_client().dup_acks, 45u);
  for (auto& f : fl)
    if (f.tcp()) {
      EXPECT_STREQ(f.state(), "closed");
    }
}

tw_pkt udp_pkt(uint32_t i, uint64_t ts) {
  tw_pkt p{};
  p.ts_ns = ts;
  p.ip_version = 4;
  p.l4_proto = 17;
  p.saddr[0] = 10;
  p.saddr[2] = static_cast<uint8_t>(i >> 8);
  p.saddr[3] = static_cast<uint8_t>(i);
  p.daddr[0] = 192;
  p.sport = static_cast<uint16_t>(1024 + (i >> 16));
  p.dport = 53;
  p.payload_len = 10;
  return p;
}

TEST(FlowTracker, BoundedEvictsTheIdleLongest) {
  std::vector<tw_seg_flow> ended;
  FlowTracker t({3}, [&](const tw_seg_flow& r) { ended.push_back(r); });
  t.packet(udp_pkt(1, 1000), 60);
  t.packet(udp_pkt(2, 2000), 60);
  t.packet(udp_pkt(3, 3000), 60);
  t.packet(udp_pkt(1, 4000), 60);  // flow 1 active again: 2 is now the idle-longest
  t.packet(udp_pkt(4, 5000), 60);
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].end, TW_FLOW_END_EVICTED);
  EXPECT_EQ(ended[0].key.addr_a[3], 2);
  EXPECT_EQ(t.live_count(), 3u);
  EXPECT_EQ(t.stats().evicted, 1u);
  Flow f = flow_from_record(ended[0]);
  EXPECT_TRUE(f.has_flag("evicted"));
  t.finish();
  EXPECT_EQ(ended.size(), 4u);
  EXPECT_EQ(ended.back().end, TW_FLOW_END_STOPPED);
}

TEST(FlowTracker, HostileInputStaysBounded) {
  uint64_t n = 0;
  FlowTracker t({1000}, [&](const tw_seg_flow&) { n++; });
  for (uint32_t i = 0; i < 300000; i++) {
    t.packet(udp_pkt(i, 1000 + i), 60);
    ASSERT_LE(t.live_count(), 1000u);
  }
  EXPECT_EQ(t.stats().evicted, 299000u);
  t.finish();
  EXPECT_EQ(n, 300000u);
}

TEST(FlowKey, CanonicalBothWays) {
  tw_pkt p{};
  p.ip_version = 4;
  p.l4_proto = 6;
  p.saddr[0] = 10, p.saddr[3] = 9;
  p.daddr[0] = 10, p.daddr[3] = 1;
  p.sport = 1000, p.dport = 80;
  tw_flow_key k1, k2;
  uint8_t s1, s2;
  ASSERT_TRUE(flow_key_of(p, k1, s1));
  std::swap(p.saddr, p.daddr);
  std::swap(p.sport, p.dport);
  ASSERT_TRUE(flow_key_of(p, k2, s2));
  EXPECT_EQ(std::memcmp(&k1, &k2, sizeof k1), 0);
  EXPECT_EQ(s1, TW_SIDE_B);  // 10.0.0.9 > 10.0.0.1
  EXPECT_EQ(s2, TW_SIDE_A);
  EXPECT_EQ(k1.port_a, 80);
  p.l4_proto = 1;
  EXPECT_FALSE(flow_key_of(p, k1, s1));
}

TEST(FlowStream, FoldsRecordsByIdKeepingTheLast) {
  test_util::TempDir tmp("flows");
  auto fl = flows_from_pcap(fixture("handshake.pcap"), {}, nullptr);
  auto fl2 = flows_from_pcap(fixture("udp.pcap"), {}, nullptr);
  ASSERT_EQ(fl.size(), 1u);
  {
    shm::StoreOptions so;
    so.dir = tmp.path() + "/flows";
    so.storage_size = 8 << 20;
    so.segment_size = 1 << 20;
    shm::SegmentStore store(so);
    tw_seg_flow live = fl[0];
    live.end = 0;
    live.st.dir[0].packets = 1;
    live.ts_ns = fl[0].ts_ns - 1000;
    auto put = [&](const tw_seg_flow& r) {
      store.append(TW_REC_FLOW, {reinterpret_cast<const uint8_t*>(&r), sizeof r}, {}, r.ts_ns);
    };
    put(live);
    store.rotate();
    put(fl[0]);
    for (auto& r : fl2) put(r);
    store.publish();
  }
  auto recs = read_flow_dir(tmp.path() + "/flows", 0, 0);
  ASSERT_EQ(recs.size(), 3u);
  EXPECT_EQ(recs[0].flow_id, fl[0].flow_id);
  EXPECT_EQ(recs[0].end, TW_FLOW_END_FIN);
  EXPECT_EQ(recs[0].st.dir[0].packets, fl[0].st.dir[0].packets);
  // The window: flows active in it only.
  auto none = read_flow_dir(tmp.path() + "/flows", fl2.back().st.last_ns + 1, 0);
  EXPECT_TRUE(none.empty());
  // (both fixtures start at the same time: the handshake is active then too)
  auto early = read_flow_dir(tmp.path() + "/flows", fl2[0].st.first_ns, fl2[0].st.first_ns);
  ASSERT_EQ(early.size(), 2u);
  for (auto& r : early) EXPECT_NE(r.flow_id, fl2[1].flow_id);
  // The stream reader sees every record.
  FlowStream s(tmp.path() + "/flows", false);
  int n = 0;
  while (s.next()) n++;
  EXPECT_EQ(n, 4);
  EXPECT_EQ(flows_dir_for_segments("/var/lib/tapwire/segments"), "/var/lib/tapwire/flows");
  EXPECT_EQ(flows_dir_for_segments("/snap/x"), "/snap/x/flows");
  EXPECT_THROW(read_flow_dir(tmp.path() + "/nope", 0, 0), std::runtime_error);
}

proto::DnsMessage answer(const std::string& q, std::vector<proto::DnsAnswer> an) {
  proto::DnsMessage m;
  m.is_response = true;
  m.questions.push_back({q, 1, 1});
  m.answers = std::move(an);
  return m;
}

TEST(PassiveDns, CnameChainsAndTime) {
  PassiveDns dns;
  dns.add_message(answer("api.example.com", {{"api.example.com", 5, 1, 60, "edge.cdn.net"},
                                             {"edge.cdn.net", 1, 1, 30, "192.0.2.7"}}),
                  1000);
  dns.add_message(answer("www.other.org", {{"www.other.org", 1, 1, 30, "192.0.2.7"}}), 5000);
  EXPECT_EQ(dns.names_at("192.0.2.7", 2000), (std::vector<std::string>{"api.example.com", "edge.cdn.net"}));
  EXPECT_EQ(dns.names_at("192.0.2.7", 6000), std::vector<std::string>{"www.other.org"});
  EXPECT_EQ(dns.names_at("192.0.2.7", 10), (std::vector<std::string>{"api.example.com", "edge.cdn.net"}));  // earliest after
  EXPECT_TRUE(dns.names_at("192.0.2.8", 2000).empty());
  proto::DnsMessage nx = answer("x.example", {{"x.example", 1, 1, 30, "192.0.2.9"}});
  nx.rcode = 3;
  dns.add_message(nx, 1);
  EXPECT_TRUE(dns.names_at("192.0.2.9", 2).empty());
  EXPECT_EQ(dns.all().size(), 3u);
}

TEST(PassiveDns, NamesFlowsOfAPcap) {
  // dns.pcap: api.example.com CNAME edge.cdn.example A 10.0.0.2, then a connection to 10.0.0.2:443
  PassiveDns dns;
  auto fl = flows_of("dns.pcap", &dns);
  ASSERT_EQ(fl.size(), 2u);
  const Flow& https = fl[1].server.port == 443 ? fl[1] : fl[0];
  EXPECT_EQ(https.server.names, (std::vector<std::string>{"api.example.com", "edge.cdn.example"}));
  EXPECT_EQ(flow_json(https)["server"]["names"][0], "api.example.com");
  EXPECT_TRUE(https.client.names.empty());
}

TEST(FlowDb, UpsertByIdAndNames) {
  test_util::TempDir tmp("flowdb");
  const std::string path = tmp.path() + "/d.db";
  auto fl = flows_of("handshake.pcap");
  {
    dissect::CallDb db(path);
    dissect::CallDb::FlowRow r;
    r.id = fl[0].id();
    r.protocol = "tcp";
    r.state = "established";
    r.first_ns = fl[0].rec.st.first_ns;
    r.last_ns = fl[0].rec.st.first_ns + 5;
    r.client_ip = "10.0.0.1";
    r.server_ip = "10.0.0.2";
    r.record = R"({"id":"x","state":"established"})";
    db.upsert_flow(r);
    r.state = "closed";
    r.end = "fin";
    r.last_ns = fl[0].rec.st.last_ns;
    r.record = flow_json(fl[0]).dump();
    r.key.assign(reinterpret_cast<const char*>(&fl[0].rec.key), sizeof(tw_flow_key));
    db.upsert_flow(r);
    db.add_dns_name("10.0.0.2", "web.example", 100, 30);
    db.add_dns_name("10.0.0.2", "web.example", 900, 60);
    db.commit();
  }
  dissect::CallDb ro(path, true);
  auto rows = ro.query_flows(0, 0);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_NE(rows[0].record.find("\"closed\""), std::string::npos);
  EXPECT_EQ(rows[0].key.size(), sizeof(tw_flow_key));
  EXPECT_TRUE(ro.query_flows(fl[0].rec.st.last_ns + 1, 0).empty());
  EXPECT_EQ(ro.query_flows(0, 0, fl[0].id()).size(), 1u);
  auto names = ro.dns_names(0, 0);
  ASSERT_EQ(names.size(), 1u);
  EXPECT_EQ(names[0].first_seen, 100u);
  EXPECT_EQ(names[0].last_seen, 900u);
  EXPECT_EQ(names[0].ttl, 60u);
}

}  // namespace
}  // namespace tapwire::flows

// Identity: a flow's ends are named at first_seen from the identity stream,
// as a call's are; the DB row gets the identity columns.
#include "flow_db.hpp"
#include "identity_test_helpers.hpp"

namespace tapwire::flows {
namespace {

TEST(FlowIdentity, EndsNamedFromTheIdentityStream) {
  using namespace tapwire::identity::testing;
  test_util::TempDir tmp("flowid");
  const std::string dir = tmp.path() + "/identity";
  std::filesystem::create_directories(dir);
  {
    auto w = shm::SegmentWriter::create(dir, 0, 1u << 20);
    auto add = [&](const identity::IdentityRecord& r) {
      auto [body, type] = identity::encode(r);
      ASSERT_TRUE(w.append(type, body, {}, identity::record_ts(r)));
    };
    add(pod_up(at(-10), PodSpec{.uid = "u1", .ns = "shop", .name = "frontend-1", .ips = {"10.0.0.1"},
                                .owner_kind = "Deployment", .owner_name = "frontend"}));
    add(pod_up(at(-10), PodSpec{.uid = "u2", .ns = "data", .name = "db-0", .ips = {"10.0.0.2"}}));
    w.seal();
  }
  auto recs = flows_from_pcap(fixture("handshake.pcap"), {}, nullptr);
  ASSERT_EQ(recs.size(), 1u);
  // Move the flow to the stream's time.
  const uint64_t shift = at(1) - recs[0].st.first_ns;
  recs[0].st.first_ns += shift;
  recs[0].st.last_ns += shift;
  FlowNamer namer(dir, nullptr);
  Flow f = namer.name(recs[0]);
  ASSERT_TRUE(f.client.identity);
  ASSERT_TRUE(f.server.identity);
  EXPECT_EQ(f.client.identity->pod, "frontend-1");
  EXPECT_EQ(f.client.identity->namespace_, "shop");
  EXPECT_EQ(f.server.identity->pod, "db-0");
  auto j = flow_json(f);
  EXPECT_EQ(j["client"]["namespace"], "shop");
  EXPECT_EQ(j["server"]["pod"], "db-0");
  auto row = flow_db_row(f);
  EXPECT_EQ(row.client_namespace, "shop");
  EXPECT_EQ(row.server_pod, "db-0");
  EXPECT_EQ(row.state, "closed");
  EXPECT_EQ(row.packets, 10u);
  EXPECT_EQ(row.bytes, 840u);
}

TEST(FlowDb, BoundedWithTheCalls) {
  test_util::TempDir tmp("flowdbmax");
  dissect::CallDb db(tmp.path() + "/d.db");
  db.set_max_size(256 * 1024);
  auto fl = flows_of("handshake.pcap");
  auto row = flow_db_row(fl[0]);
  for (int i = 0; i < 4000; i++) {
    char id[17];
    std::snprintf(id, sizeof id, "%016x", i);
    row.id = id;
    row.first_ns = 1000 + static_cast<uint64_t>(i);
    row.last_ns = row.first_ns + 10;
    db.upsert_flow(row);
    db.add_dns_name("10.0.0." + std::to_string(i % 250), "n" + std::to_string(i) + ".example", row.first_ns, 30);
  }
  db.commit();
  auto s = db.size_stats();
  EXPECT_LE(s.bytes, 256u * 1024);
  EXPECT_GT(s.flows_deleted, 0u);
  EXPECT_EQ(db.flow_count() + s.flows_deleted, 4000u);
  // The oldest went first.
  auto rows = db.query_flows(0, 0);
  ASSERT_FALSE(rows.empty());
  EXPECT_GT(rows.front().first_ns, 1000u);
  EXPECT_EQ(rows.back().first_ns, 1000u + 3999);
}

}  // namespace
}  // namespace tapwire::flows

// The flow commands end to end on a data directory made from a pcap: its
// packets as the sensor's segments (DATA_DIR/segments), its flows as the
// tracker's records in the flow stream (DATA_DIR/flows): tapwire flows,
// packets, export pcap --flow, map, and tapwire dissect's flows table.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "flow_sources.hpp"
#include "packet_source.hpp"
#include "segment.hpp"
#include "temp_dir.hpp"

namespace tapwire::flows {
namespace {

std::string fixture(const char* name) {
  return (std::filesystem::path(__FILE__).parent_path().parent_path() / "fixtures" / "flows" / name).string();
}

std::string run(const std::string& cmd, int* rc = nullptr) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int st = pclose(p);
  if (rc) *rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return out;
}

// DATA_DIR from a pcap: the packets with payload or SYN/FIN/RST (the sensor
// does not store payload-less ACKs), and the flows.
void make_data_dir(const std::string& dir, const std::string& pcap) {
  shm::StoreOptions so;
  so.storage_size = 16 << 20;
  so.segment_size = 4 << 20;
  so.dir = dir + "/segments";
  {
    shm::SegmentStore segs(so);
    auto src = dissect::open_pcap_source(pcap);
    dissect::Packet p;
    while (src->next(p) == dissect::PacketSource::Next::Packet) {
      if (p.meta.l4_proto == 6 && p.meta.payload_len == 0 && !(p.meta.tcp_flags & 0x07)) continue;
      segs.append(TW_REC_PACKET, {reinterpret_cast<const uint8_t*>(&p.meta), sizeof p.meta}, p.payload, p.meta.ts_ns);
    }
    segs.publish();
  }
  so.dir = dir + "/flows";
  shm::SegmentStore flows(so);
  for (auto& r : flows_from_pcap(pcap, {}, nullptr))
    flows.append(TW_REC_FLOW, {reinterpret_cast<const uint8_t*>(&r), sizeof r}, {}, r.ts_ns);
  flows.publish();
}

const std::string kTapwire = std::string(TW_BUILD_DIR) + "/tapwire";

TEST(FlowsCli, DataDirFlowsPacketsExportMap) {
  if (!std::filesystem::exists(kTapwire)) GTEST_SKIP() << "build the tapwire CLI first";
  test_util::TempDir tmp("flowcli");
  const std::string d = tmp.path();
  make_data_dir(d, fixture("dns.pcap"));

  int rc;
  std::string out = run(kTapwire + " flows --data-dir " + d + " --json", &rc);
  ASSERT_EQ(rc, 0) << out;
  std::vector<nlohmann::json> flows;
  size_t pos = 0;
  while (pos < out.size()) {
    size_t nl = out.find('\n', pos);
    flows.push_back(nlohmann::json::parse(out.substr(pos, nl - pos)));
    pos = nl + 1;
  }
  ASSERT_EQ(flows.size(), 2u);
  const nlohmann::json& https = flows[1];
  EXPECT_EQ(https["server"]["port"], 443);
  // Passive DNS from the segments' answers (no DB).
  EXPECT_EQ(https["server"]["names"], nlohmann::json::parse(R"(["api.example.com","edge.cdn.example"])"));
  EXPECT_EQ(https["state"], "closed");
  EXPECT_EQ(https["client_to_server"]["packets"], 4);
  const std::string id = https["id"];

  // Filters and the table
  out = run(kTapwire + " flows --data-dir " + d + " --protocol udp --json", &rc);
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
  out = run(kTapwire + " flows --data-dir " + d + " --port 443", &rc);
  EXPECT_NE(out.find(id), std::string::npos);
  EXPECT_NE(out.find("api.example.com"), std::string::npos);

  // Packets: the stored ones only (the payload-less ACKs were counted, not stored)
  out = run(kTapwire + " packets --data-dir " + d + " --flow " + id + " --json", &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 4);  // SYN, SYN-ACK, FIN, FIN
  EXPECT_NE(out.find("\"flags\":\"SYN\""), std::string::npos);
  EXPECT_NE(out.find("\"direction\":\"server_to_client\""), std::string::npos);

  // Bad ids and sources
  out = run(kTapwire + " packets --data-dir " + d + " --flow 0123456789abcdef", &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("no flow with this id"), std::string::npos);
  out = run(kTapwire + " packets --data-dir " + d + " --flow xyz", &rc);
  EXPECT_NE(out.find("invalid flow id"), std::string::npos);
  out = run(kTapwire + " flows --data-dir " + d + "/nope", &rc);
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("data directory not found"), std::string::npos);

  // export pcap --flow: only that flow's packets
  out = run(kTapwire + " export pcap --data-dir " + d + " --flow " + id + " -o " + d + "/one.pcapng", &rc);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("exported 4 packets"), std::string::npos) << out;

  // map: the server is an external node named by DNS
  out = run(kTapwire + " map --data-dir " + d, &rc);
  ASSERT_EQ(rc, 0) << out;
  auto m = nlohmann::json::parse(out);
  bool named = false;
  for (auto& n : m["nodes"]) named |= n["label"] == "api.example.com" && n["external"] == true;
  EXPECT_TRUE(named) << out;
  out = run(kTapwire + " map --data-dir " + d + " --format dot", &rc);
  EXPECT_NE(out.find("digraph"), std::string::npos);

  // tapwire dissect: the flows table and dns_names, then flows --db
  out = run(kTapwire + " dissect --snapshot " + d + " --db " + d + "/s.db --quiet", &rc);
  ASSERT_EQ(rc, 0) << out;
  out = run(kTapwire + " flows --db " + d + "/s.db --json --sort bytes --limit 1", &rc);
  ASSERT_EQ(rc, 0) << out;
  auto top = nlohmann::json::parse(out);
  EXPECT_EQ(top["id"], id);
  EXPECT_EQ(top["server"]["names"][0], "api.example.com");
  out = run(kTapwire + " map --db " + d + "/s.db", &rc);
  EXPECT_NE(out.find("\"dns\""), std::string::npos) << out;
}

TEST(FlowsCli, HelpExplainsTheColumns) {
  if (!std::filesystem::exists(kTapwire)) GTEST_SKIP() << "build the tapwire CLI first";
  EXPECT_NE(run(kTapwire + " flows --help").find("RETRANS"), std::string::npos);
  EXPECT_NE(run(kTapwire + " packets --help").find("payload-less ACKs"), std::string::npos);
  EXPECT_NE(run(kTapwire + " map --help").find("external"), std::string::npos);
}

}  // namespace
}  // namespace tapwire::flows

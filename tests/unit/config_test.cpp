// tapwire.yaml (userspace/config/): the shipped file equals the defaults, the
// file, the README and the loader list the same keys, every kind of bad value
// is rejected naming the key and its line, valid overrides parse, and flags
// override the file at start and on reload.
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "config.hpp"
#include "config_flags.hpp"
#include "duration.hpp"
#include "units.hpp"
#include "protocol.hpp"

namespace {

using namespace tapwire::config;
using namespace std::chrono_literals;

std::filesystem::path source_dir() {
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path();
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Loads `text`, expects a ConfigError, returns it.
ConfigError rejected(const std::string& text) {
  try {
    load_config_text(text, "test.yaml");
  } catch (const ConfigError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted:\n" << text;
  return ConfigError("", 0, "", "");
}

// The error names the key and the line, in the message the user sees.
void expect_rejected(const std::string& text, const std::string& key, int line, const std::string& words) {
  SCOPED_TRACE(text);
  ConfigError e = rejected(text);
  EXPECT_EQ(e.key(), key);
  EXPECT_EQ(e.line(), line);
  const std::string msg = e.what();
  EXPECT_NE(msg.find("test.yaml:" + std::to_string(line) + ": " + key + ": "), std::string::npos) << msg;
  EXPECT_NE(msg.find(words), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

// ------------------------------------------------------------ durations --

TEST(Duration, Parses) {
  EXPECT_EQ(parse_duration("5m"), std::chrono::nanoseconds(5min));
  EXPECT_EQ(parse_duration("2s"), std::chrono::nanoseconds(2s));
  EXPECT_EQ(parse_duration("0"), std::chrono::nanoseconds(0));
  EXPECT_EQ(parse_duration("0s"), std::chrono::nanoseconds(0));
  EXPECT_EQ(parse_duration("250ms"), std::chrono::nanoseconds(250ms));
  EXPECT_EQ(parse_duration("1h30m"), std::chrono::nanoseconds(90min));
  EXPECT_EQ(parse_duration("1.5s"), std::chrono::nanoseconds(1500ms));
  EXPECT_EQ(parse_duration("10us"), std::chrono::nanoseconds(10us));
  EXPECT_EQ(parse_duration("7ns"), std::chrono::nanoseconds(7));
  EXPECT_EQ(parse_duration(" 3m "), std::chrono::nanoseconds(3min));
}

TEST(Duration, Rejects) {
  for (const char* bad : {"", "5", "-5m", "5 m", "m", "5x", "5mm", "1.s5", ".s", "9999999999999h", "5m-1s", "s5"})
    EXPECT_FALSE(parse_duration(bad).has_value()) << "'" << bad << "'";
}

TEST(Duration, Formats) {
  EXPECT_EQ(format_duration(5min), "5m");
  EXPECT_EQ(format_duration(1500ms), "1500ms");
  EXPECT_EQ(format_duration(0s), "0");
  EXPECT_EQ(format_duration(2h), "2h");
}

TEST(Size, KubernetesSuffixes) {
  EXPECT_EQ(tapwire::parse_size("1Gi"), 1ull << 30);
  EXPECT_EQ(tapwire::parse_size("500Mi"), 500ull << 20);
  EXPECT_EQ(tapwire::parse_size("64Ki"), 64ull << 10);
  EXPECT_EQ(tapwire::parse_size("1GiB"), 1ull << 30);
  EXPECT_FALSE(tapwire::parse_size("-1Gi").has_value());
}

// ------------------------------------------------------------- defaults --

TEST(Config, DefaultsEqualTheFlagDefaults) {
  TapwireConfig c;
  EXPECT_EQ(c.data_dir, "/var/lib/tapwire");
  EXPECT_EQ(c.control_socket_path(), "/var/lib/tapwire/control.sock");
  EXPECT_TRUE(c.interfaces.empty());
  EXPECT_EQ(c.snaplen, 0u);
  EXPECT_EQ(c.capture.raw.storage_size, 1ull << 30);
  EXPECT_EQ(c.capture.raw.segment_size, 64ull << 20);
  EXPECT_EQ(c.capture.raw.segment_max_age, 60s);
  EXPECT_EQ(c.capture.raw.ring_size, 0u);  // "auto", as --ring-size
  EXPECT_TRUE(c.capture.raw.enabled);
  EXPECT_TRUE(c.capture.stopped);  // dissection off until enabled, as without --dissection
  EXPECT_EQ(c.capture.dissection.stop_after, 5min);
  EXPECT_EQ(c.enabled_dissectors, tapwire::config::known_dissectors());  // every dissector this build has
  EXPECT_EQ(c.dissection.max_body, 64u << 10);
  EXPECT_EQ(c.dissection.max_header, 64u << 10);
  EXPECT_EQ(c.metrics.address, "127.0.0.1:7477");
}

TEST(Config, RingSizeIsAutoOrASize) {
  EXPECT_EQ(load_config_text("tap:\n  capture:\n    raw:\n      ringSize: auto\n", "t").capture.raw.ring_size, 0u);
  EXPECT_EQ(load_config_text("tap:\n  capture:\n    raw:\n      ringSize: 16Mi\n", "t").capture.raw.ring_size,
            16u << 20);
  EXPECT_THROW(load_config_text("tap:\n  capture:\n    raw:\n      ringSize: 1k\n", "t"), ConfigError);
}

TEST(Config, ShippedFileEqualsTheDefaults) {
  const auto path = source_dir() / "configs" / "tapwire.yaml";
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  EXPECT_EQ(load_config(path.string()), TapwireConfig{});
}

TEST(Config, EmptyFileIsTheDefaults) {
  EXPECT_EQ(load_config_text("", "x"), TapwireConfig{});
  EXPECT_EQ(load_config_text("# only a comment\n", "x"), TapwireConfig{});
  EXPECT_EQ(load_config_text("---\n", "x"), TapwireConfig{});
  EXPECT_EQ(load_config_text("tap:\n", "x"), TapwireConfig{});
  EXPECT_EQ(load_config_text("tap:\n  capture:\n", "x"), TapwireConfig{});

  char tmpl[] = "/tmp/tw-config-test-XXXXXX";
  int fd = mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  close(fd);
  EXPECT_EQ(load_config(tmpl), TapwireConfig{});
  std::filesystem::remove(tmpl);
}

// Collects the leaf keys of a YAML mapping as dotted paths.
void leaves(const YAML::Node& n, const std::string& path, std::vector<std::string>& out) {
  if (!n.IsMap()) {
    out.push_back(path);
    return;
  }
  for (auto it = n.begin(); it != n.end(); ++it)
    leaves(it->second, path.empty() ? it->first.Scalar() : path + "." + it->first.Scalar(), out);
}

TEST(Config, ShippedFileAndReadmeListEveryKey) {
  std::vector<std::string> in_file;
  leaves(YAML::LoadFile((source_dir() / "configs" / "tapwire.yaml").string()), "", in_file);
  EXPECT_EQ(in_file, known_keys()) << "configs/tapwire.yaml must hold every key, in the loader's order";

  const std::string readme = read_file(source_dir() / "configs" / "README.md");
  for (const auto& k : known_keys()) EXPECT_NE(readme.find("| `" + k + "` |"), std::string::npos) << k;
}

// ------------------------------------------------------------ overrides --

TEST(Config, ValidOverridesParse) {
  const char* text = R"(# every key set to something else
tap:
  dataDir: /srv/tapwire
  controlSocket: /run/tapwire.sock
  interfaces: [eth0, 'veth.*']
  snaplen: 1500
  filters:
    cidrs:
      allow: [10.0.0.0/8, "fd00::/8"]
      deny:
        - 10.1.2.3
        - 10.9.0.0/16
    ports:
      allow: [80, 443, 53]
      deny: [22]
  capture:
    stopped: true
    raw:
      enabled: false
      storageSize: 4Gi
      segmentSize: 32MiB
      segmentMaxAge: 2m
      ringSize: 16777216
    dissection:
      stopAfter: 0
  enabledDissectors: [dns]
  dissection:
    maxBody: 0
    maxHeader: 16k
  snapshots:
    storageSize: 500Mi
  metrics:
    address: "127.0.0.1:9200"
)";
  TapwireConfig c = load_config_text(text, "x");
  EXPECT_EQ(c.data_dir, "/srv/tapwire");
  EXPECT_EQ(c.control_socket_path(), "/run/tapwire.sock");
  EXPECT_EQ(c.interfaces, (std::vector<std::string>{"eth0", "veth.*"}));
  EXPECT_EQ(c.snaplen, 1500u);
  EXPECT_EQ(c.filters.allow_cidrs, (std::vector<std::string>{"10.0.0.0/8", "fd00::/8"}));
  EXPECT_EQ(c.filters.deny_cidrs, (std::vector<std::string>{"10.1.2.3", "10.9.0.0/16"}));
  EXPECT_EQ(c.filters.allow_ports, (std::vector<uint16_t>{80, 443, 53}));
  EXPECT_EQ(c.filters.deny_ports, (std::vector<uint16_t>{22}));
  EXPECT_TRUE(c.capture.stopped);
  EXPECT_FALSE(c.capture.raw.enabled);
  EXPECT_EQ(c.capture.raw.storage_size, 4ull << 30);
  EXPECT_EQ(c.capture.raw.segment_size, 32ull << 20);
  EXPECT_EQ(c.capture.raw.segment_max_age, 120s);
  EXPECT_EQ(c.capture.raw.ring_size, 16u << 20);
  EXPECT_EQ(c.capture.dissection.stop_after, 0s);
  EXPECT_EQ(c.enabled_dissectors, (std::vector<std::string>{"dns"}));
  EXPECT_EQ(c.dissection.max_body, 0u);
  EXPECT_EQ(c.dissection.max_header, 16u << 10);
  EXPECT_EQ(c.snapshots.storage_size, 500ull << 20);
  EXPECT_EQ(c.metrics.address, "127.0.0.1:9200");
}

TEST(Config, PartialFileKeepsOtherDefaults) {
  TapwireConfig c = load_config_text("tap:\n  capture:\n    dissection:\n      stopAfter: 2s\n", "x");
  TapwireConfig want;
  want.capture.dissection.stop_after = 2s;
  EXPECT_EQ(c, want);
  // An empty list key is an empty list; the socket follows the data dir.
  c = load_config_text("tap:\n  dataDir: /tmp/tw/\n  interfaces:\n  enabledDissectors: []\n", "x");
  EXPECT_TRUE(c.interfaces.empty());
  EXPECT_TRUE(c.enabled_dissectors.empty());
  EXPECT_EQ(c.control_socket_path(), "/tmp/tw/control.sock");
  EXPECT_EQ(load_config_text("tap:\n  metrics:\n    address: '[::1]:9100'\n", "x").metrics.address, "[::1]:9100");
}

// ------------------------------------------------------------ rejection --

TEST(ConfigRejects, UnknownKeyWithSuggestion) {
  expect_rejected("tap:\n  capture:\n    raw:\n      storagesize: 1Gi\n", "tap.capture.raw.storagesize", 4,
                  "unknown key; did you mean 'tap.capture.raw.storageSize'?");
  expect_rejected("tap:\n  capture:\n    stopAfter: 5m\n", "tap.capture.stopAfter", 3,
                  "did you mean 'tap.capture.dissection.stopAfter'?");
  expect_rejected("tap:\n  enabledDisectors: [http]\n", "tap.enabledDisectors", 2,
                  "did you mean 'tap.enabledDissectors'?");
  expect_rejected("# c\ntapp:\n  dataDir: /x\n", "tapp", 2, "did you mean 'tap'?");
  expect_rejected("tap:\n  frobnicate: 1\n", "tap.frobnicate", 2, "unknown key");
  expect_rejected("tap:\n  pods: [a]\n", "tap.pods", 2, "not supported: target pods with tap.regex");
  expect_rejected("tap:\n  regex: '(a'\n", "tap.regex", 2, "bad regular expression");
  expect_rejected("tap:\n  namespaces: [Shop]\n", "tap.namespaces", 2, "is not a namespace name");
  expect_rejected("tap:\n  dataDir: /a\n  dataDir: /b\n", "tap.dataDir", 3, "duplicate key");
}

TEST(ConfigRejects, WrongType) {
  expect_rejected("tap:\n  capture:\n    stopped: maybe\n", "tap.capture.stopped", 3, "expected true or false");
  expect_rejected("tap:\n  snaplen: [1]\n", "tap.snaplen", 2, "expected a size");
  expect_rejected("tap:\n  interfaces: eth0\n", "tap.interfaces", 2, "expected a list");
  expect_rejected("tap:\n  capture: true\n", "tap.capture", 2, "expected a mapping");
  expect_rejected("tap:\n  dataDir: {a: 1}\n", "tap.dataDir", 2, "expected a string");
  expect_rejected("tap:\n  dataDir:\n  snaplen: 0\n", "tap.dataDir", 2, "got no value");
  expect_rejected("tap:\n  filters:\n    ports:\n      allow: [http]\n", "tap.filters.ports.allow", 4,
                  "expected a port number");
  ConfigError e = rejected("- tap\n");
  EXPECT_EQ(e.line(), 1);
  EXPECT_NE(std::string(e.what()).find("top-level 'tap'"), std::string::npos) << e.what();
}

TEST(ConfigRejects, NegativeOrZeroOrOutOfRangeSize) {
  expect_rejected("tap:\n  capture:\n    raw:\n      storageSize: -1Gi\n", "tap.capture.raw.storageSize", 4,
                  "must be positive, got '-1Gi'");
  expect_rejected("tap:\n  snapshots:\n    storageSize: 0\n", "tap.snapshots.storageSize", 3, "must be positive");
  expect_rejected("tap:\n  dissection:\n    maxHeader: 0\n", "tap.dissection.maxHeader", 3, "must be positive");
  expect_rejected("tap:\n  snaplen: -5\n", "tap.snaplen", 2, "must not be negative");
  expect_rejected("tap:\n  capture:\n    raw:\n      storageSize: 100Ki\n", "tap.capture.raw.storageSize", 4,
                  "must be at least 1.0 MiB");
  expect_rejected("tap:\n  capture:\n    raw:\n      ringSize: 2Gi\n", "tap.capture.raw.ringSize", 4,
                  "must be at most 1.0 GiB");
  expect_rejected("tap:\n  capture:\n    raw:\n      segmentSize: 1.5Gi\n", "tap.capture.raw.segmentSize", 4,
                  "not a size");
}

TEST(ConfigRejects, UnknownDissector) {
  expect_rejected("tap:\n  enabledDissectors:\n    - http\n    - gopher\n", "tap.enabledDissectors", 4,
                  "unknown dissector 'gopher' (this build has: http, ws, amqp, postgres, mysql, mongodb, kafka, redis, dns, icmp, tcp, udp)");
}

TEST(ConfigRejects, BadDuration) {
  expect_rejected("tap:\n  capture:\n    dissection:\n      stopAfter: 5\n", "tap.capture.dissection.stopAfter", 4,
                  "bad duration '5'");
  expect_rejected("tap:\n  capture:\n    dissection:\n      stopAfter: soon\n", "tap.capture.dissection.stopAfter",
                  4, "bad duration 'soon'");
  expect_rejected("tap:\n  capture:\n    dissection:\n      stopAfter: -2s\n", "tap.capture.dissection.stopAfter",
                  4, "must not be negative");
  expect_rejected("tap:\n  capture:\n    raw:\n      segmentMaxAge: 0\n", "tap.capture.raw.segmentMaxAge", 4,
                  "between 1s and 24h");
  expect_rejected("tap:\n  capture:\n    raw:\n      segmentMaxAge: 1500ms\n", "tap.capture.raw.segmentMaxAge", 4,
                  "whole seconds");
}

TEST(ConfigRejects, BadCidr) {
  expect_rejected("tap:\n  filters:\n    cidrs:\n      allow:\n        - 10.0.0.0/8\n        - 10.0.0.0/33\n",
                  "tap.filters.cidrs.allow", 6, "bad CIDR '10.0.0.0/33'");
  expect_rejected("tap:\n  filters:\n    cidrs:\n      deny: [example.com]\n", "tap.filters.cidrs.deny", 4,
                  "bad CIDR 'example.com'");
  expect_rejected("tap:\n  filters:\n    cidrs:\n      deny: ['fd00::/129']\n", "tap.filters.cidrs.deny", 4,
                  "at most 128");
  expect_rejected("tap:\n  filters:\n    cidrs:\n      deny: ['10.0.0.0/']\n", "tap.filters.cidrs.deny", 4,
                  "prefix length");
}

TEST(ConfigRejects, PortOutOfRange) {
  expect_rejected("tap:\n  filters:\n    ports:\n      deny: [22, 70000]\n", "tap.filters.ports.deny", 4,
                  "port out of range (1-65535): 70000");
  expect_rejected("tap:\n  filters:\n    ports:\n      allow:\n        - 0\n", "tap.filters.ports.allow", 5,
                  "port out of range");
}

TEST(ConfigRejects, BadRegexAndAddresses) {
  expect_rejected("tap:\n  interfaces:\n    - eth0\n    - 'veth('\n", "tap.interfaces", 4,
                  "bad regular expression 'veth('");
  expect_rejected("tap:\n  metrics:\n    address: '9100'\n", "tap.metrics.address", 3, "expected HOST:PORT");
  expect_rejected("tap:\n  metrics:\n    address: ':99999'\n", "tap.metrics.address", 3, "1-65535");
  expect_rejected("tap:\n  dataDir: ''\n", "tap.dataDir", 2, "must not be empty");
  expect_rejected("tap:\n  controlSocket: /" + std::string(120, 'x') + "\n", "tap.controlSocket", 2,
                  "at most 107 bytes");
}

TEST(ConfigRejects, YamlSyntaxAndFiles) {
  ConfigError e = rejected("tap:\n  interfaces: [eth0\n");
  EXPECT_EQ(e.key(), "");
  EXPECT_GT(e.line(), 0);
  EXPECT_NE(std::string(e.what()).find("not valid YAML"), std::string::npos) << e.what();

  try {
    load_config("/nonexistent/tapwire.yaml");
    ADD_FAILURE() << "a missing file was accepted";
  } catch (const ConfigError& err) {
    EXPECT_NE(std::string(err.what()).find("/nonexistent/tapwire.yaml"), std::string::npos) << err.what();
  }
}

// ----------------------------------------------------------------- flags --

TEST(FlagOverrides, FlagsWinOverTheFileAtStartAndOnReload) {
  char tmpl[] = "/tmp/tw-config-test-XXXXXX";
  int fd = mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  close(fd);
  const std::string path = tmpl;
  auto write = [&](const std::string& text) { std::ofstream(path, std::ios::trunc) << text; };
  write("tap:\n  dataDir: /from/file\n  interfaces: [eth0, eth1]\n  snaplen: 100\n");

  CLI::App app;
  std::string config_path, data_dir;
  std::vector<std::string> interfaces;
  uint32_t snaplen = 0;
  app.add_option("--config", config_path);
  app.add_option("--data-dir", data_dir)->capture_default_str();
  app.add_option("-i,--interface", interfaces);
  auto* snap = app.add_option("--snaplen", snaplen);
  std::vector<std::string> args = {"prog", "--config", path, "--interface", "veth.*", "--snaplen", "200"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  app.parse(static_cast<int>(argv.size()), argv.data());

  FlagOverrides flags;
  flags.when_given(app, "--data-dir", [v = data_dir](TapwireConfig& c) { c.data_dir = v; });  // not given
  flags.when_given(app, "--interface", [v = interfaces](TapwireConfig& c) { c.interfaces = v; });
  flags.when_given(snap, [v = snaplen](TapwireConfig& c) { c.snaplen = v; });

  TapwireConfig c = flags.load(config_path);
  EXPECT_EQ(c.data_dir, "/from/file");
  EXPECT_EQ(c.interfaces, (std::vector<std::string>{"veth.*"}));  // the flag replaces the file's list
  EXPECT_EQ(c.snaplen, 200u);

  // Reload: the new file is read, the same flags win again.
  write("tap:\n  dataDir: /from/new/file\n  snaplen: 300\n");
  c = flags.load(config_path);
  EXPECT_EQ(c.data_dir, "/from/new/file");
  EXPECT_EQ(c.snaplen, 200u);
  EXPECT_EQ(c.interfaces, (std::vector<std::string>{"veth.*"}));

  // A bad new file throws; the caller keeps the config it has.
  write("tap:\n  snaplen: lots\n");
  EXPECT_THROW(c = flags.load(config_path), ConfigError);
  EXPECT_EQ(c.data_dir, "/from/new/file");

  // No --config: the defaults plus the flags.
  c = flags.load("");
  EXPECT_EQ(c.data_dir, "/var/lib/tapwire");
  EXPECT_EQ(c.snaplen, 200u);
  std::filesystem::remove(path);
}

}  // namespace

// The config accepts exactly the dissectors the protocol registry has.
TEST(Config, KnowsTheRegistrysDissectors) {
  auto names = tapwire::proto::dissector_names();
  for (auto& f : tapwire::config::flow_dissectors()) names.push_back(f);  // tcp, udp: flow accounting
  EXPECT_EQ(tapwire::config::known_dissectors(), names);
}

// tap.flows.*: flow accounting (docs/FLOWS.md).
TEST(Config, FlowKeys) {
  auto c = tapwire::config::load_config_text(
      "tap:\n  enabledDissectors: [http, tcp]\n  flows:\n    maxFlows: 4096\n    storageSize: 8Mi\n"
      "    interval: 5s\n    udpTimeout: 2m\n    synTimeout: 10s\n    tcpIdleTimeout: 1h\n    metricsMaxPairs: 20\n",
      "t");
  EXPECT_EQ(c.enabled_dissectors, (std::vector<std::string>{"http", "tcp"}));
  EXPECT_EQ(c.flows.max_flows, 4096u);
  EXPECT_EQ(c.flows.storage_size, 8ull << 20);
  EXPECT_EQ(c.flows.interval, std::chrono::seconds(5));
  EXPECT_EQ(c.flows.udp_timeout, std::chrono::seconds(120));
  EXPECT_EQ(c.flows.syn_timeout, std::chrono::seconds(10));
  EXPECT_EQ(c.flows.tcp_idle_timeout, std::chrono::seconds(3600));
  EXPECT_EQ(c.flows.metrics_max_pairs, 20u);
  EXPECT_THROW(tapwire::config::load_config_text("tap:\n  flows:\n    maxFlows: 10\n", "t"), ConfigError);
  EXPECT_THROW(tapwire::config::load_config_text("tap:\n  flows:\n    interval: 0\n", "t"), ConfigError);
  EXPECT_THROW(tapwire::config::load_config_text("tap:\n  flows:\n    storageSize: 1Mi\n", "t"), ConfigError);
}

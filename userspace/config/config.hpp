// tapwire.yaml: the configuration file of tapwire-sensor and tapwire-dissector.
//
// Keys mirror Kubeshark's `tap.*` values (DESIGN.md) so that its users feel at
// home; configs/README.md documents each one, configs/tapwire.yaml holds every
// key with its default. The defaults below equal the sensor's and the
// dissector's flag defaults: an empty file, or no file, changes nothing.
//
// Flags override the file. The pattern for main() is in config_flags.hpp
// (FlagOverrides): parse the command line, remember which flags were given,
// load the file, apply those flags on top; on SIGHUP load again and apply the
// same flags again, keeping the old config when the new file is rejected.
#pragma once

#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tapwire::config {

// tap.filters.*: in-kernel capture filters; deny wins (see the sensor's --allow-cidr...).
struct FilterConfig {
  std::vector<std::string> allow_cidrs;  // tap.filters.cidrs.allow: "10.0.0.0/8", "fd00::/8", "1.2.3.4"
  std::vector<std::string> deny_cidrs;   // tap.filters.cidrs.deny
  std::vector<uint16_t> allow_ports;     // tap.filters.ports.allow: 1-65535
  std::vector<uint16_t> deny_ports;      // tap.filters.ports.deny
  bool operator==(const FilterConfig&) const = default;
};

// tap.capture.raw.*: the always-on raw capture into segment files.
struct RawCaptureConfig {
  bool enabled = true;                                  // tap.capture.raw.enabled
  uint64_t storage_size = 1ull << 30;                   // tap.capture.raw.storageSize (--storage-size), >= 1MiB
  uint64_t segment_size = 64ull << 20;                  // tap.capture.raw.segmentSize (--segment-size), >= 64KiB
  std::chrono::seconds segment_max_age{60};             // tap.capture.raw.segmentMaxAge (--segment-max-age), 1s-24h
  uint32_t ring_size = 0;  // tap.capture.raw.ringSize (--ring-size), per CPU, 4KiB-1GiB; 0 = "auto"
  bool operator==(const RawCaptureConfig&) const = default;
};

// tap.capture.dissection.*: the dissection lifecycle run by the sensor.
struct DissectionLifecycleConfig {
  // Dissection stops by itself after this long without activity; 0 = never.
  std::chrono::nanoseconds stop_after = std::chrono::minutes(5);  // tap.capture.dissection.stopAfter
  bool operator==(const DissectionLifecycleConfig&) const = default;
};

struct CaptureConfig {
  // tap.capture.stopped: L7 dissection off at start (raw capture unaffected).
  // On by default, unlike Kubeshark: dissection is the expensive part, switched
  // on while someone investigates (tapwire dissection enable, SIGUSR1).
  bool stopped = true;
  // tap.capture.attach (--attach): tcx links ("tcx", Linux 6.6+), TC clsact
  // filters with tapwire's own handle ("tc"), or tcx where the kernel has it ("auto").
  std::string attach = "auto";
  // tap.capture.dbMaxSize: the live dissection DB's bound; the oldest calls
  // are deleted beyond it. 0 = no bound, else >= 1Mi.
  uint64_t db_max_size = 500ull << 20;
  RawCaptureConfig raw;
  DissectionLifecycleConfig dissection;
  bool operator==(const CaptureConfig&) const = default;
};

// tap.dissection.*: what the dissector keeps of each message (--max-body, --max-header),
// and of everything together (--memory-limit).
struct DissectionLimitsConfig {
  uint64_t max_body = 64u << 10;    // tap.dissection.maxBody: body bytes kept per message; 0 = none
  uint64_t max_header = 64u << 10;  // tap.dissection.maxHeader: header bytes allowed per message, > 0
  // tap.dissection.memoryLimit: heap for the dissector's state (flows, reassembly, buffers,
  // waiting requests); beyond it state is shed, least useful first. 0 = no limit, else >= 1Mi.
  uint64_t memory_limit = 256ull << 20;
  bool operator==(const DissectionLimitsConfig&) const = default;
};

struct SnapshotsConfig {
  uint64_t storage_size = 20ull << 30;  // tap.snapshots.storageSize: room for snapshots under DATA_DIR
  bool operator==(const SnapshotsConfig&) const = default;
};

struct MetricsConfig {
  std::string address = "127.0.0.1:7477";  // tap.metrics.address (--metrics-address): HOST:PORT, ":PORT" = all addresses
  bool operator==(const MetricsConfig&) const = default;
};

// tap.kubernetes.*: where pod identity comes from (docs/IDENTITY.md).
struct KubernetesConfig {
  // tap.kubernetes.enabled: "auto" (in a cluster, or with a kubeconfig), "true" or "false".
  std::string enabled = "auto";
  std::string kubeconfig;  // tap.kubernetes.kubeconfig (--kubeconfig); "" = in-cluster service account
  bool operator==(const KubernetesConfig&) const = default;
};

// tap.identity.*: process identity from socket hooks and the identity stream.
struct IdentityConfig {
  bool enabled = true;                    // tap.identity.enabled: socket/process hooks and DATA_DIR/identity
  uint64_t storage_size = 256ull << 20;   // tap.identity.storageSize: size of DATA_DIR/identity, >= 4MiB
  bool operator==(const IdentityConfig&) const = default;
};

// tap.flows.*: flow accounting (docs/FLOWS.md). The kernel counts every TCP
// and UDP flow (tap.enabledDissectors tcp / udp); the sensor writes flow
// records to DATA_DIR/flows/.
struct FlowsConfig {
  uint32_t max_flows = 65536;                         // tap.flows.maxFlows: kernel flow table entries, 1024-16777216
  uint64_t storage_size = 64ull << 20;                // tap.flows.storageSize: size of DATA_DIR/flows, >= 4MiB
  std::chrono::seconds interval{10};                  // tap.flows.interval: a live flow's record at most this often, 1s-1h
  std::chrono::seconds udp_timeout{60};               // tap.flows.udpTimeout: a UDP flow ends after this long idle
  std::chrono::seconds syn_timeout{30};               // tap.flows.synTimeout: an unanswered SYN ends after this long
  std::chrono::seconds tcp_idle_timeout{600};         // tap.flows.tcpIdleTimeout: a TCP flow ends after this long idle
  uint32_t metrics_max_pairs = 500;                   // tap.flows.metricsMaxPairs: workload pairs in the flow metrics
  bool operator==(const FlowsConfig&) const = default;
};

struct TapwireConfig {
  std::string data_dir = "/var/lib/tapwire";  // tap.dataDir (--data-dir)
  std::string control_socket;                 // tap.controlSocket (--control-socket); "" = DATA_DIR/control.sock
  std::vector<std::string> interfaces;        // tap.interfaces (--interface): names or regexes; empty = all but lo
  std::string node_name;                      // tap.nodeName (--node-name); "" = $NODE_NAME, else the hostname
  // Pod targeting (Kubeshark's keys): which pods' traffic is captured at all.
  std::string regex = ".*";                   // tap.regex (--regex): pod names, POSIX extended, matched anywhere
  std::vector<std::string> namespaces;        // tap.namespaces (--namespace): empty = every namespace
  std::vector<std::string> excluded_namespaces;  // tap.excludedNamespaces (--exclude-namespace)
  uint32_t snaplen = 0;                       // tap.snaplen (--snaplen): payload bytes kept per packet; 0 = all
  FilterConfig filters;
  CaptureConfig capture;
  // tap.enabledDissectors: the L7 dissectors, and tcp / udp: flow accounting in the kernel.
  std::vector<std::string> enabled_dissectors = {"http", "ws", "amqp", "postgres", "mysql", "mongodb", "kafka", "redis", "dns", "icmp", "tcp", "udp"};
  std::vector<std::string> grpc_proto_paths;  // tap.grpc.protoPaths: .proto files and directories
  DissectionLimitsConfig dissection;
  SnapshotsConfig snapshots;
  MetricsConfig metrics;
  KubernetesConfig kubernetes;
  IdentityConfig identity;
  FlowsConfig flows;

  // The control socket to use: control_socket, or DATA_DIR/control.sock when
  // empty (so that --data-dir alone moves the socket along with the data).
  std::string control_socket_path() const;

  bool operator==(const TapwireConfig&) const = default;
};

// A rejected configuration. what() is one line for the user:
//   "/etc/tapwire/tapwire.yaml:12: tap.capture.raw.storageSize: must be positive, got '-1Gi'"
class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string file, int line, std::string key, std::string problem);
  const std::string& file() const { return file_; }
  int line() const { return line_; }  // 1-based; 0 when no line applies (unreadable file)
  const std::string& key() const { return key_; }  // dotted path; "" when no key applies (YAML syntax)
  const std::string& problem() const { return problem_; }

 private:
  std::string file_, key_, problem_;
  int line_;
};

// Reads and checks a tapwire.yaml. An empty file (or one with comments only)
// yields the defaults. Throws ConfigError on an unreadable file, bad YAML, an
// unknown key (with the closest known key as a suggestion), a value of the
// wrong type, or a bad value (size <= 0, bad duration, unknown dissector, bad
// CIDR, port out of range, bad interface regex, ...).
TapwireConfig load_config(const std::string& path);
// The same on text already in memory; `source` names it in errors.
TapwireConfig load_config_text(const std::string& text, const std::string& source);

// Every key the file accepts, as dotted paths ("tap.capture.raw.storageSize"),
// leaves only, in file order. configs/tapwire.yaml and configs/README.md list
// each of them (a unit test checks that).
const std::vector<std::string>& known_keys();

// The dissectors this build has ("http", "ws", "dns", "icmp", ...).
const std::vector<std::string>& known_dissectors();
// The names in known_dissectors() that are not L7 dissectors: flow accounting
// of TCP and UDP (the kernel counts it; the dissector ignores these names).
const std::vector<std::string>& flow_dissectors();

}  // namespace tapwire::config

// tapwire-sensor: raw capture daemon. See README.md and docs/ARCHITECTURE.md.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "segment.hpp"
#include "sensor.hpp"
#include "config.hpp"
#include "config_flags.hpp"
#include "units.hpp"

namespace {

// A CLI11 validator-and-converter for sizes such as 1GiB.
uint64_t size_option(const std::string& flag, const std::string& text) {
  auto v = tapwire::parse_size(text);
  if (!v) throw CLI::ValidationError(flag, "'" + text + "' is not a size (examples: 1GiB, 64MiB, 4096)");
  return *v;
}

// The ring size "auto" (0): 32 MiB shared by the CPUs, 4-16 MiB each: rings
// that stay in the last-level cache, and an idle sensor under 60 MB resident
// (the rings are mapped whole). Drained straight to disk, a 16 MiB ring
// kept up with 4.2 Gbit/s of one iperf3 stream on a 2-CPU VM, 32 MiB with
// 5.5 (docs/BENCHMARKS.md); --ring-size buys more room for bursts.
uint32_t ring_bytes_for(uint32_t configured) {
  if (configured) return configured;
  long ncpu = sysconf(_SC_NPROCESSORS_CONF);
  return static_cast<uint32_t>(
      std::clamp<uint64_t>((32ull << 20) / static_cast<uint64_t>(ncpu > 0 ? ncpu : 1), 4ull << 20, 16ull << 20));
}

}  // namespace

namespace tapwire::sensor {

// The effective configuration (file + flags) as the sensor's options.
void apply_config(const config::TapwireConfig& c, SensorOptions& o) {
  o.interfaces = c.interfaces;
  o.data_dir = c.data_dir;
  o.storage_size = c.capture.raw.storage_size;
  o.segment_size = c.capture.raw.segment_size;
  o.segment_max_age_s = static_cast<uint64_t>(c.capture.raw.segment_max_age.count());
  o.ring_bytes = ring_bytes_for(c.capture.raw.ring_size);
  o.filters.allow_cidrs = c.filters.allow_cidrs;
  o.filters.deny_cidrs = c.filters.deny_cidrs;
  o.filters.allow_ports = c.filters.allow_ports;
  o.filters.deny_ports = c.filters.deny_ports;
  o.filters.snaplen = c.snaplen;
  o.metrics_address = c.metrics.address;
  o.control_socket = c.control_socket_path();
  o.dissection = !c.capture.stopped;
  o.dissection_stop_after_ns = static_cast<uint64_t>(c.capture.dissection.stop_after.count());
  o.raw_capture = c.capture.raw.enabled;
  o.dissector_args = {"--max-body", std::to_string(c.dissection.max_body), "--max-header",
                      std::to_string(c.dissection.max_header)};
  o.dissector_args.insert(o.dissector_args.end(), {"--memory-limit", std::to_string(c.dissection.memory_limit),
                                                   "--db-max-size", std::to_string(c.capture.db_max_size)});
  o.attach = c.capture.attach;
  std::string ds;
  for (auto& d : c.enabled_dissectors) ds += (ds.empty() ? "" : ",") + d;
  o.dissector_args.push_back("--dissectors");
  o.dissector_args.push_back(ds.empty() ? "none" : ds);
  if (!c.grpc_proto_paths.empty()) {
    std::string paths;
    for (auto& p : c.grpc_proto_paths) paths += (paths.empty() ? "" : ",") + p;
    o.dissector_args.push_back("--grpc-proto-paths");
    o.dissector_args.push_back(paths);
  }
  auto has = [&](const char* d) {
    return std::find(c.enabled_dissectors.begin(), c.enabled_dissectors.end(), d) != c.enabled_dissectors.end();
  };
  o.flow_accounting.tcp = has("tcp");
  o.flow_accounting.udp = has("udp");
  o.flow_accounting.max_flows = c.flows.max_flows;
  o.flows.storage_size = c.flows.storage_size;
  o.flows.interval_ns = static_cast<uint64_t>(c.flows.interval.count()) * 1000000000ull;
  o.flows.udp_timeout_ns = static_cast<uint64_t>(c.flows.udp_timeout.count()) * 1000000000ull;
  o.flows.syn_timeout_ns = static_cast<uint64_t>(c.flows.syn_timeout.count()) * 1000000000ull;
  o.flows.tcp_idle_timeout_ns = static_cast<uint64_t>(c.flows.tcp_idle_timeout.count()) * 1000000000ull;
  o.flows.metrics_max_pairs = c.flows.metrics_max_pairs;
  o.identity = c.identity.enabled;
  o.identity_storage_size = c.identity.storage_size;
  o.node_name = c.node_name;
  o.kubernetes = c.kubernetes.enabled;
  o.kubeconfig = c.kubernetes.kubeconfig;
  o.targets.regex = c.regex;
  o.targets.namespaces = c.namespaces;
  o.targets.excluded = c.excluded_namespaces;
}

}  // namespace tapwire::sensor

int main(int argc, char** argv) {
  using tapwire::config::TapwireConfig;
  tapwire::sensor::Sensor::block_signals();
  tapwire::sensor::SensorOptions o;
  std::string config_path, data_dir, storage, segment, ring, metrics, control, dissector;
  std::vector<std::string> interfaces, allow_cidrs, deny_cidrs, namespaces, excluded_namespaces, kube_args;
  std::string kubeconfig, node_name, regex;
  bool no_identity = false;
  std::vector<uint16_t> allow_ports, deny_ports;
  uint64_t segment_max_age = 60;
  uint32_t snaplen = 0;
  double stop_after_s = 300;
  bool dissection = false;

  CLI::App app{"tapwire-sensor: captures the L4 payloads crossing this host's interfaces into segment files"};
  app.set_version_flag("--version", std::string("tapwire-sensor ") + TAPWIRE_VERSION);
  app.add_option("--config", config_path, "tapwire.yaml to read (flags override it; SIGHUP reloads it)");
  app.add_option("-i,--interface", interfaces,
                 "interface name or regular expression (repeatable; default: every interface but loopback)");
  app.add_option("--data-dir", data_dir, "where segment files and state live (default /var/lib/tapwire)");
  app.add_option("--storage-size", storage, "total size of the segment ring (default 1GiB)");
  app.add_option("--segment-size", segment, "size of one segment file (default 64MiB)");
  app.add_option("--segment-max-age", segment_max_age, "seconds after which a segment is sealed even if not full")
      ->check(CLI::Range(1, 86400));
  app.add_option("--ring-size", ring, "capture ring per CPU (default auto: 32MiB shared by the CPUs, 4-16MiB each)");
  app.add_option("--snaplen", snaplen, "payload bytes kept per packet (default 0: all)");
  app.add_option("--allow-cidr", allow_cidrs, "capture only traffic to or from these CIDRs (repeatable)");
  app.add_option("--deny-cidr", deny_cidrs, "never capture traffic to or from these CIDRs (repeatable)");
  app.add_option("--allow-port", allow_ports, "capture only traffic to or from these ports (repeatable)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--deny-port", deny_ports, "never capture traffic to or from these ports (repeatable)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--metrics-address", metrics,
                 "serve Prometheus metrics at HOST:PORT/metrics (default 127.0.0.1:7477; :PORT: every address; empty: off)");
  app.add_option("--control-socket", control, "the control socket (default: DATA_DIR/control.sock)");
  app.add_flag("--dissection", dissection, "start with L7 dissection enabled (tap.capture.stopped: false)");
  app.add_option("--dissection-stop-after", stop_after_s,
                 "seconds without activity after which dissection stops by itself (default 300; 0: never)")
      ->check(CLI::Range(0.0, 1e7));
  app.add_option("--dissector", o.dissector_path, "the tapwire-dissector binary (default: next to this one)");
  app.add_option("--dissector-user", o.dissector_user,
                 "the unprivileged user the dissector runs as (default: tapwire if it exists, else nobody)");
  app.add_option("--dissector-group", o.dissector_group,
                 "its group, which may write DATA_DIR (default: tapwire if it exists, else nogroup)");
  app.add_flag("--print", o.print, "print captured packets (rate-limited) and a summary every second");
  app.add_option("--node-name", node_name, "this node's name in call records (default: $NODE_NAME, else the hostname)");
  app.add_option("--kubeconfig", kubeconfig, "Kubernetes identity from this kubeconfig (default: in-cluster when in a pod)");
  app.add_option("--regex", regex, "capture only pods whose name matches this POSIX extended regex (tap.regex)");
  app.add_option("--namespace", namespaces, "capture only pods in this namespace (repeatable; tap.namespaces)");
  app.add_option("--exclude-namespace", excluded_namespaces, "never capture pods in this namespace (repeatable)");
  app.add_flag("--no-identity", no_identity, "no process identity hooks and no identity stream (tap.identity.enabled: false)");
  app.add_option("--kube-watch", o.kube_watch_path, "the tapwire-kube-watch binary (default: next to this one)");
  app.add_option("--kube-watch-arg", kube_args, "an extra flag for tapwire-kube-watch (repeatable; tests)");
  std::string attach;
  app.add_option("--attach", attach, "how to attach to interfaces: tcx (links, Linux 6.6+), tc (clsact filters), "
                                       "or auto (tcx where the kernel has it; default)")
      ->check(CLI::IsMember({"auto", "tc", "tcx"}));

  tapwire::config::FlagOverrides flags;
  TapwireConfig cfg;
  try {
    app.parse(argc, argv);
    // Flags are converted and checked here, then layered over the file on
    // every load (start and reload).
    auto size_flag = [&](const char* flag, const std::string& text, uint64_t min) {
      uint64_t v = size_option(flag, text);
      if (v < min) throw CLI::ValidationError(flag, "'" + text + "' is too small");
      return v;
    };
    flags.when_given(app, "--interface", [v = interfaces](TapwireConfig& c) { c.interfaces = v; });
    flags.when_given(app, "--data-dir", [v = data_dir](TapwireConfig& c) { c.data_dir = v; });
    if (app.count("--storage-size"))
      flags.when_given(app, "--storage-size", [v = size_flag("--storage-size", storage, 1ull << 20)](TapwireConfig& c) {
        c.capture.raw.storage_size = v;
      });
    if (app.count("--segment-size"))
      flags.when_given(app, "--segment-size", [v = size_flag("--segment-size", segment, 64ull << 10)](TapwireConfig& c) {
        c.capture.raw.segment_size = v;
      });
    flags.when_given(app, "--segment-max-age",
                     [v = segment_max_age](TapwireConfig& c) { c.capture.raw.segment_max_age = std::chrono::seconds(v); });
    if (app.count("--ring-size")) {
      uint64_t rb = ring == "auto" ? 0 : size_flag("--ring-size", ring, 64 << 10);
      if (rb > (1ull << 30)) throw CLI::ValidationError("--ring-size", "must be at most 1GiB");
      flags.when_given(app, "--ring-size", [rb](TapwireConfig& c) { c.capture.raw.ring_size = static_cast<uint32_t>(rb); });
    }
    flags.when_given(app, "--snaplen", [v = snaplen](TapwireConfig& c) { c.snaplen = v; });
    flags.when_given(app, "--allow-cidr", [v = allow_cidrs](TapwireConfig& c) { c.filters.allow_cidrs = v; });
    flags.when_given(app, "--deny-cidr", [v = deny_cidrs](TapwireConfig& c) { c.filters.deny_cidrs = v; });
    flags.when_given(app, "--allow-port", [v = allow_ports](TapwireConfig& c) { c.filters.allow_ports = v; });
    flags.when_given(app, "--deny-port", [v = deny_ports](TapwireConfig& c) { c.filters.deny_ports = v; });
    flags.when_given(app, "--metrics-address", [v = metrics](TapwireConfig& c) { c.metrics.address = v; });
    flags.when_given(app, "--control-socket", [v = control](TapwireConfig& c) { c.control_socket = v; });
    flags.when_given(app, "--dissection", [](TapwireConfig& c) { c.capture.stopped = false; });
    flags.when_given(app, "--dissection-stop-after", [v = stop_after_s](TapwireConfig& c) {
      c.capture.dissection.stop_after = std::chrono::nanoseconds(static_cast<int64_t>(v * 1e9));
    });
    flags.when_given(app, "--node-name", [v = node_name](TapwireConfig& c) { c.node_name = v; });
    flags.when_given(app, "--kubeconfig", [v = kubeconfig](TapwireConfig& c) {
      c.kubernetes.kubeconfig = v;
      if (c.kubernetes.enabled == "auto") c.kubernetes.enabled = "true";
    });
    flags.when_given(app, "--regex", [v = regex](TapwireConfig& c) { c.regex = v; });
    flags.when_given(app, "--namespace", [v = namespaces](TapwireConfig& c) { c.namespaces = v; });
    flags.when_given(app, "--exclude-namespace", [v = excluded_namespaces](TapwireConfig& c) { c.excluded_namespaces = v; });
    flags.when_given(app, "--no-identity", [](TapwireConfig& c) { c.identity.enabled = false; });
    flags.when_given(app, "--attach", [v = attach](TapwireConfig& c) { c.capture.attach = v; });
    o.kube_watch_args = kube_args;
    o.metrics_address_explicit = app.count("--metrics-address") > 0 || !config_path.empty();
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "tapwire-sensor: %s (see --help)\n", e.what());
    return 2;
  }
  try {
    cfg = flags.load(config_path);
  } catch (const tapwire::config::ConfigError& e) {
    std::fprintf(stderr, "tapwire-sensor: %s\n", e.what());
    return 2;
  }
  tapwire::sensor::apply_config(cfg, o);
  o.config_path = config_path;
  o.reload = [flags, config_path]() { return flags.load(config_path); };

  try {
    tapwire::sensor::Sensor sensor(std::move(o));
    return sensor.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tapwire-sensor: %s\n", e.what());
    return 1;
  }
}

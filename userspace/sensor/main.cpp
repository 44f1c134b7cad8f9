// tapwire-sensor: raw capture daemon. See README.md and ../shared DESIGN.md.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "segment.hpp"
#include "sensor.hpp"
#include "units.hpp"

namespace {

// A CLI11 validator-and-converter for sizes such as 1GiB.
uint64_t size_option(const std::string& flag, const std::string& text) {
  auto v = tapwire::parse_size(text);
  if (!v) throw CLI::ValidationError(flag, "'" + text + "' is not a size (examples: 1GiB, 64MiB, 4096)");
  return *v;
}

}  // namespace

int main(int argc, char** argv) {
  tapwire::sensor::Sensor::block_signals();
  tapwire::sensor::SensorOptions o;
  std::string storage = "1GiB", segment = "64MiB", ring = "auto";
  std::vector<std::string> allow_ports, deny_ports;

  CLI::App app{"tapwire-sensor: captures the L4 payloads crossing this host's interfaces into segment files"};
  app.set_version_flag("--version", std::string("tapwire-sensor ") + TAPWIRE_VERSION);
  app.add_option("-i,--interface", o.interfaces,
                 "interface name or regular expression (repeatable; default: every interface but loopback)");
  app.add_option("--data-dir", o.data_dir, "where segment files and state live")->capture_default_str();
  app.add_option("--storage-size", storage, "total size of the segment ring")->capture_default_str();
  app.add_option("--segment-size", segment, "size of one segment file")->capture_default_str();
  app.add_option("--segment-max-age", o.segment_max_age_s, "seconds after which a segment is sealed even if not full")
      ->capture_default_str()
      ->check(CLI::Range(1, 86400));
  app.add_option("--ring-size", ring,
                 "BPF ring buffer size per CPU (auto: 64MiB shared by the CPUs, 8MiB to 32MiB each)")
      ->capture_default_str();
  app.add_option("--snaplen", o.filters.snaplen, "payload bytes kept per packet (0: all)")->capture_default_str();
  app.add_option("--allow-cidr", o.filters.allow_cidrs, "capture only traffic to or from these CIDRs (repeatable)");
  app.add_option("--deny-cidr", o.filters.deny_cidrs, "never capture traffic to or from these CIDRs (repeatable)");
  app.add_option("--allow-port", o.filters.allow_ports, "capture only traffic to or from these ports (repeatable)")
      ->check(CLI::Range(1, 65535));
  app.add_option("--deny-port", o.filters.deny_ports, "never capture traffic to or from these ports (repeatable)")
      ->check(CLI::Range(1, 65535));
  auto* metrics_opt = app.add_option("--metrics-address", o.metrics_address,
                                     "serve Prometheus metrics at HOST:PORT/metrics (empty: off)")
                          ->capture_default_str();
  app.add_option("--control-socket", o.control_socket, "the control socket (default: DATA_DIR/control.sock)");
  app.add_flag("--dissection", o.dissection, "start with L7 dissection enabled (tapwire-dissector as a child)");
  double stop_after_s = 300;
  app.add_option("--dissection-stop-after", stop_after_s,
                 "seconds without activity after which dissection stops by itself (0: never)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e7));
  app.add_option("--dissector", o.dissector_path, "the tapwire-dissector binary (default: next to this one)");
  app.add_flag("--print", o.print, "print captured packets (rate-limited) and a summary every second");

  try {
    app.parse(argc, argv);
    o.metrics_address_explicit = metrics_opt->count() > 0;
    o.dissection_stop_after_ns = static_cast<uint64_t>(stop_after_s * 1e9);
    o.storage_size = size_option("--storage-size", storage);
    o.segment_size = size_option("--segment-size", segment);
    uint64_t rb = ring == "auto" ? 0 : size_option("--ring-size", ring);
    if (ring == "auto") {
      // Enough for ~50 ms of a 1 GB/s burst on a small node without costing a
      // big node gigabytes: 64 MiB in all, 8 to 32 MiB per CPU.
      long ncpu = sysconf(_SC_NPROCESSORS_CONF);
      rb = std::clamp<uint64_t>((64ull << 20) / static_cast<uint64_t>(ncpu > 0 ? ncpu : 1), 8ull << 20, 32ull << 20);
    }
    if (rb < 4096 || rb > (1ull << 30)) throw CLI::ValidationError("--ring-size", "must be between 4KiB and 1GiB");
    o.ring_bytes = static_cast<uint32_t>(rb);
    if (o.storage_size < (1ull << 20)) throw CLI::ValidationError("--storage-size", "must be at least 1MiB");
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "tapwire-sensor: %s (see --help)\n", e.what());
    return 2;
  }

  try {
    tapwire::sensor::Sensor sensor(std::move(o));
    return sensor.run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tapwire-sensor: %s\n", e.what());
    return 1;
  }
}

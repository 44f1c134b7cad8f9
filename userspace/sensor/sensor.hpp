// tapwire-sensor: loads the capture programs, attaches them to the selected
// interfaces, and drains the per-CPU ring buffers through io_uring into the
// segment store until SIGINT/SIGTERM.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <functional>

#include "bpf_capture.hpp"
#include "config.hpp"
#include "flow_harvester.hpp"
#include "pod_targets.hpp"

namespace tapwire::sensor {

struct SensorOptions {
  std::vector<std::string> interfaces;  // patterns; empty = all but loopback
  std::string data_dir = "/var/lib/tapwire";
  uint64_t storage_size = 1ull << 30;
  uint64_t segment_size = 64ull << 20;
  uint64_t segment_max_age_s = 60;
  uint32_t ring_bytes = 8u << 20;  // per CPU
  uint32_t drain_interval_ms = 10;  // timer that drains rings below the wakeup threshold
  CaptureFilters filters;
  bool print = false;  // human-readable activity on stdout
  // Prometheus endpoint (HOST:PORT or :PORT; empty: none). If the default
  // address is taken the sensor warns and captures without it; an address
  // the user chose must work.
  std::string metrics_address = "127.0.0.1:7477";
  bool metrics_address_explicit = false;
  std::string control_socket;  // default DATA_DIR/control.sock
  bool dissection = false;  // L7 dissection enabled at start
  uint64_t dissection_stop_after_ns = 5ull * 60 * 1000000000ull;  // 0: never stops by itself
  std::string dissector_path;  // default: tapwire-dissector next to this binary
  std::vector<std::string> dissector_args;  // extra flags for the dissector (caps, dissectors)
  // The account the dissector runs as when the sensor is root ("" = tapwire
  // where it exists, else nobody / nogroup); DATA_DIR is shared with its group.
  std::string dissector_user, dissector_group;
  bool raw_capture = true;  // tap.capture.raw.enabled: false = attach nowhere
  std::string attach = "auto";  // --attach: tcx links ("tcx"), TC filters ("tc"), or tcx where the kernel has it
  // Reloading (SIGHUP, `tapwire config reload`): the file again, with the
  // same flags on top. Empty when the sensor was started without --config.
  std::string config_path;
  std::function<config::TapwireConfig()> reload;
  // Identity (docs/IDENTITY.md): socket/process hooks and DATA_DIR/identity.
  bool identity = true;
  uint64_t identity_storage_size = 256ull << 20;
  std::string node_name;  // "" = $NODE_NAME, else the hostname
  // Kubernetes: "auto" (in a cluster or with a kubeconfig), "true", "false".
  std::string kubernetes = "auto";
  std::string kubeconfig;
  std::string kube_watch_path;  // default: tapwire-kube-watch next to this binary
  std::vector<std::string> kube_watch_args;  // extra flags for the watcher (tests: backoff, timeouts)
  TargetRules targets;  // tap.regex, tap.namespaces, tap.excludedNamespaces
  // Flow accounting (docs/FLOWS.md): the kernel's table (tap.flows.maxFlows,
  // tap.enabledDissectors tcp/udp) and the flow stream (DATA_DIR/flows).
  FlowAccounting flow_accounting;
  FlowHarvesterOptions flows;  // dir and node_name are filled in by the sensor
};

// The effective configuration (file + flags) as the sensor's options.
void apply_config(const config::TapwireConfig& c, SensorOptions& o);

class Sensor {
 public:
  // Sets everything up: data dir, segment store, BPF, attachments. Throws
  // std::runtime_error (one line) and leaves nothing attached on failure.
  explicit Sensor(SensorOptions opts);
  ~Sensor();
  Sensor(const Sensor&) = delete;
  Sensor& operator=(const Sensor&) = delete;

  // Runs until SIGINT or SIGTERM (which must be blocked in every thread, see
  // block_signals()), then drains, seals and detaches. Returns the exit code.
  int run();

  // Blocks the signals the sensor handles through its signalfd. Call first
  // thing in main, before any thread exists.
  static void block_signals();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tapwire::sensor

// The Prometheus endpoint (prometheus-cpp, pull): one /metrics for the
// sensor's and the dissector's metrics. The daemons hand it snapshots (the
// sensor's status, the dissector's metrics file); a scrape turns the latest
// snapshot into metric families, so nothing is computed between scrapes.
// Names follow Prometheus conventions, prefixed tapwire_; every drop carries
// a `reason` label.
//
// /metrics is served by one thread of its own, event-driven (epoll), so that
// no client can hold up a scrape: a connection must deliver its request and
// take its response within kClientTimeoutNs, a request head is at most
// kMaxRequestBytes, and of more than kMaxClients connections the oldest is
// closed to make room. HTTP/1.0 and 1.1, GET and HEAD, one request per
// connection (Connection: close).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

namespace tapwire {

class MetricsExporter {
 public:
  static constexpr uint64_t kClientTimeoutNs = 5'000'000'000ull;
  static constexpr size_t kMaxRequestBytes = 8192;
  static constexpr size_t kMaxClients = 64;

  // Serves http://ADDRESS/metrics; ADDRESS is HOST:PORT, [V6]:PORT or :PORT
  // (every IPv4 address). Throws std::runtime_error (one line) if it cannot
  // listen.
  explicit MetricsExporter(const std::string& address);
  ~MetricsExporter();
  MetricsExporter(const MetricsExporter&) = delete;
  MetricsExporter& operator=(const MetricsExporter&) = delete;

  // The sensor's status (status_file.hpp schema) plus, optionally, a
  // "dissection" object {"enabled", "running", "restarts", "pid"}.
  void set_sensor_status(nlohmann::json status);
  // The dissector's metrics (dissector.hpp metrics_json), or null when no
  // dissector runs.
  void set_dissector_metrics(nlohmann::json metrics);

  // The text a scrape returns (for tests and `tapwire status --metrics`).
  std::string render() const;

 private:
  struct State;
  struct Server;
  std::shared_ptr<State> state_;
  std::unique_ptr<Server> server_;
};

}  // namespace tapwire

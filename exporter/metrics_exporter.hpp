// The Prometheus endpoint (prometheus-cpp, pull): one /metrics for the
// sensor's and the dissector's metrics. The daemons hand it snapshots (the
// sensor's status, the dissector's metrics file); a scrape turns the latest
// snapshot into metric families, so nothing is computed between scrapes.
// Names follow Prometheus conventions, prefixed tapwire_; every drop carries
// a `reason` label.
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

namespace prometheus {
class Exposer;
}

namespace tapwire {

class MetricsExporter {
 public:
  // Serves http://ADDRESS/metrics; ADDRESS is HOST:PORT or :PORT (all
  // addresses). Throws std::runtime_error if it cannot listen.
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
  std::shared_ptr<State> state_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace tapwire

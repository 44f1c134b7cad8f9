// What the sensor reports about itself: status.json (schema in
// status_file.hpp), the same object on the control socket (`tapwire status`)
// and through the Prometheus exporter, with the dissector's metrics file.
// The sensor's parts are read here, never changed.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "interfaces.hpp"

namespace tapwire {
class MetricsExporter;
namespace shm {
class CaptureStore;
}
}  // namespace tapwire

namespace tapwire::sensor {

class BpfCapture;
class CaptureDrain;
class ControlServer;
class DissectorSupervisor;
class IdentityCollector;
class IdentityRecorder;
class KubeWatcher;
class PodTargets;
class SocketOwnerResolver;
class TcAttacher;

// Kubernetes identity as the watcher's Sync and Stats records told it.
struct KubeSync {
  std::map<std::string, nlohmann::json> resources;  // resource -> last Sync
  nlohmann::json stats = nullptr;  // last Stats of the watcher
  uint64_t failures = 0;  // resources lost (once per loss, not per retry)
  // "synced" once every resource's list completed and none is lost now;
  // "unknown" otherwise (identity from the API cannot be trusted then).
  std::string state() const;
};

// Null pointers: parts that are off, or already stopped at shutdown.
struct IdentityStatusSources {
  bool enabled;
  const std::string& node;
  const std::string& error;  // why process identity is off, if it failed to start
  const IdentityCollector* collector;
  const SocketOwnerResolver* owners;
  const IdentityRecorder* recorder;
  const KubeWatcher* kube;
  const KubeSync& kube_sync;
  const PodTargets& targets;
};
// status.json's "identity" (`tapwire status`, {"cmd":"identity"}).
nlohmann::json identity_status_json(const IdentityStatusSources& s);

struct CaptureStatusSources {
  const BpfCapture& bpf;
  const CaptureDrain& drain;
  const shm::CaptureStore& store;
  const std::map<uint32_t, Interface>& attached;
  const TcAttacher* tc;
  const DissectorSupervisor* supervisor;
  const ControlServer* control;
  uint64_t started_ns;
};
// The whole of status.json, in `state` ("capturing", "stopped").
nlohmann::json sensor_status_json(const CaptureStatusSources& s, const char* state, nlohmann::json identity);

// Writes status.json and hands the status (and the dissector's metrics) to
// the Prometheus exporter, if there is one.
class StatusWriter {
 public:
  // Serves metrics on `metrics_address` ("" = none). If it cannot listen
  // there: an address the user chose (`metrics_address_explicit`) throws
  // std::runtime_error; the default one only warns.
  StatusWriter(std::string data_dir, const std::string& metrics_address, bool metrics_address_explicit);
  ~StatusWriter();
  StatusWriter(const StatusWriter&) = delete;
  StatusWriter& operator=(const StatusWriter&) = delete;

  void write(const nlohmann::json& status);

 private:
  std::string data_dir_;
  std::unique_ptr<MetricsExporter> exporter_;
};

}  // namespace tapwire::sensor

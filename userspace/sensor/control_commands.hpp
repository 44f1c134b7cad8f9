// The control socket's commands: {"cmd":"status"}, "dissection", "activity",
// "config", "segment", "targets" and "identity" (the `tapwire` CLI sends
// them; README.md, Control plane). ControlServer (control_socket.hpp) reads
// the request lines and turns what throws into an error reply; here a
// request becomes what the sensor does, and its reply.
#pragma once

#include <nlohmann/json.hpp>

#include "pod_targets.hpp"

namespace tapwire::sensor {

class DissectorSupervisor;

// The sensor as the commands act on it (Sensor::Impl).
class ControlTarget {
 public:
  // status.json's content now (state "capturing"), and its "identity".
  virtual nlohmann::json status_now() const = 0;
  virtual nlohmann::json identity_now() const = 0;
  virtual DissectorSupervisor& dissection() = 0;
  // Reads the configuration file again, as SIGHUP does; the reply.
  virtual nlohmann::json reload_config() = 0;
  // Seals the open segments (raw capture and identity stream); false when
  // there is no segment store.
  virtual bool rotate_segments() = 0;
  // Pod targeting: the rules in force, whether Kubernetes identity is on,
  // and the target set. After pod_targets().set_rules(r) succeeded,
  // apply_target_rules(r) makes r the rules in force (until the next reload)
  // and brings the kernel's target set to them.
  virtual const TargetRules& target_rules() const = 0;
  virtual bool kubernetes() const = 0;
  virtual PodTargets& pod_targets() = 0;
  virtual void apply_target_rules(const TargetRules& r) = 0;

 protected:
  ~ControlTarget() = default;
};

// The reply to one request (an object with a string "cmd", as ControlServer
// checked). May throw; ControlServer answers with an error then.
nlohmann::json control_command(ControlTarget& sensor, const nlohmann::json& req);

}  // namespace tapwire::sensor

#include "control_commands.hpp"

#include <cstdio>
#include <string>
#include <vector>

#include "clock.hpp"
#include "dissector_supervisor.hpp"

namespace tapwire::sensor {
namespace {

// {"cmd":"targets","action":"get"} or {"cmd":"targets","action":"set","regex":R,
// "namespaces":[..],"excludedNamespaces":[..]}: the rules until the next reload.
nlohmann::json targets_request(ControlTarget& sensor, const nlohmann::json& req, const std::string& action) {
  if (action == "get" || action.empty())
    return {{"ok", true}, {"targets", sensor.identity_now()["targets"]}};
  if (action != "set") return {{"ok", false}, {"error", "targets: action must be get or set"}};
  TargetRules r = sensor.target_rules();
  try {
    if (req.contains("regex")) r.regex = req.at("regex").get<std::string>();
    if (req.contains("namespaces")) r.namespaces = req.at("namespaces").get<std::vector<std::string>>();
    if (req.contains("excludedNamespaces"))
      r.excluded = req.at("excludedNamespaces").get<std::vector<std::string>>();
  } catch (const nlohmann::json::exception&) {
    return {{"ok", false},
            {"error", "targets: regex must be a string, namespaces and excludedNamespaces lists of strings"}};
  }
  for (auto* list : {&r.namespaces, &r.excluded})
    if (list->size() > 1000) return {{"ok", false}, {"error", "targets: at most 1000 namespaces"}};
  if (r.active() && !sensor.kubernetes())
    return {{"ok", false}, {"error", "targets: pod targeting needs Kubernetes identity (start with --kubeconfig)"}};
  try {
    sensor.pod_targets().set_rules(r);
  } catch (const std::exception& e) {
    return {{"ok", false}, {"error", std::string("targets: ") + e.what()}};
  }
  sensor.apply_target_rules(r);
  std::fprintf(stderr, "tapwire-sensor: pod targeting set by the control socket: %s\n",
               sensor.pod_targets().status().dump().c_str());
  return {{"ok", true}, {"targets", sensor.identity_now()["targets"]}};
}

}  // namespace

nlohmann::json control_command(ControlTarget& sensor, const nlohmann::json& req) {
  const std::string cmd = req["cmd"].get<std::string>();
  const std::string action = req.value("action", "");
  const uint64_t now = mono_ns();
  if (cmd == "status") return {{"ok", true}, {"status", sensor.status_now()}};
  if (cmd == "activity") {
    sensor.dissection().activity(now);
    return {{"ok", true}, {"dissection", sensor.dissection().status(now)}};
  }
  if (cmd == "dissection") {
    if (action == "enable")
      sensor.dissection().enable(now, "control socket");
    else if (action == "disable")
      sensor.dissection().disable("control socket");
    else if (action != "status")
      return {{"ok", false}, {"error", "dissection: action must be enable, disable or status"}};
    return {{"ok", true}, {"dissection", sensor.dissection().status(now)}};
  }
  if (cmd == "config") {
    if (action != "reload") return {{"ok", false}, {"error", "config: action must be reload"}};
    return sensor.reload_config();
  }
  if (cmd == "segment") {  // `tapwire snapshot create` seals the open segment this way
    if (action != "rotate") return {{"ok", false}, {"error", "segment: action must be rotate"}};
    if (!sensor.rotate_segments()) return {{"ok", false}, {"error", "segment: no segment store (raw capture disabled)"}};
    return {{"ok", true}};
  }
  if (cmd == "targets") return targets_request(sensor, req, action);
  if (cmd == "identity") return {{"ok", true}, {"identity", sensor.identity_now()}};
  return {{"ok", false},
          {"error", "unknown cmd '" + cmd + "': status, dissection, activity, config, segment, targets or identity"}};
}

}  // namespace tapwire::sensor

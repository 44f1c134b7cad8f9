#include "flow_filter.hpp"

#include <algorithm>

#include "flow_source.hpp"

namespace tapwire::cli {
namespace {

bool has_flag(const nlohmann::ordered_json& f, const char* flag) {
  auto it = f.find("flags");
  if (it == f.end() || !it->is_array()) return false;
  return std::any_of(it->begin(), it->end(), [&](const nlohmann::ordered_json& x) { return x.is_string() && x == flag; });
}

std::string workload_name(const nlohmann::ordered_json& e) {
  auto w = e.find("workload");
  return w != e.end() && w->is_object() ? json_str(*w, "name") : "";
}

}  // namespace

bool FlowFilter::matches(const nlohmann::ordered_json& f) const {
  const nlohmann::ordered_json& c = f["client"];
  const nlohmann::ordered_json& s = f["server"];
  auto either = [&](auto get, const std::string& want) { return get(c) == want || get(s) == want; };
  if (!namespace_.empty() && !either([](const nlohmann::ordered_json& e) { return json_str(e, "namespace"); }, namespace_))
    return false;
  if (!pod.empty() && !either([](const nlohmann::ordered_json& e) { return json_str(e, "pod"); }, pod)) return false;
  if (!workload.empty() && !either(workload_name, workload)) return false;
  if (!ip.empty() && !either([](const nlohmann::ordered_json& e) { return json_str(e, "ip"); }, ip)) return false;
  if (port >= 0 && !either([](const nlohmann::ordered_json& e) { return json_str(e, "port"); }, std::to_string(port)))
    return false;
  if (!protocol.empty() && json_str(f, "protocol") != protocol) return false;
  if (!state.empty() && json_str(f, "state") != state) return false;
  if (reset && !has_flag(f, "reset")) return false;
  if (retransmitting && !has_flag(f, "retransmitting")) return false;
  if (unanswered && !has_flag(f, "unanswered")) return false;
  if (refused && !has_flag(f, "refused")) return false;
  return true;
}

void add_flow_filter_options(CLI::App& sub, FlowFilter& f, bool full) {
  if (full) {
    sub.add_option("--namespace", f.namespace_, "either end in this Kubernetes namespace");
    sub.add_option("--pod", f.pod, "either end is this pod");
    sub.add_option("--workload", f.workload, "either end belongs to this workload (Deployment, ... name)");
  }
  sub.add_option("--ip", f.ip, "either end has this address");
  sub.add_option("--port", f.port, "either end has this port")->check(CLI::Range(0, 65535));
  sub.add_option("--protocol", f.protocol, "tcp or udp")->check(CLI::IsMember({"tcp", "udp"}));
  if (!full) return;
  sub.add_option("--state", f.state, "this state (syn_sent, syn_received, established, closing, closed, reset, refused, "
                                     "unanswered, active, ended)")
      ->check(CLI::IsMember({"syn_sent", "syn_received", "established", "closing", "closed", "reset", "refused",
                             "unanswered", "active", "ended"}));
  sub.add_flag("--reset", f.reset, "only flows ended by an RST");
  sub.add_flag("--retransmitting", f.retransmitting, "only flows with a retransmission");
  sub.add_flag("--unanswered", f.unanswered, "only SYNs that got no answer");
  sub.add_flag("--refused", f.refused, "only connections refused (RST in answer to the SYN)");
}

}  // namespace tapwire::cli

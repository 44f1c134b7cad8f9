// tapwire dissection enable|disable|status, tapwire config reload: requests
// on the sensor's control socket (one JSON object per line each way).
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.hpp"

namespace tapwire::cli {

std::optional<nlohmann::json> control_call(const std::string& path, const nlohmann::json& request, std::string* err) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) {
    if (err) *err = "socket path too long";
    return std::nullopt;
  }
  std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    if (err) *err = std::strerror(errno);
    if (fd >= 0) close(fd);
    return std::nullopt;
  }
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string line = request.dump() + "\n";
  if (send(fd, line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
    if (err) *err = std::strerror(errno);
    close(fd);
    return std::nullopt;
  }
  std::string reply;
  char buf[4096];
  while (reply.find('\n') == std::string::npos && reply.size() < (1u << 24)) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    reply.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  auto j = nlohmann::json::parse(reply.substr(0, reply.find('\n')), nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    if (err) *err = reply.empty() ? "no reply" : "malformed reply";
    return std::nullopt;
  }
  return j;
}

namespace {

struct ControlOptions {
  std::string data_dir, socket;
  std::string action;
  bool json = false;
  // tapwire targets
  std::string regex;
  std::vector<std::string> namespaces, excluded;
  bool all = false;
};

std::string socket_path(const ControlOptions& o) { return o.socket.empty() ? o.data_dir + "/control.sock" : o.socket; }

int run_request(const ControlOptions& o, const nlohmann::json& req) {
  const std::string path = socket_path(o);
  std::string err;
  auto reply = control_call(path, req, &err);
  if (!reply)
    throw CliError("cannot reach the sensor's control socket", path + " (" + err + ")",
                   "is tapwire-sensor running? give --data-dir or --control-socket");
  if (!reply->value("ok", false))
    throw CliError("the sensor refused", req.dump(), reply->value("error", std::string("no reason given")));
  if (o.json) {
    std::printf("%s\n", reply->dump(2).c_str());
    return 0;
  }
  if (reply->contains("dissection")) {
    const auto& d = (*reply)["dissection"];
    std::printf("dissection: %s%s", d.value("enabled", false) ? "enabled" : "disabled",
                d.value("running", false) ? (", dissector running (pid " + std::to_string(d.value("pid", 0)) + ")").c_str()
                                          : "");
    if (d.value("restarts", 0) > 0) std::printf(", %d restarts", d.value("restarts", 0));
    if (d.value("enabled", false) && d.value("stop_after_s", 0.0) > 0)
      std::printf(", stops after %.0f s without activity", d.value("stop_after_s", 0.0));
    std::printf("\n");
  } else if (reply->contains("targets")) {
    const auto& t = (*reply)["targets"];
    auto list = [](const nlohmann::json& a) {
      std::string s;
      for (auto& x : a) s += (s.empty() ? "" : ",") + x.get<std::string>();
      return s.empty() ? std::string("-") : s;
    };
    std::printf("pod targeting: %s; regex %s, namespaces %s, excluded %s; %d of %d pods targeted, %d addresses\n",
                t.value("active", false) ? "on" : "off (every pod and the node)", t.value("regex", "").c_str(),
                list(t.value("namespaces", nlohmann::json::array())).c_str(),
                list(t.value("excludedNamespaces", nlohmann::json::array())).c_str(), t.value("targeted_pods", 0),
                t.value("pods", 0), t.value("addresses", 0));
  } else {
    std::printf("ok\n");
  }
  return 0;
}

void add_socket_options(CLI::App& sub, ControlOptions& o) {
  add_data_dir_option(sub, o.data_dir);
  sub.add_option("--control-socket", o.socket, "the sensor's control socket (default: DATA_DIR/control.sock)");
  sub.add_flag("--json", o.json, "print the sensor's reply as JSON");
}

}  // namespace

void register_control(CLI::App& app, Action& action) {
  auto o = std::make_shared<ControlOptions>();
  CLI::App* dis = app.add_subcommand("dissection", "Switch L7 dissection on or off, or show its state");
  dis->add_option("action", o->action, "enable, disable or status")
      ->required()
      ->check(CLI::IsMember({"enable", "disable", "status"}));
  add_socket_options(*dis, *o);
  dis->callback([o, &action] {
    action = [o] { return run_request(*o, {{"cmd", "dissection"}, {"action", o->action}}); };
  });

  auto c = std::make_shared<ControlOptions>();
  CLI::App* cfg = app.add_subcommand("config", "Act on the sensor's configuration");
  cfg->add_option("action", c->action, "reload")->required()->check(CLI::IsMember({"reload"}));
  add_socket_options(*cfg, *c);
  cfg->callback([c, &action] { action = [c] { return run_request(*c, {{"cmd", "config"}, {"action", "reload"}}); }; });

  auto t = std::make_shared<ControlOptions>();
  CLI::App* tg = app.add_subcommand(
      "targets", "Show or set pod targeting (tap.regex, tap.namespaces, tap.excludedNamespaces) until the next reload");
  tg->add_option("--regex", t->regex, "capture only pods whose name matches this POSIX extended regex");
  tg->add_option("--namespace", t->namespaces, "capture only pods in this namespace (repeatable)");
  tg->add_option("--exclude-namespace", t->excluded, "never capture pods in this namespace (repeatable)");
  tg->add_flag("--all", t->all, "target everything again (no rule)");
  add_socket_options(*tg, *t);
  tg->callback([t, tg, &action] {
    const bool set = t->all || tg->count("--regex") || tg->count("--namespace") || tg->count("--exclude-namespace");
    nlohmann::json req = {{"cmd", "targets"}, {"action", set ? "set" : "get"}};
    if (set) {
      req["regex"] = t->all || !tg->count("--regex") ? ".*" : t->regex;
      req["namespaces"] = t->all ? std::vector<std::string>{} : t->namespaces;
      req["excludedNamespaces"] = t->all ? std::vector<std::string>{} : t->excluded;
    }
    action = [t, req] { return run_request(*t, req); };
  });
}

}  // namespace tapwire::cli

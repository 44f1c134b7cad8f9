// The sensor's control socket (userspace/sensor/control_socket.hpp): every
// line a client sends goes through ControlServer::answer. The input is what
// a client writes, split into lines as serve() does; the handler reads the
// request the way the sensor's does (sensor.cpp control_request: "cmd",
// "action" with a default, the targets fields typed) and answers with parts
// of it, so hostile field types and contents reach the reply.
//
// Checked: a blank line gets no reply, every other line exactly one reply
// that is one line of JSON, an object with a boolean "ok" (an error text
// when false); a request the handler accepts is answered with its reply.
// libFuzzer: -max_len=4096
#include <stdexcept>

#include "control_socket.hpp"
#include "fuzz_common.hpp"

namespace {

using nlohmann::json;
using tapwire::sensor::ControlServer;

json handler(const json& req) {
  const std::string cmd = req["cmd"].get<std::string>();
  const std::string action = req.value("action", "");  // throws type_error for a non-string action
  if (cmd == "status") return {{"ok", true}, {"status", {{"state", "capturing"}}}};
  if (cmd == "throw") throw std::runtime_error("handler failed on '" + action + "'");
  if (cmd == "targets" && action == "set") {
    std::string regex;
    std::vector<std::string> namespaces;
    try {
      if (req.contains("regex")) regex = req.at("regex").get<std::string>();
      if (req.contains("namespaces")) namespaces = req.at("namespaces").get<std::vector<std::string>>();
    } catch (const json::exception&) {
      return {{"ok", false}, {"error", "targets: regex must be a string, namespaces a list of strings"}};
    }
    return {{"ok", true}, {"targets", {{"regex", regex}, {"namespaces", namespaces}}}};
  }
  return {{"ok", false}, {"error", "unknown cmd '" + cmd + "' (action '" + action + "')"}};
}

void check_reply(std::string_view line, const std::string& reply) {
  const bool blank = line.empty() || line == "\r";
  FUZZ_CHECK(reply.empty() == blank, "a blank line gets no reply, any other exactly one");
  if (blank) return;
  FUZZ_CHECK(reply.find('\n') == std::string::npos, "a reply is one line");
  json r = json::parse(reply, nullptr, false);
  FUZZ_CHECK(!r.is_discarded() && r.is_object(), "a reply is a JSON object: " + reply);
  FUZZ_CHECK(r.contains("ok") && r["ok"].is_boolean(), reply);
  if (!r["ok"].get<bool>()) FUZZ_CHECK(r.contains("error") && r["error"].is_string(), reply);
  // A well-formed request that the handler answers gets that answer.
  json req = json::parse(line, nullptr, false);
  if (!req.is_discarded() && req.is_object() && req.contains("cmd") && req["cmd"].is_string()) {
    json expect;
    try {
      expect = handler(req);
    } catch (const std::exception&) {
      return;
    }
    FUZZ_CHECK(r == expect, "reply " + reply + " for " + expect.dump());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in = tapwire::fuzz::as_text({data, size});
  const ControlServer::Handler h = handler;
  size_t pos = 0;
  while (pos < in.size()) {
    size_t nl = in.find('\n', pos);
    if (nl == std::string_view::npos) break;  // serve() keeps a partial line for more
    const std::string_view line = in.substr(pos, nl - pos);
    check_reply(line, ControlServer::answer(line, h));
    pos = nl + 1;
  }
  // The last bytes as a line of their own too (a client that ends without a newline gets
  // no answer from serve(), but the parser must take any bytes).
  const std::string_view tail = in.substr(pos);
  check_reply(tail, ControlServer::answer(tail, h));
  return 0;
}

// MCP (the Model Context Protocol, docs/MCP.md): the HTTP API's answers as
// tools an AI assistant can call, over JSON-RPC 2.0. Two transports share
// one handler: `tapwire mcp` reads newline-delimited messages on stdin and
// answers on stdout (logs on stderr), and `tapwire serve` answers POST /mcp
// (Streamable HTTP, JSON answers) under the API's token and Host rules.
//
// Every tool calls the function its HTTP route answers with (api.hpp), with
// the tool's arguments as the route's parameters: the same data, the same
// checks, the same error texts. No tool has a query path of its own.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "server.hpp"

namespace tapwire::serve {

struct Ctx;

// The protocol versions answered, newest first: a client asking for another
// gets the newest, and may then disconnect if it cannot speak it.
inline constexpr const char* kMcpVersions[] = {"2025-06-18", "2025-03-26", "2024-11-05"};
// JSON-RPC batches exist in 2025-03-26 and before; 2025-06-18 removed them.
bool mcp_version_has_batches(const std::string& version);

// JSON-RPC error codes.
inline constexpr int kParseError = -32700;
inline constexpr int kInvalidRequest = -32600;
inline constexpr int kMethodNotFound = -32601;
inline constexpr int kInvalidParams = -32602;
inline constexpr int kInternalError = -32603;

// One client's state: the version agreed at initialize ("" before).
struct McpSession {
  std::string version;
  bool initialized = false;  // notifications/initialized came
};

class McpServer {
 public:
  // Destructive tools (delete_snapshot) are listed and callable only with
  // ctx.o.allow_destructive.
  explicit McpServer(const Ctx& ctx);
  ~McpServer();

  // One message as received (a JSON text): the answer to send, or nullopt
  // when none is due (notifications, responses). A text that does not parse
  // is answered with a parse error (-32700); a batch (an array) where the
  // session's version has none with an invalid request (-32600).
  std::optional<nlohmann::json> handle_text(const std::string& text, McpSession& s) const;
  std::optional<nlohmann::json> handle(const nlohmann::json& message, McpSession& s) const;

  // tools/list's tools, and one tool's CallToolResult: {content, structuredContent}
  // or, when the tool failed, {content, isError: true}. Throws std::invalid_argument
  // for a tool that is not offered.
  nlohmann::json tools() const;
  nlohmann::json call_tool(const std::string& name, const nlohmann::json& arguments) const;
  nlohmann::json prompts() const;
  nlohmann::json get_prompt(const std::string& name, const nlohmann::json& arguments) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A context of its own for `tapwire mcp`, with no HTTP server: the options,
// the control socket, the delayed dissections (which run as long as it does).
std::unique_ptr<Ctx> make_mcp_context(ServeOptions o);

// The stdio transport: one JSON-RPC message per line on `in_fd`, each answer
// a line on `out_fd`, until `in_fd` ends or SIGINT, SIGTERM or SIGHUP (which
// the caller has blocked, in every thread, before starting any). Lines over
// 4 MiB are refused. Returns the exit code.
int run_mcp_stdio(const McpServer& server, int in_fd, int out_fd);

}  // namespace tapwire::serve

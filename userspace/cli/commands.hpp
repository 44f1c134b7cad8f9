// The `tapwire` CLI's subcommands. Each lives in its own file and registers
// itself from main.cpp through one of the functions below: it adds its
// CLI::App (options bound to its own state) and, when the user picks it,
// stores in `action` what to run once the command line is fully parsed.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

namespace tapwire::dissect {
class CallDb;
}

namespace tapwire::cli {

inline constexpr const char* kDefaultDataDir = "/var/lib/tapwire";

// An error a user sees as one line: "tapwire: <what>: <input>: <hint>".
// Thrown by actions; main prints it and exits with 1.
class CliError : public std::runtime_error {
 public:
  CliError(const std::string& what, const std::string& input, const std::string& hint)
      : std::runtime_error(what + ": " + input + ": " + hint) {}
};

// What to run after parsing; returns the process exit code.
using Action = std::function<int()>;

// Adds the common --data-dir option (default /var/lib/tapwire) to `sub`.
void add_data_dir_option(CLI::App& sub, std::string& data_dir);
// --data-dir before the subcommand: declared on the top-level app, and after
// parsing handed to the subcommand that ran unless it got its own.
void add_global_options(CLI::App& app, std::string& data_dir);
void apply_global_options(const CLI::App& app, const std::string& data_dir);

// `tapwire status`
void register_status(CLI::App& app, Action& action);
// `tapwire dissection enable|disable|status`, `tapwire config reload`
void register_control(CLI::App& app, Action& action);
// One request on the sensor's control socket; nullopt (and *err) if it
// cannot be reached or replies nonsense.
std::optional<nlohmann::json> control_call(const std::string& socket_path, const nlohmann::json& request,
                                           std::string* err = nullptr);

// `tapwire calls` (query a dissection DB) and `tapwire tail` (follow it live)
void register_calls(CLI::App& app, Action& action);
void register_tail(CLI::App& app, Action& action);
// A finished dissection DB (--db of calls and the exports), read-only. Throws
// CliError when it cannot be read or is not a dissection DB.
std::unique_ptr<dissect::CallDb> open_call_db(const std::string& path);
// `tapwire export pcap` (registered under the `export` subcommand)
void register_export_pcap(CLI::App& export_app, Action& action);
// `tapwire export har` and `tapwire export jsonl` (from a dissection DB)
void register_export_har(CLI::App& export_app, Action& action);
void register_export_jsonl(CLI::App& export_app, Action& action);
// `tapwire dissect` (batch dissection of a snapshot)
void register_dissect(CLI::App& app, Action& action);
// `tapwire workloads` (what the identity stream knew at a time)
void register_workloads(CLI::App& app, Action& action);
// `tapwire flows`, `tapwire map`, `tapwire packets` (docs/FLOWS.md)
void register_flows(CLI::App& app, Action& action);
void register_map(CLI::App& app, Action& action);
void register_packets(CLI::App& app, Action& action);
// `tapwire snapshot create|list|verify|delete|pack|unpack`
void register_snapshot(CLI::App& app, Action& action);
// `tapwire serve` (the HTTP API, userspace/serve/)
void register_serve(CLI::App& app, Action& action);
// `tapwire mcp` (MCP on stdio, userspace/serve/mcp.hpp)
void register_mcp(CLI::App& app, Action& action);
// The segment directory of --snapshot NAME|DIR: NAME is DATA_DIR/snapshots/NAME,
// a DIR is used as is; segments are in its segments/ or in it. Throws CliError.
std::string snapshot_segments_dir(const std::string& arg, const std::string& data_dir);

}  // namespace tapwire::cli

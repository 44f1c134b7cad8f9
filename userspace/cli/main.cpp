// tapwire: the user's CLI. Subcommands live in their own files (commands.hpp)
// and are registered here; this file only parses and reports errors.
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>

#include "commands.hpp"

namespace {

// "tapwire export pcap" for the deepest subcommand the user named.
std::string command_path(const CLI::App& app) {
  std::string path = app.get_name();
  const CLI::App* cur = &app;
  for (;;) {
    auto subs = cur->get_subcommands();
    if (subs.empty()) break;
    cur = subs.front();
    path += " " + cur->get_name();
  }
  return path;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace tapwire::cli;

  CLI::App app{"tapwire: capture network traffic with eBPF, store it, export and dissect it", "tapwire"};
  app.set_version_flag("--version", std::string("tapwire ") + TAPWIRE_VERSION);
  app.require_subcommand(1);
  std::string global_data_dir;
  add_global_options(app, global_data_dir);

  Action action;
  register_status(app, action);
  register_calls(app, action);
  register_tail(app, action);
  register_control(app, action);
  CLI::App* export_app = app.add_subcommand("export", "Write stored traffic to a file");
  export_app->require_subcommand(1);
  register_export_pcap(*export_app, action);
  register_export_har(*export_app, action);
  register_export_jsonl(*export_app, action);
  register_dissect(app, action);
  register_snapshot(app, action);
  register_workloads(app, action);
  register_flows(app, action);
  register_map(app, action);
  register_packets(app, action);
  register_serve(app, action);
  register_mcp(app, action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);  // --help, --version
    std::fprintf(stderr, "tapwire: invalid command line: %s: see '%s --help'\n", e.what(), command_path(app).c_str());
    return 2;
  }
  apply_global_options(app, global_data_dir);
  if (!action) {
    std::fprintf(stderr, "tapwire: invalid command line: no command given: see 'tapwire --help'\n");
    return 2;
  }
  try {
    return action();
  } catch (const CliError& e) {
    std::fprintf(stderr, "tapwire: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tapwire: unexpected error: %s: please report this as a bug\n", e.what());
  }
  return 1;
}

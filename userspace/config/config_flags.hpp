// Flags override the file (DESIGN.md): how main() layers its command-line
// options over tapwire.yaml, at start and again on every reload.
//
//   CLI::App app{...};
//   std::string config_path, data_dir, storage;
//   app.add_option("--config", config_path, "tapwire.yaml to read");  // a plain option: never
//                                                                     // app.set_config() (CLI11's TOML/INI)
//   app.add_option("--data-dir", data_dir, "...");
//   app.add_option("--storage-size", storage, "...");
//   app.parse(argc, argv);
//
//   tapwire::config::FlagOverrides flags;          // only the flags the user gave
//   flags.when_given(app, "--data-dir", [v = data_dir](TapwireConfig& c) { c.data_dir = v; });
//   flags.when_given(app, "--storage-size", [v = size_option("--storage-size", storage)](TapwireConfig& c) {
//     c.capture.raw.storage_size = v;             // convert and validate flags before capturing them
//   });
//   TapwireConfig cfg = flags.load(config_path);  // the file (or the defaults) + those flags; throws ConfigError
//
//   // on SIGHUP or `tapwire config reload`:
//   try { cfg = flags.load(config_path); } catch (const ConfigError& e) { log(e.what()); /* keep cfg */ }
//
// The setters capture the parsed flag values by value, so `flags` can outlive
// main()'s locals and replay the same overrides on every reload. A repeatable
// flag given on the command line replaces the file's list (it is not merged).
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "config.hpp"

namespace tapwire::config {

class FlagOverrides {
 public:
  using Setter = std::function<void(TapwireConfig&)>;

  // Call after app.parse(): if the option was given on the command line,
  // `set` is applied to every config loaded from now on. `flag` is the name as
  // declared ("--data-dir"); options inside option groups are found as well.
  void when_given(const CLI::App& app, const std::string& flag, Setter set) {
    if (app.count(flag) > 0) setters_.push_back(std::move(set));
  }
  void when_given(const CLI::Option* option, Setter set) {
    if (option != nullptr && option->count() > 0) setters_.push_back(std::move(set));
  }

  void apply(TapwireConfig& c) const {
    for (const auto& set : setters_) set(c);
  }

  // The file at `path` (the defaults when `path` is empty) with the given
  // flags applied on top. Throws ConfigError for a bad file.
  TapwireConfig load(const std::string& path) const {
    TapwireConfig c = path.empty() ? TapwireConfig{} : load_config(path);
    apply(c);
    return c;
  }

  bool empty() const { return setters_.empty(); }

 private:
  std::vector<Setter> setters_;
};

}  // namespace tapwire::config

#include "commands.hpp"

#include <vector>

namespace tapwire::cli {
namespace {

// Every --data-dir a subcommand declared, so that one given before the
// subcommand (`tapwire --data-dir D snapshot list`, as git and kubectl
// users type it) reaches the subcommand that runs.
struct DataDirSlot {
  CLI::App* sub;
  std::string* value;
};
std::vector<DataDirSlot>& data_dir_slots() {
  static std::vector<DataDirSlot> slots;
  return slots;
}

}  // namespace

void add_data_dir_option(CLI::App& sub, std::string& data_dir) {
  data_dir = kDefaultDataDir;
  sub.add_option("--data-dir", data_dir, "tapwire-sensor's data directory (also before the command)")
      ->capture_default_str();
  data_dir_slots().push_back({&sub, &data_dir});
}

void add_global_options(CLI::App& app, std::string& data_dir) {
  app.add_option("--data-dir", data_dir, "tapwire-sensor's data directory, for any command that uses one");
}

void apply_global_options(const CLI::App& app, const std::string& data_dir) {
  if (!app.count("--data-dir")) return;
  for (auto& s : data_dir_slots())
    if (s.sub->parsed() && s.sub->count("--data-dir") == 0) *s.value = data_dir;
}

}  // namespace tapwire::cli

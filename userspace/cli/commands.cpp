#include "commands.hpp"

namespace tapwire::cli {

void add_data_dir_option(CLI::App& sub, std::string& data_dir) {
  data_dir = kDefaultDataDir;
  sub.add_option("--data-dir", data_dir, "tapwire-sensor's data directory")->capture_default_str();
}

}  // namespace tapwire::cli

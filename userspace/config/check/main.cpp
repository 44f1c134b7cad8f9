// tapwire-config-check FILE...: checks tapwire.yaml files with the daemons'
// own loader (before a reload, in CI, on a ConfigMap). One line per file;
// exit 0 when all are good, 1 when one is rejected, 2 on usage errors.
#include <cstdio>
#include <cstring>

#include "config.hpp"

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fprintf(argc < 2 ? stderr : stdout, "usage: tapwire-config-check FILE...\n");
    return argc < 2 ? 2 : 0;
  }
  int rc = 0;
  for (int i = 1; i < argc; i++) {
    try {
      tapwire::config::load_config(argv[i]);
      std::printf("%s: ok\n", argv[i]);
    } catch (const tapwire::config::ConfigError& e) {
      std::fprintf(stderr, "tapwire-config-check: %s\n", e.what());
      rc = 1;
    }
  }
  return rc;
}

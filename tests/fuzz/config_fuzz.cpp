// tapwire.yaml loader (userspace/config/config.hpp, load_config_text): what
// the sensor reads at start, on SIGHUP and on `tapwire config reload`, and
// what tapwire-config-check checks. The input is the file's text.
//
// Checked: a rejected file is a ConfigError and nothing else (any other
// exception would escape the reload path), whose message is one line naming
// the source; an accepted file gives values within the documented bounds,
// and loading it again gives the same configuration.
// libFuzzer: -max_len=8192
#include <algorithm>
#include <chrono>
#include <exception>

#include "config.hpp"
#include "fuzz_common.hpp"

namespace {

using namespace tapwire::config;

void check_bounds(const TapwireConfig& c) {
  FUZZ_CHECK(!c.data_dir.empty());
  FUZZ_CHECK(c.capture.raw.storage_size >= (1u << 20));
  FUZZ_CHECK(c.capture.raw.segment_size >= (64u << 10));
  FUZZ_CHECK(c.capture.raw.segment_max_age >= std::chrono::seconds(1) &&
             c.capture.raw.segment_max_age <= std::chrono::hours(24));
  FUZZ_CHECK(c.capture.raw.ring_size == 0 || c.capture.raw.ring_size >= 4096);
  FUZZ_CHECK(c.capture.dissection.stop_after.count() >= 0);
  FUZZ_CHECK(c.dissection.max_header > 0 && c.dissection.max_header <= (1u << 30));
  FUZZ_CHECK(c.dissection.max_body <= (1u << 30));
  FUZZ_CHECK(c.identity.storage_size >= (4u << 20));
  for (const auto* ports : {&c.filters.allow_ports, &c.filters.deny_ports})
    for (uint16_t p : *ports) FUZZ_CHECK(p >= 1);
  for (const auto& d : c.enabled_dissectors)
    FUZZ_CHECK(std::find(known_dissectors().begin(), known_dissectors().end(), d) != known_dissectors().end());
  FUZZ_CHECK(c.kubernetes.enabled == "auto" || c.kubernetes.enabled == "true" || c.kubernetes.enabled == "false");
  FUZZ_CHECK(c.node_name.size() <= 253);
  FUZZ_CHECK(c.control_socket_path().size() > 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  TapwireConfig c;
  try {
    c = load_config_text(text, "fuzz.yaml");
  } catch (const ConfigError& e) {
    const std::string what = e.what();
    FUZZ_CHECK(what.rfind("fuzz.yaml", 0) == 0, what);
    FUZZ_CHECK(what.find_first_of("\r\n") == std::string::npos, "a config error is one line: " + what);
    FUZZ_CHECK(e.line() >= 0);
    return 0;
  } catch (const std::exception& e) {
    FUZZ_CHECK(false, std::string("load_config_text threw something else than ConfigError: ") + e.what());
  }
  check_bounds(c);
  FUZZ_CHECK(load_config_text(text, "fuzz.yaml") == c, "loading the same text twice differs");
  return 0;
}

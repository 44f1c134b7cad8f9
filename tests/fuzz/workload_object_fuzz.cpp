// Workload objects (userspace/identity/workload_object.hpp): the JSON the
// Kubernetes watcher sends the sensor and the identity stream stores. The
// input is one object's text.
//
// Checked: whatever parse_workload accepts, to_json writes in a form that
// parse_workload accepts again as the same object, and writes that form
// again unchanged (the identity stream stores to_json's output and every
// reader parses it back); a refusal says why.
// libFuzzer: -max_len=16384
#include "fuzz_common.hpp"
#include "workload_object.hpp"

namespace {

using namespace tapwire::identity;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = tapwire::fuzz::as_text({data, size});
  std::string why;
  auto w = parse_workload(text, &why);
  if (!w) {
    FUZZ_CHECK(!why.empty(), "a refusal says why");
    return 0;
  }
  const std::string json = to_json(*w);
  std::string why2;
  auto back = parse_workload(json, &why2);
  FUZZ_CHECK(back.has_value(), "to_json wrote what parse_workload refuses: " + why2 + "; " + json);
  FUZZ_CHECK(*back == *w, "the object changed through to_json: " + json);
  FUZZ_CHECK(to_json(*back) == json, "to_json is not stable: " + json);
  (void)w->kind();
  const std::string key = w->state_key();
  FUZZ_CHECK(key.empty() == (std::holds_alternative<SyncObject>(w->object) || std::holds_alternative<StatsObject>(w->object)));
  return 0;
}

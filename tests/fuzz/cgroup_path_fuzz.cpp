// cgroup v2 paths (userspace/identity/cgroup_path.hpp): what a socket's
// cgroup says about its container and pod. Paths come from the kernel and
// from identity segments of any origin. The input is the path.
//
// Checked: a pod uid is 36 characters of lower-case hex and dashes in the
// UUID places; a container id is 64 lower-case hex digits, only inside a
// pod, with a known runtime or none; empty path components (doubled or
// trailing slashes) change nothing.
// libFuzzer: -max_len=4096
#include "cgroup_path.hpp"
#include "fuzz_common.hpp"

namespace {

using namespace tapwire::identity;

bool hex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

void check(const CgroupInfo& info) {
  if (!info.pod_uid.empty()) {
    FUZZ_CHECK(info.pod_uid.size() == 36);
    for (size_t i = 0; i < 36; i++) {
      const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
      FUZZ_CHECK(dash ? info.pod_uid[i] == '-' : hex(info.pod_uid[i]), info.pod_uid);
    }
  }
  if (!info.container_id.empty()) {
    FUZZ_CHECK(info.in_pod(), "a container outside a pod");
    FUZZ_CHECK(info.container_id.size() == 64);
    for (char c : info.container_id) FUZZ_CHECK(hex(c));
  }
  FUZZ_CHECK(info.runtime.empty() || info.runtime == "containerd" || info.runtime == "cri-o" || info.runtime == "docker");
  FUZZ_CHECK(info.runtime.empty() || !info.container_id.empty());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path(reinterpret_cast<const char*>(data), size);
  const CgroupInfo info = parse_cgroup_path(path);
  check(info);
  std::string doubled;
  for (char c : path) {
    doubled.push_back(c);
    if (c == '/') doubled.push_back('/');
  }
  doubled.push_back('/');
  const CgroupInfo again = parse_cgroup_path(doubled);
  FUZZ_CHECK(again.pod_uid == info.pod_uid && again.container_id == info.container_id && again.runtime == info.runtime,
             "empty path components changed the result");
  return 0;
}

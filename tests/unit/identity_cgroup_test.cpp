// cgroup v2 paths -> container and pod (userspace/identity/cgroup_path.cpp),
// for the kubelet layouts of docs/IDENTITY.md and for paths that only look
// like them.
#include <gtest/gtest.h>

#include <string>

#include "cgroup_path.hpp"

namespace {

using tapwire::identity::CgroupInfo;
using tapwire::identity::parse_cgroup_path;

// A pod UID as the API server writes it, and as the systemd driver spells it
// in slice names ('-' separates slice levels there, so the UID's dashes
// become '_').
const std::string kUid = "5b9c2a1e-3f4d-4e6a-9b8c-7d6e5f4a3b2c";
const std::string kUidSystemd = "5b9c2a1e_3f4d_4e6a_9b8c_7d6e5f4a3b2c";
const std::string kId = "3f2a9c1b7d4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f70a";  // 64 hex

void expect(const std::string& path, const std::string& uid, const std::string& id, const std::string& runtime) {
  SCOPED_TRACE(path.size() > 300 ? path.substr(0, 300) + "..." : path);
  const CgroupInfo info = parse_cgroup_path(path);
  EXPECT_EQ(info.pod_uid, uid);
  EXPECT_EQ(info.container_id, id);
  EXPECT_EQ(info.runtime, runtime);
  EXPECT_EQ(info.in_pod(), !uid.empty());
}

void expect_node(const std::string& path) { expect(path, "", "", ""); }

TEST(CgroupPath, SystemdDriverContainerdBurstable) {
  ASSERT_EQ(kId.size(), 64u);
  expect("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidSystemd +
             ".slice/cri-containerd-" + kId + ".scope",
         kUid, kId, "containerd");
}

TEST(CgroupPath, SystemdDriverCrioGuaranteed) {
  // Guaranteed QoS pods sit right below kubepods.slice.
  expect("/kubepods.slice/kubepods-pod" + kUidSystemd + ".slice/crio-" + kId + ".scope", kUid, kId, "cri-o");
}

TEST(CgroupPath, SystemdDriverDockerBestEffort) {
  expect("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + kUidSystemd + ".slice/docker-" + kId +
             ".scope",
         kUid, kId, "docker");
}

TEST(CgroupPath, CgroupfsDriver) {
  // The cgroupfs driver names neither the runtime nor uses underscores.
  expect("/kubepods/burstable/pod" + kUid + "/" + kId, kUid, kId, "");
  expect("/kubepods/besteffort/pod" + kUid + "/" + kId, kUid, kId, "");
  expect("/kubepods/pod" + kUid + "/" + kId, kUid, kId, "");
}

TEST(CgroupPath, NestedBelowAPrefix) {
  // A kubelet in a container, or a cgroup namespace whose root is not the
  // mount's: the layout starts further down.
  expect("/twid-1234/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidSystemd +
             ".slice/cri-containerd-" + kId + ".scope",
         kUid, kId, "containerd");
  expect("/twid-1234/kubepods/pod" + kUid + "/" + kId, kUid, kId, "");
  // A kubelet with --cgroup-root=/kubelet and the systemd driver (kind
  // nodes): every slice below the root carries the root's name as prefix.
  expect("/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" +
             kUidSystemd + ".slice/cri-containerd-" + kId + ".scope",
         kUid, kId, "containerd");
}

TEST(CgroupPath, PodLevelWithoutContainer) {
  expect("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + kUidSystemd + ".slice", kUid, "", "");
  expect("/kubepods/burstable/pod" + kUid, kUid, "", "");
  expect("/kubepods/pod" + kUid + "/", kUid, "", "");
  // CRI-O's conmon runs in a sibling scope of the container: the pod's, not a container's.
  expect("/kubepods.slice/kubepods-pod" + kUidSystemd + ".slice/crio-conmon-" + kId + ".scope", kUid, "", "");
}

TEST(CgroupPath, LevelsBelowTheContainerBelongToIt) {
  expect("/kubepods/pod" + kUid + "/" + kId + "/init", kUid, kId, "");
  expect("/kubepods.slice/kubepods-pod" + kUidSystemd + ".slice/cri-containerd-" + kId + ".scope/sub/deeper", kUid,
         kId, "containerd");
}

TEST(CgroupPath, QosLevelsAloneAreNotPods) {
  expect_node("/kubepods.slice");
  expect_node("/kubepods.slice/kubepods-burstable.slice");
  expect_node("/kubepods/besteffort");
}

TEST(CgroupPath, NodeProcessesAreNotPods) {
  expect_node("/system.slice/sshd.service");
  expect_node("/system.slice/containerd.service");
  expect_node("/user.slice/user-1000.slice/session-3.scope");
  expect_node("/user.slice/user-1000.slice/user@1000.service/app.slice/podman-" + kId + ".scope");
  // A plain Docker container outside Kubernetes: no pod.
  expect_node("/system.slice/docker-" + kId + ".scope");
  expect_node("/");
  expect_node("");
  expect_node("//");
}

TEST(CgroupPath, BadPodUids) {
  const std::string tail = "/" + kId;
  // One character short and one too many.
  expect_node("/kubepods/pod" + kUid.substr(1) + tail);
  expect_node("/kubepods/pod" + kUid + "0" + tail);
  expect_node("/kubepods.slice/kubepods-pod" + kUidSystemd + "0.slice/crio-" + kId + ".scope");
  // Not hex.
  std::string bad = kUid;
  bad[3] = 'g';
  expect_node("/kubepods/pod" + bad + tail);
  // Uppercase hex: the kubelet never writes it.
  std::string upper = kUid;
  upper[0] = 'B';
  expect_node("/kubepods/pod" + upper + tail);
  // Separators in the wrong places.
  std::string shifted = kUid;
  std::swap(shifted[8], shifted[9]);
  expect_node("/kubepods/pod" + shifted + tail);
  std::string nodash = kUid;
  nodash[13] = 'a';
  expect_node("/kubepods/pod" + nodash + tail);
  // 32 hex digits and no separators at all.
  expect_node("/kubepods/pod5b9c2a1e3f4d4e6a9b8c7d6e5f4a3b2c" + tail);
  // "pod" glued to something else.
  expect_node("/kubepods/xpod" + kUid + tail);
  expect_node("/kubepods/pod");
  expect_node("/kubepods/pod-" + kUid + tail);
}

TEST(CgroupPath, PodWithoutKubepodsAbove) {
  expect_node("/pod" + kUid + "/" + kId);
  expect_node("/system.slice/pod" + kUid + "/" + kId);
  expect_node("/system.slice/system-pod" + kUidSystemd + ".slice/cri-containerd-" + kId + ".scope");
  // kubepods only below the pod level does not count.
  expect_node("/pod" + kUid + "/kubepods/" + kId);
}

TEST(CgroupPath, BadContainerIdsLeaveThePodOnly) {
  // The cgroup is still inside the pod's, so the pod is known; what is not a
  // container id names no container.
  const std::string pod = "/kubepods/pod" + kUid + "/";
  expect(pod + kId.substr(1), kUid, "", "");  // 63 digits
  expect(pod + kId + "a", kUid, "", "");  // 65
  std::string upper = kId;
  upper[10] = 'A';
  expect(pod + upper, kUid, "", "");
  std::string nonhex = kId;
  nonhex[63] = 'z';
  expect(pod + nonhex, kUid, "", "");
  const std::string sd = "/kubepods.slice/kubepods-pod" + kUidSystemd + ".slice/";
  expect(sd + "cri-containerd-" + kId.substr(1) + ".scope", kUid, "", "");
  expect(sd + "cri-containerd-" + kId + "0.scope", kUid, "", "");
  expect(sd + "unknown-" + kId + ".scope", kUid, "", "");  // a runtime prefix nobody uses
  expect(sd + "cri-containerd-" + kId + ".service", kUid, "", "");
}

TEST(CgroupPath, RepeatedSlashesAreOneSeparator) {
  // Path semantics: "a//b" is "a/b". The kernel never writes such a path,
  // but if one is found it names the same directory.
  expect("//kubepods//burstable///pod" + kUid + "//" + kId + "/", kUid, kId, "");
}

TEST(CgroupPath, VeryLongPaths) {
  // Many levels of junk: no pod, and no quadratic blow-up (bounded by size).
  std::string junk;
  for (int i = 0; i < 50000; i++) junk += "/kubepods-x";
  expect_node(junk);
  // A single component far longer than any name.
  expect_node("/kubepods/pod" + std::string(100000, 'a'));
  expect_node("/kubepods/pod" + kUid + std::string(100000, '0') + "/" + kId);
  // A real layout under a long (but legal) prefix is still a pod.
  std::string prefix;
  for (int i = 0; i < 200; i++) prefix += "/level" + std::to_string(i);
  expect(prefix + "/kubepods/pod" + kUid + "/" + kId, kUid, kId, "");
}

TEST(CgroupPath, FirstPodLevelWins) {
  // A pod-looking level below a pod (a runtime's own hierarchy) does not
  // move the pod.
  const std::string other = "00000000-0000-0000-0000-000000000001";
  expect("/kubepods/pod" + kUid + "/" + kId + "/kubepods/pod" + other, kUid, kId, "");
}

}  // namespace

#!/usr/bin/env python3
"""Done means (issue 4, packaging): `systemd-analyze verify` accepts the systemd
units without a warning; the Kubernetes manifests parse as YAML objects of the
right kinds, the DaemonSet runs unprivileged with the four capabilities, the
bpffs and BTF mounts, probes and resources, and serves metrics on the node's
address (not on node_exporter's 9100); the dissector's unit runs as the
tapwire user and group that tapwire.sysusers creates; the ConfigMap's
tapwire.yaml is configs/tapwire.yaml and the project's loader accepts it.

Needs systemd-analyze, python3-yaml and the built binaries (TW_BUILD_DIR,
default ./build): without them it exits 77 (skipped), or 1 under CI=true.
Run: python3 tests/integration/test_packaging.py
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
SYSTEMD = CONFIGS / "systemd"
KUBE = CONFIGS / "kubernetes"
UNITS = ("tapwire-sensor.service", "tapwire-dissector.service", "tapwire-serve.service")
SKIP = 77

SENSOR_CAPS = {"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_RESOURCE", "CAP_SYS_PTRACE", "CAP_SETUID",
               "CAP_SETGID"}
KUBE_CAPS = {c.removeprefix("CAP_") for c in SENSOR_CAPS}
KINDS = {  # kind -> apiVersion
    "DaemonSet": "apps/v1",
    "ConfigMap": "v1",
    "Namespace": "v1",
    "ServiceAccount": "v1",
    "Job": "batch/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
REQUIRED_KINDS = {"DaemonSet", "ConfigMap", "Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
# What the Kubernetes watcher reads (docs/IDENTITY.md), and nothing more.
RBAC_READ = {("", "pods"), ("", "services"), ("", "nodes"), ("discovery.k8s.io", "endpointslices"),
             ("apps", "replicasets"), ("batch", "jobs")}


def build_dir() -> Path:
    d = Path(os.environ.get("TW_BUILD_DIR", "build"))
    return d if d.is_absolute() else (Path.cwd() / d).resolve()


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require() -> None:
    """Exits 77 (or 1 under CI=true) when this test cannot run here."""
    problems = []
    if not shutil.which("systemd-analyze"):
        problems.append("missing tool systemd-analyze (Debian package systemd)")
    try:
        import yaml  # noqa: F401
    except ImportError:
        problems.append("missing python module yaml (Debian package python3-yaml)")
    for b in ("tapwire-sensor", "tapwire-dissector"):
        if not os.access(build_dir() / b, os.X_OK):
            problems.append(f"missing binary {build_dir() / b} (build first; TW_BUILD_DIR={build_dir()})")
    if problems:
        msg = "cannot run: " + "; ".join(problems)
        if in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(SKIP)


def unit_settings(path: Path) -> dict:
    """{(section, key): [values...]} of a unit file (keys may repeat)."""
    out, section = {}, None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def one(settings: dict, section: str, key: str) -> str:
    values = settings.get((section, key))
    assert values, f"[{section}] {key}= is missing"
    return values[-1]


# ------------------------------------------------------------------ systemd --

class SystemdUnits(unittest.TestCase):
    maxDiff = None

    def test_verify_accepts_the_units(self):
        # verify checks that ExecStart= binaries exist: run it on copies that
        # point at the built binaries, identical otherwise.
        with tempfile.TemporaryDirectory(prefix="tw-units-") as tmp:
            copies = []
            for name in UNITS:
                text = (SYSTEMD / name).read_text()
                self.assertIn("ExecStart=/usr/local/bin/", text, name)
                rewritten = text.replace("/usr/local/bin/", f"{build_dir()}/")
                self.assertEqual(rewritten.count(str(build_dir())), text.count("/usr/local/bin/"))
                (Path(tmp) / name).write_text(rewritten)
                copies.append(str(Path(tmp) / name))
            r = subprocess.run(["systemd-analyze", "verify", *copies], cwd=tmp, capture_output=True,
                               text=True, timeout=120)
            output = (r.stdout + r.stderr).strip()
            print(f"systemd-analyze verify: exit {r.returncode}" + (f"\n{output}" if output else ", no output"))
            self.assertEqual(r.returncode, 0, output)
            # Unknown keys, bad values, missing binaries: warnings, exit 0 all the same.
            ours = [l for l in output.splitlines() if "tapwire" in l or tmp in l]
            self.assertEqual(ours, [], "systemd-analyze verify warns about our units")

    def test_verify_catches_a_bad_unit(self):
        # The check above means something: an unknown key is reported.
        with tempfile.TemporaryDirectory(prefix="tw-units-") as tmp:
            text = (SYSTEMD / UNITS[1]).read_text().replace("/usr/local/bin/", f"{build_dir()}/")
            text = text.replace("[Service]\n", "[Service]\nNotAKey=1\n", 1)
            (Path(tmp) / UNITS[1]).write_text(text)
            r = subprocess.run(["systemd-analyze", "verify", str(Path(tmp) / UNITS[1])], cwd=tmp,
                               capture_output=True, text=True, timeout=120)
            self.assertIn("NotAKey", r.stdout + r.stderr)

    def test_sensor_unit(self):
        s = unit_settings(SYSTEMD / "tapwire-sensor.service")
        self.assertEqual(one(s, "Service", "Type"), "notify")
        self.assertEqual(one(s, "Service", "ExecStart"),
                         "/usr/local/bin/tapwire-sensor --config /etc/tapwire/tapwire.yaml")
        self.assertEqual(one(s, "Service", "ExecReload"), "/bin/kill -HUP $MAINPID")
        self.assertEqual(one(s, "Service", "Restart"), "on-failure")
        self.assertEqual(set(one(s, "Service", "CapabilityBoundingSet").split()), SENSOR_CAPS)
        self.assertEqual(set(one(s, "Service", "AmbientCapabilities").split()), SENSOR_CAPS)
        self.assertEqual(one(s, "Service", "StateDirectory"), "tapwire")
        self.assertEqual(set(one(s, "Service", "RestrictAddressFamilies").split()),
                         {"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6"})
        for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                           ("PrivateTmp", "yes"), ("ProtectKernelModules", "yes"),
                           ("ProtectControlGroups", "yes"), ("RestrictNamespaces", "yes")):
            self.assertEqual(one(s, "Service", key), value, key)
        self.assertIn("/var/lib/tapwire", one(s, "Service", "ReadWritePaths").split())
        # Nothing that would cut the sensor off the host's network.
        for key in ("PrivateNetwork", "PrivateUsers", "IPAddressDeny"):
            self.assertNotIn(("Service", key), s, key)

    def test_dissector_unit(self):
        s = unit_settings(SYSTEMD / "tapwire-dissector.service")
        self.assertEqual(one(s, "Service", "ExecStart"),
                         "/usr/local/bin/tapwire-dissector --data-dir /var/lib/tapwire")
        self.assertEqual(one(s, "Service", "Nice"), "19")
        self.assertEqual(one(s, "Service", "CPUSchedulingPolicy"), "idle")
        self.assertEqual(one(s, "Service", "IOSchedulingClass"), "idle")
        self.assertEqual(one(s, "Service", "CapabilityBoundingSet"), "")
        self.assertEqual(one(s, "Service", "AmbientCapabilities"), "")
        # The account the sensor runs its own dissector as (tapwire.sysusers creates both), in
        # the sensor's group, which may write the data dir.
        self.assertEqual(one(s, "Service", "User"), "tapwire")
        self.assertEqual(one(s, "Service", "Group"), "tapwire")
        self.assertNotIn(("Service", "DynamicUser"), s)
        self.assertEqual(one(s, "Service", "OOMScoreAdjust"), "1000")
        self.assertEqual(one(s, "Service", "NoNewPrivileges"), "yes")
        self.assertEqual(one(s, "Service", "ProtectSystem"), "strict")
        self.assertEqual(one(unit_settings(SYSTEMD / "tapwire-sensor.service"), "Service", "Group"), "tapwire")

    def test_serve_unit(self):
        s = unit_settings(SYSTEMD / "tapwire-serve.service")
        cmd = one(s, "Service", "ExecStart")
        self.assertTrue(cmd.startswith("/usr/local/bin/tapwire serve "), cmd)
        # Localhost by default: another address needs a token (docs/API.md).
        self.assertIn("--listen 127.0.0.1:", cmd)
        self.assertEqual(one(s, "Service", "CapabilityBoundingSet"), "")
        self.assertEqual(one(s, "Service", "AmbientCapabilities"), "")
        self.assertEqual(one(s, "Service", "NoNewPrivileges"), "yes")
        self.assertEqual(one(s, "Service", "ProtectSystem"), "strict")
        self.assertEqual(one(s, "Service", "SupplementaryGroups"), "tapwire")

    def test_sysusers_creates_the_user_and_group(self):
        if not (shutil.which("systemd-sysusers") and os.geteuid() == 0):
            cannot_run(self, "needs systemd-sysusers (package systemd) and root")
        with tempfile.TemporaryDirectory(prefix="tw-sysusers-") as root:
            (Path(root) / "etc").mkdir()
            r = subprocess.run(["systemd-sysusers", f"--root={root}", str(SYSTEMD / "tapwire.sysusers")],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stderr)
            group = re.search(r"(?m)^tapwire:x:(\d+):", (Path(root) / "etc" / "group").read_text())
            self.assertIsNotNone(group, "no group tapwire")
            user = re.search(r"(?m)^tapwire:x:(\d+):(\d+):[^:]*:[^:]*:(.*)$", (Path(root) / "etc" / "passwd").read_text())
            self.assertIsNotNone(user, "no user tapwire")
            self.assertNotEqual(user.group(1), "0")
            self.assertEqual(user.group(2), group.group(1), "the user's primary group is tapwire")
            self.assertIn("nologin", user.group(3))


# --------------------------------------------------------------- Kubernetes --

def load_manifests() -> list:
    """[(file name, object)] for every document of every configs/kubernetes/*.yaml."""
    import yaml
    out = []
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                out.append((path.name, doc))
    return out


def string_maps_ok(obj, where, problems):
    """Labels and annotations must map strings to strings (Kubernetes rejects `true` or 9100)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("labels", "annotations", "matchLabels", "nodeSelector") and isinstance(v, dict):
                for lk, lv in v.items():
                    if not isinstance(lk, str) or not isinstance(lv, str):
                        problems.append(f"{where}: {k}.{lk}: {lv!r} is not a string")
            string_maps_ok(v, where, problems)
    elif isinstance(obj, list):
        for v in obj:
            string_maps_ok(v, where, problems)


def cannot_run(case: unittest.TestCase, why: str) -> None:
    """A test that cannot run here fails under CI=true and skips elsewhere."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        case.fail(f"cannot run under CI=true: {why}")
    case.skipTest(why)


class KubernetesManifests(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.objects = load_manifests()
        cls.by_kind = {}
        for name, obj in cls.objects:
            if isinstance(obj, dict):
                cls.by_kind.setdefault(obj.get("kind"), []).append(obj)

    def the(self, kind):
        objs = self.by_kind.get(kind, [])
        self.assertEqual(len(objs), 1, f"one {kind} expected")
        return objs[0]

    def test_every_manifest_is_an_object_of_a_known_kind(self):
        self.assertTrue(self.objects, "no manifests under configs/kubernetes")
        namespace = self.the("Namespace")["metadata"]["name"]
        problems = []
        for name, obj in self.objects:
            self.assertIsInstance(obj, dict, name)
            for key in ("apiVersion", "kind", "metadata"):
                self.assertIn(key, obj, f"{name}: no {key}")
            kind = obj["kind"]
            self.assertIn(kind, KINDS, f"{name}: unexpected kind {kind}")
            self.assertEqual(obj["apiVersion"], KINDS[kind], f"{name}: {kind}")
            self.assertIsInstance(obj["metadata"].get("name"), str, f"{name}: metadata.name")
            self.assertRegex(obj["metadata"]["name"], r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", name)
            if kind not in CLUSTER_SCOPED:
                self.assertEqual(obj["metadata"].get("namespace"), namespace, f"{name}: metadata.namespace")
            string_maps_ok(obj, name, problems)
        self.assertEqual(problems, [])
        self.assertLessEqual(REQUIRED_KINDS, set(self.by_kind))

    def pod_checks(self, pod, what):
        """What every tapwire pod template gets right: no privileged container, volumes that
        exist, resources."""
        spec = pod["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            self.assertIsNot(sc.get("privileged"), True, f"{what}: {c['name']} is privileged")
            self.assertIn("ALL", sc.get("capabilities", {}).get("drop", []), f"{what}: {c['name']} drops ALL")
            self.assertNotIn("SYS_ADMIN", sc.get("capabilities", {}).get("add", []), what)
            for m in c.get("volumeMounts", []):
                self.assertIn(m["name"], volumes, f"{what}: mount of an undefined volume")
            for kind in ("requests", "limits"):
                for res in ("cpu", "memory"):
                    self.assertIn(res, c.get("resources", {}).get(kind, {}), f"{what}: resources.{kind}.{res}")
        return volumes

    def test_daemonset(self):
        ds = self.the("DaemonSet")
        tmpl = ds["spec"]["template"]
        spec = tmpl["spec"]
        for k, v in ds["spec"]["selector"]["matchLabels"].items():
            self.assertEqual(tmpl["metadata"]["labels"].get(k), v, "selector must match the pod labels")
        self.assertIs(spec.get("hostNetwork"), True)
        self.assertEqual(spec.get("serviceAccountName"), self.the("ServiceAccount")["metadata"]["name"])
        volumes = self.pod_checks(tmpl, "DaemonSet")
        self.assertEqual([c["name"] for c in spec["containers"]], ["sensor", "serve"])
        # tapwire serve: the API on the node's loopback, without any capability.
        srv = spec["containers"][1]
        srv_cmd = srv.get("command", []) + srv.get("args", [])
        self.assertEqual(srv_cmd[:2], ["/usr/local/bin/tapwire", "serve"])
        self.assertEqual(srv_cmd[srv_cmd.index("--listen") + 1].rsplit(":", 1)[0], "127.0.0.1")
        self.assertEqual(srv["securityContext"]["capabilities"], {"drop": ["ALL"]})
        self.assertIs(srv["securityContext"].get("allowPrivilegeEscalation"), False)
        self.assertIn("/var/lib/tapwire", {m["mountPath"] for m in srv["volumeMounts"]})
        c = spec["containers"][0]
        sc = c["securityContext"]
        self.assertLessEqual(KUBE_CAPS, set(sc["capabilities"]["add"]))

        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}

        def host_path(mount_path):
            self.assertIn(mount_path, mounts, f"no mount at {mount_path}")
            return volumes[mounts[mount_path]["name"]].get("hostPath", {}).get("path")

        self.assertEqual(host_path("/sys/fs/bpf"), "/sys/fs/bpf")
        self.assertEqual(host_path("/sys/kernel/btf"), "/sys/kernel/btf")
        self.assertIs(mounts["/sys/kernel/btf"].get("readOnly"), True)
        self.assertIn("/var/lib/tapwire", mounts, "data volume")

        ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
        for probe in ("livenessProbe", "readinessProbe"):
            self.assertIn(probe, c)
            http = c[probe].get("httpGet")
            if http:
                port = http["port"]
                self.assertIn(port, ports if isinstance(port, str) else ports.values(), f"{probe} port")
            else:
                self.assertTrue(c[probe].get("exec", {}).get("command"), probe)

        # Metrics on the node's address (downward API), on the port Prometheus is told of and
        # the probes use; not 9100, node_exporter's port.
        ann = tmpl["metadata"].get("annotations", {})
        self.assertEqual(ann.get("prometheus.io/scrape"), "true")
        self.assertEqual(ann.get("prometheus.io/port"), "7477")
        self.assertEqual(ports.get("metrics"), 7477)
        cmd = c.get("command", []) + c.get("args", [])
        self.assertIn("--metrics-address", cmd)
        self.assertEqual(cmd[cmd.index("--metrics-address") + 1], "$(HOST_IP):7477")
        env = {e["name"]: e for e in c.get("env", [])}
        self.assertEqual(env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"], "status.hostIP")
        self.assertNotIn(9100, ports.values())

        # The config the sensor is told to read is the ConfigMap's tapwire.yaml.
        self.assertIn("--config", cmd)
        config_path = cmd[cmd.index("--config") + 1]
        mount = mounts.get(os.path.dirname(config_path))
        self.assertIsNotNone(mount, f"{config_path} is not in a mounted volume")
        cm_volume = volumes[mount["name"]].get("configMap", {})
        self.assertEqual(cm_volume.get("name"), self.the("ConfigMap")["metadata"]["name"])
        self.assertIn(os.path.basename(config_path), self.the("ConfigMap")["data"])

    def test_rbac_is_read_only_on_what_identity_needs(self):
        role = self.the("ClusterRole")
        granted = set()
        for rule in role["rules"]:
            self.assertEqual(sorted(rule["verbs"]), ["get", "list", "watch"], f"verbs of {rule}")
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    granted.add((g, r))
        self.assertEqual(granted, RBAC_READ)
        binding = self.the("ClusterRoleBinding")
        self.assertEqual(binding["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                              "name": role["metadata"]["name"]})
        sa = self.the("ServiceAccount")
        self.assertIn({"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                       "namespace": sa["metadata"]["namespace"]}, binding["subjects"])
        spec = self.the("DaemonSet")["spec"]["template"]["spec"]
        self.assertIs(spec.get("automountServiceAccountToken"), True, "the watcher needs the token")
        env = {e["name"]: e for e in spec["containers"][0].get("env", [])}
        self.assertEqual(env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName")

    def test_dissect_job(self):
        job = self.the("Job")
        tmpl = job["spec"]["template"]
        self.assertIn(tmpl["spec"].get("restartPolicy"), ("Never", "OnFailure"))
        self.pod_checks(tmpl, "Job")
        for c in tmpl["spec"]["containers"]:
            self.assertFalse(c.get("securityContext", {}).get("capabilities", {}).get("add"),
                             "dissection needs no capabilities")

    def test_configmap_holds_the_default_config(self):
        data = self.the("ConfigMap")["data"]["tapwire.yaml"]
        self.assertEqual(data, (CONFIGS / "tapwire.yaml").read_text(),
                         "configmap.yaml's tapwire.yaml differs from configs/tapwire.yaml")

    def test_configmap_config_loads_with_the_project_loader(self):
        check = build_dir() / "tapwire-config-check"
        if not os.access(check, os.X_OK):
            cannot_run(self, f"{check} not built: build first")
        with tempfile.TemporaryDirectory(prefix="tw-config-") as tmp:
            good = Path(tmp) / "tapwire.yaml"
            good.write_text(self.the("ConfigMap")["data"]["tapwire.yaml"])
            r = subprocess.run([str(check), str(good)], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            # ...and the checker does reject: a typo'd key, named with its line.
            bad = Path(tmp) / "bad.yaml"
            bad.write_text(good.read_text().replace("storageSize: 1Gi", "storagesize: 1Gi"))
            r = subprocess.run([str(check), str(bad)], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 1)
            self.assertRegex(r.stderr, r"bad\.yaml:\d+: tap\.capture\.raw\.storagesize: unknown key; "
                                       r"did you mean 'tap\.capture\.raw\.storageSize'\?")


if __name__ == "__main__":
    require()
    unittest.main(verbosity=2)

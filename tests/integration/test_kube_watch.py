#!/usr/bin/env python3
"""tapwire-kube-watch against the test Kubernetes API server (kubeapi.py),
with the real kubectl and the server's own state as the reference:

- kubectl lists and watches what the server holds (its fidelity is what makes
  the server a reference at all);
- the watcher's frames fold into exactly the objects kubectl and the server
  hold (owners resolved up the chain), through adds, updates, deletes and an
  IP reused by a new pod;
- informer behaviour from the server's request log: one list per resource,
  then only watches, bookmarks carry the resourceVersion, 410 Gone gives one
  relist that reports what vanished; steady-state requests per minute;
- faults (unreachable, 401, 403, 410, truncated, garbage, oversized event,
  hanging watch): one Sync lost frame and one stderr line each, no crash,
  bounded memory, recovery;
- privileges (unprivileged uid/gid, no_new_privs, no capabilities), the
  in-cluster service account with a rotating token, client certificates, a
  wrong CA, a network namespace, bad flags and kubeconfigs;
- 100k pods: all reported, peak RSS under RSS_BOUND_MIB (docs/IDENTITY.md).

Needs root (the privilege drop is part of what is tested), kubectl, openssl
and build/tapwire-kube-watch.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402
from kubeapi import (KubeApiServer, endpointslice, job, node, pod, replicaset,  # noqa: E402
                     service)

RSS_BOUND_MIB = 64  # peak RSS (VmHWM) of the watcher with 100k pods; docs/IDENTITY.md
RESOURCES = ("pods", "services", "endpointslices", "nodes", "replicasets", "jobs")
PATHS = {"pods": "/api/v1/pods", "services": "/api/v1/services",
         "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices", "nodes": "/api/v1/nodes",
         "replicasets": "/apis/apps/v1/replicasets", "jobs": "/apis/batch/v1/jobs"}
RUNTIMES = ("containerd", "cri-o", "docker")


def watch_bin() -> Path:
    return lab.build_dir() / "tapwire-kube-watch"


def log(msg: str) -> None:
    print(f"[kube {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_until(pred, timeout: float, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


# --------------------------------------------------------------------------
# The watcher as a child process, its frames decoded as they come.

class Watcher:
    """decode=False keeps workload frames as raw bytes (self.raw) and decodes
    only Sync and Stats frames as they come: for 100k objects."""

    def __init__(self, args, name: str, log_dir: Path, env=None, prefix=(), decode=True):
        self.name = name
        self.decode = decode
        self.raw: list[bytes] = []
        self.cmd = [*map(str, prefix), str(watch_bin()), *map(str, args)]
        self.frames: list[dict] = []
        self._syncs: dict[str, list[tuple[int, dict]]] = {}  # resource -> (frame index, Sync frame)
        self.bad: list[str] = []  # framing or JSON problems: must stay empty
        self.err: list[str] = []
        self._cv = threading.Condition()
        self._log = open(log_dir / f"{name}.stderr", "w")
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, env=env,
                                  preexec_fn=lab._die_with_parent(signal.SIGKILL))
        self._threads = [threading.Thread(target=self._read_frames, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def pid(self) -> int:
        return self.p.pid

    def _read_frames(self):
        fd = self.p.stdout.fileno()
        buf = bytearray()
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            pos, new = 0, []
            while len(buf) - pos >= 4:
                n = struct.unpack_from("<I", buf, pos)[0]
                if n == 0 or n > 4 << 20:
                    self.bad.append(f"frame length {n} at a frame boundary")
                    pos = len(buf)
                    break
                if len(buf) - pos - 4 < n:
                    break
                payload = bytes(buf[pos + 4:pos + 4 + n])
                pos += 4 + n
                if not payload.startswith(b'{"v":1,"kind":"'):
                    self.bad.append(f"frame does not start with v and kind: {payload[:80]!r}")
                if not self.decode and not payload.startswith((b'{"v":1,"kind":"Sync"', b'{"v":1,"kind":"Stats"')):
                    self.raw.append(payload)
                    continue
                try:
                    new.append(json.loads(payload))
                except ValueError as e:
                    self.bad.append(f"frame is not JSON ({e}): {payload[:80]!r}")
            del buf[:pos]
            with self._cv:
                for f in new:
                    if f.get("kind") == "Sync":
                        self._syncs.setdefault(f.get("resource"), []).append((len(self.frames), f))
                    self.frames.append(f)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def _read_stderr(self):
        for raw in self.p.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self._log.write(line + "\n")
            self._log.flush()
            with self._cv:
                self.err.append(line)
                self._cv.notify_all()

    def wait(self, pred, timeout: float):
        """Waits until pred(self) is truthy (called under the lock); returns its value."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                v = pred(self)
                if v:
                    return v
                left = deadline - time.monotonic()
                if left <= 0 or self.p.poll() is not None and not self._threads[0].is_alive():
                    return pred(self)
                self._cv.wait(min(left, 0.2))

    def count(self) -> int:
        with self._cv:
            return len(self.frames)

    def syncs(self, resource: str, after: int = 0) -> list[dict]:
        return [f for i, f in self._syncs.get(resource, []) if i >= after]

    def last_sync(self, resource: str, after: int = 0) -> dict | None:
        s = self.syncs(resource, after)
        return s[-1] if s else None

    def wait_synced(self, resources, timeout: float, after: int = 0) -> bool:
        return bool(self.wait(lambda w: all((w.last_sync(r, after) or {}).get("state") == "synced"
                                            for r in resources), timeout))

    def state(self) -> dict:
        with self._cv:
            return fold(self.frames)

    def proc_status(self) -> dict:
        out = {}
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                k, _, v = line.partition(":")
                out[k] = v.strip()
        except OSError:
            pass
        return out

    def rss_kib(self, key="VmRSS") -> int:
        v = self.proc_status().get(key, "0 kB")
        return int(v.split()[0])

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not exit {timeout}s after {sig!r}; killing")
                self.p.kill()
                self.p.wait(10)
        for t in self._threads:
            t.join(10)
        if not self._log.closed:
            self._log.close()
        return self.p.returncode


def fold(frames) -> dict:
    """(kind, uid) -> last upsert, deletes applied."""
    st = {}
    for f in frames:
        if f.get("kind") in ("Pod", "Service", "EndpointSlice", "Node"):
            key = (f["kind"], f.get("uid"))
            if f.get("op") == "upsert":
                st[key] = f
            elif f.get("op") == "delete":
                st.pop(key, None)
    return st


# --------------------------------------------------------------------------
# The reference: what the watcher must report for the objects kubectl (or the
# server) holds, written from docs/IDENTITY.md independently of the C++.

def _controller(o):
    for r in o["metadata"].get("ownerReferences") or []:
        if r.get("controller"):
            return r
    return None


def _guess(c, labels) -> tuple:
    """The owner when the ReplicaSet is not watched: "<deployment>-<hash>"."""
    h = labels.get("pod-template-hash")
    if c["kind"] == "ReplicaSet" and h and c["name"].endswith("-" + h) and len(c["name"]) > len(h) + 1:
        return ("Deployment", c["name"][:-len(h) - 1])
    return (c["kind"], c["name"])


def expected(items, watched=("ReplicaSet", "Job")) -> dict:
    """watched: the intermediate controllers the watcher follows."""
    chain = {}  # ReplicaSet/Job uid -> its controller's (kind, name) or None
    for o in items:
        if o["kind"] in watched:
            c = _controller(o)
            chain[o["metadata"]["uid"]] = (c["kind"], c["name"]) if c else None
    out = {}
    for o in items:
        m, kind = o["metadata"], o["kind"]
        spec, st = o.get("spec") or {}, o.get("status") or {}
        base = {"v": 1, "kind": kind, "op": "upsert", "uid": m["uid"]}
        if kind == "Pod":
            c = _controller(o)
            owner = None
            if c:
                owner = (c["kind"], c["name"])
                if c["kind"] in ("ReplicaSet", "Job") and c["kind"] not in watched:
                    owner = _guess(c, m.get("labels") or {})
                elif c["kind"] in ("ReplicaSet", "Job") and chain.get(c["uid"]):
                    owner = chain[c["uid"]]
            ips = [e["ip"] for e in st.get("podIPs") or []] or ([st["podIP"]] if st.get("podIP") else [])
            containers = []
            for cs in (st.get("containerStatuses") or []) + (st.get("initContainerStatuses") or []):
                if not cs.get("containerID"):
                    continue
                scheme, _, cid = cs["containerID"].partition("://")
                if not re.fullmatch(r"[0-9a-f]{64}", cid):
                    continue  # not an id a cgroup path can name
                e = {"name": cs["name"], "id": cid}
                if scheme in RUNTIMES:
                    e["runtime"] = scheme
                containers.append(e)
            e = {**base, "namespace": m["namespace"], "name": m["name"], "node": spec.get("nodeName") or "",
                 "hostNetwork": bool(spec.get("hostNetwork")), "ips": ips, "phase": st.get("phase", ""),
                 "labels": m.get("labels") or {}, "containers": containers}
            if owner:
                e["owner"] = {"kind": owner[0], "name": owner[1]}
        elif kind == "Service":
            ips = [a for a in spec.get("clusterIPs") or [spec.get("clusterIP")] if a and a != "None"]
            e = {**base, "namespace": m["namespace"], "name": m["name"], "type": spec.get("type", "ClusterIP"),
                 "clusterIPs": ips, "ports": [{"name": p.get("name", ""), "port": p["port"],
                                               "protocol": p.get("protocol", "TCP")} for p in spec.get("ports") or []]}
        elif kind == "EndpointSlice":
            addrs = []
            for ep in o.get("endpoints") or []:
                for a in ep.get("addresses") or []:
                    if a not in addrs:
                        addrs.append(a)
            e = {**base, "namespace": m["namespace"], "name": m["name"],
                 "service": (m.get("labels") or {}).get("kubernetes.io/service-name", ""), "addresses": addrs,
                 "ports": [{"name": p.get("name", ""), "port": p["port"], "protocol": p.get("protocol", "TCP")}
                           for p in o.get("ports") or [] if p.get("port") is not None]}
        elif kind == "Node":
            e = {**base, "name": m["name"],
                 "addresses": [a["address"] for a in st.get("addresses") or []
                               if a.get("type") in ("InternalIP", "ExternalIP")]}
        else:
            continue
        out[(kind, m["uid"])] = e
    return out


def diff(want: dict, got: dict, limit=6) -> str:
    lines = []
    for k in want.keys() - got.keys():
        lines.append(f"missing {k}: {want[k]}")
    for k in got.keys() - want.keys():
        lines.append(f"unexpected {k}: {got[k]}")
    for k in want.keys() & got.keys():
        if want[k] != got[k]:
            lines.append(f"differs {k}:\n   want {want[k]}\n   got  {got[k]}")
    return "\n".join(lines[:limit]) + (f"\n... {len(lines) - limit} more" if len(lines) > limit else "")


class KubeWatchTest(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(prefix="twkube-"))
        os.chmod(cls.dir, 0o755)  # the watcher reads its token file after dropping to nobody
        cls.cache = cls.dir / "kubectl-cache"
        cls.servers: list[KubeApiServer] = []
        cls.watchers: list[Watcher] = []
        cls.netns: list[str] = []

    @classmethod
    def tearDownClass(cls):
        for w in cls.watchers:
            try:
                w.stop(signal.SIGKILL, 5)
            except Exception as e:  # keep cleaning
                log(f"stopping {w.name}: {e}")
        for s in cls.servers:
            s.stop()
        for ns in cls.netns:
            lab.run(["ip", "netns", "del", ns], check=False)
        if os.environ.get("TW_LAB_KEEP") == "1":
            log(f"kept {cls.dir}")
        else:
            shutil.rmtree(cls.dir, ignore_errors=True)

    def tearDown(self):
        for s in self.servers:
            self.assertEqual(s.errors, [], f"the test API server failed: {s.errors[:3]}")

    # ---- helpers ---------------------------------------------------------
    def server(self, name: str, **kw) -> KubeApiServer:
        api = KubeApiServer(self.dir / name, **kw)
        self.servers.append(api)
        api.start()
        return api

    def watcher(self, name: str, args, **kw) -> Watcher:
        w = Watcher(args, name, self.dir, **kw)
        self.watchers.append(w)
        return w

    def kubectl(self, kc, *args, timeout=30) -> str:
        r = lab.run(["kubectl", "--kubeconfig", str(kc), "--cache-dir", str(self.cache), *args], timeout=timeout)
        return r.stdout

    def kubectl_items(self, kc) -> list[dict]:
        out = self.kubectl(kc, "get", "pods,services,endpointslices,nodes,replicasets,jobs", "-A", "-o", "json")
        return json.loads(out)["items"]

    def assert_state(self, w: Watcher, api: KubeApiServer, kc=None, timeout=15, kinds=None,
                     watched=("ReplicaSet", "Job")):
        """The watcher's folded state equals what the server (and kubectl) hold."""
        def want():
            items = [o for k in ("Pod", "Service", "EndpointSlice", "Node", "ReplicaSet", "Job") for o in api.list(k)]
            e = expected(items, watched)
            return {k: v for k, v in e.items() if kinds is None or k[0] in kinds}

        def got():
            return {k: v for k, v in w.state().items() if kinds is None or k[0] in kinds}

        ok = wait_until(lambda: want() == got(), timeout, 0.2)
        self.assertTrue(ok, f"{w.name}: state differs from the server's:\n{diff(want(), got())}")
        if kc is not None:  # kubectl sees the same, and the watcher equals it too
            ref = {k: v for k, v in expected(self.kubectl_items(kc)).items() if kinds is None or k[0] in kinds}
            self.assertEqual(ref, want(), f"kubectl and the server disagree:\n{diff(want(), ref)}")
            self.assertEqual(got(), ref, f"{w.name}: state differs from kubectl's:\n{diff(ref, got())}")

    def assert_no_bad_frames(self, w: Watcher):
        self.assertEqual(w.bad, [], f"{w.name}: bad frames: {w.bad[:3]}")

    @staticmethod
    def ours(api, since=0) -> list[dict]:
        """The watcher's requests (kubectl, the reference, talks to the same server)."""
        return [r for r in api.requests[since:] if r.get("agent", "").startswith("tapwire-kube-watch/")]

    def requests(self, api, resource, since=0, watch=None):
        return [r for r in self.ours(api, since) if r["path"] == PATHS[resource]
                and (watch is None or r["watch"] == watch)]

    def assert_privileges_dropped(self, w: Watcher):
        st = w.proc_status()
        nobody = pwd.getpwnam("nobody")
        self.assertEqual(st.get("Uid", "").split(), [str(nobody.pw_uid)] * 4, f"Uid: {st.get('Uid')}")
        self.assertEqual(st.get("Gid", "").split(), [str(nobody.pw_gid)] * 4, f"Gid: {st.get('Gid')}")
        self.assertEqual(st.get("Groups", ""), "", f"supplementary groups left: {st.get('Groups')}")
        self.assertEqual(st.get("NoNewPrivs"), "1")
        for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
            self.assertEqual(int(st.get(cap, "1"), 16), 0, f"{cap}={st.get(cap)}")
        print(f"privileges: Uid {st['Uid']}, Gid {st['Gid']}, NoNewPrivs {st['NoNewPrivs']}, CapEff {st['CapEff']}")

    # ---- 1. kubectl fidelity ------------------------------------------------
    def test_1_kubectl_fidelity(self):
        api = self.server("fidelity")
        kc = api.write_kubeconfig(self.dir / "fidelity.kubeconfig")
        populate(api)
        items = self.kubectl_items(kc)
        self.assertEqual(expected(items), expected([o for k in ("Pod", "Service", "EndpointSlice", "Node",
                                                                  "ReplicaSet", "Job") for o in api.list(k)]))
        self.assertEqual(sorted(o["metadata"]["uid"] for o in items if o["kind"] == "Pod"),
                         sorted(o["metadata"]["uid"] for o in api.list("Pod")))
        # Human-readable tables: every object by name.
        eps = self.kubectl(kc, "get", "endpointslices", "-A")
        for e in api.list("EndpointSlice"):
            self.assertRegex(eps, rf"(?m)^{e['metadata']['namespace']}\s+{e['metadata']['name']}\s+IPv\d")
        svc_nodes = self.kubectl(kc, "get", "svc,nodes", "-A")
        for s in api.list("Service"):
            self.assertIn(s["metadata"]["name"], svc_nodes)
        for n in api.list("Node"):
            self.assertRegex(svc_nodes, rf"node/{n['metadata']['name']}\s+Ready")
        print(eps, svc_nodes, sep="\n")
        # get -w: pods appear and disappear as the server changes them.
        wlog = self.dir / "kubectl-watch.log"
        kw = lab.Proc("kubectl-watch", ["kubectl", "--kubeconfig", kc, "--cache-dir", self.cache, "get", "pods",
                                        "-A", "-w", "--output-watch-events"], wlog)
        try:
            self.assertTrue(kw.wait_for_line(r"ADDED\s+shop\s+web-5d8f7c9b4-x2x4q\s", 20),
                            f"kubectl get -w did not list the pods:\n{kw.output()}")
            api.apply(pod("shop", "fresh-pod", ip="10.244.9.9", node="node-1"))
            self.assertTrue(kw.wait_for_line(r"ADDED\s+shop\s+fresh-pod\s+1/1\s+Running", 10), kw.output())
            api.delete("Pod", "shop", "fresh-pod")
            self.assertTrue(kw.wait_for_line(r"DELETED\s+shop\s+fresh-pod\s", 10), kw.output())
        finally:
            kw.stop()
        print(kw.output())
        watches = [r for r in api.requests if r["path"] == "/api/v1/pods" and r["watch"]]
        self.assertTrue(watches and watches[-1]["query"].get("resourceVersion"),
                        f"kubectl did not watch from a resourceVersion: {watches}")

    # ---- 2. state, informer behaviour, privileges -----------------------------
    def test_2_state_and_informer(self):
        api = self.server("main", bookmark_interval=0.5)
        kc = api.write_kubeconfig(self.dir / "main.kubeconfig")
        h = populate(api)
        w = self.watcher("main", ["--kubeconfig", kc, "--node", "node-1", "--watch-timeout", "5",
                                  "--idle-timeout", "10", "--backoff-scale", "0.05"])
        t0 = time.monotonic()
        self.assertTrue(w.wait_synced(RESOURCES, 20), f"not synced: {w.err}")
        log(f"all six resources synced in {time.monotonic() - t0:.2f}s")
        self.assert_privileges_dropped(w)
        self.assert_state(w, api, kc)
        # Owners: Deployment via ReplicaSet, a bare ReplicaSet, StatefulSet,
        # DaemonSet, CronJob via Job, a bare Job, no owner.
        owners = {f["name"]: f.get("owner") for f in w.state().values() if f["kind"] == "Pod"}
        self.assertEqual(owners["web-5d8f7c9b4-x2x4q"], {"kind": "Deployment", "name": "web"})
        self.assertEqual(owners["legacy-x7k2p-abcde"], {"kind": "ReplicaSet", "name": "legacy-x7k2p"})
        self.assertEqual(owners["db-0"], {"kind": "StatefulSet", "name": "db"})
        self.assertEqual(owners["agent-7xk2d"], {"kind": "DaemonSet", "name": "agent"})
        self.assertEqual(owners["report-28450-abcde"], {"kind": "CronJob", "name": "report"})
        self.assertEqual(owners["migrate-zzzzz"], {"kind": "Job", "name": "migrate"})
        self.assertIsNone(owners["debug"])

        # One list per resource, then only watches, with bookmarks and the server timeout.
        for r in RESOURCES:
            lists = self.requests(api, r, watch=False)
            self.assertEqual(len(lists), 1, f"{r}: {len(lists)} lists at start: {lists}")
            self.assertEqual(lists[0]["query"].get("limit"), "500", lists[0])
            for q in [x["query"] for x in self.requests(api, r, watch=True)]:
                self.assertEqual((q.get("watch"), q.get("allowWatchBookmarks"), q.get("timeoutSeconds")),
                                 ("true", "true", "5"), q)
                self.assertRegex(q.get("resourceVersion", ""), r"^\d+$", q)

        # Adds, updates, deletes, an IP reused by a new pod.
        mark = w.count()
        api.apply(pod("shop", "web-5d8f7c9b4-x2x4q", uid=h["web_uid"], ip="10.244.1.70", node="node-1",
                      owner=("ReplicaSet", "web-5d8f7c9b4", h["rs_uid"]), labels={"app": "web", "v": "2"}))
        api.delete("Pod", "batch", "migrate-zzzzz")
        api.delete("Pod", "tools", "debug")  # frees 10.244.2.9 ...
        newbie = api.apply(pod("tools", "newbie", ip="10.244.2.9", node="node-2"))  # ... which a new pod takes
        rs2 = api.apply(replicaset("shop", "web-6f7d8b5c4", deployment="web"))
        api.apply(pod("shop", "web-6f7d8b5c4-qq7rt", ip="10.244.1.71", node="node-1",
                      owner=("ReplicaSet", "web-6f7d8b5c4", rs2["metadata"]["uid"])))
        # A pod seen before its Job (separate watches race): reported with a
        # guess, then again with the real owner once the Job is known.
        nightly_uid = "0b3ac1f6-5f06-4c8e-9d9a-6c1e3c2b7a11"
        api.apply(pod("batch", "nightly-28451-x9", ip="10.244.3.3", node="node-2",
                      owner=("Job", "nightly-28451", nightly_uid)))
        time.sleep(0.7)
        api.apply(job("batch", "nightly-28451", cronjob="nightly", uid=nightly_uid))
        api.apply(service("shop", "web", cluster_ip="10.96.0.12", ports=(("http", 80, "TCP"), ("grpc", 9090, "TCP"))))
        api.apply(endpointslice("shop", "web-abcde", service="web", addresses=["10.244.1.70", "10.244.1.71"]))
        api.delete("Node", None, "node-2")
        self.assert_state(w, api, kc)
        after = w.frames[mark:]
        i_del = next(i for i, f in enumerate(after) if f.get("op") == "delete" and f.get("name") == "debug")
        i_new = next(i for i, f in enumerate(after) if f.get("op") == "upsert" and f.get("name") == "newbie")
        self.assertLess(i_del, i_new, "the new pod with a reused IP was reported before the old one's delete")
        self.assertEqual(w.state()[("Pod", newbie["metadata"]["uid"])]["ips"], ["10.244.2.9"])
        nightly = [f.get("owner") for f in after if f.get("kind") == "Pod" and f.get("name") == "nightly-28451-x9"]
        self.assertEqual(nightly, [{"kind": "Job", "name": "nightly-28451"}, {"kind": "CronJob", "name": "nightly"}],
                         "the pod seen before its Job was not reported again with the CronJob")

        # Steady state: only watch renewals (every --watch-timeout), each from
        # the version the last bookmark carried, which is the server's current
        # one even for resources that did not change.
        time.sleep(1.5)
        since = len(api.requests)
        t_start = time.monotonic()
        time.sleep(12)
        window = time.monotonic() - t_start
        reqs = self.ours(api, since)
        rv_now = str(api.resource_version)
        lists = [r for r in reqs if not r["watch"]]
        self.assertEqual(lists, [], f"lists in steady state: {lists}")
        per_min = len(reqs) * 60 / window
        print(f"steady state: {len(reqs)} API requests in {window:.1f}s = {per_min:.0f}/min with --watch-timeout 5 "
              f"over 6 resources (all watch renewals, 0 lists); at the default --watch-timeout 300: "
              f"{6 * 60 / 300:.1f}/min")
        self.assertLessEqual(len(reqs), 6 * (window / 5 + 1), f"too many requests: {reqs}")
        self.assertGreaterEqual(len(reqs), 6, "no watch renewal in 12s with --watch-timeout 5")
        stale = [r for r in reqs if r["query"].get("resourceVersion") != rv_now]
        self.assertEqual(stale, [], f"re-watches not from the bookmark's version {rv_now}: {stale[:3]}")

        # Compaction: bookmarks keep every watch above it, so no 410 and no relist.
        api.compact()
        since = len(api.requests)
        api.close_watches()
        self.assertTrue(wait_until(lambda: all(self.requests(api, r, since, watch=True) for r in RESOURCES), 10))
        time.sleep(1)
        self.assertEqual([r for r in self.ours(api, since) if not r["watch"]], [], "relisted after a compaction")

        # Away while objects vanish and history is compacted: 410 Gone, then
        # exactly one relist per resource, reporting the deletes.
        mark, errmark, since = w.count(), len(w.err), len(api.requests)
        api.fault("unreachable")
        self.assertTrue(w.wait(lambda w_: all((w_.last_sync(r, mark) or {}).get("state") == "lost"
                                              for r in RESOURCES), 15), f"not lost: {w.err[errmark:]}")
        lost = w.last_sync("pods", mark)
        self.assertRegex(lost["error"], r"cannot connect to https://127\.0\.0\.1:\d+")
        gone_pods = [("shop", "web-5d8f7c9b4-9ffq2"), ("data", "db-0")]
        gone_uids = {api.get("Pod", ns, n)["metadata"]["uid"] for ns, n in gone_pods}
        gone_uids.add(api.get("Service", "shop", "dual")["metadata"]["uid"])
        for ns, n in gone_pods:
            api.delete("Pod", ns, n)
        api.delete("Service", "shop", "dual")
        api.apply(pod("shop", "late-arrival", ip="10.244.4.4", node="node-1"))
        api.compact()
        time.sleep(0.5)
        api.fault(None)
        self.assertTrue(w.wait_synced(RESOURCES, 20, after=mark), f"not synced again: {w.err[errmark:]}")
        self.assert_state(w, api, kc)
        for r in RESOURCES:
            lists = self.requests(api, r, since, watch=False)
            self.assertEqual(len(lists), 1, f"{r}: {len(lists)} relists after 410 (want 1): {lists}")
            failed = [l for l in w.err[errmark:] if l.startswith(f"tapwire-kube-watch: {r}: ") and "failed" in l]
            self.assertEqual(len(failed), 1, f"{r}: want one failure line for the outage, got {failed}")
        deleted = {f["uid"] for f in w.frames[mark:] if f.get("op") == "delete"}
        self.assertTrue(gone_uids <= deleted, f"vanished objects not reported deleted: {gone_uids - deleted}")
        print("\n".join(w.err[errmark:]))

        self.assert_no_bad_frames(w)
        rc = w.stop()
        self.assertEqual(rc, 0, f"exit {rc} on SIGTERM: {w.err[-5:]}")
        stats = [f for f in w.frames if f.get("kind") == "Stats"]
        self.assertTrue(stats, "no Stats frame")
        final = stats[-1]
        self.assertEqual(final["node"], "node-1")
        self.assertEqual(final["relists"], 6, final)
        self.assertGreater(final["events"], 0, final)
        self.assertGreater(final["bookmarks"], 0, final)

    # ---- 3. faults ----------------------------------------------------------
    def test_3_faults(self):
        api = self.server("faults", bookmark_interval=0.3)
        kc = api.write_kubeconfig(self.dir / "faults.kubeconfig")
        api.apply(pod("f", "p0", ip="10.50.0.1", node="n1"))
        api.apply(service("f", "s0", cluster_ip="10.96.50.1"))
        w = self.watcher("faults", ["--kubeconfig", kc, "--resources", "pods,services", "--watch-timeout", "30",
                                    "--idle-timeout", "2", "--backoff-scale", "0.02"])
        self.assertTrue(w.wait_synced(("pods", "services"), 15), w.err)
        kinds = {"Pod", "Service"}
        cases = [
            ("401", {}, r"^HTTP 401 Unauthorized: check the token or kubeconfig$"),
            ("403", {}, r"^HTTP 403 Forbidden: pods is forbidden: .*: grant list and watch on pods"),
            ("410", {}, r"410 Gone again right after a relist"),
            ("garbage", {}, r"invalid JSON at byte 1 .*<html><body>502"),
            ("truncated", {}, r"cut in the middle of an event|ended in the middle of an event"),
            ("garbage", {"watch_only": True, "line_bytes": 5 << 20}, r"larger than 4 MiB"),
            ("hang", {}, r"nothing arrived on the watch for 2s"),
            ("unreachable", {}, r"cannot connect to https://127\.0\.0\.1:\d+"),
        ]
        n = 0
        peak = 0
        for mode, kw, pattern in cases:
            label = mode + (" (5 MiB event)" if kw.get("line_bytes") else "")
            mark, errmark, since = w.count(), len(w.err), len(api.requests)
            api.fault(mode, kinds=None if mode == "unreachable" else ["Pod"], **kw)
            if mode in ("401", "403"):
                api.close_watches(["Pod"])  # the next request meets the fault
            got = w.wait(lambda w_: (w_.last_sync("pods", mark) or {}).get("state") == "lost", 15)
            self.assertTrue(got, f"{label}: no Sync lost for pods; stderr: {w.err[errmark:]}")
            err = w.last_sync("pods", mark)["error"]
            self.assertRegex(err, pattern, f"{label}: unclear error")
            # The world moves on during the fault; retries go on meanwhile.
            api.apply(pod("f", f"p{n + 1}", ip=f"10.50.0.{n + 2}", node="n1"))
            api.delete("Pod", "f", f"p{n}")
            n += 1
            time.sleep(1.5)
            self.assertTrue(w.alive(), f"{label}: the watcher died: {w.err[-5:]}")
            rss = w.rss_kib()
            peak = max(peak, rss)
            self.assertLess(rss, RSS_BOUND_MIB * 1024, f"{label}: RSS {rss} KiB")
            failed = [l for l in w.err[errmark:] if l.startswith("tapwire-kube-watch: pods: ") and "failed" in l]
            self.assertEqual(len(failed), 1, f"{label}: want one stderr line for the fault, got {failed}")
            self.assertIn(err, failed[0], f"{label}: the log line and the Sync error differ")
            lost_frames = [s for s in w.syncs("pods", mark) if s["state"] == "lost"]
            self.assertEqual(len(lost_frames), 1, f"{label}: {lost_frames}")
            if mode != "unreachable":
                self.assertIsNone(w.last_sync("services", mark), f"{label}: services were hit by a pods fault")
            api.fault(None)
            ok = w.wait(lambda w_: (w_.last_sync("pods", mark) or {}).get("state") == "synced", 20)
            self.assertTrue(ok, f"{label}: not synced again after the fault cleared; stderr: {w.err[errmark:]}")
            self.assert_state(w, api, kinds=kinds)
            retries = len([r for r in api.requests[since:] if r["path"] == PATHS["pods"]])
            print(f"fault {label}: lost with \"{err}\"; {retries} pods requests while it lasted; recovered; "
                  f"RSS {rss} KiB")
            for l in w.err[errmark:]:
                print(f"   {l}")
        self.assert_no_bad_frames(w)
        hwm = w.rss_kib("VmHWM")
        print(f"faults: peak RSS {hwm} KiB")
        self.assertLess(hwm, RSS_BOUND_MIB * 1024)
        self.assertEqual(w.stop(), 0)

    # ---- 4. credentials, in-cluster, rotation, netns -------------------------
    def test_4_credentials(self):
        api = self.server("creds", bookmark_interval=0.5, token="token-one")
        sa = self.dir / "serviceaccount"
        sa.mkdir()
        (sa / "ca.crt").write_bytes(api.ca_file.read_bytes())
        (sa / "token").write_text("token-one\n")
        for f in (sa, sa / "ca.crt", sa / "token"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        populate(api)
        env = {**os.environ, "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(api.port)}
        w = self.watcher("incluster", ["--service-account-dir", sa, "--resources", "pods,nodes",
                                       "--watch-timeout", "30", "--backoff-scale", "0.05"], env=env)
        self.assertTrue(w.wait_synced(("pods", "nodes"), 15), w.err)
        self.assertRegex(w.err[0], r"in-cluster service account")
        # The kubelet rotates the token (a new file, swapped in); the old one
        # stays valid a while, then expires.
        mark, since = w.count(), len(api.requests)
        api.also_accept = {"token-one"}
        api.token = "token-two"
        tmp = sa / "token.new"
        tmp.write_text("token-two\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, sa / "token")
        api.close_watches()
        self.assertTrue(wait_until(lambda: self.requests(api, "pods", since, watch=True)
                                   and self.requests(api, "nodes", since, watch=True), 10))  # logged: registered
        # The watcher logs the new token before its requests; its stderr is read
        # by another thread, which may not have the line yet.
        self.assertTrue(wait_until(lambda: any("read a new token" in l for l in w.err), 10),
                        f"the rotated token was not read: {w.err}")
        api.also_accept = set()
        since = len(api.requests)
        api.close_watches()
        self.assertTrue(wait_until(lambda: len(self.requests(api, "pods", since, watch=True)) >= 1
                                   and len(self.requests(api, "nodes", since, watch=True)) >= 1, 10))
        time.sleep(1)
        self.assertEqual([r for r in api.requests[since:] if r["status"] != 200], [],
                         "requests failed once the old token expired")
        self.assertEqual([s for s in w.syncs("pods", mark) + w.syncs("nodes", mark) if s["state"] == "lost"], [])
        self.assertTrue(any("read a new token" in l for l in w.err), w.err)
        # ReplicaSets and Jobs are not watched here: owners are the documented guess.
        self.assert_state(w, api, kinds={"Pod", "Node"}, watched=())
        owners = {f["name"]: f.get("owner") for f in w.state().values() if f["kind"] == "Pod"}
        self.assertEqual(owners["web-5d8f7c9b4-x2x4q"], {"kind": "Deployment", "name": "web"})
        self.assertEqual(owners["report-28450-abcde"], {"kind": "Job", "name": "report-28450"})
        rc = w.stop()
        self.assertEqual(rc, 0)
        # Stats count what the server saw, request by request.
        final = [f for f in w.frames if f.get("kind") == "Stats"][-1]
        seen = {}
        for r in api.requests:
            for res, p in PATHS.items():
                if r["path"] == p:
                    key = f"{res}/{'watch' if r['watch'] else 'list'}"
                    seen[key] = seen.get(key, 0) + 1
        self.assertEqual(final["requests"], seen, "Stats requests differ from the server's log")

        # A client certificate instead of a token.
        kc = api.write_kubeconfig(self.dir / "cert.kubeconfig", client_cert=True)
        self.assertNotIn("token", kc.read_text())
        w = self.watcher("clientcert", ["--kubeconfig", kc, "--resources", "nodes"])
        self.assertTrue(w.wait_synced(("nodes",), 15), w.err)
        self.assertEqual(w.stop(), 0)

        # A wrong CA and a wrong token: lost, one line each, naming the cause.
        other = self.server("other-ca")
        cfg = json.loads(api.write_kubeconfig(self.dir / "wrongca.kubeconfig").read_text())
        cfg["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
            other.ca_file.read_bytes()).decode()
        (self.dir / "wrongca.kubeconfig").write_text(json.dumps(cfg))
        for name, kc, pattern in (
                ("wrongca", self.dir / "wrongca.kubeconfig", r"TLS: the certificate of https://127\.0\.0\.1:\d+ is "
                                                             r"not trusted .*: check certificate-authority"),
                ("wrongtoken", api.write_kubeconfig(self.dir / "wrongtoken.kubeconfig", token="nope"),
                 r"HTTP 401 Unauthorized: check the token or kubeconfig")):
            w = self.watcher(name, ["--kubeconfig", kc, "--resources", "nodes", "--backoff-scale", "0.01"])
            self.assertTrue(w.wait(lambda w_: w_.last_sync("nodes"), 15), w.err)
            self.assertEqual(w.last_sync("nodes")["state"], "lost")
            self.assertRegex(w.last_sync("nodes")["error"], pattern)
            time.sleep(1)  # retries happen, lines do not
            lines = [l for l in w.err if "failed" in l]
            self.assertEqual(len(lines), 1, lines)
            print(f"{name}: {lines[0]}")
            self.assertEqual(w.stop(), 0)

        # A server inside a network namespace, reached from a process in it.
        ns = f"twkube-{os.getpid()}"
        lab.run(["ip", "netns", "add", ns])
        self.netns.append(ns)
        lab.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"])
        napi = self.server("netns", netns=ns)
        napi.apply(node("ns-node", addresses=["10.77.0.1"]))
        nkc = napi.write_kubeconfig(self.dir / "netns.kubeconfig")
        with socket.socket() as s:
            s.settimeout(2)
            self.assertNotEqual(s.connect_ex(("127.0.0.1", napi.port)), 0, "the netns server is reachable outside")
        w = self.watcher("netns", ["--kubeconfig", nkc, "--resources", "nodes"], prefix=("ip", "netns", "exec", ns))
        self.assertTrue(w.wait_synced(("nodes",), 15), w.err)
        self.assert_state(w, napi, kinds={"Node"})
        self.assertEqual(w.stop(), 0)

    # ---- 5. bad input -----------------------------------------------------------
    def test_5_bad_input(self):
        api = self.server("bad")
        good = api.write_kubeconfig(self.dir / "bad-good.kubeconfig")
        bad_yaml = self.dir / "bad-yaml.kubeconfig"
        bad_yaml.write_text("apiVersion: v1\nclusters:\n  - name: x\n   cluster: [unclosed\n")
        exec_cfg = json.loads(good.read_text())
        exec_cfg["users"][0]["user"] = {"exec": {"command": "gke-gcloud-auth-plugin", "apiVersion":
                                                 "client.authentication.k8s.io/v1beta1"}}
        exec_kc = self.dir / "bad-exec.kubeconfig"
        exec_kc.write_text(json.dumps(exec_cfg))
        env_no_k8s = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
        cases = [
            (["--page-size", "0"], r"--page-size"),
            (["--resources", "pods,bogus", "--kubeconfig", good], r'unknown resource "bogus"'),
            (["--kubeconfig", self.dir / "nonexistent"], r"cannot read kubeconfig .*nonexistent: No such file"),
            (["--kubeconfig", bad_yaml], r"kubeconfig .*bad-yaml.kubeconfig: line \d+: .*fix the YAML"),
            (["--kubeconfig", exec_kc], r"plugin \(exec/auth-provider\).*token or a client certificate"),
            (["--kubeconfig", good, "--context", "nope"], r'no context named "nope"'),
            ([], r"no API server to watch: pass --kubeconfig FILE"),
            (["--kubeconfig", good, "--user", "no-such-user-tw"], r"--user no-such-user-tw: no such user"),
            (["--kubeconfig", good, "--user", "root"], r"--user root has uid or gid 0"),
            (["--watch-timeout", "abc"], r"--watch-timeout"),
        ]
        for args, pattern in cases:
            r = subprocess.run([str(watch_bin()), *map(str, args)], capture_output=True, text=True, timeout=20,
                               env=env_no_k8s, stdin=subprocess.DEVNULL)
            lines = [l for l in r.stderr.splitlines() if l.strip()]
            print(f"{' '.join(map(str, args)) or '(no arguments)'}: exit {r.returncode}: {r.stderr.strip()}")
            self.assertGreater(r.returncode, 0, f"{args}: exit {r.returncode}")
            self.assertLess(r.returncode, 128, f"{args}: killed by a signal")
            self.assertEqual(len(lines), 1, f"{args}: want one error line, got {lines}")
            self.assertRegex(lines[0], pattern)
            self.assertEqual(r.stdout, "", f"{args}: wrote to stdout")
        r = subprocess.run([str(watch_bin()), "--version"], capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^tapwire-kube-watch \d+\.\d+\.\d+\n$")
        self.assertEqual(api.requests, [], "a refused start talked to the API server")

    # ---- 6. 100k pods ---------------------------------------------------------------
    def test_6_scale_100k_pods(self):
        n_pods, n_rs = 100_000, 2_000
        api = self.server("scale", bookmark_interval=2)
        kc = api.write_kubeconfig(self.dir / "scale.kubeconfig")
        t = time.monotonic()
        rs_objs = [replicaset(f"ns-{i % 100}", f"app{i}-{i:08x}", deployment=f"app{i}") for i in range(n_rs)]
        api.load(rs_objs)  # taken over: the server's uids land in these dicts
        rs_by_i = [(o["metadata"]["namespace"], o["metadata"]["name"], o["metadata"]["uid"]) for o in rs_objs]
        gc.disable()  # 100k pods of nested dicts: no use rescanning them while they are built
        try:
            pods = []
            for i in range(n_pods):
                ns, rsn, rsu = rs_by_i[i % n_rs]
                pods.append(pod(ns, f"{rsn}-{i:06d}", ip=f"10.{64 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}",
                                node=f"node-{i % 50}", owner=("ReplicaSet", rsn, rsu), labels={"app": rsn}))
            api.load(pods)
            del pods
        finally:
            gc.enable()
        log(f"{n_pods} pods and {n_rs} replicasets loaded into the server in {time.monotonic() - t:.1f}s")
        t = time.monotonic()
        w = self.watcher("scale", ["--kubeconfig", kc, "--resources", "pods,replicasets", "--watch-timeout", "60"],
                         decode=False)
        self.assertTrue(w.wait_synced(("pods", "replicasets"), 120), f"not synced: {w.err}")
        took = time.monotonic() - t
        cpu = lab.proc_cpu_seconds(w.pid)
        with w._cv:
            raw = list(w.raw)
        pod_frames = [f for f in map(json.loads, raw) if f.get("kind") == "Pod"]
        uids = {f["uid"] for f in pod_frames}
        self.assertEqual(len(uids), n_pods, "pods missing from the output")
        self.assertEqual(len(pod_frames), n_pods, "pods reported twice in one list")
        bad_owner = [f for f in pod_frames if (f.get("owner") or {}).get("kind") != "Deployment"]
        self.assertEqual(bad_owner[:1], [], "owners not resolved through the ReplicaSets")
        want = {o["metadata"]["uid"] for o in api.list("Pod")}
        self.assertEqual(uids, want)
        hwm = w.rss_kib("VmHWM")
        rss = w.rss_kib()
        pages = len(self.requests(api, "pods", watch=False))
        print(f"100k pods: listed in {pages} pages and reported in {took:.1f}s (watcher CPU {cpu:.1f}s); watcher "
              f"peak RSS (VmHWM) {hwm / 1024:.1f} MiB, RSS after the list {rss / 1024:.1f} MiB "
              f"(bound {RSS_BOUND_MIB} MiB)")
        self.assertEqual(pages, n_pods // 500)
        self.assertLess(hwm, RSS_BOUND_MIB * 1024, f"peak RSS {hwm} KiB over {RSS_BOUND_MIB} MiB")
        self.assert_no_bad_frames(w)
        self.assertEqual(w.stop(), 0)

        # A reader that stops reading must not keep the watcher from stopping.
        p = subprocess.Popen([str(watch_bin()), "--kubeconfig", str(kc), "--resources", "pods"],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lab._die_with_parent(signal.SIGKILL))
        try:
            time.sleep(3)  # the pipe fills up and the watcher waits for it
            self.assertIsNone(p.poll(), "the watcher exited with a full stdout")
            t = time.monotonic()
            p.send_signal(signal.SIGTERM)
            rc = p.wait(15)
            took = time.monotonic() - t
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        err = p.stderr.read().decode(errors="replace")
        p.stdout.close()
        p.stderr.close()
        print(f"stdout never read: exit {rc} {took:.1f}s after SIGTERM; {err.strip().splitlines()[-1]}")
        self.assertLess(took, 5, "slow to stop with a blocked stdout")
        self.assertIn("stdout is not being read", err)


def populate(api: KubeApiServer) -> dict:
    """A small cluster: every owner chain, dual stack, hostNetwork, pending
    and podIP-only pods, init containers, three runtimes, a headless service."""
    rs = api.apply(replicaset("shop", "web-5d8f7c9b4", deployment="web"))
    rs_uid = rs["metadata"]["uid"]
    legacy = api.apply(replicaset("shop", "legacy-x7k2p"))  # no Deployment: the ReplicaSet is the owner
    jb = api.apply(job("batch", "report-28450", cronjob="report"))
    mig = api.apply(job("batch", "migrate"))
    api.apply(node("node-1", addresses=["10.0.0.5", ("ExternalIP", "203.0.113.5"), "fd00::5"]))
    api.apply(node("node-2", addresses=["10.0.0.6"]))
    web = api.apply(pod("shop", "web-5d8f7c9b4-x2x4q", ip="10.244.1.7", node="node-1",
                        owner=("ReplicaSet", "web-5d8f7c9b4", rs_uid), labels={"app": "web"}))
    api.apply(pod("shop", "web-5d8f7c9b4-9ffq2", ip="10.244.1.8", ip6="fd00:244::8", node="node-2",
                  owner=("ReplicaSet", "web-5d8f7c9b4", rs_uid), labels={"app": "web"}))
    api.apply(pod("shop", "legacy-x7k2p-abcde", ip="10.244.1.9", node="node-1",
                  owner=("ReplicaSet", "legacy-x7k2p", legacy["metadata"]["uid"])))
    api.apply(pod("data", "db-0", ip="10.244.2.5", node="node-2", owner=("StatefulSet", "db", None),
                  containers=(("postgres", "cri-o://" + "ab" * 32), ("exporter", "docker://" + "cd" * 32))))
    api.apply(pod("kube-system", "agent-7xk2d", ip="10.0.0.5", node="node-1", host_network=True,
                  owner=("DaemonSet", "agent", None)))
    api.apply(pod("batch", "report-28450-abcde", ip="10.244.3.1", node="node-2",
                  owner=("Job", "report-28450", jb["metadata"]["uid"])))
    api.apply(pod("batch", "migrate-zzzzz", ip="10.244.3.2", node="node-2",
                  owner=("Job", "migrate", mig["metadata"]["uid"])))
    dbg = pod("tools", "debug", ip="10.244.2.9", node="node-2", containers=(("shell", None), ("sidecar", None)))
    dbg["status"]["initContainerStatuses"] = [{"name": "init", "containerID": "containerd://" + "ef" * 32,
                                               "ready": False, "restartCount": 0,
                                               "state": {"terminated": {"exitCode": 0}}}]
    api.apply(dbg)
    api.apply(pod("tools", "waiting", ip=None, node="", phase="Pending", containers=(("main", ""),)))
    only_ip = pod("tools", "old-style", ip="10.244.2.10", node="node-2")
    del only_ip["status"]["podIPs"]  # an older kubelet: status.podIP only
    api.apply(only_ip)
    api.apply(service("shop", "web", cluster_ip="10.96.0.12"))
    api.apply(service("shop", "dual", cluster_ip=["10.96.0.13", "fd00:96::13"],
                      ports=(("http", 80, "TCP"), ("dns", 53, "UDP"))))
    api.apply(service("data", "db", cluster_ip="None", ports=(("pg", 5432, "TCP"),)))
    api.apply(endpointslice("shop", "web-abcde", service="web", addresses=["10.244.1.7", "10.244.1.8"],
                            ports=(("http", 8080, "TCP"),)))
    api.apply(endpointslice("data", "db-xyz12", service="db", addresses=["10.244.2.5"], ports=(("pg", 5432, "TCP"),)))
    return {"rs_uid": rs_uid, "web_uid": web["metadata"]["uid"]}


def _require() -> None:
    lab.require(binaries=False, tools=("kubectl", "openssl", "ip"))
    if not os.access(watch_bin(), os.X_OK):
        msg = f"cannot run: missing binary {watch_bin()} (build first; TW_BUILD_DIR={lab.build_dir()})"
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


if __name__ == "__main__":
    _require()
    unittest.main(verbosity=2)

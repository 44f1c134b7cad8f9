#!/usr/bin/env python3
"""The identity lab checks itself against references: real clients between
pods (curl over IPv4 and IPv6, dig, redis-cli), tcpdump on a pod's veth,
/proc/PID/cgroup and /proc/PID/ns/net of every process, the kernel's cgroup
ids (name_to_handle_at), the real kubectl against the lab's API server; and
that nothing the lab made is left after it exits: normally, after an
exception, on SIGTERM/SIGHUP/SIGINT, and (swept by the next lab) after
SIGKILL. Needs root, netns and cgroup v2. The tapwire binaries are optional:
when tapwire-sensor is built, it must attach to exactly the pods' veths
through lab.veth_regex and (with --kubeconfig) reach the API server from the
node namespace. The whole file is bounded to 90 s (SIGALRM)."""

import ctypes
import ipaddress
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import textwrap
import time
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import identity_lab  # noqa: E402
import lab  # noqa: E402
from identity_lab import IdentityLab  # noqa: E402

TIME_LIMIT = 90  # seconds, the whole file
HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------
# references, independent of the lab's own code

CGROUP2_SUPER_MAGIC = "63677270"


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]


_libc = ctypes.CDLL(None, use_errno=True)


def kernel_cgroup_id(path) -> int:
    """The cgroup id as the kernel hands it out: the kernfs file handle of the
    directory (name_to_handle_at), which is what BPF's cgroup ids are."""
    fh = _FileHandle()
    fh.handle_bytes = 128
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(-100, os.fsencode(str(path)), ctypes.byref(fh), ctypes.byref(mount_id), 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    if fh.handle_bytes != 8:
        raise AssertionError(f"unexpected cgroup file handle size {fh.handle_bytes}")
    return int.from_bytes(bytes(fh.f_handle[:8]), "little")


def expected_cgroup(lab_id: str, driver: str, qos: str, uid: str, cid: str) -> str:
    """The kubelet's layouts (docs/IDENTITY.md), below the lab's root."""
    if driver == "systemd":
        u = uid.replace("-", "_")
        pod = f"kubepods-pod{u}.slice" if qos == "guaranteed" else \
            f"kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice"
        return f"/twid-{lab_id}/kubepods.slice/{pod}/cri-containerd-{cid}.scope"
    pod = f"pod{uid}" if qos == "guaranteed" else f"{qos}/pod{uid}"
    return f"/twid-{lab_id}/kubepods/{pod}/{cid}"


def proc_cgroup(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"no cgroup v2 line for {pid}")


def netns_inode_of(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def process_tree() -> dict[int, list[int]]:
    """ppid -> pids, of every process."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    return children


def descendants(pid: int, children: dict[int, list[int]]) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out and identity_lab.process_alive(c):
                out.add(c)
                todo.append(c)
    return out


def netns_names() -> list[str]:
    r = lab.run(["ip", "netns", "list"], check=False, timeout=20)
    return [l.split()[0] for l in r.stdout.splitlines() if l.split()]


def leftovers(inv: dict) -> list[str]:
    """What of a lab (its inventory) still exists, read from the system."""
    found = []
    labid = inv["id"]
    names = netns_names()
    for ns in names:
        if ns.startswith(f"twid-{labid}-"):
            found.append(f"network namespace {ns}")
    inodes = set(inv["netns_inodes"].values())
    cg_mark = f"/twid-{labid}/"
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            if netns_inode_of(int(d)) in inodes and identity_lab.process_alive(int(d)):
                found.append(f"process {d} in a lab network namespace")
            cg = proc_cgroup(int(d))
            if (cg + "/").startswith(cg_mark) and identity_lab.process_alive(int(d)):
                found.append(f"process {d} in lab cgroup {cg}")
        except (OSError, AssertionError):
            continue
    for pid, start in inv["pids"].items():
        if identity_lab.process_alive(int(pid), start):
            found.append(f"process {pid} still runs")
    links = lab.run(["ip", "-o", "link", "show"], check=False, timeout=20).stdout
    for name in [inv["bridge"]] + inv["veths"]:
        if re.search(rf"\b{re.escape(name)}[@:]", links):
            found.append(f"interface {name} in the root namespace")
    node = f"twid-{labid}-node"
    if node in names:
        nl = lab.run(["ip", "-n", node, "-o", "link", "show"], check=False, timeout=20).stdout
        for name in [inv["bridge"]] + inv["veths"]:
            if re.search(rf"\b{re.escape(name)}[@:]", nl):
                found.append(f"interface {name} in {node}")
    if Path(inv["cgroup_root"]).exists():
        found.append(f"cgroup {inv['cgroup_root']}")
    if Path(inv["dir"]).exists():
        found.append(f"directory {inv['dir']}")
    for c in inv["claims"]:
        try:
            owner = json.loads(Path(c).read_text()).get("pid")
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            owner = inv["pid"]
        if owner == inv["pid"]:  # (another lab may hold the same /16 by now)
            found.append(f"claim {c}")
    return found


def table(out: str) -> list[dict]:
    """kubectl's table output as dicts keyed by header (columns split at the
    header's offsets: values line up with their headers)."""
    lines = [l for l in out.splitlines() if l.strip()]
    if not lines:
        return []
    hdr = lines[0]
    starts = [m.start() for m in re.finditer(r"(?<!\S)\S+(?: \S+)*", hdr)]
    keys = [hdr[s:e].strip() for s, e in zip(starts, starts[1:] + [None])]
    rows = []
    for l in lines[1:]:
        rows.append({k: l[s:e].strip() for k, s, e in zip(keys, starts, starts[1:] + [None])})
    return rows


_T0 = [time.monotonic()]


def phase(name: str) -> None:
    now = time.monotonic()
    print(f"  {now - _T0[0]:5.1f}s  {name}", flush=True)


def http(pod, url, **kw):
    """(status, body bytes) of a GET from pod."""
    out = pod.dir / "curl.body"
    r = pod.curl(url, extra=["-o", out, "-w", "%{http_code}"], **kw)
    return int(r.stdout.strip() or 0), out.read_bytes() if out.exists() else b""


class IdentityLabTest(unittest.TestCase):
    maxDiff = None

    # ------------------------------------------------------------------
    def test_1_lab_is_what_it_claims(self):
        files = IdentityLab.file_bytes()
        _T0[0] = time.monotonic()
        with IdentityLab() as L:
            self.assertEqual(lab.run(["stat", "-f", "-c", "%t", L.cgroup2]).stdout.strip(), CGROUP2_SUPER_MAGIC)
            self.assertTrue(L.cgroup_root.is_dir() and L.cgroup_root.parent == L.cgroup2)
            self.assertTrue(ipaddress.ip_address(L.node_ip) in ipaddress.ip_network("10.64.0.0/10"))
            self.assertTrue(L.node_ip6.startswith("fd"))
            t0 = time.monotonic()
            web1 = L.add_pod("shop", "web-1")
            web2 = L.add_pod("shop", "web-2", cgroup_driver="cgroupfs", qos="burstable")
            db = L.add_pod("shop", "db-0", workload=("StatefulSet", "db"), qos="guaranteed",
                           containers=("main", "sidecar"))
            dns = L.add_pod("kube-system", "dns", workload=None, cgroup_driver="cgroupfs", qos="guaranteed",
                            containers=("dns",))
            cache = L.add_pod("batch", "cache-0", workload=("Job", "batch-1"), qos="burstable")
            agent = L.add_pod("kube-system", "agent-x1", workload=("DaemonSet", "agent"), host_network=True)
            client = L.add_pod("batch", "client", workload=("CronJob", "nightly"))
            pods = [web1, web2, db, dns, cache, agent, client]
            servers = {web1: [web1.start_nginx()], web2: [web2.start_nginx(port=8080)],
                       db: [db.start_redis(), db.start_nginx(container="sidecar")],
                       dns: [dns.start_dnsmasq(records={"web.id.test": web1.ip, "db.id.test": db.ip,
                                                        "v6.id.test": web1.ip6}, container="dns")],
                       cache: [cache.start_redis(port=6380)], agent: [agent.start_nginx(port=8081)]}
            servers[client] = [client.spawn("sleeper", ["sleep", "600"])]
            phase(f"7 pods and their servers in {time.monotonic() - t0:.1f}s")

            # ---- addresses, names, interfaces
            phase('addresses, names, interfaces')
            ips = [p.ip for p in pods if not p.host_network]
            self.assertEqual(len(set(ips)), len(ips))
            self.assertEqual((agent.ip, agent.ip6, agent.netns, agent.veth), (L.node_ip, L.node_ip6, None, None))
            node_links = json.loads(L.node_run(["ip", "-d", "-j", "link", "show"]).stdout)
            by_name = {l["ifname"]: l for l in node_links}
            rx = re.compile(L.veth_regex)
            self.assertEqual(sorted(n for n in by_name if rx.fullmatch(n)),
                             sorted(p.veth for p in pods if p.veth), "veth_regex matches exactly the pod veths")
            self.assertEqual(by_name[L.bridge].get("linkinfo", {}).get("info_kind"), "bridge")
            for p in pods:
                self.assertLessEqual(len(p.veth or ""), 15)
                if p.host_network:
                    continue
                v = by_name[p.veth]
                self.assertEqual(v.get("master"), L.bridge)
                eth0 = json.loads(lab.run(["ip", "-n", p.netns, "-j", "addr", "show", "eth0"]).stdout)[0]
                self.assertEqual(v.get("link_index"), eth0["ifindex"], f"{p.veth} is the peer of {p}'s eth0")
                self.assertEqual(eth0["address"], p.mac)
                addrs = {(a["family"], a["local"], a["prefixlen"]) for a in eth0["addr_info"]
                         if a.get("scope") == "global"}
                self.assertEqual(addrs, {("inet", p.ip, 16), ("inet6", p.ip6, 64)})
                routes = lab.run(["ip", "-n", p.netns, "route", "show", "default"]).stdout + \
                    lab.run(["ip", "-n", p.netns, "-6", "route", "show", "default"]).stdout
                self.assertIn(f"via {L.node_ip} ", routes)
                self.assertIn(f"via {L.node_ip6} ", routes)

            # ---- the sensor (when built) attaches to the pods' veths through veth_regex, from the node
            phase("the sensor in the node namespace")
            if os.access(lab.sensor_bin(), os.X_OK):
                sensor = L.start_sensor()
                st = sensor.wait_status_update(5) or sensor.status()
                self.assertEqual(sorted(i["name"] for i in st["interfaces"]), sorted(p.veth for p in pods if p.veth))
                self.assertEqual(netns_inode_of(sensor.pid), os.stat(f"/run/netns/{L.node_ns}").st_ino)
                if L.sensor_kube_flags:
                    # its watcher, unprivileged in the node namespace, lists and watches pods at 127.0.0.1
                    deadline = time.monotonic() + 15
                    def pod_requests():
                        return {bool(q.get("watch")) for q in list(L.api.requests) if q.get("path") == "/api/v1/pods"}
                    while time.monotonic() < deadline and pod_requests() != {False, True}:
                        time.sleep(0.2)
                    seen = pod_requests()
                    self.assertEqual(seen, {False, True}, f"the sensor's watcher: list and watch of pods\n"
                                                          f"{sensor.output()[-3000:]}")
                self.assertEqual(sensor.stop(), 0, sensor.output()[-2000:])
                print(f"  sensor: kube flags passed: {L.sensor_kube_flags}", flush=True)
            else:
                print(f"  no {lab.sensor_bin()}: start_sensor not checked", flush=True)

            # ---- pod to pod, against real clients and the content lab.py serves
            phase('pod to pod, against real clients and the content lab.py serves')
            tcpd = L.start_tcpdump(web1.veth, L.dir / "web1.pcap")
            self.assertEqual(http(client, f"http://{web1.ip}/f/100b.bin"), (200, files["100b.bin"]))
            tcpd.stop()
            r = lab.run(["tcpdump", "-n", "-r", tcpd.out, "tcp"], check=False)
            flows = set(re.findall(r"IP (\d+\.\d+\.\d+\.\d+)\.\d+ > (\d+\.\d+\.\d+\.\d+)\.\d+:", r.stdout))
            self.assertEqual(flows, {(client.ip, web1.ip), (web1.ip, client.ip)}, r.stdout[-2000:])
            self.assertEqual(http(client, f"http://[{web1.ip6}]/f/10k.bin"), (200, files["10k.bin"]))
            self.assertEqual(http(client, f"http://{web1.ip}/status/503")[0], 503)
            self.assertEqual(http(client, f"http://[{web1.ip6}]/status/404")[0], 404)
            self.assertEqual(http(web1, f"http://{web2.ip}:8080/f/10k.bin"), (200, files["10k.bin"]))
            self.assertEqual(http(web1, f"http://[{web2.ip6}]:8080/status/201")[0], 201)
            self.assertEqual(http(cache, f"http://{db.ip}/f/100b.bin"), (200, files["100b.bin"]))
            # the hostNetwork pod's server: at the node's addresses, from pods and from the node itself
            self.assertEqual(http(client, f"http://{L.node_ip}:8081/f/100b.bin"), (200, files["100b.bin"]))
            self.assertEqual(http(web2, f"http://[{L.node_ip6}]:8081/status/502")[0], 502)
            r = L.node_run(["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                            "http://127.0.0.1:8081/f/10k.bin"])
            self.assertEqual(r.stdout, "200")
            # DNS
            r = client.dig("web.id.test", dns.ip)
            self.assertIn("status: NOERROR", r.stdout)
            self.assertEqual(re.findall(r"^web\.id\.test\.\s+\d+\s+IN\s+A\s+(\S+)$", r.stdout, re.M), [web1.ip])
            r = client.dig("v6.id.test", dns.ip6, qtype="AAAA")
            self.assertIn("status: NOERROR", r.stdout)
            self.assertEqual(re.findall(r"^v6\.id\.test\.\s+\d+\s+IN\s+AAAA\s+(\S+)$", r.stdout, re.M),
                             [web1.ip6])
            # NXDOMAIN in the zone and outside it, over IPv4 and IPv6: one dig, four queries
            r = client.run(["dig", "+time=2", "+tries=1", "+noall", "+comments",
                            f"@{dns.ip}", "nosuch.id.test", f"@{dns.ip}", "www.example.com",
                            f"@{dns.ip6}", "nosuch.id.test", f"@{dns.ip6}", "www.example.com"], timeout=30)
            self.assertEqual(re.findall(r"status: (\w+)", r.stdout), ["NXDOMAIN"] * 4, r.stdout)
            self.assertIn("status: NOERROR", web2.dig("db.id.test", dns.ip, tcp=True).stdout)
            # redis
            self.assertEqual(client.redis_cli(db.ip, "PING").stdout.strip(), "PONG")
            self.assertEqual(client.redis_cli(cache.ip6, "PING", port=6380).stdout.strip(), "PONG")
            web1.redis_cli(db.ip, "SET", "k", "v1")
            self.assertEqual(web2.redis_cli(db.ip6, "GET", "k").stdout.strip(), "v1")

            # ---- processes: network namespace and cgroup of every process of every pod
            phase('processes: network namespace and cgroup of every process of every pod')
            node_ino = os.stat(f"/run/netns/{L.node_ns}").st_ino
            ptree = process_tree()
            for p in pods:
                ns_ino = os.stat(f"/run/netns/{p.netns}").st_ino if p.netns else node_ino
                expected = {c.name: expected_cgroup(L.id, p.cgroup_driver, p.qos, p.uid, c.id)
                            for c in p.containers.values()}
                for c in p.containers.values():
                    self.assertRegex(c.id, r"^[0-9a-f]{64}$")
                    self.assertEqual(c.path, expected[c.name])
                    self.assertEqual(c.cgroup, Path(str(L.cgroup2) + expected[c.name]))
                    self.assertTrue(c.cgroup.is_dir())
                    # cgroup id: the directory's inode, the kernel's id
                    self.assertEqual(c.cgroup_id, os.stat(c.cgroup).st_ino)
                    self.assertEqual(c.cgroup_id, kernel_cgroup_id(c.cgroup))
                    # a one-shot command of the container
                    r = p.run(["sh", "-c", "grep '^0::' /proc/self/cgroup; readlink /proc/self/ns/net"],
                              container=c.name)
                    self.assertEqual(r.stdout.split(), ["0::" + expected[c.name], f"net:[{ns_ino}]"])
                procs = servers[p]
                want = set()
                for srv in procs:
                    cname = srv.cmd[3].split("/")[-2]  # the container dir in the cgroup.procs argument
                    cont = [c for c in p.containers.values() if c.cgroup.name == cname][0]
                    tree = {srv.pid} | descendants(srv.pid, ptree)
                    want |= tree
                    for pid in tree:
                        self.assertEqual(proc_cgroup(pid), expected[cont.name], f"{srv.name} pid {pid}")
                        self.assertEqual(netns_inode_of(pid), ns_ino, f"{srv.name} pid {pid}")
                self.assertEqual(set(p.pids()), want, f"{p}: pids() are the servers and their children")
            # the node's own processes: node namespace, root cgroup
            r = L.node_run(["sh", "-c", "grep '^0::' /proc/self/cgroup; readlink /proc/self/ns/net"])
            self.assertEqual(r.stdout.split(), ["0::" + L.cgroup2_root, f"net:[{node_ino}]"])
            ids = [c.cgroup_id for p in pods for c in p.containers.values()]
            self.assertEqual(len(set(ids)), len(ids))

            # ---- the API server, through the real kubectl
            phase('the API server, through the real kubectl')
            svc_web = L.add_service("shop", "web", [web1, web2])
            svc_db = L.add_service("shop", "db", [db], port=6379, target_port=6379)
            self.check_kubectl(L, pods, [svc_web, svc_db], what=("pods", "slices"))
            self.check_objects(L, pods, [svc_web, svc_db])

            # ---- leftover detection works (it must find the live lab)
            phase('leftover detection works (it must find the live lab)')
            inv = L.inventory()
            live = leftovers(inv)
            for what in ("network namespace", "cgroup", "process", "directory", "claim"):
                self.assertTrue(any(what in x for x in live), f"{what} not detected in a live lab: {live}")

            # ---- deleting pods
            phase('deleting a pod and a hostNetwork pod')
            gone_ns, gone_veth, gone_ip, gone_ip6 = web2.netns, web2.veth, web2.ip, web2.ip6
            gone_ino = os.stat(f"/run/netns/{gone_ns}").st_ino
            gone_cgroups = [web2.cgroup, agent.cgroup] + [c.cgroup for p in (web2, agent)
                                                          for c in p.containers.values()]
            gone_pids = {pid: identity_lab.proc_starttime(pid) for pid in web2.pids() + agent.pids()}
            self.assertEqual(len(gone_pids), 4, "nginx master and worker of each")
            with self.assertRaises(ValueError):
                L.add_pod("shop", "dup", ip=gone_ip)  # in use
            L.delete_pod(web2)
            L.delete_pod(agent)
            pods.remove(web2)
            pods.remove(agent)
            self.assertNotIn(gone_ns, netns_names())
            self.assertIn(L.node_ns, netns_names(), "the node stays")
            r = L.node_run(["ip", "link", "show", gone_veth], check=False)
            self.assertNotEqual(r.returncode, 0, "the veth is gone")
            for d in gone_cgroups:
                self.assertFalse(d.exists(), d)
            self.assertTrue(web2.cgroup.parent.exists(), "the QoS level stays")
            for pid, st in gone_pids.items():
                self.assertFalse(identity_lab.process_alive(pid, st), f"pid {pid} of a deleted pod")
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        self.assertNotEqual(netns_inode_of(int(d)), gone_ino, f"pid {d} in the deleted netns")
                    except OSError:
                        pass
            r = client.curl(f"http://{gone_ip}:8080/", timeout=1, check=False)
            self.assertNotEqual(r.returncode, 0, "the deleted pod's server is gone")
            r = client.curl(f"http://{L.node_ip}:8081/", timeout=1, check=False)
            self.assertNotEqual(r.returncode, 0, "the hostNetwork pod's server is gone")
            self.check_kubectl(L, pods, [svc_web, svc_db], what=("pods",))

            # ---- its address is free again
            phase("reusing its address")
            web3 = L.add_pod("shop", "web-3", ip=gone_ip)
            self.assertEqual((web3.ip, web3.ip6), (gone_ip, gone_ip6))
            self.assertNotEqual(web3.uid, web2.uid)
            web3.start_nginx(port=8080)
            self.assertEqual(http(client, f"http://{gone_ip}:8080/f/100b.bin"), (200, files["100b.bin"]))
            self.assertEqual(http(client, f"http://[{gone_ip6}]:8080/f/100b.bin"), (200, files["100b.bin"]))
            pods.append(web3)
            L.update_service(svc_web, [web1, web3])
            L.update_service(svc_db, [])
            self.check_kubectl(L, pods, [svc_web, svc_db], what=("pods", "slices"))
            inv = L.inventory()
            node_fd = os.open(f"/run/netns/{L.node_ns}", os.O_RDONLY)
            api_port = inv["api_port"]
            phase("exit")
        try:
            self.assertEqual(leftovers(inv), [])
            # the node namespace lives on only through our fd: nothing listens in it (the API server stopped)
            r = lab.run(["nsenter", f"--net=/proc/{os.getpid()}/fd/{node_fd}", "ss", "-Hltnu"], check=False)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn(f":{api_port} ", r.stdout)
            self.assertEqual([l for l in r.stdout.splitlines() if "LISTEN" in l], [])
        finally:
            os.close(node_fd)

    def check_kubectl(self, L, pods, services, what=("pods", "slices")):
        """kubectl get's tables (server-side) of pods and endpointslices."""
        if "pods" in what:
            r = L.kubectl("get", "pods", "-A", "-o", "wide")
            self.assertEqual(r.returncode, 0, r.stderr)
            got = sorted((x["NAMESPACE"], x["NAME"], x["IP"], x["NODE"]) for x in table(r.stdout))
            want = sorted((p.namespace, p.name, p.ip, L.node_name) for p in pods)
            self.assertEqual(got, want, r.stdout)
        if "slices" in what:
            r = L.kubectl("get", "endpointslices", "-A")
            self.assertEqual(r.returncode, 0, r.stderr)
            got = {}
            for x in table(r.stdout):
                eps = x["ENDPOINTS"]
                self.assertNotIn("more", eps, "more endpoints than kubectl shows")
                addrs = [] if eps in ("<unset>", "<none>") else eps.split(",")
                got[(x["NAMESPACE"], x["NAME"])] = (sorted(addrs), x["PORTS"])
            want = {(s.namespace, s.slice_name): (sorted(p.ip for p in s.pods), str(s.target_port))
                    for s in services}
            self.assertEqual(got, want, r.stdout)

    def check_objects(self, L, pods, services):
        """The objects as kubectl reads them: pods (uid, containers, owners followed up to the workload),
        services with their cluster IPs, the node with its addresses."""
        r = L.kubectl("get", "pods,replicasets,jobs,services,nodes", "-A", "-o", "json")
        self.assertEqual(r.returncode, 0, r.stderr)
        items = json.loads(r.stdout)["items"]
        objs = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in items}
        got = sorted((o["metadata"]["namespace"], o["metadata"]["name"], o["spec"]["clusterIP"]) for o in items
                     if o["kind"] == "Service" and o["metadata"]["name"] != "kubernetes")
        self.assertEqual(got, sorted((s.namespace, s.name, s.cluster_ip) for s in services))
        nodes = [(o["metadata"]["name"], [a["address"] for a in o["status"]["addresses"] if a["type"] == "InternalIP"])
                 for o in items if o["kind"] == "Node"]
        self.assertEqual(nodes, [(L.node_name, [L.node_ip, L.node_ip6])])
        self.assertEqual(sorted(k[1:] for k in objs if k[0] == "Pod"), sorted((p.namespace, p.name) for p in pods))

        def owner(o):
            refs = [x for x in o["metadata"].get("ownerReferences") or [] if x.get("controller", True)]
            return (refs[0]["kind"], refs[0]["name"], refs[0].get("uid")) if refs else None

        for p in pods:
            o = objs[("Pod", p.namespace, p.name)]
            self.assertEqual(o["metadata"]["uid"], p.uid)
            self.assertEqual(bool(o["spec"].get("hostNetwork")), p.host_network)
            ids = sorted(c.get("containerID") for c in o["status"].get("containerStatuses", []))
            self.assertEqual(ids, sorted(f"containerd://{c.id}" for c in p.containers.values()))
            ow = owner(o)
            top = ow
            if ow and ow[0] in ("ReplicaSet", "Job") and (ow[0], p.namespace, ow[1]) in objs:
                top = owner(objs[(ow[0], p.namespace, ow[1])]) or ow
            want = p.workload
            self.assertEqual((top[0], top[1]) if top else None, want, f"{p}: owner chain {ow} -> {top}")

    # ------------------------------------------------------------------
    def test_2_exception_inside_the_lab(self):
        inv = None
        with self.assertRaises(ZeroDivisionError):
            with IdentityLab() as L:
                a = L.add_pod("shop", "a", cgroup_driver="cgroupfs")
                b = L.add_pod("shop", "b", workload=("StatefulSet", "b"), containers=("main", "side"))
                h = L.add_pod("shop", "h", workload=None, host_network=True)
                a.start_nginx()
                b.start_redis()
                b.spawn("orphan-maker", ["sh", "-c", "sleep 600 & sleep 600 & wait"], container="side")
                h.start_dnsmasq(records={"x.id.test": a.ip}, port=5353)
                L.add_service("shop", "a", [a])
                inv = L.inventory()
                self.assertGreaterEqual(len(inv["pids"]), 5)
                1 / 0
        self.assertEqual(leftovers(inv), [])

    # ------------------------------------------------------------------
    CHILD = textwrap.dedent("""
        import json, sys, time
        sys.path.insert(0, {here!r})
        from identity_lab import IdentityLab
        with IdentityLab(api={api}) as L:
            p = L.add_pod("shop", "web-1")
            q = L.add_pod("shop", "db-0", workload=("StatefulSet", "db"), cgroup_driver="cgroupfs")
            if {servers}:
                p.start_nginx()
                q.start_redis()
            q.spawn("sleeper", ["sh", "-c", "sleep 600 & wait"])
            print(json.dumps(L.inventory()), flush=True)
            time.sleep(120)
        print("not interrupted", flush=True)
    """)

    def _child_labs(self, apis):
        """Child processes running a lab each (at once), and their inventories."""
        ps = [subprocess.Popen([sys.executable, "-c", self.CHILD.format(here=str(HERE), api=api, servers=api)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lab._die_with_parent(signal.SIGKILL)) for api in apis]
        invs = []
        deadline = time.monotonic() + 40
        for p in ps:
            line = ""
            # bounded: each child prints one line, then sleeps
            with selectors.DefaultSelector() as sel:
                sel.register(p.stdout, selectors.EVENT_READ)
                while time.monotonic() < deadline and not line:
                    if sel.select(timeout=0.5):
                        line = p.stdout.readline()
                        if not line:
                            break
            if not line:
                for q in ps:
                    q.kill()
                _, err = p.communicate(timeout=10)
                self.fail(f"child lab did not start:\n{err[-3000:]}")
            invs.append(json.loads(line))
        return ps, invs

    def test_3_signals_clean_up(self):
        sigs = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
        t0 = time.monotonic()
        ps, invs = self._child_labs([True, False, False])
        t1 = time.monotonic()
        for inv in invs:
            self.assertTrue(leftovers(inv), "a running child lab is visible")
        self.assertEqual(len({inv["id"] for inv in invs}), 3)
        for p, sig in zip(ps, sigs):
            p.send_signal(sig)
        for p, sig, inv in zip(ps, sigs, invs):
            try:
                out, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                out, err = p.communicate(timeout=10)
            self.assertEqual(p.returncode, -sig, f"{sig!r}: {err[-2000:]}")
            self.assertNotIn("not interrupted", out)
            self.assertEqual(leftovers(inv), [], f"after {sig!r}")
        print(f"  3 labs up at once in {t1 - t0:.1f}s, all gone {time.monotonic() - t1:.1f}s later", flush=True)

    def test_4_sigkill_is_swept_by_the_next_lab(self):
        (p,), (inv,) = self._child_labs([False])
        p.kill()
        p.communicate(timeout=10)
        left = leftovers(inv)
        with IdentityLab(api=False) as L:
            self.assertEqual(leftovers(inv), [], "swept when the next lab starts")
            self.assertNotEqual(L.id, inv["id"])
        if inv["id"] in L.swept:
            for what in ("network namespace", "cgroup", "directory", "claim"):
                self.assertTrue(any(what in x for x in left), f"a SIGKILLed lab leaves its {what}s: {left}")
            print(f"  swept {len(left)} leftovers of the SIGKILLed lab", flush=True)
        else:  # a lab of another test run, started right then, swept it first
            print(f"  the SIGKILLed lab was swept by another lab", flush=True)

    def test_5_labs_at_once(self):
        with IdentityLab(api=False) as A, IdentityLab(api=False) as B:
            self.assertNotEqual(A.id, B.id)
            self.assertNotEqual(A.node_ns, B.node_ns)
            self.assertNotEqual(A.bridge, B.bridge)
            self.assertNotEqual(A.cgroup_root, B.cgroup_root)
            self.assertFalse(ipaddress.ip_network(A.subnet4).overlaps(B.subnet4))
            self.assertFalse(ipaddress.ip_network(A.subnet6).overlaps(B.subnet6))
            a = A.add_pod("shop", "web-1")
            b = B.add_pod("shop", "web-1")
            self.assertNotEqual(a.veth, b.veth)
            self.assertIsNone(re.fullmatch(A.veth_regex, b.veth))
            a.start_nginx()
            b.start_nginx()
            ca = A.add_pod("shop", "c", workload=None)
            self.assertEqual(http(ca, f"http://{a.ip}/status/200")[0], 200)
            self.assertNotEqual(ca.curl(f"http://{b.ip}/", timeout=2, check=False).returncode, 0,
                                "labs are isolated")
            ia, ib = A.inventory(), B.inventory()
        self.assertEqual(leftovers(ia) + leftovers(ib), [])


def _timeout(signum, frame):
    raise TimeoutError(f"test_identity_lab took longer than {TIME_LIMIT}s")


if __name__ == "__main__":
    identity_lab.require_identity_lab(api=True)
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(TIME_LIMIT)
    unittest.main()

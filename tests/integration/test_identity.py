"""Workload identity end to end, on the identity lab (a node in network
namespaces, pods in kubelet-style cgroups, a test Kubernetes API server):

- every HTTP and DNS call carries the right pod, namespace, workload,
  service, process and node on both ends, checked against what the lab
  itself made (the pids it started, the pods and services it created), before
  and after churn: a pod deleted, its address reused by another workload;
- a hostNetwork pod is told apart from the node by its cgroup; a process of
  the node itself is the node;
- a call between two pods of this node is one call, and its packets are
  captured once (the same count as tcpdump on the client's veth), although
  they cross two veths and the bridge;
- the same names come out of a snapshot dissected elsewhere, with the API
  server gone (`tapwire snapshot pack/unpack`, `tapwire dissect`);
- `tapwire workloads` lists the pods, `--at` before the churn the old ones.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import lab
from identity_lab import IdentityLab, require_identity_lab
from lab import cli_bin, run, tapwire

check = lab.Checks()


def calls(db: Path) -> list[dict]:
    r = run([cli_bin(), "calls", "--db", db, "--json"], timeout=60, check=False)
    if r.returncode != 0:
        return []
    return [json.loads(l) for l in r.stdout.splitlines() if l.strip()]


def wait_for(pred, timeout: float, what: str, step: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def spawn_wait(proc, timeout: float = 30) -> int:
    """Waits for a spawned one-shot client; returns its exit code."""
    try:
        return proc.p.wait(timeout)
    finally:
        proc.stop()


def expect_endpoint(call: dict, side: str, want: dict, label: str) -> None:
    """Every key of `want` must be in call[side] with that value; None means
    the key must be absent (not known, not guessed)."""
    got = call.get(side) or {}
    for k, v in want.items():
        if v is None:
            check(k not in got, f"{label}: {side}.{k} should be absent, got {got.get(k)!r}")
        elif callable(v):
            check(k in got and v(got[k]), f"{label}: {side}.{k} = {got.get(k)!r} fails its check")
        else:
            check(got.get(k) == v, f"{label}: {side}.{k} = {got.get(k)!r}, want {v!r}")


def pod_identity(pod, *, workload, service=None, process=None, node="twid-node") -> dict:
    want = {"pod": pod.name, "namespace": pod.namespace, "workload": {"kind": workload[0], "name": workload[1]},
            "container": "main", "container_id": pod.containers["main"].id, "node": node,
            "service": service}
    if process:
        want["process"] = process
    return want


def proc_is(name: str, pids) -> callable:
    pids = set(pids)
    return lambda p: isinstance(p, dict) and p.get("name") == name and p.get("pid") in pids


def main() -> int:
    require_identity_lab()
    with IdentityLab() as L:
        # ---- the cluster -------------------------------------------------
        api = L.add_pod("shop", "api-7d9c5-x2x4k", workload=("Deployment", "api"))
        api_nginx = api.start_nginx()
        front = L.add_pod("shop", "frontend-5f6b8-a1b2c", workload=("Deployment", "frontend"))
        dns = L.add_pod("kube-system", "coredns-77d4-h7k2p", workload=("Deployment", "coredns"))
        job = L.add_pod("batch", "report-28123-qv8x2", workload=("CronJob", "report"))
        db = L.add_pod("shop", "db-0", workload=("StatefulSet", "db"), cgroup_driver="cgroupfs", qos="burstable")
        agent = L.add_pod("monitoring", "node-agent-m4n5b", workload=("DaemonSet", "node-agent"), host_network=True)
        agent_nginx = agent.start_nginx(port=18080)
        dnsmasq = dns.start_dnsmasq(records={"api.shop.lab": api.ip, "db.shop.lab": db.ip})
        redis = db.start_redis()
        L.add_service("shop", "api", [api])
        L.add_service("kube-system", "kube-dns", [dns], port=53, target_port=53)
        L.add_service("monitoring", "node-agent", [agent], port=18080, target_port=18080)
        L.add_service("shop", "db", [db], port=6379, target_port=6379)

        data = L.dir / "data"
        sensor = L.start_sensor(data, interfaces=[L.veth_regex, L.bridge],
                                extra=["--dissection", "--dissection-stop-after", "0", "--metrics-address", ""])
        check(L.sensor_kube_flags, "the sensor takes --kubeconfig and --node-name")
        wait_for(lambda: ((sensor.status() or {}).get("identity", {}).get("kubernetes", {}).get("state") == "synced"),
                 60, "the sensor's Kubernetes identity to be synced")
        # Tcpdump on the client's veth: the first place the client's packets are seen.
        tcpd = L.start_tcpdump(front.veth, L.dir / "front.pcap")

        # ---- phase 1 -------------------------------------------------------
        def curl(pod, url, tag):
            p = pod.spawn(f"curl-{tag}", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{url}?t={tag}"])
            rc = spawn_wait(p)
            check(rc == 0, f"curl {tag} exit {rc}: {p.output()}")
            return p.pid

        def dig(pod, name, tag):
            p = pod.spawn(f"dig-{tag}", ["dig", "+tries=1", "+time=3", f"@{dns.ip}", name, "A"])
            rc = spawn_wait(p)
            check(rc == 0, f"dig {tag} exit {rc}: {p.output()}")
            return p.pid

        expected = []  # (kind, key, label, src want, dst want)
        nginx_api_pids = api.pids()
        for i in range(3):
            tag = f"p1-front-api-{i}"
            pid = curl(front, f"http://{api.ip}/f/100b.bin", tag)
            expected.append(("http", tag, tag,
                             pod_identity(front, workload=("Deployment", "frontend"), process=proc_is("curl", [pid])),
                             pod_identity(api, workload=("Deployment", "api"), service="api",
                                          process=proc_is("nginx", nginx_api_pids))))
        pid = curl(front, f"http://{api.ip}/status/503", "p1-front-api-503")
        expected.append(("http", "p1-front-api-503", "503",
                         pod_identity(front, workload=("Deployment", "frontend"), process=proc_is("curl", [pid])),
                         pod_identity(api, workload=("Deployment", "api"), service="api")))
        pid = curl(job, f"http://[{api.ip6}]/f/10k.bin", "p1-job-api-v6")
        expected.append(("http", "p1-job-api-v6", "job over IPv6",
                         pod_identity(job, workload=("CronJob", "report"), process=proc_is("curl", [pid])),
                         pod_identity(api, workload=("Deployment", "api"), service="api")))
        pid = curl(front, f"http://{L.node_ip}:18080/f/100b.bin", "p1-front-agent")
        expected.append(("http", "p1-front-agent", "to the hostNetwork pod",
                         pod_identity(front, workload=("Deployment", "frontend"), process=proc_is("curl", [pid])),
                         pod_identity(agent, workload=("DaemonSet", "node-agent"), service="node-agent",
                                      process=proc_is("nginx", agent.pids()))))
        node_curl = L.node_spawn("node-curl", ["curl", "-sS", "-o", "/dev/null", f"http://{api.ip}/f/100b.bin?t=p1-node-api"])
        check(spawn_wait(node_curl) == 0, f"node curl: {node_curl.output()}")
        expected.append(("http", "p1-node-api", "from a process of the node",
                         {"process": proc_is("curl", [node_curl.pid]), "node": "twid-node", "pod": None,
                          "namespace": None, "workload": None},
                         pod_identity(api, workload=("Deployment", "api"), service="api")))
        pid = dig(front, "api.shop.lab", "p1")
        expected.append(("dns", "api.shop.lab", "DNS from the frontend",
                         pod_identity(front, workload=("Deployment", "frontend"), process=proc_is("dig", [pid])),
                         pod_identity(dns, workload=("Deployment", "coredns"), service="kube-dns",
                                      process=proc_is("dnsmasq", dns.pids()))))
        pid = dig(job, "db.shop.lab", "p1-job")
        expected.append(("dns", "db.shop.lab", "DNS from the job",
                         pod_identity(job, workload=("CronJob", "report"), process=proc_is("dig", [pid])),
                         pod_identity(dns, workload=("Deployment", "coredns"), service="kube-dns")))
        r = front.redis_cli(db.ip, "PING")
        check("PONG" in r.stdout, f"redis PING: {r.stdout} {r.stderr}")
        t_churn = time.time()
        time.sleep(1.5)

        # ---- churn: the api pod goes, its address goes to another workload ----
        old_api_ip, old_api_ip6 = api.ip, api.ip6
        L.update_service(L.services[("shop", "api")], [])
        L.delete_pod(api)
        pay = L.add_pod("shop", "payments-6c9f-z9w8q", workload=("Deployment", "payments"), ip=old_api_ip)
        check(pay.ip == old_api_ip, f"the new pod reuses {old_api_ip} (got {pay.ip})")
        pay.start_nginx()
        L.add_service("shop", "payments", [pay])
        time.sleep(1.0)  # the watch delivers the new pod
        for i in range(2):
            tag = f"p2-front-pay-{i}"
            pid = curl(front, f"http://{old_api_ip}/f/100b.bin", tag)
            expected.append(("http", tag, f"after the churn ({tag})",
                             pod_identity(front, workload=("Deployment", "frontend"), process=proc_is("curl", [pid])),
                             pod_identity(pay, workload=("Deployment", "payments"), service="payments",
                                          process=proc_is("nginx", pay.pids()))))
        time.sleep(1.0)
        tcpd.stop()

        # ---- live dissection -------------------------------------------------
        live_db = data / "dissection.db"

        def key_of(c):
            if c["protocol"] == "http":
                req = c.get("request") or {}
                path = req.get("path", "")
                return path.split("?t=", 1)[1] if "?t=" in path else None
            q = c.get("request") or c.get("response") or {}
            return q.get("qname")

        def have_all():
            got = calls(live_db)
            keys = {key_of(c) for c in got}
            return got if all(e[1] in keys for e in expected) else None

        live = wait_for(have_all, 60, "every call in the live dissection DB", step=0.5)
        by_key: dict[str, list] = {}
        for c in live:
            by_key.setdefault(key_of(c), []).append(c)
        for kind, key, label, src, dst in expected:
            got = [c for c in by_key.get(key, []) if c["protocol"] == kind]
            if kind == "http":
                check(len(got) == 1, f"{label}: {len(got)} calls, want exactly 1 (a same-node call is one call)")
            else:
                check(len(got) >= 1, f"{label}: no DNS call")
            if not got:
                continue
            c = got[0]
            check(c.get("node") == "twid-node", f"{label}: node {c.get('node')!r}")
            expect_endpoint(c, "src", src, label)
            expect_endpoint(c, "dst", dst, label)

        # ---- packets captured once -------------------------------------------------
        export = L.dir / "export.pcapng"
        tapwire("export", "pcap", "--data-dir", data, "-o", export)
        flt = (f"ip.addr=={front.ip} && ip.addr=={old_api_ip} && tcp && "
               f"(tcp.len>0 || tcp.flags.syn==1 || tcp.flags.fin==1 || tcp.flags.reset==1)")

        def count(pcap: Path, f: str) -> int:
            r = run(["tshark", "-r", pcap, "-Y", f, "-T", "fields", "-e", "frame.number"], timeout=120)
            return len([l for l in r.stdout.splitlines() if l.strip()])

        ref, got = count(tcpd.out, flt), count(export, flt)
        check(ref > 0 and ref == got, f"front<->api packets: tcpdump on the client's veth saw {ref}, tapwire stored {got}")
        flt_agent = (f"ip.addr=={front.ip} && tcp.port==18080 && "
                     f"(tcp.len>0 || tcp.flags.syn==1 || tcp.flags.fin==1 || tcp.flags.reset==1)")
        ref, got = count(tcpd.out, flt_agent), count(export, flt_agent)
        check(ref > 0 and ref == got, f"front<->hostNetwork pod packets: tcpdump saw {ref}, tapwire stored {got}")
        st = sensor.status() or {}
        check(st.get("counters", {}).get("duplicate", 0) > 0,
              f"the sensor counted the second sightings as duplicate: {st.get('counters')}")

        # ---- tapwire workloads -------------------------------------------------
        # Global options go before the command too, as git and kubectl users type them.
        wl = json.loads(tapwire("--data-dir", data, "workloads", "--json").stdout)
        check(wl == json.loads(tapwire("workloads", "--data-dir", data, "--json").stdout),
              "tapwire --data-dir D workloads differs from tapwire workloads --data-dir D")
        names = {(p["namespace"], p["name"]) for p in wl["pods"]}
        want_now = {(p.namespace, p.name) for p in L.pods.values()}
        check(names == want_now, f"tapwire workloads lists {sorted(names)}, the lab has {sorted(want_now)}")
        check(wl.get("node") == "twid-node", f"workloads node {wl.get('node')!r}")
        before = json.loads(tapwire("workloads", "--data-dir", data, "--json", "--at", f"{t_churn:.3f}").stdout)
        names_before = {(p["namespace"], p["name"]) for p in before["pods"]}
        check(("shop", "api-7d9c5-x2x4k") in names_before and ("shop", "payments-6c9f-z9w8q") not in names_before,
              f"workloads --at before the churn: {sorted(names_before)}")
        for p in wl["pods"]:
            if p["name"] == "node-agent-m4n5b":
                check(p["hostNetwork"] is True and p["workload"] == {"kind": "DaemonSet", "name": "node-agent"},
                      f"hostNetwork pod listed as {p}")

        # ---- a snapshot, dissected elsewhere without the API server ----------------
        tapwire("snapshot", "create", "--name", "idsnap", "--data-dir", data)
        pack = L.dir / "idsnap.tar.zst"
        tapwire("snapshot", "pack", "idsnap", "-o", pack, "--data-dir", data)
        sensor.stop()
        L.api.stop()
        other = L.dir / "elsewhere"
        tapwire("snapshot", "unpack", pack, "--data-dir", other)
        snap_db = L.dir / "snap.db"
        tapwire("dissect", "--snapshot", "idsnap", "--data-dir", other, "--db", snap_db, "--jobs", "2")
        snap = {c["id"]: c for c in calls(snap_db)}
        compared = 0
        for c in live:
            if key_of(c) is None:
                continue
            s = snap.get(c["id"])
            check(s is not None, f"call {c['id']} ({key_of(c)}) missing from the snapshot's dissection")
            if s is None:
                continue
            compared += 1
            for side in ("src", "dst"):
                check(s.get(side) == c.get(side),
                      f"{key_of(c)}: {side} differs between live and the snapshot: {c.get(side)} vs {s.get(side)}")
            check(s.get("node") == c.get("node"), f"{key_of(c)}: node differs")
        check(compared >= len(expected), f"compared {compared} calls live vs snapshot, want {len(expected)}")

    return check.exit_code("identity end to end")


if __name__ == "__main__":
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("test_identity took over 400 s")))
    signal.alarm(400)
    sys.exit(main())

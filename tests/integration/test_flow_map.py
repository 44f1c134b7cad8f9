"""Who talks to whom, on the identity lab (a node in network namespaces, pods
in kubelet-style cgroups, a test Kubernetes API server):

- `tapwire map --level workload` (and `--level namespace`, `--level pod`)
  equals the topology the lab made: the edges between workloads that the test
  made talk, and nothing else;
- an address outside the cluster is an external node named by the DNS answer
  a pod got for it earlier (passive DNS): `api.partner.test`, not its IP;
- edges carry the L7 protocol from the live dissection, the calls, the HTTP
  errors and the bytes of the flows, which equal the flows' own;
- the same map from the dissection DB, from `--data-dir` and as DOT and SVG;
- `tapwire flows --namespace/--workload` list exactly the flows of that end.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import lab
from identity_lab import PREFIX, IdentityLab, require_identity_lab
from lab import cli_bin, run

check = lab.Checks()

EXT_IP = "198.51.100.7"
EXT_NAME = "api.partner.test"


def tw(*args, timeout: float = 60) -> str:
    r = run([cli_bin(), *[str(a) for a in args]], timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"tapwire {' '.join(map(str, args))}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def flows(*args) -> list[dict]:
    return [json.loads(l) for l in tw("flows", *args, "--json").splitlines() if l.strip()]


def wait_for(pred, timeout: float, what: str, step: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = pred()
        except RuntimeError as e:  # the CLI before the first flow record: keep waiting
            last, v = e, None
        if v:
            return v
        time.sleep(step)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}" + (f" ({last})" if last else ""))


def node_label(n: dict) -> str:
    """A map node as the test names it: namespace/name, or ext:NAME for an
    external endpoint (its first DNS name, else its address)."""
    if n.get("external"):
        names = n.get("names") or []
        return "ext:" + (names[0] if names else n.get("name") or n.get("id"))
    if n.get("kind") == "namespace":
        return n.get("name") or n.get("namespace")
    return f"{n.get('namespace')}/{n.get('name')}"


def edges_of(m: dict) -> dict[tuple[str, str], dict]:
    labels = {n["id"]: node_label(n) for n in m.get("nodes", [])}
    out = {}
    for e in m.get("edges", []):
        key = (labels.get(e["source"], "?" + str(e["source"])), labels.get(e["target"], "?" + str(e["target"])))
        check(key not in out, f"edge {key} appears twice in the map")
        out[key] = e
    return out


def add_outside(L: IdentityLab) -> str:
    """A namespace outside the cluster, behind the node (which routes to it):
    EXT_IP, with an HTTP server. Not a pod: nothing names it but DNS."""
    ns = f"{PREFIX}-{L.id}-ext"
    L.namespaces.append(ns)  # the lab deletes it, also after a SIGKILL (the prefix is the lab's)
    run(["ip", "netns", "add", ns])
    run(["ip", "link", "add", "twext0", "netns", L.node_ns, "type", "veth", "peer", "name", "eth0", "netns", ns])
    run(["ip", "-n", L.node_ns, "-batch", "-"], input="\n".join([
        "addr add 198.51.100.1/24 dev twext0", "link set twext0 up"]) + "\n")
    L.node_run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    run(["ip", "-n", ns, "-batch", "-"], input="\n".join([
        "link set lo up", f"addr add {EXT_IP}/24 dev eth0", "link set eth0 up",
        "route add default via 198.51.100.1"]) + "\n")
    return ns


def main() -> int:
    require_identity_lab()
    with IdentityLab() as L:
        api = L.add_pod("shop", "api-7d9c5-x2x4k", workload=("Deployment", "api"))
        api.start_nginx()
        front = L.add_pod("shop", "frontend-5f6b8-a1b2c", workload=("Deployment", "frontend"))
        dns = L.add_pod("kube-system", "coredns-77d4-h7k2p", workload=("Deployment", "coredns"))
        job = L.add_pod("batch", "report-28123-qv8x2", workload=("CronJob", "report"))
        idle = L.add_pod("shop", "idle-0", workload=("StatefulSet", "idle"))  # talks to no one
        dns.start_dnsmasq(records={"api.shop.lab": api.ip, EXT_NAME: EXT_IP})
        L.add_service("shop", "api", [api])
        L.add_service("kube-system", "kube-dns", [dns], port=53, target_port=53)
        ext_ns = add_outside(L)
        www = L.dir / "ext-www"
        www.mkdir()
        (www / "hello.txt").write_text("hello from outside\n")
        ext = lab.Proc("ext-http", ["ip", "netns", "exec", ext_ns, sys.executable, "-m", "http.server", "--bind",
                                    EXT_IP, "80", "--directory", str(www)], L.dir / "ext-http.log")
        L.procs.append(ext)
        wait_for(lambda: run(["ip", "netns", "exec", ext_ns, "ss", "-Hltn", "sport = :80"],
                             check=False).stdout.strip(), 15, "the outside HTTP server")

        data = L.dir / "data"
        sensor = L.start_sensor(data, interfaces=[L.veth_regex, L.bridge],
                                extra=["--dissection", "--dissection-stop-after", "0", "--metrics-address", ""])
        wait_for(lambda: ((sensor.status() or {}).get("identity", {}).get("kubernetes", {}).get("state") == "synced"),
                 60, "the sensor's Kubernetes identity to be synced")

        def ok(pod, cmd, what):
            p = pod.spawn(what, cmd)
            try:
                rc = p.p.wait(30)
            finally:
                p.stop()
            check(rc == 0, f"{what}: exit {rc}: {p.output()}")

        for i in range(3):
            ok(front, ["curl", "-sS", "-o", "/dev/null", f"http://{api.ip}/f/100b.bin?i={i}"], f"curl-api-{i}")
        ok(front, ["curl", "-sS", "-o", "/dev/null", f"http://{api.ip}/status/503"], "curl-api-503")
        ok(job, ["curl", "-sS", "-o", "/dev/null", f"http://{api.ip}/f/10k.bin"], "curl-job-api")
        # the name first, then the address it was given: passive DNS names the external end
        ok(front, ["dig", "+tries=1", "+time=3", f"@{dns.ip}", EXT_NAME, "A"], "dig-ext")
        ok(front, ["curl", "-sS", "-o", "/dev/null", f"http://{EXT_IP}/hello.txt"], "curl-ext")

        # ---- flows -----------------------------------------------------------------
        def have_flows():
            fl = flows("--data-dir", data)
            ext_flows = [f for f in fl if f["server"]["ip"] == EXT_IP and f.get("end")]
            api_flows = [f for f in fl if f["server"]["ip"] == api.ip and f["server"]["port"] == 80 and f.get("end")]
            return fl if ext_flows and len(api_flows) >= 5 else None
        fl = wait_for(have_flows, 40, "the lab's flows to be written (ended)")
        ext_flow = next(f for f in fl if f["server"]["ip"] == EXT_IP)
        check(EXT_NAME in (ext_flow["server"].get("names") or []),
              f"the external server is named by the DNS answer: {ext_flow['server']}")
        check(ext_flow["client"].get("pod") == front.name, f"external flow's client is the frontend: {ext_flow['client']}")
        check(ext_flow["state"] == "closed" and ext_flow["completeness"] & 0x1f == 0x1f,
              f"external flow state {ext_flow['state']} completeness {ext_flow['completeness']}")

        batch = flows("--data-dir", data, "--namespace", "batch")
        check(batch and all("batch" in (f["client"].get("namespace"), f["server"].get("namespace")) for f in batch),
              f"--namespace batch lists only batch's flows: {[(f['client'], f['server']) for f in batch]}")
        wl = flows("--data-dir", data, "--workload", "frontend")
        check(len(wl) >= 6 and all("frontend" in ((f["client"].get("workload") or {}).get("name"),
                                                  (f["server"].get("workload") or {}).get("name")) for f in wl),
              f"--workload frontend: {len(wl)} flows, all of the frontend's")

        # ---- the map, workload level -------------------------------------------------
        def have_calls():
            m = json.loads(tw("map", "--data-dir", data, "--level", "workload", "--format", "json"))
            e = edges_of(m).get(("shop/frontend", "shop/api"))
            return m if e and e.get("calls", 0) >= 4 else None
        m = wait_for(have_calls, 40, "the frontend -> api calls in the map (live dissection)")
        edges = edges_of(m)
        want = {("shop/frontend", "shop/api"), ("batch/report", "shop/api"), ("shop/frontend", "kube-system/coredns"),
                ("shop/frontend", f"ext:{EXT_NAME}")}
        check(set(edges) == want, f"workload map edges {sorted(edges)}, want {sorted(want)}")
        labels = {node_label(n) for n in m["nodes"]}
        check("shop/idle" not in labels, "a workload that talks to no one is not on the map")
        ext_node = next((n for n in m["nodes"] if n.get("external")), None)
        check(ext_node is not None and EXT_NAME in (ext_node.get("names") or []),
              f"the external node is named {EXT_NAME}: {ext_node}")
        fa = edges.get(("shop/frontend", "shop/api"), {})
        check("http" in fa.get("protocols", []), f"frontend -> api protocols {fa.get('protocols')}")
        check(fa.get("calls") == 4 and fa.get("errors") == 1, f"frontend -> api calls {fa.get('calls')} errors {fa.get('errors')}, want 4 and 1 (the 503)")
        check(fa.get("flows") == 4, f"frontend -> api flows {fa.get('flows')}, want 4 (one per curl)")
        api_fl = [f for f in fl if f["client"].get("pod") == front.name and f["server"]["ip"] == api.ip]
        want_bytes = sum(f["client_to_server"]["bytes"] + f["server_to_client"]["bytes"] for f in api_fl)
        check(fa.get("bytes") == want_bytes, f"frontend -> api bytes {fa.get('bytes')}, the flows' {want_bytes}")
        fd = edges.get(("shop/frontend", "kube-system/coredns"), {})
        check("dns" in fd.get("protocols", []), f"frontend -> coredns protocols {fd.get('protocols')}")

        # ---- other levels, formats, the DB ---------------------------------------------
        ns_edges = set(edges_of(json.loads(tw("map", "--data-dir", data, "--level", "namespace"))))
        want_ns = {("shop", "shop"), ("batch", "shop"), ("shop", "kube-system"), ("shop", f"ext:{EXT_NAME}")}
        check(ns_edges == want_ns, f"namespace map edges {sorted(ns_edges)}, want {sorted(want_ns)}")
        pod_edges = set(edges_of(json.loads(tw("map", "--data-dir", data, "--level", "pod", "--format", "json"))))
        want_pod = {(f"shop/{front.name}", f"shop/{api.name}"), (f"batch/{job.name}", f"shop/{api.name}"),
                    (f"shop/{front.name}", f"kube-system/{dns.name}"), (f"shop/{front.name}", f"ext:{EXT_NAME}")}
        check(pod_edges == want_pod, f"pod map edges {sorted(pod_edges)}, want {sorted(want_pod)}")
        only_shop = set(edges_of(json.loads(tw("map", "--data-dir", data, "--level", "workload", "--namespace", "batch"))))
        check(only_shop == {("batch/report", "shop/api")}, f"--namespace batch map edges {sorted(only_shop)}")
        db_map = edges_of(json.loads(tw("map", "--db", data / "dissection.db", "--level", "workload")))
        check(set(db_map) == want, f"the map from the DB: {sorted(db_map)}")
        dot = tw("map", "--data-dir", data, "--level", "workload", "--format", "dot")
        check(dot.lstrip().startswith("digraph") and EXT_NAME in dot and "frontend" in dot, "DOT output")
        svg_path = L.dir / "map.svg"
        tw("map", "--data-dir", data, "--level", "workload", "--format", "svg", "-o", svg_path)
        svg = svg_path.read_text() if svg_path.exists() else ""
        check("<svg" in svg and EXT_NAME in svg, "SVG rendered by Graphviz")
    return check.exit_code("flow map")


if __name__ == "__main__":
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("test_flow_map took over 300 s")))
    signal.alarm(300)
    sys.exit(main())

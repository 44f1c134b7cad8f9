#!/usr/bin/env python3
"""tapwire identity benchmark (`make bench`), on the identity lab (pods in
network namespaces and kubelet-style cgroups, a test Kubernetes API server):

1. the cost of identity per packet and per call: wrk from one pod to nginx
   in another, keep-alive (packets) and one connection per request (calls:
   every request is a new socket on each side), with no capture, with the
   sensor without identity (--no-identity) and with it, side by side; plus
   the kernel time of the identity programs per run (bpf_stats);
2. memory per 10k pods: the sensor's and the watcher's resident memory, and
   a reader's (tapwire workloads, the dissector's identity table), with 10k
   and 100k pods listed;
3. API requests per minute per node in steady state, from the API server's
   request log.

Environment: TW_BENCH_SECONDS (wrk duration, default 10), TW_BENCH_ROUNDS
(default 3), TW_BUILD_DIR.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import lab  # noqa: E402
from identity_lab import IdentityLab, require_identity_lab  # noqa: E402

SECONDS = max(1, min(120, int(os.environ.get("TW_BENCH_SECONDS", "10"))))
ROUNDS = max(1, min(10, int(os.environ.get("TW_BENCH_ROUNDS", "3"))))
IDENT_PROGS = ("tw_sock_create", "tw_skb_ingress", "tw_skb_egress", "tw_sock_release", "tw_exec", "tw_exit")


def ident_prog_stats() -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the identity programs loaded now."""
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30)
    ns = cnt = 0
    try:
        for p in json.loads(r.stdout or "[]"):
            if p.get("type") in ("cgroup_skb", "cgroup_sock", "raw_tracepoint") and str(p.get("name", "")).startswith("tw_"):
                ns += int(p.get("run_time_ns", 0))
                cnt += int(p.get("run_cnt", 0))
    except ValueError:
        pass
    return ns, cnt


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def wrk(pod, url: str, close: bool) -> float:
    cmd = ["wrk", "-t1", "-c8", f"-d{SECONDS}s"]
    if close:
        cmd += ["-H", "Connection: close"]
    r = pod.run(cmd + [url], timeout=SECONDS + 60)
    return lab.parse_wrk(r.stdout)["rps"]


def part_cost(L: IdentityLab) -> list[str]:
    srv = L.add_pod("bench", "srv-6b7c8-d9f0g", workload=("Deployment", "srv"))
    cli = L.add_pod("bench", "cli-5a4b3-c2d1e", workload=("Deployment", "cli"))
    srv.start_nginx()
    url = f"http://{srv.ip}/f/100b.bin"
    wrk(cli, url, False)  # warm up
    results: dict[tuple[str, bool], list[float]] = {}
    bpf: dict[bool, list[tuple[int, int, int]]] = {False: [], True: []}
    configs = ["none", "no-identity", "identity"]
    for rnd in range(ROUNDS):
        for close in (False, True):
            for cfg in configs[rnd % 3:] + configs[:rnd % 3]:
                sensor = None
                if cfg != "none":
                    extra = ["--metrics-address", ""] + (["--no-identity"] if cfg == "no-identity" else [])
                    sensor = L.start_sensor(L.dir / f"data-{cfg}-{rnd}-{close}", extra=extra, kube=False)
                ns0, cnt0 = ident_prog_stats()
                rps = wrk(cli, url, close)
                ns1, cnt1 = ident_prog_stats()
                if sensor:
                    sensor.stop()
                results.setdefault((cfg, close), []).append(rps)
                if cfg == "identity":
                    bpf[close].append((ns1 - ns0, cnt1 - cnt0, int(rps * SECONDS)))
                lab.log(f"cost: {cfg} {'close' if close else 'keep-alive'} round {rnd + 1}: {rps:,.0f} req/s")
    out = ["| workload | capture | requests/s (median) | vs no capture | vs sensor without identity |",
           "|---|---|---:|---:|---:|"]
    for close in (False, True):
        base = statistics.median(results[("none", close)])
        noid = statistics.median(results[("no-identity", close)])
        for cfg in configs:
            rps = statistics.median(results[(cfg, close)])
            out.append(f"| {'one connection per request' if close else 'keep-alive'} | {cfg} | {rps:,.0f} | "
                       f"{rps / base:.1%} | {rps / noid:.1%} |")
    out.append("")
    for close in (False, True):
        runs = bpf[close]
        if not runs:
            continue
        ns = sum(r[0] for r in runs)
        cnt = sum(r[1] for r in runs)
        reqs = sum(r[2] for r in runs)
        out.append(f"- {'one connection per request' if close else 'keep-alive'}: identity programs ran {cnt:,} times, "
                   f"{ns / max(cnt, 1):.0f} ns each on average; {ns / max(reqs, 1):.0f} ns of kernel time per "
                   f"request (both sides' sockets)")
    L.delete_pod(srv)
    L.delete_pod(cli)
    return out


def part_memory_and_api(L: IdentityLab) -> list[str]:
    data = L.dir / "data-kube"
    sensor = L.start_sensor(data, extra=["--metrics-address", ""])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (sensor.status() or {}).get("identity", {}).get("kubernetes", {}).get("state") == "synced":
            break
        time.sleep(0.2)
    watcher = (sensor.status() or {}).get("identity", {}).get("kubernetes", {}).get("watcher", {}).get("pid", 0)

    # API requests per minute in steady state, with the default watch timeout.
    n0 = len(L.api.requests)
    t0 = time.monotonic()
    time.sleep(120)
    n1 = len(L.api.requests)
    per_min = (n1 - n0) / ((time.monotonic() - t0) / 60)
    kinds = sorted({(r.get("method"), r.get("path")) for r in L.api.requests[n0:n1]})

    base_s, base_w = rss_mb(sensor.pid), rss_mb(watcher)
    k = L._kubeapi
    rows = []
    loaded = 0
    for target in (10_000, 100_000):
        L.api.load(k.pod(f"ns-{n % 100}", f"bulk-{n:06d}-abcde", ip=f"10.{200 + n // 65536}.{(n // 256) % 256}.{n % 256}",
                         node=f"node-{n % 50}", owner=("ReplicaSet", f"bulk-{n % 1000}-7d9c5", None))
                   for n in range(loaded, target))
        loaded = target
        L.api.close_watches()
        t = time.monotonic()
        while time.monotonic() - t < 300:
            if (sensor.status() or {}).get("identity", {}).get("targets", {}).get("pods", 0) >= target:
                break
            time.sleep(0.5)
        took = time.monotonic() - t
        time.sleep(2)
        s_mb, w_mb = rss_mb(sensor.pid), rss_mb(watcher, "VmHWM")
        # A reader: the dissector's identity table, as `tapwire workloads` builds it.
        r = subprocess.run(["/usr/bin/time", "-f", "%M", str(lab.cli_bin()), "workloads", "--data-dir", str(data), "--json"],
                           capture_output=True, text=True, timeout=300)
        reader_mb = int((r.stderr.strip().splitlines() or ["0"])[-1]) / 1024 if r.returncode == 0 else float("nan")
        rows.append((target, s_mb, w_mb, reader_mb, took))
        lab.log(f"memory: {target} pods: sensor {s_mb:.0f} MB, watcher peak {w_mb:.0f} MB, reader {reader_mb:.0f} MB, "
                f"listed in {took:.0f}s")
    sensor.stop()
    out = [f"Base (no pods yet): sensor {base_s:.0f} MB resident, watcher {base_w:.0f} MB.", "",
           "| pods listed | sensor RSS MB | per 10k pods above base | watcher peak MB | reader (tapwire workloads) peak MB | "
           "time to list |", "|---:|---:|---:|---:|---:|---:|"]
    for target, s_mb, w_mb, reader_mb, took in rows:
        out.append(f"| {target:,} | {s_mb:.0f} | {(s_mb - base_s) / (target / 10_000):.1f} | {w_mb:.0f} | "
                   f"{reader_mb:.0f} | {took:.0f} s |")
    out += ["", f"API requests in steady state: {per_min:.2f} per minute per node over 2 minutes "
                f"(requests seen: {kinds or 'none'}). With the default watch timeout (300 s) each of the 6 watches is "
                f"re-established every 5 minutes: 1.2 requests per minute; bookmarks need no request."]
    return out


def main() -> int:
    require_identity_lab()
    prev = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1\n")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    started = time.time()
    try:
        with IdentityLab() as L:
            cost = part_cost(L)
            mem = part_memory_and_api(L)
    finally:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text(prev + "\n")
    print()
    print(f"Identity: wrk -t1 -c8 -d{SECONDS}s from one pod to nginx in another (100 B responses), median of "
          f"{ROUNDS} rounds; {os.cpu_count()} CPUs; kernel {os.uname().release}; {time.strftime('%Y-%m-%d %H:%M')}; "
          f"load average before {' '.join(load_before)}")
    print()
    print("\n".join(cost))
    print()
    print("\n".join(mem))
    print(f"\ntotal identity bench time {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

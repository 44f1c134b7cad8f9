#!/usr/bin/env python3
"""tapwire benchmark (issues 2 and 13): side by side in one run, wrk against
nginx over a veth pair with no capture, with tapwire-sensor and with
`tcpdump -w`. Reports requests/s and the ratio to no capture, CPU-seconds per
GB captured (the sensor: process CPU + the kernel time of its BPF programs,
from kernel.bpf_stats_enabled; tcpdump: process CPU), the whole machine's CPU
per GB (/proc/stat busy time above the no-capture run for the same number of
requests, so that tcpdump's softirq copy counts like tapwire's BPF time) and
drops, as a markdown table; then iperf3 at full speed over the veth: the
highest rate tapwire captures with zero drops, and tcpdump's drops at it.

Environment: TW_BENCH_SECONDS (wrk duration, default 10), TW_BENCH_ROUNDS
(default 1; rounds alternate the configurations and the median is reported),
TW_BENCH_FILES (default "10k.bin,100b.bin"), TW_BENCH_CONNS (default 8),
TW_BENCH_IPERF_SECONDS (default 5; 0 skips the iperf3 part), TW_BENCH_SENSOR_ARGS
(more tapwire-sensor flags, e.g. "--ring-size 8MiB"), TW_BUILD_DIR.
"""

import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import lab  # noqa: E402

SECONDS = max(1, min(120, int(os.environ.get("TW_BENCH_SECONDS", "10"))))
ROUNDS = max(1, min(10, int(os.environ.get("TW_BENCH_ROUNDS", "1"))))
CONNS = max(1, min(256, int(os.environ.get("TW_BENCH_CONNS", "8"))))
FILES = [f for f in os.environ.get("TW_BENCH_FILES", "10k.bin,100b.bin").split(",") if f]
IPERF_SECONDS = max(0, min(60, int(os.environ.get("TW_BENCH_IPERF_SECONDS", "5"))))
CONFIGS = ["none", "tapwire", "tcpdump"]
SENSOR_ARGS = os.environ.get("TW_BENCH_SENSOR_ARGS", "").split()


def machine_busy_seconds() -> float:
    """CPU time of the whole machine that was not idle (user, nice, system,
    irq, softirq, steal), from /proc/stat."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed_wrk(L: lab.Lab, path: str) -> tuple[dict, float]:
    b0 = machine_busy_seconds()
    w = L.wrk(f"/f/{path}", threads=1, conns=CONNS, duration=SECONDS)
    return w, machine_busy_seconds() - b0


def attached_prog_ids(L: lab.Lab) -> set[int]:
    """IDs of the BPF programs attached to the server veth (tc and tcx)."""
    r = subprocess.run(["ip", "netns", "exec", L.srv_ns, "bpftool", "-j", "net", "show", "dev", L.srv_veth],
                       capture_output=True, text=True, timeout=30)
    ids = set()
    try:
        for blk in json.loads(r.stdout or "[]"):
            for entries in blk.values():
                for e in entries or []:
                    if isinstance(e, dict) and ("prog_id" in e or "id" in e):
                        ids.add(int(e.get("prog_id", e.get("id"))))
    except ValueError:
        pass
    return ids


def sensor_prog_ids(prefix: str = "tw_") -> set[int]:
    """IDs of the loaded tw_* TC programs (one sensor runs at a time here):
    when `bpftool net show` lists no IDs for tcx links."""
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30)
    try:
        progs = json.loads(r.stdout or "[]")
    except ValueError:
        return set()
    return {int(p["id"]) for p in progs
            if p.get("name", "").startswith(prefix) and p.get("type") in ("sched_cls", "tcx") and "id" in p}


def bpf_prog_stats(ids: set[int]) -> tuple[int, int, list[str]]:
    """(run_time_ns, run_cnt, names) summed over the programs with these IDs."""
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, timeout=30)
    try:
        progs = json.loads(r.stdout or "[]")
    except ValueError:
        return 0, 0, []
    ns = cnt = 0
    names = []
    for p in progs:
        if int(p.get("id", -1)) in ids:
            ns += int(p.get("run_time_ns", 0))
            cnt += int(p.get("run_cnt", 0))
            names.append(p.get("name", ""))
    return ns, cnt, names


def pcap_payload_bytes(path: Path) -> tuple[int, int]:
    """(packets, TCP/UDP payload bytes) of a classic pcap file with Ethernet
    link type, as tcpdump -w writes it. Standard library only."""
    pkts = total = 0
    with open(path, "rb") as f:
        gh = f.read(24)
        if len(gh) < 24:
            return 0, 0
        magic = struct.unpack("<I", gh[:4])[0]
        endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        linktype = struct.unpack(endian + "I", gh[20:24])[0]
        while True:
            h = f.read(16)
            if len(h) < 16:
                break
            _, _, incl, _ = struct.unpack(endian + "IIII", h)
            data = f.read(incl)
            pkts += 1
            off = 14 if linktype == 1 else 0
            if linktype == 1:
                et = struct.unpack("!H", data[12:14])[0]
                while et in (0x8100, 0x88A8) and len(data) >= off + 4:
                    et = struct.unpack("!H", data[off + 2:off + 4])[0]
                    off += 4
            else:
                et = 0x0800 if data[:1] and data[0] >> 4 == 4 else 0x86DD
            if et == 0x0800 and len(data) >= off + 20:
                ihl = (data[off] & 15) * 4
                tot = struct.unpack("!H", data[off + 2:off + 4])[0]
                proto = data[off + 9]
                l4, l3len = off + ihl, tot - ihl
            elif et == 0x86DD and len(data) >= off + 40:
                plen = struct.unpack("!H", data[off + 4:off + 6])[0]
                proto = data[off + 6]
                l4, l3len = off + 40, plen
            else:
                continue
            if proto == 6 and len(data) >= l4 + 13:
                total += max(0, l3len - (data[l4 + 12] >> 4) * 4)
            elif proto == 17:
                total += max(0, l3len - 8)
    return pkts, total


def run_one(L: lab.Lab, config: str, path: str, rnd: int) -> dict:
    res = {"config": config, "file": path, "round": rnd}
    if config == "none":
        w, busy = timed_wrk(L, path)
        res.update(rps=w["rps"], requests=w["requests"], errors=w["socket_errors"], machine_cpu=busy)
        return res
    if config == "tapwire":
        data = L.dir / f"bench-data-{path}-{rnd}"
        s = L.start_sensor(data, extra=["--storage-size", "2GiB"] + SENSOR_ARGS)
        try:
            cpu0 = lab.proc_cpu_seconds(s.pid)
            ids = attached_prog_ids(L) or sensor_prog_ids()
            bpf0, cnt0, _ = bpf_prog_stats(ids)
            st0 = s.status() or {}
            w, busy = timed_wrk(L, path)
            time.sleep(1.0)  # let it drain what is in the rings
            cpu1 = lab.proc_cpu_seconds(s.pid)
            bpf1, cnt1, names = bpf_prog_stats(ids)
        finally:
            rc = s.stop()
        st1 = s.final_status or {}
        b0 = st0.get("counters", {}).get("bytes_captured", 0)
        b1 = st1.get("counters", {}).get("bytes_captured", 0)
        dr = {k: v for k, v in (st1.get("drops") or {}).items() if isinstance(v, (int, float)) and v}
        drops = sum(dr.values())
        res["drop_reasons"] = dr
        res.update(rps=w["rps"], requests=w["requests"], errors=w["socket_errors"],
                   cpu=(cpu1 or 0) - (cpu0 or 0), bpf_s=(bpf1 - bpf0) / 1e9, bpf_runs=cnt1 - cnt0,
                   bpf_progs=sorted(set(names)), bytes=b1 - b0, drops=drops, exit=rc, machine_cpu=busy,
                   packets=st1.get("counters", {}).get("packets_captured", 0))
        shutil.rmtree(data, ignore_errors=True)
        return res
    if config == "tcpdump":
        out = L.dir / f"bench-{path}-{rnd}.pcap"
        t = L.start_tcpdump(L.srv_veth, out, plain=True)
        try:
            cpu0 = lab.proc_cpu_seconds(t.pid)
            w, busy = timed_wrk(L, path)
            time.sleep(1.0)
            cpu1 = lab.proc_cpu_seconds(t.pid)
        finally:
            t.stop()
        pkts, nbytes = pcap_payload_bytes(out)
        res.update(rps=w["rps"], requests=w["requests"], errors=w["socket_errors"], cpu=(cpu1 or 0) - (cpu0 or 0),
                   bpf_s=0.0, bytes=nbytes, drops=t.kernel_drops if t.kernel_drops is not None else -1,
                   machine_cpu=busy,
                   packets=pkts, file_bytes=out.stat().st_size)
        out.unlink()
        return res
    raise ValueError(config)


def iperf_once(L: lab.Lab, capture: str, limit: str) -> dict:
    """One iperf3 run (client in the client namespace) with a capture on the
    server's veth: rate, bytes captured, drops."""
    srv = L.spawn("iperf3-server", L.srv_ns, ["iperf3", "-s", "-1", "-B", L.srv4])
    time.sleep(0.5)
    data = L.dir / f"iperf-data-{capture}-{limit}"
    cap = None
    if capture == "tapwire-sensor":
        cap = L.start_sensor(data, extra=["--storage-size", "2GiB"] + SENSOR_ARGS)
    elif capture == "tcpdump -w":
        cap = L.start_tcpdump(L.srv_veth, L.dir / f"iperf-{limit}.pcap", plain=True)
    try:
        cmd = ["iperf3", "-c", L.srv4, "-t", str(IPERF_SECONDS), "-J"]
        if limit != "unlimited":
            cmd += ["-b", limit]
        r = L.ns(L.cli_ns, cmd, timeout=IPERF_SECONDS + 60, check=False)
        try:
            bps = json.loads(r.stdout)["end"]["sum_received"]["bits_per_second"]
        except (ValueError, KeyError):
            bps = 0.0
        time.sleep(1.0)
    finally:
        st = {}
        if capture == "tapwire-sensor":
            st0 = cap.status() or {}
            cap.stop()
            st = cap.final_status or st0
        elif cap is not None:
            cap.stop()
        srv.stop()
    if capture == "tapwire-sensor":
        dr = {k: v for k, v in (st.get("drops") or {}).items() if isinstance(v, (int, float)) and v}
        gb, drops = st.get("counters", {}).get("bytes_captured", 0) / 1e9, sum(dr.values())
        shutil.rmtree(data, ignore_errors=True)
    else:
        out = L.dir / f"iperf-{limit}.pcap"
        gb = pcap_payload_bytes(out)[1] / 1e9
        drops = cap.kernel_drops if cap.kernel_drops is not None else -1
        out.unlink(missing_ok=True)
    reasons = dr if capture == "tapwire-sensor" else {}
    return {"capture": capture, "limit": limit, "gbps": bps / 1e9, "gb": gb, "drops": drops, "reasons": reasons}


def run_iperf(L: lab.Lab) -> list[dict]:
    """Full speed first; while tapwire drops, 70% of the rate it reached, at
    most four steps; tcpdump at each setting tried."""
    rows, limit = [], "unlimited"
    for _ in range(5):
        tw = iperf_once(L, "tapwire-sensor", limit)
        td = iperf_once(L, "tcpdump -w", limit)
        lab.log(f"iperf3 -b {limit}: tapwire {tw['gbps']:.2f} Gbit/s drops {tw['drops']}; "
                f"tcpdump {td['gbps']:.2f} Gbit/s drops {td['drops']}")
        rows += [tw, td]
        if tw["drops"] == 0 or tw["gbps"] <= 0:
            break
        limit = f"{max(1, int(tw['gbps'] * 0.7 * 1000))}M"
    return rows


def med(rows, key):
    vals = [r.get(key, 0) or 0 for r in rows]
    return statistics.median(vals) if vals else 0


def main() -> int:
    lab.require(tools=("ip", "nginx", "tcpdump", "wrk", "curl", "bpftool"))
    prev = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1\n")
    results = []
    iperf = []
    started = time.time()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    try:
        with lab.Lab(dnsmasq=False) as L:
            lab.log(f"bench: wrk -t1 -c{CONNS} -d{SECONDS}s, files {FILES}, {ROUNDS} round(s), "
                    f"{os.cpu_count()} CPUs")
            for path in FILES:
                L.wrk(f"/f/{path}", threads=1, conns=CONNS, duration=1)  # warm up
                for rnd in range(ROUNDS):
                    order = CONFIGS[rnd % 3:] + CONFIGS[:rnd % 3]  # rotate to spread drift
                    for cfg in order:
                        r = run_one(L, cfg, path, rnd)
                        lab.log(f"{path} {cfg} round {rnd + 1}: {r.get('rps', 0):.0f} req/s"
                                + (f", cpu {r['cpu']:.2f}s + bpf {r['bpf_s']:.2f}s, "
                                   f"{r['bytes'] / 1e9:.3f} GB, drops {r['drops']}" if cfg != "none" else ""))
                        results.append(r)
            if IPERF_SECONDS and shutil.which("iperf3"):
                iperf = run_iperf(L)
            elif IPERF_SECONDS:
                lab.log("iperf3 not installed: the zero-drop rate is not measured")
    finally:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text(prev + "\n")

    print()
    print(f"wrk -t1 -c{CONNS} -d{SECONDS}s against nginx (1 worker) over a veth pair between two network "
          f"namespaces; {os.cpu_count()} CPUs; kernel {os.uname().release}; median of {ROUNDS} round(s); "
          f"{time.strftime('%Y-%m-%d %H:%M')}; load average before the run {' '.join(load_before)} "
          f"(other work on the machine makes the numbers noisy: use TW_BENCH_ROUNDS=3 or more)")
    print()
    print("| file | capture | requests/s | vs no capture | GB captured | process CPU s | BPF kernel s "
          "| CPU s per GB | machine CPU s per GB | drops |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    verdict = []
    for path in FILES:
        rows = {c: [r for r in results if r["file"] == path and r["config"] == c] for c in CONFIGS}
        base = med(rows["none"], "rps")
        # The machine's CPU per request with no capture, from the sum over its rounds.
        none_req = sum(r.get("requests", 0) for r in rows["none"])
        none_cpu_per_req = sum(r.get("machine_cpu", 0) for r in rows["none"]) / none_req if none_req else 0
        per_gb, machine_per_gb = {}, {}
        for c in CONFIGS:
            rps = med(rows[c], "rps")
            ratio = f"{rps / base:.1%}" if base else "-"
            if c == "none":
                print(f"| {path} | none | {rps:,.0f} | 100% | - | - | - | - | - | - |")
                continue
            gb = med(rows[c], "bytes") / 1e9
            cpu = med(rows[c], "cpu")
            bpf = med(rows[c], "bpf_s")
            per_gb[c] = (cpu + bpf) / gb if gb > 0 else float("nan")
            # Each round: busy time above what the same requests cost without capture, per GB.
            above = [(r.get("machine_cpu", 0) - none_cpu_per_req * r.get("requests", 0)) / (r["bytes"] / 1e9)
                     for r in rows[c] if r.get("bytes")]
            machine_per_gb[c] = statistics.median(above) if above else float("nan")
            drops = max((r.get("drops", 0) for r in rows[c]), default=0)
            reasons = {}
            for r in rows[c]:
                for k, v in (r.get("drop_reasons") or {}).items():
                    reasons[k] = max(reasons.get(k, 0), v)
            if reasons:
                drops = f"{drops} ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))})"
            name = "tapwire-sensor" if c == "tapwire" else "tcpdump -w"
            print(f"| {path} | {name} | {rps:,.0f} | {ratio} | {gb:.3f} | {cpu:.2f} | "
                  f"{bpf:.2f} | {per_gb[c]:.2f} | {machine_per_gb[c]:.2f} | {drops} |")
        tw_rps, td_rps = med(rows["tapwire"], "rps"), med(rows["tcpdump"], "rps")
        loss = 1 - tw_rps / base if base else float("nan")
        cpu_ratio = per_gb["tapwire"] / per_gb["tcpdump"] if per_gb.get("tcpdump") else float("nan")
        tw_drops = max((r.get("drops", 0) for r in rows["tapwire"]), default=0)
        m_ratio = (machine_per_gb["tapwire"] / machine_per_gb["tcpdump"]
                   if machine_per_gb.get("tcpdump", 0) > 0 else float("nan"))
        verdict.append(f"- {path}: tapwire loses {loss:.1%} of requests/s (target ≤ 5%: "
                       f"{'met' if loss <= 0.05 else 'NOT met'}); tcpdump loses "
                       f"{1 - td_rps / base if base else float('nan'):.1%}; tapwire CPU per GB is "
                       f"{cpu_ratio:.2f}× tcpdump's (target ≤ 0.33: {'met' if cpu_ratio <= 1 / 3 else 'NOT met'}); "
                       f"tapwire drops {tw_drops} (target 0: {'met' if tw_drops == 0 else 'NOT met'}); "
                       f"whole-machine CPU per GB {m_ratio:.2f}× tcpdump's (target ≤ 0.33: "
                       f"{'met' if m_ratio <= 1 / 3 else 'NOT met'})")
    print()
    print("\n".join(verdict))
    print()
    print("CPU s per GB: (process utime+stime [+ run_time_ns of the sensor's tw_* BPF programs]) / L4 payload "
          "GB captured (tapwire: status.json bytes_captured; tcpdump: payload bytes in its pcap). tcpdump's "
          "kernel-side copy (AF_PACKET, in softirq) is not in its process time. Machine CPU s per GB: the "
          "whole machine's busy time (/proc/stat) during the run, less what the no-capture runs spent per "
          "request times this run's requests, per GB captured: every cost of capturing, wherever it runs.")
    if iperf:
        print()
        print(f"iperf3 -t {IPERF_SECONDS} (one TCP stream, client to server) over the same veth, capture on the "
              f"server's end:")
        print()
        print("| capture | iperf3 -b | Gbit/s | GB captured | drops |")
        print("|---|---:|---:|---:|---:|")
        for r in iperf:
            why = ", ".join(f"{k} {v}" for k, v in sorted((r.get("reasons") or {}).items()))
            print(f"| {r['capture']} | {r['limit']} | {r['gbps']:.2f} | {r['gb']:.3f} | {r['drops']}"
                  f"{f' ({why})' if why else ''} |")
        zero = [r for r in iperf if r["capture"] == "tapwire-sensor" and r["drops"] == 0]
        best = max(zero, key=lambda r: r["gbps"]) if zero else None
        if best:
            td = [r for r in iperf if r["capture"] == "tcpdump -w" and r["limit"] == best["limit"]]
            print()
            print(f"- highest rate tapwire captured with zero drops: {best['gbps']:.2f} Gbit/s "
                  f"(iperf3 -b {best['limit']}); tcpdump -w at the same setting: "
                  f"{td[0]['drops'] if td else '-'} drops")
        else:
            print()
            print("- tapwire dropped at every rate tried")
    print(f"total bench time {time.time() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

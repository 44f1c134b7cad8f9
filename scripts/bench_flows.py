#!/usr/bin/env python3
"""Flow accounting benchmark (issue 12), side by side in one run:

1. requests/s of wrk against nginx over a veth pair with tapwire-sensor
   capturing, flow accounting on (`tap.enabledDissectors` with tcp and udp,
   the default) and off (without them), rounds alternating, medians; the BPF
   programs' kernel time per packet on and off (kernel.bpf_stats_enabled), so
   the accounting's CPU per million packets is the difference;
2. memory per 100k flows: the kernel flow table's memory (bpftool's memlock
   of tw_flows, allocated at start for tap.flows.maxFlows) and the sensor's
   resident memory with 100k live flows (made by spoofed SYNs from
   tapwire-synflood), and the harvester's CPU per second at that size;
3. the userspace path: `tapwire flows --pcap` against `tshark -z conv,tcp`
   on the same capture (packets per second).

Environment: TW_BENCH_SECONDS (wrk duration, default 10), TW_BENCH_ROUNDS
(default 3), TW_BENCH_CONNS (default 8), TW_BUILD_DIR.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import lab  # noqa: E402

SECONDS = max(1, min(120, int(os.environ.get("TW_BENCH_SECONDS", "10"))))
ROUNDS = max(1, min(10, int(os.environ.get("TW_BENCH_ROUNDS", "3"))))
CONNS = max(1, min(256, int(os.environ.get("TW_BENCH_CONNS", "8"))))
ALL = "http,ws,amqp,postgres,mysql,mongodb,kafka,redis,dns,icmp"


def bpf_stats(prefix: str = "tw_") -> tuple[int, int]:
    """Total run_time_ns and run_cnt of the loaded tw_* TC programs."""
    r = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True)
    ns = cnt = 0
    for p in json.loads(r.stdout):
        if p.get("name", "").startswith(prefix) and p.get("type") in ("sched_cls", "tcx"):
            ns += p.get("run_time_ns", 0)
            cnt += p.get("run_cnt", 0)
    return ns, cnt


def flow_map_memlock() -> tuple[int, int]:
    r = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True, check=True)
    for m in json.loads(r.stdout):
        if m.get("name") == "tw_flows":
            return int(m.get("bytes_memlock", 0)), int(m.get("max_entries", 0))
    return 0, 0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def write_config(path: Path, flows_on: bool, max_flows: int | None = None) -> Path:
    ds = ALL + (",tcp,udp" if flows_on else "")
    lines = ["tap:", "  enabledDissectors:"] + [f"    - {d}" for d in ds.split(",")]
    if max_flows:
        lines += ["  flows:", f"    maxFlows: {max_flows}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def accounting_run(L: lab.Lab, on: bool, rnd: int) -> dict:
    cfg = write_config(L.dir / f"flows-{'on' if on else 'off'}.yaml", on)
    s = L.start_sensor(L.dir / f"bench-flows-{rnd}-{int(on)}", extra=["--config", cfg, "--storage-size", "1GiB"])
    try:
        cpu0 = lab.proc_cpu_seconds(s.pid)
        b0, c0 = bpf_stats()
        w = L.wrk("/f/100b.bin", threads=1, conns=CONNS, duration=SECONDS)
        time.sleep(1.5)  # one harvest after the run
        b1, c1 = bpf_stats()
        cpu1 = lab.proc_cpu_seconds(s.pid)
    finally:
        s.stop()
    return {"on": on, "rps": w["rps"], "requests": w["requests"], "bpf_ns": b1 - b0, "runs": c1 - c0,
            "cpu": (cpu1 or 0) - (cpu0 or 0)}


def memory_run(L: lab.Lab, flows: int) -> dict:
    tool = Path(os.environ.get("TW_BUILD_DIR", "build")) / "tapwire-synflood"
    if not tool.exists():
        return {"skipped": f"{tool} not built"}
    cfg = write_config(L.dir / "flows-mem.yaml", True, max_flows=flows + flows // 2)
    s = L.start_sensor(L.dir / "bench-flows-mem", extra=["--config", cfg])
    try:
        time.sleep(2)
        rss0 = rss_kib(s.pid)
        memlock, entries = flow_map_memlock()
        cpu0 = lab.proc_cpu_seconds(s.pid)
        mac = json.loads(L.srv(["ip", "-j", "link", "show", L.srv_veth]).stdout)[0]["address"]
        r = L.cli([str(tool), "--interface", L.cli_veth, "--dst-ip", L.srv4, "--dst-port", "9",
                   "--dst-mac", mac, "--count", str(flows), "--seed", "7"], timeout=120)
        time.sleep(3)  # harvests with the table full of embryonic flows
        cpu1 = lab.proc_cpu_seconds(s.pid)
        rss1 = rss_kib(s.pid)
        t_harvest = 3.0
    finally:
        s.stop()
    return {"flows": flows, "memlock": memlock, "entries": entries, "rss0_kib": rss0, "rss1_kib": rss1,
            "sent": r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "", "harvest_cpu_per_s": ((cpu1 or 0) - (cpu0 or 0)) / t_harvest}


def pcap_run(L: lab.Lab) -> dict:
    pcap = L.dir / "flows-bench.pcap"
    t = L.start_tcpdump(L.srv_veth, pcap, plain=True)
    try:
        L.wrk("/f/100b.bin", threads=1, conns=CONNS, duration=3, delay_ms=0)
    finally:
        t.stop()
    pkts = int(subprocess.run(["capinfos", "-c", "-M", str(pcap)], capture_output=True, text=True)
               .stdout.split()[-1])
    t0 = time.monotonic()
    subprocess.run([lab.cli_bin(), "flows", "--pcap", str(pcap), "--json"], capture_output=True, check=True)
    tw_s = time.monotonic() - t0
    t0 = time.monotonic()
    subprocess.run(["tshark", "-n", "-q", "-r", str(pcap), "-z", "conv,tcp"], capture_output=True, check=True)
    ts_s = time.monotonic() - t0
    return {"packets": pkts, "tapwire_s": tw_s, "tshark_s": ts_s}


def main() -> int:
    lab.require(tools=("ip", "nginx", "wrk", "bpftool", "tshark", "capinfos"))
    prev = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1\n")
    rows = []
    try:
        with lab.Lab(dnsmasq=False) as L:
            L.wrk("/f/100b.bin", threads=1, conns=CONNS, duration=1)  # warm up
            for rnd in range(ROUNDS):
                for on in ((True, False) if rnd % 2 == 0 else (False, True)):
                    r = accounting_run(L, on, rnd)
                    lab.log(f"round {rnd + 1} flows {'on' if on else 'off'}: {r['rps']:.0f} req/s, "
                            f"bpf {r['bpf_ns'] / max(1, r['runs']):.0f} ns/packet, sensor cpu {r['cpu']:.2f}s")
                    rows.append(r)
            mem = memory_run(L, 100_000)
            pc = pcap_run(L)
    finally:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text(prev + "\n")

    def med(on, f):
        return statistics.median([f(r) for r in rows if r["on"] == on])

    rps_on, rps_off = med(True, lambda r: r["rps"]), med(False, lambda r: r["rps"])
    ns_on = med(True, lambda r: r["bpf_ns"] / max(1, r["runs"]))
    ns_off = med(False, lambda r: r["bpf_ns"] / max(1, r["runs"]))
    cpu_on = med(True, lambda r: r["cpu"] / max(1, r["runs"]) * 1e6)
    cpu_off = med(False, lambda r: r["cpu"] / max(1, r["runs"]) * 1e6)
    print()
    print(f"wrk -t1 -c{CONNS} -d{SECONDS}s on /f/100b.bin over a veth pair, tapwire-sensor capturing; "
          f"{os.cpu_count()} CPUs; kernel {os.uname().release}; median of {ROUNDS} rounds; "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print()
    print("| flow accounting | requests/s | vs off | BPF ns per packet | sensor CPU s per 1M packets |")
    print("|---|---:|---:|---:|---:|")
    print(f"| off (no tcp, udp) | {rps_off:,.0f} | 100% | {ns_off:.0f} | {cpu_off:.3f} |")
    print(f"| on (default) | {rps_on:,.0f} | {rps_on / rps_off:.1%} | {ns_on:.0f} | {cpu_on:.3f} |")
    print()
    diff = 1 - rps_on / rps_off
    print(f"- requests/s difference: {diff:.1%} (target ≤ 1%: {'met' if diff <= 0.01 else 'NOT met'}); "
          f"flow accounting costs {(ns_on - ns_off):.0f} ns of BPF time per packet = "
          f"{(ns_on - ns_off) * 1e6 / 1e9:.3f} CPU-s per million packets in the kernel, "
          f"{(cpu_on - cpu_off):.3f} CPU-s per million packets in the sensor (harvest)")
    if "skipped" in mem:
        print(f"- memory per 100k flows: skipped ({mem['skipped']})")
    else:
        per = mem["memlock"] / max(1, mem["entries"])
        print(f"- memory per 100k flows: kernel flow table {per * 100_000 / 2**20:.1f} MiB "
              f"({per:.0f} B per entry, memlock {mem['memlock'] / 2**20:.1f} MiB for {mem['entries']} entries, "
              f"allocated at start); sensor RSS {mem['rss0_kib'] / 1024:.1f} MiB idle -> "
              f"{mem['rss1_kib'] / 1024:.1f} MiB with the table full of 100k SYN-flood flows "
              f"({mem['sent']}); harvest CPU {mem['harvest_cpu_per_s']:.3f} s per second at that size")
    print(f"- `tapwire flows --pcap` on a {pc['packets']:,}-packet wrk capture: {pc['tapwire_s']:.2f} s "
          f"({pc['packets'] / pc['tapwire_s'] / 1e6:.2f} M packets/s); `tshark -q -z conv,tcp`: "
          f"{pc['tshark_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

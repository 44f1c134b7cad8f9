#!/usr/bin/env python3
"""tapwire dissector benchmark (issue 3): on one large capture (wrk over
keep-alive against nginx's /f/100b.bin in the test lab, recorded by tcpdump),
side by side in one run:
  tapwire-dissector --pcap FILE --db DB --keep-priority -q
  tapwire-dissector --pcap FILE --jsonl /dev/null --keep-priority -q
  tshark -r FILE -Y http                                 (the issue's baseline)
  tshark -r FILE -Y http -T fields -e http.request.method
Reports calls (HTTP requests found) per core-second (user+sys CPU of the
process), MB of capture per second (wall), wall time, peak RSS, and the ratios
to tshark, as a markdown table. Not a test: it prints numbers.

Environment: TW_BENCH_DISSECT_SECONDS (wrk duration, default 4),
TW_BENCH_DISSECT_CONNS (default 16), TW_BENCH_DISSECT_PCAP (use this capture
instead of making one), TW_BENCH_DISSECT_TSHARK (both|text|fields|none,
default both), TW_BENCH_DISSECT_KEEP=1 (keep the capture), TW_BUILD_DIR.
Every step has a time limit; the capture stops growing at 1 GB.
"""

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402

SECONDS = max(1, min(60, int(os.environ.get("TW_BENCH_DISSECT_SECONDS", "4"))))
CONNS = max(1, min(256, int(os.environ.get("TW_BENCH_DISSECT_CONNS", "16"))))
TSHARK = os.environ.get("TW_BENCH_DISSECT_TSHARK", "both")
MAX_CAPTURE = 1 << 30
STEP_TIMEOUT = 900


def log(msg):
    print(f"[bench-dissect {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def make_capture(out: Path) -> dict:
    with lab.Lab(dnsmasq=False) as L:
        # a bounded capture: -C would rotate, so a watchdog stops tcpdump at 1 GB instead
        t = L.start_tcpdump(L.srv_veth, out)
        wrk = L.spawn("wrk", L.cli_ns, ["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", L.url("/f/100b.bin")])
        deadline = time.monotonic() + SECONDS + 60
        while wrk.alive() and time.monotonic() < deadline:
            if out.exists() and out.stat().st_size > MAX_CAPTURE:
                log("capture reached 1 GB: stopping wrk")
                wrk.stop(signal.SIGINT, 10)
                break
            time.sleep(0.2)
        wrk.stop(signal.SIGTERM, 10)
        w = lab.parse_wrk(wrk.output())
        cap = ref.stop_capture(t)
    return {"wrk": w, "capture": cap}


def count_lines_with_value(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if line:
                n += line.count(b",") + 1  # several requests in one frame: "GET,GET"
    return n


def main() -> int:
    if os.geteuid() != 0 and not os.environ.get("TW_BENCH_DISSECT_PCAP"):
        print("bench_dissect: needs root (the lab) or TW_BENCH_DISSECT_PCAP", file=sys.stderr)
        return 1
    for b in (ref.dissector_bin(),):
        if not os.access(b, os.X_OK):
            print(f"bench_dissect: missing {b} (build first)", file=sys.stderr)
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="tw-bench-dissect-"))
    keep = os.environ.get("TW_BENCH_DISSECT_KEEP") == "1"
    try:
        pcap = Path(os.environ["TW_BENCH_DISSECT_PCAP"]) if os.environ.get("TW_BENCH_DISSECT_PCAP") else None
        info = ""
        if pcap is None:
            pcap = tmp / "wrk-100b.pcap"
            log(f"making the capture: wrk -c{CONNS} -d{SECONDS}s /f/100b.bin, tcpdump -w")
            c = make_capture(pcap)
            w, cap = c["wrk"], c["capture"]
            info = (f"wrk: {w['requests']} requests ({w['rps']:.0f}/s, {CONNS} keep-alive connections, {SECONDS} s); "
                    f"tcpdump: {cap['captured']} packets, {cap['kernel_drops']} dropped by the kernel")
            log(info)
        size = pcap.stat().st_size
        mb = size / 1e6
        log(f"capture {pcap}: {mb:.1f} MB")

        rows = []

        def tapwire(name, args, db=None):
            log(f"{name} ...")
            r = ref.wait4_run([ref.dissector_bin(), "--pcap", pcap, "--keep-priority", "-q"] + args, STEP_TIMEOUT)
            if r["timed_out"] or r["rc"] != 0:
                log(f"{name}: exit {r['rc']} (timed out: {r['timed_out']}): {r['stderr'][-500:]}")
            r["name"] = name
            rows.append(r)
            return r

        db = tmp / "x.db"
        r_db = tapwire("`tapwire-dissector --pcap --db`", ["--db", db])
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        calls = con.execute("SELECT count(*) FROM calls WHERE protocol = 'http'").fetchone()[0]
        con.close()
        r_db["calls"] = calls
        r_j = tapwire("`tapwire-dissector --pcap --jsonl /dev/null`", ["--jsonl", "/dev/null"])
        r_j["calls"] = calls  # the same file, the same calls
        # the same count the JSON way, without being timed: --jsonl - | wc -l
        tshark_rows = []
        if TSHARK in ("both", "text"):
            log("tshark -r FILE -Y http ...")
            r = ref.wait4_run(["tshark", "-n", "-r", pcap, "-Y", "http"], STEP_TIMEOUT,
                              stdout_path=tmp / "tshark-text.txt")
            r["name"] = "`tshark -r FILE -Y http`"
            # one line per frame with HTTP; requests are the lines with a request line in them
            n = 0
            with open(tmp / "tshark-text.txt", "rb") as f:
                for line in f:
                    n += sum(line.count(m) for m in (b" GET ", b" POST ", b" HEAD ", b" PUT ", b" DELETE "))
            r["calls"] = n
            tshark_rows.append(r)
            (tmp / "tshark-text.txt").unlink()
        if TSHARK in ("both", "fields"):
            log("tshark -r FILE -Y http -T fields -e http.request.method ...")
            out = tmp / "tshark-fields.txt"
            r = ref.wait4_run(["tshark", "-n", "-r", pcap, "-Y", "http.request", "-T", "fields",
                               "-e", "http.request.method"], STEP_TIMEOUT, stdout_path=out)
            r["name"] = "`tshark -r FILE -Y http.request -T fields -e http.request.method`"
            r["calls"] = count_lines_with_value(out)
            tshark_rows.append(r)
            out.unlink()
        rows += tshark_rows

        bases = [r for r in tshark_rows if r["cpu"] > 0 and r["calls"] > 0 and not r["timed_out"]]
        labels = {"`tshark -r FILE -Y http`": "tshark -Y http",
                  "`tshark -r FILE -Y http.request -T fields -e http.request.method`": "tshark -T fields"}
        print()
        print(f"### Dissection: tapwire-dissector vs tshark on one capture ({mb:.0f} MB, "
              f"{calls} HTTP requests found by tapwire)")
        print()
        if info:
            print(info + f"; {os.cpu_count()} CPUs")
            print()
        head = ("| program | exit | HTTP calls | wall s | CPU s (user+sys) | calls / core-second | MB/s (wall) "
                "| peak RSS MB |")
        for bse in bases:
            head += f" throughput / RSS vs {labels.get(bse['name'], bse['name'])} |"
        print(head)
        print("|---" * (8 + len(bases)) + "|")
        for r in rows:
            cps = r["calls"] / r["cpu"] if r["cpu"] > 0 else float("inf")
            rss = r["maxrss_kb"] / 1024
            exit_s = "timeout" if r["timed_out"] else str(r["rc"])
            line = (f"| {r['name']} | {exit_s} | {r['calls']} | {r['wall']:.2f} | {r['cpu']:.2f} | {cps:,.0f} | "
                    f"{mb / r['wall']:.1f} | {rss:.1f} |")
            for bse in bases:
                if r is bse:
                    line += " — |"
                else:
                    bcps = bse["calls"] / bse["cpu"]
                    line += f" {cps / bcps:.1f}× / 1/{bse['maxrss_kb'] / max(1, r['maxrss_kb']):.1f} |"
            print(line)
        print()
        print("calls / core-second: HTTP requests found / (user+sys CPU seconds of the process); "
              "tshark's count: the request lines it printed. Issue 3's target: >= 50x tshark's throughput "
              "at <= 1/5 of its peak RSS.")
        print()
        return 0
    finally:
        if keep:
            log(f"kept {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], timeout=120)


if __name__ == "__main__":
    sys.exit(main())

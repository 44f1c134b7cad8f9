#!/usr/bin/env python3
"""tapwire benchmark (issue 5): delayed dissection of a snapshot. In the lab,
the sensor captures a wrk run (100 B responses, keep-alive); a snapshot of it
is dissected with `tapwire dissect --jobs 1` and `--jobs 2`, and next to them
tshark reads the pcap export of the same snapshot (`tshark -r FILE -Y http`).
Prints a markdown table: MB of raw capture per second (segment bytes / wall
time), calls, CPU seconds, peak RSS. Bounded in time; cleans up."""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import dissectref  # noqa: E402
import lab  # noqa: E402


def main():
    lab.require()
    with lab.Lab(dnsmasq=False) as L:
        data = L.dir / "data"
        s = L.start_sensor(data, extra=["--metrics-address", "", "--segment-size", "32MiB"])
        w = L.wrk("/f/100b.bin", conns=16, duration=4)
        time.sleep(1)
        s.stop()
        cli = lab.cli_bin()
        r = lab.run([cli, "snapshot", "create", "--name", "bench", "--data-dir", data], timeout=300)
        snap = data / "snapshots" / "bench"
        size = sum(f.stat().st_size for f in (snap / "segments").glob("*.twseg"))
        mb = size / 1e6
        rows = []
        for jobs in (1, 2):
            db = L.dir / f"j{jobs}.db"
            res = dissectref.wait4_run([cli, "dissect", "--snapshot", "bench", "--data-dir", data, "--db", db,
                                        "--jobs", jobs, "-q"], timeout=600)
            calls = int(lab.run([cli, "calls", "--db", db, "--json"], timeout=300).stdout.count("\n"))
            rows.append((f"`tapwire dissect --jobs {jobs}`", res, calls))
        pcap = L.dir / "bench.pcapng"
        lab.run([cli, "export", "pcap", "--snapshot", "bench", "--data-dir", data, "-o", pcap], timeout=600)
        res = dissectref.wait4_run(["tshark", "-r", pcap, "-Y", "http.request", "-T", "fields",
                                    "-e", "http.request.method"], timeout=900)
        rows.append(("`tshark -r EXPORT -Y http.request -T fields`", res, res["stdout"].count("\n")))
        res = dissectref.wait4_run(["tshark", "-r", pcap, "-Y", "http"], timeout=900)
        rows.append(("`tshark -r EXPORT -Y http`", res, None))

        print(f"\n### Delayed dissection: a snapshot of {mb:.0f} MB of segments "
              f"(wrk {w['requests']} requests, 100 B responses, 16 keep-alive connections); "
              f"{os.cpu_count()} CPUs\n")
        print("| program | exit | HTTP calls | wall s | CPU s (user+sys, workers included) | MB of capture / s (wall) "
              "| peak RSS MB (largest process) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, res, calls in rows:
            print(f"| {name} | {res['rc']} | {calls if calls is not None else '-'} | {res['wall']:.2f} | "
                  f"{res['cpu']:.2f} | {mb / res['wall']:.0f} | {res['maxrss_kb'] / 1024:.0f} |")
        print("\nMB of capture: the snapshot's segment bytes; tshark reads the pcapng export of the same snapshot.")


if __name__ == "__main__":
    main()

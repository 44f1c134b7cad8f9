#!/usr/bin/env python3
"""tapwire serve benchmark (issue 14): query latency over a dissection DB of
1M calls (filters, stats, one call), the live stream's delay while calls are
written at 10k/s, and the server's memory.

The DB is made the way production makes it: a crafted capture of keep-alive
HTTP/1 connections (scripts/craft_captures.py's packet writer; statuses 200,
404 and 500, paths over 1000 endpoints, 4000 clients) dissected by
tapwire-dissector --pcap into DATA_DIR/dissection.db. Each query runs
TW_BENCH_QUERY_RUNS times (default 5); the table gives the median and the
slowest. The stream part copies rows of that DB back into it (new ids, the
time of the copy) in batches every 10 ms while a client follows
/api/v1/stream, and reports how long after its row was committed each call
arrived.

Environment: TW_BENCH_CALLS (default 1000000), TW_BENCH_QUERY_RUNS,
TW_BENCH_STREAM_SECONDS (default 10), TW_BENCH_STREAM_RATE (default 10000),
TW_BENCH_DB (a file: the DB is kept there, and taken from there when it exists),
TW_BUILD_DIR. Needs no root.
"""

import http.client
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import craft_captures as cc  # noqa: E402

BUILD = Path(os.environ.get("TW_BUILD_DIR", ROOT / "build"))
CALLS = int(os.environ.get("TW_BENCH_CALLS", "1000000"))
RUNS = max(1, int(os.environ.get("TW_BENCH_QUERY_RUNS", "5")))
STREAM_SECONDS = float(os.environ.get("TW_BENCH_STREAM_SECONDS", "10"))
STREAM_RATE = int(os.environ.get("TW_BENCH_STREAM_RATE", "10000"))

STATUSES = [(200, b"OK")] * 17 + [(404, b"Not Found")] * 2 + [(500, b"Internal Server Error")]


def craft(path: Path, calls: int) -> None:
    """Keep-alive connections of 100 calls each, from 4000 clients."""
    pcap = cc.Pcap(path)
    rng = random.Random(14)
    us, per_conn = 0, 100
    for i in range((calls + per_conn - 1) // per_conn):
        c = cc.Conn(pcap, f"10.{80 + (i % 4000) // 250 // 250}.{(i % 4000) // 250}.{(i % 4000) % 250 + 1}",
                    20000 + i % 40000)
        c.handshake(us)
        us += 200
        for k in range(min(per_conn, calls - i * per_conn)):
            ep = rng.randrange(1000)
            status, reason = STATUSES[rng.randrange(len(STATUSES))]
            body = b'{"ok":true,"n":%d}' % k
            c.send(us, True, b"GET /api/%d/items?page=%d HTTP/1.1\r\nHost: shop.test\r\nUser-Agent: bench\r\n\r\n"
                   % (ep, k))
            c.send(us + 150 + rng.randrange(5000), False,
                   b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                   % (status, reason, len(body), body))
            us += 6000
        c.fin(us)
        us += 200
    pcap.f.close()


def rss_mb(pid: int) -> tuple[float, float]:
    vals = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            vals[k] = int(v.split()[0]) / 1024
    return vals.get("VmRSS", 0), vals.get("VmHWM", 0)


def get(port: int, path: str, params: dict | None = None) -> tuple[float, dict]:
    q = ("?" + urllib.parse.urlencode(params)) if params else ""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", path + q)
    r = conn.getresponse()
    body = r.read()
    dt = time.perf_counter() - t0
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"{path}{q}: HTTP {r.status}: {body[:200]!r}")
    return dt, json.loads(body)


def stream_delay(port: int, db: Path, seconds: float, rate: int) -> dict:
    """Rows copied into the live DB at `rate` per second; how long each takes
    to reach a /stream client."""
    committed = {}  # new row id -> commit time
    arrived = {}
    stop = threading.Event()

    def follow():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=seconds + 30)
        conn.request("GET", "/api/v1/stream")
        r = conn.getresponse()
        ident = None
        while not stop.is_set():
            line = r.fp.readline()
            if not line:
                break
            line = line.decode().rstrip("\n")
            if line.startswith("data:"):
                try:
                    ident = json.loads(line[5:]).get("id")
                except ValueError:
                    ident = None
                if ident is not None:
                    arrived.setdefault(ident, time.time())
        conn.close()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    time.sleep(1.0)
    w = sqlite3.connect(db, timeout=30)
    cols = [r[1] for r in w.execute("PRAGMA table_info(calls)")]
    n_src = w.execute("SELECT max(rowid) FROM calls").fetchone()[0]
    batch = max(1, rate // 100)
    sel = ", ".join("printf('%016x', :base + rowid)" if c == "id" else ":now" if c == "ts_ns" else c for c in cols)
    sql = f"INSERT INTO calls ({', '.join(cols)}) SELECT {sel} FROM calls WHERE rowid BETWEEN :lo AND :hi"
    base, lo, t_end, written = 1 << 60, 1, time.time() + seconds, 0
    next_at = time.time()
    while time.time() < t_end:
        hi = lo + batch - 1
        now = time.time()
        with w:
            w.execute(sql, {"base": base, "now": int(now * 1e9), "lo": lo, "hi": hi})
        done = time.time()
        for rowid in range(lo, hi + 1):
            committed[f"{base + rowid:016x}"] = done
        written += batch
        lo = hi + 1 if hi + batch < n_src else 1
        base += n_src if lo == 1 else 0  # ids stay unique when the copy starts over
        next_at += 0.01
        time.sleep(max(0.0, next_at - time.time()))
    time.sleep(2.0)
    stop.set()
    w.close()
    delays = sorted(arrived[i] - committed[i] for i in committed if i in arrived)
    got = len(delays)
    pct = lambda p: delays[min(got - 1, int(p * got))] * 1000 if got else float("nan")  # noqa: E731
    return {"written": written, "received": got, "rate": written / seconds, "p50_ms": pct(0.5),
            "p99_ms": pct(0.99), "max_ms": delays[-1] * 1000 if got else float("nan")}


def main() -> int:
    tw, dissector = BUILD / "tapwire", BUILD / "tapwire-dissector"
    for b in (tw, dissector):
        if not os.access(b, os.X_OK):
            print(f"{b} not built", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="tw-bench-serve-") as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        data.mkdir()
        pcap = tmp / "calls.pcap"
        t0 = time.time()
        reuse = os.environ.get("TW_BENCH_DB")  # a DB of an earlier run (copied, not changed)
        if reuse and Path(reuse).exists():
            shutil.copy(reuse, data / "dissection.db")
            t1 = t2 = time.time()
        else:
            craft(pcap, CALLS)
            t1 = time.time()
            subprocess.run([str(dissector), "--pcap", str(pcap), "--db", str(data / "dissection.db")], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t2 = time.time()
            pcap.unlink()
            if reuse:
                shutil.copy(data / "dissection.db", reuse)
        n = sqlite3.connect(data / "dissection.db").execute("SELECT count(*) FROM calls").fetchone()[0]
        print(f"DB: {n:,} calls, {os.path.getsize(data / 'dissection.db') / 1e6:.0f} MB "
              f"(capture crafted in {t1 - t0:.0f} s, dissected in {t2 - t1:.0f} s)")

        port = 18000 + os.getpid() % 1000
        srv = subprocess.Popen([str(tw), "serve", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(100):
                try:
                    get(port, "/api/v1/boundaries")
                    break
                except OSError:
                    time.sleep(0.1)
            _, one = get(port, "/api/v1/calls", {"limit": 1})
            some_id = one["calls"][0]["id"]
            queries = [
                ("newest 100 calls", "/api/v1/calls", {"limit": 100}),
                ("filter: 5xx, 100", "/api/v1/calls", {"filter": "http and response.status >= 500", "limit": 100}),
                ("filter: one client, 100", "/api/v1/calls", {"filter": 'src.ip == "10.80.3.7"', "limit": 100}),
                ("filter: path startswith, 100", "/api/v1/calls",
                 {"filter": 'request.path startswith "/api/777/"', "limit": 100}),
                ("filter: path matches (full scan), 100", "/api/v1/calls",
                 {"filter": 'request.path matches "^/api/9[0-9]{2}/items\\\\?page=99$"', "limit": 100}),
                ("filter: duration > 4ms, 1000", "/api/v1/calls", {"filter": "duration > 4ms", "limit": 1000}),
                ("stats by status (1M calls)", "/api/v1/stats", {"group_by": "status"}),
                ("stats by endpoint (1M calls)", "/api/v1/stats", {"group_by": "endpoint"}),
                ("one call whole", f"/api/v1/calls/{some_id}", None),
            ]
            rows = []
            for name, path, params in queries:
                times = [get(port, path, params)[0] for _ in range(RUNS)]
                rows.append((name, statistics.median(times) * 1000, max(times) * 1000))
            rss_q, hwm_q = rss_mb(srv.pid)
            st = stream_delay(port, data / "dissection.db", STREAM_SECONDS, STREAM_RATE)
            rss_s, hwm_s = rss_mb(srv.pid)
        finally:
            srv.terminate()
            try:
                srv.wait(timeout=10)
            except subprocess.TimeoutExpired:
                srv.kill()
        print(f"\ntapwire serve over {n:,} calls; {RUNS} runs each; "
              f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} CPUs\n")
        print("| query | median ms | slowest ms |")
        print("|---|---:|---:|")
        for name, m, mx in rows:
            print(f"| {name} | {m:.1f} | {mx:.1f} |")
        print(f"\nlive stream: {st['written']:,} calls written at {st['rate']:,.0f}/s for {STREAM_SECONDS:.0f} s, "
              f"{st['received']:,} received; delay from commit to the client: p50 {st['p50_ms']:.0f} ms, "
              f"p99 {st['p99_ms']:.0f} ms, max {st['max_ms']:.0f} ms")
        print(f"memory of tapwire serve: {rss_q:.1f} MB resident after the queries (peak {hwm_q:.1f} MB), "
              f"{rss_s:.1f} MB after the stream (peak {hwm_s:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

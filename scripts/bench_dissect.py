#!/usr/bin/env python3
"""tapwire dissector benchmark (issues 3, 10 and 11): captures of real clients and
servers in the test lab, recorded by tcpdump (or, for Kafka and MongoDB, which
have no server in Debian, synthesised from real messages), each dissected in
turn by

  tapwire-dissector --pcap FILE --db DB --keep-priority -q
  tapwire-dissector --pcap FILE --jsonl /dev/null --keep-priority -q
  tshark -r FILE [-d tcp.port==P,http2] -Y FILTER                (text)
  tshark -r FILE [-d tcp.port==P,http2] -Y FILTER -T fields -e F  (the reference count)

one capture per protocol:

  http1  wrk -t2 -cN -dS over keep-alive against nginx's /f/100b.bin (issue 3);
         tshark -Y http, and -Y http.request -T fields -e http.request.method
  http2  h2load -n N -c C -m M (h2c, prior knowledge) against nghttpd --no-tls,
         GET of a 100-byte file; tshark -d tcp.port==8080,http2 -Y http2.header,
         and -T fields -e http2.headers.method (one per request HEADERS)
  grpc   a python3-grpcio client making as many unary calls as fit in S seconds
         (futures, a window of calls in flight, over several connections) plus
         server-, client- and bidi-streaming calls from another thread, against
         a python3-grpcio server (generic handlers, protobuf encoded by hand:
         tests/integration/h2ref.py); tshark -d tcp.port==50051,http2 -Y grpc,
         and -T fields -e tcp.stream -e http2.streamid (distinct streams)

and reports, per protocol and side by side: calls found, CPU seconds
(user+sys of the process), calls per core-second, wall time, MB of capture per
second, peak RSS, and the ratios to tshark, as markdown tables. Not a test: it
prints numbers.

Environment:
  TW_BENCH_DISSECT_PROTOCOLS   which captures, comma-separated (http1,http2,grpc,redis,postgres,mysql,
                               amqp,kafka,mongodb; default all)
  Data-plane protocols (DATAPLANE below): TW_BENCH_DISSECT_DP_SECONDS (the benchmark client's time,
          default 8), TW_BENCH_DISSECT_DP_CALLS (calls synthesised for Kafka and MongoDB, 200000),
          TW_BENCH_DISSECT_<PROTO>_PCAP and TW_BENCH_DISSECT_<PROTO>_PORT (a capture to use instead)
  TW_BENCH_DISSECT_TSHARK      both|text|fields|none (default both)
  TW_BENCH_DISSECT_STEP_TIMEOUT  seconds each dissector/tshark run may take (default 900)
  TW_BENCH_DISSECT_PERF=1      also `perf record` each capture's --db run and print the top symbols
  TW_BENCH_DISSECT_KEEP=1      keep the captures (and perf data)
  TW_BUILD_DIR                 where tapwire-dissector is (default build/)
  HTTP/1: TW_BENCH_DISSECT_SECONDS (wrk duration, default 4), TW_BENCH_DISSECT_CONNS (default 16),
          TW_BENCH_DISSECT_PCAP (use this capture instead of making one)
  HTTP/2: TW_BENCH_DISSECT_H2_REQUESTS (h2load -n, default 200000), TW_BENCH_DISSECT_H2_CONNS (-c, 16),
          TW_BENCH_DISSECT_H2_STREAMS (-m, 10), TW_BENCH_DISSECT_H2_SECONDS (h2load's time bound, 120),
          TW_BENCH_DISSECT_H2_PCAP and TW_BENCH_DISSECT_H2_PORT (a capture of h2c on that port, default 8080)
  gRPC:   TW_BENCH_DISSECT_GRPC_SECONDS (the client's duration, default 10), TW_BENCH_DISSECT_GRPC_CONNS
          (connections, 4), TW_BENCH_DISSECT_GRPC_INFLIGHT (unary calls in flight, 64),
          TW_BENCH_DISSECT_GRPC_PCAP and TW_BENCH_DISSECT_GRPC_PORT (default 50051)
Every step has a time limit; every capture stops growing at 1 GB.
"""

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import dissectref as ref  # noqa: E402
import h2ref  # noqa: E402
import lab  # noqa: E402


def _env_int(name: str, default: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(os.environ.get(name, str(default)))))


ALL_PROTOCOLS = ("http1", "http2", "grpc", "redis", "postgres", "mysql", "amqp", "kafka", "mongodb")
# The data-plane protocols (issue 11): captures of their benchmark clients
# against lab servers (the ref module's capture_bench), or for Kafka and
# MongoDB, which have no server in Debian, captures synthesised from real
# messages (synth_bench_pcap); how tshark is told the port, and what it
# counts (None: it prints frames or messages, not calls: it is credited with
# tapwire's count, the same file's calls).
DATAPLANE = {
    "redis": {"label": "Redis", "ref": "redisref", "decode": "resp", "filter": "resp && tcp.dstport == {port}",
              "fields": "resp.array.length", "client": "redis-benchmark -P 16 (SET, GET, LPUSH)"},
    "postgres": {"label": "PostgreSQL", "ref": "postgresref", "decode": "pgsql",
                 "filter": 'pgsql.type == "Execute" || pgsql.type == "Simple query"', "fields": "pgsql.type",
                 "client": "pgbench -M prepared, then -M simple"},
    "mysql": {"label": "MySQL", "ref": "mysqlref", "decode": "mysql", "filter": "mysql.command",
              "fields": "mysql.command", "client": "mysqlslap"},
    "amqp": {"label": "AMQP", "ref": "amqpref", "decode": "amqp", "filter": "amqp", "fields": None,
             "client": "amqp-publish / amqp-consume"},
    "kafka": {"label": "Kafka", "ref": "kafkaref", "decode": "kafka", "filter": "kafka.request_key",
              "fields": "kafka.request_key", "synth": True,
              "client": "synthesised from the fixtures' Produce v2/v9, Fetch v12 and a Metadata v1 pair"},
    "mongodb": {"label": "MongoDB", "ref": "mongodbref", "decode": "mongo", "filter": "mongo", "fields": None,
                "synth": True, "client": "synthesised find/insert pairs from the fixture's messages"},
}
DP_SECONDS = _env_int("TW_BENCH_DISSECT_DP_SECONDS", 8, 1, 120)
DP_CALLS = _env_int("TW_BENCH_DISSECT_DP_CALLS", 200000, 100, 10_000_000)
DP_PORT: dict[str, int] = {}  # the server port of each data-plane capture
SECONDS = _env_int("TW_BENCH_DISSECT_SECONDS", 4, 1, 60)
CONNS = _env_int("TW_BENCH_DISSECT_CONNS", 16, 1, 256)
H2_REQUESTS = _env_int("TW_BENCH_DISSECT_H2_REQUESTS", 200000, 1, 10_000_000)
H2_CONNS = _env_int("TW_BENCH_DISSECT_H2_CONNS", 16, 1, 256)
H2_STREAMS = _env_int("TW_BENCH_DISSECT_H2_STREAMS", 10, 1, 1000)
H2_SECONDS = _env_int("TW_BENCH_DISSECT_H2_SECONDS", 120, 1, 900)
H2_PORT = _env_int("TW_BENCH_DISSECT_H2_PORT", h2ref.NGHTTPD_PORT, 1, 65535)
GRPC_SECONDS = _env_int("TW_BENCH_DISSECT_GRPC_SECONDS", 10, 1, 120)
GRPC_CONNS = _env_int("TW_BENCH_DISSECT_GRPC_CONNS", 4, 1, 64)
GRPC_INFLIGHT = _env_int("TW_BENCH_DISSECT_GRPC_INFLIGHT", 64, 1, 4096)
GRPC_PORT = _env_int("TW_BENCH_DISSECT_GRPC_PORT", h2ref.GRPC_PORT, 1, 65535)
TSHARK = os.environ.get("TW_BENCH_DISSECT_TSHARK", "both")
STEP_TIMEOUT = _env_int("TW_BENCH_DISSECT_STEP_TIMEOUT", 900, 10, 7200)
PERF = os.environ.get("TW_BENCH_DISSECT_PERF") == "1"
MAX_CAPTURE = 1 << 30
PCAP_ENV = {"http1": "TW_BENCH_DISSECT_PCAP", "http2": "TW_BENCH_DISSECT_H2_PCAP", "grpc": "TW_BENCH_DISSECT_GRPC_PCAP"}
PCAP_ENV.update({p: f"TW_BENCH_DISSECT_{p.upper()}_PCAP" for p in DATAPLANE})
LABEL = {"http1": "HTTP/1", "http2": "HTTP/2", "grpc": "gRPC"}
LABEL.update({p: d["label"] for p, d in DATAPLANE.items()})
DB_PROTOCOL = {"http1": "http", "http2": "http2", "grpc": "grpc"}  # the calls table's protocol column
DB_PROTOCOL.update({p: p for p in DATAPLANE})
TARGETS = {"http1": 1_000_000, "http2": 300_000}  # calls per core-second into the DB (issue 10)


def log(msg):
    print(f"[bench-dissect {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def protocols() -> list[str]:
    want = [p.strip().lower() for p in os.environ.get("TW_BENCH_DISSECT_PROTOCOLS", ",".join(ALL_PROTOCOLS)).split(",")
            if p.strip()]
    aliases = {"http": "http1", "h1": "http1", "h2": "http2", "h2c": "http2"}
    want = [aliases.get(p, p) for p in want]
    bad = [p for p in want if p not in ALL_PROTOCOLS]
    if bad:
        raise SystemExit(f"bench_dissect: unknown protocol(s) {', '.join(bad)} in TW_BENCH_DISSECT_PROTOCOLS "
                         f"(known: {', '.join(ALL_PROTOCOLS)})")
    return [p for p in ALL_PROTOCOLS if p in want]


# --------------------------------------------------------------------------
# Captures

def _watch(proc, out: Path, bound_s: float, what: str) -> bool:
    """Waits while proc runs, at most bound_s, and stops it when the capture
    passes 1 GB. True when it ended on its own."""
    deadline = time.monotonic() + bound_s
    while proc.alive():
        if out.exists() and out.stat().st_size > MAX_CAPTURE:
            log(f"capture reached 1 GB: stopping {what}")
            proc.stop(signal.SIGINT, 10)
            return False
        if time.monotonic() > deadline:
            log(f"{what} still running after {bound_s:.0f} s: stopping it")
            proc.stop(signal.SIGINT, 10)
            return False
        time.sleep(0.2)
    return True


def capture_http1(out: Path) -> str:
    with lab.Lab(dnsmasq=False) as L:
        # a bounded capture: -C would rotate, so a watchdog stops tcpdump at 1 GB instead
        t = L.start_tcpdump(L.srv_veth, out)
        wrk = L.spawn("wrk", L.cli_ns, ["wrk", "-t2", f"-c{CONNS}", f"-d{SECONDS}s", L.url("/f/100b.bin")])
        _watch(wrk, out, SECONDS + 60, "wrk")
        wrk.stop(signal.SIGTERM, 10)
        w = lab.parse_wrk(wrk.output())
        cap = ref.stop_capture(t)
    return (f"wrk: {w['requests']} requests ({w['rps']:.0f}/s, {CONNS} keep-alive connections, {SECONDS} s, "
            f"100 B responses); tcpdump: {cap['captured']} packets, {cap['kernel_drops']} dropped by the kernel")


def capture_http2(out: Path) -> str:
    with lab.Lab(nginx=False, dnsmasq=False) as L:
        www = L.dir / "h2www"
        (www / "f").mkdir(parents=True)
        (www / "f" / "100b.bin").write_bytes(os.urandom(100))
        nd = L.spawn("nghttpd", L.srv_ns, ["nghttpd", "--no-tls", "-a", L.srv4, "-d", www, H2_PORT],
                     death_sig=signal.SIGKILL)
        url = f"http://{L.srv4}:{H2_PORT}/f/100b.bin"
        deadline = time.monotonic() + 15
        while True:
            r = L.cli(["curl", "-sS", "-o", "/dev/null", "-m", "2", "--http2-prior-knowledge", url],
                      check=False, timeout=10)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline or not nd.alive():
                raise RuntimeError(f"nghttpd not answering on port {H2_PORT}: {r.stderr}\n{nd.output()}")
            time.sleep(0.2)
        t = L.start_tcpdump(L.srv_veth, out)
        h = L.spawn("h2load", L.cli_ns, ["h2load", "-n", H2_REQUESTS, "-c", H2_CONNS, "-m", H2_STREAMS, url])
        t0 = time.monotonic()
        finished = _watch(h, out, H2_SECONDS, "h2load")
        took = time.monotonic() - t0
        h.stop(signal.SIGTERM, 10)
        cap = ref.stop_capture(t)
        o = h.output()
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", o)
    st = re.search(r"status codes: (\d+) 2xx", o)
    rps = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", o)
    done = (f"{m.group(4)} succeeded, {m.group(5)} failed, {st.group(1) if st else '?'} 2xx"
            if m else f"stopped after {took:.0f} s (no summary)")
    return (f"h2load -n {H2_REQUESTS} -c {H2_CONNS} -m {H2_STREAMS} (h2c, prior knowledge) against nghttpd "
            f"--no-tls, GET of 100 B: {done}" + (f" ({float(rps.group(1)):.0f} req/s)" if rps else "")
            + ("" if finished else " [bounded]")
            + f"; tcpdump: {cap['captured']} packets, {cap['kernel_drops']} dropped by the kernel")


# The gRPC client: unary calls as futures (a window in flight, round robin over
# several connections) for SECONDS, and streaming calls from another thread.
GRPC_BENCH_CLIENT = h2ref.PB_CODE + r'''
import json, sys, threading, time
import grpc

host, port, seconds, nconn, inflight = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
REQ = "tapwire.test.EchoRequest"
chans = []
for i in range(nconn):
    # a local subchannel pool and a distinct argument: one TCP connection per channel
    ch = grpc.insecure_channel("%s:%d" % (host, port), options=[("grpc.enable_http_proxy", 0),
                               ("grpc.use_local_subchannel_pool", 1), ("tw.bench.channel", i)])
    grpc.channel_ready_future(ch).result(timeout=20)
    chans.append(ch)
P = "/tapwire.test.Echo/"
unary = [c.unary_unary(P + "Unary") for c in chans]
sstream = chans[0].unary_stream(P + "ServerStream")
cstream = chans[-1].stream_unary(P + "ClientStream")
bidi = chans[0].stream_stream(P + "Bidi")
lock = threading.Lock()
n = {"unary": 0, "unary_failed": 0, "server_stream": 0, "client_stream": 0, "bidi": 0, "stream_failed": 0}
sem = threading.BoundedSemaphore(inflight)
deadline = time.monotonic() + seconds


def done(f):
    ok = f.exception() is None
    with lock:
        n["unary" if ok else "unary_failed"] += 1
    sem.release()


def streaming():
    i = 0
    while time.monotonic() < deadline:
        i += 1
        try:
            k = i % 3
            if k == 0:
                list(sstream(pb_encode(REQ, {"name": "s%d" % i, "seq": 5}), timeout=30))
                what = "server_stream"
            elif k == 1:
                cstream(iter([pb_encode(REQ, {"name": "c%d" % j, "seq": j}) for j in range(4)]), timeout=30)
                what = "client_stream"
            else:
                list(bidi(iter([pb_encode(REQ, {"name": "b%d" % j, "seq": j}) for j in range(4)]), timeout=30))
                what = "bidi"
        except grpc.RpcError:
            what = "stream_failed"
        with lock:
            n[what] += 1
        time.sleep(0.002)


st = threading.Thread(target=streaming, daemon=True)
st.start()
i = 0
t0 = time.monotonic()
while time.monotonic() < deadline:
    sem.acquire()
    i += 1
    f = unary[i % nconn].future(pb_encode(REQ, {"name": "bench", "seq": i, "tags": ["t"]}), timeout=30)
    f.add_done_callback(done)
for _ in range(inflight):  # the calls still in flight
    sem.acquire(timeout=30)
st.join(35)
took = time.monotonic() - t0
for c in chans:
    c.close()
n["seconds"] = round(took, 2)
print(json.dumps(n), flush=True)
'''


def capture_grpc(out: Path) -> str:
    py = h2ref.grpc_python()
    if not py:
        raise RuntimeError("no python3 with grpc (python3-grpcio)")
    with lab.Lab(nginx=False, dnsmasq=False) as L:
        if GRPC_PORT != h2ref.GRPC_PORT:
            raise RuntimeError(f"the lab's gRPC server listens on {h2ref.GRPC_PORT}; "
                               "TW_BENCH_DISSECT_GRPC_PORT is for a given capture")
        h2ref.start_grpc_server(L)
        script = L.dir / "grpc_bench_client.py"
        script.write_text(GRPC_BENCH_CLIENT)
        t = L.start_tcpdump(L.srv_veth, out)
        c = L.spawn("grpc-client", L.cli_ns, [py, script, L.srv4, GRPC_PORT, GRPC_SECONDS, GRPC_CONNS, GRPC_INFLIGHT])
        finished = _watch(c, out, GRPC_SECONDS + 90, "the gRPC client")
        c.stop(signal.SIGTERM, 10)
        cap = ref.stop_capture(t)
        o = c.output()
    res = {}
    for line in o.splitlines():
        if line.startswith("{"):
            try:
                res = json.loads(line)
            except ValueError:
                pass
    if not res:
        log(f"gRPC client output: {o[-2000:]}")
    calls = sum(res.get(k, 0) for k in ("unary", "server_stream", "client_stream", "bidi"))
    return (f"python3-grpcio client and server: {calls} calls in {res.get('seconds', '?')} s "
            f"({res.get('unary', '?')} unary with {GRPC_INFLIGHT} in flight over {GRPC_CONNS} connections, "
            f"{res.get('server_stream', '?')} server-streaming (5 replies), {res.get('client_stream', '?')} "
            f"client-streaming (4 requests), {res.get('bidi', '?')} bidi (4 each way); failed: "
            f"{res.get('unary_failed', '?')} unary, {res.get('stream_failed', '?')} streaming)"
            + ("" if finished else " [bounded]")
            + f"; tcpdump: {cap['captured']} packets, {cap['kernel_drops']} dropped by the kernel")


def capture_dataplane(proto: str, out: Path) -> str:
    import importlib
    d = DATAPLANE[proto]
    mod = importlib.import_module(d["ref"])
    if d.get("synth"):
        port = mod.synth_bench_pcap(out, DP_CALLS)
        what = f"{DP_CALLS} calls {d['client']}"
    else:
        port = mod.capture_bench(out, DP_SECONDS)
        what = f"{d['client']} for {DP_SECONDS} s against a lab server, tcpdump on the server's veth"
    DP_PORT[proto] = int(port)
    return f"{d['label']}: {what}; port {port}"


CAPTURE = {"http1": capture_http1, "http2": capture_http2, "grpc": capture_grpc}
CAPTURE.update({p: (lambda out, p=p: capture_dataplane(p, out)) for p in DATAPLANE})


# --------------------------------------------------------------------------
# tshark: the commands and how their output is counted

def count_lines_with_value(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if line:
                n += line.count(b",") + 1  # several requests in one frame: "GET,GET"
    return n


def count_request_lines(path: Path) -> int:
    """HTTP/1 text: one line per frame with HTTP; requests are the request lines in them."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            n += sum(line.count(m) for m in (b" GET ", b" POST ", b" HEAD ", b" PUT ", b" DELETE "))
    return n


def count_h2_request_headers(path: Path) -> int:
    """HTTP/2 text: the Info column names every frame, "HEADERS[1]: GET /path" for a request."""
    rx = re.compile(rb"HEADERS\[\d+\]: (?:GET|POST|HEAD|PUT|DELETE|PATCH|OPTIONS) ")
    n = 0
    with open(path, "rb") as f:
        for line in f:
            n += len(rx.findall(line))
    return n


def count_distinct_streams(path: Path) -> int:
    """`-T fields -e tcp.stream -e http2.streamid`: distinct (TCP stream, HTTP/2 stream), stream 0 aside."""
    seen = set()
    with open(path, "rb") as f:
        for line in f:
            parts = line.rstrip(b"\n").split(b"\t")
            if len(parts) < 2 or not parts[0]:
                continue
            for sid in parts[1].split(b","):
                if sid and sid != b"0":
                    seen.add((parts[0], sid))
    return len(seen)


def count_values(*wanted: bytes):
    def count(path: Path) -> int:
        n = 0
        with open(path, "rb") as f:
            for line in f:
                n += sum(1 for v in line.strip().split(b",") if v in wanted)
        return n
    return count


COUNTERS = {
    "redis": count_lines_with_value,  # the commands (arrays) clients sent: their lengths, one per command
    "postgres": count_values(b"Execute", b"Simple query"),
    "mysql": count_lines_with_value,
    "kafka": count_lines_with_value,
}


def tshark_runs(proto: str, port: int) -> list[dict]:
    """[{name, label, kind (text|fields), args, count}] for the protocol."""
    if proto in DATAPLANE:
        d = DATAPLANE[proto]
        dec = ["-d", f"tcp.port=={port},{d['decode']}"]
        flt = d["filter"].format(port=port)
        runs = [{"kind": "text", "name": f"`tshark -r FILE -d tcp.port=={port},{d['decode']} -Y '{flt}'`",
                 "label": f"tshark -Y {d['decode']}", "args": dec + ["-Y", flt], "count": None}]
        field = d["fields"] or "frame.number"
        runs.append({"kind": "fields", "name": f"`tshark -r FILE -d tcp.port=={port},{d['decode']} -Y '{flt}' "
                                              f"-T fields -e {field}`",
                     "label": "tshark -T fields", "args": dec + ["-Y", flt, "-T", "fields", "-e", field],
                     "count": COUNTERS.get(proto)})
        return runs
    if proto == "http1":
        return [{"kind": "text", "name": "`tshark -r FILE -Y http`", "label": "tshark -Y http",
                 "args": ["-Y", "http"], "count": count_request_lines},
                {"kind": "fields", "name": "`tshark -r FILE -Y http.request -T fields -e http.request.method`",
                 "label": "tshark -T fields",
                 "args": ["-Y", "http.request", "-T", "fields", "-e", "http.request.method"],
                 "count": count_lines_with_value}]
    d = ["-d", f"tcp.port=={port},http2"]
    if proto == "http2":
        return [{"kind": "text", "name": f"`tshark -r FILE -d tcp.port=={port},http2 -Y http2.header`",
                 "label": "tshark -Y http2.header", "args": d + ["-Y", "http2.header"],
                 "count": count_h2_request_headers},
                {"kind": "fields", "name": f"`tshark -r FILE -d tcp.port=={port},http2 -Y http2.header "
                                           "-T fields -e http2.headers.method`",
                 "label": "tshark -T fields",
                 "args": d + ["-Y", "http2.header", "-T", "fields", "-e", "http2.headers.method"],
                 "count": count_lines_with_value}]
    return [{"kind": "text", "name": f"`tshark -r FILE -d tcp.port=={port},http2 -Y grpc`",
             "label": "tshark -Y grpc", "args": d + ["-Y", "grpc"], "count": None},
            {"kind": "fields", "name": f"`tshark -r FILE -d tcp.port=={port},http2 -Y grpc "
                                       "-T fields -e tcp.stream -e http2.streamid`",
             "label": "tshark -T fields",
             "args": d + ["-Y", "grpc", "-T", "fields", "-e", "tcp.stream", "-e", "http2.streamid"],
             "count": count_distinct_streams}]


# --------------------------------------------------------------------------

def _perf_report(data: Path, sort: str, limit: float) -> list[str]:
    r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", sort,
                        "--percent-limit", str(limit)], capture_output=True, text=True, timeout=300)
    out = []
    for l in r.stdout.splitlines():
        if not l.strip() or l.startswith("#"):
            continue
        l = re.sub(r"\s+-\s+-\s*$", "", l).rstrip()  # empty columns some perf versions add
        out.append(l if len(l) <= 140 else l[:137] + "...")
    return out


def perf_top(pcap: Path, tmp: Path, proto: str, n: int = 15) -> list[str]:
    """perf record (no call graphs) of the --db run: the share of each DSO,
    then the top n symbols by self time."""
    if not shutil.which("perf"):
        return ["(perf not installed)"]
    data = tmp / f"perf-{proto}.data"
    db = tmp / f"perf-{proto}.db"
    try:
        r = subprocess.run(["perf", "record", "-F", "1999", "-o", str(data), "--", str(ref.dissector_bin()),
                            "--pcap", str(pcap), "--db", str(db), "--keep-priority", "-q"],
                           capture_output=True, text=True, timeout=STEP_TIMEOUT)
        if r.returncode != 0:
            return [f"(perf record failed: {r.stderr.strip()[-300:]})"]
        dsos = _perf_report(data, "dso", 1.0)
        syms = _perf_report(data, "dso,symbol", 0.5)[:n]
    except subprocess.TimeoutExpired:
        return ["(perf timed out)"]
    finally:
        for p in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
            if p.exists():
                p.unlink()
        if data.exists() and os.environ.get("TW_BENCH_DISSECT_KEEP") != "1":
            data.unlink()
    return ["by DSO (self time):"] + dsos + ["", f"top {n} symbols (self time):"] + syms


def bench_protocol(proto: str, tmp: Path) -> dict:
    given = os.environ.get(PCAP_ENV[proto])
    info = ""
    if given:
        pcap = Path(given)
    else:
        pcap = tmp / f"{proto}.pcap"
        log(f"{LABEL[proto]}: making the capture")
        info = CAPTURE[proto](pcap)
        log(info)
    port = {"http1": 80, "http2": H2_PORT, "grpc": GRPC_PORT}.get(proto) or DP_PORT.get(proto) or int(
        os.environ.get(f"TW_BENCH_DISSECT_{proto.upper()}_PORT", "0"))
    mb = pcap.stat().st_size / 1e6
    log(f"{LABEL[proto]}: capture {pcap}: {mb:.1f} MB")
    rows = []

    def tapwire(name, args):
        log(f"{LABEL[proto]}: {name} ...")
        r = ref.wait4_run([ref.dissector_bin(), "--pcap", pcap, "--keep-priority", "-q"] + args, STEP_TIMEOUT)
        if r["timed_out"] or r["rc"] != 0:
            log(f"{name}: exit {r['rc']} (timed out: {r['timed_out']}): {r['stderr'][-500:]}")
        r["name"], r["label"], r["tool"] = name, name, "tapwire"
        rows.append(r)
        return r

    db = tmp / f"{proto}.db"
    r_db = tapwire("`tapwire-dissector --pcap --db`", ["--db", db])
    by_proto = {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        by_proto = dict(con.execute("SELECT protocol, count(*) FROM calls GROUP BY protocol").fetchall())
        con.close()
    except sqlite3.Error as e:
        log(f"{db}: {e}")
    calls = by_proto.get(DB_PROTOCOL[proto], 0)
    r_db["calls"] = calls
    r_j = tapwire("`tapwire-dissector --pcap --jsonl /dev/null`", ["--jsonl", "/dev/null"])
    r_j["calls"] = calls  # the same file, the same calls
    for p in (db, Path(str(db) + "-wal"), Path(str(db) + "-shm")):
        if p.exists():
            p.unlink()
    tshark_rows = []
    runs = [t for t in tshark_runs(proto, port) if TSHARK in ("both", t["kind"])]
    for t in runs:
        log(f"{LABEL[proto]}: {t['name']} ...")
        out = tmp / f"tshark-{proto}-{t['kind']}.txt"
        r = ref.wait4_run(["tshark", "-n", "-r", pcap] + t["args"], STEP_TIMEOUT, stdout_path=out)
        if r["timed_out"] or r["rc"] != 0:
            log(f"{t['name']}: exit {r['rc']} (timed out: {r['timed_out']}): {r['stderr'][-500:]}")
        r["name"], r["label"], r["tool"], r["kind"] = t["name"], t["label"], "tshark", t["kind"]
        r["calls"] = t["count"](out) if t["count"] else None
        out.unlink()
        tshark_rows.append(r)
    # a tshark form that cannot count calls (gRPC text: a packet's Info names frames, not calls)
    # is credited with the counting form's number: the same file, the same calls
    ref_count = next((r["calls"] for r in tshark_rows if r["kind"] == "fields" and r["calls"] is not None), None)
    for r in tshark_rows:
        if r["calls"] is None:
            r["calls"] = ref_count if ref_count is not None else calls
            r["calls_borrowed"] = True
    rows += tshark_rows
    res = {"proto": proto, "pcap": pcap, "mb": mb, "info": info, "rows": rows, "calls": calls,
           "by_proto": by_proto, "tshark_calls": ref_count}
    if PERF:
        log(f"{LABEL[proto]}: perf record of the --db run ...")
        res["perf"] = perf_top(pcap, tmp, proto)
    return res


def fmt_rss(kb) -> str:
    return f"{kb / 1024:.1f}"


def print_protocol(res: dict) -> None:
    proto, rows, mb = res["proto"], res["rows"], res["mb"]
    bases = [r for r in rows if r["tool"] == "tshark" and r["cpu"] > 0 and r["calls"] and not r["timed_out"]]
    print()
    print(f"### Dissection, {LABEL[proto]}: tapwire-dissector vs tshark on one capture ({mb:.0f} MB, "
          f"{res['calls']} {DB_PROTOCOL[proto]} calls found by tapwire)")
    print()
    if res["info"]:
        print(res["info"] + f"; {os.cpu_count()} CPUs")
        print()
    if res["by_proto"] and set(res["by_proto"]) - {DB_PROTOCOL[proto]}:
        print("tapwire's DB by protocol: " + ", ".join(f"{k} {v}" for k, v in sorted(res["by_proto"].items())))
        print()
    head = (f"| program | exit | {LABEL[proto]} calls | wall s | CPU s (user+sys) | calls / core-second | MB/s (wall) "
            "| peak RSS MB |")
    for b in bases:
        head += f" throughput / RSS vs {b['label']} |"
    print(head)
    print("|---" * (8 + len(bases)) + "|")
    for r in rows:
        cps = r["calls"] / r["cpu"] if r["cpu"] > 0 else float("inf")
        exit_s = "timeout" if r["timed_out"] else str(r["rc"])
        calls_s = f"({r['calls']})" if r.get("calls_borrowed") else str(r["calls"])
        line = (f"| {r['name']} | {exit_s} | {calls_s} | {r['wall']:.2f} | {r['cpu']:.2f} | {cps:,.0f} | "
                f"{mb / r['wall']:.1f} | {fmt_rss(r['maxrss_kb'])} |")
        for b in bases:
            if r is b:
                line += " — |"
            else:
                line += f" {cps / (b['calls'] / b['cpu']):.1f}× / 1/{b['maxrss_kb'] / max(1, r['maxrss_kb']):.1f} |"
        print(line)
    print()
    notes = ["calls / core-second: calls found / (user+sys CPU seconds of the process)"]
    if proto == "http1":
        notes.append("tshark's count: the request lines it printed")
    elif proto == "http2":
        notes.append("tshark's count: the request HEADERS it decoded (`:method` fields; text: `HEADERS[n]: GET` "
                     "in the Info column)")
    else:
        notes.append("tshark's count: the distinct (TCP stream, HTTP/2 stream) of the packets with a gRPC message; "
                     "a count in parentheses is the -T fields run's, given to the text run (its lines are packets, "
                     "not calls)")
    print("; ".join(notes) + ".")
    print()
    if res.get("perf"):
        print(f"`perf record` of `tapwire-dissector --pcap --db` on this capture, top symbols by self time:")
        print()
        print("```")
        for l in res["perf"]:
            print(l)
        print("```")
        print()


def print_summary(results: list[dict]) -> None:
    print()
    print("### Side by side: calls per core-second and peak RSS, tapwire-dissector vs tshark")
    print()
    print("| protocol | capture MB | program | calls found | CPU s | calls / core-s | wall s | peak RSS MB "
          "| throughput vs tshark -T fields | RSS vs tshark -T fields |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    short = {"`tapwire-dissector --pcap --db`": "tapwire --db",
             "`tapwire-dissector --pcap --jsonl /dev/null`": "tapwire --jsonl /dev/null"}
    for res in results:
        base = next((r for r in res["rows"] if r["tool"] == "tshark" and r.get("kind") == "fields"
                     and r["cpu"] > 0 and r["calls"] and not r["timed_out"]), None)
        for r in res["rows"]:
            cps = r["calls"] / r["cpu"] if r["cpu"] > 0 else float("inf")
            name = short.get(r["name"], r["label"] if r["tool"] == "tshark" else r["name"])
            if r["timed_out"] or r["rc"] != 0:
                name += " (timeout)" if r["timed_out"] else f" (exit {r['rc']})"
            calls_s = f"({r['calls']:,})" if r.get("calls_borrowed") else f"{r['calls']:,}"
            if base is None or r is base:
                vs = "— | —"
            else:
                bcps = base["calls"] / base["cpu"]
                vs = f"{cps / bcps:.1f}× | 1/{base['maxrss_kb'] / max(1, r['maxrss_kb']):.1f}"
            print(f"| {LABEL[res['proto']]} | {res['mb']:.0f} | {name} | {calls_s} | {r['cpu']:.2f} | {cps:,.0f} | "
                  f"{r['wall']:.2f} | {fmt_rss(r['maxrss_kb'])} | {vs} |")
    print()
    for res in results:
        t = TARGETS.get(res["proto"])
        r_db = res["rows"][0]
        cps = r_db["calls"] / r_db["cpu"] if r_db["cpu"] > 0 else 0
        ref_n = res["tshark_calls"]
        same = "" if ref_n is None else (
            f"; tapwire found {res['calls']:,}, tshark {ref_n:,}" + (" (equal)" if ref_n == res["calls"] else
                                                                     f" ({res['calls'] - ref_n:+,})"))
        if t:
            print(f"- {LABEL[res['proto']]} into the DB: {cps:,.0f} calls / core-second "
                  f"(target ≥ {t:,}: {'met' if cps >= t else 'NOT met'}, {cps / t:.0%} of it){same}")
        else:
            print(f"- {LABEL[res['proto']]} into the DB: {cps:,.0f} calls / core-second (no target){same}")
    print()


def main() -> int:
    protos = protocols()
    need_lab = [p for p in protos if not os.environ.get(PCAP_ENV[p])]
    if os.geteuid() != 0 and need_lab:
        print(f"bench_dissect: needs root (the lab) or {', '.join(PCAP_ENV[p] for p in need_lab)}", file=sys.stderr)
        return 1
    if not os.access(ref.dissector_bin(), os.X_OK):
        print(f"bench_dissect: missing {ref.dissector_bin()} (build first)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="tw-bench-dissect-"))
    keep = os.environ.get("TW_BENCH_DISSECT_KEEP") == "1"
    results = []
    try:
        for p in protos:
            try:
                results.append(bench_protocol(p, tmp))
            except Exception as e:  # one protocol failing does not lose the others' numbers
                log(f"{LABEL[p]}: FAILED: {e}")
            if results and results[-1]["proto"] == p:
                print_protocol(results[-1])
                sys.stdout.flush()
        if results:
            print_summary(results)
        return 0 if len(results) == len(protos) else 1
    finally:
        if keep:
            log(f"kept {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], timeout=120)


if __name__ == "__main__":
    sys.exit(main())

"""Reference dissection for the dissector's integration tests (issue 3):
tshark reads a capture and says which HTTP requests (method, URI, the status
of the response paired with it) and DNS queries (name, type, rcode, whether an
answer came) it holds; tapwire-dissector is run on the same file; both sides
become multisets of comparable keys.

Also: the traffic the tests make (curl GET/POST/HEAD, chunked uploads,
keep-alive, pipelining, a 404, wrk, dig over UDP and TCP, IPv4 and IPv6),
hostile clients (garbage, a 10 MB header, a 2^63 chunk size), and a way to run
a child and read its CPU time and peak RSS. Python 3 standard library only.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import sqlite3
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402

DNS_TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV",
             35: "NAPTR", 41: "OPT", 43: "DS", 46: "RRSIG", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
DNS_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
              6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE"}

# tshark: reassemble headers and bodies across TCP segments (the defaults,
# stated so that a user preference file cannot change them).
TSHARK_OPTS = ["-o", "tcp.desegment_tcp_streams:TRUE", "-o", "http.desegment_headers:TRUE",
               "-o", "http.desegment_body:TRUE", "-o", "http.dechunk_body:TRUE",
               "-o", "tcp.analyze_sequence_numbers:TRUE", "-o", "dns.desegment_dns_messages:TRUE"]
AGG = "\x1f"  # aggregator between several values of one field in one frame (pipelining)


def dissector_bin() -> Path:
    return lab.build_dir() / "tapwire-dissector"


def require() -> None:
    """lab.require() plus the dissector binary."""
    lab.require()
    if not os.access(dissector_bin(), os.X_OK):
        msg = f"cannot run: missing binary {dissector_bin()} (build first)"
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def norm_ip(s: str) -> str:
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        return s


# --------------------------------------------------------------------------
# Keys. HTTP: (client ip, client port, server ip, server port, method, URI,
# status or None). DNS: (client ip, port, server ip, port, qname, qtype,
# rcode or None). A response with no request has method/qname None.

HttpKey = tuple
DnsKey = tuple


def _tshark_fields(pcap: Path, display_filter: str, fields: list[str], timeout: float = 600) -> list[dict]:
    cmd = ["tshark", "-n", "-r", str(pcap)] + TSHARK_OPTS + ["-Y", display_filter, "-T", "fields",
                                                              "-E", "separator=\t", "-E", "occurrence=a",
                                                              "-E", f"aggregator={AGG}"]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    rows = []
    for line in r.stdout.splitlines():
        vals = line.split("\t")
        vals += [""] * (len(fields) - len(vals))
        rows.append({f: (v.split(AGG) if v != "" else []) for f, v in zip(fields, vals)})
    return rows


def _first(row: dict, *names: str) -> str:
    for n in names:
        if row.get(n):
            return row[n][0]
    return ""


def tshark_http(pcap: Path) -> tuple[list[HttpKey], list[str]]:
    """HTTP requests as tshark finds them, each paired with the next final
    (non-1xx, or 101) response of the same TCP connection in order (HTTP/1.x
    answers in order, pipelining included). Returns (keys, notes)."""
    fields = ["frame.number", "tcp.stream", "ip.src", "ipv6.src", "tcp.srcport", "ip.dst", "ipv6.dst",
              "tcp.dstport", "http.request.method", "http.request.uri", "http.response.code", "http.request.version"]
    rows = _tshark_fields(pcap, "http", fields)
    reqs: dict[str, list] = collections.defaultdict(list)
    resps: dict[str, list] = collections.defaultdict(list)
    ends: dict[str, tuple] = {}
    for row in rows:
        stream = _first(row, "tcp.stream")
        src = (norm_ip(_first(row, "ip.src", "ipv6.src")), int(_first(row, "tcp.srcport")))
        dst = (norm_ip(_first(row, "ip.dst", "ipv6.dst")), int(_first(row, "tcp.dstport")))
        for m, u in zip(row["http.request.method"], row["http.request.uri"]):
            reqs[stream].append((m, u))
            ends[stream] = (src, dst)
        for c in row["http.response.code"]:
            resps[stream].append(int(c))
            ends.setdefault(stream, (dst, src))
    keys, notes = [], []
    for stream in set(reqs) | set(resps):
        (cip, cport), (sip, sport) = ends[stream]
        final = [c for c in resps[stream] if not (100 <= c < 200) or c == 101]
        for i, (m, u) in enumerate(reqs[stream]):
            keys.append((cip, cport, sip, sport, m, u, final[i] if i < len(final) else None))
        for c in final[len(reqs[stream]):]:
            keys.append((cip, cport, sip, sport, None, None, c))
            notes.append(f"tshark: tcp.stream {stream}: response {c} without a request")
    return keys, notes


def tshark_dns(pcap: Path) -> tuple[list[DnsKey], dict]:
    """DNS queries as tshark finds them, paired with the response of the same
    flow, transaction id, name and type. Returns (keys, {key: answer count})."""
    fields = ["frame.number", "udp.stream", "tcp.stream", "ip.src", "ipv6.src", "udp.srcport", "tcp.srcport",
              "ip.dst", "ipv6.dst", "udp.dstport", "tcp.dstport", "dns.id", "dns.flags.response",
              "dns.qry.name", "dns.qry.type", "dns.flags.rcode", "dns.count.answers"]
    rows = _tshark_fields(pcap, "dns", fields)
    queries = []  # [flowkey, id, name, type, client, server]
    pending: dict[tuple, list] = collections.defaultdict(list)
    answers: dict[tuple, list] = collections.defaultdict(list)
    orphans = []
    for row in rows:
        tcp = bool(row["tcp.stream"])
        stream = ("tcp" if tcp else "udp", _first(row, "tcp.stream" if tcp else "udp.stream"))
        src = (norm_ip(_first(row, "ip.src", "ipv6.src")), int(_first(row, "tcp.srcport" if tcp else "udp.srcport")))
        dst = (norm_ip(_first(row, "ip.dst", "ipv6.dst")), int(_first(row, "tcp.dstport" if tcp else "udp.dstport")))
        n = len(row["dns.id"])
        # one question per message here (dig, dnsmasq); qd count > 1 is not made by these tests
        for i in range(n):
            def at(f):
                v = row[f]
                return v[i] if i < len(v) else ""
            tid = int(at("dns.id"), 16) if at("dns.id").startswith("0x") else int(at("dns.id") or 0)
            name, qtype = at("dns.qry.name"), at("dns.qry.type")
            qtype = DNS_TYPES.get(int(qtype), f"TYPE{qtype}") if qtype else ""
            if at("dns.flags.response") in ("1", "True"):
                rcode = DNS_RCODES.get(int(at("dns.flags.rcode") or 0), f"RCODE{at('dns.flags.rcode')}")
                k = (stream, tid, name, qtype)
                if pending[k]:
                    q = pending[k].pop(0)
                    q[6] = rcode
                    q[7] = int(at("dns.count.answers") or 0)
                else:
                    orphans.append((dst[0], dst[1], src[0], src[1], name, qtype, rcode))
            else:
                q = [stream, tid, name, qtype, src, dst, None, None]
                queries.append(q)
                pending[(stream, tid, name, qtype)].append(q)
    keys, counts = [], {}
    for stream, tid, name, qtype, (cip, cp), (sip, sp), rcode, nans in queries:
        k = (cip, cp, sip, sp, name, qtype, rcode)
        keys.append(k)
        counts.setdefault(k, []).append(nans)
    keys += [(c, cp, s, sp, None, None, rc) for (c, cp, s, sp, _n, _t, rc) in orphans]
    return keys, counts


def http_key(c: dict) -> HttpKey:
    req, resp = c.get("request") or {}, c.get("response")
    return (norm_ip(c["src"]["ip"]), c["src"]["port"], norm_ip(c["dst"]["ip"]), c["dst"]["port"],
            req.get("method"), req.get("path"), resp.get("status") if resp else None)


def dns_key(c: dict) -> DnsKey:
    req, resp = c.get("request") or {}, c.get("response")
    name = req.get("qname")
    if isinstance(name, str) and name.endswith(".") and name != ".":
        name = name[:-1]
    return (norm_ip(c["src"]["ip"]), c["src"]["port"], norm_ip(c["dst"]["ip"]), c["dst"]["port"],
            name, req.get("qtype"), resp.get("rcode") if resp else None)


def split_calls(calls: list[dict]) -> tuple[list[dict], list[dict]]:
    return [c for c in calls if c.get("protocol") == "http"], [c for c in calls if c.get("protocol") == "dns"]


def full_key(c: dict) -> tuple:
    """Everything the live test compares: ids and timestamps left out."""
    req = dict(c.get("request") or {})
    resp = c.get("response")
    resp = dict(resp) if resp else None
    for d in (req, resp):
        if d and "id" in d and c.get("protocol") == "dns":
            d.pop("id")  # the DNS transaction id is compared through the flow (ports)
    return (c.get("protocol"), norm_ip(c["src"]["ip"]), c["src"]["port"], norm_ip(c["dst"]["ip"]), c["dst"]["port"],
            json.dumps(req, sort_keys=True), json.dumps(resp, sort_keys=True), json.dumps(sorted(c.get("flags") or [])))


def diff_multisets(ref: list, got: list, ref_name: str = "tshark", got_name: str = "tapwire",
                   limit: int = 40) -> str:
    """'' when equal; else a precise description of what differs."""
    a, b = collections.Counter(ref), collections.Counter(got)
    if a == b:
        return ""
    only_ref = a - b
    only_got = b - a
    lines = [f"{sum(a.values())} in {ref_name}, {sum(b.values())} in {got_name}; "
             f"{sum(only_ref.values())} only in {ref_name}, {sum(only_got.values())} only in {got_name}"]
    # pair up the differences that share everything but the last field (e.g. a status)
    by_head = collections.defaultdict(list)
    for k, n in only_got.items():
        by_head[k[:-1]] += [k] * n
    for k, n in sorted(only_ref.items(), key=repr):
        for _ in range(n):
            other = by_head.get(k[:-1])
            if other:
                o = other.pop(0)
                lines.append(f"  {k[:-1]}: {ref_name} says {k[-1]!r}, {got_name} says {o[-1]!r}")
            else:
                lines.append(f"  only in {ref_name}: {k}")
    for rest in by_head.values():
        for k in rest:
            lines.append(f"  only in {got_name}: {k}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"  ... {len(lines) - limit} more"]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Running the dissector

def wait4_run(cmd: list, timeout: float, **kw) -> dict:
    """Runs cmd, waits (bounded) with os.wait4: exit status, wall time, the
    child's own user+sys CPU seconds and peak RSS (KiB), stdout/stderr text."""
    out_path = kw.pop("stdout_path", None)
    so = open(out_path, "wb") if out_path else subprocess.PIPE
    t0 = time.monotonic()
    p = subprocess.Popen([str(c) for c in cmd], stdout=so, stderr=subprocess.PIPE,
                         preexec_fn=lab._die_with_parent(signal.SIGKILL), **kw)
    # stderr is read in a thread so that a chatty child cannot block
    err = []
    out = []
    te = threading.Thread(target=lambda: err.append(p.stderr.read()), daemon=True)
    te.start()
    if so is subprocess.PIPE:
        to = threading.Thread(target=lambda: out.append(p.stdout.read()), daemon=True)
        to.start()
    deadline = t0 + timeout
    status = ru = None
    timed_out = False
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            timed_out = True
            os.kill(p.pid, signal.SIGKILL)
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.02)
    wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    te.join(10)
    p.stderr.close()
    if so is subprocess.PIPE:
        to.join(10)
        p.stdout.close()
    else:
        so.close()
    return {"rc": p.returncode, "wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "user": ru.ru_utime,
            "sys": ru.ru_stime, "maxrss_kb": ru.ru_maxrss, "timed_out": timed_out,
            "stderr": (err[0] if err else b"").decode(errors="replace"),
            "stdout": (out[0] if out else b"").decode(errors="replace")}


def run_dissector(args: list, timeout: float = 300) -> dict:
    """tapwire-dissector with args (--keep-priority added); see wait4_run."""
    return wait4_run([dissector_bin(), "--keep-priority"] + [str(a) for a in args], timeout)


def db_count(path) -> int:
    """Calls in a dissection DB, read-only; -1 while it cannot be read (not created yet)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM calls").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return -1


def read_jsonl(path: Path) -> list[dict]:
    calls = []
    with open(path, errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if line:
                try:
                    calls.append(json.loads(line))
                except ValueError as e:
                    raise AssertionError(f"{path}:{n}: not JSON ({e}): {line[:200]}")
    return calls


def db_calls(path: Path, timeout: float = 300) -> list[dict]:
    """The calls of a dissection DB, as call records, read back through the
    user's query tool (`tapwire calls --db FILE --json`), so the DB's schema
    is the dissector's own business."""
    r = subprocess.run([str(lab.cli_bin()), "calls", "--db", str(path), "--json"], capture_output=True,
                       text=True, errors="replace", timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"tapwire calls --db {path} --json: exit {r.returncode}: {r.stderr.strip()[-1000:]}")
    calls = []
    for n, line in enumerate(r.stdout.splitlines(), 1):
        if line.strip():
            try:
                calls.append(json.loads(line))
            except ValueError as e:
                raise AssertionError(f"tapwire calls --json line {n}: not JSON ({e}): {line[:200]}")
    return calls


def summary(stderr: str) -> dict:
    """The dissector's summary line, as numbers."""
    m = re.search(r"(\d+) packets, (\d+) calls \((\d+) http, (\d+) dns\), (\d+) without response, (\d+) gaps, "
                  r"(\d+) parse errors, (\d+) skipped", stderr)
    if not m:
        return {}
    names = ["packets", "calls", "http", "dns", "without_response", "gaps", "parse_errors", "skipped"]
    return dict(zip(names, map(int, m.groups())))


# --------------------------------------------------------------------------
# Traffic

PIPELINE_CLIENT = r"""
import json, re, socket, sys
host, n, head = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
s = socket.create_connection((host, 80), timeout=20)
reqs = [("GET", "/f/100b.bin?pipe=%d" % i, b"") for i in range(n)]
if head:
    reqs.append(("HEAD", "/f/10k.bin", b""))
reqs += [("POST", "/post", b"hello world"), ("GET", "/pipelined-missing", b""), ("GET", "/f/10k.bin", b"")]
out = b""
for i, (m, p, body) in enumerate(reqs):
    out += b"%s %s HTTP/1.1\r\nHost: tw\r\n" % (m.encode(), p.encode())
    if body:
        out += b"Content-Length: %d\r\n" % len(body)
    if i == len(reqs) - 1:
        out += b"Connection: close\r\n"
    out += b"\r\n" + body
s.sendall(out)
got = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    got += d
codes = [int(c) for c in re.findall(rb"HTTP/1.1 (\d{3}) ", got)]
print(json.dumps({"port": s.getsockname()[1], "requests": [[m, p] for m, p, _ in reqs], "codes": codes}))
"""


# sends the bytes of a file (argv[3]) to host:port over TCP or UDP, ignores errors
RAW_CLIENT = r"""
import json, socket, sys, time
proto, host, port, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = open(path, "rb").read()
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
if proto == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM)
    for i in range(0, len(data), 512):
        s.sendto(data[i:i + 512], (host, port))
    time.sleep(0.2)
    s.settimeout(0.3)
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    print(json.dumps({"port": s.getsockname()[1], "sent": len(data), "received": 0}))
    sys.exit(0)
s = socket.create_connection((host, port), timeout=20)
port = s.getsockname()[1]
sent = 0
try:
    for i in range(0, len(data), 1 << 16):
        s.sendall(data[i:i + (1 << 16)])
        sent += len(data[i:i + (1 << 16)])
    s.shutdown(socket.SHUT_WR)
except OSError as e:
    print("send stopped:", e, file=sys.stderr)
n = 0
try:
    while True:
        d = s.recv(65536)
        if not d:
            break
        n += len(d)
except OSError as e:
    print("recv stopped:", e, file=sys.stderr)
print(json.dumps({"port": port, "sent": sent, "received": n}))
"""


def py_in_ns(L: "lab.Lab", code: str, args: list, timeout: float = 60) -> subprocess.CompletedProcess:
    return L.cli([sys.executable, "-c", code] + [str(a) for a in args], timeout=timeout)


def pipelined(L: "lab.Lab", host: str, n: int = 5, head: bool = False) -> dict:
    """n pipelined GETs, (a HEAD,) a POST, a 404 and a GET with Connection:
    close, all in one write. Returns {"port", "requests": [[method, path]],
    "codes": [status, ...]} as the client saw them."""
    r = py_in_ns(L, PIPELINE_CLIENT, [host, n, "1" if head else "0"])
    res = json.loads(r.stdout)
    if len(res["codes"]) != len(res["requests"]):
        raise RuntimeError(f"pipelined client: {res['codes']} for {len(res['requests'])} requests: {r.stderr}")
    return res


def send_raw(L: "lab.Lab", proto: str, host: str, port: int, data: bytes, name: str) -> dict:
    """Sends data from the client namespace (TCP: one connection, then
    reads until the server closes). Returns {"port" (the client's), "sent",
    "received"}."""
    f = L.dir / f"raw-{name}.bin"
    f.write_bytes(data)
    r = py_in_ns(L, RAW_CLIENT, [proto, host, port, f], timeout=120)
    return json.loads(r.stdout.strip().splitlines()[-1])


def curl_codes(L: "lab.Lab", urls: list[str], extra: list | None = None, timeout: int = 60) -> list[str]:
    """curl (no --fail) over one connection; the status codes."""
    cmd = ["curl", "-sS", "-m", str(timeout), "-w", "%{http_code}\\n"] + list(extra or [])
    for u in urls:
        cmd += [u, "-o", "/dev/null"]
    r = L.cli(cmd, timeout=timeout + 10)
    return [l for l in r.stdout.split() if l]


def dig(L: "lab.Lab", name: str, qtype: str, v6: bool = False, tcp: bool = False) -> str:
    server = L.srv6 if v6 else L.srv4
    r = L.cli(["dig", f"@{server}", "+time=2", "+tries=1", "+tcp" if tcp else "+notcp", name, qtype], timeout=15)
    return r.stdout


def make_traffic(L: "lab.Lab", wrk_seconds: int = 2, wrk_delay_ms: int = 1, v6: bool = True,
                 pipelined_head: bool = True) -> dict:
    """The issue's traffic: curl GET (keep-alive), POST, HEAD, chunked uploads,
    a 404, pipelining, wrk, dig (A/AAAA/MX/TXT/CNAME/NXDOMAIN over UDP and
    TCP); IPv4 and IPv6. Returns counts of what it asked for."""
    did: dict = collections.defaultdict(int)
    fams = [False, True] if v6 else [False]
    body = L.dir / "nginx" / "www" / "f" / "10k.bin"
    small = L.dir / "upload-small.txt"
    small.write_text("tapwire chunked upload\n" * 40)
    for six in fams:
        u = lambda p: L.url(p, v6=six)  # noqa: E731
        files = [u(f"/f/{f}") for f in lab.FILES]
        codes = curl_codes(L, files * 3)  # keep-alive: 9 over one connection
        assert codes == ["200"] * 9, codes
        codes = curl_codes(L, [u("/post")] * 2, ["-X", "POST", "-H", "Expect:", "--data-binary", f"@{body}"])
        assert codes == ["200"] * 2, codes
        codes = curl_codes(L, [u("/post")], ["-X", "POST", "-d", "hello=tapwire&n=1"])
        assert codes == ["200"], codes
        codes = curl_codes(L, [u("/f/10k.bin"), u("/f/1m.bin"), u("/f/100b.bin")], ["-I"])  # HEAD x3
        assert codes == ["200"] * 3, codes
        # chunked uploads: with Expect: 100-continue (nginx answers a 1xx interim first) and without
        codes = curl_codes(L, [u("/post")], ["-H", "Transfer-Encoding: chunked", "-H", "Expect: 100-continue",
                                             "--data-binary", f"@{small}"])
        assert codes == ["200"], codes
        codes = curl_codes(L, [u("/post")], ["-H", "Transfer-Encoding: chunked", "-H", "Expect:",
                                             "--data-binary", f"@{body}"])
        assert codes == ["200"], codes
        codes = curl_codes(L, [u("/no/such/file"), u("/f/100b.bin"), u("/missing.html?q=1")])
        assert codes == ["404", "200", "404"], codes
        did["http"] += 9 + 2 + 1 + 3 + 2 + 3
        did["http"] += len(pipelined(L, L.srv6 if six else L.srv4, n=5)["requests"])
        if pipelined_head:
            # tshark 4.0 loses track of a HEAD inside a pipeline (it takes the HEAD's response
            # Content-Length as a body and swallows the responses after it): such a connection
            # is checked against what the client saw instead (did["truth"])
            res = pipelined(L, L.srv6 if six else L.srv4, n=2, head=True)
            res["client"] = L.cli6 if six else L.cli4
            did.setdefault("truth", []).append(res)
    w = L.wrk("/f/100b.bin", conns=4, duration=wrk_seconds, delay_ms=wrk_delay_ms)
    if w["requests"] <= 0 or w["socket_errors"] or w["non2xx"]:
        raise RuntimeError(f"wrk failed:\n{w['raw']}")
    did["wrk"] += w["requests"]
    if v6:
        w = L.wrk("/f/10k.bin", conns=2, duration=1, v6=True, delay_ms=wrk_delay_ms)
        if w["requests"] <= 0 or w["socket_errors"] or w["non2xx"]:
            raise RuntimeError(f"wrk (IPv6) failed:\n{w['raw']}")
        did["wrk"] += w["requests"]
    dom = L.DOMAIN
    queries = [(f"www.{dom}", "A", "NOERROR"), (f"www.{dom}", "AAAA", "NOERROR"), (dom, "MX", "NOERROR"),
               (dom, "TXT", "NOERROR"), (f"alias.{dom}", "A", "NOERROR"), (f"long.{dom}", "TXT", "NOERROR"),
               (f"nosuchname.{dom}", "A", "NXDOMAIN")]
    for six in fams:
        for tcp in (False, True):
            for name, qtype, rcode in queries:
                out = dig(L, name, qtype, v6=six, tcp=tcp)
                if f"status: {rcode}" not in out:
                    raise RuntimeError(f"dig {name} {qtype} (v6={six}, tcp={tcp}): expected {rcode}:\n{out}")
                did["dns"] += 1
    return dict(did)


def stop_capture(tcpd, settle: float = 2.0) -> dict:
    """Stops the reference tcpdump so that its file holds everything: tcpdump
    (no immediate mode) hands packets over in blocks retired after ~1 s, and
    on SIGINT a block not yet retired is lost (received by filter, not
    captured), so wait first. Returns {captured, received, kernel_drops}."""
    time.sleep(settle)
    tcpd.stop()
    m = re.search(r"(\d+) packets? received by filter", tcpd.output())
    return {"captured": tcpd.captured, "received": int(m.group(1)) if m else None,
            "kernel_drops": tcpd.kernel_drops}


def capture_complete(cap: dict) -> bool:
    """The traffic is all in the file: at most a few packets (stray IPv6
    neighbour discovery and the like in the last block, after the settle
    time) were received by tcpdump and not written."""
    if cap.get("kernel_drops") not in (0, None) or cap.get("captured") is None:
        return False
    return cap.get("received") is None or cap["received"] - cap["captured"] <= 5

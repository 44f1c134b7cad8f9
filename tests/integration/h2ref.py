"""Reference side of the HTTP/2 and gRPC dissection tests (test_http2.py,
test_grpc.py): real HTTP/2 and gRPC clients and servers in the lab, tcpdump's
capture of them, and tshark's reading of that capture, stream by stream.

HTTP/2 (h2c, cleartext): nghttpd (prior knowledge, server push, echo of
uploads), nghttpx (Upgrade: h2c, in front of the lab's nginx), and nginx
itself on an h2c port (`listen ... http2`, prior knowledge); nghttp (several
requests on one connection, a pushed stream, a POST of a file, `-u` for the
upgrade; each run writes a HAR with what it sent and got), curl
(--http2-prior-knowledge, every response into its own file) and h2load.

gRPC: a python3-grpcio server and client of tests/integration/data/
tapwire_echo.proto, without protoc (generic handlers with bytes in and out,
protobuf encoded by hand here): unary, server-, client- and bidi-streaming,
a NOT_FOUND with a non-ASCII message, an error after two replies, a call the
client cancels, a gzip-compressed call, and a message over 1 MiB each way.
The client writes every message it sent and received (bytes, and fields as
JSON) and each call's status.

tshark (4.0) is the reference: `-d tcp.port==P,http2` for the prior-knowledge
ports (it follows `Upgrade: h2c` on its own, given `-d tcp.port==P,http` for
an HTTP port it does not know), `-T json`, one record per (TCP stream, HTTP/2
stream): pseudo-headers, the sets of regular header names of each header
block, body sizes, push, RST_STREAM, and for gRPC the status, message and
the messages' sizes per direction.

Python 3 standard library only (the gRPC programs run under an interpreter
that has python3-grpcio: /usr/bin/python3 on Debian).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent / "data"
PROTO_FILE = DATA_DIR / "tapwire_echo.proto"

NGHTTPD_PORT = 8080  # nghttpd --no-tls: prior knowledge, push, --echo-upload
NGINX_H2C_PORT = 8081  # nginx `listen 8081 http2;`: prior knowledge
NGHTTPX_PORT = 8082  # nghttpx, no-tls frontend: Upgrade: h2c (and prior knowledge), nginx :80 behind it
GRPC_PORT = 50051
H2_PORTS = (NGHTTPD_PORT, NGINX_H2C_PORT, GRPC_PORT)  # tshark: decode as http2
HTTP_PORTS = (NGHTTPX_PORT,)  # tshark: decode as http (then http2 after the 101)

# nginx's h2c server (Lab(nginx_http_extra=...)): the lab's files; POST /post read whole (through
# the lab's port 80 server) and answered; /early answered before the body is read, which nginx
# ends with RST_STREAM(NO_ERROR) while the client is still sending
NGINX_H2C_SERVER = f"""
    server {{
        listen {NGINX_H2C_PORT} http2;
        server_name h2c;
        root {{www}};
        client_max_body_size 16m;
        location = /post {{
            proxy_pass http://127.0.0.1:80/post;
        }}
        location = /early {{
            return 200 "early\\n";
        }}
    }}
"""

H2_TOOLS = ("nghttp", "nghttpd", "nghttpx", "h2load")
RST_CODES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
             4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL",
             9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY",
             13: "HTTP_1_1_REQUIRED"}
GRPC_STATUS = {0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
               6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION",
               10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
               15: "DATA_LOSS", 16: "UNAUTHENTICATED"}


# --------------------------------------------------------------------------
# Can the tests run here?

def _cannot_run(msg: str) -> None:
    if lab.in_ci():
        print(f"FAIL (CI=true): cannot run: {msg}", file=sys.stderr)
        sys.exit(1)
    print(f"SKIP: cannot run: {msg}", file=sys.stderr)
    sys.exit(lab.SKIP)


def grpc_python() -> str | None:
    """An interpreter that can import grpc (python3-grpcio is Debian's, so
    /usr/bin/python3 when the one running the tests is another)."""
    for py in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if py and os.access(py, os.X_OK):
            r = subprocess.run([py, "-c", "import grpc"], capture_output=True, timeout=60)
            if r.returncode == 0:
                return py
    return None


def require(grpc: bool = False) -> None:
    """dissectref.require() (root, netns, lab tools, tshark, the binaries)
    plus the HTTP/2 tools, or python3-grpcio; exits 77 (1 under CI=true)."""
    ref.require()
    if grpc:
        if not grpc_python():
            _cannot_run("no python3 with grpc (python3-grpcio; scripts/install-deps.sh installs it)")
    else:
        missing = [t for t in H2_TOOLS if not (shutil.which(t) or Path("/usr/sbin", t).exists())]
        if missing:
            _cannot_run(f"missing {', '.join(missing)} (nghttp2-client, nghttp2-server, nghttp2-proxy; "
                        "scripts/install-deps.sh installs them)")


# --------------------------------------------------------------------------
# Protobuf, by hand (tapwire_echo.proto). Shared with the gRPC programs,
# which get this source prepended.

PB_CODE = r'''
import base64

PB_SCHEMA = {
    "tapwire.test.Meta": {"key": (1, "string"), "value": (2, "uint64")},
    "tapwire.test.EchoRequest": {"name": (1, "string"), "seq": (2, "int32"), "payload": (3, "bytes"),
                                 "tags": (4, "repeated string"), "meta": (5, "tapwire.test.Meta")},
    "tapwire.test.EchoReply": {"message": (1, "string"), "seq": (2, "int32"), "payload": (3, "bytes"),
                               "total": (4, "int64")},
}
PB_INTS = ("int32", "int64", "uint64")


def pb_varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def pb_encode(type_name, msg):
    """msg: {field name: value}; bytes fields as bytes, nested messages as dicts."""
    out = bytearray()
    for name, (num, typ) in sorted(PB_SCHEMA[type_name].items(), key=lambda kv: kv[1][0]):
        if name not in msg:
            continue
        rep = typ.startswith("repeated ")
        t = typ[9:] if rep else typ
        for v in (msg[name] if rep else [msg[name]]):
            if t in PB_INTS:
                out += pb_varint(num << 3) + pb_varint(v)
            else:
                b = v.encode() if t == "string" else v if t == "bytes" else pb_encode(t, v)
                out += pb_varint(num << 3 | 2) + pb_varint(len(b)) + b
    return bytes(out)


def pb_decode(type_name, data):
    schema = {num: (name, typ) for name, (num, typ) in PB_SCHEMA[type_name].items()}
    msg, i = {}, 0

    def varint():
        nonlocal i
        v = s = 0
        while True:
            c = data[i]
            i += 1
            v |= (c & 0x7F) << s
            s += 7
            if not c & 0x80:
                return v
    while i < len(data):
        tag = varint()
        num, wire = tag >> 3, tag & 7
        name, typ = schema[num]
        rep = typ.startswith("repeated ")
        t = typ[9:] if rep else typ
        if wire == 0:
            v = varint()
            if t in ("int32", "int64") and v >> 63:
                v -= 1 << 64
        elif wire == 2:
            n = varint()
            b = bytes(data[i:i + n])
            i += n
            v = b.decode() if t == "string" else b if t == "bytes" else pb_decode(t, b)
        else:
            raise ValueError("wire type %d" % wire)
        if rep:
            msg.setdefault(name, []).append(v)
        else:
            msg[name] = v
    return msg


def pb_json(type_name, msg):
    """The message as proto3 JSON would say it: bytes as base64, int64/uint64 as strings."""
    out = {}
    for name, v in msg.items():
        t = PB_SCHEMA[type_name][name][1].replace("repeated ", "")
        conv = (lambda x: base64.b64encode(x).decode()) if t == "bytes" else \
               (lambda x: str(x)) if t in ("int64", "uint64") else \
               (lambda x: x) if t in ("string", "int32") else (lambda x, t=t: pb_json(t, x))
        out[name] = [conv(x) for x in v] if isinstance(v, list) else conv(v)
    return out
'''

exec(PB_CODE)  # pb_encode, pb_decode, pb_json, PB_SCHEMA here too


# --------------------------------------------------------------------------
# gRPC server and client (run with grpc_python() in the lab's namespaces)

GRPC_SERVER = PB_CODE + r'''
import sys, time
from concurrent import futures
import grpc

host, port = sys.argv[1], int(sys.argv[2])
REQ, REP = "tapwire.test.EchoRequest", "tapwire.test.EchoReply"


def dec(b):
    return pb_decode(REQ, b)


def enc(m):
    return pb_encode(REP, m)


def unary(b, ctx):
    r = dec(b)
    return enc({"message": "hello " + r.get("name", ""), "seq": r.get("seq", 0),
                "total": len(r.get("payload", b""))})


def server_stream(b, ctx):
    r = dec(b)
    name = r.get("name", "")
    if name == "slow":
        for i in range(1, 1500):
            if not ctx.is_active():
                return
            yield enc({"message": "slow #%d" % i, "seq": i})
            time.sleep(0.02)
        return
    for i in range(1, r.get("seq", 0) + 1):
        if name == "fail" and i == 3:
            ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota: 2 replies at most")
        yield enc({"message": "%s #%d" % (name, i), "seq": i})


def client_stream(it, ctx):
    names, n, total = [], 0, 0
    for b in it:
        r = dec(b)
        names.append(r.get("name", ""))
        n += 1
        total += len(r.get("payload", b""))
    return enc({"message": ",".join(names), "seq": n, "total": total})


def bidi(it, ctx):
    for b in it:
        r = dec(b)
        yield enc({"message": "echo " + r.get("name", ""), "seq": r.get("seq", 0)})


def lookup(b, ctx):
    r = dec(b)
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such key: %s \u2713 (100%% sure)" % r.get("name", ""))


def large(b, ctx):
    r = dec(b)
    p = r.get("payload", b"")
    return enc({"message": "large", "seq": r.get("seq", 0), "payload": p[::-1], "total": len(p)})


h = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    "Lookup": grpc.unary_unary_rpc_method_handler(lookup),
    "Large": grpc.unary_unary_rpc_method_handler(large),
}
# No BDP probing and a 64 KiB stream window: the peer's frames stay at 16 KiB (grpc-core otherwise
# announces a 4 MiB frame size and window, and a large message goes as one DATA frame)
opts = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20),
        ("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65535)]
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=opts)
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tapwire.test.Echo", h),))
if not server.add_insecure_port("%s:%d" % (host, port)):
    sys.exit("cannot listen on %s:%d" % (host, port))
server.start()
print("grpc server listening on %s:%d" % (host, port), flush=True)
server.wait_for_termination()
'''

GRPC_CLIENT = PB_CODE + r'''
import hashlib, json, os, random, sys
import grpc

host, port, out, large_size = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
REQ, REP = "tapwire.test.EchoRequest", "tapwire.test.EchoReply"
os.makedirs(os.path.join(out, "msgs"), exist_ok=True)
opts = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 16 << 20),
        ("grpc.max_send_message_length", 16 << 20), ("grpc.http2.bdp_probe", 0),
        ("grpc.http2.lookahead_bytes", 65535)]  # 16 KiB frames (see the server)
ch = grpc.insecure_channel("%s:%d" % (host, port), options=opts)
grpc.channel_ready_future(ch).result(timeout=20)
calls = []
rng = random.Random(0x6770)


def record(kind, method, sent, received, code, details, **extra):
    n = len(calls)
    c = {"n": n, "kind": kind, "path": "/tapwire.test.Echo/" + method, "service": "tapwire.test.Echo",
         "method": method, "code": code.value[0], "code_name": code.name, "details": details,
         "sent": [], "received": []}
    c.update(extra)
    for d, msgs, typ in (("sent", sent, REQ), ("received", received, REP)):
        for i, m in enumerate(msgs):
            b = pb_encode(typ, m)
            f = os.path.join(out, "msgs", "%02d-%s-%s-%d.bin" % (n, method, d, i))
            with open(f, "wb") as fh:
                fh.write(b)
            c[d].append({"size": len(b), "sha256": hashlib.sha256(b).hexdigest(), "file": f,
                         "fields": pb_json(typ, m)})
    calls.append(c)


def method(kind, name):
    make = {"unary": ch.unary_unary, "server_stream": ch.unary_stream,
            "client_stream": ch.stream_unary, "bidi": ch.stream_stream}[kind]
    return make("/tapwire.test.Echo/" + name)  # no (de)serializers: bytes in, bytes out


def dec(b):
    return pb_decode(REP, b)


def check_bytes(msgs, got):
    # what was received: decoded, then encoded again, must be the bytes received
    for m, b in zip(msgs, got):
        assert pb_encode(REP, m) == b, "re-encoding differs"


def unary(name, req, compression=None):
    got = []
    try:
        b = method("unary", name)(pb_encode(REQ, req), timeout=30, compression=compression)
        got, code, details = [b], grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
    msgs = [dec(b) for b in got]
    check_bytes(msgs, got)
    record("unary", name, [req], msgs, code, details, compressed=compression is not None)


# unary, three times (one with gzip-compressed messages)
unary("Unary", {"name": "world", "seq": 1, "tags": ["a", "b"], "meta": {"key": "k1", "value": 7}})
unary("Unary", {"name": "tapwire", "seq": 2, "payload": bytes(rng.randrange(256) for _ in range(300))})
unary("Unary", {"name": "compressed " * 20, "seq": 3}, compression=grpc.Compression.Gzip)
# server streaming: 5 replies
got = list(method("server_stream", "ServerStream")(pb_encode(REQ, {"name": "stream", "seq": 5}), timeout=30))
record("server_stream", "ServerStream", [{"name": "stream", "seq": 5}], [dec(b) for b in got],
       grpc.StatusCode.OK, "")
# client streaming: 12 requests (more than the 8 a call record keeps)
reqs = [{"name": "c%d" % i, "seq": i + 1, "payload": bytes([i]) * (100 * i + 1)} for i in range(12)]
b = method("client_stream", "ClientStream")(iter([pb_encode(REQ, r) for r in reqs]), timeout=30)
record("client_stream", "ClientStream", reqs, [dec(b)], grpc.StatusCode.OK, "")
# bidi: 6 each way
reqs = [{"name": "b%d" % i, "seq": i + 1} for i in range(6)]
got = list(method("bidi", "Bidi")(iter([pb_encode(REQ, r) for r in reqs]), timeout=30))
record("bidi", "Bidi", reqs, [dec(b) for b in got], grpc.StatusCode.OK, "")
# an error status with a message (non-ASCII and '%': percent-encoded on the wire)
unary("Lookup", {"name": "missing-key", "seq": 9})
# an error after two replies (status in the trailers)
got, it = [], method("server_stream", "ServerStream")(pb_encode(REQ, {"name": "fail", "seq": 5}), timeout=30)
try:
    for b in it:
        got.append(b)
    code, details = grpc.StatusCode.OK, ""
except grpc.RpcError as e:
    code, details = e.code(), e.details()
record("server_stream", "ServerStream", [{"name": "fail", "seq": 5}], [dec(b) for b in got], code, details)
# a call the client cancels after the first reply (RST_STREAM CANCEL, no grpc-status)
it = method("server_stream", "ServerStream")(pb_encode(REQ, {"name": "slow", "seq": 1}), timeout=30)
first = next(it)
it.cancel()
record("server_stream", "ServerStream", [{"name": "slow", "seq": 1}], [dec(first)], grpc.StatusCode.CANCELLED,
       "", cancelled=True)
# a large message each way
payload = bytes(rng.randrange(256) for _ in range(large_size))
b = method("unary", "Large")(pb_encode(REQ, {"name": "large", "seq": 11, "payload": payload}), timeout=60)
record("unary", "Large", [{"name": "large", "seq": 11, "payload": payload}], [dec(b)], grpc.StatusCode.OK, "")
ch.close()
with open(os.path.join(out, "client.json"), "w") as f:
    json.dump({"calls": calls}, f, indent=1)
print(json.dumps({"calls": len(calls)}))
'''


def start_grpc_server(L: "lab.Lab") -> "lab.Proc":
    py = grpc_python()
    script = L.dir / "grpc_server.py"
    script.write_text(GRPC_SERVER)
    p = L.spawn("grpc-server", L.srv_ns, [py, script, L.srv4, GRPC_PORT], death_sig=signal.SIGKILL)
    if not p.wait_for_line(r"grpc server listening", 30):
        raise RuntimeError(f"gRPC server did not start:\n{p.output()}")
    return p


def run_grpc_client(L: "lab.Lab", large_size: int = 1_500_000, timeout: float = 120) -> dict:
    """The client's calls, in order; each: kind, path, service, method, code,
    code_name, details, sent/received: [{size, sha256, file, fields}],
    (compressed, cancelled). Files under L.dir/grpc-client/."""
    py = grpc_python()
    script = L.dir / "grpc_client.py"
    script.write_text(GRPC_CLIENT)
    out = L.dir / "grpc-client"
    L.cli([py, script, L.srv4, GRPC_PORT, out, large_size], timeout=timeout)
    return json.loads((out / "client.json").read_text())


# --------------------------------------------------------------------------
# HTTP/2 servers and traffic

def start_h2_servers(L: "lab.Lab") -> dict:
    """nghttpd on NGHTTPD_PORT (push of /style.css and /f/100b.bin with
    /index.html, uploads echoed) and nghttpx on NGHTTPX_PORT (h2c upgrade,
    nginx :80 behind). nginx's own h2c port comes with the Lab
    (nginx_http_extra=NGINX_H2C_SERVER)."""
    www = L.dir / "nginx" / "www"
    (www / "index.html").write_text("<!doctype html>\n<html><head><link rel=stylesheet href=/style.css></head>"
                                    "<body>tapwire h2 test</body></html>\n")
    (www / "style.css").write_text("body { color: #123456; }\n")
    nd = L.spawn("nghttpd", L.srv_ns, ["nghttpd", "--no-tls", "-a", L.srv4, "-d", www, "--echo-upload",
                                       "-p", "/index.html=/style.css,/f/100b.bin", NGHTTPD_PORT],
                 death_sig=signal.SIGKILL)
    nx = L.spawn("nghttpx", L.srv_ns, ["nghttpx", "--conf=/dev/null", f"--frontend={L.srv4},{NGHTTPX_PORT};no-tls",
                                       f"--backend={L.srv4},80", "--single-thread", "--no-ocsp",
                                       f"--pid-file={L.dir / 'nghttpx.pid'}", "--errorlog-file=/dev/stderr"],
                 death_sig=signal.SIGKILL)
    for port, what in ((NGHTTPD_PORT, nd), (NGHTTPX_PORT, nx), (NGINX_H2C_PORT, L.nginx)):
        deadline = time.monotonic() + 15
        while True:
            r = L.cli(["curl", "-sS", "-o", "/dev/null", "-m", "2", "--http2-prior-knowledge",
                       f"http://{L.srv4}:{port}/index.html"], check=False, timeout=10)
            if r.returncode == 0:
                break
            if time.monotonic() > deadline or not what.alive():
                raise RuntimeError(f"{what.name} not answering on port {port}: {r.stderr}\n{what.output()}")
            time.sleep(0.2)
    return {"nghttpd": nd, "nghttpx": nx}


def _har_entries(path: Path) -> list[dict]:
    """A nghttp HAR's entries as {stream_id, method, path, authority, status,
    req_names, resp_names, size} ("connection" in nghttp's HAR is the stream id)."""
    out = []
    for e in json.loads(path.read_text())["log"]["entries"]:
        rq = {h["name"]: h["value"] for h in e["request"]["headers"]}
        out.append({"stream_id": int(e["connection"]), "method": e["request"]["method"],
                    "path": rq.get(":path") or urllib.parse.urlsplit(e["request"]["url"]).path,
                    "authority": rq.get(":authority"), "status": e["response"]["status"],
                    "req_names": sorted({h["name"] for h in e["request"]["headers"] if not h["name"].startswith(":")}),
                    "resp_names": sorted({h["name"] for h in e["response"]["headers"]
                                          if not h["name"].startswith(":")}),
                    "size": e["response"]["content"]["size"]})
    return out


def _h2load(L: "lab.Lab", url: str, n: int = 200, c: int = 4, m: int = 10) -> dict:
    r = L.cli(["h2load", "-n", n, "-c", c, "-m", m, url], timeout=120, errors="replace")
    mm = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", r.stdout)
    st = re.search(r"status codes: (\d+) 2xx", r.stdout)
    res = {"url": url, "n": n, "clients": c, "succeeded": int(mm.group(4)) if mm else 0,
           "failed": int(mm.group(5)) if mm else -1, "2xx": int(st.group(1)) if st else 0, "raw": r.stdout[-1500:]}
    if res["succeeded"] != n or res["2xx"] != n:
        raise RuntimeError(f"h2load {url}: {res['raw']}")
    return res


def make_h2_traffic(L: "lab.Lab") -> dict:
    """The HTTP/2 traffic; start_h2_servers first. Returns what the clients
    did and saw:
      har: {name: nghttp HAR entries}, one nghttp connection each:
        get (nghttpd: /index.html with two pushes, /f/10k.bin, /nope 404, a custom header),
        post (nghttpd: POST of post.bin to two paths, echoed back),
        upgrade (nghttpx: Upgrade: h2c, /f/100b.bin on stream 1, then /f/10k.bin),
        early (nginx: POST of 1 MiB to /early, answered at once, then RST_STREAM NO_ERROR);
      post_file: the bytes nghttp and curl POSTed;
      curl: [{method, path, port, status, version, client_port, file, bytes, upgrade, sent}], one
        connection each: prior knowledge to nginx (GET, POST), Upgrade: h2c to nghttpx (GET, POST);
      h2load: [{url, n, clients, ...}] against nghttpd and nginx;
      served: {path: bytes} of the files the servers have."""
    www = L.dir / "nginx" / "www"
    did: dict = {"har": {}, "curl": [], "h2load": []}
    post = L.dir / "post.bin"
    # 20 KiB: text first, then binary (a body that is not text)
    body = (b"tapwire h2 upload\n" * 200)[:3600] + bytes(range(256)) * 66
    post.write_bytes(body)
    did["post_file"] = body
    did["served"] = {f"/{p.relative_to(www)}": p.read_bytes() for p in www.rglob("*") if p.is_file()}
    base = f"http://{L.srv4}:{NGHTTPD_PORT}"
    har = L.dir / "nghttp-get.har"
    L.cli(["nghttp", "-n", "-t", "30", "-H", "x-tapwire-test: h2 get", "-r", har,
           f"{base}/index.html", f"{base}/f/10k.bin", f"{base}/nope"], timeout=60)
    did["har"]["get"] = _har_entries(har)
    har = L.dir / "nghttp-post.har"
    L.cli(["nghttp", "-n", "-t", "30", "-d", post, "-H", "content-type: application/octet-stream", "-r", har,
           f"{base}/echo/a", f"{base}/echo/b?x=1"], timeout=60)
    did["har"]["post"] = _har_entries(har)
    # a POST nginx answers before reading it, then resets the stream (NO_ERROR); 1 MiB does not fit
    # in the stream's flow-control window, so the reset always comes while nghttp is still sending
    har = L.dir / "nghttp-early.har"
    r = L.cli(["nghttp", "-n", "-t", "30", "-d", www / "f" / "1m.bin", "-r", har,
               f"http://{L.srv4}:{NGINX_H2C_PORT}/early"], timeout=60, check=False)
    did["har"]["early"] = _har_entries(har) if har.exists() else []
    did["early_rc"] = r.returncode
    har = L.dir / "nghttp-upgrade.har"
    up = f"http://{L.srv4}:{NGHTTPX_PORT}"
    L.cli(["nghttp", "-n", "-t", "30", "-u", "-r", har, f"{up}/f/100b.bin", f"{up}/f/10k.bin"], timeout=60)
    did["har"]["upgrade"] = _har_entries(har)
    # curl: one request per connection (curl 7.88 does not reuse a prior-knowledge h2c connection: its
    # second request fails with "Error in the HTTP2 framing layer" before it is sent), each response
    # into its own file: prior knowledge to nginx (GET of 1 MiB, POST of post.bin), Upgrade: h2c to nghttpx
    got = L.dir / "curl-got"
    got.mkdir()
    h2c = f"http://{L.srv4}:{NGINX_H2C_PORT}"
    fmt = "%{http_version} %{response_code} %{size_download} %{local_port}"
    runs = [("GET", h2c + "/f/1m.bin", ["--http2-prior-knowledge"]),
            ("POST", h2c + "/post?kind=bin", ["--http2-prior-knowledge", "-H", "content-type: application/octet-stream",
                                              "--data-binary", f"@{post}"]),
            ("GET", up + "/f/10k.bin?via=curl", ["--http2"]),
            ("POST", up + "/post?via=curl-upgrade", ["--http2", "-H", "Expect:", "--data-binary", f"@{post}"])]
    for i, (m, url, extra) in enumerate(runs):
        f = got / f"{i}.out"
        r = L.cli(["curl", "-sS", "--fail", "-m", "60", "-w", fmt, "-o", f] + extra + [url], timeout=90)
        ver, code, size, port = r.stdout.split()
        u = urllib.parse.urlsplit(url)
        did["curl"].append({"method": m, "path": u.path + (f"?{u.query}" if u.query else ""), "port": u.port,
                            "status": int(code), "version": ver, "client_port": int(port), "file": f,
                            "bytes": f.read_bytes(), "upgrade": "--http2" in extra, "sent": body if m == "POST" else b""})
        if int(code) != 200 or ver != "2" or int(size) != f.stat().st_size:
            raise RuntimeError(f"curl {url}: {r.stdout}\n{r.stderr}")
    did["h2load"].append(_h2load(L, f"{base}/f/10k.bin"))
    did["h2load"].append(_h2load(L, f"{h2c}/f/100b.bin"))
    return did


# --------------------------------------------------------------------------
# tshark: HTTP/2 streams

def _as_list(x) -> list:
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def _one(x):
    return x[0] if isinstance(x, list) else x


def _walk(obj, key: str):
    """Every value under `key` anywhere inside obj (dicts and lists)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield from _as_list(v)
            else:
                yield from _walk(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, key)


def _new_stream(tcp_stream: int, sid: int) -> dict:
    return {"tcp_stream": tcp_stream, "stream_id": sid, "client": None, "server": None,
            "method": None, "path": None, "authority": None, "scheme": None, "status": None, "interim": [],
            "req_blocks": [], "resp_blocks": [], "req_body": 0, "resp_body": 0,
            "req_end": False, "resp_end": False, "req_frames": 0, "resp_frames": 0, "pushed": False, "promised_on": None,
            "rst": {}, "upgrade": False, "req_msgs": [], "resp_msgs": [], "req_compressed": [], "resp_compressed": []}


def tshark_json(pcap: Path, h2_ports=H2_PORTS, http_ports=HTTP_PORTS, timeout: float = 600) -> list[dict]:
    """tshark -T json of the TCP packets with SYN, HTTP or HTTP/2 in them."""
    cmd = ["tshark", "-n", "-r", str(pcap)] + ref.TSHARK_OPTS + ["-o", "grpc.embedded_under_http2:TRUE"]
    for p in h2_ports:
        cmd += ["-d", f"tcp.port=={p},http2"]
    for p in http_ports:
        cmd += ["-d", f"tcp.port=={p},http"]
    cmd += ["-Y", "tcp.flags.syn==1 or http or http2", "-T", "json", "--no-duplicate-keys",
            "-J", "frame ip ipv6 tcp http http2 grpc"]
    r = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(r.stdout.decode(errors="replace") or "[]")


def _headers(frame: dict) -> list[tuple[str, str]]:
    hs = []
    for h in _as_list(frame.get("http2.header")):
        name = _one(h.get("http2.header.name", ""))
        value = _one(h.get("http2.header.value", ""))
        hs.append((name, value))
    return hs


def tshark_h2(pcap: Path, h2_ports=H2_PORTS, http_ports=HTTP_PORTS) -> tuple[list[dict], list[str]]:
    """Every HTTP/2 stream that carried a request or a response, as tshark
    reads the capture: (streams, notes). A stream:
      tcp_stream, stream_id, client (ip, port), server (ip, port),
      method, path, authority, scheme (request pseudo-headers; of the
        PUSH_PROMISE for a pushed stream, of the HTTP/1.1 request for stream 1
        of an upgraded connection, which has upgrade=True and upgrade_request:
        {method, uri, host, names, body (length), status (of the HTTP/1.1 answer, 101)}),
      status (final), interim (1xx statuses),
      req_blocks, resp_blocks: the header blocks of each direction in order,
        each {"names": sorted regular field names, "fields": [(name, value)], "end_stream"},
      req_body, resp_body: DATA payload bytes (padding excluded), req_frames, resp_frames: DATA frames,
      pushed, promised_on, rst: {"client"|"server": error code name},
      req_msgs, resp_msgs: gRPC message lengths (tshark's grpc dissector);
    and helpers: headers/trailers of each side (see h2_side)."""
    packets = tshark_json(pcap, h2_ports, http_ports)
    notes: list[str] = []
    ends: dict[int, tuple] = {}  # tcp stream -> (client, server)
    streams: dict[tuple, dict] = {}
    upgrades: dict[int, dict] = {}  # tcp stream -> the HTTP/1.1 upgrade request

    def stream(ts: int, sid: int) -> dict:
        k = (ts, sid)
        if k not in streams:
            streams[k] = _new_stream(ts, sid)
        return streams[k]

    for pkt in packets:
        layers = pkt["_source"]["layers"]
        tcp = _one(layers.get("tcp", {}))
        ts = int(_one(tcp.get("tcp.stream", "-1")))
        ipl = _one(layers.get("ip") or layers.get("ipv6") or {})
        src_ip = ref.norm_ip(_one(ipl.get("ip.src") or ipl.get("ipv6.src") or ""))
        dst_ip = ref.norm_ip(_one(ipl.get("ip.dst") or ipl.get("ipv6.dst") or ""))
        src = (src_ip, int(_one(tcp.get("tcp.srcport", "0"))))
        dst = (dst_ip, int(_one(tcp.get("tcp.dstport", "0"))))
        flags = _one(tcp.get("tcp.flags_tree", {}))
        if _one(flags.get("tcp.flags.syn", "0")) == "1" and _one(flags.get("tcp.flags.ack", "0")) == "0":
            ends[ts] = (src, dst)
        if ts not in ends:
            ends[ts] = (src, dst) if dst[1] in tuple(h2_ports) + tuple(http_ports) else (dst, src)
            notes.append(f"tcp.stream {ts}: no SYN seen, client taken to be {ends[ts][0]}")
        from_client = src == ends[ts][0]
        # HTTP/1.1: the upgrade request and its 101
        for h in _as_list(layers.get("http")):
            if not isinstance(h, dict):
                continue
            up = [u.lower() for u in _as_list(h.get("http.upgrade"))]
            req_line = next((v for k, v in h.items() if isinstance(v, dict) and "http.request.method" in v), None)
            if req_line and from_client and "h2c" in up:
                names = sorted({l.split(":", 1)[0].strip().lower() for l in _as_list(h.get("http.request.line"))})
                clen = list(_walk(h, "http.content_length"))
                upgrades[ts] = {"method": _one(req_line["http.request.method"]),
                                "uri": _one(req_line["http.request.uri"]), "host": _one(h.get("http.host", "")),
                                "names": names, "body": int(clen[0]) if clen else 0, "status": None}
            codes = list(_walk(h, "http.response.code"))
            if codes and not from_client and ts in upgrades and upgrades[ts]["status"] is None:
                upgrades[ts]["status"] = int(codes[0])
        for h2 in _as_list(layers.get("http2")):
            if not isinstance(h2, dict):
                continue
            # one element per frame: {"http2.stream": the frame, "grpc": the gRPC messages it completes}
            for fr in _as_list(h2.get("http2.stream")):
                if "http2.type" not in fr:
                    continue  # the preface
                ftype = int(_one(fr["http2.type"]))
                sid = int(_one(fr["http2.streamid"]))
                fl = int(_one(fr.get("http2.flags", "0")), 16)
                if sid == 0:
                    continue
                if ftype in (1, 9):  # HEADERS, CONTINUATION
                    hs = _headers(fr)
                    if ftype == 9 and not hs:
                        continue
                    st = stream(ts, sid)
                    blocks = st["req_blocks"] if from_client else st["resp_blocks"]
                    if ftype == 9 and blocks and not blocks[-1]["complete"]:
                        blk = blocks[-1]
                        blk["fields"] += hs
                    else:
                        blk = {"fields": hs, "end_stream": bool(fl & 1), "complete": False}
                        blocks.append(blk)
                    if fl & 4:
                        blk["complete"] = True
                    if fl & 1:
                        st["req_end" if from_client else "resp_end"] = True
                elif ftype == 5:  # PUSH_PROMISE: the request of the promised stream
                    pid = int(_one(fr.get("http2.push_promise.promised_stream_id", "0")))
                    st = stream(ts, pid)
                    st["pushed"], st["promised_on"] = True, sid
                    st["req_blocks"].append({"fields": _headers(fr), "end_stream": True, "complete": True})
                    st["req_end"] = True
                elif ftype == 0:  # DATA
                    st = stream(ts, sid)
                    n = int(_one(fr.get("http2.length", "0")))
                    if fl & 8:
                        n -= 1 + int(_one(fr.get("http2.pad_length", "0")))
                    st["req_body" if from_client else "resp_body"] += n
                    st["req_frames" if from_client else "resp_frames"] += 1
                    if fl & 1:
                        st["req_end" if from_client else "resp_end"] = True
                    for g in _walk(h2.get("grpc"), "grpc.message_length"):
                        st["req_msgs" if from_client else "resp_msgs"].append(int(g))
                    for g in _walk(h2.get("grpc"), "grpc.compressed_flag"):
                        st["req_compressed" if from_client else "resp_compressed"].append(int(g, 0))
                elif ftype == 3:  # RST_STREAM
                    st = stream(ts, sid)
                    code = int(_one(fr.get("http2.rst_stream.error", "0")))
                    st["rst"]["client" if from_client else "server"] = RST_CODES.get(code, f"0x{code:x}")
    out = []
    for (ts, sid), st in sorted(streams.items()):
        st["client"], st["server"] = ends[ts]
        if sid == 1 and ts in upgrades and not st["req_blocks"]:
            u = upgrades[ts]
            st["upgrade"] = True
            st["method"], st["path"], st["authority"], st["scheme"] = u["method"], u["uri"], u["host"], "http"
            st["upgrade_request"] = u  # the HTTP/1.1 request: method, uri, host, names, body (its length), status (101)
        for blocks in (st["req_blocks"], st["resp_blocks"]):
            for b in blocks:
                b["names"] = sorted({n for n, _ in b["fields"] if not n.startswith(":")})
                b["pseudo"] = {n: v for n, v in b["fields"] if n.startswith(":")}
        if st["req_blocks"]:
            p = st["req_blocks"][0]["pseudo"]
            st["method"], st["path"] = p.get(":method"), p.get(":path")
            st["authority"], st["scheme"] = p.get(":authority"), p.get(":scheme")
        for b in st["resp_blocks"]:
            s = b["pseudo"].get(":status")
            if s is None:
                continue
            if 100 <= int(s) < 200:
                st["interim"].append(int(s))
            else:
                st["status"] = int(s)
        if not st["req_blocks"] and not st["resp_blocks"] and not st["upgrade"]:
            continue  # only DATA/RST/PRIORITY without a header block seen
        out.append(st)
    return out, notes


def h2_side(st: dict, side: str) -> dict:
    """One direction of a tshark stream, split as the call record splits it:
    {headers: names of the first non-1xx header block (regular fields),
     trailers: names of a later block or None, fields: {name: value} of the
     headers (last wins), trailer_fields}. side: "request" or "response"."""
    blocks = st["req_blocks"] if side == "request" else st["resp_blocks"]
    if side == "response":
        blocks = [b for b in blocks if not (b["pseudo"].get(":status") and
                                            100 <= int(b["pseudo"][":status"]) < 200)]
    head = blocks[0] if blocks else None
    trail = blocks[1] if len(blocks) > 1 else None
    return {"headers": head["names"] if head else [], "trailers": trail["names"] if trail else None,
            "fields": dict((n, v) for n, v in head["fields"] if not n.startswith(":")) if head else {},
            "trailer_fields": dict(trail["fields"]) if trail else {}}


def grpc_info(st: dict) -> dict:
    """gRPC of a tshark stream: service, method, grpc_status (None without),
    grpc_message (percent-decoded), timeout, encoding, message lengths."""
    req, resp = h2_side(st, "request"), h2_side(st, "response")
    path = st["path"] or ""
    parts = path.split("/")
    service, method = (parts[1], parts[2]) if len(parts) == 3 and path.startswith("/") else (None, None)
    status = resp["trailer_fields"].get("grpc-status", resp["fields"].get("grpc-status"))
    msg = resp["trailer_fields"].get("grpc-message", resp["fields"].get("grpc-message"))
    return {"service": service, "method": method, "grpc_status": int(status) if status is not None else None,
            "grpc_message": urllib.parse.unquote(msg) if msg is not None else None,
            "timeout": req["fields"].get("grpc-timeout"), "encoding": req["fields"].get("grpc-encoding"),
            "content_type": req["fields"].get("content-type"),
            "req_msgs": st["req_msgs"], "resp_msgs": st["resp_msgs"],
            "req_compressed": st["req_compressed"], "resp_compressed": st["resp_compressed"]}


def is_grpc_stream(st: dict) -> bool:
    ct = h2_side(st, "request")["fields"].get("content-type") or h2_side(st, "response")["fields"].get("content-type")
    return bool(ct) and ct.lower().startswith("application/grpc")


# --------------------------------------------------------------------------
# Keys: (client ip, client port, server ip, server port, stream id, method, path, authority, status)

def t_key(st: dict) -> tuple:
    (cip, cport), (sip, sport) = st["client"], st["server"]
    return (cip, cport, sip, sport, st["stream_id"], st["method"], st["path"], st["authority"], st["status"])


def c_conn(c: dict) -> tuple:
    return (ref.norm_ip(c["src"]["ip"]), c["src"]["port"], ref.norm_ip(c["dst"]["ip"]), c["dst"]["port"])


def c_key(c: dict) -> tuple:
    """The same key of an http2 or grpc call record."""
    req, resp = c.get("request") or {}, c.get("response") or {}
    return c_conn(c) + (req.get("stream_id"), req.get("method") if c.get("protocol") == "http2" else "POST",
                        req.get("path"), req.get("authority"), resp.get("status"))


def t_conn_sid(st: dict) -> tuple:
    (cip, cport), (sip, sport) = st["client"], st["server"]
    return (cip, cport, sip, sport, st["stream_id"])


def c_conn_sid(c: dict) -> tuple:
    return c_conn(c) + ((c.get("request") or {}).get("stream_id"),)


def body_bytes(m: dict | None) -> bytes:
    """The body a record's request or response keeps (base64 undone)."""
    if not m or "body" not in m:
        return b""
    b = m["body"]
    return base64.b64decode(b) if m.get("body_encoding") == "base64" else b.encode()


def names(obj) -> list[str] | None:
    """Sorted names of a record's headers/trailers object (None when absent)."""
    if obj is None:
        return None
    return sorted(k.lower() for k in obj)


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def capture(L: "lab.Lab", name: str):
    """tcpdump on the server veth into L.dir/name."""
    return L.start_tcpdump(L.srv_veth, L.dir / name)


def dissector_help() -> str:
    r = subprocess.run([str(ref.dissector_bin()), "--help"], capture_output=True, text=True, timeout=30)
    return r.stdout + r.stderr


def proto_path_flag() -> str | None:
    """The dissector's flag for tap.grpc.protoPaths (the .proto files or
    directories to name fields by), as its --help lists it; None when it has none."""
    for flag in re.findall(r"(--[a-z0-9-]+)", dissector_help()):
        if "proto" in flag:
            return flag
    return None


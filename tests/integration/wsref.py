"""WebSocket reference for the dissector's integration tests: real
python3-websockets peers (server and client) that write down every message
they send and receive, and tshark's frames of a capture assembled into
messages.

Two halves:

- Run as a script by a Python that has `websockets` (Debian's
  python3-websockets: `/usr/bin/python3`, whichever interpreter runs the
  test), it is a peer: `wsref.py server --port P --plain-port Q --log FILE`
  serves WebSocket (permessage-deflate on port P, compression off on Q) and
  `wsref.py client --host H --port P --script NAME --log FILE` runs one of
  the SCRIPTS below against it. Each peer appends one JSON object per event to
  its log: {"conn": client port, "role", "ev": "sent"|"recv", "opcode",
  "data": base64 of the payload, "fragments", "code", "reason"}; the client
  also notes the pong websockets sends by itself when the server pings it.
- Imported by the test (standard library only), it reads those logs
  (`read_log`, `expected_messages`) and a capture: tshark's frames
  (`tshark_frames`), assembled into messages by FIN (`assemble`), their
  payloads inflated per RFC 7692 (`inflate`).
"""

from __future__ import annotations

import base64
import collections
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

SEED = 0x5EB5

# --------------------------------------------------------------------------
# What the client of each connection does. Each step is (kind, argument):
#   ("text", str) / ("binary", bytes): a message, which the server echoes
#   ("frag", [str|bytes, ...]): one message sent as fragments (websockets
#       sends each piece as a frame, then an empty final continuation frame)
#   ("ping", bytes): a ping; waits for its pong
#   ("pong", bytes): an unsolicited pong
#   ("cmd", str): a text message starting with "!" the server acts on (below)
#       instead of echoing; the client reads what the server sends back
#   ("close", (code, reason)): the client closes
# Server commands: "!frag-bin", "!frag-text" (the server sends a fragmented
# message), "!empty" (an empty text and an empty binary message), "!ping P"
# (the server pings with payload P and, once ponged, sends "pinged"), "!close
# CODE REASON" (the server closes).


def _rand(n: int, salt: int) -> bytes:
    return random.Random(SEED * 1000 + salt).randbytes(n)


def _big_text(n: int) -> str:
    """n characters of compressible JSON-ish text, not all ASCII."""
    rng = random.Random(SEED + 7)
    words = ["tapwire", "websocket", "naïve", "café", "Grüße", "日本語", "данные", "frame", "deflate"]
    out, size = [], 0
    i = 0
    while size < n:
        s = '{"seq": %d, "word": "%s", "v": %d}\n' % (i, rng.choice(words), rng.randrange(1000))
        out.append(s)
        size += len(s)
        i += 1
    return "".join(out)[:n]


BIG_BINARY = 200 * 1024 + 17   # > 64 KiB: 64-bit extended length, over the default --max-body
BIG_TEXT = 150 * 1024 + 3      # characters; compresses well
PLAIN_BIG = 96 * 1024 + 5      # > 64 KiB, uncompressed connection
SERVER_FRAG = [_rand(100, 31), _rand(70_000, 32), _rand(10, 33)]  # a fragment over 64 KiB
SERVER_FRAG_TEXT = ["server ", "fragmented ", "tëxt ✓"]

SCRIPTS = {
    # permessage-deflate (the default), IPv4, the client closes with 1000 "bye"
    "deflate": [
        ("text", "hello, tapwire"),
        ("text", "Grüße, 日本語 ✓"),
        ("binary", _rand(1000, 1)),
        ("text", "hello, tapwire"),  # the same again: context takeover makes it shorter on the wire
        ("frag", ["part one, ", "part two, ", "part three"]),
        ("frag", [_rand(100, 2), _rand(5000, 3), _rand(3, 4)]),
        ("ping", b"client-ping-1"),
        ("cmd", "!ping server-ping-1"),
        ("binary", _rand(BIG_BINARY, 5)),
        ("text", _big_text(BIG_TEXT)),
        ("cmd", "!frag-bin"),
        ("cmd", "!frag-text"),
        ("cmd", "!empty"),
        ("pong", b"unsolicited"),
        ("text", "last"),
        ("close", (1000, "bye")),
    ],
    # compression off, IPv6, the server closes with 4001 "custom"
    "plain": [
        ("text", "plain text"),
        ("binary", _rand(2000, 11)),
        ("frag", ["a", "bc", "def"]),
        ("frag", [_rand(300, 12), _rand(70_000, 13)]),
        ("ping", b""),
        ("binary", _rand(PLAIN_BIG, 14)),
        ("text", "x" * 126),  # 16-bit extended length, just over the 7-bit one
        ("cmd", "!frag-text"),
        ("cmd", "!frag-bin"),
        ("cmd", "!ping srv-plain"),
        ("cmd", "!close 4001 custom"),
    ],
    # permessage-deflate, IPv4, the client closes with 1001 "going away"
    "away": [
        ("text", "short-lived"),
        ("binary", b"\x00\x01\x02\xff"),
        ("close", (1001, "going away")),
    ],
}


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _payload(m) -> tuple[str, bytes]:
    return ("text", m.encode()) if isinstance(m, str) else ("binary", bytes(m))


# --------------------------------------------------------------------------
# The peers (need websockets)

def _peer_main(argv: list[str]) -> int:
    import argparse
    import asyncio

    import websockets

    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("--host", default=None)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--plain-port", type=int)
    ap.add_argument("--script")
    ap.add_argument("--compression", choices=["deflate", "none"], default="deflate")
    ap.add_argument("--log", required=True)
    a = ap.parse_args(argv)
    logf = open(a.log, "a")

    def rec(conn: int, role: str, ev: str, opcode: str, data: bytes = b"", **kw):
        e = {"conn": conn, "role": role, "ev": ev, "opcode": opcode, "data": _b64(data), **kw}
        logf.write(json.dumps(e) + "\n")
        logf.flush()

    def rec_close(ws, conn: int, role: str):
        # what each side sent and received in its close frame (None: no frame)
        for ev, c in (("sent", ws.close_sent), ("recv", ws.close_rcvd)):
            if c is not None:
                rec(conn, role, ev, "close", code=c.code, reason=c.reason)

    async def server_handler(ws, path=None):
        conn = ws.remote_address[1]
        try:
            async for msg in ws:
                op, data = _payload(msg)
                rec(conn, "server", "recv", op, data)
                if not (isinstance(msg, str) and msg.startswith("!")):
                    await ws.send(msg)
                    rec(conn, "server", "sent", op, data)
                    continue
                cmd, _, arg = msg.partition(" ")
                if cmd == "!frag-bin":
                    await ws.send(SERVER_FRAG)
                    rec(conn, "server", "sent", "binary", b"".join(SERVER_FRAG), fragments=len(SERVER_FRAG))
                elif cmd == "!frag-text":
                    await ws.send(SERVER_FRAG_TEXT)
                    rec(conn, "server", "sent", "text", "".join(SERVER_FRAG_TEXT).encode(),
                        fragments=len(SERVER_FRAG_TEXT))
                elif cmd == "!empty":
                    await ws.send("")
                    rec(conn, "server", "sent", "text", b"")
                    await ws.send(b"")
                    rec(conn, "server", "sent", "binary", b"")
                elif cmd == "!ping":
                    waiter = await ws.ping(arg.encode())
                    rec(conn, "server", "sent", "ping", arg.encode())
                    await asyncio.wait_for(waiter, 10)
                    rec(conn, "server", "recv", "pong", arg.encode())
                    await ws.send("pinged")
                    rec(conn, "server", "sent", "text", b"pinged")
                elif cmd == "!close":
                    code, _, reason = arg.partition(" ")
                    await ws.close(int(code), reason)
                    break
        except websockets.ConnectionClosed:
            pass
        await ws.wait_closed()
        rec_close(ws, conn, "server")

    async def serve():
        common = dict(ping_interval=None, max_size=1 << 24, close_timeout=5)
        async with websockets.serve(server_handler, a.host, a.port, compression="deflate", **common), \
                websockets.serve(server_handler, a.host, a.plain_port, compression=None, **common):
            print(f"listening on {a.port} (permessage-deflate) and {a.plain_port} (no compression)", flush=True)
            await asyncio.Future()

    async def client():
        host = f"[{a.host}]" if ":" in a.host else a.host
        comp = None if a.compression == "none" else "deflate"
        async with websockets.connect(f"ws://{host}:{a.port}/{a.script}", compression=comp, ping_interval=None,
                                      max_size=1 << 24, close_timeout=5, open_timeout=10) as ws:
            conn = ws.local_address[1]
            rec(conn, "client", "info", "", script=a.script, compression=a.compression,
                extensions=ws.response_headers.get("Sec-WebSocket-Extensions"))

            async def recv(n: int = 1):
                for _ in range(n):
                    m = await asyncio.wait_for(ws.recv(), 10)
                    op, data = _payload(m)
                    rec(conn, "client", "recv", op, data)

            try:
                for kind, arg in SCRIPTS[a.script]:
                    if kind in ("text", "binary"):
                        await ws.send(arg)
                        rec(conn, "client", "sent", *_payload(arg))
                        await recv()
                    elif kind == "frag":
                        await ws.send(arg)
                        op, _ = _payload(arg[0])
                        rec(conn, "client", "sent", op, b"".join(_payload(x)[1] for x in arg), fragments=len(arg))
                        await recv()
                    elif kind == "ping":
                        waiter = await ws.ping(arg)
                        rec(conn, "client", "sent", "ping", arg)
                        await asyncio.wait_for(waiter, 10)
                        rec(conn, "client", "recv", "pong", arg)
                    elif kind == "pong":
                        await ws.pong(arg)
                        rec(conn, "client", "sent", "pong", arg)
                    elif kind == "cmd":
                        await ws.send(arg)
                        rec(conn, "client", "sent", "text", arg.encode())
                        cmd, _, rest = arg.partition(" ")
                        if cmd == "!ping":
                            # websockets answers a ping by itself: the pong goes out before "pinged" comes in
                            m = await asyncio.wait_for(ws.recv(), 10)
                            rec(conn, "client", "recv", "ping", rest.encode())
                            rec(conn, "client", "sent", "pong", rest.encode())
                            rec(conn, "client", "recv", *_payload(m))
                        elif cmd == "!close":
                            try:
                                m = await asyncio.wait_for(ws.recv(), 10)
                                raise RuntimeError(f"a message instead of the close: {m!r:.80}")
                            except websockets.ConnectionClosed:
                                pass
                        else:
                            await recv(2 if cmd == "!empty" else 1)
                    elif kind == "close":
                        await ws.close(*arg)
            finally:
                await ws.wait_closed()
                rec_close(ws, conn, "client")
        print(json.dumps({"conn": conn, "script": a.script}), flush=True)

    asyncio.run(serve() if a.role == "server" else client())
    return 0


# --------------------------------------------------------------------------
# Test side (standard library only)

def peer_python() -> str | None:
    """An interpreter that can import websockets: this one, or Debian's."""
    for py in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if py and os.access(py, os.X_OK):
            r = subprocess.run([py, "-c", "import websockets"], capture_output=True, timeout=30)
            if r.returncode == 0:
                return py
    return None


def read_log(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                e["data"] = base64.b64decode(e.get("data") or "")
                out.append(e)
    return out


def expected_messages(events: list[dict], role: str) -> dict:
    """{(conn, dir): [(opcode, payload, code, reason), ...]} in order, as the
    peer `role` saw them: what it sent goes its way, what it received the
    other."""
    mine = {"client": "c2s", "server": "s2c"}[role]
    theirs = {"c2s": "s2c", "s2c": "c2s"}[mine]
    res: dict = collections.defaultdict(list)
    for e in events:
        if e["role"] != role or e["ev"] not in ("sent", "recv"):
            continue
        d = mine if e["ev"] == "sent" else theirs
        res[(e["conn"], d)].append((e["opcode"], e["data"], e.get("code"), e.get("reason")))
    return dict(res)


# tshark: WebSocket frames (one packet may carry several: a JSON list then)

OPCODES = {0: "continuation", 1: "text", 2: "binary", 8: "close", 9: "ping", 10: "pong"}


def _one(obj, key: str):
    """The first value of key in a nested JSON tree (depth first), or None."""
    if isinstance(obj, dict):
        if key in obj:
            v = obj[key]
            return v[0] if isinstance(v, list) and v and not isinstance(v[0], (int, float)) else v
        for v in obj.values():
            r = _one(v, key)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = _one(v, key)
            if r is not None:
                return r
    return None


def _raw(obj, key: str) -> bytes | None:
    """The bytes of a field from its `-x` companion FIELD_raw: [hex, offset, length, ...]."""
    v = _one(obj, key + "_raw")
    if isinstance(v, list) and v and isinstance(v[0], str):
        return bytes.fromhex(v[0])
    if isinstance(v, str):
        return bytes.fromhex(v)
    return None


def _int(v) -> int | None:
    if v in (None, ""):
        return None
    return int(v, 0) if isinstance(v, str) else int(v)


def _as_list(v) -> list:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def tshark_frames(pcap: Path, timeout: float = 300) -> list[dict]:
    """Every WebSocket frame tshark finds, in capture order: {frame (number),
    time (epoch seconds), stream, src, sport, dst, dport, fin, opcode, rsv1
    (permessage-deflate), masked, length (payload bytes on the wire), close_code,
    close_reason, wire (the payload unmasked, still compressed), decoded (what
    tshark shows as the payload, text or data, decompressed where it could:
    only for a packet with one frame, else None)}."""
    cmd = ["tshark", "-n", "-r", str(pcap), "-o", "tcp.desegment_tcp_streams:TRUE",
           "-o", "websocket.decompress:TRUE", "-Y", "websocket", "-T", "json", "-x", "--no-duplicate-keys",
           "-J", "frame tcp ip ipv6 websocket data data-text-lines"]
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    frames = []
    for pkt in json.loads(r.stdout or "[]"):
        layers = pkt["_source"]["layers"]
        fr, tcp = layers["frame"], layers["tcp"]
        ip = layers.get("ip") or layers.get("ipv6") or {}
        wss = _as_list(layers.get("websocket"))
        base = {"frame": _int(_one(fr, "frame.number")), "time": float(_one(fr, "frame.time_epoch")),
                "stream": _int(_one(tcp, "tcp.stream")), "src": _one(ip, "ip.src") or _one(ip, "ipv6.src"),
                "sport": _int(_one(tcp, "tcp.srcport")), "dst": _one(ip, "ip.dst") or _one(ip, "ipv6.dst"),
                "dport": _int(_one(tcp, "tcp.dstport"))}
        for w in wss:
            length = _int(_one(w, "websocket.payload_length"))
            for ext in ("websocket.payload_length_ext_16", "websocket.payload_length_ext_64"):
                if _one(w, ext) is not None:
                    length = _int(_one(w, ext))
            opcode = _int(_one(w, "websocket.opcode"))
            wire = _raw(w, "websocket.payload") or b""
            decoded = None
            if len(wss) == 1:
                if opcode == 1 or (opcode == 0 and "data-text-lines" in layers):
                    decoded = _raw(w, "websocket.payload.text")
                    if decoded is None:
                        decoded = _raw(layers, "data-text-lines")
                elif opcode == 2 or (opcode == 0 and "data" in layers):
                    decoded = _raw(layers.get("data"), "data.data")
                elif opcode in (9, 10):
                    decoded = _raw(w, "websocket.payload.ping" if opcode == 9 else "websocket.payload.pong")
            frames.append({**base, "fin": _one(w, "websocket.fin") in ("1", "True", "true"),
                           "opcode": OPCODES.get(opcode, f"op{opcode}"),
                           "rsv1": _one(w, "websocket.pmc") in ("1", "True", "true"),
                           "masked": _one(w, "websocket.mask") in ("1", "True", "true"),
                           "length": length or 0,
                           "close_code": _int(_one(w, "websocket.payload.close.status_code")),
                           "close_reason": _one(w, "websocket.payload.close.reason"),
                           "wire": wire, "decoded": decoded})
    return frames


def assemble(frames: list[dict], server_ports: set[int]) -> tuple[list[dict], list[str]]:
    """tshark lists frames: these are its messages, assembled by FIN per TCP
    stream and direction (a control frame stands alone, also between the
    fragments of a message). Returns (messages in capture order, problems).
    A message: {stream, dir ("c2s"|"s2c"), client (ip, port), server (ip,
    port), opcode, frames, wire_size (payload bytes on the wire, added up),
    compressed (RSV1 on its first frame), close_code, close_reason, wire
    (payload as sent, unmasked, concatenated), tshark_decoded (tshark's own
    decoding of a one-frame message, else None), first, last (frame numbers),
    t_first, t_last}."""
    msgs: list[dict] = []
    open_: dict = {}
    problems = []
    for f in frames:
        if f["dport"] in server_ports:
            d, client, server = "c2s", (f["src"], f["sport"]), (f["dst"], f["dport"])
        elif f["sport"] in server_ports:
            d, client, server = "s2c", (f["dst"], f["dport"]), (f["src"], f["sport"])
        else:
            problems.append(f"frame {f['frame']}: WebSocket on ports {f['sport']}->{f['dport']}, not the server's")
            continue
        if f["masked"] != (d == "c2s"):
            problems.append(f"frame {f['frame']}: {d} frame with mask={f['masked']}")
        if len(f["wire"]) != f["length"]:
            problems.append(f"frame {f['frame']}: payload length {f['length']}, tshark shows {len(f['wire'])} bytes")
        key = (f["stream"], d)
        new = {"stream": f["stream"], "dir": d, "client": client, "server": server, "opcode": f["opcode"],
               "frames": 0, "wire_size": 0, "compressed": f["rsv1"], "close_code": f["close_code"],
               "close_reason": f["close_reason"], "wire": b"", "tshark_decoded": None,
               "first": f["frame"], "t_first": f["time"], "fragments": []}
        if f["opcode"] in ("close", "ping", "pong"):
            if not f["fin"]:
                problems.append(f"frame {f['frame']}: fragmented control frame")
            m = new
        elif f["opcode"] == "continuation":
            m = open_.get(key)
            if m is None:
                problems.append(f"frame {f['frame']}: continuation frame without a first fragment")
                continue
            if f["rsv1"]:
                problems.append(f"frame {f['frame']}: RSV1 on a continuation frame")
        else:
            if key in open_:
                problems.append(f"frame {f['frame']}: a new message inside the fragmented one of frame "
                                f"{open_[key]['first']}")
            m = open_[key] = new
        m["frames"] += 1
        m["wire_size"] += f["length"]
        m["wire"] += f["wire"]
        m["fragments"].append(f)
        m["last"], m["t_last"] = f["frame"], f["time"]
        if f["fin"]:
            open_.pop(key, None)
            if m["frames"] == 1:
                m["tshark_decoded"] = f["decoded"]
            msgs.append(m)
    for key, m in open_.items():
        problems.append(f"{key}: the message from frame {m['first']} never finished")
    return msgs, problems


def parse_extensions(header: str | None) -> dict:
    """permessage-deflate parameters of a Sec-WebSocket-Extensions response
    header: {"deflate": bool, "c2s_reset": client_no_context_takeover,
    "s2c_reset": server_no_context_takeover}."""
    res = {"deflate": False, "c2s_reset": False, "s2c_reset": False}
    for ext in (header or "").split(","):
        parts = [p.strip().split("=")[0].strip() for p in ext.split(";")]
        if parts and parts[0] == "permessage-deflate":
            res["deflate"] = True
            res["c2s_reset"] = "client_no_context_takeover" in parts
            res["s2c_reset"] = "server_no_context_takeover" in parts
    return res


def inflate(msgs: list[dict], extensions: dict) -> list[str]:
    """Adds `payload` to each message: the wire bytes, decompressed for a
    compressed message (RFC 7692: raw DEFLATE, 00 00 ff ff appended, one
    window per direction kept across messages unless no_context_takeover).
    extensions: {stream: parse_extensions(...)}. Returns problems."""
    import zlib
    problems = []
    ctx: dict = {}
    for m in msgs:
        if not m["compressed"]:
            m["payload"] = m["wire"]
            continue
        ext = extensions.get(m["stream"]) or {}
        if not ext.get("deflate"):
            problems.append(f"frame {m['first']}: RSV1 set without permessage-deflate negotiated")
        key = (m["stream"], m["dir"])
        if key not in ctx or ext.get(f"{m['dir']}_reset"):
            ctx[key] = zlib.decompressobj(wbits=-15)
        try:
            m["payload"] = ctx[key].decompress(m["wire"] + b"\x00\x00\xff\xff")
        except zlib.error as e:
            problems.append(f"frame {m['first']}: does not inflate: {e}")
            m["payload"] = None
    return problems


if __name__ == "__main__":
    sys.exit(_peer_main(sys.argv[1:]))

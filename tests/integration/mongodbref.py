"""MongoDB reference for the integration tests and the benchmark.

MongoDB has no server in Debian, so the reference traffic is a capture of a
real client and server (tests/fixtures/mongodb/mongo.pcap, see its README):

- tshark_messages(pcap, port): tshark's dissection of a capture (PDML), one
  dict per wire message: the header (opcode, request id, responseTo), the
  collection name of OP_QUERY, and the top-level elements of the command
  document (OP_MSG body section, OP_QUERY query, OP_REPLY first document);
- tshark_calls(msgs): those messages paired as tapwire pairs them
  (responseTo == requestID on one connection), with the command, database,
  collection and ok / error taken from the elements as the MongoDB docs
  define them;
- synth_bench_pcap(out, calls): a large capture for `make bench` (calls per
  core-second, tapwire vs tshark): find and insert OP_MSG request/reply pairs
  over a few TCP connections, made from the fixture's messages (its session
  id, its reply documents) and a small BSON encoder, TCP sequence numbers
  right.

Python 3 standard library only.
"""

from __future__ import annotations

import os
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "mongodb" / "mongo.pcap"
PORT = 27017

OP_REPLY, OP_QUERY, OP_COMPRESSED, OP_MSG = 1, 2004, 2012, 2013


# --------------------------------------------------------------------------
# tshark

def _int(s: str) -> int:
    return int(s, 0) if s else 0


def _elements(doc) -> list[tuple[str, str, str]]:
    """(name, type, value) of the top-level elements of a tshark document field."""
    out = []
    if doc is None:
        return out
    elems = next((f for f in doc if f.get("name") == "mongo.elements"), None)
    if elems is None:
        return out
    for e in elems:
        if e.get("name") != "mongo.element.name":
            continue
        typ, val = "", ""
        for f in e:
            n = f.get("name", "")
            if n == "mongo.element.type":
                typ = f.get("show", "")
            elif n.startswith("mongo.element.value.") and n != "mongo.element.value.length":
                val = f.get("show", "")
        out.append((e.get("show", ""), typ, val))
    return out


def _find(node, name: str):
    for f in node:
        if f.get("name") == name:
            return f
    return None


def tshark_messages(pcap: Path, port: int = PORT, timeout: float = 120) -> list[dict]:
    """Every MongoDB message tshark finds in pcap, in capture order."""
    cmd = ["tshark", "-n", "-r", str(pcap), "-d", f"tcp.port=={port},mongo", "-o", "tcp.desegment_tcp_streams:TRUE",
           "-Y", "mongo", "-T", "pdml"]
    r = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr.decode(errors='replace')[-2000:]}")
    msgs = []
    root = ET.fromstring(r.stdout)
    for pkt in root.iter("packet"):
        protos = {p.get("name"): p for p in pkt.findall("proto")}
        tcp = protos.get("tcp")
        ip = protos.get("ip") or protos.get("ipv6")
        if tcp is None:
            continue
        def field(proto, name):
            f = proto.find(f".//field[@name='{name}']") if proto is not None else None
            return f.get("show", "") if f is not None else ""
        src = (field(ip, "ip.src") or field(ip, "ipv6.src"), _int(field(tcp, "tcp.srcport")))
        dst = (field(ip, "ip.dst") or field(ip, "ipv6.dst"), _int(field(tcp, "tcp.dstport")))
        for p in pkt.findall("proto"):
            if p.get("name") != "mongo":
                continue
            m = {"src": src, "dst": dst, "opcode": _int(field(p, "mongo.opcode")),
                 "request_id": _int(field(p, "mongo.request_id")), "response_to": _int(field(p, "mongo.response_to")),
                 "full_collection_name": "", "elements": []}
            if m["opcode"] == OP_QUERY:
                m["full_collection_name"] = field(p, "mongo.full_collection_name")
                m["elements"] = _elements(_find(p, "mongo.query"))
            elif m["opcode"] == OP_MSG:
                sec = _find(p, "mongo.msg.sections.section")
                body = _find(sec, "mongo.msg.sections.section.body") if sec is not None else None
                m["elements"] = _elements(body)
            elif m["opcode"] == OP_REPLY:
                m["elements"] = _elements(_find(p, "mongo.document"))
            msgs.append(m)
    return msgs


def _command(m: dict) -> dict:
    """What a request asks, from tshark's elements, as the MongoDB docs define it."""
    el = m["elements"]
    out = {"command": None, "database": "", "collection": ""}
    if m["opcode"] == OP_QUERY:
        ns = m["full_collection_name"]
        db, _, coll = ns.partition(".")
        out["database"] = db
        if coll == "$cmd" and el:
            out["command"] = el[0][0]
            if el[0][1] == "0x02":
                out["collection"] = el[0][2]
        else:
            out["command"], out["collection"] = "find", coll
        return out
    if el:
        out["command"] = el[0][0]
        if el[0][1] == "0x02":
            out["collection"] = el[0][2]
    for name, typ, val in el:
        if name == "$db":
            out["database"] = val
    return out


def _outcome(m: dict) -> dict:
    el = {name: (typ, val) for name, typ, val in reversed(m["elements"])}
    out = {"ok": None, "code": None, "message": None}
    if "ok" in el:
        typ, val = el["ok"]
        out["ok"] = 1 if val in ("1", "True", "true") or (val and float(val) == 1.0) else 0
    if out["ok"] == 0:
        if "code" in el:
            out["code"] = int(float(el["code"][1]))
        if "errmsg" in el:
            out["message"] = el["errmsg"][1]
    return out


def tshark_calls(msgs: list[dict]) -> list[dict]:
    """Requests paired with their replies (responseTo == requestID on the same connection)."""
    pending: dict[tuple, dict] = {}
    calls = []
    for m in msgs:
        is_resp = m["opcode"] == OP_REPLY or m["response_to"] != 0
        if not is_resp:
            c = {"client": m["src"], "server": m["dst"], "opcode": m["opcode"], "request_id": m["request_id"],
                 **_command(m), "response": None}
            calls.append(c)
            pending[(m["src"], m["dst"], m["request_id"])] = c
            continue
        c = pending.pop((m["dst"], m["src"], m["response_to"]), None)
        if c is None:
            calls.append({"client": m["dst"], "server": m["src"], "opcode": None, "request_id": None, "command": None,
                          "database": None, "collection": None,
                          "response": {"opcode": m["opcode"], "request_id": m["request_id"],
                                       "response_to": m["response_to"], **_outcome(m)}})
            continue
        c["response"] = {"opcode": m["opcode"], "request_id": m["request_id"], "response_to": m["response_to"],
                         **_outcome(m)}
    return calls


# --------------------------------------------------------------------------
# BSON and wire messages (for synthetic captures)

class Int64(int):
    pass


def bson(doc: dict) -> bytes:
    out = b""
    for k, v in doc.items():
        key = k.encode() + b"\0"
        if isinstance(v, bool):
            out += b"\x08" + key + (b"\x01" if v else b"\x00")
        elif isinstance(v, Int64):
            out += b"\x12" + key + struct.pack("<q", v)
        elif isinstance(v, int):
            out += b"\x10" + key + struct.pack("<i", v)
        elif isinstance(v, float):
            out += b"\x01" + key + struct.pack("<d", v)
        elif isinstance(v, str):
            s = v.encode() + b"\0"
            out += b"\x02" + key + struct.pack("<i", len(s)) + s
        elif isinstance(v, dict):
            out += b"\x03" + key + bson(v)
        elif isinstance(v, list):
            out += b"\x04" + key + bson({str(i): x for i, x in enumerate(v)})
        elif isinstance(v, bytes):
            out += b"\x05" + key + struct.pack("<i", len(v)) + b"\x00" + v
        elif v is None:
            out += b"\x0a" + key
        else:
            raise TypeError(type(v))
    return struct.pack("<i", len(out) + 5) + out + b"\0"


def op_msg(request_id: int, response_to: int, body: bytes, seqs: list[tuple[str, list[bytes]]] = (),
           flags: int = 0) -> bytes:
    m = struct.pack("<I", flags) + b"\x00" + body
    for ident, docs in seqs:
        sec = ident.encode() + b"\0" + b"".join(docs)
        m += b"\x01" + struct.pack("<i", 4 + len(sec)) + sec
    return struct.pack("<iiii", 16 + len(m), request_id, response_to, OP_MSG) + m


def fixture_session_id() -> bytes:
    """The `lsid.id` (UUID binary) the fixture's shell used: the synthetic traffic reuses it."""
    data = FIXTURE.read_bytes()
    key = b"\x05id\x00\x10\x00\x00\x00\x04"
    i = data.find(key)
    return data[i + len(key):i + len(key) + 16] if i >= 0 else bytes(range(16))


# --------------------------------------------------------------------------
# pcap writing

def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class PcapWriter:
    """Ethernet/IPv4/TCP frames into a classic pcap (microsecond timestamps)."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))

    def tcp(self, ts_us: int, src: tuple[bytes, int], dst: tuple[bytes, int], seq: int, ack: int, flags: int,
            payload: bytes = b"") -> None:
        tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
        pseudo = src[0] + dst[0] + struct.pack("!BBH", 0, 6, len(tcp) + len(payload))
        tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp + payload)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0, src[0], dst[0])
        ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
        frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip + tcp + payload
        self.f.write(struct.pack("<IIII", ts_us // 1_000_000, ts_us % 1_000_000, len(frame), len(frame)) + frame)

    def close(self) -> None:
        self.f.close()


SYN, FIN, PSH, ACK = 0x02, 0x01, 0x08, 0x10
MSS = 1448


def synth_bench_pcap(out: Path, calls: int, connections: int = 4) -> int:
    """Writes `calls` find/insert request/reply pairs over `connections` TCP
    connections (round robin) to `out`; returns the server port (27017)."""
    lsid = {"id": fixture_session_id()}
    cli_ip, srv_ip = bytes([10, 99, 0, 1]), bytes([10, 99, 0, 2])
    w = PcapWriter(out)
    ts = 1_700_000_000_000_000
    conns = []
    for i in range(connections):
        c = {"cli": (cli_ip, 40000 + i), "srv": (srv_ip, PORT), "seq": [1000 + i * 7919, 500000 + i * 104729],
             "rid": 1, "sid": 1000}
        w.tcp(ts, c["cli"], c["srv"], c["seq"][0] - 1, 0, SYN)
        w.tcp(ts + 10, c["srv"], c["cli"], c["seq"][1] - 1, c["seq"][0], SYN | ACK)
        w.tcp(ts + 20, c["cli"], c["srv"], c["seq"][0], c["seq"][1], ACK)
        ts += 100
        conns.append(c)

    def send(c, client: bool, data: bytes):
        nonlocal ts
        a, b = (c["cli"], c["srv"]) if client else (c["srv"], c["cli"])
        k = 0 if client else 1
        for off in range(0, len(data), MSS):
            chunk = data[off:off + MSS]
            w.tcp(ts, a, b, c["seq"][k], c["seq"][1 - k], PSH | ACK, chunk)
            c["seq"][k] += len(chunk)
            ts += 5

    find_reply = bson({"cursor": {"firstBatch": [{"_id": Int64(i), "name": f"user{i}", "score": i * 1.5}
                                                 for i in range(3)], "id": Int64(0), "ns": "bench.users"},
                       "ok": 1.0})
    insert_reply = bson({"n": 2, "ok": 1.0})
    for n in range(calls):
        c = conns[n % connections]
        rid = c["rid"]
        c["rid"] += 1
        if n % 2 == 0:
            req = op_msg(rid, 0, bson({"find": "users", "filter": {"score": {"$gt": n % 100}}, "limit": 3,
                                       "lsid": lsid, "$db": "bench"}))
            resp = op_msg(c["sid"], rid, find_reply)
        else:
            docs = [bson({"_id": Int64(n * 2 + j), "name": f"user{n}", "score": float(n % 100)}) for j in range(2)]
            req = op_msg(rid, 0, bson({"insert": "users", "ordered": True, "lsid": lsid, "$db": "bench"}),
                         [("documents", docs)])
            resp = op_msg(c["sid"], rid, insert_reply)
        c["sid"] += 1
        send(c, True, req)
        ts += 50
        send(c, False, resp)
        ts += 50
    for c in conns:
        w.tcp(ts, c["cli"], c["srv"], c["seq"][0], c["seq"][1], FIN | ACK)
        w.tcp(ts + 10, c["srv"], c["cli"], c["seq"][1], c["seq"][0] + 1, FIN | ACK)
        w.tcp(ts + 20, c["cli"], c["srv"], c["seq"][0] + 1, c["seq"][1] + 1, ACK)
        ts += 100
    w.close()
    return PORT


if __name__ == "__main__":  # mongodbref.py OUT.pcap [CALLS]: a benchmark capture
    import sys
    p = synth_bench_pcap(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10000)
    print(f"wrote {sys.argv[1]} (server port {p})", file=sys.stderr)
    os._exit(0)

"""Kafka reference for the dissector's tests: tshark's dissection of a capture
(`-d tcp.port==PORT,kafka`, since tshark decodes Kafka only on its registered
port), tapwire-dissector's records of the same file, both as comparable calls;
and a synthetic benchmark capture (`synth_bench_pcap`) built from the real
messages of tests/fixtures/kafka (Debian has no Kafka client or server, so
there is no lab capture_bench for Kafka).

Python 3 standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402

FIXTURE_DIR = lab.REPO_ROOT / "tests" / "fixtures" / "kafka"
# Each capture and its broker's port.
FIXTURES = {
    "00-produce-v2.pcap": 9092,
    "00-produce-v9.pcap": 36333,
    "01-fetch-v12-ok.pcap": 36333,
    "11-join-group-v7.pcap": 36333,
    "18-api-versions-v3.pcap": 9092,
}
BENCH_PORT = 9092

API_NAMES = ["Produce", "Fetch", "ListOffsets", "Metadata", "LeaderAndIsr", "StopReplica", "UpdateMetadata",
             "ControlledShutdown", "OffsetCommit", "OffsetFetch", "FindCoordinator", "JoinGroup", "Heartbeat",
             "LeaveGroup", "SyncGroup", "DescribeGroups", "ListGroups", "SaslHandshake", "ApiVersions",
             "CreateTopics", "DeleteTopics"]
AGG = "\x1f"


def require() -> None:
    """Exits 77 (1 under CI=true) without tshark or the dissector binary."""
    problems = []
    if not shutil.which("tshark"):
        problems.append("missing tool tshark")
    if not os.access(ref.dissector_bin(), os.X_OK):
        problems.append(f"missing binary {ref.dissector_bin()} (build first)")
    if problems:
        msg = "cannot run: " + "; ".join(problems)
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def api_name(key: int) -> str:
    return API_NAMES[key] if 0 <= key < len(API_NAMES) else f"API_{key}"


# --------------------------------------------------------------------------
# tshark

FIELDS = ["frame.number", "tcp.stream", "tcp.srcport", "tcp.dstport", "kafka.request_key", "kafka.response_key",
          "kafka.request.version", "kafka.correlation_id", "kafka.client_id", "kafka.topic_name",
          "kafka.partition_id", "kafka.error"]


def tshark_calls(pcap: Path, port: int, timeout: float = 600) -> tuple[dict, dict]:
    """tshark's Kafka PDUs: (requests, responses), each keyed by (client port,
    correlation id). A request: api_key, api_version, client_id, topics and
    partitions (None when tshark decoded none: versions it does not support,
    or several PDUs in one frame). A response: errors (tshark's kafka.error
    values in order; None when it could not decode the response)."""
    cmd = ["tshark", "-n", "-r", str(pcap), "-d", f"tcp.port=={port},kafka", "-o",
           "tcp.desegment_tcp_streams:TRUE", "-Y", "kafka", "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", f"aggregator={AGG}"]
    for f in FIELDS:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    if r.returncode != 0:
        raise AssertionError(f"tshark on {pcap}: exit {r.returncode}: {r.stderr.strip()[-500:]}")
    requests, responses = {}, {}
    for line in r.stdout.splitlines():
        cols = line.split("\t")
        cols += [""] * (len(FIELDS) - len(cols))
        row = {f: (cols[i].split(AGG) if cols[i] else []) for i, f in enumerate(FIELDS)}
        sport, dport = int(row["tcp.srcport"][0]), int(row["tcp.dstport"][0])
        corrs = [int(x) for x in row["kafka.correlation_id"]]
        if dport == port:  # client to broker: requests
            keys, vers, cids = row["kafka.request_key"], row["kafka.request.version"], row["kafka.client_id"]
            single = len(corrs) == 1
            for i, corr in enumerate(corrs):
                requests[(sport, corr)] = {
                    "api_key": api_name(int(keys[i])) if i < len(keys) else None,
                    "api_version": int(vers[i]) if i < len(vers) else None,
                    "client_id": cids[i] if i < len(cids) else None,
                    "topics": row["kafka.topic_name"] if single and row["kafka.topic_name"] else None,
                    "partitions": [int(p) for p in row["kafka.partition_id"]]
                    if single and row["kafka.topic_name"] else None,
                }
        elif sport == port:
            single = len(corrs) == 1
            for corr in corrs:
                decoded = bool(row["kafka.response_key"]) and single
                responses[(dport, corr)] = {"errors": [int(e) for e in row["kafka.error"]] if decoded else None}
    return requests, responses


# --------------------------------------------------------------------------
# tapwire

def tapwire_calls(pcap: Path, extra: list | None = None, timeout: float = 300) -> list[dict]:
    """The kafka records of `tapwire-dissector --pcap FILE --jsonl -`."""
    res = ref.run_dissector(["--pcap", pcap, "--jsonl", "-"] + (extra or []), timeout=timeout)
    if res["rc"] != 0:
        raise AssertionError(f"tapwire-dissector --pcap {pcap}: exit {res['rc']}: {res['stderr'][-500:]}")
    calls = [json.loads(line) for line in res["stdout"].splitlines() if line.strip()]
    return [c for c in calls if c.get("protocol") == "kafka"]


def compare(pcap: Path, port: int, calls: list[dict] | None = None) -> tuple[int, list[str]]:
    """Call for call: every request tshark found is a tapwire call of the same
    client port and correlation id with the same API, version, client id,
    topics and partitions (where tshark decoded them); every response tshark
    found answers it, with the error code tshark shows (the first one that is
    not NONE, else NONE, where tshark decoded the response); and tapwire has
    no call tshark does not. Returns (calls compared, problems)."""
    treq, tresp = tshark_calls(pcap, port)
    if calls is None:
        calls = tapwire_calls(pcap)
    bad = []
    mine = {}
    for c in calls:
        q = c.get("request") or {}
        key = (c["src"]["port"], q.get("correlation_id"))
        if key in mine:
            bad.append(f"two tapwire calls for {key}")
        mine[key] = c
    for key, t in treq.items():
        c = mine.get(key)
        if not c:
            bad.append(f"{key}: tshark's {t['api_key']} request, no tapwire call")
            continue
        q = c["request"]
        for f in ("api_key", "api_version", "client_id"):
            if t[f] is not None and q.get(f) != t[f]:
                bad.append(f"{key}: {f} {q.get(f)!r}, tshark {t[f]!r}")
        if t["topics"] is not None:
            names = [tp["name"] for tp in q.get("topics", [])]
            parts = [p for tp in q.get("topics", []) for p in tp["partitions"]]
            if names != t["topics"] or parts != t["partitions"]:
                bad.append(f"{key}: topics {names} {parts}, tshark {t['topics']} {t['partitions']}")
        r = tresp.get(key)
        resp = c.get("response")
        if r is None:
            if resp is not None:
                bad.append(f"{key}: a response tshark does not show")
            continue
        if resp is None:
            bad.append(f"{key}: no response, tshark has one")
            continue
        if resp.get("correlation_id") != key[1]:
            bad.append(f"{key}: response correlation id {resp.get('correlation_id')}")
        if r["errors"]:
            want = next((e for e in r["errors"] if e != 0), 0)
            if resp.get("error") != want:
                bad.append(f"{key}: error {resp.get('error')} {resp.get('error_code')}, tshark {r['errors']}")
    for key in mine:
        if key not in treq:
            bad.append(f"{key}: tapwire call {mine[key].get('method')} tshark does not show")
    return len(treq), bad


# --------------------------------------------------------------------------
# A synthetic benchmark capture

def _pcap_packets(path: Path) -> list[tuple[bool, bytes]]:
    """The TCP payloads of a (classic, Ethernet, IPv4) fixture: (from client, bytes)."""
    data = path.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    off, out, client_port = 24, [], None
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(end + "IIII", data[off:off + 16])
        frame = data[off + 16:off + 16 + incl]
        off += 16 + incl
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        tcp = ip[ihl:]
        sport = struct.unpack(">H", tcp[0:2])[0]
        thl = (tcp[12] >> 4) * 4
        payload = tcp[thl:struct.unpack(">H", ip[2:4])[0] - ihl]
        if not payload:
            continue
        if client_port is None:
            client_port = sport  # the fixtures start with the client's request
        out.append((sport == client_port, bytes(payload)))
    return out


def _metadata_pair() -> tuple[bytes, bytes]:
    """Metadata v1 request for topic "orders" and its answer (one broker, one
    partition), encoded after the protocol guide."""
    def s(x: str) -> bytes:
        return struct.pack(">h", len(x)) + x.encode()
    # (correlation ids are set per call)
    body = struct.pack(">hhi", 3, 1, 0) + s("bench-client") + struct.pack(">i", 1) + s("orders")
    req = struct.pack(">i", len(body)) + body
    resp_body = (struct.pack(">i", 0) + struct.pack(">i", 1) + struct.pack(">i", 1) + s("broker1")
                 + struct.pack(">i", 9092) + struct.pack(">h", -1) + struct.pack(">i", 1)
                 + struct.pack(">i", 1) + struct.pack(">h", 0) + s("orders") + b"\x00"
                 + struct.pack(">i", 1) + struct.pack(">hii", 0, 0, 1) + struct.pack(">ii", 1, 1)
                 + struct.pack(">ii", 1, 1))
    resp = struct.pack(">i", len(resp_body)) + resp_body  # starts with the correlation id
    return req, resp


def _checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f">{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def synth_bench_pcap(out: Path, calls: int, connections: int = 4) -> str:
    """Writes a pcap of `calls` Kafka request/response pairs (the fixtures'
    Produce v2, Produce v9 and Fetch v12 messages, and a Metadata v1 pair, in
    turn; correlation ids renumbered per connection) over `connections` TCP
    connections to port 9092, each with its handshake and FIN, sequence
    numbers consistent. Returns the broker's port (as capture_bench does)."""
    pairs = []
    for name in ("00-produce-v2.pcap", "00-produce-v9.pcap", "01-fetch-v12-ok.pcap"):
        msgs = _pcap_packets(FIXTURE_DIR / name)
        req = b"".join(p for c, p in msgs if c)
        resp = b"".join(p for c, p in msgs if not c)
        pairs.append((req, resp))
    pairs.append(_metadata_pair())
    frames = []
    t = 1_700_000_000.0
    conns = []
    for i in range(connections):
        conns.append({"cport": 40000 + i, "caddr": bytes([10, 9, 0, 2]), "saddr": bytes([10, 9, 0, 1]),
                      "seq": [1000 + i * 7919, 500000 + i * 104729], "corr": 0})

    def packet(c: dict, from_client: bool, flags: int, payload: bytes = b"") -> None:
        nonlocal t
        t += 0.00005
        src, dst = (c["caddr"], c["saddr"]) if from_client else (c["saddr"], c["caddr"])
        sp, dp = (c["cport"], BENCH_PORT) if from_client else (BENCH_PORT, c["cport"])
        me, peer = (0, 1) if from_client else (1, 0)
        ack = c["seq"][peer] if flags & 0x10 else 0
        tcp = struct.pack(">HHIIBBHHH", sp, dp, c["seq"][me] & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                          65535, 0, 0)
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack(">H", _checksum(ip)) + ip[12:]
        pseudo = src + dst + struct.pack(">BBH", 0, 6, len(tcp) + len(payload))
        tcp = tcp[:16] + struct.pack(">H", _checksum(pseudo + tcp + payload)) + tcp[18:]
        eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
        frame = eth + ip + tcp + payload
        sec = int(t)
        frames.append(struct.pack("<IIII", sec, int((t - sec) * 1e6), len(frame), len(frame)) + frame)
        c["seq"][me] += len(payload) + (1 if flags & 0x03 else 0)  # SYN and FIN take a sequence number

    def send(c: dict, from_client: bool, data: bytes) -> None:
        for off in range(0, len(data), 1448):
            packet(c, from_client, 0x18, data[off:off + 1448])

    for c in conns:
        packet(c, True, 0x02)
        packet(c, False, 0x12)
        packet(c, True, 0x10)
    for n in range(calls):
        c = conns[n % len(conns)]
        req, resp = pairs[n % len(pairs)]
        c["corr"] += 1
        corr = struct.pack(">i", c["corr"])
        send(c, True, req[:8] + corr + req[12:])
        send(c, False, resp[:4] + corr + resp[8:])
    for c in conns:
        packet(c, True, 0x11)
        packet(c, False, 0x11)
        packet(c, True, 0x10)
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for fr in frames:
            f.write(fr)
    return str(BENCH_PORT)

"""The flow reference: what tshark 4.0 says about the TCP and UDP flows of a
capture, and a comparison with tapwire's flow records (docs/FLOWS.md).

    ref = read_reference("tcpdump.pcap")      # tshark -2, default preferences
    for line in describe(ref): print(line)
    diffs = compare(ref, records)             # records: `tapwire flows --json` lines, parsed

What tshark is asked, and how it is read:

(a) `tshark -q -z conv,tcp` / `-z conv,udp` (conv_table): one row per
    conversation `A:port <-> B:port`, then `<-` frames and bytes, `->` frames
    and bytes, total, relative start, duration. In tshark 4.0 address A is the
    source of the conversation's first packet (for TCP the SYN sender, the
    client); `->` counts the frames A sent to B, `<-` the frames B sent to A
    (checked on the lab's captures: a 1 MB fetch has its 1 MB in `<-`; a
    refused connect has the 60-byte SYN in `->` and the 40-byte RST in `<-`).
    Bytes are frame lengths (frame.len: the link-layer header included, none
    on a TUN) printed with SI units and cut, not rounded: "1086 kB" is
    1086000..1086999 bytes, "23 kB" is 23780. So the table gives exact
    frames but bytes only to its unit; the exact bytes per direction come from
    (b), and check_conv() makes sure both agree (frames equal, bytes within
    the printed unit).

(b) Every TCP/UDP frame (`-T fields`, ICMP errors quoting a header left out):
    number, time, frame.len, addresses, ports, tcp.stream / udp.stream,
    tcp.len, tcp.flags and the analysis fields
    tcp.analysis.{retransmission, fast_retransmission, spurious_retransmission,
    out_of_order, lost_segment, duplicate_ack, zero_window, keep_alive,
    initial_rtt} and tcp.completeness. Counted per stream and direction
    (client: the sender of the first SYN; a stream without a SYN: the sender
    of its first packet, unless it alone uses a port below 1024). Two passes
    (-2): tcp.completeness then holds the stream's final value on every frame
    (one pass prints the value before the frame's own contribution), the
    analysis flags are the same as in one pass.

What tshark 4.0 does that the comparison relies on:
  - a fast or spurious retransmission also carries tcp.analysis.retransmission;
    `retransmissions` counts frames with any of the three;
  - tcp.analysis.initial_rtt is set by the first frame with ACK and without
    SYN (any direction, data, FIN or RST included) after a SYN, measured from
    the most recent SYN without ACK (a retransmitted SYN restarts it). A SYN
    answered by RST|ACK therefore has an initial RTT (SYN to RST) and
    completeness 37 (SYN, ACK, RST); docs/FLOWS.md has handshake_rtt_us null
    without a handshake, so for flows without a SYN-ACK tapwire may give null;
  - tcp.analysis.duplicate_ack is printed twice per frame ("1,1"): a frame
    is counted once;
  - a SYN sent again (unanswered) is a tcp.analysis.retransmission.

Python 3.11 standard library; tshark runs with an empty configuration
directory (default preferences whatever the user's profile says).
"""

from __future__ import annotations

import calendar
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

COUNTERS = ("retransmissions", "fast_retransmissions", "spurious_retransmissions", "out_of_order",
            "lost_segments", "dup_acks", "zero_windows", "keep_alives", "resets")

ANALYSIS = {  # tshark field -> counter
    "tcp.analysis.fast_retransmission": "fast_retransmissions",
    "tcp.analysis.spurious_retransmission": "spurious_retransmissions",
    "tcp.analysis.out_of_order": "out_of_order",
    "tcp.analysis.lost_segment": "lost_segments",
    "tcp.analysis.duplicate_ack": "dup_acks",
    "tcp.analysis.zero_window": "zero_windows",
    "tcp.analysis.keep_alive": "keep_alives",
}
RETRANSMISSION_FIELDS = ("tcp.analysis.retransmission", "tcp.analysis.fast_retransmission",
                         "tcp.analysis.spurious_retransmission")

FIELDS = ["frame.number", "frame.time_epoch", "frame.len", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst",
          "tcp.stream", "tcp.srcport", "tcp.dstport", "tcp.len", "tcp.flags",
          "udp.stream", "udp.srcport", "udp.dstport", "udp.length",
          "tcp.analysis.retransmission", "tcp.analysis.fast_retransmission",
          "tcp.analysis.spurious_retransmission", "tcp.analysis.out_of_order", "tcp.analysis.lost_segment",
          "tcp.analysis.duplicate_ack", "tcp.analysis.zero_window", "tcp.analysis.keep_alive",
          "tcp.analysis.initial_rtt", "tcp.completeness"]

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
COMPLETENESS_NAMES = ((1, "SYN"), (2, "SYN-ACK"), (4, "ACK"), (8, "DATA"), (16, "FIN"), (32, "RST"))


def norm_ip(s: str) -> str:
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        return s


def _tshark_env() -> dict:
    env = dict(os.environ)
    d = Path(tempfile.gettempdir()) / "twflowref-tshark-config"
    d.mkdir(exist_ok=True)
    env["WIRESHARK_CONFIG_DIR"] = str(d)  # an empty profile: default preferences
    return env


def _tshark(args: list, timeout: float) -> str:
    cmd = ["tshark", "-n"] + [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, env=_tshark_env())
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return r.stdout


# --------------------------------------------------------------------------
# (a) conversation tables

UNITS = {"bytes": 1, "kB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3, "TB": 1000 ** 4}
_CONV_ROW = re.compile(r"^(\S+):(\d+)\s+<->\s+(\S+):(\d+)\s+(\d+)\s+([\d,]+)\s+(bytes|kB|MB|GB|TB)\s+"
                       r"(\d+)\s+([\d,]+)\s+(bytes|kB|MB|GB|TB)\s+(\d+)\s+([\d,]+)\s+(bytes|kB|MB|GB|TB)\s+"
                       r"([\d.]+)\s+([\d.]+)\s*$")


@dataclass
class ConvDir:
    frames: int
    bytes: int    # the printed number times its unit: a lower bound, exact when unit == 1
    unit: int     # 1, 1000, ...: the exact byte count is in [bytes, bytes + unit)

    def holds(self, exact: int) -> bool:
        return self.bytes <= exact < self.bytes + self.unit


@dataclass
class Conv:
    proto: str
    a: tuple[str, int]       # the first packet's source
    b: tuple[str, int]
    a_to_b: ConvDir          # the "->" columns
    b_to_a: ConvDir          # the "<-" columns
    start: float             # relative to the capture's first frame, seconds
    duration: float


def conv_table(pcap, proto: str, timeout: float = 300) -> list[Conv]:
    """`tshark -q -z conv,PROTO` (tcp or udp) parsed."""
    out = _tshark(["-r", pcap, "-q", "-z", f"conv,{proto}"], timeout)
    convs = []
    for line in out.splitlines():
        m = _CONV_ROW.match(line.strip())
        if not m:
            continue
        g = m.groups()

        def d(frames, num, unit):
            return ConvDir(int(frames), int(num.replace(",", "")) * UNITS[unit], UNITS[unit])
        convs.append(Conv(proto, (norm_ip(g[0]), int(g[1])), (norm_ip(g[2]), int(g[3])),
                          a_to_b=d(g[7], g[8], g[9]), b_to_a=d(g[4], g[5], g[6]),
                          start=float(g[13]), duration=float(g[14])))
    return convs


# --------------------------------------------------------------------------
# (b) per flow, from every frame

@dataclass
class DirRef:
    packets: int = 0
    bytes: int = 0
    payload_bytes: int = 0
    retransmissions: int = 0
    fast_retransmissions: int = 0
    spurious_retransmissions: int = 0
    out_of_order: int = 0
    lost_segments: int = 0
    dup_acks: int = 0
    zero_windows: int = 0
    keep_alives: int = 0
    resets: int = 0
    syns: int = 0
    fins: int = 0


@dataclass
class FlowRef:
    protocol: str                   # tcp / udp
    stream: int                     # tshark's tcp.stream / udp.stream
    ip_version: int
    client: tuple[str, int]
    server: tuple[str, int]
    first_ns: int
    last_ns: int
    c2s: DirRef = field(default_factory=DirRef)
    s2c: DirRef = field(default_factory=DirRef)
    first_src: tuple[str, int] | None = None   # tshark's address A
    # TCP
    completeness: int | None = None
    initial_rtt_us: float | None = None
    synack: bool = False            # the server sent a SYN-ACK
    refused: bool = False           # the client's SYN was answered by RST, no SYN-ACK
    unanswered: bool = False        # SYNs and nothing from the server
    frames: list[int] = field(default_factory=list)
    # (direction, counter) -> frames whose tshark verdict for counter flips when the
    # timestamps move by a few microseconds (add_timing_slack)
    slack: dict = field(default_factory=dict)

    def key(self) -> tuple:
        return (self.protocol, frozenset((self.client, self.server)))

    def name(self) -> str:
        c, s = self.client, self.server
        fmt = (lambda a: f"[{a[0]}]:{a[1]}") if self.ip_version == 6 else (lambda a: f"{a[0]}:{a[1]}")
        return f"{self.protocol} {fmt(c)} -> {fmt(s)} (tshark {self.protocol}.stream {self.stream})"

    def expected_state(self) -> str | None:
        """The TCP state the capture shows at its end (docs/FLOWS.md's names)."""
        if self.protocol != "tcp":
            return None
        if self.refused:
            return "refused"
        if self.unanswered:
            return "unanswered"
        if self.c2s.resets or self.s2c.resets:
            return "reset"
        fins = (self.c2s.fins > 0) + (self.s2c.fins > 0)
        if fins == 2:
            return "closed"
        if fins == 1:
            return "closing"
        if self.synack and self.completeness is not None and self.completeness & 4:
            return "established"
        if self.synack:
            return "syn_received"
        return "syn_sent" if self.c2s.syns else "established"

    def completeness_flags(self) -> list[str]:
        return [n for bit, n in COMPLETENESS_NAMES if (self.completeness or 0) & bit]


@dataclass
class Reference:
    pcap: str
    flows: list[FlowRef]
    conv: dict[str, list[Conv]]
    frames: int
    owner: dict = field(default_factory=dict)   # frame number -> (FlowRef, "client_to_server" | "server_to_client")

    def tcp(self) -> list[FlowRef]:
        return [f for f in self.flows if f.protocol == "tcp"]

    def udp(self) -> list[FlowRef]:
        return [f for f in self.flows if f.protocol == "udp"]

    def totals(self, protocol: str = "tcp") -> dict[str, int]:
        t: dict[str, int] = {}
        for f in self.flows:
            if f.protocol != protocol:
                continue
            for d in (f.c2s, f.s2c):
                for k, v in vars(d).items():
                    t[k] = t.get(k, 0) + v
        return t


def _ns(epoch: str) -> int:
    s, _, frac = epoch.partition(".")
    return int(s) * 1_000_000_000 + int((frac + "000000000")[:9])


def _orient(first: tuple, other: tuple) -> tuple[tuple, tuple]:
    """(client, server) of a flow whose first packet went first -> other and
    that has no SYN: the sender of the first packet, unless it alone uses a
    port below 1024 (then it is the server)."""
    if first[1] < 1024 <= other[1]:
        return other, first
    return first, other


def read_reference(pcap, timeout: float = 600) -> Reference:
    """tshark's view of every TCP and UDP flow of pcap (see the module's doc)."""
    args = ["-2", "-r", pcap, "-Y", "(tcp or udp) and not icmp and not icmpv6", "-T", "fields",
            "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in FIELDS:
        args += ["-e", f]
    out = _tshark(args, timeout)
    rows = []
    for line in out.splitlines():
        v = line.split("\t")
        v += [""] * (len(FIELDS) - len(v))
        rows.append(dict(zip(FIELDS, v)))

    # First pass: per stream, the packets in order; who is the client.
    streams: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if r["tcp.stream"]:
            streams.setdefault(("tcp", int(r["tcp.stream"])), []).append(r)
        elif r["udp.stream"]:
            streams.setdefault(("udp", int(r["udp.stream"])), []).append(r)

    flows = []
    owner: dict = {}
    for (proto, idx), pkts in sorted(streams.items()):
        def ends(r):
            src = norm_ip(r["ip.src"].split(",")[0] or r["ipv6.src"].split(",")[0])
            dst = norm_ip(r["ip.dst"].split(",")[0] or r["ipv6.dst"].split(",")[0])
            sp = int(r[f"{proto}.srcport"].split(",")[0])
            dp = int(r[f"{proto}.dstport"].split(",")[0])
            return (src, sp), (dst, dp)

        first_src, first_dst = ends(pkts[0])
        client = server = None
        if proto == "tcp":
            for r in pkts:
                fl = int(r["tcp.flags"], 16)
                if fl & SYN and not fl & ACK:
                    client, server = ends(r)
                    break
        if client is None:
            client, server = _orient(first_src, first_dst)
        v6 = ":" in client[0]
        f = FlowRef(protocol=proto, stream=idx, ip_version=6 if v6 else 4, client=client, server=server,
                    first_ns=_ns(pkts[0]["frame.time_epoch"]), last_ns=_ns(pkts[-1]["frame.time_epoch"]),
                    first_src=first_src)
        server_spoke = False
        client_syn_seen = False
        for r in pkts:
            src, _ = ends(r)
            d = f.c2s if src == client else f.s2c
            owner[int(r["frame.number"])] = (f, "client_to_server" if src == client else "server_to_client")
            d.packets += 1
            d.bytes += int(r["frame.len"])
            f.frames.append(int(r["frame.number"]))
            f.last_ns = max(f.last_ns, _ns(r["frame.time_epoch"]))
            if proto == "udp":
                d.payload_bytes += int(r["udp.length"].split(",")[0]) - 8
                continue
            d.payload_bytes += int(r["tcp.len"] or 0)
            fl = int(r["tcp.flags"], 16)
            if fl & SYN:
                d.syns += 1
            if fl & FIN:
                d.fins += 1
            if fl & RST:
                d.resets += 1
            for counter in _verdicts(r):
                setattr(d, counter, getattr(d, counter) + 1)
            if r["tcp.analysis.initial_rtt"]:
                f.initial_rtt_us = float(r["tcp.analysis.initial_rtt"].split(",")[0]) * 1e6
            if r["tcp.completeness"]:
                f.completeness = int(r["tcp.completeness"].split(",")[0])
            if src == client:
                if fl & SYN and not fl & ACK:
                    client_syn_seen = True
            else:
                if fl & SYN and fl & ACK:
                    f.synack = True
                if fl & RST and client_syn_seen and not f.synack and not server_spoke:
                    f.refused = True
                server_spoke = True
        if proto == "tcp" and client_syn_seen and not server_spoke:
            f.unanswered = True
        flows.append(f)

    conv = {p: conv_table(pcap, p, timeout) for p in ("tcp", "udp")}
    return Reference(pcap=str(pcap), flows=flows, conv=conv, frames=len(rows), owner=owner)


def _verdicts(r: dict) -> set[str]:
    """The counters tshark's analysis adds a frame (its fields row) to."""
    out = {counter for fld, counter in ANALYSIS.items() if r.get(fld)}
    if any(r.get(x) for x in RETRANSMISSION_FIELDS):
        out.add("retransmissions")
    return out


def _verdicts_by_frame(pcap, timeout: float) -> dict[int, set[str]]:
    fields = ["frame.number"] + list(RETRANSMISSION_FIELDS) + [f for f in ANALYSIS if f not in RETRANSMISSION_FIELDS]
    args = ["-2", "-r", pcap, "-Y", "tcp and not icmp and not icmpv6", "-T", "fields", "-E", "separator=\t",
            "-E", "occurrence=a", "-E", "aggregator=,"]
    for f in fields:
        args += ["-e", f]
    out = {}
    for line in _tshark(args, timeout).splitlines():
        v = line.split("\t")
        v += [""] * (len(fields) - len(v))
        r = dict(zip(fields, v))
        out[int(r["frame.number"])] = _verdicts(r)
    return out


def jitter_pcap(src, dst, jitter_us: float, seed: int, sign: int = 1) -> bool:
    """Copies a pcap (not pcapng) moving every frame's timestamp by a random
    amount within +-jitter_us (sign -1: the opposite amounts of the same seed),
    but never before the previous frame's. False if src is not a pcap file."""
    import random
    import struct
    data = Path(src).read_bytes()
    if len(data) < 24:
        return False
    for endian in ("<", ">"):
        magic = struct.unpack_from(endian + "I", data, 0)[0]
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            break
    else:
        return False
    per_sec = 1_000_000_000 if magic == 0xA1B23C4D else 1_000_000
    rng = random.Random(seed)
    out = bytearray(data[:24])
    off = 24
    prev = 0
    while off + 16 <= len(data):
        sec, frac, incl, orig = struct.unpack_from(endian + "IIII", data, off)
        t = sec * per_sec + frac + sign * round(rng.uniform(-jitter_us, jitter_us) * per_sec / 1_000_000)
        t = prev = max(t, prev)  # a clock does not go back: the order of the frames stays
        out += struct.pack(endian + "IIII", t // per_sec, t % per_sec, incl, orig)
        out += data[off + 16: off + 16 + incl]
        off += 16 + incl
    Path(dst).write_bytes(bytes(out))
    return True


def add_timing_slack(ref: Reference, jitter_us: float = 20.0, runs: int = 2, timeout: float = 600) -> int:
    """Some of tshark's verdicts depend on time: a fast retransmission comes
    within 20 ms of the last dup-ack, an out-of-order segment within the
    handshake RTT of the highest segment (3 ms without one). The sensor's
    clock and capture point are not tcpdump's: a packet is stamped a few
    microseconds apart, so a verdict whose time lies within microseconds of
    its threshold may go the other way on a correct sensor. This finds those
    frames: tshark again on copies of the capture whose timestamps moved by
    up to +-jitter_us (opposite moves in alternate runs); each frame whose
    verdict changes is one count of slack in its flow's direction and
    counter (FlowRef.slack), which compare() allows. Returns the number of
    such frames (usually 0 or a few); 0 for a pcapng."""
    base = _verdicts_by_frame(ref.pcap, timeout)
    flipped: set[tuple[int, str]] = set()
    with tempfile.TemporaryDirectory(prefix="twflowref-") as d:
        for i in range(runs):
            tmp = Path(d) / f"jitter{i}.pcap"
            if not jitter_pcap(ref.pcap, tmp, jitter_us, seed=1 + i // 2, sign=1 if i % 2 == 0 else -1):
                return 0
            other = _verdicts_by_frame(tmp, timeout)
            for num, v in base.items():
                for counter in v ^ other.get(num, set()):
                    flipped.add((num, counter))
    for f in ref.flows:
        f.slack = {}
    for num, counter in flipped:
        if num in ref.owner:
            f, dname = ref.owner[num]
            f.slack[(dname, counter)] = f.slack.get((dname, counter), 0) + 1
    return len({n for n, _ in flipped})


def check_conv(ref: Reference) -> list[str]:
    """The per-frame counts against tshark's own conversation tables: every
    conversation is one flow (A = its first packet's source), frames per
    direction equal, bytes within the printed unit. Returns the differences."""
    diffs = []
    by_key: dict[tuple, list[FlowRef]] = {}
    for f in ref.flows:
        by_key.setdefault(f.key(), []).append(f)
    seen = set()
    for proto, convs in ref.conv.items():
        for c in convs:
            fl = by_key.get((proto, frozenset((c.a, c.b))))
            if not fl:
                diffs.append(f"conv,{proto}: {c.a} <-> {c.b} has no flow in the frames")
                continue
            if len(fl) > 1:
                continue  # the 4-tuple was reused: the table sums the streams
            f = fl[0]
            seen.add(id(f))
            if f.first_src != c.a:
                diffs.append(f"{f.name()}: conv,{proto} address A is {c.a}, the first packet came from {f.first_src}")
            a2b, b2a = (f.c2s, f.s2c) if f.client == c.a else (f.s2c, f.c2s)
            for what, cd, d in (("->", c.a_to_b, a2b), ("<-", c.b_to_a, b2a)):
                if cd.frames != d.packets or not cd.holds(d.bytes):
                    diffs.append(f"{f.name()}: conv,{proto} {what}: {cd.frames} frames, {cd.bytes} bytes "
                                 f"(unit {cd.unit}); the frames: {d.packets} frames, {d.bytes} bytes")
    for f in ref.flows:
        if id(f) not in seen and len(by_key[f.key()]) == 1:
            diffs.append(f"{f.name()}: not in tshark's conv,{f.protocol} table")
    return diffs


# --------------------------------------------------------------------------
# Reading tapwire's records

def record_ends(rec: dict) -> tuple[tuple[str, int], tuple[str, int]]:
    c, s = rec.get("client") or {}, rec.get("server") or {}
    return (norm_ip(str(c.get("ip"))), int(c.get("port") or 0)), (norm_ip(str(s.get("ip"))), int(s.get("port") or 0))


def record_name(rec: dict) -> str:
    c, s = record_ends(rec)
    return f"{rec.get('protocol')} {c[0]}:{c[1]} -> {s[0]}:{s[1]} (tapwire id {rec.get('id')})"


def parse_jsonl(text: str) -> tuple[list[dict], list[str]]:
    """JSON lines -> (records, lines that are not JSON objects)."""
    recs, bad = [], []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            o = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if isinstance(o, dict):
            recs.append(o)
        else:
            bad.append(line)
    return recs, bad


def _ts_ns(s) -> int | None:
    """RFC 3339 with up to nanoseconds -> ns since the epoch."""
    if not isinstance(s, str):
        return None
    m = re.match(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z$", s)
    if not m:
        return None
    secs = calendar.timegm(tuple(int(x) for x in m.groups()[:6]) + (0, 0, 0))
    return secs * 1_000_000_000 + int(((m.group(7) or "") + "000000000")[:9])


# --------------------------------------------------------------------------
# (c) the comparison

def rtt_close(got, want: float, rel: float = 0.15, abs_us: float = 100.0) -> bool:
    return isinstance(got, (int, float)) and not isinstance(got, bool) and abs(got - want) <= max(rel * want, abs_us)


def compare(ref: Reference, records: list[dict], *, counters: tuple[str, ...] = COUNTERS,
            check_bytes: bool = True, check_rtt: bool = True, check_completeness: bool = True,
            check_states: tuple[str, ...] = ("refused", "unanswered"), live: bool = False,
            only=None, ignore_record=None, rtt_rel: float = 0.15, rtt_abs_us: float = 100.0,
            time_tol_ms: float | None = 50.0, use_slack: bool = True) -> list[str]:
    """tapwire's flow records against tshark's flows, matched by protocol and
    addresses/ports (several flows on one 4-tuple: in order of first packet).
    Every flow of the reference (those `only(flow)` accepts) must have one
    record and every record (but those `ignore_record(rec)` accepts) a flow.
    Checked: client/server orientation, ip_version, per direction packets,
    bytes and payload bytes, the counters, handshake RTT (within rtt_rel or
    rtt_abs_us), completeness, the states in check_states (`unanswered` may
    be `syn_sent` when live), the `refused`/`unanswered`/`retransmitting`
    flags, first_seen/last_seen within time_tol_ms of tshark's (None: not
    checked; two capture points stamp a packet a few microseconds apart, a
    clock converted from CLOCK_MONOTONIC may be off a little more). With
    use_slack, a counter may differ by the frames add_timing_slack() found
    on a threshold (none unless it was called); records made from the same
    file (--pcap) have tshark's timestamps: use_slack=False. Returns
    readable differences (empty: equal)."""
    diffs: list[str] = []
    flows = [f for f in ref.flows if only is None or only(f)]
    by_key: dict[tuple, list[FlowRef]] = {}
    for f in flows:
        by_key.setdefault(f.key(), []).append(f)
    recs_by_key: dict[tuple, list[dict]] = {}
    ids: dict[str, int] = {}
    for r in records:
        if ignore_record is not None and ignore_record(r):
            continue
        c, s = record_ends(r)
        recs_by_key.setdefault((r.get("protocol"), frozenset((c, s))), []).append(r)
        ids[str(r.get("id"))] = ids.get(str(r.get("id")), 0) + 1
    for i, n in ids.items():
        if n > 1:
            diffs.append(f"flow id {i} is in {n} records")

    for key in sorted(set(by_key) | set(recs_by_key), key=lambda k: (k[0] or "", sorted(map(str, k[1])))):
        fl = sorted(by_key.get(key, []), key=lambda f: f.first_ns)
        rl = sorted(recs_by_key.get(key, []), key=lambda r: _ts_ns(r.get("first_seen")) or 0)
        for f in fl[len(rl):]:
            diffs.append(f"{f.name()}: no tapwire record ({f.c2s.packets}+{f.s2c.packets} packets, "
                         f"state {f.expected_state()})")
        for r in rl[len(fl):]:
            diffs.append(f"{record_name(r)}: a record tshark has no flow for: {json.dumps(r)[:400]}")
        for f, r in zip(fl, rl):
            diffs += _compare_one(f, r, counters=counters, check_bytes=check_bytes, check_rtt=check_rtt,
                                  check_completeness=check_completeness, check_states=check_states, live=live,
                                  rtt_rel=rtt_rel, rtt_abs_us=rtt_abs_us, time_tol_ms=time_tol_ms,
                                  use_slack=use_slack)
    return diffs


def _compare_one(f: FlowRef, r: dict, *, counters, check_bytes, check_rtt, check_completeness, check_states,
                 live, rtt_rel, rtt_abs_us, time_tol_ms, use_slack) -> list[str]:
    d = []
    name = f.name()

    def differ(what, got, want):
        d.append(f"{name}: {what}: tapwire {got!r}, tshark {want!r}")

    c, s = record_ends(r)
    if (c, s) != (f.client, f.server):
        differ("client -> server", f"{c} -> {s}", f"{f.client} -> {f.server}")
        return d
    if r.get("ip_version") != f.ip_version:
        differ("ip_version", r.get("ip_version"), f.ip_version)
    if time_tol_ms is not None:
        for k, want in (("first_seen", f.first_ns), ("last_seen", f.last_ns)):
            got = _ts_ns(r.get(k))
            if got is None or abs(got - want) > time_tol_ms * 1e6:
                differ(k, r.get(k), _rfc3339(want))
    for dname, ref_dir in (("client_to_server", f.c2s), ("server_to_client", f.s2c)):
        got = r.get(dname)
        if not isinstance(got, dict):
            differ(dname, got, vars(ref_dir))
            continue
        keys = ["packets"] + (["bytes", "payload_bytes"] if check_bytes else [])
        if f.protocol == "tcp":
            keys += list(counters)
        for k in keys:
            want, have = getattr(ref_dir, k), got.get(k)
            slack = f.slack.get((dname, k), 0) if use_slack else 0
            if have == want:
                continue
            if slack and isinstance(have, int) and abs(have - want) <= slack:
                continue
            differ(f"{dname}.{k}", have, want if not slack else f"{want} (+-{slack}: verdicts on a time threshold)")
    if f.protocol == "tcp":
        rtt = r.get("handshake_rtt_us")
        if check_rtt:
            if f.initial_rtt_us is None:
                if rtt is not None:
                    differ("handshake_rtt_us", rtt, None)
            elif f.synack:
                if not rtt_close(rtt, f.initial_rtt_us, rtt_rel, rtt_abs_us):
                    differ("handshake_rtt_us", rtt, round(f.initial_rtt_us, 1))
            elif rtt is not None and not rtt_close(rtt, f.initial_rtt_us, rtt_rel, rtt_abs_us):
                # no handshake (a SYN answered by RST): null, or tshark's SYN-to-RST time
                differ("handshake_rtt_us (no SYN-ACK: null or tshark's)", rtt, round(f.initial_rtt_us, 1))
        if check_completeness and f.completeness is not None and r.get("completeness") != f.completeness:
            differ("completeness", r.get("completeness"), f.completeness)
        want = f.expected_state()
        if want in check_states:
            ok = {want} | ({"syn_sent"} if want == "unanswered" and live else set())
            if r.get("state") not in ok:
                differ("state", r.get("state"), " or ".join(sorted(ok)))
        flags = r.get("flags") or []
        for st in ("refused", "unanswered"):
            if r.get("state") == st and st not in flags:
                differ("flags", flags, f"{st} in it (state {st})")
        retrans = sum((r.get(x) or {}).get("retransmissions") or 0 for x in ("client_to_server", "server_to_client"))
        if ("retransmitting" in flags) != (retrans > 0):
            differ("flags: retransmitting", flags, f"as the record's {retrans} retransmissions say")
    return d


def _rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{ns % 1_000_000_000:09d}Z"


END_OF_STATE = {"closed": "fin", "reset": "rst", "refused": "rst", "unanswered": "timeout"}


def synthesize_records(ref: Reference, node: str = "reference") -> list[dict]:
    """The records docs/FLOWS.md asks for, made from tshark's view: what a
    correct `tapwire flows --json` prints for this capture (identity and
    names left out). compare(ref, synthesize_records(ref)) is empty; the
    tests use it to check the comparison itself."""
    recs = []
    for f in ref.flows:
        def ep(a):
            return {"ip": a[0], "port": a[1]}

        def d(x: DirRef) -> dict:
            o = {"packets": x.packets, "bytes": x.bytes, "payload_bytes": x.payload_bytes}
            if f.protocol == "tcp":
                o.update({k: getattr(x, k) for k in COUNTERS})
            return o
        state = f.expected_state() or "ended"
        flags = []
        if f.protocol == "tcp":
            flags += [s for s in ("unanswered", "refused", "reset") if state == s]
            if f.c2s.retransmissions + f.s2c.retransmissions:
                flags.append("retransmitting")
            if not f.c2s.syns:
                flags.append("mid_stream")
        fid = hashlib.sha256(f"{ref.pcap} {f.protocol} {f.stream}".encode()).hexdigest()[:16]
        rec = {"id": fid, "node": node,
               "protocol": f.protocol, "ip_version": f.ip_version, "client": ep(f.client), "server": ep(f.server),
               "first_seen": _rfc3339(f.first_ns), "last_seen": _rfc3339(f.last_ns),
               "duration_us": (f.last_ns - f.first_ns) // 1000, "state": state,
               "end": END_OF_STATE.get(state, "stopped"),
               "client_to_server": d(f.c2s), "server_to_client": d(f.s2c), "flags": flags}
        if f.protocol == "tcp":
            rec["completeness"] = f.completeness
            rec["completeness_flags"] = f.completeness_flags()
            rec["handshake_rtt_us"] = round(f.initial_rtt_us, 3) if f.initial_rtt_us is not None else None
        recs.append(rec)
    return recs


# --------------------------------------------------------------------------
# Printing

def describe(ref: Reference) -> list[str]:
    """One line per flow: packets/bytes per direction and the analysis counts."""
    out = [f"{ref.pcap}: {ref.frames} TCP/UDP frames, {len(ref.tcp())} TCP and {len(ref.udp())} UDP flows"]
    for f in ref.flows:
        line = (f"{f.name()}: c2s {f.c2s.packets} pkts {f.c2s.bytes} B, s2c {f.s2c.packets} pkts {f.s2c.bytes} B")
        if f.protocol == "tcp":
            def cnt(d):
                return ",".join(f"{k}={getattr(d, k)}" for k in COUNTERS if getattr(d, k))
            rtt = f"{f.initial_rtt_us:.0f}us" if f.initial_rtt_us is not None else "-"
            line += (f"; rtt {rtt}; completeness {f.completeness}; state {f.expected_state()}"
                     f"; c2s[{cnt(f.c2s)}] s2c[{cnt(f.s2c)}]")
        out.append(line)
    t = ref.totals("tcp")
    out.append("TCP totals: " + ", ".join(f"{k}={t.get(k, 0)}" for k in ("packets", "bytes") + COUNTERS))
    return out


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(description="tshark's view of a capture's flows; compared with tapwire's records")
    ap.add_argument("pcap")
    ap.add_argument("--compare", metavar="JSONL", help="tapwire flows --json output to compare with ('-': stdin)")
    a = ap.parse_args(argv)
    ref = read_reference(a.pcap)
    for line in describe(ref):
        print(line)
    for line in check_conv(ref):
        print("conv table:", line)
    if a.compare:
        text = sys.stdin.read() if a.compare == "-" else Path(a.compare).read_text()
        recs, bad = parse_jsonl(text)
        diffs = compare(ref, recs) + [f"not a JSON object: {b[:200]}" for b in bad]
        for line in diffs:
            print("DIFF", line)
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

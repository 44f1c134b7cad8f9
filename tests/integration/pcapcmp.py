"""Compare two captures the way tshark sees them: TCP payload bytes
reassembled per flow and direction (placed by raw sequence number), and the
multiset of UDP (flow, payload) pairs.

tshark is the reference reader for both files; nothing here parses packets.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections import Counter
from dataclasses import dataclass, field

TSHARK_FIELDS = ["frame.number", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "tcp.srcport", "tcp.dstport",
                 "tcp.seq_raw", "tcp.len", "tcp.flags.syn", "tcp.payload", "tcp.flags", "udp.srcport", "udp.dstport",
                 "udp.payload", "udp.length"]


@dataclass
class Direction:
    """One direction of one TCP flow: byte chunks keyed by raw sequence number."""
    isn: int | None = None  # seq of the SYN, when seen
    first_seq: int | None = None  # seq of the first packet seen
    chunks: list[tuple[int, bytes]] = field(default_factory=list)  # (raw seq, payload)
    packets: int = 0
    syn_seen: bool = False

    def base(self) -> int:
        return (self.isn + 1) & 0xFFFFFFFF if self.isn is not None else self.first_seq


@dataclass
class Capture:
    path: str
    tcp: dict[tuple, Direction] = field(default_factory=dict)  # (src, sport, dst, dport, generation)
    udp: Counter = field(default_factory=Counter)  # ((src, sport, dst, dport), payload hex) -> count
    ctl: Counter = field(default_factory=Counter)  # (flow key, raw seq of a SYN or seq after the payload of a FIN/RST, flags) -> count
    frames: int = 0
    tshark_stderr: str = ""


def _sub32(a: int, b: int) -> int:
    """Signed 32-bit a - b."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= (1 << 31) else d


def read_capture(path: str, timeout: float = 600) -> Capture:
    cmd = ["tshark", "-n", "-r", str(path), "-o", "tcp.desegment_tcp_streams:FALSE",
           "-o", "tcp.analyze_sequence_numbers:FALSE", "-o", "ip.defragment:FALSE",
           "-Y", "(tcp or udp) and not icmp and not icmpv6", "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=f"]
    for f in TSHARK_FIELDS:
        cmd += ["-e", f]
    cap = Capture(str(path))
    gens: dict[tuple, int] = {}  # 4-tuple direction -> generation (bumped by a new SYN)
    last_syn: dict[tuple, int] = {}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            v = line.rstrip("\n").split("\t")
            if len(v) < len(TSHARK_FIELDS):
                v += [""] * (len(TSHARK_FIELDS) - len(v))
            (num, ip4s, ip6s, ip4d, ip6d, tsp, tdp, seq, tlen, syn, tpay, tflags, usp, udp_, upay, ulen) = v
            cap.frames += 1
            src, dst = ip4s or ip6s, ip4d or ip6d
            if tsp:
                key4 = (src, int(tsp), dst, int(tdp))
                seq = int(seq)
                if syn in ("1", "True"):
                    if key4 in last_syn and last_syn[key4] != seq:
                        gens[key4] = gens.get(key4, 0) + 1  # a new connection on the same 4-tuple
                    last_syn[key4] = seq
                key = key4 + (gens.get(key4, 0),)
                d = cap.tcp.get(key)
                if d is None:
                    d = cap.tcp[key] = Direction()
                d.packets += 1
                if d.first_seq is None:
                    d.first_seq = seq
                if syn in ("1", "True"):
                    d.isn = seq
                    d.syn_seen = True
                fl = int(tflags, 16) if tflags else 0
                if fl & 0x07:
                    names = "+".join(n for bit, n in ((2, "SYN"), (1, "FIN"), (4, "RST")) if fl & bit)
                    # A FIN or RST sits after the packet's payload: keyed by
                    # that position, the same whether the sender's large
                    # segment was captured whole or in chunks (each chunk a
                    # segment of its own, the flag on the last one).
                    at = seq if fl & 0x02 else (seq + int(tlen or 0)) & 0xFFFFFFFF
                    cap.ctl[(key, at, names)] += 1
                n = int(tlen or 0)
                if n:
                    # fewer bytes than tcp.len when the file was cut by a snap length: keep what is there
                    data = bytes.fromhex(tpay.replace(":", "")) if tpay else b""
                    d.chunks.append((seq, data))
            elif usp:
                key4 = (src, int(usp), dst, int(udp_))
                cap.udp[(key4, upay.replace(":", ""))] += 1
        p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    cap.tshark_stderr = p.stderr.read()
    p.stdout.close()
    p.stderr.close()
    if p.returncode != 0:
        raise RuntimeError(f"tshark failed on {path} ({p.returncode}): {cap.tshark_stderr.strip()}")
    return cap


@dataclass
class Stream:
    data: bytearray
    covered: list[tuple[int, int]]  # merged [start, end) intervals
    conflicts: list[int]  # offsets where overlapping chunks disagreed


def assemble(d: Direction, base: int) -> tuple[Stream, int]:
    """Places d's chunks at their offset from base. Returns the stream and
    lo, the offset of its first byte (negative if this capture has bytes
    before base, e.g. before the reference's first byte); covered and
    conflicts are offsets from base."""
    placed = []
    lo = 0
    for seq, data in d.chunks:
        off = _sub32(seq, base)
        placed.append((off, data))
        lo = min(lo, off)
    hi = max((off + len(data) for off, data in placed), default=0)
    buf = bytearray(hi - lo)
    cov = []
    conflicts = []
    written = bytearray(hi - lo)  # 1 where some chunk already wrote
    for off, data in placed:
        s = off - lo
        if not data:
            continue
        seg = buf[s:s + len(data)]
        w = written[s:s + len(data)]
        if 1 in w:
            # overlapping retransmission: must carry the same bytes where both wrote
            if 0 not in w:
                if seg != data:
                    conflicts.append(off + _first_diff(bytes(seg), data))
            else:
                for i in range(len(data)):
                    if w[i] and seg[i] != data[i]:
                        conflicts.append(off + i)
                        break
        buf[s:s + len(data)] = data
        written[s:s + len(data)] = b"\x01" * len(data)
        cov.append((off, off + len(data)))
    cov.sort()
    merged: list[tuple[int, int]] = []
    for a, b in cov:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return Stream(data=buf, covered=merged, conflicts=conflicts), lo


def fmt_flow(key: tuple) -> str:
    src, sp, dst, dp = key[:4]
    gen = key[4] if len(key) > 4 else 0
    s = f"{src}:{sp} -> {dst}:{dp}" if ":" not in src else f"[{src}]:{sp} -> [{dst}]:{dp}"
    return s + (f" (connection #{gen + 1} on this 4-tuple)" if gen else "")


@dataclass
class Comparison:
    tcp_flows_ref: int = 0
    tcp_dirs_compared: int = 0
    tcp_bytes_compared: int = 0
    udp_datagrams: int = 0
    udp_bytes: int = 0
    v4_flows: int = 0
    v6_flows: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"TCP: {self.tcp_flows_ref} connections, {self.tcp_dirs_compared} flow directions, "
                f"{self.tcp_bytes_compared} payload bytes compared; UDP: {self.udp_datagrams} datagrams, "
                f"{self.udp_bytes} payload bytes; IPv4 flows {self.v4_flows}, IPv6 flows {self.v6_flows}")


def _first_diff(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    # coarse then fine
    step = 4096
    i = 0
    while i < n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def compare(ref: Capture, got: Capture, max_problems: int = 40) -> Comparison:
    """ref: the reference capture (tcpdump). got: the capture under test."""
    c = Comparison()
    P = c.problems

    def problem(msg: str):
        if len(P) < max_problems:
            P.append(msg)
        elif len(P) == max_problems:
            P.append("... (more problems not shown)")

    ref_keys, got_keys = set(ref.tcp), set(got.tcp)
    for k in sorted(ref_keys - got_keys):
        d = ref.tcp[k]
        problem(f"TCP flow direction missing from {got.path}: {fmt_flow(k)} "
                f"({d.packets} packets, {sum(len(x) for _, x in d.chunks)} payload bytes in reference)")
    for k in sorted(got_keys - ref_keys):
        problem(f"TCP flow direction not in reference but in {got.path}: {fmt_flow(k)}")
    conns = set()
    for k in sorted(ref_keys & got_keys):
        rd, gd = ref.tcp[k], got.tcp[k]
        conns.add(tuple(sorted([(k[0], k[1]), (k[2], k[3])])) + (k[4],))
        base = rd.base()
        (rs, rlo), (gs, glo) = assemble(rd, base), assemble(gd, base)
        c.tcp_dirs_compared += 1
        if rd.syn_seen != gd.syn_seen:
            problem(f"{fmt_flow(k)}: SYN seen in reference={rd.syn_seen}, in {got.path}={gd.syn_seen}")
        elif rd.syn_seen and rd.isn != gd.isn:
            problem(f"{fmt_flow(k)}: ISN differs: reference {rd.isn}, got {gd.isn}")
        if rs.conflicts:
            problem(f"{fmt_flow(k)}: reference has retransmissions with different bytes at offsets {rs.conflicts[:5]}")
        if gs.conflicts:
            problem(f"{fmt_flow(k)}: overlapping segments with different bytes in {got.path} at stream offsets "
                    f"{gs.conflicts[:5]}")
        if rs.covered != gs.covered:
            rb = sum(b - a for a, b in rs.covered)
            gb = sum(b - a for a, b in gs.covered)
            problem(f"{fmt_flow(k)}: byte ranges differ (offsets from ISN+1): reference {rb} bytes in "
                    f"{_fmt_ranges(rs.covered)}; {got.path}: {gb} bytes in {_fmt_ranges(gs.covered)}")
        ra, ga = bytes(rs.data), bytes(gs.data)
        if rlo == glo and ra == ga:
            c.tcp_bytes_compared += len(ra)
        elif rs.covered == gs.covered:
            i = _first_diff(ra, ga)
            problem(f"{fmt_flow(k)}: payload bytes differ at stream offset {i + rlo} (of {len(ra)}): "
                    f"reference {ra[i:i + 16].hex()} vs {ga[i:i + 16].hex()}")
    for k in conns:
        if ":" in k[0][0]:
            c.v6_flows += 1
        else:
            c.v4_flows += 1
    c.tcp_flows_ref = len({tuple(sorted([(k[0], k[1]), (k[2], k[3])])) + (k[4],) for k in ref_keys})

    # TCP lifecycle: every SYN, FIN and RST, once each
    if ref.ctl != got.ctl:
        for (k, seq, fl), n in sorted((ref.ctl - got.ctl).items())[:10]:
            problem(f"{fmt_flow(k)}: {fl} at seq {seq} seen {n}x more in the reference than in {got.path}")
        for (k, seq, fl), n in sorted((got.ctl - ref.ctl).items())[:10]:
            problem(f"{fmt_flow(k)}: {fl} at seq {seq} seen {n}x more in {got.path} than in the reference")

    # UDP: multiset of (flow, payload)
    if ref.udp != got.udp:
        missing = ref.udp - got.udp
        extra = got.udp - ref.udp
        for (k, pay), n in list(missing.items())[:10]:
            problem(f"UDP datagram missing from {got.path} (x{n}): {fmt_flow(k)} payload {pay[:64]}... "
                    f"({len(pay) // 2} bytes)")
        for (k, pay), n in list(extra.items())[:10]:
            problem(f"UDP datagram not in reference but in {got.path} (x{n}): {fmt_flow(k)} payload {pay[:64]}... "
                    f"({len(pay) // 2} bytes)")
    udp_flows = set()
    for (k, pay), n in ref.udp.items():
        c.udp_datagrams += n
        c.udp_bytes += n * len(pay) // 2
        udp_flows.add(tuple(sorted([(k[0], k[1]), (k[2], k[3])])))
    for f in udp_flows:
        if ":" in f[0][0]:
            c.v6_flows += 1
        else:
            c.v4_flows += 1
    return c


def _fmt_ranges(r: list[tuple[int, int]], limit: int = 6) -> str:
    s = ", ".join(f"[{a},{b})" for a, b in r[:limit])
    return s + (f", ... ({len(r)} ranges)" if len(r) > limit else "")


def digest(cap: Capture) -> str:
    h = hashlib.sha256()
    for k in sorted(cap.tcp):
        d = cap.tcp[k]
        s, lo = assemble(d, d.base())
        h.update(repr(k).encode() + bytes(s.data))
    return h.hexdigest()


SEV_WARN = 0x00600000
SEV_ERROR = 0x00800000


@dataclass
class FileCheck:
    frames: int = 0
    interfaces: Counter = field(default_factory=Counter)
    malformed: int = 0
    errors: Counter = field(default_factory=Counter)  # expert message -> count, severity >= error
    warnings: Counter = field(default_factory=Counter)  # severity == warn
    first_frame: dict = field(default_factory=dict)  # expert message -> first frame number with it
    t_min: float = 0.0
    t_max: float = 0.0
    inversions: int = 0  # frames whose timestamp is earlier than the previous frame's
    first_inversion: str = ""
    stderr: str = ""
    returncode: int = 0


def check_file(path: str, timeout: float = 600) -> FileCheck:
    """Opens a capture with tshark: exit status, stderr, interface names,
    time range, malformed packets and expert infos of warning level or above."""
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a",
           "-E", "aggregator=|", "-e", "frame.interface_name", "-e", "frame.time_epoch", "-e", "_ws.malformed",
           "-e", "_ws.expert.severity", "-e", "_ws.expert.message"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    fc = FileCheck(returncode=r.returncode)
    fc.stderr = "\n".join(l for l in r.stderr.splitlines() if "Running as user" not in l).strip()
    tmin, tmax = None, None
    for line in r.stdout.splitlines():
        v = line.split("\t") + [""] * 5
        fc.frames += 1
        fc.interfaces[v[0]] += 1
        if v[1]:
            t = float(v[1])
            if tmax is not None and t < tmax:
                fc.inversions += 1
                if not fc.first_inversion:
                    fc.first_inversion = (f"frame {fc.frames} has time {v[1]}, {(tmax - t) * 1e6:.0f} us before an "
                                          f"earlier frame's {tmax:.9f}")
            tmin = t if tmin is None else min(tmin, t)
            tmax = t if tmax is None else max(tmax, t)
        if v[2]:
            fc.malformed += 1
        if v[3]:
            for sev, msg in zip(v[3].split("|"), v[4].split("|") + [""] * 20):
                s = int(sev or 0)
                if s >= SEV_ERROR:
                    fc.errors[msg] += 1
                elif s >= SEV_WARN:
                    fc.warnings[msg] += 1
                else:
                    continue
                fc.first_frame.setdefault(msg, fc.frames)
    fc.t_min, fc.t_max = tmin or 0.0, tmax or 0.0
    return fc


def compare_subset(ref: Capture, got: Capture, max_problems: int = 40) -> tuple[int, list[str]]:
    """Every TCP byte in got must be in ref at the same stream offset with the
    same value, every got flow direction must exist in ref and every UDP
    datagram of got must be in ref (for captures that end early, e.g. after a
    crash). Returns (bytes checked, problems)."""
    problems: list[str] = []
    checked = 0
    for k, gd in sorted(got.tcp.items()):
        rd = ref.tcp.get(k)
        if rd is None:
            problems.append(f"TCP flow direction {fmt_flow(k)} in {got.path} but not in the reference")
            continue
        base = rd.base()
        (rs, rlo), (gs, glo) = assemble(rd, base), assemble(gd, base)
        for a, b in gs.covered:
            for ra, rb in rs.covered:
                if ra <= a and b <= rb:
                    break
            else:
                problems.append(f"{fmt_flow(k)}: bytes [{a},{b}) in {got.path} not in the reference")
                continue
            gbytes = bytes(gs.data[a - glo:b - glo])
            rbytes = bytes(rs.data[a - rlo:b - rlo])
            if gbytes != rbytes:
                i = _first_diff(rbytes, gbytes)
                problems.append(f"{fmt_flow(k)}: bytes differ at stream offset {a + i}: reference "
                                f"{rbytes[i:i + 16].hex()} vs {gbytes[i:i + 16].hex()}")
            checked += b - a
        if len(problems) >= max_problems:
            break
    extra = got.udp - ref.udp
    for (k, pay), n in list(extra.items())[:10]:
        problems.append(f"UDP datagram in {got.path} but not in the reference (x{n}): {fmt_flow(k)} {pay[:64]}")
    return checked, problems


def stream_bytes(cap: Capture, key: tuple) -> bytes:
    """The reassembled stream of one flow direction (holes zero-filled)."""
    d = cap.tcp[key]
    s, lo = assemble(d, d.base())
    return bytes(s.data[-lo:]) if lo < 0 else bytes(s.data)


def icmp_message_bytes(path: str, timeout: float = 600) -> int:
    """The bytes of the ICMP and ICMPv6 messages in a capture (each message
    whole, its header included: what the sensor records of one), as tshark
    reads the IP headers: IPv4 total length minus header length, IPv6 payload
    length minus its extension headers."""
    cmd = ["tshark", "-n", "-r", str(path), "-o", "ip.defragment:FALSE", "-Y", "icmp or icmpv6", "-T", "fields",
           "-E", "separator=\t", "-E", "occurrence=f", "-e", "ip.len", "-e", "ip.hdr_len", "-e", "ipv6.plen",
           "-e", "ipv6.hopopts.len_oct", "-e", "ipv6.dstopts.len_oct"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout
    total = 0
    for line in out.splitlines():
        f = (line.split("\t") + [""] * 5)[:5]
        num = lambda s: int(s) if s else 0  # noqa: E731
        if f[0]:
            total += num(f[0]) - num(f[1])
        elif f[2]:
            total += num(f[2]) - num(f[3]) - num(f[4])
    return total

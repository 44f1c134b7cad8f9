#!/usr/bin/env python3
"""Crafted hostile captures for the dissector (tests/integration/test_dissect_hostile.py).

Each capture is a classic pcap (link type RAW, IPv4, microsecond timestamps)
written with the standard library only, followed by canary calls: ordinary
keep-alive HTTP connections (handshake, GET, 200 with a small body, FIN) made
after the attack. Next to FILE.pcap, FILE.pcap.json says what the script put
there: the scenario, its size, and every canary call as
[client ip, client port, server ip, server port, method, path, status], the
key tests/integration/dissectref.py's http_key gives a call record. A
dissector that survives the attack dissects every canary, paired.

Scenarios:
  stray    keep-alive connections that each get one stray segment, then keep
           going for 5 s of packet time (past the 2 s hole wait): the stray is
           2^31-1 ahead of the client's next byte (far), 1 MiB ahead (mib),
           just beyond what the dissector accepts out of order (edge: the
           bounded distance of 256 KiB, the connection advertising a smaller
           window), 1 MiB behind (behind), and 2^31-1 ahead of the server's
           next byte (far-resp). Every request on them is a canary.
  ooo      FLOWS connections, each: handshake, one byte in order, then 256
           one-byte segments out of order (every other byte, so that none
           are adjacent), never filled, never closed.
  headers  FLOWS connections, each: handshake, then a request whose header
           block never ends (58 KB of one header field without its line
           end), never closed.

Checksums are left zero (the dissector does not check them, and captures on
hosts with offload have them wrong anyway).

  scripts/craft_captures.py ooo --flows 50000 -o ooo.pcap
"""

import argparse
import json
import struct
import sys
from pathlib import Path

LINKTYPE_RAW = 101
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
T0 = 1_795_000_000  # seconds; any fixed time keeps call ids stable
SERVER = "10.77.0.1"
SERVER_PORT = 80
# What the dissector accepts out of order when the peer's advertised window is
# smaller (ReassemblyLimits::max_ahead_bytes); the `edge` stray lands exactly there.
MAX_AHEAD = 256 * 1024
CANARY_BODY = b"canary-ok\n"


def ip4(s: str) -> bytes:
    return bytes(int(x) for x in s.split("."))


class Pcap:
    """Appends packets to a classic pcap; time is in microseconds."""

    def __init__(self, path: Path):
        self.f = open(path, "wb", buffering=1 << 20)
        self.f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_RAW))
        self.packets = 0
        self.payload_bytes = 0
        self._rec = struct.Struct("<IIII")
        self._ip = struct.Struct("!BBHHHBBH4s4s")
        self._tcp = struct.Struct("!HHIIBBHHH")

    def tcp(self, us: int, src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int, flags: int,
            payload: bytes = b"", window: int = 65535, wscale: int | None = None):
        opts = b""
        if flags & SYN:
            opts = b"\x02\x04\x05\xb4"  # MSS 1460
            if wscale is not None:
                opts += b"\x01\x03\x03" + bytes([wscale])  # NOP, window scale
            opts += b"\x00" * (-len(opts) % 4)
        tcp_len = 20 + len(opts)
        total = 20 + tcp_len + len(payload)
        ip = self._ip.pack(0x45, 0, total, 0, 0x4000, 64, 6, 0, src, dst)
        tcp = self._tcp.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (tcp_len // 4) << 4, flags,
                             window, 0, 0)
        self.f.write(self._rec.pack(T0 + us // 1_000_000, us % 1_000_000, total, total))
        self.f.write(ip)
        self.f.write(tcp)
        self.f.write(opts)
        self.f.write(payload)
        self.packets += 1
        self.payload_bytes += len(payload)

    def close(self):
        self.f.close()


class Conn:
    """One TCP connection; tracks both sides' next sequence numbers."""

    def __init__(self, pcap: Pcap, client: str, cport: int, server: str = SERVER, sport: int = SERVER_PORT,
                 window: int = 65535, wscale: int | None = 7):
        self.p, self.c, self.cp, self.s, self.sp = pcap, ip4(client), cport, ip4(server), sport
        self.client, self.server = client, server
        self.window, self.wscale = window, wscale
        self.cseq = (cport * 2654435761) & 0xFFFFFFFF  # ISNs: fixed, varied
        self.sseq = (cport * 40503 + 12345) & 0xFFFFFFFF
        self.cnext = self.snext = 0

    def handshake(self, us: int):
        self.p.tcp(us, self.c, self.cp, self.s, self.sp, self.cseq, 0, SYN, window=self.window, wscale=self.wscale)
        self.p.tcp(us + 50, self.s, self.sp, self.c, self.cp, self.sseq, self.cseq + 1, SYN | ACK,
                   window=self.window, wscale=self.wscale)
        self.cnext, self.snext = self.cseq + 1, self.sseq + 1

    def send(self, us: int, from_client: bool, data: bytes, seq: int | None = None, advance: bool = True):
        """Data in one segment at the side's next byte (or at `seq`)."""
        if from_client:
            s = self.cnext if seq is None else seq
            self.p.tcp(us, self.c, self.cp, self.s, self.sp, s, self.snext, PSH | ACK, data, self.window)
            if advance and seq is None:
                self.cnext += len(data)
        else:
            s = self.snext if seq is None else seq
            self.p.tcp(us, self.s, self.sp, self.c, self.cp, s, self.cnext, PSH | ACK, data, self.window)
            if advance and seq is None:
                self.snext += len(data)

    def fin(self, us: int):
        self.p.tcp(us, self.c, self.cp, self.s, self.sp, self.cnext, self.snext, FIN | ACK, window=self.window)
        self.p.tcp(us + 50, self.s, self.sp, self.c, self.cp, self.snext, self.cnext + 1, FIN | ACK,
                   window=self.window)


def request(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: tapwire.test\r\nUser-Agent: craft\r\n\r\n" % path.encode()


def response() -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: text/plain\r\n\r\n%s" % (
        len(CANARY_BODY), CANARY_BODY)


def exchange(conn: Conn, us: int, path: str, canaries: list) -> int:
    """One request and its response; returns the time after them."""
    conn.send(us, True, request(path))
    conn.send(us + 200, False, response())
    canaries.append([conn.client, conn.cp, conn.server, conn.sp, "GET", path, 200])
    return us + 400


def canary_connections(pcap: Pcap, us: int, canaries: list, conns: int = 20, per_conn: int = 5) -> int:
    """Clean keep-alive connections from 10.78.0.0/16 after the attack."""
    for i in range(conns):
        c = Conn(pcap, f"10.78.{i // 250}.{i % 250 + 1}", 50000 + i)
        c.handshake(us)
        us += 200
        for k in range(per_conn):
            us = exchange(c, us, f"/canary/{i}/{k}", canaries)
        c.fin(us)
        us += 200
    return us


def client_addr(i: int) -> tuple[str, int]:
    """A distinct (address, port) for attack flow i: 10.1.0.0/16, ports 1024-60999."""
    host = i // 59976
    return f"10.1.{host // 250}.{host % 250 + 1}", 1024 + i % 59976


# ----------------------------------------------------------------- scenarios --

STRAYS = {
    # name: (direction, offset of the stray's first byte from that side's next byte, window, wscale)
    "far": (True, 2**31 - 1, 65535, 7),
    "mib": (True, 1 << 20, 502, 7),  # advertises 64 KiB: 1 MiB is beyond the window and the bound
    "edge": (True, MAX_AHEAD, 502, 7),  # the first byte past the bounded distance (window smaller)
    "behind": (True, -(1 << 20), 65535, 7),
    "far-resp": (False, 2**31 - 1, 65535, 7),
}


def stray(pcap: Pcap, args) -> dict:
    canaries = []
    us = 0
    for n, (name, (from_client, off, window, wscale)) in enumerate(STRAYS.items()):
        c = Conn(pcap, f"10.2.0.{n + 1}", 40000 + n, window=window, wscale=wscale)
        c.handshake(us)
        us += 1000
        for k in range(args.before):
            us = exchange(c, us + 10_000, f"/{name}/before/{k}", canaries)
        # the stray: 100 bytes that look like a request, at the wrong place
        nxt = c.cnext if from_client else c.snext
        c.send(us + 5000, from_client, b"GET /stray HTTP/1.1\r\nHost: x\r\n\r\n".ljust(100, b"x"),
               seq=(nxt + off) & 0xFFFFFFFF)
        us += 10_000
        # then 5 s of packet time: the hole wait (2 s) passes while the connection goes on
        step = 5_000_000 // args.after
        for k in range(args.after):
            us = exchange(c, us + step, f"/{name}/after/{k}", canaries)
        c.fin(us)
        us += 1000
    us = canary_connections(pcap, us + 10_000, canaries)
    return {"canaries": canaries, "strays": {k: v[1] for k, v in STRAYS.items()}}


def ooo(pcap: Pcap, args) -> dict:
    # 256 one-byte segments at every other offset past one byte in order: 256
    # separate held ranges per flow, none adjacent, none ever filled. All of it
    # within 1 s of packet time per 10k flows: far from the 120 s flow idle time.
    us = 0
    step = max(1, 1_000_000 // 10_000)
    for i in range(args.flows):
        addr, port = client_addr(i)
        c = Conn(pcap, addr, port)
        c.handshake(us)
        c.send(us + 100, True, b"G")
        base = c.cnext
        for k in range(args.segments):
            c.send(us + 101, True, b"E", seq=base + 1 + 2 * k)
        us += step
    canaries = []
    canary_connections(pcap, us + 100_000, canaries)
    return {"canaries": canaries, "flows": args.flows, "segments_per_flow": args.segments}


def headers(pcap: Pcap, args) -> dict:
    # "GET /h/N HTTP/1.1\r\nHost: x\r\nX-Pad: aaaa..." 58 KB, no line end: under the
    # 64 KiB header cap, so it waits for the rest, which never comes.
    us = 0
    pad = b"a" * 1448
    step = max(1, 1_000_000 // 2_000)
    for i in range(args.flows):
        addr, port = client_addr(i)
        c = Conn(pcap, addr, port)
        c.handshake(us)
        head = b"GET /h/%d HTTP/1.1\r\nHost: tapwire.test\r\nX-Pad: " % i
        c.send(us + 100, True, head)
        sent = len(head)
        t = us + 101
        while sent < args.header_bytes:
            chunk = pad[: min(len(pad), args.header_bytes - sent)]
            c.send(t, True, chunk)
            sent += len(chunk)
            t += 1
        us += step
    canaries = []
    canary_connections(pcap, us + 100_000, canaries)
    return {"canaries": canaries, "flows": args.flows, "header_bytes": args.header_bytes}


SCENARIOS = {"stray": stray, "ooo": ooo, "headers": headers}


def craft(scenario: str, out: Path, **kw) -> dict:
    """Writes `out` and `out`.json; returns the manifest. Keyword arguments as the flags."""
    defaults = {"flows": 50000, "segments": 256, "header_bytes": 58 * 1024, "before": 5, "after": 100}
    defaults.update(kw)
    args = argparse.Namespace(**defaults)
    pcap = Pcap(out)
    try:
        manifest = SCENARIOS[scenario](pcap, args)
    finally:
        pcap.close()
    manifest.update({"scenario": scenario, "packets": pcap.packets, "payload_bytes": pcap.payload_bytes,
                     "pcap_bytes": out.stat().st_size})
    Path(str(out) + ".json").write_text(json.dumps(manifest) + "\n")
    return manifest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("-o", "--out", type=Path, required=True, help="the pcap to write (FILE.json beside it)")
    ap.add_argument("--flows", type=int, default=50000, help="attack connections (ooo, headers)")
    ap.add_argument("--segments", type=int, default=256, help="out-of-order one-byte segments per flow (ooo)")
    ap.add_argument("--header-bytes", type=int, default=58 * 1024, help="bytes of the endless header (headers)")
    ap.add_argument("--before", type=int, default=5, help="requests before the stray (stray)")
    ap.add_argument("--after", type=int, default=100, help="requests after the stray (stray)")
    a = ap.parse_args()
    m = craft(a.scenario, a.out, flows=a.flows, segments=a.segments, header_bytes=a.header_bytes,
              before=a.before, after=a.after)
    print(f"{a.out}: {m['packets']} packets, {m['payload_bytes']} payload bytes, {m['pcap_bytes']} bytes, "
          f"{len(m['canaries'])} canary calls", file=sys.stderr)


if __name__ == "__main__":
    main()

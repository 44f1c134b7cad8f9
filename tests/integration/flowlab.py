"""The flow tests' impairment lab: two namespaces joined only through a pair of
TUN devices, with a userspace relay in between that delays, drops and reorders
packets (this kernel has no netem and no sch_fq).

    with FlowLab(to_srv=Impair(drop=0.03, swap=0.03), to_cli=Impair(drop=0.03),
                 delay_ms=5, seed=7) as L:
        tcpd = L.start_tcpdump()                 # on the server's TUN (raw IP, no link header)
        sensor = L.start_sensor()                # the same TUN, in the server namespace
        peers = L.start_peers()                  # TCP source/sink and a UDP echo in the server namespace
        L.fetch(1 << 20); L.bulk_send(1 << 20); L.udp_echo(20)
        L.curl(L.url("/f/1m.bin"))               # nginx (lab.Lab's) works as usual

Layout. `twlab-<pid>-<rand>-srv` and `-cli` (lab.Lab's names: the same sweep of
stale namespaces, the same cleanup) each hold one TUN device (IFF_TUN |
IFF_NO_PI) named `tw<5 hex>s` / `tw<5 hex>c`, created by opening /dev/net/tun
in the root namespace and then moved with `ip link set DEV netns NS` (the file
descriptor keeps working after the move). Addresses are lab.Lab's
(10.199.N.1/.2, fd00:7477:N::1/::2, /24 and /64 on the TUNs: a TUN has no
neighbour discovery, so the on-link route is all either side needs). The
relay (a thread of the test process, epoll on both descriptors) is the only
path between them; when the test process dies, the descriptors close and the
devices vanish.

`srv_veth`/`cli_veth` name the TUNs, so lab.Lab's helpers (start_tcpdump,
start_sensor, curl, dig, nginx, dnsmasq) work unchanged; the server namespace
is where SYNs arrive: capture there ("the receiving TUN").

Impairment (class Impair, one per direction). Every packet is held for the
fixed one-way delay (delay_ms, both directions). Packets "eligible" for
impairment (by default TCP segments that carry payload, so SYNs, FINs and pure
ACKs pass untouched and the handshake RTT is clean) draw three numbers from a
per-direction random.Random(seed) each, in arrival order:
  drop  - the packet is dropped;
  swap  - the packet is held back and sent right after the next eligible
          packet of the same flow (or after swap_hold_ms if none comes);
  late  - the packet is sent late_ms after its due time (later packets pass it).
Packets towards the server's TUN that are dropped or reordered are seen by the
capture as holes, out-of-order segments and retransmissions; packets from it
that are dropped come back as retransmissions (fast, after dup-acks, or on RTO).
With delay_ms = 5 the handshake RTT at the capture point is ~10 ms: a segment
reordered by swap/late (a few ms) comes within one RTT of the highest segment
and tshark calls it out-of-order, a segment resent by the sender comes later
and tshark calls it a (fast) retransmission.

A TUN device has no TSO: the kernel builds GSO packets anyway and segments
them after the TC egress hook, so the sensor's egress program would see a
64 KiB super-packet where tcpdump sees 45 MSS-sized frames. The lab sets
`gso_max_segs 1` on both TUNs (see GSO_MAX_SEGS): TCP then sends MSS-sized
skbs and TC and tcpdump see the same packets, as on a NIC with TSO where both
see the super-packet.

This file is also the lab's traffic program (run in a namespace by the lab):
    flowlab.py serve --source-port P --sink-port P --udp-port P [--lifetime S]
    flowlab.py fetch HOST PORT BYTES [--repeat K]     (TCP: ask the source for BYTES)
    flowlab.py send HOST PORT BYTES [--repeat K]      (TCP: push BYTES to the sink)
    flowlab.py udp HOST PORT COUNT SIZE               (UDP: datagrams to the echo and back)
    flowlab.py connect HOST PORT TIMEOUT              (one connect(): refused / timeout / connected)
Each prints one JSON line with what it did (client ports included).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import heapq
import json
import os
import random
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

SOURCE_PORT, SINK_PORT, UDP_PORT = 9001, 9002, 9003
CLOSED_PORT = 9009        # nothing listens: a SYN is answered by RST (refused)
BLACKHOLE_PORT = 9010     # nft drops SYNs to it in the server namespace's input chain (unanswered)
GSO_MAX_SEGS = 1
DATA_SEED = 0x5EED

THIS = Path(__file__).resolve()


# --------------------------------------------------------------------------
# TUN devices

def open_tun(name: str) -> int:
    """Creates TUN device `name` (IFF_TUN | IFF_NO_PI) in the caller's network
    namespace; returns its non-blocking descriptor. The device lives as long
    as the descriptor (not persistent)."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


# --------------------------------------------------------------------------
# Packets (raw IP, as read from and written to a TUN)

def parse_packet(pkt: bytes) -> dict | None:
    """{"proto": 6/17/..., "key": (src, sport, dst, dport, proto), "payload": L4 payload length,
    "flags": TCP flags} of an IPv4/IPv6 packet (IPv6: no extension headers), None if not IP."""
    if not pkt:
        return None
    ver = pkt[0] >> 4
    if ver == 4 and len(pkt) >= 20:
        ihl = (pkt[0] & 0x0F) * 4
        total = struct.unpack_from("!H", pkt, 2)[0]
        proto = pkt[9]
        src, dst = pkt[12:16], pkt[16:20]
        frag = struct.unpack_from("!H", pkt, 6)[0] & 0x1FFF
        l4, end = ihl, min(total, len(pkt))
        if frag:
            return {"proto": proto, "key": (src, 0, dst, 0, proto), "payload": end - l4, "flags": 0}
    elif ver == 6 and len(pkt) >= 40:
        proto = pkt[6]
        src, dst = pkt[8:24], pkt[24:40]
        l4, end = 40, min(40 + struct.unpack_from("!H", pkt, 4)[0], len(pkt))
    else:
        return None
    sport = dport = flags = 0
    payload = end - l4
    if proto == 6 and end - l4 >= 20:
        sport, dport = struct.unpack_from("!HH", pkt, l4)
        off = (pkt[l4 + 12] >> 4) * 4
        flags = pkt[l4 + 13]
        payload = end - l4 - off
    elif proto == 17 and end - l4 >= 8:
        sport, dport = struct.unpack_from("!HH", pkt, l4)
        payload = end - l4 - 8
    return {"proto": proto, "key": (src, sport, dst, dport, proto), "payload": payload, "flags": flags}


# --------------------------------------------------------------------------
# The relay

@dataclass
class Impair:
    """Impairment of one direction (see the module's doc). Shares are 0..1."""
    drop: float = 0.0
    swap: float = 0.0
    late: float = 0.0
    late_ms: float = 3.0
    swap_hold_ms: float = 20.0
    tcp_data_only: bool = True          # only TCP segments with payload are eligible
    ports: tuple[int, ...] = ()         # only packets to or from these ports (empty: any)

    def eligible(self, info: dict | None) -> bool:
        if info is None:
            return False
        if self.tcp_data_only and not (info["proto"] == 6 and info["payload"] > 0):
            return False
        if info["proto"] not in (6, 17):
            return False
        if self.ports and info["key"][1] not in self.ports and info["key"][3] not in self.ports:
            return False
        return True


@dataclass
class DirStats:
    packets: int = 0       # read from the source TUN
    eligible: int = 0
    dropped: int = 0
    swapped: int = 0       # held back and sent after the next one
    late: int = 0
    forwarded: int = 0     # written to the other TUN
    overflow: int = 0      # dropped because the relay's queue was full (should stay 0)
    write_errors: int = 0


class Relay(threading.Thread):
    """Forwards raw IP packets between two TUN descriptors with a fixed delay
    and the impairment of each direction. Directions: "to_srv" (read from the
    client's TUN, written to the server's), "to_cli"."""

    MAX_QUEUE = 50000

    def __init__(self, fd_cli: int, fd_srv: int, to_srv: Impair, to_cli: Impair, delay_ms: float, seed: int):
        super().__init__(name="flowlab-relay", daemon=True)
        self.fd = {"to_srv": fd_cli, "to_cli": fd_srv}      # where each direction reads
        self.out = {"to_srv": fd_srv, "to_cli": fd_cli}     # where it writes
        self.imp = {"to_srv": to_srv, "to_cli": to_cli}
        self.rng = {"to_srv": random.Random(seed * 2 + 1), "to_cli": random.Random(seed * 2 + 2)}
        self.stats = {"to_srv": DirStats(), "to_cli": DirStats()}
        self.delay = delay_ms / 1000.0
        self._heap: list = []            # (due, order, direction, packet)
        self._order = 0
        self._held: dict = {}            # (direction, flow key) -> (deadline, packet)
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self.error: str | None = None

    # -- scheduling --
    def _push(self, due: float, direction: str, pkt: bytes):
        if len(self._heap) >= self.MAX_QUEUE:
            self.stats[direction].overflow += 1
            return
        self._order += 1
        heapq.heappush(self._heap, (due, self._order, direction, pkt))

    def _ingest(self, direction: str, pkt: bytes, now: float):
        st, imp = self.stats[direction], self.imp[direction]
        st.packets += 1
        info = parse_packet(pkt)
        due = now + self.delay
        if not imp.eligible(info):
            self._push(due, direction, pkt)
            return
        st.eligible += 1
        rng = self.rng[direction]
        u_drop, u_swap, u_late = rng.random(), rng.random(), rng.random()
        if u_drop < imp.drop:
            st.dropped += 1
            return
        hk = (direction, info["key"])
        held = self._held.pop(hk, None)
        if held is not None:
            # this packet overtakes the one held back for its flow
            self._push(due, direction, pkt)
            self._push(due, direction, held[1])
            return
        if u_swap < imp.swap:
            st.swapped += 1
            self._held[hk] = (now + imp.swap_hold_ms / 1000.0, pkt)
            return
        if u_late < imp.late:
            st.late += 1
            self._push(due + imp.late_ms / 1000.0, direction, pkt)
            return
        self._push(due, direction, pkt)

    def _release(self, now: float):
        for hk in [k for k, (deadline, _) in self._held.items() if deadline <= now]:
            _, pkt = self._held.pop(hk)
            self._push(now + self.delay, hk[0], pkt)
        while self._heap and self._heap[0][0] <= now:
            _, _, direction, pkt = heapq.heappop(self._heap)
            try:
                os.write(self.out[direction], pkt)
                self.stats[direction].forwarded += 1
            except OSError as e:
                if e.errno in (errno.EBADFD, errno.EBADF, errno.ENODEV):
                    raise
                self.stats[direction].write_errors += 1

    def _next_due(self) -> float | None:
        dues = [d for d, _ in self._held.values()]
        if self._heap:
            dues.append(self._heap[0][0])
        return min(dues) if dues else None

    def run(self):
        ep = select.epoll()
        try:
            fd_dir = {fd: d for d, fd in self.fd.items()}
            for fd in fd_dir:
                ep.register(fd, select.EPOLLIN)
            ep.register(self._wake_r, select.EPOLLIN)
            while not self._stopping.is_set():
                nd = self._next_due()
                timeout = 0.5 if nd is None else max(0.0, nd - time.monotonic())
                events = ep.poll(timeout)
                for fd, _ in events:
                    if fd == self._wake_r:
                        try:
                            os.read(self._wake_r, 64)
                        except BlockingIOError:
                            pass
                        continue
                    d = fd_dir[fd]
                    for _ in range(512):  # bounded per wake-up: the other direction gets its turn
                        try:
                            pkt = os.read(fd, 65536)
                        except BlockingIOError:
                            break
                        self._ingest(d, pkt, time.monotonic())
                self._release(time.monotonic())
        except OSError as e:
            if not self._stopping.is_set():
                self.error = f"relay stopped: {e}"
                lab.log(self.error)
        finally:
            ep.close()

    def stop(self, timeout: float = 5):
        self._stopping.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self.join(timeout)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def summary(self) -> dict:
        return {d: vars(s).copy() for d, s in self.stats.items()}


# --------------------------------------------------------------------------
# The lab

class FlowLab(lab.Lab):
    """lab.Lab with the veth pair replaced by two TUNs and the relay (see the
    module's doc). nginx and dnsmasq are off unless asked for."""

    def __init__(self, to_srv: Impair | None = None, to_cli: Impair | None = None, delay_ms: float = 5.0,
                 seed: int = 1, nginx: bool = False, dnsmasq: bool = False, **kw):
        super().__init__(nginx=nginx, dnsmasq=dnsmasq, **kw)
        self.to_srv = to_srv or Impair()
        self.to_cli = to_cli or Impair()
        self.delay_ms = delay_ms
        self.seed = seed
        self.relay: Relay | None = None
        self._tun_fds: list[int] = []
        self.srv_tun, self.cli_tun = self.srv_veth, self.cli_veth

    def _setup_network(self):
        for ns in (self.srv_ns, self.cli_ns):
            lab.run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            self.ns(ns, ["ip", "link", "set", "lo", "up"])
            # no router solicitations on the TUNs: less noise in the captures
            self.ns(ns, ["sysctl", "-qw", "net.ipv6.conf.default.router_solicitations=0"], check=False)
        fd_s = open_tun(self.srv_tun)
        self._tun_fds.append(fd_s)
        fd_c = open_tun(self.cli_tun)
        self._tun_fds.append(fd_c)
        for ns, dev, a4, a6 in ((self.srv_ns, self.srv_tun, self.srv4, self.srv6),
                                (self.cli_ns, self.cli_tun, self.cli4, self.cli6)):
            lab.run(["ip", "link", "set", dev, "netns", ns])
            self.ns(ns, ["ip", "link", "set", dev, "gso_max_segs", str(GSO_MAX_SEGS)])
            self.ns(ns, ["ip", "addr", "add", f"{a4}/24", "dev", dev])
            self.ns(ns, ["ip", "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad"])
            self.ns(ns, ["ip", "link", "set", dev, "up"])
        self.relay = Relay(fd_c, fd_s, self.to_srv, self.to_cli, self.delay_ms, self.seed)
        self.relay.start()
        # bounded wait until both families pass the relay
        for dst in (self.srv4, self.srv6):
            deadline = time.monotonic() + 10
            while True:
                r = self.cli(["ping", "-c1", "-W1", dst], check=False, timeout=5)
                if r.returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no path to {dst} through the TUN relay: {r.stdout}{r.stderr}")
                time.sleep(0.1)

    def cleanup(self) -> None:
        already = self._cleaned
        if not already and self.relay is not None:
            self.relay.stop()  # before the namespaces (and with them the TUNs) go
        super().cleanup()
        if already:
            return
        for fd in self._tun_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._tun_fds.clear()

    # ---- captures ----------------------------------------------------------
    def start_tcpdump(self, dev: str | None = None, out=None, ns: str | None = None, extra=None,
                      plain: bool = False) -> lab.Tcpdump:
        """tcpdump on the server's TUN by default (LINKTYPE_RAW: frames are IP packets)."""
        return super().start_tcpdump(dev or self.srv_tun, out, ns, extra, plain)

    # ---- impairment knobs ---------------------------------------------------
    def set_impairment(self, to_srv: Impair | None = None, to_cli: Impair | None = None):
        """Replaces the impairment of a direction (takes effect with the next packet)."""
        if to_srv is not None:
            self.relay.imp["to_srv"] = to_srv
        if to_cli is not None:
            self.relay.imp["to_cli"] = to_cli

    # ---- traffic: see the functions below (they work on lab.Lab as well) ----
    def start_peers(self, **kw):
        return start_peers(self, **kw)

    def fetch(self, *a, **kw) -> dict:
        return fetch(self, *a, **kw)

    def bulk_send(self, *a, **kw) -> dict:
        return bulk_send(self, *a, **kw)

    def udp_echo(self, *a, **kw) -> dict:
        return udp_echo(self, *a, **kw)

    def connect(self, *a, **kw) -> dict:
        return connect(self, *a, **kw)

    def nft_drop_syn(self, port: int = BLACKHOLE_PORT) -> str:
        return nft_drop_syn(self, port)


# --------------------------------------------------------------------------
# Traffic helpers, for any lab.Lab (veth or TUN): peers in the server
# namespace, clients in the client namespace.

def _py(L: lab.Lab, ns: str, args: list, timeout: float) -> dict:
    r = L.ns(ns, [sys.executable, THIS] + [str(a) for a in args], timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


def start_peers(L: lab.Lab, source_port: int = SOURCE_PORT, sink_port: int = SINK_PORT,
                udp_port: int = UDP_PORT, lifetime: int = 600) -> lab.Proc:
    """The TCP source (sends what a client asks for), the TCP sink (reads until
    EOF, answers with the count) and the UDP echo, in the server namespace,
    on both address families."""
    p = L.spawn("flowpeers", L.srv_ns, [sys.executable, THIS, "serve", "--source-port", source_port,
                                        "--sink-port", sink_port, "--udp-port", udp_port,
                                        "--lifetime", lifetime], death_sig=signal.SIGKILL)
    if not p.wait_for_line(r"^ready", 15):
        raise RuntimeError(f"flow peers did not start:\n{p.output()}")
    return p


def _host(L: lab.Lab, v6: bool) -> str:
    return L.srv6 if v6 else L.srv4


def fetch(L: lab.Lab, nbytes: int, v6: bool = False, repeat: int = 1, port: int = SOURCE_PORT,
          timeout: float = 60) -> dict:
    """repeat TCP connections, each receiving nbytes from the source."""
    return _py(L, L.cli_ns, ["fetch", _host(L, v6), port, nbytes, "--repeat", repeat], timeout)


def bulk_send(L: lab.Lab, nbytes: int, v6: bool = False, repeat: int = 1, port: int = SINK_PORT,
              timeout: float = 60) -> dict:
    """repeat TCP connections, each pushing nbytes to the sink."""
    return _py(L, L.cli_ns, ["send", _host(L, v6), port, nbytes, "--repeat", repeat], timeout)


def udp_echo(L: lab.Lab, count: int, size: int = 200, v6: bool = False, port: int = UDP_PORT,
             timeout: float = 60) -> dict:
    """count datagrams of size bytes from one client socket to the echo, each answered."""
    return _py(L, L.cli_ns, ["udp", _host(L, v6), port, count, size], timeout)


def connect(L: lab.Lab, port: int, v6: bool = False, wait: float = 2.5) -> dict:
    """One connect() to the server on port: {"result": refused|timeout|connected, "port": client port}."""
    return _py(L, L.cli_ns, ["connect", _host(L, v6), port, wait], wait + 30)


def nft_drop_syn(L: lab.Lab, port: int = BLACKHOLE_PORT) -> str:
    """An nftables table in the server namespace whose input chain drops SYNs
    to port (IPv4 and IPv6): TC and tcpdump see them, the server never
    answers. The table goes with the namespace; returns the table's name."""
    table = f"twflow{port}"
    L.srv(["nft", "add", "table", "inet", table])
    L.srv(["nft", "add", "chain", "inet", table, "input",
           "{ type filter hook input priority 0 ; policy accept ; }"])
    L.srv(["nft", "add", "rule", "inet", table, "input", "tcp", "dport", str(port),
           "tcp", "flags", "&", "(syn|ack)", "==", "syn", "counter", "drop"])
    return table


def nft_counter(L: lab.Lab, table: str) -> int:
    """Packets the SYN-drop rule of table dropped."""
    out = L.srv(["nft", "list", "table", "inet", table], check=False).stdout
    m = re.search(r"counter packets (\d+)", out)
    return int(m.group(1)) if m else 0


# --------------------------------------------------------------------------
# The sensor with a config file, and its /metrics

def sensor_config(path: Path, flows: dict | None = None, extra: str = "") -> Path:
    """A tapwire.yaml for the sensor (`--config`): tap.flows keys (e.g.
    {"maxFlows": 4096, "synTimeout": "2s"}) and more YAML lines under tap:."""
    text = "tap:\n"
    if flows:
        text += "  flows:\n" + "".join(f"    {k}: {v}\n" for k, v in flows.items())
    text += extra
    Path(path).write_text(text)
    return Path(path)


def metrics(L: lab.Lab, ns: str | None = None, address: str = "127.0.0.1:7477") -> dict[str, float]:
    """The sensor's /metrics (in its namespace) as {"name{labels}": value}; {} if unreachable."""
    r = L.ns(ns or L.srv_ns, ["curl", "-sS", "-m", "3", f"http://{address}/metrics"], check=False, timeout=10)
    out = {}
    if r.returncode != 0:
        return out
    for line in r.stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
        except ValueError:
            continue
    return out


def metric_sum(m: dict[str, float], name: str) -> float | None:
    """Sum of a metric over its label sets; None if absent."""
    vals = [v for k, v in m.items() if k == name or k.startswith(name + "{")]
    return sum(vals) if vals else None


# --------------------------------------------------------------------------
# The traffic program (run in a namespace)

def _data(n: int) -> bytes:
    return random.Random(DATA_SEED + n).randbytes(n)


def _serve(args):
    deadline = time.monotonic() + args.lifetime

    def listener(port: int) -> socket.socket:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen(128)
        return s

    def source_conn(c: socket.socket):
        with c:
            c.settimeout(60)
            req = b""
            while not req.endswith(b"\n") and len(req) < 64:
                d = c.recv(64)
                if not d:
                    return
                req += d
            c.sendall(_data(int(req.strip())))
            c.shutdown(socket.SHUT_WR)
            while c.recv(65536):
                pass

    def sink_conn(c: socket.socket):
        with c:
            c.settimeout(60)
            n = 0
            while True:
                d = c.recv(1 << 16)
                if not d:
                    break
                n += len(d)
            c.sendall(f"OK {n}\n".encode())

    def accept_loop(s: socket.socket, handler):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=lambda: _guard(handler, c), daemon=True).start()

    def udp_loop(u: socket.socket):
        while True:
            try:
                d, a = u.recvfrom(65536)
                u.sendto(d, a)
            except OSError:
                return

    src, snk = listener(args.source_port), listener(args.sink_port)
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    u.bind(("::", args.udp_port))
    for t in (lambda: accept_loop(src, source_conn), lambda: accept_loop(snk, sink_conn), lambda: udp_loop(u)):
        threading.Thread(target=t, daemon=True).start()
    print("ready", flush=True)
    while time.monotonic() < deadline:
        time.sleep(0.5)


def _guard(fn, *a):
    try:
        fn(*a)
    except OSError as e:
        print(f"connection: {e}", file=sys.stderr, flush=True)


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _fetch(args):
    res = {"conns": [], "bytes": 0}
    for _ in range(args.repeat):
        with socket.socket(_family(args.host), socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect((args.host, args.port))
            port = s.getsockname()[1]
            s.sendall(f"{args.bytes}\n".encode())
            got = bytearray()
            while True:
                d = s.recv(1 << 16)
                if not d:
                    break
                got += d
            if bytes(got) != _data(args.bytes):
                raise SystemExit(f"fetch: got {len(got)} bytes, not the {args.bytes} sent")
            res["conns"].append(port)
            res["bytes"] += len(got)
    print(json.dumps(res))


def _send(args):
    res = {"conns": [], "bytes": 0}
    data = _data(args.bytes)
    for _ in range(args.repeat):
        with socket.socket(_family(args.host), socket.SOCK_STREAM) as s:
            s.settimeout(30)
            s.connect((args.host, args.port))
            port = s.getsockname()[1]
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while True:
                d = s.recv(256)
                if not d:
                    break
                reply += d
            if reply.strip() != f"OK {args.bytes}".encode():
                raise SystemExit(f"send: the sink answered {reply!r}")
            res["conns"].append(port)
            res["bytes"] += len(data)
    print(json.dumps(res))


def _udp(args):
    with socket.socket(_family(args.host), socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.connect((args.host, args.port))
        answered = 0
        for i in range(args.count):
            msg = (f"{i:08d}".encode() + _data(args.size))[: args.size]
            s.send(msg)
            try:
                if s.recv(65536) == msg:
                    answered += 1
            except socket.timeout:
                pass
        print(json.dumps({"port": s.getsockname()[1], "sent": args.count, "answered": answered}))


def _connect(args):
    s = socket.socket(_family(args.host), socket.SOCK_STREAM)
    s.settimeout(args.wait)
    s.bind(("::" if ":" in args.host else "0.0.0.0", 0))
    port = s.getsockname()[1]
    try:
        s.connect((args.host, args.port))
        result = "connected"
    except ConnectionRefusedError:
        result = "refused"
    except (socket.timeout, TimeoutError):
        result = "timeout"
    finally:
        s.close()
    print(json.dumps({"result": result, "port": port}))


def main(argv=None):
    ap = argparse.ArgumentParser(description="the flow lab's traffic program")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--source-port", type=int, default=SOURCE_PORT)
    p.add_argument("--sink-port", type=int, default=SINK_PORT)
    p.add_argument("--udp-port", type=int, default=UDP_PORT)
    p.add_argument("--lifetime", type=float, default=600)
    for name in ("fetch", "send"):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port", type=int)
        p.add_argument("bytes", type=int)
        p.add_argument("--repeat", type=int, default=1)
    p = sub.add_parser("udp")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("count", type=int)
    p.add_argument("size", type=int)
    p = sub.add_parser("connect")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("wait", type=float)
    args = ap.parse_args(argv)
    {"serve": _serve, "fetch": _fetch, "send": _send, "udp": _udp, "connect": _connect}[args.cmd](args)


if __name__ == "__main__":
    main()

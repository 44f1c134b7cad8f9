#!/usr/bin/env python3
"""Done means (workload identity, process identity): the identity programs
(bpf/identity.bpf.c, run by build/tapwire-identity-probe) name the process,
cgroup and tuple of both ends of every connection, as the test itself knows
them:

- its own network namespaces twidb-<pid>-<rand>-a (servers) and -b (clients)
  joined by a veth, and its own cgroups under the cgroup2 mount laid out as the
  kubelet does (twidb-<pid>-<rand>/kubepods.slice/kubepods-besteffort.slice/
  kubepods-besteffort-pod<uid>.slice/cri-containerd-<64 hex>.scope), every
  process put in its cgroup before it execs;
- nginx serving curl (IPv4 and IPv6), dnsmasq bound to the wildcard address
  answering dig and Python clients (connected and unconnected UDP) on three of
  its addresses, and TCP and UDP (IPv4, IPv6) sockets made before the probe
  started;
- the reference: the pids it started, their cgroup directories' inode numbers,
  the socket cookies and netns cookies the Python peers read with SO_COOKIE and
  SO_NETNS_COOKIE, nginx's listening sockets' cookies from `ss -e`, and the
  tuples tcpdump saw on the veth.

Also: a foreign cgroup_skb program attached by the test (`bpftool cgroup
attach ... multi`) to the same cgroup root keeps counting while the probe runs
and stays attached after it exits; the probe's own programs are gone then.
The netns of sockets older than the probe as kernels without the cgroup_skb
netns-cookie helper find it. The least capabilities (CAP_BPF, CAP_PERFMON,
CAP_NET_ADMIN), and the one-line error naming the one missing.

`--bench [ROUNDS [SECONDS]]` instead measures what the programs cost: wrk
against nginx over the veth with nothing, pass-only programs, or the probe on
the cgroup root, ROUNDS rounds each (default 3) of SECONDS (default 10),
keep-alive and one connection per request, and the programs' run time per
packet from kernel.bpf_stats_enabled.

Needs root, netns, cgroup v2, BPF, nginx, dnsmasq, tcpdump, curl, dig, ss,
bpftool, clang, setpriv and build/tapwire-identity-probe; skips with 77
otherwise (fails under CI=true). Cleans up (processes, cgroups, namespaces, the foreign program, its
bpffs) on exit, on SIGINT/SIGTERM/SIGHUP, and sweeps what a SIGKILLed run left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import unittest
import uuid
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402

PREFIX = "twidb"
PROBE = lab.build_dir() / "tapwire-identity-probe"
SO_COOKIE = 57
SO_NETNS_COOKIE = 71
DOMAIN = "tw.test"


def log(msg: str) -> None:
    lab.log(msg)


def cgroup2_mount() -> str | None:
    """The cgroup2 mount point, as the collector finds it: a mount of the
    hierarchy's root, /sys/fs/cgroup preferred."""
    best, rank = None, -1
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        if "-" not in f:
            continue
        sep = f.index("-")
        if sep + 1 >= len(f) or f[sep + 1] != "cgroup2":
            continue
        mnt = re.sub(r"\\([0-3][0-7][0-7])", lambda m: chr(int(m.group(1), 8)), f[4])
        r = (2 if f[3] == "/" else 0) + (1 if mnt == "/sys/fs/cgroup" else 0)
        if r > rank:
            best, rank = mnt, r
    return best


def wait_until(pred, timeout: float, what: str, interval: float = 0.1):
    """Polls pred() until it returns something true; raises after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


# --------------------------------------------------------------------------
# pcap (tcpdump -w on an Ethernet device), standard library only

def read_pcap(path: Path) -> list[dict]:
    pkts = []
    data = path.read_bytes()
    if len(data) < 24:
        return pkts
    magic = struct.unpack("<I", data[:4])[0]
    e = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    if struct.unpack(e + "I", data[20:24])[0] != 1:
        raise AssertionError(f"{path}: not an Ethernet capture")
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack(e + "IIII", data[off:off + 16])[2]
        p = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(p) < 14:
            continue
        et, l3 = struct.unpack("!H", p[12:14])[0], 14
        while et in (0x8100, 0x88A8) and len(p) >= l3 + 4:
            et, l3 = struct.unpack("!H", p[l3 + 2:l3 + 4])[0], l3 + 4
        if et == 0x0800 and len(p) >= l3 + 20:
            ihl = (p[l3] & 15) * 4
            proto, src, dst, l4 = p[l3 + 9], p[l3 + 12:l3 + 16], p[l3 + 16:l3 + 20], l3 + ihl
        elif et == 0x86DD and len(p) >= l3 + 40:
            proto, src, dst, l4 = p[l3 + 6], p[l3 + 8:l3 + 24], p[l3 + 24:l3 + 40], l3 + 40
        else:
            continue
        if proto not in (6, 17) or len(p) < l4 + 4:
            continue
        sport, dport = struct.unpack("!HH", p[l4:l4 + 4])
        flags = p[l4 + 13] if proto == 6 and len(p) >= l4 + 14 else 0
        pkts.append({"proto": proto, "src": ipaddress.ip_address(src), "sport": sport,
                     "dst": ipaddress.ip_address(dst), "dport": dport, "tcp_flags": flags})
    return pkts


def dns_query(qid: int, name: str = f"www.{DOMAIN}") -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q


# --------------------------------------------------------------------------
# Python peers the test runs in its namespaces: they report the cookies of
# their sockets (SO_COOKIE is the cookie the BPF programs read).

PEERS = r'''
import json, socket, sys, time, os
SO_COOKIE, SO_NETNS_COOKIE = 57, 71
def ck(s, opt=SO_COOKIE):
    return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, opt, 8), "little")
def say(**kw):
    print(json.dumps(kw), flush=True)
def wait_file(p, timeout=120):
    end = time.monotonic() + timeout
    while not os.path.exists(p):
        if time.monotonic() > end:
            sys.exit("timed out waiting for " + p)
        time.sleep(0.05)
role = sys.argv[1]
if role == "server":  # server ADDR: one connection, echoed until EOF
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.bind((sys.argv[2], 0)); ls.listen(4); ls.settimeout(60)
    say(port=ls.getsockname()[1], listen_cookie=ck(ls), netns_cookie=ck(ls, SO_NETNS_COOKIE))
    c, peer = ls.accept(); c.settimeout(120)
    say(accepted_cookie=ck(c), peer=[peer[0], peer[1]])
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d)
    c.close(); say(closed=True)
elif role == "client":  # client ADDR PORT GO BYE: connect now, talk after GO, close after BYE
    s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10)
    say(cookie=ck(s), lport=s.getsockname()[1], netns_cookie=ck(s, SO_NETNS_COOKIE))
    wait_file(sys.argv[4]); s.sendall(b"ping"); say(echo=s.recv(4).decode())
    wait_file(sys.argv[5]); s.close(); say(closed=True)
elif role == "udp-echo":  # udp-echo ADDR: echoes datagrams until killed
    fam = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((sys.argv[2], 0))
    say(port=s.getsockname()[1], cookie=ck(s), netns_cookie=ck(s, SO_NETNS_COOKIE))
    while True:
        d, peer = s.recvfrom(1500); s.sendto(d, peer)
elif role == "udp-late":  # udp-late ADDR PORT GO: a connected socket now, one exchange after GO
    fam = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(5); s.connect((sys.argv[2], int(sys.argv[3])))
    say(cookie=ck(s), lport=s.getsockname()[1], netns_cookie=ck(s, SO_NETNS_COOKIE))
    wait_file(sys.argv[4]); s.send(b"ping"); say(echo=s.recv(4).decode())
elif role in ("udp-connected", "udp-unconnected"):  # udp-* QUERY_HEX SERVER...
    q = bytes.fromhex(sys.argv[2])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    answers = 0
    for srv in sys.argv[3:]:
        if role == "udp-connected":
            s.connect((srv, 53)); s.send(q); s.recv(1500)
        else:
            s.sendto(q, (srv, 53)); s.recvfrom(1500)
        answers += 1
    say(cookie=ck(s), lport=s.getsockname()[1], answers=answers, netns_cookie=ck(s, SO_NETNS_COOKIE))
'''

FOREIGN_BPF = r'''
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
/* Another agent's program on the same cgroup root: counts egress packets. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} twidb_count SEC(".maps");
SEC("cgroup_skb/egress")
int twidb_foreign(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&twidb_count, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	return 1;
}
char LICENSE[] SEC("license") = "GPL";
'''


# --------------------------------------------------------------------------

def kill_cgroup_tree(top: Path) -> None:
    """Kills every process in the cgroups below top (cgroup.kill), waits until
    they are empty (bounded), removes the directories bottom-up."""
    if not top.is_dir():
        return
    dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [top]
    for d in dirs:
        try:
            (d / "cgroup.kill").write_text("1\n")
        except OSError:
            for pid in (d / "cgroup.procs").read_text().split() if (d / "cgroup.procs").exists() else []:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
    deadline = time.monotonic() + 10
    for d in dirs:
        while time.monotonic() < deadline:
            try:
                if not (d / "cgroup.procs").read_text().split():
                    break
            except OSError:
                break
            time.sleep(0.05)
        try:
            d.rmdir()
        except OSError as e:
            log(f"cannot remove cgroup {d}: {e}")


def detach_foreign(root: str, state: Path) -> None:
    try:
        st = json.loads(state.read_text())
    except (OSError, ValueError):
        return
    lab.run(["bpftool", "cgroup", "detach", root, st.get("hook", "egress"), "id", str(st["prog_id"])], check=False)
    state.unlink(missing_ok=True)


def sweep_stale(cg2: str) -> None:
    """What a SIGKILLed run of this test left: namespaces, cgroups, the
    foreign program and its bpffs, whose creating process is gone."""
    dead = lambda name: (m := re.match(rf"{PREFIX}-(\d+)-", name)) and not pid_alive(int(m.group(1)))
    for line in lab.run(["ip", "netns", "list"], check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if dead(name):
            for pid in lab.run(["ip", "netns", "pids", name], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            lab.run(["ip", "netns", "del", name], check=False)
            log(f"removed stale namespace {name}")
    for d in Path(cg2).glob(f"{PREFIX}-*"):
        if d.is_dir() and dead(d.name):
            kill_cgroup_tree(d)
            log(f"removed stale cgroups {d}")
    for d in Path(tempfile.gettempdir()).glob(f"{PREFIX}-*"):
        if d.is_dir() and dead(d.name):
            for state in d.glob("foreign*.json"):
                detach_foreign(cg2, state)
            if (d / "bpffs").is_dir():
                lab.run(["umount", str(d / "bpffs")], check=False)
            shutil.rmtree(d, ignore_errors=True)


class IdLab:
    """Two namespaces joined by a veth, kubelet-style cgroups, processes
    placed in them; everything removed in cleanup()."""

    def __init__(self):
        self.cg2 = cgroup2_mount()
        tag = "%04x" % random.SystemRandom().randrange(0x10000)
        self.id = f"{os.getpid()}-{tag}"
        self.ns_a, self.ns_b = f"{PREFIX}-{self.id}-a", f"{PREFIX}-{self.id}-b"
        short = "%05x" % random.SystemRandom().randrange(0x100000)
        self.veth_a, self.veth_b = f"ti{short}a", f"ti{short}b"
        self.n = 1 + (os.getpid() + int(tag, 16)) % 250
        self.a4, self.a4b, self.b4 = f"10.231.{self.n}.1", f"10.231.{self.n}.3", f"10.231.{self.n}.2"
        self.a6, self.b6 = f"fd00:7479:{self.n}::1", f"fd00:7479:{self.n}::2"
        self.cg_top = Path(self.cg2) / f"{PREFIX}-{self.id}"
        self.dir: Path | None = None
        self.procs: list[lab.Proc] = []
        self.namespaces: list[str] = []
        self.bpffs: Path | None = None
        self._cleaned = False

    def __enter__(self) -> "IdLab":
        lab._install_handlers()
        lab._ACTIVE.append(self)  # the signal handlers and atexit clean it up
        try:
            sweep_stale(self.cg2)
            self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{self.id}-"))
            os.chmod(self.dir, 0o755)
            (self.dir / "peers.py").write_text(PEERS)
            self._network()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        if self._cleaned:
            return
        self._cleaned = True
        for p in reversed(self.procs):
            try:
                p.stop(signal.SIGTERM, 5)
            except Exception as e:  # keep cleaning
                log(f"stopping {p.name}: {e}")
        kill_cgroup_tree(self.cg_top)
        for ns in self.namespaces:
            for pid in lab.run(["ip", "netns", "pids", ns], check=False, timeout=10).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            lab.run(["ip", "netns", "del", ns], check=False, timeout=20)
        if self.dir:
            detach_foreign(self.cg2, self.dir / "foreign.json")
            if self.bpffs:
                lab.run(["umount", str(self.bpffs)], check=False)
            if os.environ.get("TW_LAB_KEEP") == "1":
                log(f"kept {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        if self in lab._ACTIVE:
            lab._ACTIVE.remove(self)

    # ---- network ---------------------------------------------------------
    def _network(self):
        for ns in (self.ns_a, self.ns_b):
            lab.run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            self.ns(ns, ["ip", "link", "set", "lo", "up"])
        lab.run(["ip", "link", "add", self.veth_a, "netns", self.ns_a, "type", "veth",
                 "peer", "name", self.veth_b, "netns", self.ns_b])
        for ns, dev, a4s, a6 in ((self.ns_a, self.veth_a, (self.a4, self.a4b), self.a6),
                                 (self.ns_b, self.veth_b, (self.b4,), self.b6)):
            for a4 in a4s:
                self.ns(ns, ["ip", "addr", "add", f"{a4}/24", "dev", dev])
            self.ns(ns, ["ip", "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad"])
            self.ns(ns, ["ip", "link", "set", dev, "up"])
        for ns, dev in ((self.ns_a, self.veth_a), (self.ns_b, self.veth_b)):
            wait_until(lambda: "LOWER_UP" in self.ns(ns, ["ip", "link", "show", "dev", dev]).stdout, 15,
                       f"{dev} to be up")

    def ns(self, ns: str, cmd: list, **kw):
        return lab.run(["ip", "netns", "exec", ns] + [str(c) for c in cmd], **kw)

    # ---- cgroups and processes ------------------------------------------
    def container(self, qos: str = "besteffort") -> Path:
        """A pod's container cgroup as the kubelet's systemd driver with
        containerd lays it out."""
        uid = str(uuid.uuid4()).replace("-", "_")
        d = (self.cg_top / "kubepods.slice" / f"kubepods-{qos}.slice" / f"kubepods-{qos}-pod{uid}.slice"
             / f"cri-containerd-{secrets.token_hex(32)}.scope")
        d.mkdir(parents=True)
        return d

    def rel(self, cg: Path) -> str:
        """A cgroup's path below the cgroup2 mount, as the probe prints it."""
        return "/" + str(cg.relative_to(self.cg2))

    def _placed(self, cg: Path, ns: str, cmd: list) -> list[str]:
        # The pid joins its cgroup before it execs anything: all the test's
        # processes are born there, and keep the pid through both execs.
        return ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && shift && exec ip netns exec "$@"', "sh",
                str(cg), ns] + [str(c) for c in cmd]

    def spawn(self, name: str, ns: str, cg: Path, cmd: list, death_sig=signal.SIGTERM) -> lab.Proc:
        p = lab.Proc(name, self._placed(cg, ns, cmd), self.dir / f"{name}-{len(self.procs)}.log",
                     death_sig=death_sig)
        self.procs.append(p)
        return p

    def run_in(self, ns: str, cg: Path, cmd: list, timeout: float = 30) -> tuple[int, subprocess.CompletedProcess]:
        """Runs cmd to completion in ns and cg; returns (its pid, result)."""
        p = subprocess.Popen(self._placed(cg, ns, cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=lab._die_with_parent(signal.SIGKILL))
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate(timeout=10)
            raise AssertionError(f"{cmd} did not finish in {timeout}s: {out} {err}")
        r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        if r.returncode != 0:
            raise AssertionError(f"{cmd} failed ({r.returncode}): {out[-1000:]} {err[-1000:]}")
        return p.pid, r

    def json_line(self, p: lab.Proc, key: str, timeout: float = 20) -> dict:
        """The first JSON line p printed that has key."""
        def find():
            for l in list(p.lines):
                try:
                    j = json.loads(l)
                except ValueError:
                    continue
                if isinstance(j, dict) and key in j:
                    return j
            return None
        return wait_until(find, timeout, f"{p.name} to print {key!r} (output so far: {p.output()[-500:]!r})")

    def listen_cookies(self, ns: str, proto: str, port: int) -> set[int]:
        """Cookies of the listening/bound sockets on port, from ss -e."""
        out = self.ns(ns, ["ss", "-Hn" + ("tl" if proto == "tcp" else "ul") + "e", f"sport = :{port}"]).stdout
        return {int(m, 16) for m in re.findall(r"\bsk:([0-9a-f]+)", out)}

    def old_sockets(self, cg_srv: Path, cg_cli: Path) -> dict:
        """Sockets made before the probe starts: a TCP connection (server in
        ns a, client in ns b), and connected UDP clients of echo servers over
        IPv4 and IPv6. They talk once self.dir/"go" exists; the TCP client
        closes once "bye" does; the UDP clients exit after their exchange."""
        py, peers = sys.executable, self.dir / "peers.py"
        o: dict = {"procs": {}}
        srv = self.spawn("old-server", self.ns_a, cg_srv, [py, peers, "server", self.a4])
        o["srv"] = self.json_line(srv, "port")
        cli = self.spawn("old-client", self.ns_b, cg_cli,
                         [py, peers, "client", self.a4, o["srv"]["port"], self.dir / "go", self.dir / "bye"])
        o["cli"] = self.json_line(cli, "cookie")
        o["acc"] = self.json_line(srv, "accepted_cookie")
        o["procs"].update(srv=srv, cli=cli)
        for v, addr in ((4, self.a4), (6, self.a6)):
            e = self.spawn(f"udp-echo{v}", self.ns_a, cg_srv, [py, peers, "udp-echo", addr])
            o[f"echo{v}"] = self.json_line(e, "port")
            c = self.spawn(f"udp-late{v}", self.ns_b, cg_cli,
                           [py, peers, "udp-late", addr, o[f"echo{v}"]["port"], self.dir / "go"])
            o[f"late{v}"] = self.json_line(c, "cookie")
            o["procs"].update({f"echo{v}": e, f"late{v}": c})
        return o

    def old_sockets_talk(self, o: dict) -> None:
        (self.dir / "go").touch()
        for k in ("cli", "late4", "late6"):
            self.json_line(o["procs"][k], "echo")

    def old_sockets_end(self, o: dict) -> None:
        """Ends them all (their sockets close while the probe watches)."""
        (self.dir / "bye").touch()
        self.json_line(o["procs"]["cli"], "closed")
        self.json_line(o["procs"]["srv"], "closed")
        for k in ("echo4", "echo6", "late4", "late6"):
            o["procs"][k].stop(signal.SIGTERM, 10)

    # ---- nginx, dnsmasq ------------------------------------------------------
    def start_nginx(self, cg: Path, workers: int = 1) -> lab.Proc:
        d = self.dir / "nginx"
        (d / "www").mkdir(parents=True)
        (d / "www" / "hello.txt").write_text("hello from nginx\n")
        (d / "www" / "10k.bin").write_bytes(random.Random(7).randbytes(10240))
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / "tmp" / sub).mkdir(parents=True)
        t = d / "tmp"
        conf = d / "nginx.conf"
        conf.write_text(f"""
user root root;
daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    server {{
        listen 80;
        listen [::]:80 ipv6only=on;
        root {d}/www;
    }}
}}
""")
        p = self.spawn("nginx", self.ns_a, cg, ["nginx", "-p", d, "-c", conf, "-e", d / "error.log"],
                       death_sig=signal.SIGKILL)
        # ready once both listening sockets exist (no traffic to find out)
        wait_until(lambda: len(self.listen_cookies(self.ns_a, "tcp", 80)) >= 2 or not p.alive(), 15,
                   "nginx to listen")
        if not p.alive():
            raise AssertionError(f"nginx exited: {p.output()}")
        return p

    def start_dnsmasq(self, cg: Path) -> lab.Proc:
        d = self.dir / "dnsmasq"
        d.mkdir()
        # No --bind-interfaces: one socket bound to the wildcard address,
        # answering from the address each query was sent to.
        cmd = ["dnsmasq", "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
               "--no-hosts", "--no-poll", "--user=root", "--group=root", "--port=53",
               f"--pid-file={d}/dnsmasq.pid", f"--local=/{DOMAIN}/",
               f"--host-record=www.{DOMAIN},{self.a4},{self.a6}"]
        p = self.spawn("dnsmasq", self.ns_a, cg, cmd, death_sig=signal.SIGKILL)
        wait_until(lambda: self.listen_cookies(self.ns_a, "udp", 53) or not p.alive(), 15, "dnsmasq to bind")
        if not p.alive():
            raise AssertionError(f"dnsmasq exited: {p.output()}")
        return p

    # ---- the foreign program ---------------------------------------------
    def attach_foreign(self) -> int:
        """Compiles, loads and attaches (multi) a counting cgroup_skb egress
        program to the cgroup2 root, as another agent would. Returns its id."""
        src, obj = self.dir / "foreign.bpf.c", self.dir / "foreign.bpf.o"
        src.write_text(FOREIGN_BPF)
        arch = os.uname().machine
        lab.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}-linux-gnu", "-c", src, "-o", obj])
        self.bpffs = self.dir / "bpffs"
        self.bpffs.mkdir()
        lab.run(["mount", "-t", "bpf", "bpf", self.bpffs])
        lab.run(["bpftool", "prog", "load", obj, self.bpffs / "prog", "pinmaps", self.bpffs / "maps"])
        pid = json.loads(lab.run(["bpftool", "-j", "prog", "show", "pinned", self.bpffs / "prog"]).stdout)["id"]
        (self.dir / "foreign.json").write_text(json.dumps({"prog_id": pid, "hook": "egress"}))
        lab.run(["bpftool", "cgroup", "attach", self.cg2, "egress", "pinned", self.bpffs / "prog", "multi"])
        return pid

    def foreign_count(self) -> int:
        r = lab.run(["bpftool", "-j", "map", "lookup", "pinned", self.bpffs / "maps" / "twidb_count",
                     "key", "0", "0", "0", "0"])
        j = json.loads(r.stdout)
        if "formatted" in j:
            return int(j["formatted"]["value"])
        return int.from_bytes(bytes(int(b, 16) for b in j["value"]), "little")

    def root_progs(self) -> list[dict]:
        """Programs attached to the cgroup2 root (all attach types)."""
        return json.loads(lab.run(["bpftool", "-j", "cgroup", "show", self.cg2]).stdout.strip() or "[]")


# --------------------------------------------------------------------------

def events(probe: lab.Proc, *types: str) -> list[dict]:
    out = []
    for l in list(probe.lines):
        if not l.startswith("{"):
            continue
        try:
            j = json.loads(l)
        except ValueError:
            continue
        if not types or j.get("type") in types:
            out.append(j)
    return out


def tup(e: dict) -> tuple:
    return (ipaddress.ip_address(e["laddr"]), e["lport"], ipaddress.ip_address(e["raddr"]), e["rport"])


def ip(a: str):
    return ipaddress.ip_address(a)


class EventChecks(unittest.TestCase):
    """Helpers over the probe's events (self.ev) and the lab (self.L)."""
    maxDiff = None
    L: IdLab
    ev: list[dict]
    pcap: list[dict] | None = None

    def opens(self, **match) -> list[dict]:
        return [e for e in self.ev if e["type"] == "sock_open" and all(e.get(k) == v for k, v in match.items())]

    def closes(self, cookie: int) -> list[dict]:
        return [e for e in self.ev if e["type"] == "sock_close" and e["cookie"] == cookie]

    def one_open(self, cookie: int, what: str) -> dict:
        o = self.opens(cookie=cookie)
        self.assertEqual(len(o), 1, f"{what}: expected one sock_open with cookie {cookie}, got {o}")
        return o[0]

    def assert_closed(self, o: dict, what: str):
        c = self.closes(o["cookie"])
        self.assertEqual(len(c), 1, f"{what}: expected one sock_close for cookie {o['cookie']}, got {c}")
        # a socket announced several times (UDP, several local addresses)
        # is closed once, with the tuple announced last
        last = self.opens(cookie=o["cookie"])[-1]
        self.assertEqual(tup(c[0]), tup(last), f"{what}: the close repeats the announced tuple")
        self.assertEqual((c[0]["tgid"], c[0]["cgroup_id"], c[0]["flags"]), (o["tgid"], o["cgroup_id"], o["flags"]))
        self.assertGreaterEqual(c[0]["ts_ns"], o["ts_ns"], f"{what}: closed before it was opened")

    def assert_cgroup(self, e: dict, cg: Path, what: str):
        self.assertEqual(e["cgroup_id"], os.stat(cg).st_ino, f"{what}: cgroup id is not {cg}'s inode: {e}")
        self.assertEqual(e["cgroup"], self.L.rel(cg), f"{what}: cgroup path")

    def check_old_sockets(self, o: dict, cg_srv: Path, cg_cli: Path, udp4_netns_known: bool = True):
        """Sockets older than the probe (IdLab.old_sockets): every end
        announced once with TW_SOCK_F_NO_CREATOR, the right cgroup, netns and
        tuple, then closed once."""
        L = self.L
        cli = self.one_open(o["cli"]["cookie"], "old TCP client")
        self.assertEqual((cli["flags"], cli["tgid"], cli["pid"], cli["comm"]), (["no_creator"], 0, 0, ""))
        self.assert_cgroup(cli, cg_cli, "old TCP client")
        self.assertEqual(cli["netns_cookie"], o["cli"]["netns_cookie"], "old TCP client's netns")
        want = (ip(L.b4), o["cli"]["lport"], ip(L.a4), o["srv"]["port"])
        self.assertEqual(tup(cli), want)
        if self.pcap is not None:
            self.assertIn({"src": want[0], "sport": want[1], "dst": want[2], "dport": want[3]},
                          [{k: p[k] for k in ("src", "sport", "dst", "dport")} for p in self.pcap],
                          "tcpdump did not see the old connection's tuple")
        srv = self.one_open(o["acc"]["accepted_cookie"], "old TCP server")
        self.assertEqual((srv["flags"], srv["tgid"]), (["no_creator"], 0))
        self.assert_cgroup(srv, cg_srv, "old server's accepted socket")
        self.assertEqual(srv["netns_cookie"], o["srv"]["netns_cookie"], "old TCP server's netns")
        self.assertEqual(tup(srv), (want[2], want[3], want[0], want[1]))
        self.assertNotEqual(srv["netns_cookie"], cli["netns_cookie"])
        self.assert_closed(cli, "old TCP client")
        self.assert_closed(srv, "old TCP server")
        for v, (a, b) in ((4, (L.a4, L.b4)), (6, (L.a6, L.b6))):
            known = v == 6 or udp4_netns_known
            late, echo = o[f"late{v}"], o[f"echo{v}"]
            c = self.one_open(late["cookie"], f"old UDP client (IPv{v})")
            self.assertEqual((c["flags"], c["tgid"], c["l4"]), (["no_creator"], 0, "udp"), c)
            self.assertEqual(tup(c), (ip(b), late["lport"], ip(a), echo["port"]))
            self.assertEqual(c["netns_cookie"], late["netns_cookie"] if known else 0, f"old UDP client (IPv{v}): netns")
            self.assert_cgroup(c, cg_cli, f"old UDP client (IPv{v})")
            self.assert_closed(c, f"old UDP client (IPv{v})")
            e = self.one_open(echo["cookie"], f"old UDP echo server (IPv{v})")
            self.assertEqual((e["flags"], e["tgid"]), (["no_creator", "unconnected"], 0), e)
            self.assertEqual(tup(e)[:2], (ip(a), echo["port"]))
            self.assertEqual(e["netns_cookie"], echo["netns_cookie"] if known else 0, f"old echo (IPv{v}): netns")
            self.assert_cgroup(e, cg_srv, f"old UDP echo server (IPv{v})")
            self.assert_closed(e, f"old UDP echo server (IPv{v})")


class IdentityBpf(EventChecks):
    """One scenario (setUpClass), checked aspect by aspect."""

    @classmethod
    def setUpClass(cls):
        cls.L = IdLab().__enter__()
        try:
            cls._scenario()
        except BaseException:
            cls.L.cleanup()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    @classmethod
    def _scenario(cls):
        L = cls.L
        py = sys.executable
        peers = L.dir / "peers.py"
        cls.t_start = time.time()
        cls.cg = {k: L.container() for k in ("old_srv", "old_cli", "srv", "cli", "dns", "dig", "udp")}
        for k, v in cls.cg.items():
            log(f"cgroup {k}: {L.rel(v)}")

        # Another agent's program on the cgroup root, before the probe.
        cls.foreign_id = L.attach_foreign()
        cls.foreign0 = L.foreign_count()

        # Connections made before the probe starts.
        cls.old = L.old_sockets(cls.cg["old_srv"], cls.cg["old_cli"])
        cls.old_srv_info, cls.old_cli_info, cls.old_acc_info = cls.old["srv"], cls.old["cli"], cls.old["acc"]
        cls.old_srv, cls.old_cli = cls.old["procs"]["srv"], cls.old["procs"]["cli"]

        # --immediate-mode: little traffic, and none of it may wait in a
        # kernel block that is not handed over before tcpdump stops
        tcpd = lab.Tcpdump("tcpdump", ["ip", "netns", "exec", L.ns_a, "tcpdump", "-i", L.veth_a, "-w",
                                       L.dir / "veth.pcap", "-s", "0", "-n", "-U", "--immediate-mode",
                                       "-Z", "root"],
                           L.dir / "tcpdump.log", death_sig=signal.SIGINT)
        L.procs.append(tcpd)
        if not tcpd.wait_for_line(r"listening on", 15):
            raise AssertionError(f"tcpdump did not start: {tcpd.output()}")

        probe = lab.Proc("probe", [PROBE, "--scan"], L.dir / "probe.log", death_sig=signal.SIGTERM)
        L.procs.append(probe)
        cls.probe = probe
        cls.ready = L.json_line(probe, "prog_ids", timeout=30)
        cls.root_during = L.root_progs()

        # The old connections talk now.
        L.old_sockets_talk(cls.old)

        # HTTP: nginx, then curl over IPv4 (two requests, one connection)
        # and IPv6, each a process of its own.
        cls.nginx = L.start_nginx(cls.cg["srv"])
        cls.nginx_listeners = L.listen_cookies(L.ns_a, "tcp", 80)
        cls.curls = []  # (pid, local port, v6)
        for host, v6 in ((L.a4, False), (f"[{L.a6}]", True), (L.a4, False)):
            url = f"http://{host}/hello.txt"
            pid, r = L.run_in(L.ns_b, cls.cg["cli"], ["curl", "-sS", "--fail", "-m", "10",
                                                      "-w", "%{http_code} %{local_port}\\n",
                                                      url, "-o", "/dev/null", url, "-o", "/dev/null"])
            lines = r.stdout.split()
            if lines[0::2] != ["200", "200"]:
                raise AssertionError(f"curl {url}: {r.stdout}")
            cls.curls.append((pid, int(lines[1]), v6))

        # DNS: dnsmasq on the wildcard address; dig asks two of its IPv4
        # addresses and its IPv6 one, each twice; Python clients, connected
        # and unconnected, the IPv4 ones.
        cls.dnsmasq = L.start_dnsmasq(cls.cg["dns"])
        cls.dns_bound = L.listen_cookies(L.ns_a, "udp", 53)
        cls.digs = []
        for server in (L.a4, L.a4b, L.a4, L.a4b, L.a6, L.a6):
            pid, r = L.run_in(L.ns_b, cls.cg["dig"], ["dig", f"@{server}", "+notcp", "+time=2", "+tries=1",
                                                      f"www.{DOMAIN}", "A"])
            if "status: NOERROR" not in r.stdout:
                raise AssertionError(f"dig @{server}: {r.stdout}")
            cls.digs.append((pid, server))
        q = dns_query(0x7477).hex()
        pid, r = L.run_in(L.ns_b, cls.cg["udp"], [py, peers, "udp-connected", q, L.a4])
        cls.udp_conn = (pid, json.loads(r.stdout))
        pid, r = L.run_in(L.ns_b, cls.cg["udp"], [py, peers, "udp-unconnected", q, L.a4, L.a4b, L.a4, L.a4b])
        cls.udp_unconn = (pid, json.loads(r.stdout))

        # The old connection ends; so do the servers (their sockets close,
        # their processes exit while the probe watches).
        L.old_sockets_end(cls.old)
        cls.dnsmasq.stop(signal.SIGTERM, 10)
        cls.nginx.stop(signal.SIGTERM, 10)

        # Every socket the test knows was announced and closed.
        want_closed = {cls.old_cli_info["cookie"], cls.old_acc_info["accepted_cookie"], cls.udp_conn[1]["cookie"],
                       cls.udp_unconn[1]["cookie"]} | {cls.old[k]["cookie"] for k in ("echo4", "echo6", "late4", "late6")}

        def all_closed():
            opened = {e["cookie"] for e in events(probe, "sock_open") if e["cgroup"] and
                      e["cgroup"].startswith(L.rel(L.cg_top))}
            closed = {e["cookie"] for e in events(probe, "sock_close")}
            # nginx closes its side when curl has gone: wait for every socket opened in the test's cgroups
            return want_closed <= closed and opened <= closed
        try:
            wait_until(all_closed, 20, "close events of the test's sockets")
        except AssertionError as e:
            log(str(e))  # the checks below say which
        exits = {p for p, *_ in cls.curls} | {p for p, _ in cls.digs} | {cls.nginx.pid, cls.dnsmasq.pid}
        try:
            wait_until(lambda: exits <= {e["tgid"] for e in events(probe, "exit")}, 10, "exit events")
        except AssertionError as e:
            log(str(e))

        probe.stop(signal.SIGINT, 20)
        cls.probe_rc = probe.p.returncode
        cls.root_after = L.root_progs()
        cls.foreign_during = L.foreign_count()
        # After the probe: traffic still counted by the foreign program.
        L.run_in(L.ns_b, cls.cg["cli"], [py, "-c", "import socket, sys; s = socket.socket(socket.AF_INET, "
                                         "socket.SOCK_DGRAM); [s.sendto(b'x', (sys.argv[1], 9)) for _ in range(5)]",
                                         L.a4])
        cls.foreign_after = L.foreign_count()
        tcpd.stop()
        cls.tcpdump_drops = tcpd.kernel_drops
        cls.pcap = read_pcap(L.dir / "veth.pcap")
        cls.ev = events(probe)
        log(f"probe printed {len(cls.ev)} lines; tcpdump saw {len(cls.pcap)} TCP/UDP packets "
            f"(captured {tcpd.captured}, dropped by the kernel {tcpd.kernel_drops})")

    # ---- helpers -----------------------------------------------------------
    def pcap_tcp_syns(self, port: int) -> set[tuple]:
        """(client ip, client port, server ip, server port) of every SYN to port on the veth."""
        return {(p["src"], p["sport"], p["dst"], p["dport"]) for p in self.pcap
                if p["proto"] == 6 and p["dport"] == port and p["tcp_flags"] & 0x12 == 0x02}

    # ---- checks ------------------------------------------------------------
    def test_00_probe_ran_clean(self):
        """Ready line, clean exit, every event valid, nothing dropped."""
        self.assertEqual(self.ready["cgroup2"], self.L.cg2)
        self.assertEqual(self.probe_rc, 0, self.probe.output()[-2000:])
        counters = [e for e in self.ev if e["type"] == "counters"]
        self.assertEqual(len(counters), 1, "the probe prints its counters when it stops")
        c = counters[0]
        self.assertEqual(c["drops"], {"ringbuf_full": 0, "no_storage": 0, "bad_header": 0}, c)
        self.assertEqual(c["invalid_records"], 0)
        self.assertEqual(self.tcpdump_drops, 0, "the reference capture lost packets")
        for t in ("sock_open", "sock_close", "exec", "exit"):
            printed = len([e for e in self.ev if e["type"] == t])
            self.assertGreater(printed, 0, f"no {t} events at all")
            # the counters are read after the last drain: at least what was printed
            self.assertGreaterEqual(c["emitted"][t], printed, f"{t}: emitted counter below what was printed")
        now = time.time()
        for e in self.ev:
            if "ts_ns" in e:
                self.assertTrue(self.t_start - 5 <= e["ts_ns"] / 1e9 <= now + 5,
                                f"ts_ns is not CLOCK_REALTIME of the run: {e}")

    def test_01_tcp_both_ends(self):
        """Every connection to nginx tcpdump saw: curl's socket (curl's pid,
        comm, cgroup) and nginx's accepted socket (the listener's creator,
        the nginx master; accepted), with the tuples of the SYN."""
        L = self.L
        syns = self.pcap_tcp_syns(80)
        by_port = {port: (pid, v6) for pid, port, v6 in self.curls}
        self.assertTrue(set(by_port) <= {s[1] for s in syns}, f"curl's ports {by_port} not among tcpdump's SYNs {syns}")
        for pid, port, v6 in self.curls:
            syn = [s for s in syns if s[1] == port]
            self.assertEqual(len(syn), 1, f"one SYN from curl's port {port}: {syn}")
            cli, cport, srv, sport = syn[0]
            o = [e for e in self.opens(l4="tcp") if tup(e) == (cli, cport, srv, sport)]
            self.assertEqual(len(o), 1, f"curl {pid}: one announcement of {syn[0]}: {o}")
            c = o[0]
            self.assertEqual((c["tgid"], c["pid"], c["comm"], c["flags"], c["ip_version"]),
                             (pid, pid, "curl", [], 6 if v6 else 4), c)
            self.assert_cgroup(c, self.cg["cli"], "curl's socket")
            self.assertEqual(c["netns_cookie"], self.old_cli_info["netns_cookie"], "curl's netns cookie")
            s = [e for e in self.opens(l4="tcp") if tup(e) == (srv, sport, cli, cport)]
            self.assertEqual(len(s), 1, f"nginx's end of {syn[0]}: {s}")
            s = s[0]
            self.assertEqual((s["tgid"], s["pid"], s["comm"], s["flags"]),
                             (self.nginx.pid, self.nginx.pid, "nginx", ["accepted"]), s)
            self.assert_cgroup(s, self.cg["srv"], "nginx's accepted socket")
            self.assertEqual(s["netns_cookie"], self.old_srv_info["netns_cookie"], "nginx's netns cookie")
            self.assertNotEqual(s["cookie"], c["cookie"])
        # and nothing announced on port 80 in the test's cgroups that tcpdump
        # did not see (the probe sees the whole machine: other tests too)
        top = L.rel(L.cg_top) + "/"
        seen = {(e["lport"] if e["rport"] == 80 else e["rport"]) for e in self.opens(l4="tcp")
                if 80 in (e["lport"], e["rport"]) and (e["cgroup"] or "").startswith(top)}
        self.assertEqual(seen, {s[1] for s in syns}, "announced client ports vs tcpdump's SYNs")

    def test_02_close_events(self):
        """Every socket announced in the test's cgroups is closed once, with its tuple."""
        top = self.L.rel(self.L.cg_top) + "/"
        mine = [e for e in self.opens() if (e["cgroup"] or "").startswith(top)]
        self.assertGreater(len(mine), 8)
        for o in mine:
            self.assert_closed(o, f"{o['comm']} {o['local']}->{o['remote']}")

    def test_03_listen_never_announced(self):
        """nginx's listeners took SYNs while the probe ran; neither they nor
        the older listener, nor dnsmasq's TCP listener, were announced."""
        self.assertEqual(len(self.nginx_listeners), 2, self.nginx_listeners)
        listeners = self.nginx_listeners | {self.old_srv_info["listen_cookie"]} | self.L.listen_cookies(
            self.L.ns_a, "tcp", 53)
        announced = {e["cookie"] for e in self.opens()}
        self.assertFalse(listeners & announced, "a listening socket was announced")
        self.assertTrue(all("accepted" in e["flags"] for e in self.opens(tgid=self.nginx.pid)))

    def test_04_socket_older_than_probe(self):
        """Sockets made before the probe (TCP, UDP over IPv4 and IPv6): every
        end announced with TW_SOCK_F_NO_CREATOR, the right cgroup, netns and
        tuple, then closed."""
        self.check_old_sockets(self.old, self.cg["old_srv"], self.cg["old_cli"])

    def test_05_udp(self):
        """dnsmasq's wildcard socket: announced unconnected, once per local
        address it answered on. A connected client: its 4-tuple. An
        unconnected client asking two servers twice: its local address once."""
        L = self.L
        queries = [p for p in self.pcap if p["proto"] == 17 and p["dport"] == 53]
        self.assertTrue(queries, "tcpdump saw no DNS query")
        d = self.opens(tgid=self.dnsmasq.pid, l4="udp")
        self.assertTrue(d, "dnsmasq's UDP socket was not announced")
        for e in d:
            self.assertEqual((e["flags"], e["lport"], e["rport"], ip(e["raddr"]).packed.strip(b"\0"), e["comm"]),
                             (["unconnected"], 53, 0, b"", "dnsmasq"), e)
            self.assertIn(e["cookie"], self.dns_bound, "not one of dnsmasq's sockets bound to port 53 (ss -e)")
            self.assert_cgroup(e, self.cg["dns"], "dnsmasq")
        self.assertEqual(sorted(str(ip(e["laddr"])) for e in d), sorted([L.a4, L.a4b, str(ip(L.a6))]),
                         f"one announcement per local address answered on (each asked twice or more): {d}")
        self.assertEqual({ip(e["laddr"]) for e in d}, {p["dst"] for p in queries})

        pid, info = self.udp_conn
        c = self.one_open(info["cookie"], "connected UDP client")
        self.assertEqual(tup(c), (ip(L.b4), info["lport"], ip(L.a4), 53))
        self.assertEqual((c["flags"], c["tgid"], c["l4"]), ([], pid, "udp"))
        self.assert_cgroup(c, self.cg["udp"], "connected UDP client")
        self.assertIn((ip(L.b4), info["lport"]), {(p["src"], p["sport"]) for p in queries})

        pid, info = self.udp_unconn
        self.assertEqual(info["answers"], 4)
        u = self.one_open(info["cookie"], "unconnected UDP client (4 queries to 2 servers)")
        self.assertEqual(tup(u), (ip(L.b4), info["lport"], ip("0.0.0.0"), 0))
        self.assertEqual((u["flags"], u["tgid"]), (["unconnected"], pid))
        self.assertEqual({p["dst"] for p in queries if (p["src"], p["sport"]) == (ip(L.b4), info["lport"])},
                         {ip(L.a4), ip(L.a4b)}, f"tcpdump: the client asked both servers from port {info['lport']}; "
                         f"UDP seen: {[p for p in self.pcap if p['proto'] == 17]}")

        for pid, server in self.digs:
            o = self.opens(tgid=pid, l4="udp")
            self.assertTrue(o, f"dig {pid}: no UDP socket announced")
            me = ip(L.b6) if ip(server).version == 6 else ip(L.b4)
            ports = {p["sport"] for p in queries if p["src"] == me and p["dst"] == ip(server)}
            for e in o:
                self.assertIn(e["lport"], ports, f"dig {pid}: {e} not a source port of its queries")
                self.assertEqual(ip(e["laddr"]), me)
                if "unconnected" not in e["flags"]:
                    self.assertEqual((ip(e["raddr"]), e["rport"]), (ip(server), 53))
                self.assert_cgroup(e, self.cg["dig"], "dig")

    def test_06_exec_exit(self):
        """Exec events of the test's processes: their pid, the program's path,
        comm, parent, cgroup; one exit per process (threads are not processes)."""
        me = os.getpid()
        procs = [(pid, "curl", self.cg["cli"]) for pid, _, _ in self.curls] + \
                [(pid, "dig", self.cg["dig"]) for pid, _ in self.digs] + \
                [(self.nginx.pid, "nginx", self.cg["srv"]), (self.dnsmasq.pid, "dnsmasq", self.cg["dns"])]
        for pid, prog, cg in procs:
            ex = [e for e in self.ev if e["type"] == "exec" and e["tgid"] == pid]
            last = [e for e in ex if e["comm"] == prog]
            self.assertEqual(len(last), 1, f"{prog} {pid}: one exec of {prog}: {ex}")
            e = last[0]
            self.assertTrue(e["filename"].endswith("/" + prog), e)
            self.assertEqual(os.path.basename(os.path.realpath(e["filename"])), prog)
            self.assertEqual(e["ppid"], me, e)
            self.assert_cgroup(e, cg, f"{prog}'s exec")
            # the chain sh -> ip netns exec -> prog, all in one pid
            self.assertEqual([x["comm"] for x in ex][-2:], ["ip", prog], ex)
        for pid, prog, _ in procs:
            x = [e for e in self.ev if e["type"] == "exit" and e["tgid"] == pid]
            self.assertEqual(len(x), 1, f"{prog} {pid}: one exit event (dig has several threads): {x}")
            ex = [e for e in self.ev if e["type"] == "exec" and e["tgid"] == pid]
            self.assertGreaterEqual(x[0]["ts_ns"], ex[-1]["ts_ns"])
            self.assertEqual(x[0]["comm"], prog)
        # (nginx and dnsmasq were stopped while the probe ran. Sockets a
        # process still holds close after its exit event: the kernel reports
        # the exit before it closes the files.)
        # the nginx worker is a process of its own: its exit too, its parent the master
        workers = {e["tgid"] for e in self.ev if e["type"] == "exit" and e["ppid"] == self.nginx.pid}
        self.assertEqual(len(workers), 1, f"nginx worker exits: {workers}")

    def test_07_scan(self):
        """--scan: the processes running before the probe, as /proc says."""
        scan = {e["tgid"]: e for e in self.ev if e["type"] == "process"}
        self.assertIn(1, scan)
        for p, cg in ((self.old_srv, self.cg["old_srv"]), (self.old_cli, self.cg["old_cli"])):
            e = scan.get(p.pid)
            self.assertIsNotNone(e, f"process {p.pid} not in the scan")
            self.assertEqual(e["ppid"], os.getpid())
            self.assertEqual(e["exe"], os.path.realpath(sys.executable))
            # comm: the name of the file exec'd (python3, a link to python3.x)
            self.assertEqual(e["comm"], os.path.basename(sys.executable)[:15])
            self.assertEqual(e["cgroup_id"], os.stat(cg).st_ino)
            self.assertEqual(e["cgroup"], self.L.rel(cg))

    def test_08_foreign_program(self):
        """The foreign program stayed attached and counting; the probe's
        programs were attached next to it and are gone after it exits."""
        ours = set(self.ready["prog_ids"])
        self.assertEqual(len(ours), 6)
        during = {p["id"] for p in self.root_during}
        after = {p["id"] for p in self.root_after}
        self.assertIn(self.foreign_id, during)
        self.assertEqual(len(ours & during), 4, f"the 4 cgroup programs attached at the root: {self.root_during}")
        self.assertIn(self.foreign_id, after, "the foreign program was detached")
        self.assertFalse(ours & after, f"probe programs left attached: {self.root_after}")
        self.assertGreater(self.foreign_during, self.foreign0, "the foreign program stopped counting")
        self.assertGreater(self.foreign_after, self.foreign_during, "the foreign program stopped counting after")


class NetnsCookieFallback(EventChecks):
    """Kernels before 2025 do not let cgroup_skb programs call
    bpf_get_netns_cookie; there the programs read the netns of a socket older
    than the hooks through its BTF type (TCP, and UDP over IPv6; IPv4 UDP
    sockets read 0, unknown). --no-skb-netns-helper makes this kernel do the
    same."""

    def test_old_sockets_without_the_helper(self):
        with IdLab() as L:
            self.L = L
            cg_srv, cg_cli = L.container(), L.container()
            o = L.old_sockets(cg_srv, cg_cli)
            probe = lab.Proc("probe", [PROBE, "--no-skb-netns-helper"], L.dir / "probe.log")
            L.procs.append(probe)
            L.json_line(probe, "prog_ids", timeout=30)
            L.old_sockets_talk(o)
            L.old_sockets_end(o)
            want = {o["cli"]["cookie"], o["acc"]["accepted_cookie"]} | \
                {o[k]["cookie"] for k in ("echo4", "echo6", "late4", "late6")}
            try:
                wait_until(lambda: want <= {e["cookie"] for e in events(probe, "sock_close")}, 20, "close events")
            except AssertionError as e:
                log(str(e))  # the checks say which
            probe.stop(signal.SIGINT, 20)
            self.ev = events(probe)
            counters = [e for e in self.ev if e["type"] == "counters"]
            self.assertEqual(len(counters), 1, probe.output()[-2000:])
            self.assertFalse(any(counters[0]["drops"].values()), counters[0])
            self.check_old_sockets(o, cg_srv, cg_cli, udp4_netns_known=False)


class Capabilities(unittest.TestCase):
    """The least capabilities: CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (or
    CAP_SYS_ADMIN). With one of them missing: one line naming it, exit 1,
    nothing left attached to the cgroup root."""

    def run_with(self, caps: str) -> subprocess.CompletedProcess:
        # uid 0 with a reduced bounding set: exactly these capabilities after exec
        return lab.run(["setpriv", f"--bounding-set=-all,{caps}", PROBE, "--seconds", "0.3"], check=False,
                       timeout=30)

    def test_least_capabilities(self):
        cg2 = cgroup2_mount()
        before = json.loads(lab.run(["bpftool", "-j", "cgroup", "show", cg2]).stdout.strip() or "[]")
        for caps in ("+bpf,+perfmon,+net_admin", "+sys_admin"):
            r = self.run_with(caps)
            self.assertEqual(r.returncode, 0, f"{caps}: {r.stderr}")
            self.assertIn('"type":"ready"', r.stdout)
            self.assertIn('"type":"counters"', r.stdout)
        for caps, missing in (("+bpf,+perfmon", "CAP_NET_ADMIN"), ("+bpf,+net_admin", "CAP_PERFMON"),
                              ("+perfmon,+net_admin", "CAP_BPF")):
            r = self.run_with(caps)
            self.assertEqual(r.returncode, 1, f"{caps}: {r.stdout} {r.stderr}")
            lines = r.stderr.strip().splitlines()
            self.assertEqual(len(lines), 1, f"{caps}: one line of error: {r.stderr}")
            self.assertRegex(lines[0], rf"^tapwire-identity-probe: cannot load the identity BPF programs: .*"
                                       rf"CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \(missing: {missing}\)$")
            self.assertNotIn('"type":"ready"', r.stdout)
        after = json.loads(lab.run(["bpftool", "-j", "cgroup", "show", cg2]).stdout.strip() or "[]")
        ours = {p["id"] for p in after if p.get("name", "").startswith(("tw_ident", "tw_sock"))} - \
            {p["id"] for p in before}
        self.assertFalse(ours, f"left attached: {after}")


# --------------------------------------------------------------------------
# --bench: the per-packet cost

def bpf_stats(ids: set[int]) -> dict[str, tuple[int, int]]:
    """name -> (run_time_ns, run_cnt) of the programs with these ids."""
    progs = json.loads(lab.run(["bpftool", "-j", "prog", "show"]).stdout.strip() or "[]")
    return {p.get("name", ""): (int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0)))
            for p in progs if int(p.get("id", -1)) in ids}


MINIMAL_BPF = r'''
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
/* The floor: cgroup_skb programs that only let the packet pass. */
SEC("cgroup_skb/ingress")
int twidb_min_in(struct __sk_buff *skb) { return 1; }
SEC("cgroup_skb/egress")
int twidb_min_out(struct __sk_buff *skb) { return 1; }
char LICENSE[] SEC("license") = "GPL";
'''


class MinimalProgs:
    """Pass-only cgroup_skb programs on the cgroup2 root (the cost of any
    program there), loaded once, attached per run. State in a twidb-* temp
    dir, so that sweep_stale() detaches them after a SIGKILL."""

    def __init__(self, cg2: str):
        self.cg2 = cg2
        self.dir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-{os.getpid()}-bench-"))
        src, obj = self.dir / "min.bpf.c", self.dir / "min.bpf.o"
        src.write_text(MINIMAL_BPF)
        lab.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{os.uname().machine}-linux-gnu",
                 "-c", src, "-o", obj])
        self.fs = self.dir / "bpffs"
        self.fs.mkdir()
        lab.run(["mount", "-t", "bpf", "bpf", self.fs])
        lab.run(["bpftool", "prog", "loadall", obj, self.fs / "progs"])
        self.ids = {}
        for name, hook in (("twidb_min_in", "ingress"), ("twidb_min_out", "egress")):
            self.ids[hook] = json.loads(lab.run(["bpftool", "-j", "prog", "show", "pinned",
                                                 self.fs / "progs" / name]).stdout)["id"]

    def attach(self):
        for hook, pid in self.ids.items():
            (self.dir / f"foreign-{hook}.json").write_text(json.dumps({"prog_id": pid, "hook": hook}))
            lab.run(["bpftool", "cgroup", "attach", self.cg2, hook, "id", str(pid), "multi"])

    def detach(self):
        for hook, pid in self.ids.items():
            lab.run(["bpftool", "cgroup", "detach", self.cg2, hook, "id", str(pid)], check=False)
            (self.dir / f"foreign-{hook}.json").unlink(missing_ok=True)

    def close(self):
        self.detach()
        lab.run(["umount", str(self.fs)], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def bench(rounds: int, seconds: int = 10, conns: int = 8) -> int:
    """wrk -t1 -cCONNS against nginx over the lab's veth: with nothing on the
    cgroup root, with pass-only programs there (the floor any cgroup_skb
    program costs), and with the probe (--quiet: it drains, prints nothing);
    ROUNDS rounds, the order rotating. Two workloads: keep-alive (the
    per-packet fast path) and Connection: close (every request a new
    connection: announce and close on both ends). Prints a markdown table."""
    stats_path = Path("/proc/sys/kernel/bpf_stats_enabled")
    prev = stats_path.read_text().strip()
    stats_path.write_text("1\n")
    rows = []
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    cg2 = cgroup2_mount()
    sweep_stale(cg2)
    mini = MinimalProgs(cg2)
    configs = ["none", "minimal", "probe"]
    try:
        with lab.Lab(dnsmasq=False) as L:
            workloads = {"keep-alive": [], "close": ["-H", "Connection: close"]}
            for wl, extra in workloads.items():
                L.ns(L.cli_ns, ["wrk", "-t1", f"-c{conns}", "-d1s", *extra, L.url("/f/100b.bin")], timeout=60)
                for rnd in range(rounds):
                    for cfg in configs[rnd % 3:] + configs[:rnd % 3]:
                        probe, ids = None, set()
                        if cfg == "probe":
                            probe = lab.Proc("probe", [PROBE, "--quiet"], L.dir / f"probe-{wl}-{rnd}.log")
                            L.procs.append(probe)
                            if not probe.wait_for_line(r'"type":"ready"', 30):
                                raise RuntimeError(f"probe not ready: {probe.output()}")
                            ids = set(json.loads(probe.lines[0])["prog_ids"])
                        elif cfg == "minimal":
                            mini.attach()
                            ids = set(mini.ids.values())
                        st0 = bpf_stats(ids)
                        r = L.ns(L.cli_ns, ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", *extra,
                                            L.url("/f/100b.bin")], timeout=seconds + 60)
                        st1 = bpf_stats(ids)
                        w = lab.parse_wrk(r.stdout)
                        row = {"workload": wl, "config": cfg, "round": rnd, "rps": w["rps"],
                               "errors": w["socket_errors"], "drops": 0}
                        for name, (t, n) in st1.items():
                            # bpftool shows names cut to 15 characters
                            hook = ("ingress" if name.startswith(("tw_ident_ingres", "twidb_min_in")) else
                                    "egress" if name.startswith(("tw_ident_egress", "twidb_min_out")) else name)
                            row[hook] = (t - st0.get(name, (0, 0))[0], n - st0.get(name, (0, 0))[1])
                        if probe:
                            probe.stop(signal.SIGINT, 20)
                            c = [json.loads(l) for l in probe.lines if '"type":"counters"' in l]
                            row["drops"] = sum(c[0]["drops"].values()) + c[0]["invalid_records"] if c else -1
                            row["opens"] = c[0]["emitted"]["sock_open"] if c else -1
                        elif cfg == "minimal":
                            mini.detach()
                        rows.append(row)
                        per = lambda h: f"{row[h][0] / row[h][1]:.0f}" if row.get(h, (0, 0))[1] else "-"
                        log(f"{wl} {cfg} round {rnd + 1}: {row['rps']:.0f} req/s"
                            + (f", BPF ns/packet in {per('ingress')} out {per('egress')}, drops {row['drops']}"
                               if cfg != "none" else ""))
    finally:
        mini.close()
        stats_path.write_text(prev + "\n")

    print()
    print(f"wrk -t1 -c{conns} -d{seconds}s GET /f/100b.bin against nginx (1 worker) over a veth pair between two "
          f"network namespaces; nothing on the cgroup root / pass-only cgroup_skb programs / "
          f"tapwire-identity-probe --quiet; {os.cpu_count()} CPUs; kernel {os.uname().release}; {rounds} rounds, "
          f"order rotating; {time.strftime('%Y-%m-%d %H:%M')}; load average before {' '.join(load_before)}")
    print()
    print("| workload | config | requests/s (runs) | median | vs none | BPF ns/packet in, out (all runs) | drops |")
    print("|---|---|---|---:|---:|---|---:|")
    verdicts = []
    for wl in ("keep-alive", "close"):
        base = [r["rps"] for r in rows if r["workload"] == wl and r["config"] == "none"]
        mb = statistics.median(base)
        for cfg in configs:
            rs = [r for r in rows if r["workload"] == wl and r["config"] == cfg]
            v = [r["rps"] for r in rs]

            def per(h):
                t, n = sum(r.get(h, (0, 0))[0] for r in rs), sum(r.get(h, (0, 0))[1] for r in rs)
                return f"{t / n:.0f}" if n else "-"
            print(f"| {wl} | {cfg} | {', '.join(f'{x:,.0f}' for x in v)} | {statistics.median(v):,.0f} "
                  f"| {statistics.median(v) / mb:.1%} | {per('ingress')}, {per('egress')} "
                  f"| {sum(r['drops'] for r in rs)} |")
        # above noise: the probe's median lies outside the range of the runs without it
        probe = statistics.median([r["rps"] for r in rows if r["workload"] == wl and r["config"] == "probe"])
        noise = (max(base) - min(base)) / mb
        above = probe < min(base) or probe > max(base)
        verdicts.append(f"{wl}: the probe's median is {probe / mb:.1%} of no programs; the runs without "
                        f"spread over {noise:.1%}: the difference is {'above' if above else 'within'} noise")
    print()
    for v in verdicts:
        print(f"- {v}")
    bad = [r for r in rows if r["errors"] or r["drops"]]
    return 1 if bad else 0


def require() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    for t in ("ip", "nginx", "dnsmasq", "tcpdump", "curl", "dig", "bpftool", "clang", "ss", "setpriv"):
        if not (shutil.which(t) or Path("/usr/sbin", t).exists()):
            problems.append(f"missing tool {t}")
    if not os.access(PROBE, os.X_OK):
        problems.append(f"missing binary {PROBE} (build it: cmake --build build --target tapwire-identity-probe)")
    if not cgroup2_mount():
        problems.append("no cgroup2 mount")
    if problems:
        msg = "cannot run: " + "; ".join(problems)
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


if __name__ == "__main__":
    require()
    if len(sys.argv) > 1 and sys.argv[1] == "--bench":
        sys.exit(bench(int(sys.argv[2]) if len(sys.argv) > 2 else 3,
                       int(sys.argv[3]) if len(sys.argv) > 3 else 10))
    unittest.main()

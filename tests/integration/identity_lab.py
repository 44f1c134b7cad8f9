"""tapwire identity lab: a Kubernetes node simulated with network namespaces
and cgroup v2 directories, for the end-to-end tests of workload identity
(docs/IDENTITY.md).

- a "node" network namespace holding a Linux bridge with the node's addresses
  (a random 10.A.0.0/16 in 10.64.0.0/10 and a random fdXX:…::/64 per lab);
- "pod" namespaces joined to the bridge by veth pairs (host side
  `twv<lab id><n>` in the node namespace, pod side `eth0`), default routes via
  the bridge; hostNetwork pods use the node namespace and its addresses;
- each pod's processes in cgroup v2 directories laid out as the kubelet lays
  them out (systemd or cgroupfs driver, containerd), below a per-lab root
  `<cgroup2 mount>/twid-<lab id>/`; a process is placed in its container's
  cgroup before it execs, so every socket it creates belongs to it;
- every pod, service and workload mirrored into the test Kubernetes API server
  (kubeapi.py), listening on 127.0.0.1 inside the node namespace.

    with IdentityLab() as lab:
        web = lab.add_pod("shop", "web-1")                   # Deployment "web"
        cli = lab.add_pod("shop", "client", workload=None)
        web.start_nginx()
        lab.add_service("shop", "web", [web])
        sensor = lab.start_sensor()                          # node namespace, lab.veth_regex
        cli.curl(f"http://{web.ip}/f/100b.bin")

Python 3.11 standard library only; the process machinery (Proc, run(), the
cleanup registry and signal handlers) is lab.py's. Everything a lab creates
(namespaces, veths, bridge, cgroup directories, processes, the API server,
temporary files) is removed in __exit__, on SIGINT/SIGTERM/SIGHUP and at
interpreter exit, even when a test fails; what a SIGKILLed run left behind is
swept by the next lab. Every wait is bounded. Servers are waited for by their
listening sockets (read from /proc), so the lab itself sends no traffic.

Details a test may rely on: a pod's eth0 MAC is 0a:58 + its IPv4 address,
and a reused address has the other pods' neighbour entries for it flushed, so
a new pod with a deleted pod's IP is reachable at once; node_run/node_spawn,
kubectl, tcpdump and the sensor run in the node namespace entered with
`nsenter --net` (host mounts, so the cgroup2 hierarchy is visible) and in the
root cgroup; the lab's process becomes a child subreaper so that orphaned pod
processes are reaped, not left as zombies.

Several labs may run at once: a lab claims its id and its /16 with files in
/run/tapwire-idlab (owner pid + start time), so ids, names, address ranges
and cgroup roots never collide; stale claims (owner gone) are swept.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import lab
from lab import FILE_SEED, FILES, Proc, Sensor, Tcpdump, log, run, sensor_bin

PREFIX = "twid"
CLAIM_DIR = Path("/run/tapwire-idlab")
NETNS_DIR = Path("/run/netns")  # where `ip netns add` mounts namespaces
QOS_CLASSES = ("besteffort", "burstable", "guaranteed")
CGROUP_DRIVERS = ("systemd", "cgroupfs")
DNS_ZONE = "id.test"  # the default zone of start_dnsmasq
_TW = "twid"  # the owner marker of claim files

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_CHILD_SUBREAPER = 36


# --------------------------------------------------------------------------
# cgroup v2 helpers

def _unescape_mountinfo(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def cgroup2_mount() -> tuple[Path, str]:
    """(mount point, root of the mount in this cgroup namespace) of the cgroup2
    hierarchy, from /proc/self/mountinfo. Prefers a mount of the hierarchy's
    root. /sys/fs/cgroup on a pure v2 host, /sys/fs/cgroup/unified in the
    hybrid layout."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, sep, right = line.partition(" - ")
        if not sep or not right.split() or right.split()[0] != "cgroup2":
            continue
        f = left.split()
        found.append((Path(_unescape_mountinfo(f[4])), _unescape_mountinfo(f[3])))
    if not found:
        raise RuntimeError("no cgroup2 mount in /proc/self/mountinfo")
    found.sort(key=lambda m: m[1] != "/")
    return found[0]


def cgroup_id(path: Path | str) -> int:
    """The cgroup id of a cgroup v2 directory (what bpf_get_current_cgroup_id
    and bpf_skb_cgroup_id return): its inode number."""
    return os.stat(path).st_ino


def cgroup_procs(path: Path) -> list[int]:
    """Every pid in the cgroup at path and below it."""
    pids: set[int] = set()
    if not path.is_dir():
        return []
    for d, _dirs, _files in os.walk(path):
        try:
            pids.update(int(x) for x in Path(d, "cgroup.procs").read_text().split())
        except (OSError, ValueError):
            pass
    return sorted(pids)


def _populated(path: Path) -> bool:
    try:
        for line in (path / "cgroup.events").read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == "populated":
                return v.strip() != "0"
    except OSError:
        return False
    return bool(cgroup_procs(path))


def _reap(pids, timeout: float = 0) -> None:
    """Reaps pids that are our children (orphans re-parented to us, the child
    subreaper) without blocking longer than timeout."""
    left = set(pids)
    deadline = time.monotonic() + timeout
    while left:
        for pid in list(left):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                left.discard(pid)
                continue
            if done:
                left.discard(pid)
        if not left or time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def kill_cgroup_tree(path: Path, keep_pids=(), timeout: float = 10) -> list[int]:
    """SIGKILLs every process in the cgroup at path and below (cgroup.kill, or
    one by one where the kernel has no cgroup.kill), waits (bounded) until the
    cgroup is not populated, reaps the killed orphans that are our children
    (not those in keep_pids: a Popen reaps its own), and removes the
    directories, children first. Returns the pids that were killed."""
    if not path.is_dir():
        return []
    pids = cgroup_procs(path)
    killed = list(pids)
    deadline = time.monotonic() + timeout
    kill_file = path / "cgroup.kill"
    while time.monotonic() < deadline:
        if kill_file.exists():
            try:
                kill_file.write_text("1")
            except OSError as e:
                log(f"cgroup.kill {path}: {e}")
        else:
            for pid in cgroup_procs(path):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        _reap([p for p in killed if p not in keep_pids], 0.1)
        if not _populated(path):
            break
        killed = sorted(set(killed) | set(cgroup_procs(path)))
    else:
        log(f"cgroup {path} still populated after {timeout}s: {cgroup_procs(path)}")
    _reap([p for p in killed if p not in keep_pids], 1)
    rmdir_tree(path, max(1.0, deadline - time.monotonic()))
    return killed


def rmdir_tree(path: Path, timeout: float = 5) -> None:
    """rmdir of a cgroup directory tree, children first; retries EBUSY (a
    cgroup whose last task is still exiting) until timeout."""
    deadline = time.monotonic() + timeout
    while path.exists():
        busy = []
        for d, _dirs, _files in os.walk(path, topdown=False):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                busy.append(f"{d}: {e}")
        if not path.exists():
            return
        if time.monotonic() >= deadline:
            log(f"could not remove cgroup {path}: {busy[:3]}")
            return
        time.sleep(0.05)


# --------------------------------------------------------------------------
# processes and sockets

def proc_starttime(pid: int) -> int | None:
    """Start time of pid (clock ticks since boot), to tell it from a later
    process that reuses the number; None if there is no such process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, starttime: int | None = None) -> bool:
    """pid runs (exists and is not a zombie), and is the process that started
    at starttime if given."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    if fields[0] in ("Z", "X"):
        return False
    return starttime is None or int(fields[19]) == starttime


def _socket_inodes(pid: int) -> set[int]:
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if t.startswith("socket:["):
                out.add(int(t[8:-1]))
    except OSError:
        pass
    return out


def bound_sockets(pid: int, proto: str, port: int) -> set[str]:
    """Families ("4", "6") in which pid itself holds a socket bound to port:
    TCP in LISTEN, UDP bound. Reads /proc/PID/net/*, which shows pid's
    network namespace, and pid's fds."""
    mine = _socket_inodes(pid)
    fams = set()
    want_state = "0A" if proto == "tcp" else "07"
    for fam, fname in (("4", proto), ("6", proto + "6")):
        try:
            lines = Path(f"/proc/{pid}/net/{fname}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10:
                continue
            lport = int(f[1].rsplit(":", 1)[1], 16)
            if lport == port and f[3] == want_state and int(f[9]) in mine:
                fams.add(fam)
    return fams


# --------------------------------------------------------------------------
# claims: a lab's id and /16 are files in CLAIM_DIR, owned by a live process

def _my_claim() -> dict:
    return {"owner": _TW, "pid": os.getpid(), "start": proc_starttime(os.getpid())}


def _claim_file(name: str, extra: dict | None = None) -> bool:
    CLAIM_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = CLAIM_DIR / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({**_my_claim(), **(extra or {})}, f)
    return True


def _claim_owner_alive(path: Path) -> bool:
    try:
        c = json.loads(path.read_text())
    except FileNotFoundError:
        return True  # released meanwhile: not ours to sweep
    except (OSError, ValueError):
        # being written right now, or garbage: give a fresh file the benefit of the doubt
        try:
            return time.time() - path.stat().st_mtime < 30
        except OSError:
            return True
    return process_alive(int(c.get("pid", 0)), c.get("start"))


def sweep_stale_labs() -> list[str]:
    """Removes what identity labs whose process is gone (SIGKILLed) left:
    processes in their cgroups and namespaces, the cgroup root, namespaces,
    temporary directory and claims. Labs of live processes are left alone.
    Returns the ids of the labs swept."""
    swept: list[str] = []
    if not CLAIM_DIR.is_dir():
        return swept
    try:
        cg2, _ = cgroup2_mount()
    except RuntimeError:
        cg2 = None
    for path in sorted(CLAIM_DIR.glob("lab-*.json")):
        if _claim_owner_alive(path):
            continue
        labid = path.name[4:-5]
        try:
            c = json.loads(path.read_text())
        except (OSError, ValueError):
            c = {}
        log(f"sweeping stale identity lab {labid} (pid {c.get('pid')})")
        if cg2 is not None:
            kill_cgroup_tree(cg2 / f"{PREFIX}-{labid}", timeout=5)
        nss = run(["ip", "netns", "list"], check=False, timeout=20).stdout.split("\n")
        for line in nss:
            name = line.split()[0] if line.split() else ""
            if name.startswith(f"{PREFIX}-{labid}-"):
                _delete_netns(name)
        tmp = c.get("tmp")
        if tmp and Path(tmp).name.startswith(f"{PREFIX}-{labid}-") and not Path(tmp, ".kept").exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if c.get("net") is not None:
            _release_claim(f"net-{c['net']}.json", c.get("pid"))
        path.unlink(missing_ok=True)
        swept.append(labid)
    # /16 claims whose lab claim is gone with its owner
    for path in CLAIM_DIR.glob("net-*.json"):
        if not _claim_owner_alive(path):
            path.unlink(missing_ok=True)
    return swept


def _release_claim(name: str, pid=None) -> None:
    path = CLAIM_DIR / name
    try:
        c = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if c.get("pid") == (pid if pid is not None else os.getpid()):
        path.unlink(missing_ok=True)


def _wait_exit(procs, timeout: float) -> None:
    """Waits until every Proc's own process has exited, timeout in all."""
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def netns_pids(name: str) -> list[int]:
    """Pids of the processes in the named network namespace (what `ip netns
    pids` says, without a process per call)."""
    try:
        st = os.stat(NETNS_DIR / name)
    except OSError:
        return []
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                t = os.stat(f"/proc/{d}/ns/net")
            except OSError:
                continue
            if (t.st_ino, t.st_dev) == (st.st_ino, st.st_dev) and process_alive(int(d)):
                out.append(int(d))
    return out


def _delete_netns(name: str) -> None:
    """Kills what still runs in a named network namespace, deletes it."""
    pids = netns_pids(name)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(pids, 1 if pids else 0)
    if (NETNS_DIR / name).exists():
        run(["ip", "netns", "del", name], check=False, timeout=20)


# --------------------------------------------------------------------------
# the sensor, in the node's network namespace

_SENSOR_FLAGS: dict[str, str] = {}


def node_netns_argv(ns: str) -> list[str]:
    """Enters only the network namespace (mounts stay the host's: the cgroup2
    hierarchy, bpffs). `ip netns exec` would remount /sys and hide them."""
    return ["nsenter", f"--net={NETNS_DIR / ns}"]


def sensor_supports(flag: str) -> bool:
    """Whether tapwire-sensor --help lists flag (e.g. --kubeconfig)."""
    b = str(sensor_bin())
    if b not in _SENSOR_FLAGS:
        try:
            r = run([b, "--help"], check=False, timeout=20)
            _SENSOR_FLAGS[b] = r.stdout + r.stderr
        except (OSError, subprocess.TimeoutExpired):
            _SENSOR_FLAGS[b] = ""
    return re.search(rf"(^|[\s,]){re.escape(flag)}\b", _SENSOR_FLAGS[b], re.M) is not None


class NodeSensor(Sensor):
    """tapwire-sensor in the node's network namespace. Entered with
    `nsenter --net` (only the network namespace changes), so the sensor sees
    the host's mounts, the cgroup2 hierarchy among them, as a hostNetwork
    DaemonSet with the host's /sys/fs/cgroup does. (`ip netns exec` would
    remount /sys and hide the cgroup2 mount.) wrap: the command that enters
    the namespace (default nsenter --net)."""

    def __init__(self, ns: str, data_dir: Path, interfaces: list[str], extra: list[str], log_path: Path,
                 wrap: list | None = None):
        self.data_dir = Path(data_dir)
        self.final_status = None
        cmd = list(wrap) if wrap else node_netns_argv(ns)
        cmd += [sensor_bin(), "--data-dir", data_dir]
        for i in interfaces:
            cmd += ["--interface", i]
        cmd += list(extra)
        Proc.__init__(self, "tapwire-sensor", cmd, log_path, death_sig=signal.SIGTERM)

    def wait_capturing(self, timeout: float = 30) -> dict:
        """Waits until the sensor says it captures, attached or not (a lab with
        no pod yet has no veth to attach to)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st and st.get("state") == "capturing" and st.get("pid") in (None, self.pid):
                return st
            if not self.alive():
                raise RuntimeError(f"sensor exited with {self.p.returncode} before it was ready:\n{self.output()}")
            time.sleep(0.1)
        raise RuntimeError(f"sensor not capturing after {timeout}s; status={self.status()}\n{self.output()}")


# --------------------------------------------------------------------------

@dataclass
class Container:
    name: str
    id: str  # 64 hex digits
    cgroup: Path  # the directory
    path: str  # its path below the cgroup2 mount, as /proc/PID/cgroup shows it ("/twid-…/kubepods…")
    cgroup_id: int = 0  # the directory's inode number
    runtime: str = "containerd"


@dataclass
class Service:
    namespace: str
    name: str
    cluster_ip: str
    port: int
    target_port: int
    slice_name: str
    pods: list = field(default_factory=list)
    uid: str | None = None

    @property
    def addresses(self) -> list[str]:
        return [p.ip for p in self.pods]


class Pod:
    """A pod of the lab: a network namespace (or the node's, hostNetwork) and
    one cgroup per container. Created by IdentityLab.add_pod."""

    def __init__(self, lab_: "IdentityLab", namespace: str, name: str, *, n: int, uid: str, ip: str, ip6: str,
                 host_network: bool, workload, labels: dict, qos: str, cgroup_driver: str):
        self.lab = lab_
        self.namespace = namespace
        self.name = name
        self.n = n
        self.uid = uid
        self.ip = ip
        self.ip6 = ip6
        self.host_network = host_network
        self.netns: str | None = None if host_network else f"{PREFIX}-{lab_.id}-p{n:02x}"
        self.veth: str | None = None if host_network else f"twv{lab_.id}{n:02x}"
        self.workload = tuple(workload) if workload else None
        self.owner: tuple | None = None  # (kind, name, uid) of the pod's controller, as in the API
        self.labels = dict(labels)
        self.qos = qos
        self.cgroup_driver = cgroup_driver
        self.cgroup: Path | None = None  # the pod-level cgroup directory
        self.containers: dict[str, Container] = {}
        self.procs: list[Proc] = []
        self.dir = lab_.dir / "pods" / f"{namespace}_{name}_{n:02x}"
        self.deleted = False

    def __repr__(self) -> str:
        return f"Pod({self.namespace}/{self.name} {self.ip} uid={self.uid})"

    @property
    def mac(self) -> str | None:
        """eth0's MAC address: 0a:58 and the four bytes of the IPv4 address."""
        if self.host_network:
            return None
        return "0a:58:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(self.ip).packed)

    @property
    def ns_for_exec(self) -> str:
        return self.netns or self.lab.node_ns

    def _container(self, container: str) -> Container:
        if self.deleted:
            raise RuntimeError(f"{self} was deleted")
        try:
            return self.containers[container]
        except KeyError:
            raise KeyError(f"{self} has no container {container!r} (has {list(self.containers)})") from None

    def _argv(self, cmd, container: str) -> list[str]:
        """cmd placed in the container's cgroup, then in the pod's network
        namespace: sh writes its own pid to cgroup.procs and execs nsenter,
        which execs cmd (one pid all along; children inherit the cgroup)."""
        c = self._container(container)
        return (["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(c.cgroup / "cgroup.procs")]
                + node_netns_argv(self.ns_for_exec) + [str(x) for x in cmd])

    def spawn(self, name: str, cmd, *, container: str = "main", death_sig=signal.SIGKILL, **kw) -> Proc:
        """A long-running process inside the pod (network namespace and the
        container's cgroup). Stopped by delete_pod or the lab's exit."""
        argv = self._argv(cmd, container)
        self.dir.mkdir(parents=True, exist_ok=True)
        p = Proc(f"{self.name}/{name}", argv, self.dir / f"{name}-{len(self.procs)}.log", death_sig=death_sig, **kw)
        self.procs.append(p)
        self.lab.procs.append(p)
        return p

    def run(self, cmd, *, container: str = "main", timeout: float = 60, check: bool = True,
            **kw) -> subprocess.CompletedProcess:
        """Runs cmd inside the pod and waits for it (bounded)."""
        return run(self._argv(cmd, container), timeout=timeout, check=check, **kw)

    def pids(self) -> list[int]:
        """Every pid in the pod's cgroups."""
        return cgroup_procs(self.cgroup) if self.cgroup else []

    # ---- servers ---------------------------------------------------------
    def _wait_bound(self, p: Proc, proto: str, port: int, families=("4", "6"), timeout: float = 15,
                    what: str = "") -> None:
        """Waits until p holds sockets bound to port (TCP: listening) in every
        family, inside the pod's network namespace. No traffic is sent."""
        want_ns = os.stat(NETNS_DIR / self.ns_for_exec).st_ino
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not p.alive():
                break
            try:
                in_ns = os.stat(f"/proc/{p.pid}/ns/net").st_ino == want_ns
            except OSError:
                in_ns = False
            if in_ns and set(families) <= bound_sockets(p.pid, proto, port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{what or p.name} in {self} not listening on {proto}/{port} after "
                           f"{timeout}s (alive={p.alive()}):\n{p.output()[-3000:]}")

    def start_nginx(self, *, port: int = 80, container: str = "main") -> Proc:
        """nginx (one worker, as root) on port, IPv4 and IPv6: /f/100b.bin,
        /f/10k.bin, /f/1m.bin (lab.py's FILES), and /status/<code> answering
        that status (200-599 but 444, which nginx reserves for "close")."""
        d = self.dir / f"nginx-{port}"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        www = self.lab.www_dir()
        statuses = []
        for code in range(200, 600):
            if code == 444:
                continue
            if 300 <= code < 400:
                statuses.append(f"        location = /status/{code} {{ return {code} /f/100b.bin; }}")
            else:
                statuses.append(f'        location = /status/{code} {{ return {code} "status {code}\\n"; }}')
        t = d / "tmp"
        conf = d / "nginx.conf"
        conf.write_text(f"""
user root root;
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 65;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    server {{
        listen {port};
        listen [::]:{port} ipv6only=on;
        server_name _;
        root {www};
        location = /post {{ client_body_in_single_buffer on; return 200 "posted\\n"; }}
{chr(10).join(statuses)}
    }}
}}
""")
        p = self.spawn(f"nginx-{port}", ["nginx", "-p", d, "-c", conf, "-e", d / "error.log"], container=container)
        self._wait_bound(p, "tcp", port, what="nginx")
        return p

    def start_dnsmasq(self, *, records: dict, container: str = "main", zone: str | None = None,
                      port: int = 53) -> Proc:
        """dnsmasq on the pod's addresses (UDP and TCP, port 53), answering
        name -> address (A, or AAAA for an IPv6 address; a value may be a list)
        from records, and NXDOMAIN for every other name: no upstream, every
        domain is local."""
        d = self.dir / f"dnsmasq-{port}"
        d.mkdir(parents=True, exist_ok=True)
        cmd = ["dnsmasq", "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
               "--no-hosts", "--no-poll", "--bind-interfaces", "--user=root", "--group=root",
               f"--listen-address={self.ip}", f"--listen-address={self.ip6}", f"--port={port}",
               f"--pid-file={d}/dnsmasq.pid", "--local=/#/", f"--local=/{zone or DNS_ZONE}/",
               "--log-facility=-"]
        for name, addrs in records.items():
            if isinstance(addrs, str):
                addrs = [addrs]
            cmd.append(f"--host-record={name.rstrip('.')}," + ",".join(addrs))
        p = self.spawn(f"dnsmasq-{port}", cmd, container=container)
        self._wait_bound(p, "udp", port, what="dnsmasq")
        self._wait_bound(p, "tcp", port, what="dnsmasq")
        return p

    def start_redis(self, *, port: int = 6379, container: str = "main") -> Proc:
        """redis-server on port, IPv4 and IPv6, no persistence, no protected mode."""
        d = self.dir / f"redis-{port}"
        d.mkdir(parents=True, exist_ok=True)
        cmd = ["redis-server", "--port", str(port), "--bind", "0.0.0.0", "::", "--protected-mode", "no",
               "--save", "", "--appendonly", "no", "--dir", d, "--daemonize", "no", "--logfile", "",
               "--pidfile", d / "redis.pid"]
        p = self.spawn(f"redis-{port}", cmd, container=container)
        self._wait_bound(p, "tcp", port, what="redis")
        return p

    # ---- clients ---------------------------------------------------------
    def curl(self, url: str, *, container: str = "main", extra=None, timeout: float = 20,
             check: bool = True) -> subprocess.CompletedProcess:
        """curl url from inside the pod; stdout is the body (binary bodies:
        r.stdout.encode("utf-8", "surrogateescape") gives the bytes)."""
        cmd = ["curl", "-sS", "-g", "-m", str(int(timeout))] + [str(x) for x in (extra or [])] + [url]
        return self.run(cmd, container=container, timeout=timeout + 10, check=check, errors="surrogateescape")

    def dig(self, name: str, server: str, *, qtype: str = "A", container: str = "main", tcp: bool = False,
            check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["dig", f"@{server}", "+time=2", "+tries=1", "+tcp" if tcp else "+notcp", name, qtype]
        return self.run(cmd, container=container, timeout=15, check=check)

    def redis_cli(self, host: str, *args, container: str = "main", port: int = 6379,
                  check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["redis-cli", "-h", host, "-p", str(port)] + [str(a) for a in args]
        return self.run(cmd, container=container, timeout=15, check=check)


# --------------------------------------------------------------------------

class IdentityLab:
    """A Kubernetes node in network namespaces and cgroups. See the module
    docstring."""

    def __init__(self, *, api: bool = True, node_name: str = "twid-node", workdir: Path | None = None,
                 keep_dir: bool = False):
        self.want_api = api
        self.node_name = node_name
        self.workdir = Path(workdir) if workdir else None
        self.keep_dir = keep_dir or os.environ.get("TW_LAB_KEEP") == "1"
        self.id: str = ""
        self.node_ns = self.bridge = self.node_ip = self.node_ip6 = self.veth_regex = ""
        self.net_a: int | None = None
        self.subnet4 = self.subnet6 = None
        self.cgroup2: Path | None = None
        self.cgroup2_root = "/"  # root of the cgroup2 mount in our cgroup namespace
        self.cgroup_root: Path | None = None
        self.api = None
        self.kubeconfig: Path | None = None
        self.dir: Path | None = None
        self.procs: list[Proc] = []
        self.pods: dict[tuple[str, str], Pod] = {}
        self.deleted_pods: list[Pod] = []
        self.services: dict[tuple[str, str], Service] = {}
        self.namespaces: list[str] = []  # every netns this lab created (deleted or not)
        self._n = 0
        self._ips_in_use: set[str] = set()
        self._ips_used: set[str] = set()  # ever given to a pod
        self._next_host = 256 + 2  # 10.A.1.2 first
        self._next_cluster_ip = 10
        self._owners: dict[tuple, tuple] = {}
        self._rs: dict[tuple[str, str], tuple[str, str]] = {}
        self._jobs: dict[tuple[str, str], tuple[str, str]] = {}
        self._www: Path | None = None
        self._cleaned = False
        self._entered = False
        self._claims: list[str] = []
        self.swept: list[str] = []  # ids of stale labs (of SIGKILLed runs) this one removed when it started
        self.sensor_kube_flags = False  # whether the last start_sensor passed --kubeconfig/--node-name

    # ---- lifecycle -------------------------------------------------------
    def __enter__(self) -> "IdentityLab":
        lab._install_handlers()
        lab._ACTIVE.append(self)  # the signal handlers and atexit clean it up
        self._entered = True
        try:
            _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphaned pod processes are reaped by us
            self.swept = sweep_stale_labs()
            self.cgroup2, self.cgroup2_root = cgroup2_mount()
            self._claim()
            d = Path(self.workdir or tempfile.gettempdir()) / f"{PREFIX}-{self.id}-{secrets.token_hex(4)}"
            self._update_claim(d)  # recorded first: a sweep after SIGKILL finds it
            d.mkdir(mode=0o755)
            self.dir = d
            self._setup_node()
            self.cgroup_root = self.cgroup2 / f"{PREFIX}-{self.id}"
            self.cgroup_root.mkdir()
            if self.want_api:
                self._start_api()
            log(f"identity lab {self.id}: node {self.node_ns} {self.node_ip} {self.node_ip6}, "
                f"cgroups {self.cgroup_root}, dir {self.dir}")
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def _claim(self) -> None:
        rng = random.SystemRandom()
        ns_list = run(["ip", "netns", "list"], check=False, timeout=20).stdout
        for _ in range(200):
            labid = "%04x" % rng.randrange(0x10000)
            if f"{PREFIX}-{labid}-" in ns_list or (self.cgroup2 / f"{PREFIX}-{labid}").exists():
                continue
            if _claim_file(f"lab-{labid}.json"):
                self.id = labid
                self._claims.append(f"lab-{labid}.json")
                break
        else:
            raise RuntimeError(f"no free identity lab id (claims in {CLAIM_DIR})")
        for a in rng.sample(range(64, 128), 64):
            if _claim_file(f"net-{a}.json", {"lab": self.id}):
                self.net_a = a
                self._claims.append(f"net-{a}.json")
                break
        else:
            raise RuntimeError(f"every /16 of 10.64.0.0/10 is taken by a running lab (claims in {CLAIM_DIR})")
        self.node_ns = f"{PREFIX}-{self.id}-node"
        self.bridge = f"twbr{self.id}"
        self.veth_regex = f"^twv{self.id}[0-9a-f]{{2}}$"
        self.subnet4 = ipaddress.IPv4Network(f"10.{self.net_a}.0.0/16")
        self.node_ip = f"10.{self.net_a}.0.1"
        p6 = "fd%02x:%04x:%04x:%s" % (rng.randrange(256), rng.randrange(0x10000), rng.randrange(0x10000), self.id)
        self.subnet6 = ipaddress.IPv6Network(f"{p6}::/64")
        self.node_ip6 = self._ip6_for(self.node_ip)

    def _update_claim(self, d: Path) -> None:
        path = CLAIM_DIR / f"lab-{self.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**_my_claim(), "net": self.net_a, "tmp": str(d)}))
        os.replace(tmp, path)

    def cleanup(self) -> None:
        """Removes everything the lab made. Idempotent; signals that arrive
        meanwhile (SIGTERM, SIGHUP, SIGINT, and SIGALRM: a test's time limit)
        are held until it is done, then delivered."""
        if self._cleaned:
            return
        self._cleaned = True
        held: list[int] = []
        old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGALRM):
                try:
                    old[s] = signal.signal(s, lambda n, f: held.append(n))
                except (ValueError, OSError):
                    pass
        try:
            self._cleanup()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            if self in lab._ACTIVE:
                lab._ACTIVE.remove(self)
            if held:
                log(f"signal {held[0]} arrived during cleanup")
                os.kill(os.getpid(), held[0])

    def _step(self, what: str, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except Exception as e:  # keep cleaning
            log(f"cleanup: {what}: {e!r}")

    def _cleanup(self) -> None:
        # 1. processes: signal all (sensors drain and detach on SIGINT), then wait for those outside the
        #    pods; a pod's leftovers (children holding its output pipe) die with its cgroup below
        pod_procs = {id(p) for pod in list(self.pods.values()) + self.deleted_pods for p in pod.procs}
        procs = list(reversed(self.procs))
        for p in procs:
            self._step(f"signal {p.name}", p.send, signal.SIGINT if isinstance(p, Sensor) else signal.SIGTERM)
        for p in procs:
            if id(p) not in pod_procs:
                self._step(f"stop {p.name}", p.stop, signal.SIGINT if isinstance(p, Sensor) else signal.SIGTERM,
                           20 if isinstance(p, Sensor) else 5)
        _wait_exit([p for p in procs if id(p) in pod_procs], 5)
        # 2. the API server (its listening socket holds the node namespace)
        if self.api is not None:
            self._step("stop the API server", self.api.stop)
        # 3. cgroups: kill what is left in them, rmdir children first
        popen_pids = {p.pid for p in self.procs}
        if self.cgroup_root is not None:
            self._step("cgroups", kill_cgroup_tree, self.cgroup_root, popen_pids)
        for p in procs:
            if id(p) in pod_procs:
                self._step(f"stop {p.name}", p.stop, signal.SIGKILL, 5)
        # 4. namespaces (their veths and the bridge go with them)
        for ns in reversed(self.namespaces):
            self._step(f"netns {ns}", _delete_netns, ns)
        # 5. files and claims
        if self.dir and self.dir.exists():
            if self.keep_dir:
                (self.dir / ".kept").touch()
                log(f"kept identity lab dir {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        for c in reversed(self._claims):
            self._step(f"claim {c}", _release_claim, c)

    # ---- the node --------------------------------------------------------
    def _setup_node(self) -> None:
        self.namespaces.append(self.node_ns)
        run(["ip", "netns", "add", self.node_ns])
        self.node_run(["sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0",
                       "net.ipv6.conf.default.accept_dad=0"])
        cmds = [f"link set lo up",
                f"link add {self.bridge} type bridge stp_state 0 forward_delay 0",
                f"addr add {self.node_ip}/16 dev {self.bridge}",
                f"addr add {self.node_ip6}/64 dev {self.bridge} nodad",
                f"link set {self.bridge} up"]
        run(["ip", "-n", self.node_ns, "-batch", "-"], input="\n".join(cmds) + "\n")

    def _start_api(self) -> None:
        try:
            import kubeapi  # tests/integration/kubeapi.py
        except ImportError as e:
            raise RuntimeError(f"the test API server (tests/integration/kubeapi.py) is not available: {e}") from e
        self._kubeapi = kubeapi
        self.api = kubeapi.KubeApiServer(self.dir / "kubeapi", netns=self.node_ns)
        (self.dir / "kubeapi").mkdir(exist_ok=True)
        self.api.start()
        self.kubeconfig = self.api.write_kubeconfig(self.dir / "kubeconfig")
        self.api.apply(kubeapi.node(self.node_name, addresses=[self.node_ip, self.node_ip6]))

    def www_dir(self) -> Path:
        """lab.py's FILES (same seed, same bytes) under DIR/www/f/, served by
        every pod's nginx."""
        if self._www is None:
            www = self.dir / "www"
            (www / "f").mkdir(parents=True, exist_ok=True)
            rng = random.Random(FILE_SEED)
            for name, size in FILES.items():
                (www / "f" / name).write_bytes(rng.randbytes(size))
            self._www = www
        return self._www

    @staticmethod
    def file_bytes() -> dict[str, bytes]:
        """The content of FILES, as nginx serves them."""
        rng = random.Random(FILE_SEED)
        return {name: rng.randbytes(size) for name, size in FILES.items()}

    # ---- addresses -------------------------------------------------------
    def _ip6_for(self, ip4: str) -> str:
        b = ipaddress.IPv4Address(ip4).packed
        return str(ipaddress.IPv6Address(int(self.subnet6.network_address) | (b[2] << 16) | b[3]))

    def _allocate_ip(self, ip: str | None) -> str:
        if ip is not None:
            a = ipaddress.IPv4Address(ip)
            if a not in self.subnet4 or a in (self.subnet4.network_address, self.subnet4.broadcast_address) \
                    or str(a) == self.node_ip:
                raise ValueError(f"{ip} is not a pod address of this lab ({self.subnet4}, node {self.node_ip})")
            if str(a) in self._ips_in_use:
                raise ValueError(f"{ip} is in use by another pod")
            return str(a)
        base = int(self.subnet4.network_address)
        while self._next_host < 0xFFFF:
            k = self._next_host
            self._next_host += 1
            if k & 0xFF in (0, 1, 255):
                continue
            cand = str(ipaddress.IPv4Address(base + k))
            if cand not in self._ips_in_use:
                return cand
        raise RuntimeError("no free pod address left in the lab's /16")

    def _next_cip(self) -> str:
        k = self._next_cluster_ip
        self._next_cluster_ip += 1
        return f"10.96.{k >> 8}.{k & 0xFF}"

    # ---- workloads -------------------------------------------------------
    def _owner_for(self, namespace: str, workload) -> tuple | None:
        if workload is None:
            return None
        kind, wname = workload
        k = self._kubeapi if self.api is not None else None
        if kind == "Deployment":
            if (namespace, wname) not in self._rs:
                h = "".join(random.SystemRandom().choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(10))
                self._rs[(namespace, wname)] = (f"{wname}-{h}", str(uuid.uuid4()))
                if k:
                    rs, rs_uid = self._rs[(namespace, wname)]
                    self.api.apply(k.replicaset(namespace, rs, deployment=wname, uid=rs_uid))
            rs, rs_uid = self._rs[(namespace, wname)]
            return ("ReplicaSet", rs, rs_uid)
        if kind in ("Job", "CronJob"):
            if (namespace, kind, wname) not in self._jobs:
                if kind == "Job":
                    jname = wname
                else:
                    jname = f"{wname}-{29_000_000 + random.SystemRandom().randrange(1_000_000)}"
                self._jobs[(namespace, kind, wname)] = (jname, str(uuid.uuid4()))
                if k:
                    jname, juid = self._jobs[(namespace, kind, wname)]
                    self.api.apply(k.job(namespace, jname, cronjob=wname if kind == "CronJob" else None, uid=juid))
            jname, juid = self._jobs[(namespace, kind, wname)]
            return ("Job", jname, juid)
        # StatefulSet, DaemonSet, a bare ReplicaSet, ...: the pod's direct controller
        key = (namespace, kind, wname)
        if key not in self._owners:
            self._owners[key] = (kind, wname, str(uuid.uuid4()))
        return self._owners[key]

    # ---- pods ------------------------------------------------------------
    def _pod_cgroup_paths(self, qos: str, driver: str, uid: str) -> Path:
        """The pod-level cgroup directory, relative to the lab's root."""
        if driver == "systemd":
            u = uid.replace("-", "_")
            if qos == "guaranteed":
                return Path("kubepods.slice", f"kubepods-pod{u}.slice")
            return Path("kubepods.slice", f"kubepods-{qos}.slice", f"kubepods-{qos}-pod{u}.slice")
        if qos == "guaranteed":
            return Path("kubepods", f"pod{uid}")
        return Path("kubepods", qos, f"pod{uid}")

    def add_pod(self, namespace: str, name: str, *, workload=("Deployment", "web"), host_network: bool = False,
                labels: dict | None = None, containers=("main",), qos: str = "besteffort",
                cgroup_driver: str = "systemd", ip: str | None = None) -> Pod:
        """A running pod: its cgroups (one per container), its network
        namespace and veth (not for hostNetwork), and its objects in the API
        server (Pod, and the ReplicaSet/Job of its workload). workload:
        ("Deployment", n) → owned by a ReplicaSet of Deployment n;
        ("CronJob", n) → by a Job of CronJob n; ("Job"|"StatefulSet"|
        "DaemonSet", n) → directly; None → a bare pod. labels default to
        {"app": workload name or pod name}."""
        if self._cleaned or not self._entered:
            raise RuntimeError("the lab is not running")
        if qos not in QOS_CLASSES:
            raise ValueError(f"qos must be one of {QOS_CLASSES}")
        if cgroup_driver not in CGROUP_DRIVERS:
            raise ValueError(f"cgroup_driver must be one of {CGROUP_DRIVERS}")
        containers = list(containers)
        if not containers or len(set(containers)) != len(containers):
            raise ValueError(f"containers must be distinct names: {containers}")
        if (namespace, name) in self.pods:
            raise ValueError(f"pod {namespace}/{name} exists")
        if workload is not None and (len(workload) != 2 or not all(isinstance(x, str) for x in workload)):
            raise ValueError(f"workload must be (kind, name) or None: {workload!r}")
        if self._n >= 0xFF:
            raise RuntimeError("at most 255 pods per lab")
        if host_network:
            if ip not in (None, self.node_ip):
                raise ValueError("a hostNetwork pod has the node's address")
            ip4 = self.node_ip
        else:
            ip4 = self._allocate_ip(ip)
        self._n += 1
        if labels is None:
            labels = {"app": workload[1] if workload else name}
        pod = Pod(self, namespace, name, n=self._n, uid=str(uuid.uuid4()), ip=ip4,
                  ip6=self.node_ip6 if host_network else self._ip6_for(ip4), host_network=host_network,
                  workload=workload, labels=labels, qos=qos, cgroup_driver=cgroup_driver)
        # registered before anything is made, so that cleanup finds what a failure leaves
        self.pods[(namespace, name)] = pod
        if not host_network:
            self._ips_in_use.add(ip4)
        try:
            pod.dir.mkdir(parents=True, exist_ok=True)
            self._make_cgroups(pod, containers)
            if not host_network:
                self._make_pod_network(pod)
                if ip4 in self._ips_used:
                    self._forget_neighbours(pod)
                self._ips_used.add(ip4)
            pod.owner = self._owner_for(namespace, workload)
            if self.api is not None:
                self.api.apply(self._pod_object(pod))
        except BaseException:
            self._remove_pod(pod)
            raise
        return pod

    def _make_cgroups(self, pod: Pod, containers: list[str]) -> None:
        rel = self._pod_cgroup_paths(pod.qos, pod.cgroup_driver, pod.uid)
        pod.cgroup = self.cgroup_root / rel
        pod.cgroup.mkdir(parents=True)
        for cname in containers:
            cid = secrets.token_hex(32)
            leaf = f"cri-containerd-{cid}.scope" if pod.cgroup_driver == "systemd" else cid
            d = pod.cgroup / leaf
            d.mkdir()
            inside = "/" + str(d.relative_to(self.cgroup2))
            path = (self.cgroup2_root.rstrip("/") + inside) if self.cgroup2_root != "/" else inside
            pod.containers[cname] = Container(cname, cid, d, path, cgroup_id(d))

    def _make_pod_network(self, pod: Pod) -> None:
        ns, veth = pod.netns, pod.veth
        self.namespaces.append(ns)
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", veth, "netns", self.node_ns, "type", "veth", "peer", "name", "eth0", "netns", ns])
        run(["ip", "-n", self.node_ns, "-batch", "-"],
            input=f"link set {veth} master {self.bridge}\nlink set {veth} up\n")
        run(["ip", "-n", ns, "-batch", "-"], input="\n".join([
            "link set lo up",
            # the MAC follows the IPv4 address (as the CNI bridge plugin did): a pod that reuses an address
            # is reached at once, through the neighbour entries other pods keep for it
            f"link set eth0 address {pod.mac}",
            f"addr add {pod.ip}/16 dev eth0",
            f"addr add {pod.ip6}/64 dev eth0 nodad",
            "link set eth0 up",
            f"route add default via {self.node_ip}",
            f"route add ::/0 via {self.node_ip6}"]) + "\n")

    def _forget_neighbours(self, pod: Pod) -> None:
        """A reused address: the neighbour entries the node and the other pods
        keep for it (a FAILED one after a try to reach the deleted pod) go, as
        the gratuitous ARP of a CNI plugin would update them."""
        for ns in [self.node_ns] + [p.netns for p in self.pods.values() if p.netns and p is not pod]:
            run(["ip", "-n", ns, "-batch", "-"], input=f"neigh flush to {pod.ip}\nneigh flush to {pod.ip6}\n",
                check=False, timeout=20)

    def _pod_object(self, pod: Pod) -> dict:
        k = self._kubeapi
        o = k.pod(pod.namespace, pod.name, ip=pod.ip, ip6=pod.ip6, node=self.node_name, uid=pod.uid,
                  host_network=pod.host_network, labels=pod.labels, owner=pod.owner,
                  containers=tuple((c.name, f"containerd://{c.id}") for c in pod.containers.values()))
        st = o.setdefault("status", {})
        st["hostIP"] = self.node_ip
        st["hostIPs"] = [{"ip": self.node_ip}, {"ip": self.node_ip6}]
        st["qosClass"] = {"besteffort": "BestEffort", "burstable": "Burstable", "guaranteed": "Guaranteed"}[pod.qos]
        return o

    def delete_pod(self, pod: Pod) -> None:
        """Kills the pod's processes, removes its cgroups (children first), its
        veth and namespace, and its object in the API server. Its address is
        free again (add_pod(ip=pod.ip) reuses it). Services keep listing it
        until update_service."""
        if pod.deleted:
            return
        if self.api is not None:
            try:
                self.api.delete("Pod", pod.namespace, pod.name)
            except KeyError:
                pass  # deleted from the API server by the test itself
        self._remove_pod(pod)

    def _remove_pod(self, pod: Pod) -> None:
        for p in pod.procs:
            p.send(signal.SIGTERM)
        _wait_exit(pod.procs, 3)  # a grace period, then SIGKILL for everything in the pod's cgroups
        if pod.cgroup is not None:
            kill_cgroup_tree(pod.cgroup, {p.pid for p in self.procs})
        for p in pod.procs:
            p.stop(signal.SIGKILL, 5)
        if not pod.host_network:
            run(["ip", "-n", self.node_ns, "link", "del", pod.veth], check=False, timeout=20)
            _delete_netns(pod.netns)
        pod.deleted = True
        self.pods.pop((pod.namespace, pod.name), None)
        self.deleted_pods.append(pod)
        if not pod.host_network:
            self._ips_in_use.discard(pod.ip)

    # ---- services --------------------------------------------------------
    def add_service(self, namespace: str, name: str, pods: list, *, port: int = 80, target_port: int = 80) -> Service:
        """A ClusterIP Service (its cluster IP is not routed) and an
        EndpointSlice listing the pods' IPv4 addresses."""
        if (namespace, name) in self.services:
            raise ValueError(f"service {namespace}/{name} exists")
        sl = f"{name}-{''.join(random.SystemRandom().choice('bcdfghjklmnpqrstvwxz2456789') for _ in range(5))}"
        svc = Service(namespace, name, self._next_cip(), port, target_port, sl, list(pods))
        if self.api is not None:
            k = self._kubeapi
            selector = dict(pods[0].labels) if pods else None
            obj = self.api.apply(k.service(namespace, name, cluster_ip=svc.cluster_ip,
                                           ports=(("http", port, "TCP"),), selector=selector))
            svc.uid = (obj or {}).get("metadata", {}).get("uid")
            self._apply_slice(svc)
        self.services[(namespace, name)] = svc
        return svc

    def _apply_slice(self, svc: Service) -> None:
        k = self._kubeapi
        o = k.endpointslice(svc.namespace, svc.slice_name, service=svc.name, addresses=[p.ip for p in svc.pods],
                            ports=(("http", svc.target_port, "TCP"),))
        for ep, p in zip(o.get("endpoints") or [], svc.pods):
            ep["nodeName"] = self.node_name
            ep["targetRef"] = {"kind": "Pod", "namespace": p.namespace, "name": p.name, "uid": p.uid}
        self.api.apply(o)

    def update_service(self, svc: Service, pods: list) -> None:
        """The service's EndpointSlice lists exactly these pods now."""
        svc.pods = list(pods)
        if self.api is not None:
            self._apply_slice(svc)

    def delete_service(self, svc: Service) -> None:
        if self.api is not None:
            self.api.delete("EndpointSlice", svc.namespace, svc.slice_name)
            self.api.delete("Service", svc.namespace, svc.name)
        self.services.pop((svc.namespace, svc.name), None)

    # ---- the node's namespace ----------------------------------------------
    def _node_argv(self, cmd) -> list[str]:
        """cmd in the node's network namespace and in the root of the cgroup2
        mount (where it can go: in a cgroup namespace whose root has
        controllers enabled it stays in the caller's cgroup, still not a pod's)."""
        return (["sh", "-c", 'echo $$ > "$0" 2>/dev/null; exec "$@"', str(self.cgroup2 / "cgroup.procs")]
                + node_netns_argv(self.node_ns) + [str(c) for c in cmd])

    def node_run(self, cmd, **kw) -> subprocess.CompletedProcess:
        """cmd in the node's network namespace, in the root cgroup (the node
        itself, not a pod); lab.run's defaults (check=True, timeout=60)."""
        return run(self._node_argv(cmd), **kw)

    def node_spawn(self, name: str, cmd, death_sig=signal.SIGTERM, **kw) -> Proc:
        p = Proc(name, self._node_argv(cmd), self.dir / f"{name}-{len(self.procs)}.log", death_sig=death_sig, **kw)
        self.procs.append(p)
        return p

    def start_tcpdump(self, dev: str, out: Path | str | None = None, extra=None, immediate: bool = True) -> Tcpdump:
        """tcpdump -w on dev in the node's namespace (a pod's veth, the bridge).
        immediate (default): every packet is written at once, so stop() right
        after the traffic loses nothing. immediate=False is lab.py's reference
        capture (big buffer, blocks retired after up to 1 s: wait that long
        before stop()), for traffic at full speed."""
        out = Path(out) if out else self.dir / f"tcpdump-{dev}.pcap"
        cmd = ["tcpdump", "-i", dev, "-w", out, "-s", "0", "-n", "-Z", "root", "-U"]
        cmd += ["--immediate-mode", "-B", "16384"] if immediate else ["-B", "262144"]
        cmd += list(extra or [])
        p = Tcpdump(f"tcpdump-{dev}", self._node_argv(cmd), self.dir / f"tcpdump-{dev}-{len(self.procs)}.log",
                    death_sig=signal.SIGINT)
        self.procs.append(p)
        p.out = out
        if not p.wait_for_line(r"listening on", 15):
            raise RuntimeError(f"tcpdump did not start:\n{p.output()}")
        return p

    def start_sensor(self, data_dir: Path | str | None = None, *, interfaces=None, extra=None, kube: bool = True,
                     wait: bool = True) -> NodeSensor:
        """tapwire-sensor in the node's namespace, attached to veth_regex by
        default. kube=True adds --kubeconfig and --node-name, when the lab has
        an API server and the sensor knows these flags (self.sensor_kube_flags
        says whether they were passed). wait: until it captures (attached,
        when some pod veth exists)."""
        data_dir = Path(data_dir) if data_dir else self.dir / f"sensor-data-{len(self.procs)}"
        args = list(extra or [])
        self.sensor_kube_flags = False
        if kube and self.kubeconfig is not None:
            if sensor_supports("--kubeconfig") and sensor_supports("--node-name"):
                args += ["--kubeconfig", str(self.kubeconfig), "--node-name", self.node_name]
                self.sensor_kube_flags = True
            else:
                log("tapwire-sensor has no --kubeconfig/--node-name yet: started without them")
        s = NodeSensor(self.node_ns, data_dir, list(interfaces or [self.veth_regex]), args,
                       self.dir / f"sensor-{len(self.procs)}.log", wrap=self._node_argv([]))
        self.procs.append(s)
        if wait:
            if interfaces is None and not any(not p.host_network for p in self.pods.values()):
                s.wait_capturing()
            else:
                s.wait_ready()
        return s

    def kubectl(self, *args, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess:
        """The real kubectl against the lab's API server, from the node's namespace."""
        if self.kubeconfig is None:
            raise RuntimeError("the lab has no API server (api=False)")
        cmd = ["kubectl", "--kubeconfig", self.kubeconfig, "--cache-dir", self.dir / "kubectl-cache",
               f"--request-timeout={int(timeout)}s"] + [str(a) for a in args]
        return self.node_run(cmd, timeout=timeout + 10, check=check)

    # ---- what the lab holds, for leftover checks -------------------------
    def inventory(self) -> dict:
        """Names of what the lab made and holds now (for a test to check that
        they are gone after the lab exits)."""
        veths = [p.veth for p in list(self.pods.values()) + self.deleted_pods if p.veth]
        pids = {}
        for p in self.procs:
            st = proc_starttime(p.pid)
            if st is not None:
                pids[p.pid] = st
        if self.cgroup_root is not None:
            for pid in cgroup_procs(self.cgroup_root):
                st = proc_starttime(pid)
                if st is not None:
                    pids[pid] = st
        for ns in self.namespaces:
            for pid in netns_pids(ns):
                st = proc_starttime(pid)
                if st is not None:
                    pids[pid] = st
        netns_inodes = {}
        for ns in self.namespaces:
            try:
                netns_inodes[ns] = os.stat(NETNS_DIR / ns).st_ino
            except OSError:
                pass
        return {"id": self.id, "pid": os.getpid(), "namespaces": list(self.namespaces), "netns_inodes": netns_inodes,
                "bridge": self.bridge, "veths": veths, "cgroup_root": str(self.cgroup_root),
                "dir": str(self.dir), "pids": pids, "claims": [str(CLAIM_DIR / c) for c in self._claims],
                "api_port": urlport(self.api.url) if self.api is not None else None}


def urlport(url: str) -> int | None:
    m = re.match(r"^\w+://[^/]*:(\d+)", url or "")
    return int(m.group(1)) if m else None


def require_identity_lab(api: bool = True) -> None:
    """Exits 77 (1 under CI=true) when an identity lab cannot run here: lab.py's
    checks plus cgroup v2, nsenter, kubectl and the API server module."""
    tools = ("ip", "nsenter", "nginx", "dnsmasq", "redis-server", "redis-cli", "curl", "dig", "sysctl")
    if api:
        tools += ("kubectl",)
    lab.require(binaries=False, tools=tools)
    problems = []
    try:
        mnt, _ = cgroup2_mount()
        if not os.access(mnt / "cgroup.procs", os.W_OK):
            problems.append(f"cgroup2 at {mnt} not writable")
    except RuntimeError as e:
        problems.append(str(e))
    if api:
        try:
            import kubeapi  # noqa: F401
        except ImportError as e:
            problems.append(f"tests/integration/kubeapi.py not importable: {e}")
    if problems:
        msg = "cannot run: " + "; ".join(problems)
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr, flush=True)
            raise SystemExit(1)
        print(f"SKIP: {msg}", file=sys.stderr, flush=True)
        raise SystemExit(lab.SKIP)

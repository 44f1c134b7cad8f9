"""tapwire integration test lab: two network namespaces joined by a veth pair,
real servers (nginx, dnsmasq) on one side, real clients (curl, wrk, dig) on
the other, tcpdump as the reference capture, and helpers to run the sensor and
the `tapwire` CLI.

Python 3.11 standard library only. Everything a Lab creates (namespaces,
processes, temporary files) is removed in __exit__, on SIGINT/SIGTERM/SIGHUP,
and at interpreter exit, even when a test fails. Every wait is bounded.

    with Lab() as lab:
        tcpd = lab.start_tcpdump(lab.srv_veth, "ref.pcap")
        sensor = lab.start_sensor()          # in the server namespace
        lab.curl(lab.url("/f/10k.bin"))
        sensor.stop(); tcpd.stop()
        lab.export_pcap(sensor.data_dir, "out.pcapng")
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
NS_PREFIX = "twlab"  # namespaces are twlab-<pid>-<rand>-srv / -cli

# Files nginx serves: name -> size. Random content from a fixed seed.
FILES = {"100b.bin": 100, "10k.bin": 10 * 1024, "1m.bin": 1024 * 1024}
FILE_SEED = 0x7A9


def build_dir() -> Path:
    return Path(os.environ.get("TW_BUILD_DIR") or REPO_ROOT / "build")


def sensor_bin() -> Path:
    return build_dir() / "tapwire-sensor"


def cli_bin() -> Path:
    return build_dir() / "tapwire"


def log(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Can this test run here? Under CI=true a test that cannot run fails (exit 1);
# otherwise it skips with 77 (ctest SKIP_RETURN_CODE).

SKIP = 77


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(binaries: bool = True, tools: tuple[str, ...] = ("ip", "tc", "nginx", "dnsmasq", "tcpdump",
                                                               "tshark", "curl", "wrk", "dig")) -> None:
    """Exits 77 (or 1 under CI=true) when the lab cannot run here."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    for t in tools:
        if not (shutil.which(t) or Path("/usr/sbin", t).exists()):
            problems.append(f"missing tool {t}")
    if binaries:
        for b in (sensor_bin(), cli_bin()):
            if not os.access(b, os.X_OK):
                problems.append(f"missing binary {b} (build first; TW_BUILD_DIR={build_dir()})")
    if not problems:
        probe = f"{NS_PREFIX}-{os.getpid()}-probe"
        r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=20)
        if r.returncode != 0:
            problems.append(f"no network namespace support: {r.stderr.strip()}")
        else:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    if problems:
        msg = "cannot run: " + "; ".join(problems)
        if in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(SKIP)


# --------------------------------------------------------------------------
# Children die with us: PR_SET_PDEATHSIG survives the exec done by
# `ip netns exec`, so even a SIGKILLed test leaves no servers behind.

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent(sig: int):
    def fn():
        _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    return fn


def run(cmd: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("preexec_fn", _die_with_parent(signal.SIGKILL))
    r = subprocess.run(cmd, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n"
                           f"stdout: {str(r.stdout)[-2000:]}\nstderr: {str(r.stderr)[-2000:]}")
    return r


class Proc:
    """A background process with its stdout+stderr captured line by line."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, death_sig=signal.SIGTERM, **kw):
        self.name = name
        self.cmd = [str(c) for c in cmd]
        self.log_path = log_path
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self._logf = open(log_path, "w")
        self.p = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, errors="replace",
                                  preexec_fn=_die_with_parent(death_sig), **kw)
        self._t = threading.Thread(target=self._reader, daemon=True)
        self._t.start()

    @property
    def pid(self) -> int:
        return self.p.pid

    def _reader(self):
        for line in self.p.stdout:
            self._logf.write(line)
            self._logf.flush()
            with self._cv:
                self.lines.append(line.rstrip("\n"))
                self._cv.notify_all()
        self.p.stdout.close()
        with self._cv:
            self._cv.notify_all()

    def output(self) -> str:
        with self._cv:
            return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> bool:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                if any(rx.search(l) for l in self.lines):
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not self._t.is_alive()):
                    return any(rx.search(l) for l in self.lines)
                self._cv.wait(min(left, 0.2))

    def alive(self) -> bool:
        return self.p.poll() is None

    def send(self, sig) -> None:
        if self.p.poll() is None:
            try:
                self.p.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self, sig=signal.SIGTERM, timeout: float = 15) -> int:
        """Sends sig, waits up to timeout, then SIGKILLs. Returns the exit code."""
        if self.p.poll() is None:
            self.send(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not exit {timeout}s after {sig!r}; killing")
                self.p.kill()
                self.p.wait(10)
        self._t.join(5)
        if not self._logf.closed:
            self._logf.close()
        return self.p.returncode


# --------------------------------------------------------------------------

class Tcpdump(Proc):
    def stop(self, sig=signal.SIGINT, timeout: float = 15) -> int:
        rc = super().stop(sig, timeout)
        out = self.output()
        m = re.search(r"(\d+) packets? dropped by kernel", out)
        self.kernel_drops = int(m.group(1)) if m else None
        m = re.search(r"(\d+) packets? captured", out)
        self.captured = int(m.group(1)) if m else None
        return rc


class Sensor(Proc):
    """tapwire-sensor running in a namespace."""

    def __init__(self, lab: "Lab", ns: str, data_dir: Path, interfaces: list[str], extra: list[str],
                 log_path: Path):
        self.data_dir = Path(data_dir)
        self.final_status: dict | None = None
        cmd = ["ip", "netns", "exec", ns, sensor_bin(), "--data-dir", data_dir]
        for i in interfaces:
            cmd += ["--interface", i]
        cmd += list(extra)
        super().__init__("tapwire-sensor", cmd, log_path, death_sig=signal.SIGTERM)

    def status(self) -> dict | None:
        try:
            return json.loads((self.data_dir / "status.json").read_text())
        except (OSError, ValueError):
            return None

    def wait_ready(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st and st.get("state") == "capturing" and st.get("interfaces") and st.get("pid") in (None, self.pid):
                return st
            if not self.alive():
                raise RuntimeError(f"sensor exited with {self.p.returncode} before it was ready:\n{self.output()}")
            time.sleep(0.1)
        raise RuntimeError(f"sensor not capturing after {timeout}s; status={self.status()}\n{self.output()}")

    def wait_status_update(self, timeout: float = 5) -> dict | None:
        """Waits until status.json is rewritten (updated_ns changes)."""
        first = (self.status() or {}).get("updated_ns")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st and st.get("updated_ns") != first:
                return st
            time.sleep(0.1)
        return self.status()

    def stop(self, sig=signal.SIGINT, timeout: float = 30) -> int:
        rc = super().stop(sig, timeout)
        self.final_status = self.status()
        return rc

    def kill9(self) -> None:
        self.send(signal.SIGKILL)
        self.p.wait(10)
        self._t.join(5)


# --------------------------------------------------------------------------

_ACTIVE: list["Lab"] = []
_HANDLERS_INSTALLED = False


def _cleanup_all():
    for lab in list(_ACTIVE):
        lab.cleanup()


def _on_signal(signum, frame):
    log(f"signal {signum}: cleaning up")
    _cleanup_all()
    # Re-raise as the default action so the exit status says what happened.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers():
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, _on_signal)
    atexit.register(_cleanup_all)
    _HANDLERS_INSTALLED = True


def sweep_stale_namespaces() -> None:
    """Deletes twlab-<pid>-* namespaces whose creating process is gone
    (left by a test run that was SIGKILLed)."""
    r = run(["ip", "netns", "list"], check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{NS_PREFIX}-(\d+)-", name)
        if not m or Path(f"/proc/{m.group(1)}").exists():
            continue
        pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run(["ip", "netns", "del", name], check=False)
        log(f"removed stale namespace {name}")
    for d in Path(tempfile.gettempdir()).glob(f"{NS_PREFIX}-*-*-*"):
        m = re.match(rf"{NS_PREFIX}-(\d+)-[0-9a-f]{{4}}-", d.name)
        if m and d.is_dir() and not Path(f"/proc/{m.group(1)}").exists() and not (d / ".kept").exists():
            shutil.rmtree(d, ignore_errors=True)


class Lab:
    """Two namespaces (server, client) joined by a veth pair, nginx and
    dnsmasq in the server namespace."""

    DOMAIN = "tw.test"

    def __init__(self, nginx: bool = True, dnsmasq: bool = True, nginx_workers: int = 1,
                 keep_dir: bool = False, nginx_server_extra: str = "", nginx_http_extra: str = ""):
        """nginx_server_extra: more directives for nginx's server block (locations; the
        document root is self.dir / "nginx" / "www", files may be added there at any time).
        nginx_http_extra: more directives for nginx's http block, e.g. another server block
        (`{www}` in it stands for the document root)."""
        self.want_nginx = nginx
        self.nginx_server_extra = nginx_server_extra
        self.nginx_http_extra = nginx_http_extra
        self.want_dnsmasq = dnsmasq
        self.nginx_workers = nginx_workers
        self.keep_dir = keep_dir or os.environ.get("TW_LAB_KEEP") == "1"
        tag = "%04x" % random.SystemRandom().randrange(0x10000)
        self.id = f"{os.getpid()}-{tag}"
        self.srv_ns = f"{NS_PREFIX}-{self.id}-srv"
        self.cli_ns = f"{NS_PREFIX}-{self.id}-cli"
        # interface names: at most 15 characters
        short = "%05x" % random.SystemRandom().randrange(0x100000)
        self.srv_veth = f"tw{short}s"
        self.cli_veth = f"tw{short}c"
        self.n = 1 + (os.getpid() + int(tag, 16)) % 250  # own namespaces, so no clash either way
        self.srv4, self.cli4 = f"10.199.{self.n}.1", f"10.199.{self.n}.2"
        self.srv6, self.cli6 = f"fd00:7477:{self.n}::1", f"fd00:7477:{self.n}::2"
        self.dir: Path | None = None
        self.procs: list[Proc] = []
        self.namespaces: list[str] = []
        self._cleaned = False
        self.file_bytes: dict[str, bytes] = {}

    # ---- lifecycle -------------------------------------------------------
    def __enter__(self) -> "Lab":
        _install_handlers()
        _ACTIVE.append(self)
        try:
            sweep_stale_namespaces()
            self.dir = Path(tempfile.mkdtemp(prefix=f"twlab-{self.id}-"))
            os.chmod(self.dir, 0o755)
            self._setup_network()
            if self.want_nginx:
                self._start_nginx()
            if self.want_dnsmasq:
                self._start_dnsmasq()
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
                if isinstance(p, Sensor):
                    p.stop(signal.SIGINT, 20)
                else:
                    p.stop(signal.SIGTERM, 5)
            except Exception as e:  # keep cleaning
                log(f"stopping {p.name}: {e}")
        for ns in self.namespaces:
            # anything still inside (started by a test directly) goes too
            pids = run(["ip", "netns", "pids", ns], check=False, timeout=10).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(["ip", "netns", "del", ns], check=False, timeout=20)
        if self.dir and self.dir.exists():
            if self.keep_dir:
                (self.dir / ".kept").touch()  # the sweep of stale labs leaves it alone
                log(f"kept lab dir {self.dir}")
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        if self in _ACTIVE:
            _ACTIVE.remove(self)

    # ---- network ---------------------------------------------------------
    def _setup_network(self):
        for ns in (self.srv_ns, self.cli_ns):
            run(["ip", "netns", "add", ns])
            self.namespaces.append(ns)
            self.ns(ns, ["ip", "link", "set", "lo", "up"])
        run(["ip", "link", "add", self.srv_veth, "netns", self.srv_ns, "type", "veth",
             "peer", "name", self.cli_veth, "netns", self.cli_ns])
        for ns, dev, a4, a6 in ((self.srv_ns, self.srv_veth, self.srv4, self.srv6),
                                (self.cli_ns, self.cli_veth, self.cli4, self.cli6)):
            self.ns(ns, ["ip", "addr", "add", f"{a4}/24", "dev", dev])
            self.ns(ns, ["ip", "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad"])
            self.ns(ns, ["ip", "link", "set", dev, "up"])
        # bounded wait for the link to be up on both ends
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = self.ns(self.cli_ns, ["ping", "-c1", "-W1", self.srv4], check=False) \
                if shutil.which("ping") else None
            if r is None:
                break
            if r.returncode == 0:
                break
            time.sleep(0.2)

    def ns(self, ns: str, cmd: list, timeout: float = 60, check: bool = True, **kw):
        """Runs cmd in namespace ns and waits for it."""
        return run(["ip", "netns", "exec", ns] + [str(c) for c in cmd], timeout=timeout, check=check, **kw)

    def srv(self, cmd: list, **kw):
        return self.ns(self.srv_ns, cmd, **kw)

    def cli(self, cmd: list, **kw):
        return self.ns(self.cli_ns, cmd, **kw)

    def spawn(self, name: str, ns: str, cmd: list, death_sig=signal.SIGTERM, cls=Proc, **kw) -> Proc:
        p = cls(name, ["ip", "netns", "exec", ns] + [str(c) for c in cmd],
                self.dir / f"{name}-{len(self.procs)}.log", death_sig=death_sig, **kw)
        self.procs.append(p)
        return p

    # ---- servers ---------------------------------------------------------
    def _start_nginx(self):
        d = self.dir / "nginx"
        www = d / "www" / "f"
        www.mkdir(parents=True)
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (d / "tmp" / sub).mkdir(parents=True)
        rng = random.Random(FILE_SEED)
        for name, size in FILES.items():
            data = rng.randbytes(size)
            (www / name).write_bytes(data)
            self.file_bytes[name] = data
        conf = d / "nginx.conf"
        t = d / "tmp"
        conf.write_text(f"""
user root root;
daemon off;
master_process on;
worker_processes {self.nginx_workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    server {{
        listen 80 reuseport;
        listen [::]:80 ipv6only=on;
        server_name _;
        root {d}/www;
        client_max_body_size 16m;
        location = /post {{
            client_body_in_single_buffer on;
            return 200 "posted\\n";
        }}
{self.nginx_server_extra}
    }}
{self.nginx_http_extra.replace("{www}", str(d / "www"))}
}}
""")
        self.nginx = self.spawn("nginx", self.srv_ns, ["nginx", "-p", d, "-c", conf, "-e", d / "error.log"],
                                death_sig=signal.SIGKILL)
        self._wait_tcp(self.srv4, 80, "nginx")

    def _start_dnsmasq(self):
        d = self.dir / "dnsmasq"
        d.mkdir()
        dom = self.DOMAIN
        cmd = ["dnsmasq", "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
               "--no-hosts", "--no-poll", "--bind-interfaces", "--user=root", "--group=root",
               f"--listen-address={self.srv4}", f"--listen-address={self.srv6}", "--port=53",
               f"--pid-file={d}/dnsmasq.pid", f"--local=/{dom}/",
               f"--host-record=www.{dom},{self.srv4},{self.srv6}",
               f"--host-record=api.{dom},10.199.{self.n}.10",
               f"--host-record=v6only.{dom},{self.srv6}",
               f"--cname=alias.{dom},www.{dom}",
               f"--mx-host={dom},mail.{dom},10",
               f"--host-record=mail.{dom},10.199.{self.n}.25",
               f"--txt-record={dom},\"tapwire test lab\",\"second string\"",
               f"--txt-record=long.{dom}," + ",".join(f"\"{'x' * 200}\"" for _ in range(5))]
        self.dnsmasq = self.spawn("dnsmasq", self.srv_ns, cmd, death_sig=signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = self.cli(["dig", f"@{self.srv4}", "+short", "+time=1", "+tries=1", f"www.{dom}", "A"],
                         check=False, timeout=5)
            if r.returncode == 0 and self.srv4 in r.stdout:
                return
            if not self.dnsmasq.alive():
                break
            time.sleep(0.2)
        raise RuntimeError(f"dnsmasq not answering:\n{self.dnsmasq.output()}")

    def _wait_tcp(self, host: str, port: int, what: str, timeout: float = 10):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.cli(["curl", "-s", "-o", "/dev/null", "-m", "2", f"http://{host}:{port}/"],
                         check=False, timeout=5)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"{what} not answering on {host}:{port}")

    # ---- clients ---------------------------------------------------------
    def url(self, path: str, v6: bool = False) -> str:
        host = f"[{self.srv6}]" if v6 else self.srv4
        return f"http://{host}{path}"

    def curl(self, *urls: str, extra: list | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """One curl process fetching all urls over one keep-alive connection."""
        cmd = ["curl", "-sS", "--fail", "-m", str(int(timeout)), "-w", "%{http_code} %{size_download}\\n"]
        cmd += list(extra or [])
        for u in urls:
            cmd += [u, "-o", "/dev/null"]
        return self.cli(cmd, timeout=timeout + 10)

    def wrk(self, path: str, threads: int = 1, conns: int = 4, duration: int = 3, v6: bool = False,
            ns: str | None = None, delay_ms: int = 0) -> dict:
        """wrk against nginx. delay_ms > 0 paces each connection (wrk's delay()
        hook) so that the reference tcpdump keeps up on a small machine.
        wrk opens conns + 1 connections: one to probe the address first."""
        cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s"]
        if delay_ms:
            script = self.dir / f"delay{delay_ms}.lua"
            script.write_text(f"function delay()\n  return {int(delay_ms)}\nend\n")
            cmd += ["-s", script]
        r = self.ns(ns or self.cli_ns, cmd + [self.url(path, v6)], timeout=duration + 60)
        return parse_wrk(r.stdout)

    def mixed_traffic(self, wrk_seconds: int = 3, wrk_delay_ms: int = 1) -> dict:
        """The equivalence test's traffic: HTTP over IPv4 and IPv6 (curl GET of
        every file several times over keep-alive, POST with a body, paced wrk)
        and DNS over UDP (v4 and v6). Returns what it did, for assertions."""
        did = {"tcp_v4": 0, "tcp_v6": 0, "udp_v4": 0, "udp_v6": 0, "http_requests": 0}
        files = [self.url(f"/f/{f}") for f in FILES]
        # one connection, every file three times (keep-alive)
        r = self.curl(*(files * 3))
        self._check_curl(r, 9)
        did["tcp_v4"] += 1
        # separate connections, one file each
        for f in FILES:
            self._check_curl(self.curl(self.url(f"/f/{f}")), 1)
            did["tcp_v4"] += 1
        # POST bodies (small and 1 MB), one connection
        body = self.dir / "nginx" / "www" / "f" / "1m.bin"
        r = self.curl(self.url("/post"), self.url("/post"),
                      extra=["-X", "POST", "-H", "Expect:", "--data-binary", f"@{body}"])
        self._check_curl(r, 2)
        did["tcp_v4"] += 1
        r = self.curl(self.url("/post"), extra=["-X", "POST", "-d", "hello=tapwire&n=1"])
        self._check_curl(r, 1)
        did["tcp_v4"] += 1
        # IPv6: every file twice, one connection; a POST
        r = self.curl(*([self.url(f"/f/{f}", v6=True) for f in FILES] * 2))
        self._check_curl(r, 6)
        did["tcp_v6"] += 1
        r = self.curl(self.url("/post", v6=True), extra=["-X", "POST", "-d", "v6=yes"])
        self._check_curl(r, 1)
        did["tcp_v6"] += 1
        # wrk, paced
        w = self.wrk("/f/10k.bin", conns=4, duration=wrk_seconds, delay_ms=wrk_delay_ms)
        if w["requests"] <= 0 or w["socket_errors"] or w["non2xx"]:
            raise RuntimeError(f"wrk failed:\n{w['raw']}")
        did["tcp_v4"] += 4 + 1
        did["wrk"] = w
        w6 = self.wrk("/f/100b.bin", conns=2, duration=1, v6=True, delay_ms=wrk_delay_ms)
        if w6["requests"] <= 0 or w6["socket_errors"] or w6["non2xx"]:
            raise RuntimeError(f"wrk (IPv6) failed:\n{w6['raw']}")
        did["tcp_v6"] += 2 + 1
        did["http_requests"] += w["requests"] + w6["requests"]
        # DNS over UDP
        dom = self.DOMAIN
        queries = [(f"www.{dom}", "A", "NOERROR"), (f"www.{dom}", "AAAA", "NOERROR"), (dom, "MX", "NOERROR"),
                   (dom, "TXT", "NOERROR"), (f"alias.{dom}", "A", "NOERROR"), (f"long.{dom}", "TXT", "NOERROR"),
                   (f"nosuchname.{dom}", "A", "NXDOMAIN")]
        for v6 in (False, True):
            for name, qtype, rcode in queries:
                r = self.dig(name, qtype, v6=v6)
                if f"status: {rcode}" not in r.stdout:
                    raise RuntimeError(f"dig {name} {qtype} (v6={v6}): expected {rcode}:\n{r.stdout}")
                did["udp_v6" if v6 else "udp_v4"] += 1
        return did

    def _check_curl(self, r: subprocess.CompletedProcess, n: int):
        lines = [l for l in r.stdout.splitlines() if l.strip()]
        if len(lines) != n or any(not l.startswith("200 ") for l in lines):
            raise RuntimeError(f"curl: expected {n} x 200, got {lines}\n{r.stderr}")
        self.http_requests_done = getattr(self, "http_requests_done", 0) + n

    def dig(self, name: str, qtype: str = "A", v6: bool = False) -> subprocess.CompletedProcess:
        server = self.srv6 if v6 else self.srv4
        return self.cli(["dig", f"@{server}", "+time=2", "+tries=1", "+notcp", name, qtype], timeout=15)

    # ---- captures --------------------------------------------------------
    def start_tcpdump(self, dev: str | None = None, out: Path | str | None = None, ns: str | None = None,
                      extra: list | None = None, plain: bool = False) -> Tcpdump:
        """tcpdump -w on dev. The reference capture (default) has a big kernel
        buffer; plain=True is a bare `tcpdump -w` (bench)."""
        dev = dev or self.srv_veth
        ns = ns or (self.srv_ns if dev == self.srv_veth else self.cli_ns)
        out = Path(out) if out else self.dir / f"tcpdump-{dev}.pcap"
        cmd = ["tcpdump", "-i", dev, "-w", out, "-s", "0", "-n", "-Z", "root"]
        if not plain:
            # a 256 MiB buffer, filled in blocks (no --immediate-mode): keeps up with wrk at full
            # speed on 2 cores, where an immediate-mode tcpdump drops
            cmd += ["-U", "-B", "262144"]
        cmd += list(extra or [])
        p = self.spawn(f"tcpdump-{dev}", ns, cmd, death_sig=signal.SIGINT, cls=Tcpdump)
        p.out = out
        if not p.wait_for_line(r"listening on", 15):
            raise RuntimeError(f"tcpdump did not start:\n{p.output()}")
        return p

    def start_sensor(self, data_dir: Path | str | None = None, interfaces: list[str] | None = None,
                     extra: list | None = None, ns: str | None = None, wait: bool = True) -> Sensor:
        data_dir = Path(data_dir) if data_dir else self.dir / "data"
        s = Sensor(self, ns or self.srv_ns, data_dir, interfaces or [self.srv_veth], extra or [],
                   self.dir / f"sensor-{len(self.procs)}.log")
        self.procs.append(s)
        if wait:
            s.wait_ready()
        return s

    def tc_state(self, dev: str | None = None, ns: str | None = None) -> dict:
        """qdiscs and filters on dev, as text."""
        dev = dev or self.srv_veth
        ns = ns or (self.srv_ns if dev == self.srv_veth else self.cli_ns)
        q = self.ns(ns, ["tc", "qdisc", "show", "dev", dev]).stdout
        fi = self.ns(ns, ["tc", "filter", "show", "dev", dev, "ingress"], check=False).stdout
        fe = self.ns(ns, ["tc", "filter", "show", "dev", dev, "egress"], check=False).stdout
        return {"qdisc": q, "ingress": fi, "egress": fe}


# --------------------------------------------------------------------------
# CLI

def export_pcap(data_dir: Path | str, out: Path | str, timeout: float = 300, extra: list | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
    return run([str(cli_bin()), "export", "pcap", "--data-dir", str(data_dir), "-o", str(out)] + list(extra or []),
               timeout=timeout, check=check)


def parse_wrk(out: str) -> dict:
    res = {"raw": out}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1).strip() if m else ""
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non2xx"] = int(m.group(1)) if m else 0
    return res


def proc_cpu_seconds(pid: int) -> float | None:
    """utime+stime of a process (all threads), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)


# --------------------------------------------------------------------------
# What is attached to an interface (tc clsact + filters, tcx links)

def attachments(ns: str, dev: str) -> dict:
    """clsact: whether a clsact qdisc exists; filters: `tc filter show` lines of
    BPF filters (ingress+egress); bpf: programs bpftool lists on dev (tc and tcx)."""
    q = run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev], check=False).stdout
    filters = []
    for hook in ("ingress", "egress"):
        out = run(["ip", "netns", "exec", ns, "tc", "filter", "show", "dev", dev, hook], check=False).stdout
        filters += [f"{hook}: {l.strip()}" for l in out.splitlines() if l.strip()]
    progs = []
    if shutil.which("bpftool"):
        r = run(["ip", "netns", "exec", ns, "bpftool", "-j", "net", "show", "dev", dev], check=False)
        try:
            for blk in json.loads(r.stdout or "[]"):
                for kind, entries in blk.items():
                    for e in entries or []:
                        if isinstance(e, dict) and e.get("devname", dev) == dev:
                            progs.append(f"{kind}/{e.get('kind', '')}: {e.get('name', '')} id {e.get('prog_id', e.get('id', ''))}")
        except ValueError:
            pass
    # tcx links (Linux 6.6+): this system's bpftool and tc do not list them
    tcx = build_dir() / "tapwire-tcx"
    if os.access(tcx, os.X_OK):
        r = run(["ip", "netns", "exec", ns, tcx, "query", dev], check=False)
        if r.returncode == 0:
            j = json.loads(r.stdout)
            for hook in ("ingress", "egress"):
                progs += [f"tcx/{hook}: {e['name']} id {e['prog_id']}" for e in j.get(hook, [])]
    return {"clsact": "clsact" in q, "qdisc": q.strip(), "filters": filters, "bpf": progs}


def nothing_attached(att: dict) -> bool:
    return not att["clsact"] and not att["filters"] and not att["bpf"]


def describe_attachments(att: dict) -> str:
    return (f"qdisc: {att['qdisc']!r}; filters: {att['filters']}; bpf programs: {att['bpf']}")


def all_zero(obj) -> list[str]:
    """Paths of non-zero numeric leaves of a drops object (nested dicts/lists)."""
    bad = []

    def walk(o, path):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "cpu" and path.endswith("]"):
                    continue  # the CPU number in drops_by_cpu entries
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(o, list):
            for i, v in enumerate(o):
                walk(v, f"{path}[{i}]")
        elif isinstance(o, (int, float)) and not isinstance(o, bool) and o != 0:
            bad.append(f"{path}={o}")

    walk(obj, "")
    return bad


# --------------------------------------------------------------------------
# Tests that check many things and report them all at the end.

class Checks:
    """Collects failed checks; a test runs to the end and reports all of them."""

    def __init__(self):
        self.failures: list[str] = []

    def __call__(self, cond: bool, what: str) -> None:
        if not cond:
            self.failures.append(what)
            log(f"FAIL: {what}")

    def exit_code(self, name: str) -> int:
        if self.failures:
            log(f"{name}: {len(self.failures)} failure(s)")
            return 1
        log(f"{name}: OK")
        return 0


def tapwire(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """The tapwire CLI; raises with its output when it fails."""
    return run([cli_bin(), *map(str, args)], timeout=timeout)

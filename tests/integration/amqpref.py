"""AMQP 0-9-1 reference for the dissector's integration tests: a RabbitMQ
broker in a lab namespace (not the system service: its own node name,
Mnesia and log directories, Erlang cookie, port and epmd, all under the lab
directory), the amqp-tools clients (librabbitmq) in the client namespace,
and tshark's AMQP frames of a capture assembled into methods with their
content, as tapwire's records show them.

Standard library only.

    with lab.Lab(nginx=False, dnsmasq=False) as L:
        port = start_rabbit(L)
        ...
        pdus = tshark_methods(pcap, port)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lab
import dissectref

PORT = 5672
TOOLS = ("rabbitmq-server", "amqp-publish", "amqp-consume", "amqp-get", "amqp-declare-queue", "epmd")
RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")  # the scripts themselves: /usr/sbin's wrapper switches user


def require() -> None:
    """The lab (root, netns, tcpdump) plus RabbitMQ and amqp-tools."""
    lab.require(binaries=False, tools=("ip", "tcpdump"))
    require_tools()


def require_tools() -> None:
    """RabbitMQ and amqp-tools installed (exits 77, or 1 under CI=true, when not)."""
    missing = [t for t in TOOLS if not (shutil.which(t) or Path("/usr/sbin", t).exists())]
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        missing.append(str(RABBIT_BIN / "rabbitmq-server"))
    if missing:
        msg = "cannot run: missing " + ", ".join(missing) + " (apt-get install rabbitmq-server amqp-tools)"
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def start_rabbit(L: "lab.Lab", port: int = PORT, timeout: float = 120) -> int:
    """RabbitMQ in the lab's server namespace on srv4:port, guest allowed
    from the client namespace. epmd runs in the same namespace. Returns the
    port once the broker accepts AMQP (bounded wait: RabbitMQ takes 5-60 s
    to boot, the first time, on a loaded machine)."""
    d = L.dir / "rabbit"
    d.mkdir()
    cookie = d / ".erlang.cookie"
    cookie.write_text("TWLAB" + L.id.replace("-", "").upper())
    os.chmod(cookie, 0o400)
    (d / "enabled_plugins").write_text("[].\n")
    (d / "rabbitmq.conf").write_text(
        f"loopback_users = none\nlisteners.tcp.default = {L.srv4}:{port}\n"
        "log.console = true\nlog.console.level = warning\nlog.file = false\n")
    env = dict(os.environ)
    env.update({
        "HOME": str(d),
        "RABBITMQ_NODENAME": f"tw{L.id.replace('-', '')}@localhost",
        "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
        "RABBITMQ_LOG_BASE": str(d / "log"),
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_NODE_IP_ADDRESS": L.srv4,
        "RABBITMQ_DIST_PORT": str(25672),
        "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(d / "rabbit.pid"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
    })
    L.spawn("epmd", L.srv_ns, ["epmd"], env=env)
    rabbit = L.spawn("rabbitmq", L.srv_ns, [RABBIT_BIN / "rabbitmq-server"], env=env)
    deadline = time.monotonic() + timeout
    probe = ("import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),1)\n"
             "s.sendall(b'AMQP\\0\\0\\x09\\x01')\ns.settimeout(2)\nsys.exit(0 if s.recv(1)==b'\\x01' else 1)\n")
    while time.monotonic() < deadline:
        if not rabbit.alive():
            raise RuntimeError(f"rabbitmq-server exited ({rabbit.p.returncode}):\n{rabbit.output()[-3000:]}")
        r = L.cli(["python3", "-c", probe, L.srv4, str(port)], check=False, timeout=10)
        if r.returncode == 0:
            lab.log(f"RabbitMQ up on {L.srv4}:{port}")
            return port
        time.sleep(0.5)
    raise RuntimeError(f"RabbitMQ not up after {timeout}s:\n{rabbit.output()[-3000:]}")


def url(L: "lab.Lab", port: int) -> str:
    return f"amqp://guest:guest@{L.srv4}:{port}"


def amqp(L: "lab.Lab", cmd: list, stdin: str | None = None, check: bool = True, timeout: float = 30):
    """An amqp-tools command in the client namespace (bounded)."""
    r = L.cli(cmd, check=False, timeout=timeout, input=stdin)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}): {r.stderr[-1000:]}")
    return r


# --------------------------------------------------------------------------
# tshark: every AMQP frame of the capture (its JSON, --no-duplicate-keys
# so that several frames in one TCP segment stay apart), assembled per
# connection and channel into methods with their content.

def _hex_bytes(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", "")) if s else b""


def _strip(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in (d or {}).items():
        if not isinstance(k, str) or not k.startswith(prefix) or k.endswith("_tree"):
            continue
        out[k[len(prefix):]] = v
    return out


def tshark_methods(pcap: Path, port: int, timeout: float = 300) -> list[dict]:
    """[{conn: client port, client: bool, channel, class, method, args,
    props, body (bytes or None), body_size}] in capture order (a method's
    place is its method frame's)."""
    cmd = ["tshark", "-n", "-r", str(pcap), "-d", f"tcp.port=={port},amqp", "-o", "tcp.desegment_tcp_streams:TRUE",
           "-Y", "amqp", "-T", "json", "--no-duplicate-keys"]
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed: {r.stderr[-2000:]}")
    out: list[dict] = []
    open_content: dict[tuple, dict] = {}
    for pkt in json.loads(r.stdout or "[]"):
        layers = pkt["_source"]["layers"]
        tcp = layers.get("tcp", {})
        if isinstance(tcp, list):
            tcp = tcp[0]
        sport, dport = int(tcp.get("tcp.srcport", 0)), int(tcp.get("tcp.dstport", 0))
        client = dport == port
        conn = sport if client else dport
        pdus = layers.get("amqp", [])
        if isinstance(pdus, dict):
            pdus = [pdus]
        for a in pdus:
            t = int(a.get("amqp.type", 0))
            ch = int(a.get("amqp.channel", 0))
            key = (conn, client, ch)
            if t == 1:
                args = a.get("amqp.method.arguments")
                m = {"conn": conn, "client": client, "channel": ch, "class": int(a.get("amqp.method.class", 0)),
                     "method": int(a.get("amqp.method.method", 0)),
                     "args": _strip(args if isinstance(args, dict) else {}, "amqp.method.arguments."),
                     "props": None, "body": None, "body_size": None}
                out.append(m)
                if (m["class"], m["method"]) in ((60, 40), (60, 50), (60, 60), (60, 71)):
                    open_content[key] = m
            elif t == 2 and key in open_content:
                m = open_content[key]
                m["body_size"] = int(a.get("amqp.header.body-size", 0))
                m["props"] = _strip(a.get("amqp.header.properties") or {}, "amqp.method.properties.")
                m["body"] = b""
                if m["body_size"] == 0:
                    del open_content[key]
            elif t == 3 and key in open_content:
                m = open_content[key]
                m["body"] += _hex_bytes(a.get("amqp.payload", ""))
                if len(m["body"]) >= (m["body_size"] or 0):
                    del open_content[key]
    return out


# --------------------------------------------------------------------------

def capture_bench(out_pcap: Path, seconds: float) -> str:
    """RabbitMQ in a lab, tcpdump on the server side, and for `seconds` a
    publish / consume loop with amqp-tools (amqp-publish -l: one message per
    line on one connection; amqp-consume -c N); writes the capture to
    out_pcap and returns the server port."""
    require()
    out_pcap = Path(out_pcap)
    with lab.Lab(nginx=False, dnsmasq=False) as L:
        port = start_rabbit(L)
        u = url(L, port)
        amqp(L, ["amqp-declare-queue", "-u", u, "-q", "bench"])
        tcpd = L.start_tcpdump(L.srv_veth, out_pcap)
        time.sleep(0.5)
        deadline = time.monotonic() + seconds
        rounds = 0
        while time.monotonic() < deadline and rounds < 100000:
            n = 200
            lines = "".join(f"bench message {rounds}-{i} " + "x" * (i % 64) + "\n" for i in range(n))
            amqp(L, ["amqp-publish", "-u", u, "-r", "bench", "-l", "-C", "text/plain"], stdin=lines, timeout=60)
            amqp(L, ["amqp-consume", "-u", u, "-q", "bench", "-A", "-c", str(n), "-p", "100", "cat"],
                 timeout=60)
            rounds += 1
        dissectref.stop_capture(tcpd)
    return str(port)

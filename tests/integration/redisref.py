"""Redis reference for the dissector's integration tests: a real
redis-server in the lab's server namespace, redis-cli and redis-benchmark in
the client namespace, and tshark's `resp` dissector read back as RESP
messages per TCP stream and direction.

- `start_server(L)` runs `redis-server --port P --save '' --appendonly no`
  (no persistence, protected mode off so that the client namespace may
  talk to it) and waits, bounded, until it answers.
- `cli(L, port, *args)` runs one redis-cli; `subscriber(...)` a redis-cli
  in subscribe mode in the background.
- `tshark_messages(pcap, port)` reads every RESP message tshark decodes,
  normalised to Python values (str, int, None, lists; an error as
  ("error", text)), per TCP stream: {"cport", "commands", "replies"}.
- `capture_bench(out_pcap, seconds)` runs redis-benchmark -P 16 against the
  server in a lab of its own and writes the server veth's capture: the
  lead's `make bench` calls it. Returns the server port.

Standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402

PORT = 6390
TOOLS = ("ip", "tcpdump", "tshark", "redis-server", "redis-cli", "redis-benchmark")


def require() -> None:
    lab.require(binaries=False, tools=TOOLS)
    if not os.access(ref.dissector_bin(), os.X_OK):
        msg = f"cannot run: missing binary {ref.dissector_bin()} (build first; TW_BUILD_DIR={lab.build_dir()})"
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def start_server(L: "lab.Lab", port: int = PORT) -> "lab.Proc":
    p = L.spawn("redis-server", L.srv_ns, ["redis-server", "--port", port, "--bind", "0.0.0.0", "::",
                                           "--save", "", "--appendonly", "no", "--protected-mode", "no",
                                           "--dir", L.dir, "--loglevel", "warning"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = L.cli(["redis-cli", "-h", L.srv4, "-p", port, "--no-auth-warning", "PING"], check=False, timeout=5)
        if r.returncode == 0 and r.stdout.strip() == "PONG":
            return p
        if not p.alive():
            break
        time.sleep(0.2)
    raise RuntimeError(f"redis-server not answering on {L.srv4}:{port}:\n{p.output()}")


def cli(L: "lab.Lab", port: int, *args, resp3: bool = False, stdin: str | None = None, check: bool = True,
        timeout: float = 20) -> str:
    cmd = ["redis-cli", "-h", L.srv4, "-p", port] + (["-3"] if resp3 else []) + list(args)
    r = L.cli(cmd, input=stdin, check=check, timeout=timeout)
    return r.stdout


def subscriber(L: "lab.Lab", port: int, channels: list[str], resp3: bool = False, seconds: int = 6) -> "lab.Proc":
    """redis-cli SUBSCRIBE in the background, ended by `timeout` after `seconds` at the latest."""
    cmd = ["timeout", "-s", "INT", seconds, "redis-cli", "-h", L.srv4, "-p", port] + (["-3"] if resp3 else [])
    return L.spawn("subscriber", L.cli_ns, cmd + ["SUBSCRIBE"] + channels)


def bench(L: "lab.Lab", port: int, n: int, seconds: float | None = None, clients: int = 2,
          tests: str = "set,get,lpush") -> str:
    cmd = ["redis-benchmark", "-h", L.srv4, "-p", port, "-P", 16, "-c", clients, "-n", n, "-t", tests, "-q"]
    if seconds is not None:
        cmd = ["timeout", "-s", "INT", f"{max(0.5, seconds):.1f}", *cmd]
    r = L.cli(cmd, check=seconds is None, timeout=(seconds or 60) + 30)
    return r.stdout


# --------------------------------------------------------------- tshark --

def _pairs(pairs):
    return pairs  # keep every key in order: tshark repeats keys (one per element)


def _keys(tree, acc: set) -> set:
    """Every key in a tshark subtree (pairs as object_pairs_hook keeps them)."""
    if isinstance(tree, list):
        for x in tree:
            if isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[0], str):
                acc.add(x[0])
                _keys(x[1], acc)
    return acc


def _value(key: str, v) -> object:
    """One tshark RESP item (key, subtree) as a Python value."""
    kind = key.split(".", 1)[1] if "." in key else key
    if kind == "string":
        return v
    if kind == "error":
        return ("error", v)
    if kind == "integer":
        return int(v)
    if kind == "bulk_string":
        d = dict((k, x) for k, x in v if not k.endswith("_raw"))
        if d.get("resp.bulk_string.length") == "-1":
            return None
        h = d.get("resp.bulk_string.value", "")
        if not h:
            return ""
        # tshark shows short values as hex bytes "62:61:72", or a single "626172..." for long ones
        data = bytes.fromhex(h.replace(":", ""))
        return data.decode("utf-8", "replace")
    if kind == "array":
        items = [x for x in v if not x[0].endswith("_raw")]
        length = next((int(x) for k, x in items if k == "resp.array.length"), 0)
        if length == -1:
            return None
        return [_value(k, x) for k, x in items if k != "resp.array.length" and k.startswith("resp.")
                and k.split(".", 1)[1] in ("string", "error", "integer", "bulk_string", "array")]
    raise ValueError(key)


def tshark_messages(pcap: Path, port: int, timeout: float = 300) -> dict[int, dict]:
    cmd = ["tshark", "-n", "-r", str(pcap)] + ref.TSHARK_OPTS + ["-d", f"tcp.port=={port},resp", "-Y", "resp",
                                                                  "-T", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-2000:]}")
    out: dict[int, dict] = {}
    for pkt in json.loads(r.stdout, object_pairs_hook=_pairs):
        layers = dict(dict(pkt)["_source"])["layers"]
        tcp = dict(x for x in dict(layers)["tcp"] if not isinstance(x[1], list) or x[0] != "tcp.options")
        stream = int(tcp["tcp.stream"])
        sport, dport = int(tcp["tcp.srcport"]), int(tcp["tcp.dstport"])
        s = out.setdefault(stream, {"cport": dport if sport == port else sport, "commands": [], "replies": [],
                                    "partial": False})
        for k, v in layers:
            if k != "resp":
                continue
            if not isinstance(v, list):  # nothing decoded: the rest of a bulk string, an inline command
                continue
            if "resp.reassembled_in_next_frame" in _keys(v, set()):
                continue  # the message goes on in the next frame, which has it whole
            for mk, mv in v:
                if mk.endswith("_raw"):
                    continue
                if mk in ("resp.partial", "resp.reassembled_in_next_frame", "resp.malformed_length",
                          "resp.array_recursion_too_deep", "resp.fragment", "_ws.expert"):
                    s["partial"] = True
                    continue
                try:
                    val = _value(mk, mv)
                except ValueError:
                    s["partial"] = True
                    continue
                (s["replies"] if sport == port else s["commands"]).append(val)
    return out


# ---------------------------------------------------------------- bench --

def capture_bench(out_pcap: Path, seconds: float) -> str:
    """redis-benchmark -P 16 (SET, GET, LPUSH; 2 clients) against redis-server
    in a lab of its own for about `seconds`, captured by tcpdump on the server
    veth into out_pcap. Returns the server port."""
    require()
    out_pcap = Path(out_pcap)
    with lab.Lab(nginx=False, dnsmasq=False) as L:
        start_server(L, PORT)
        cap = L.dir / "bench.pcap"
        tcpd = L.start_tcpdump(L.srv_veth, cap, extra=["tcp", "port", str(PORT)])
        for t in ("set", "get", "lpush"):  # a third of the time each (redis-benchmark runs its tests in turn)
            bench(L, PORT, 50_000_000, seconds=seconds / 3, tests=t)
        ref.stop_capture(tcpd)
        shutil.copyfile(cap, out_pcap)
    return str(PORT)

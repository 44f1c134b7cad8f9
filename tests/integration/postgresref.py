#!/usr/bin/env python3
"""PostgreSQL in the lab: a real PostgreSQL 15 server (initdb into the lab dir,
owned by the postgres user, listening on the server namespace's address, trust
authentication, ssl off), the psql and pgbench clients in the client namespace,
tshark's `pgsql` dissection as the reference, and capture_bench for `make bench`.

Debian packages: postgresql (server, psql, pgbench), tcpdump, tshark."""

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402

PORT = 5433  # not the default, so that detection, not the port, finds it


def pg_bin_dir() -> Path | None:
    for v in ("17", "16", "15"):
        d = Path(f"/usr/lib/postgresql/{v}/bin")
        if (d / "initdb").exists() and (d / "postgres").exists():
            return d
    return None


def missing() -> list[str]:
    """What the lab lacks to run PostgreSQL (empty: it can)."""
    problems = []
    d = pg_bin_dir()
    if not d:
        problems.append("no PostgreSQL server (Debian: postgresql)")
    for t in ("psql", "pgbench", "runuser"):
        if not shutil.which(t) and not (d and (d / t).exists()):
            problems.append(f"missing {t}")
    try:
        import pwd
        pwd.getpwnam("postgres")
    except KeyError:
        problems.append("no postgres user (Debian: postgresql)")
    return problems


def client_bin(name: str) -> str:
    d = pg_bin_dir()
    if d and (d / name).exists():
        return str(d / name)
    return shutil.which(name) or name


def start_server(L: "lab.Lab", port: int = PORT, timeout: float = 30) -> None:
    """initdb + postgres in the server namespace, bounded wait until it answers."""
    import pwd
    pw = pwd.getpwnam("postgres")
    d = pg_bin_dir()
    base = L.dir / "pg"
    data, sock = base / "data", base / "sock"
    sock.mkdir(parents=True)
    for p in (base, sock):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    r = lab.run(["runuser", "-u", "postgres", "--", d / "initdb", "-D", data, "-A", "trust", "-U", "postgres",
                 "--no-sync", "-E", "UTF8", "--locale=C"], timeout=120, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"initdb failed: {r.stderr[-2000:]}")
    with open(data / "postgresql.conf", "a") as f:
        f.write(f"listen_addresses = '{L.srv4},{L.srv6}'\nport = {port}\nunix_socket_directories = '{sock}'\n"
                "ssl = off\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "shared_buffers = 32MB\nmax_connections = 20\n")
    with open(data / "pg_hba.conf", "w") as f:
        f.write("local all all trust\nhost all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")
    L.spawn("postgres", L.srv_ns, ["runuser", "-u", "postgres", "--", d / "postgres", "-D", data])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = L.cli([client_bin("pg_isready"), "-h", L.srv4, "-p", port, "-t", "2"], check=False, timeout=10)
        if r.returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError(f"PostgreSQL not answering on {L.srv4}:{port}")


def conninfo(L: "lab.Lab", port: int = PORT, sslmode: str = "prefer", v6: bool = False) -> str:
    host = L.srv6 if v6 else L.srv4
    return f"host={host} port={port} user=postgres dbname=postgres sslmode={sslmode} application_name=twtest"


PSQL_SCRIPT = r"""
CREATE TABLE items (id int PRIMARY KEY, name text);
INSERT INTO items VALUES (1, 'a'), (2, 'b');
SELECT id, name FROM items ORDER BY id;
SELEC 1;
BEGIN\; INSERT INTO items VALUES (3, 'c')\; COMMIT;
COPY items FROM STDIN;
4	d
5	e
\.
SELECT count(*) FROM items;
COPY items TO STDOUT;
SELECT * FROM no_such_table;
"""


def psql(L: "lab.Lab", script: str = PSQL_SCRIPT, port: int = PORT, v6: bool = False) -> str:
    path = L.dir / "script.sql"
    path.write_text(script)
    r = L.cli([client_bin("psql"), conninfo(L, port, v6=v6), "-X", "-q", "-v", "ON_ERROR_STOP=0", "-f", path],
              timeout=60, check=False)
    if "ERROR" not in r.stderr:
        raise RuntimeError(f"psql: expected errors, got rc {r.returncode}: {r.stdout}\n{r.stderr}")
    return r.stdout


def pgbench(L: "lab.Lab", args: list, port: int = PORT, timeout: float = 120) -> str:
    r = L.cli([client_bin("pgbench"), "-h", L.srv4, "-p", port, "-U", "postgres"] + [str(a) for a in args]
              + ["postgres"], timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"pgbench {args}: rc {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


CANCEL_CODE = r"""
import socket, struct, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(struct.pack("!IIII", 16, 80877102, int(sys.argv[3]), 12345))
s.settimeout(5)
try:
    s.recv(16)
except Exception:
    pass
s.close()
"""


def cancel_request(L: "lab.Lab", pid: int, port: int = PORT) -> None:
    L.cli([sys.executable, "-c", CANCEL_CODE, L.srv4, port, pid], timeout=20, check=False)


# ------------------------------------------------------------- reference --

def tshark_messages(pcap: Path, port: int = PORT, timeout: float = 300) -> list[dict]:
    """Every pgsql message tshark sees: {stream, client_port, frontend, type, query, statement, portal, tag,
    code, ...} in capture order."""
    r = subprocess.run(["tshark", "-r", str(pcap), "-d", f"tcp.port=={port},pgsql", "-Y", "pgsql",
                        "-T", "json", "--no-duplicate-keys", "-J", "tcp pgsql"],
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"tshark: {r.stderr[-2000:]}")
    out = []
    for pkt in json.loads(r.stdout or "[]"):
        layers = pkt["_source"]["layers"]
        tcp = layers.get("tcp", {})
        stream = int(tcp.get("tcp.stream", "-1"))
        sport, dport = int(tcp.get("tcp.srcport", 0)), int(tcp.get("tcp.dstport", 0))
        pg = layers.get("pgsql", [])
        if isinstance(pg, dict):
            pg = [pg]
        for m in pg:
            if not isinstance(m, dict):
                continue
            fe = m.get("pgsql.frontend") in ("1", "True", "true")
            out.append({"stream": stream, "client_port": sport if dport == port else dport,
                        "frontend": fe, "type": m.get("pgsql.type"), "fields": m})
    return out


def first(d: dict, key: str):
    """A field from a tshark message (searching nested trees)."""
    if key in d:
        v = d[key]
        return v[0] if isinstance(v, list) else v
    for v in d.values():
        if isinstance(v, dict):
            r = first(v, key)
            if r is not None:
                return r
        elif isinstance(v, list):
            for e in v:
                if isinstance(e, dict):
                    r = first(e, key)
                    if r is not None:
                        return r
    return None


# ------------------------------------------------------------------ bench --

def capture_bench(out_pcap: Path, seconds: float) -> str:
    """pgbench (-M prepared, then -M simple, half the time each) against a lab
    PostgreSQL, captured on the server's veth into out_pcap. Returns the port."""
    out_pcap = Path(out_pcap)
    with lab.Lab(nginx=False, dnsmasq=False) as L:
        start_server(L)
        pgbench(L, ["-i", "-s", "1", "-q"])
        tcpd = L.start_tcpdump(L.srv_veth, out_pcap, plain=True)
        half = max(1, int(round(seconds / 2)))
        for mode in ("prepared", "simple"):
            pgbench(L, ["-M", mode, "-c", "2", "-T", half, "-n"], timeout=half + 60)
        time.sleep(1.5)
        tcpd.stop()
    return str(PORT)

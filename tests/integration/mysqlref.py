"""MySQL / MariaDB in the lab: a mariadbd in the server namespace, the
mariadb client, prepared statements through Perl's DBD::MariaDB (server-side
prepare: COM_STMT_PREPARE / EXECUTE / CLOSE), mysqlslap for load, and
tshark's `mysql` dissection of a capture as the reference.

The server starts on an empty data directory with --skip-grant-tables
(mariadb-install-db takes many seconds): clients still send a user, a
password (never recorded) and an auth plugin, and the server accepts them.

    with lab.Lab(nginx=False, dnsmasq=False) as L:
        srv = MariaDB(L); srv.start()
        srv.client("SELECT 1")
        ...
    capture_bench(Path("out.pcap"), 5.0)   # -> the server port, for `make bench`
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402

PORT = 3306
USER, PASSWORD, DB = "tw", "tw-secret-pw", "shop"
TOOLS = ("mariadbd", "mariadb", "mysqlslap", "perl")

PERL_PREPARED = r"""
use strict; use warnings; use DBI;
my ($host, $port, $user, $pw, $db) = @ARGV;
my $dbh = DBI->connect("DBI:MariaDB:database=$db;host=$host;port=$port;mariadb_server_prepare=1",
                       $user, $pw, {RaiseError => 1, PrintError => 0, AutoCommit => 1});
my $sel = $dbh->prepare("SELECT id, name FROM t WHERE id >= ?");
for my $from (1, 3) {
  $sel->execute($from);
  my $n = 0; $n++ while $sel->fetchrow_arrayref;
  print "rows $n\n";
}
my $ins = $dbh->prepare("INSERT INTO t VALUES (?, ?)");
print "affected ", $ins->execute(100, "p"), "\n";
eval { $ins->execute(100, "dup") }; print "error ", ($dbh->err // 0), "\n";
$sel->finish; undef $sel; undef $ins;
$dbh->disconnect;
"""


def missing_tools() -> list[str]:
    out = [t for t in TOOLS if not (shutil.which(t) or Path("/usr/sbin", t).exists())]
    r = subprocess.run(["perl", "-MDBD::MariaDB", "-e", "1"], capture_output=True) if "perl" not in out else None
    if r is not None and r.returncode != 0:
        out.append("perl DBD::MariaDB (libdbd-mariadb-perl)")
    return out


class MariaDB:
    """mariadbd in the lab's server namespace on srv4:PORT (and a Unix socket)."""

    def __init__(self, L: "lab.Lab", port: int = PORT):
        self.L = L
        self.port = port
        self.dir = L.dir / "mariadb"
        self.sock = self.dir / "sock"
        self.proc = None

    def start(self, timeout: float = 30) -> None:
        data = self.dir / "data"
        data.mkdir(parents=True)
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.proc = self.L.spawn("mariadbd", self.L.srv_ns, [
            mariadbd, "--no-defaults", "--user=root", f"--datadir={data}", f"--socket={self.sock}",
            f"--port={self.port}", "--bind-address=0.0.0.0", "--skip-grant-tables", "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=4M", "--skip-log-bin",
            f"--pid-file={self.dir / 'pid'}", "--max-connections=200"])
        if not self.proc.wait_for_line(r"ready for connections", timeout):
            raise RuntimeError(f"mariadbd did not start in {timeout}s:\n{self.proc.output()[-3000:]}")
        self.L.srv(["mariadb", "--no-defaults", "-S", self.sock, "-u", "root", "-e",
                    f"CREATE DATABASE {DB}; CREATE DATABASE other; "
                    f"CREATE TABLE {DB}.t (id INT PRIMARY KEY, name VARCHAR(32)); "
                    f"INSERT INTO {DB}.t VALUES (1,'a'),(2,'b'),(3,'c'),(4,'d'),(5,'e');"], timeout=30)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(timeout=15)

    def client(self, sql: str, db: str = DB, compress: bool = False, force: bool = True,
               timeout: float = 30) -> subprocess.CompletedProcess:
        """The mariadb client over TCP from the client namespace, in batch mode."""
        cmd = ["mariadb", "--no-defaults", "-h", self.L.srv4, "-P", self.port, "-u", USER, f"-p{PASSWORD}",
               "--skip-ssl", "--batch"]
        if compress:
            cmd.append("--compress")
        if force:
            cmd.append("--force")
        if db:
            cmd.append(db)
        return self.L.cli(cmd, input=sql, timeout=timeout, check=False)

    def prepared(self, timeout: float = 30) -> subprocess.CompletedProcess:
        """Server-side prepared statements (DBD::MariaDB, mariadb_server_prepare=1)."""
        return self.L.cli(["perl", "-e", PERL_PREPARED, self.L.srv4, self.port, USER, PASSWORD, DB],
                          timeout=timeout, check=False)

    def slap(self, seconds: float, concurrency: int = 4) -> subprocess.CompletedProcess:
        """mysqlslap with generated SQL, repeated until `seconds` are over (bounded)."""
        deadline = time.monotonic() + seconds
        r = None
        for _ in range(1000):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r = self.L.cli(["mysqlslap", "--no-defaults", "-h", self.L.srv4, "-P", self.port, "-u", USER,
                            f"-p{PASSWORD}", "--skip-ssl", f"--concurrency={concurrency}", "--iterations=1",
                            "--auto-generate-sql", "--auto-generate-sql-load-type=mixed",
                            "--number-of-queries=200", "--create-schema=slap"],
                           timeout=max(10.0, left + 10), check=False)
            if r.returncode != 0:
                break
        return r


def capture_bench(out_pcap: Path, seconds: float) -> str:
    """Runs mysqlslap against mariadbd in a lab for about `seconds`, captures
    the server side with tcpdump into out_pcap; returns the server port."""
    with lab.Lab(nginx=False, dnsmasq=False) as L:
        srv = MariaDB(L)
        srv.start()
        tcpd = L.start_tcpdump(L.srv_veth, out_pcap)
        try:
            srv.slap(seconds)
        finally:
            time.sleep(0.5)
            tcpd.stop()
            srv.stop()
    return str(PORT)


# --------------------------------------------------------------------------
# tshark's view.

AGG = "\x1f"


def tshark_mysql(pcap: Path, port: int = PORT, timeout: float = 120) -> list[dict]:
    """Every frame tshark dissects as MySQL: stream, client port, direction
    and the mysql fields (lists: a frame may hold several packets)."""
    fields = ["tcp.stream", "tcp.srcport", "tcp.dstport", "mysql.command", "mysql.query", "mysql.stmt_id",
              "mysql.error_code", "mysql.sqlstate", "mysql.error.message", "mysql.affected_rows", "mysql.user",
              "mysql.schema", "mysql.version", "mysql.num_fields"]
    cmd = ["tshark", "-n", "-r", str(pcap), "-d", f"tcp.port=={port},mysql", "-o", "tcp.desegment_tcp_streams:TRUE",
           "-Y", "mysql", "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", f"aggregator={AGG}"]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"tshark failed ({r.returncode}): {r.stderr[-2000:]}")
    rows = []
    for line in r.stdout.splitlines():
        vals = line.split("\t")
        vals += [""] * (len(fields) - len(vals))
        row = {f: (v.split(AGG) if v != "" else []) for f, v in zip(fields, vals)}
        sport, dport = int(row["tcp.srcport"][0]), int(row["tcp.dstport"][0])
        row["to_server"] = dport == port
        row["cport"] = sport if dport == port else dport
        rows.append(row)
    return rows

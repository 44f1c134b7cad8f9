#!/usr/bin/env python3
"""Done means (full payloads for HTTP/1 calls): real clients and a real
server in the lab, the dissector on tcpdump's capture of them.

curl POSTs a binary file and a JSON document, and GETs files nginx serves
with Content-Encoding gzip (nginx's own `gzip on`, chunked), and
precompressed gzip, br, zstd and deflate (made with gzip, the brotli and zstd
CLIs, zlib; served with `add_header Content-Encoding`); curl --compressed -o
FILE writes what it decoded. `tapwire-dissector --pcap` must give, in the
JSON lines and in the DB (read back with `tapwire calls --json`), each body
byte for byte as curl sent or wrote it (text as text, binary as base64), the
Content-Encoding undone and named, the encoded size (`body_size`) equal to
what tshark reports (Content-Length, or the chunk sizes), and the decoded
size. A body larger than --max-body is cut there and flagged
body_truncated, request or response, plain or compressed (the cap applies to
the decoded bytes). `tapwire export har` has the bodies (postData.text,
content.text, content.size decoded, compression); `tapwire calls --id`
prints one call whole. The confined dissector (seccomp) decodes the same.

Needs root, netns, tshark, brotli, zstd and the built binaries; skips with 77
otherwise (fails under CI=true). TW_LAB_KEEP=1 keeps the capture and outputs.
"""

import base64
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import unittest
import urllib.parse
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dissectref as ref  # noqa: E402
import lab  # noqa: E402

MAX_BODY = 200_000  # --max-body: every file below fits decoded, but big.json and 1m.bin

NGINX_EXTRA = """
        location /gz/ {
            types { }
            default_type text/plain;
            gzip on;
            gzip_types text/plain;
            gzip_min_length 0;
        }
        location /pre/gzip/ { types { } default_type application/json; add_header Content-Encoding gzip; }
        location /pre/br/ { types { } default_type application/json; add_header Content-Encoding br; }
        location /pre/zstd/ { types { } default_type application/json; add_header Content-Encoding zstd; }
        location /pre/deflate/ { types { } default_type application/json; add_header Content-Encoding deflate; }
"""


def json_text(n: int, seed: int) -> bytes:
    """n records of JSON, UTF-8 with non-ASCII text: compressible, not trivially."""
    rng = random.Random(seed)
    words = ["tapwire", "naïve", "café", "Grüße", "日本語", "данные", "ok", "body", "zstd", "brotli"]
    recs = [{"id": i, "name": " ".join(rng.choice(words) for _ in range(rng.randrange(2, 8))),
             "value": rng.random(), "tags": [rng.choice(words) for _ in range(rng.randrange(0, 4))]}
            for i in range(n)]
    return json.dumps(recs, ensure_ascii=False, indent=1).encode()


def body_bytes(m: dict) -> bytes:
    """The body bytes a record's request or response holds."""
    if "body" not in m:
        return b""
    b = m["body"]
    return base64.b64decode(b) if m.get("body_encoding") == "base64" else b.encode()


def tshark_sizes(pcap) -> tuple[dict, dict]:
    """Encoded body sizes on the wire, as tshark finds them: {path: size} of
    the requests (Content-Length) and of the responses (Content-Length, or
    the sum of the chunk sizes)."""
    reqs, resps = {}, {}
    for row in ref._tshark_fields(pcap, "http.request", ["http.request.uri", "http.content_length"]):
        for uri, n in zip(row["http.request.uri"], row["http.content_length"] or ["0"] * 9):
            reqs[uri] = int(n)
    for row in ref._tshark_fields(pcap, "http.response", ["http.response_for.uri", "http.content_length",
                                                          "http.chunk_size", "http.content_encoding"]):
        for uri in row["http.response_for.uri"]:
            path = urllib.parse.urlsplit(uri).path
            if row["http.content_length"]:
                resps[path] = int(row["http.content_length"][0])
            else:
                resps[path] = sum(int(x, 0) for x in row["http.chunk_size"])
    return reqs, resps


class Bodies(unittest.TestCase):
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        for tool in ("brotli", "zstd"):
            if not shutil.which(tool):
                msg = f"cannot run: missing tool {tool} (scripts/install-deps.sh installs it)"
                if lab.in_ci():
                    print(f"FAIL (CI=true): {msg}", file=sys.stderr)
                    sys.exit(1)
                print(f"SKIP: {msg}", file=sys.stderr)
                sys.exit(lab.SKIP)
        cls.L = lab.Lab(dnsmasq=False, nginx_server_extra=NGINX_EXTRA).__enter__()
        try:
            cls._run()
        except BaseException:
            cls.L.cleanup()
            raise

    @classmethod
    def _run(cls):
        L = cls.L
        www = L.dir / "nginx" / "www"
        got = L.dir / "got"
        got.mkdir()
        # What nginx serves: the decoded content of each URL, and its file on disk.
        text = b"".join(b"line %d: the quick brown fox jumps over the lazy dog %d\n" % (i, i * 7919 % 10007)
                        for i in range(2500))
        doc = json_text(700, 1)
        assert 60_000 < len(doc) < MAX_BODY and len(text) < MAX_BODY, (len(doc), len(text))
        big = json_text(8000, 2)  # ~1 MB; its gzip fits in --max-body, decoded it does not
        assert len(big) > 4 * MAX_BODY and len(gzip.compress(big)) < MAX_BODY
        (www / "gz").mkdir()
        (www / "gz" / "text.txt").write_bytes(text)
        cls.decoded = {"/gz/text.txt": text}
        for coding in ("gzip", "br", "zstd", "deflate"):
            (www / "pre" / coding).mkdir(parents=True)
        (www / "pre" / "gzip" / "data.json").write_bytes(gzip.compress(doc, mtime=0))
        (www / "pre" / "gzip" / "big.json").write_bytes(gzip.compress(big, mtime=0))
        (www / "pre" / "deflate" / "data.json").write_bytes(zlib.compress(doc))
        src = L.dir / "doc.json"
        src.write_bytes(doc)
        lab.run(["brotli", "-q", "9", "-o", www / "pre" / "br" / "data.json", src])
        lab.run(["zstd", "-q", "-19", src, "-o", www / "pre" / "zstd" / "data.json"])
        for p in ("/pre/gzip/data.json", "/pre/br/data.json", "/pre/zstd/data.json", "/pre/deflate/data.json"):
            cls.decoded[p] = doc
        cls.decoded["/pre/gzip/big.json"] = big
        cls.encoded_files = {p: (www / p.lstrip("/")).stat().st_size for p in cls.decoded if p.startswith("/pre/")}

        # What curl sends.
        cls.bin = random.Random(5).randbytes(30_000)
        (L.dir / "post.bin").write_bytes(cls.bin)
        cls.doc_post = json.dumps({"user": "Zoë", "items": [1, 2, 3], "note": "naïve café ✓"},
                                  ensure_ascii=False).encode()
        (L.dir / "post.json").write_bytes(cls.doc_post)

        tcpd = L.start_tcpdump(L.srv_veth, L.dir / "bodies.pcap")
        curl = ["curl", "-sS", "--fail", "-m", "30"]
        L.cli(curl + ["-H", "Expect:", "-H", "Content-Type: application/octet-stream",
                      "--data-binary", f"@{L.dir / 'post.bin'}", L.url("/post?kind=bin")])
        L.cli(curl + ["-H", "Content-Type: application/json", "--data-binary", f"@{L.dir / 'post.json'}",
                      L.url("/post?kind=json")])
        L.cli(curl + ["-H", "Expect:", "--data-binary", f"@{www / 'f' / '1m.bin'}", L.url("/post?kind=big")])
        cls.wrote = {}
        for i, path in enumerate(sorted(cls.decoded)):
            out = got / f"{i}.out"
            L.cli(curl + ["--compressed", "-o", out, L.url(path)])
            cls.wrote[path] = out.read_bytes()
        L.cli(curl + ["-o", got / "1m.bin", L.url("/f/1m.bin")])
        cls.wrote["/f/1m.bin"] = (got / "1m.bin").read_bytes()
        cls.cap = ref.stop_capture(tcpd)
        cls.pcap = tcpd.out

        cls.jsonl, cls.db = L.dir / "calls.jsonl", L.dir / "calls.db"
        cls.dis = ref.run_dissector(["--pcap", cls.pcap, "--jsonl", cls.jsonl, "--db", cls.db,
                                     "--max-body", MAX_BODY], timeout=120)
        lab.log(cls.dis["stderr"].strip())
        cls.calls = ref.read_jsonl(cls.jsonl) if cls.jsonl.exists() else []
        cls.db_calls = ref.db_calls(cls.db) if cls.db.exists() else []
        cls.by_path = {}
        for c in cls.calls:
            if c.get("request"):
                cls.by_path.setdefault(c["request"]["path"], []).append(c)
        cls.t_req, cls.t_resp = tshark_sizes(cls.pcap)

    @classmethod
    def tearDownClass(cls):
        cls.L.cleanup()

    def where(self):
        return f"\n(capture {self.pcap}; TW_LAB_KEEP=1 keeps it)"

    def call(self, path: str) -> dict:
        cs = self.by_path.get(path, [])
        self.assertEqual(len(cs), 1, f"{len(cs)} calls for {path}; paths: {sorted(self.by_path)}" + self.where())
        return cs[0]

    def test_0_runs(self):
        self.assertTrue(ref.capture_complete(self.cap), f"tcpdump did not write every packet: {self.cap}")
        r = self.dis
        self.assertFalse(r["timed_out"], "tapwire-dissector did not finish")
        self.assertEqual(r["rc"], 0, f"tapwire-dissector exit {r['rc']}:\n{r['stderr'][-3000:]}")
        self.assertEqual(len(self.calls), 3 + len(self.decoded) + 1, [c["request"]["path"] for c in self.calls])
        for path, data in self.decoded.items():
            self.assertEqual(self.wrote[path], data, f"curl --compressed did not write {path} as served")
        for c in self.calls:
            self.assertNotIn("body_decode_error", c["flags"], c["request"]["path"])

    def test_db_equals_jsonl(self):
        """The DB reads back exactly the records of the JSON lines, bodies included."""
        want = sorted(json.dumps(c, sort_keys=True) for c in self.calls)
        got = sorted(json.dumps(c, sort_keys=True) for c in self.db_calls)
        self.assertEqual(len(got), len(want))
        self.assertTrue(got == want, "--db and --jsonl records differ" + self.where())

    def test_confined_dissector_decodes_the_same(self):
        """As users run it (nice, unprivileged user, seccomp allow-list): decoding needs nothing more."""
        out = self.L.dir / "confined.jsonl"
        r = ref.wait4_run([ref.dissector_bin(), "--pcap", self.pcap, "--jsonl", out, "--max-body", MAX_BODY],
                          timeout=120)
        self.assertEqual(r["rc"], 0, f"confined tapwire-dissector exit {r['rc']}:\n{r['stderr'][-3000:]}")
        got = sorted(json.dumps(c, sort_keys=True) for c in ref.read_jsonl(out))
        want = sorted(json.dumps(c, sort_keys=True) for c in self.calls)
        self.assertTrue(got == want, "the confined dissector's records differ" + self.where())

    def test_request_bodies(self):
        c = self.call("/post?kind=bin")
        rq = c["request"]
        self.assertEqual(rq.get("body_encoding"), "base64", "a binary body is base64")
        self.assertTrue(body_bytes(rq) == self.bin, "the binary POST body differs from the file curl sent")
        self.assertEqual(rq["body_size"], len(self.bin))
        self.assertEqual(rq["body_size"], self.t_req["/post?kind=bin"], "body_size is not tshark's Content-Length")
        self.assertEqual(c["flags"], [])
        # nginx's `return 200 "posted\n"` is application/octet-stream (default_type): binary by its type
        self.assertEqual(c["response"]["body_encoding"], "base64")
        self.assertEqual(body_bytes(c["response"]), b"posted\n")

        c = self.call("/post?kind=json")
        rq = c["request"]
        self.assertNotIn("body_encoding", rq, "a JSON body is text")
        self.assertEqual(rq["body"], self.doc_post.decode())
        self.assertEqual(rq["body_size"], self.t_req["/post?kind=json"])
        self.assertEqual(c["flags"], [])

        c = self.call("/post?kind=big")
        rq = c["request"]
        want = self.L.file_bytes["1m.bin"]
        self.assertEqual(rq["body_size"], len(want))
        self.assertEqual(rq["body_size"], self.t_req["/post?kind=big"])
        self.assertTrue(body_bytes(rq) == want[:MAX_BODY], "a request body over --max-body is not its beginning")
        self.assertIn("body_truncated", c["flags"])

    def test_decoded_response_bodies(self):
        """Each coding: the body as curl decoded it, the coding named, sizes as on the wire."""
        coding_of = {"/gz/text.txt": "gzip", "/pre/gzip/data.json": "gzip", "/pre/br/data.json": "br",
                     "/pre/zstd/data.json": "zstd", "/pre/deflate/data.json": "deflate"}
        for path, coding in coding_of.items():
            with self.subTest(path=path):
                c = self.call(path)
                rs = c["response"]
                self.assertEqual(rs.get("content_encoding"), coding)
                self.assertNotIn("body_encoding", rs, "text is not base64")
                self.assertTrue(body_bytes(rs) == self.wrote[path], f"{path}: the body differs from what curl wrote")
                self.assertEqual(rs["body_decoded_size"], len(self.wrote[path]))
                self.assertEqual(rs["body_size"], self.t_resp[path], "body_size is not the encoded size tshark reports")
                if path in self.encoded_files:
                    self.assertEqual(rs["body_size"], self.encoded_files[path])
                self.assertLess(rs["body_size"], rs["body_decoded_size"])
                self.assertEqual(c["flags"], [])
        self.assertEqual(self.call("/gz/text.txt")["response"]["headers"].get("transfer-encoding"), "chunked")

    def test_bodies_over_max_body_are_cut_and_flagged(self):
        c = self.call("/pre/gzip/big.json")
        rs = c["response"]
        self.assertEqual(rs["content_encoding"], "gzip")
        self.assertEqual(rs["body_size"], self.encoded_files["/pre/gzip/big.json"])
        self.assertEqual(rs["body_size"], self.t_resp["/pre/gzip/big.json"])
        self.assertEqual(rs["body_decoded_size"], MAX_BODY, "the cap applies to the decoded bytes")
        self.assertTrue(body_bytes(rs) == self.wrote["/pre/gzip/big.json"][:MAX_BODY])
        self.assertEqual(c["flags"], ["body_truncated"])

        c = self.call("/f/1m.bin")
        rs = c["response"]
        self.assertNotIn("content_encoding", rs)
        self.assertEqual(rs["body_size"], 1 << 20)
        self.assertEqual(rs["body_size"], self.t_resp["/f/1m.bin"])
        self.assertEqual(rs["body_encoding"], "base64")
        self.assertTrue(body_bytes(rs) == self.wrote["/f/1m.bin"][:MAX_BODY])
        self.assertEqual(c["flags"], ["body_truncated"])

    def test_har(self):
        har_path = self.L.dir / "calls.har"
        lab.tapwire("export", "har", "--db", self.db, "-o", har_path)
        har = json.loads(har_path.read_text())
        entries = {urllib.parse.urlsplit(e["request"]["url"]).path +
                   ("?" + urllib.parse.urlsplit(e["request"]["url"]).query
                    if urllib.parse.urlsplit(e["request"]["url"]).query else ""): e
                   for e in har["log"]["entries"]}
        e = entries["/post?kind=json"]
        self.assertEqual(e["request"]["postData"], {"mimeType": "application/json", "text": self.doc_post.decode()})
        e = entries["/post?kind=bin"]
        self.assertEqual(base64.b64decode(e["request"]["postData"]["text"]), self.bin)
        for path in ("/gz/text.txt", "/pre/br/data.json", "/pre/zstd/data.json"):
            content = entries[path]["response"]["content"]
            self.assertEqual(content["text"].encode(), self.wrote[path], path)
            self.assertEqual(content["size"], len(self.wrote[path]), path)
            self.assertEqual(content["compression"], len(self.wrote[path]) - self.t_resp[path], path)
            self.assertEqual(entries[path]["response"]["bodySize"], self.t_resp[path], path)
        content = entries["/f/1m.bin"]["response"]["content"]
        self.assertEqual(content["encoding"], "base64")
        self.assertEqual(base64.b64decode(content["text"]), self.wrote["/f/1m.bin"][:MAX_BODY])

    def test_calls_id(self):
        c = self.call("/pre/br/data.json")
        r = lab.run([lab.cli_bin(), "calls", "--db", self.db, "--id", c["id"]], check=False)
        self.assertEqual(r.returncode, 0, r.stderr)
        for want in ("GET /pre/br/data.json HTTP/1.1", "< HTTP/1.1 200 OK", "< content-encoding: br",
                     '"name": ', "flags     none", c["id"]):
            self.assertIn(want, r.stdout)
        r = lab.run([lab.cli_bin(), "calls", "--db", self.db, "--id", c["id"], "--json"], check=False)
        self.assertEqual(json.loads(r.stdout), c)
        r = lab.run([lab.cli_bin(), "calls", "--db", self.db, "--id", "00000000deadbeef"], check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no call with this id", r.stderr)


if __name__ == "__main__":
    ref.require()
    unittest.main()

#!/usr/bin/env python3
"""The dashboard (ui/, docs/DASHBOARD.md) in a real browser over a lab: the
sensor captures with live dissection on, nginx serves a JSON file, `tapwire
serve` serves the API and the dashboard (a token required even from
loopback, given to the page in the URL fragment), and headless Chromium
(Debian's, driven by playwright-core from ui/node_modules: ui/test/dashboard.mjs)
checks, while curl makes traffic, that:

1. a new call shows in the table within 2 s of curl (three tries);
2. a filter typed in narrows the table to exactly the ids GET /api/v1/calls
   returns for it (and a bad one shows its column);
3. a call opened shows the request headers curl sent (X-Test) and the body
   it received, links its flow's packets (a pcapng download), and clicking
   values adds their conditions to the filter;
4. the map draws the API's nodes and edges: the client's address calling the
   server's over http;
5. a snapshot created and dissected from the UI, viewed, shows the same call
   ids as `tapwire dissect` of that snapshot into a DB; a call's packets then
   come from the snapshot's pcap, and the map from its DB.

A screenshot of each step goes to $TW_ARTIFACTS (default
TW_BUILD_DIR/artifacts/dashboard/). Needs root, netns, BPF, the built
binaries, ui/dist (npm run build --prefix ui), node with ui/node_modules
(npm ci --prefix ui) and /usr/bin/chromium: skips with 77 without them, or
fails under CI=true.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402
from test_serve import start_serve, wait_for  # noqa: E402

BODY = '{"served": "by nginx", "for": "the dashboard", "n": [1, 2, 3], "nested": {"ok": true}}\n'
UI = lab.REPO_ROOT / "ui"
CHROMIUM = os.environ.get("TW_CHROMIUM", "/usr/bin/chromium")
BROWSER_TIMEOUT = 420


def require_browser() -> None:
    problems = []
    if not shutil.which("node"):
        problems.append("node missing (apt nodejs)")
    if not os.access(CHROMIUM, os.X_OK):
        problems.append(f"{CHROMIUM} missing (apt chromium)")
    if not (UI / "node_modules" / "playwright-core").is_dir():
        problems.append("ui/node_modules/playwright-core missing (make deps: npm ci --prefix ui)")
    if not (UI / "dist" / "index.html").is_file():
        problems.append("ui/dist missing (make build: npm run build --prefix ui)")
    if problems:
        msg = "cannot run: " + "; ".join(problems)
        if lab.in_ci():
            print(f"FAIL (CI=true): {msg}", file=sys.stderr)
            sys.exit(1)
        print(f"SKIP: {msg}", file=sys.stderr)
        sys.exit(lab.SKIP)


def artifacts_dir() -> Path:
    return Path(os.environ.get("TW_ARTIFACTS") or lab.build_dir() / "artifacts" / "dashboard").resolve()


def run_browser(cfg: dict, log_path: Path) -> int:
    """node ui/test/dashboard.mjs in its own process group, killed whole
    (Chromium with it) at the timeout or when anything goes wrong."""
    with open(log_path, "w") as out:
        p = subprocess.Popen(["node", str(UI / "test" / "dashboard.mjs"), json.dumps(cfg)], cwd=UI,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return p.wait(timeout=BROWSER_TIMEOUT)
        except subprocess.TimeoutExpired:
            lab.log(f"the browser test took over {BROWSER_TIMEOUT} s: killing it")
            return -1
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)


class Dashboard(unittest.TestCase):
    maxDiff = None

    def test_dashboard(self):
        art = artifacts_dir()
        if art.exists():
            for f in art.glob("*.png"):
                f.unlink()
        art.mkdir(parents=True, exist_ok=True)
        with lab.Lab(dnsmasq=False) as L:
            data = L.dir / "data"
            L.start_sensor(data, extra=["--dissection", "--dissection-stop-after", "0", "--metrics-address", ""])
            wait_for(lambda: (data / "dissection.db").exists(), 20, "the live dissector's DB")
            (L.dir / "nginx" / "www" / "hello.json").write_text(BODY)
            token = secrets.token_hex(20)
            token_file = L.dir / "token"
            token_file.write_text(token + "\n")
            os.chmod(token_file, 0o600)
            serve, port = start_serve(L, "serve", ["--data-dir", data, "--listen", "127.0.0.1:0", "--token-file",
                                                   token_file, "--loopback-needs-token", "--node", "lab-node",
                                                   "--ui-dir", UI / "dist"])
            self.assertTrue(serve.wait_for_line(r"tapwire serve: dashboard at http://127\.0\.0\.1:", 10), serve.output())
            base = f"http://127.0.0.1:{port}"
            self.check_files(base, token)
            # Some traffic before the page opens: the table starts with it.
            r = L.cli(["curl", "-sS", L.url("/hello.json")])
            self.assertEqual(r.stdout, BODY)

            result_path = L.dir / "browser-result.json"
            cfg = {"base": base, "token": token, "cliNs": L.cli_ns, "serverUrl": f"http://{L.srv4}", "body": BODY,
                   "clientIp": L.cli4, "serverIp": L.srv4,
                   "artifacts": str(art), "result": str(result_path), "chromium": CHROMIUM}
            rc = run_browser(cfg, L.dir / "browser.log")
            out = (L.dir / "browser.log").read_text(errors="replace")
            sys.stderr.write(out)
            lab.log(f"screenshots in {art}")
            print(f"dashboard screenshots: {art}")
            result = json.loads(result_path.read_text()) if result_path.exists() else {}
            (art / "result.json").write_text(json.dumps(result, indent=2))
            self.assertEqual(rc, 0, f"the browser test failed: {result.get('error') or out[-3000:]}\n"
                                    f"serve: {serve.output()[-2000:]}")
            self.assertTrue(result.get("ok"), result)
            live = result["steps"]["live"]["latencies_ms"]
            self.assertTrue(live and live[-1] is not None and live[-1] <= 2000, live)
            self.assertEqual(sorted(result["steps"]["filter"]["ids"]), sorted(result["steps"]["filter"]["api_ids"]))
            self.assertGreaterEqual(len(result["steps"]["filter"]["ids"]), 3)

            # 5: the snapshot's calls in the UI are those of `tapwire dissect` of it.
            snap = result["steps"]["snapshot"]
            ref_db = L.dir / "reference.db"
            lab.run([str(lab.cli_bin()), "dissect", "--snapshot", snap["name"], "--data-dir", str(data),
                     "--db", str(ref_db), "--quiet"], timeout=300)
            r = lab.run([str(lab.cli_bin()), "calls", "--db", str(ref_db), "--json"], timeout=120)
            want = sorted(json.loads(x)["id"] for x in r.stdout.splitlines() if x.strip())
            self.assertGreater(len(want), 0)
            self.assertEqual(sorted(snap["ids"]), want)
            self.assertIn(result["steps"]["detail"]["id"], want)
            self.assertTrue(serve.alive(), serve.output()[-2000:])

    def check_files(self, base: str, token: str):
        """The files: content types, caching, no token needed for them (but for
        the API), 304 on revalidation, nothing outside the directory."""
        import urllib.error
        import urllib.request

        def fetch(path, headers=None):
            req = urllib.request.Request(base + path, headers=headers or {})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, dict(r.headers), r.read()
            except urllib.error.HTTPError as e:
                return e.code, dict(e.headers), e.read()

        for path, ctype in (("/", "text/html"), ("/index.html", "text/html"), ("/app.js", "text/javascript"),
                            ("/app.css", "text/css")):
            status, h, body = fetch(path)
            self.assertEqual(status, 200, path)
            self.assertTrue(h["Content-Type"].startswith(ctype), (path, h))
            self.assertEqual(h["Cache-Control"], "no-cache", path)
            self.assertTrue(body)
            status, _, _ = fetch(path, {"If-None-Match": h["ETag"]})
            self.assertEqual(status, 304, path)
        _, h, _ = fetch("/")
        self.assertIn("default-src 'self'", h["Content-Security-Policy"])
        for bad in ("/../README.md", "/%2e%2e/README.md", "/.gitignore", "/app.js/../../README.md", "/nope.js"):
            status, _, _ = fetch(bad)
            self.assertIn(status, (400, 401, 404), bad)  # 401: not a file name, so the API's token rule
        status, _, _ = fetch("/api/v1/calls")
        self.assertEqual(status, 401)
        status, _, _ = fetch("/api/v1/calls", {"Authorization": f"Bearer {token}"})
        self.assertEqual(status, 200)
        status, _, _ = fetch("/", {"Host": "evil.example"})
        self.assertEqual(status, 403)


if __name__ == "__main__":
    lab.require()
    require_browser()
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("test_dashboard took over 560 s")))
    signal.alarm(560)
    unittest.main()

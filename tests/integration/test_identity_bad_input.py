"""Identity under a failing or hostile Kubernetes API, seen from the sensor:

- the API server unreachable, answering 401, 403, 410 Gone (again and
  again), garbage or truncated JSON, or a watch that hangs: capture goes on
  (packets keep being stored), the sensor's status and the
  tapwire_kubernetes_synced metric say identity is unknown, the sensor says so
  in one log line, and when the server is healthy again identity recovers
  (synced, with the pods as they are now);
- a list of 100k pods: every pod reaches the sensor, whose peak memory, and
  the watcher's, stay within the bounds docs/IDENTITY.md gives.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
import time

import lab
from identity_lab import IdentityLab, require_identity_lab
from lab import log

check = lab.Checks()

# docs/IDENTITY.md, "Bounds and failures": peak resident memory with 100k pods.
SENSOR_BOUND_MB = 400
WATCHER_BOUND_MB = 64


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def vm_hwm_mb(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return -1


def main() -> int:
    require_identity_lab()
    with IdentityLab() as L:
        srv = L.add_pod("a", "srv-7f6d5-b4n3m", workload=("Deployment", "srv"))
        srv.start_nginx()
        cli = L.add_pod("a", "cli-6e5d4-c3v2x", workload=("Deployment", "cli"))
        port = free_port()
        data = L.dir / "data"
        sensor = L.start_sensor(data, extra=[
            "--metrics-address", f"127.0.0.1:{port}",
            # Quick retries and short watches, so that each fault shows (and heals) in seconds.
            "--kube-watch-arg=--backoff-scale", "--kube-watch-arg=0.02",
            "--kube-watch-arg=--watch-timeout", "--kube-watch-arg=4",
            "--kube-watch-arg=--idle-timeout", "--kube-watch-arg=3"])

        def state() -> str:
            st = sensor.status() or {}
            return st.get("identity", {}).get("kubernetes", {}).get("state", "?")

        def wait_state(want: str, timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if state() == want:
                    return True
                time.sleep(0.2)
            return False

        def metric_synced() -> dict:
            r = L.node_run(["curl", "-sS", f"http://127.0.0.1:{port}/metrics"], check=False, timeout=20)
            out = {}
            for m in re.finditer(r'^tapwire_kubernetes_synced\{resource="(\w+)"\} (\S+)$', r.stdout, re.M):
                out[m.group(1)] = float(m.group(2))
            return out

        def captured() -> int:
            return (sensor.status() or {}).get("counters", {}).get("packets_captured", 0)

        check(wait_state("synced", 60), f"identity synced at start (state {state()})")
        check(metric_synced().get("pods") == 1.0, f"tapwire_kubernetes_synced at start: {metric_synced()}")

        faults = ["unreachable", "401", "403", "410", "garbage", "truncated", "hang"]
        for i, mode in enumerate(faults):
            log(f"--- fault: {mode}")
            lines_before = len(sensor.output().splitlines())
            L.api.fault(mode)
            ok = wait_state("unknown", 45)
            check(ok, f"{mode}: identity reads unknown (state {state()})")
            synced = metric_synced()
            check(synced and min(synced.values()) == 0.0, f"{mode}: tapwire_kubernetes_synced shows a 0: {synced}")
            before = captured()
            for _ in range(3):
                cli.curl(f"http://{srv.ip}/f/10k.bin")
            time.sleep(1.5)
            check(captured() > before, f"{mode}: capture went on ({before} -> {captured()} packets)")
            # A pod created while the API is broken is known once it heals.
            late = L.add_pod("b", f"late-{i}-7c8d9-q1w2e", workload=("Deployment", f"late-{i}"))
            L.api.fault(None)
            check(wait_state("synced", 60), f"{mode}: identity synced again after the fault cleared (state {state()})")
            new_lines = sensor.output().splitlines()[lines_before:]
            mine = [l for l in new_lines if "tapwire-sensor: Kubernetes identity unknown" in l]
            check(len(mine) == 1, f"{mode}: one sensor line saying identity is unknown, got {len(mine)}: {mine}")
            check(len(new_lines) < 60, f"{mode}: {len(new_lines)} log lines during the fault (a storm?)")
            check(sensor.alive(), f"{mode}: the sensor died")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                st = (sensor.status() or {}).get("identity", {}).get("targets", {})
                if st.get("pods", 0) >= len(L.pods):
                    break
                time.sleep(0.2)
            st = (sensor.status() or {}).get("identity", {}).get("targets", {})
            check(st.get("pods", 0) == len(L.pods), f"{mode}: the sensor knows {st.get('pods')} pods, the lab has {len(L.pods)}")

        # ---- 100k pods ----------------------------------------------------------
        # Put into the server's store at once (as if they had been there), then
        # the watches are cut: the watcher's next watch is too old (410), and it
        # lists 100k pods in pages.
        log("--- a list of 100k pods")
        k = L._kubeapi
        t0 = time.monotonic()
        n_loaded = L.api.load(k.pod(f"ns-{n % 100}", f"bulk-{n:06d}-abcde",
                                    ip=f"10.{200 + n // 65536}.{(n // 256) % 256}.{n % 256}", node=f"node-{n % 50}",
                                    owner=("ReplicaSet", f"bulk-{n % 1000}-7d9c5", None))
                              for n in range(100_000))
        L.api.close_watches()
        log(f"{n_loaded} pods loaded in {time.monotonic() - t0:.1f}s")
        deadline = time.monotonic() + 180
        pods = 0
        while time.monotonic() < deadline:
            pods = (sensor.status() or {}).get("identity", {}).get("targets", {}).get("pods", 0)
            if pods >= 100_000 + len(L.pods):
                break
            time.sleep(1)
        log(f"the sensor knew {pods} pods {time.monotonic() - t0:.1f}s after the load")
        check(pods >= 100_000 + len(L.pods), f"the sensor knows {pods} pods after a list of 100k")
        watcher = (sensor.status() or {}).get("identity", {}).get("kubernetes", {}).get("watcher", {}).get("pid", 0)
        s_mb, w_mb = vm_hwm_mb(sensor.pid), vm_hwm_mb(watcher)
        log(f"peak memory with 100k pods: sensor {s_mb:.0f} MB, watcher {w_mb:.0f} MB")
        check(0 < s_mb < SENSOR_BOUND_MB, f"sensor peak {s_mb:.0f} MB, bound {SENSOR_BOUND_MB} MB")
        check(0 < w_mb < WATCHER_BOUND_MB, f"watcher peak {w_mb:.0f} MB, bound {WATCHER_BOUND_MB} MB")
        sensor.stop()

    return check.exit_code("identity bad input")


if __name__ == "__main__":
    signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("test_identity_bad_input took over 600 s")))
    signal.alarm(600)
    sys.exit(main())

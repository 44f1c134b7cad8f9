#!/usr/bin/env bash
# Manual test lab: two network namespaces joined by a veth pair, nginx (files
# /f/100b.bin, /f/10k.bin, /f/1m.bin) and dnsmasq (tw.test) on the server side,
# a shell in the client namespace. Everything is removed when the shell exits.
#   sudo scripts/lab.sh            # then e.g.: curl http://$SRV4/f/10k.bin -o /dev/null
#                                   #            dig @$SRV4 www.tw.test AAAA
#   sensor in another terminal:     sudo ip netns exec $SRV_NS build/tapwire-sensor -i $SRV_VETH --data-dir /tmp/tw
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then exec sudo -E "$0" "$@"; fi
export PYTHONDONTWRITEBYTECODE=1
exec python3 -c "$(cat <<'PY'
import os, subprocess, sys
sys.path.insert(0, "tests/integration")
import lab
with lab.Lab() as L:
    env = dict(os.environ, SRV_NS=L.srv_ns, CLI_NS=L.cli_ns, SRV_VETH=L.srv_veth, CLI_VETH=L.cli_veth,
               SRV4=L.srv4, CLI4=L.cli4, SRV6=L.srv6, CLI6=L.cli6, LAB_DIR=str(L.dir),
               PS1=f"[twlab {L.cli_ns}] \\w# ")
    print(f"lab up: server ns {L.srv_ns} ({L.srv_veth} {L.srv4} {L.srv6}), "
          f"client ns {L.cli_ns} ({L.cli_veth} {L.cli4} {L.cli6}); dir {L.dir}")
    print(f"in another terminal: ip netns exec {L.srv_ns} build/tapwire-sensor -i {L.srv_veth} --data-dir /tmp/tw")
    print("this shell runs in the client namespace; exit it to tear the lab down")
    subprocess.run(["ip", "netns", "exec", L.cli_ns, "bash", "--norc", "-i"], env=env)
PY
)" "$@"

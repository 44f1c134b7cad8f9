#!/usr/bin/env python3
"""Coexistence with other agents on the same interface: another agent's root
qdisc, its TC filters (BPF programs, and a u32 filter) on the clsact qdisc,
and its tcx programs survive tapwire's start, kill -9, restart and stop,
unchanged and in the same order, and keep running; tapwire's own capture
still equals tcpdump's. Both ways of attaching are exercised: TC filters
(--attach tc) and tcx links (--attach tcx, Linux 6.6+). A state file that
cannot be trusted (a symbolic link, another owner, writable by others) never
makes tapwire remove another agent's qdisc, and is never written through.

Needs root, clang, bpftool and the built binaries (tapwire-tcx lists and
attaches tcx programs, which this system's bpftool and tc predate); skips with
77 otherwise (fails under CI=true).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import unittest
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab  # noqa: E402
import pcapcmp  # noqa: E402

# A foreign TC program: counts the packets it sees, changes nothing.
FOREIGN_BPF = r"""
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} NAME_count SEC(".maps");
SEC("tc") int NAME(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 *v = bpf_map_lookup_elem(&NAME_count, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	return TC_ACT_UNSPEC;
}
"""

OURS = re.compile(r"\btw_(ingress|egress)\b")
BPF_GROUP_LINE = re.compile(r"^filter protocol \S+ pref \d+ bpf chain \d+$")


def tcx_tool() -> Path:
    return lab.build_dir() / "tapwire-tcx"


def bpftool_json(args: list) -> object:
    return json.loads(lab.run(["bpftool", "-j"] + [str(a) for a in args]).stdout or "null")


class Agent:
    """Another agent on the server veth: compiles its programs, attaches them
    with tc and (if the kernel has them) tcx links, and reads their counts."""

    def __init__(self, L: lab.Lab):
        self.L = L
        self.dev, self.ns = L.srv_veth, L.srv_ns
        self.objs: dict[str, Path] = {}
        self.bpffs = L.dir / "bpffs"
        self.bpffs.mkdir()
        lab.run(["mount", "-t", "bpf", "bpf", self.bpffs])
        self.tcx = self.tcx_query() is not None
        self.root_qdisc = None

    def close(self):
        lab.run(["umount", "-l", self.bpffs], check=False)  # unpins: the foreign tcx links go

    def obj(self, name: str) -> Path:
        if name not in self.objs:
            src, obj = self.L.dir / f"{name}.bpf.c", self.L.dir / f"{name}.bpf.o"
            src.write_text(FOREIGN_BPF.replace("NAME", name))
            arch = os.uname().machine
            lab.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch}-linux-gnu", "-c", src, "-o", obj])
            self.objs[name] = obj
        return self.objs[name]

    def tc(self, *args, check=True):
        return self.L.ns(self.ns, ["tc"] + [str(a) for a in args], check=check)

    def add_root_qdisc(self):
        # the first qdisc this kernel has (sch_prio and sch_fq_codel may be modules it lacks)
        for kind, extra in (("fq_codel", []), ("prio", []), ("pfifo", ["limit", "1000"])):
            if self.tc("qdisc", "replace", "dev", self.dev, "root", "handle", "1:", kind, *extra, check=False).returncode == 0:
                self.root_qdisc = kind
                return
        raise AssertionError("no root qdisc could be added (fq_codel, prio, pfifo)")

    def add_bpf_filter(self, hook: str, prog: str, prio: int | None = None, handle: int | None = None):
        args = ["filter", "add", "dev", self.dev, hook]
        if prio:
            args += ["prio", prio]
        if handle:
            args += ["handle", hex(handle)]
        self.tc(*args, "bpf", "da", "obj", self.obj(prog), "sec", "tc")

    def add_u32_never_matching(self, hook: str, prio: int):
        # another kind of classifier (its priority cannot hold a bpf filter), matching no packet
        self.tc("filter", "add", "dev", self.dev, hook, "prio", prio, "protocol", "ip", "u32", "match", "u32",
                "0x12345678", "0xffffffff", "at", "0", "classid", "1:1")

    def add_tcx(self, hook: str, prog: str):
        r = self.L.ns(self.ns, [tcx_tool(), "attach", self.obj(prog), prog, self.dev, hook, self.bpffs / f"{prog}-{hook}"])
        return json.loads(r.stdout)

    def tcx_query(self) -> dict | None:
        r = self.L.ns(self.ns, [tcx_tool(), "query", self.dev], check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def state(self) -> dict:
        """Everything on the interface, foreign and ours, in order."""
        q = [l.strip() for l in self.tc("qdisc", "show", "dev", self.dev).stdout.splitlines() if l.strip()]
        filters = {}
        for hook in ("ingress", "egress"):
            out = self.tc("filter", "show", "dev", self.dev, hook, check=False).stdout
            filters[hook] = [l.strip() for l in out.splitlines() if l.strip()]
        tcx = self.tcx_query() or {"ingress": [], "egress": []}
        return {"qdiscs": q, "filters": filters,
                "tcx": {h: [(e["name"], e["prog_id"]) for e in tcx[h]] for h in ("ingress", "egress")}}

    @staticmethod
    def foreign(st: dict) -> dict:
        """The part of state() that is not tapwire's. The line of a bpf
        priority group is dropped: tapwire's own group comes and goes."""
        return {"root_qdisc": [q for q in st["qdiscs"] if "clsact" not in q],
                "filters": {h: [l for l in ls if not OURS.search(l) and not BPF_GROUP_LINE.match(l)]
                            for h, ls in st["filters"].items()},
                "tcx": {h: [e for e in es if not OURS.search(e[0])] for h, es in st["tcx"].items()}}

    @staticmethod
    def ours(st: dict) -> dict:
        return {"filters": {h: [l for l in ls if OURS.search(l)] for h, ls in st["filters"].items()},
                "tcx": {h: [e for e in es if OURS.search(e[0])] for h, es in st["tcx"].items()}}

    def counts(self) -> dict[int, int]:
        """Packets counted by each foreign program attached now, by program id."""
        st = self.state()
        ids = [e[1] for es in self.foreign(st)["tcx"].values() for e in es]
        for ls in self.foreign(st)["filters"].values():
            ids += [int(m.group(1)) for l in ls if (m := re.search(r"\bid (\d+)\b", l))]
        out = {}
        for pid in ids:
            maps = bpftool_json(["prog", "show", "id", pid]).get("map_ids", [])
            for mid in maps:
                v = bpftool_json(["map", "lookup", "id", mid, "key", "0", "0", "0", "0"])
                if isinstance(v, dict) and v.get("formatted"):
                    out[pid] = int(v["formatted"]["value"])
                elif isinstance(v, dict):
                    out[pid] = int.from_bytes(bytes(int(b, 16) for b in v["value"]), "little")
        return out


class Coexistence(unittest.TestCase):
    maxDiff = None

    def traffic(self, L: lab.Lab):
        L.curl(L.url("/f/10k.bin"), L.url("/f/1m.bin"), L.url("/f/100b.bin"))
        L.curl(L.url("/f/1m.bin", v6=True), L.url("/f/10k.bin", v6=True))
        for v6 in (False, True):
            r = L.dig(f"www.{L.DOMAIN}", "A", v6=v6)
            self.assertIn("status: NOERROR", r.stdout)

    def assert_foreign(self, agent: Agent, want: dict, when: str) -> dict:
        st = agent.state()
        self.assertEqual(agent.foreign(st), want, f"{when}: the other agent's qdisc, filters or tcx programs changed "
                                                   f"(full state: {json.dumps(st, indent=1)})")
        return st

    def assert_ours_once(self, st: dict, mode: str, when: str, egress_prio: int = 1):
        ours = Agent.ours(st)
        if mode == "tcx":
            for hook in ("ingress", "egress"):
                self.assertEqual(len(ours["tcx"][hook]), 1, f"{when}: tapwire's tcx programs on {hook}: {ours}")
                self.assertEqual(st["tcx"][hook][0][0], f"tw_{hook}", f"{when}: tapwire's program runs first on {hook}: "
                                                                      f"{st['tcx'][hook]}")
            self.assertEqual(ours["filters"], {"ingress": [], "egress": []}, f"{when}: TC filters in tcx mode: {ours}")
        else:
            for hook in ("ingress", "egress"):
                self.assertEqual(len(ours["filters"][hook]), 1, f"{when}: tapwire's filters on {hook}: {ours}")
                line = ours["filters"][hook][0]
                prio = 1 if hook == "ingress" else egress_prio
                self.assertIn("handle 0x7477", line, f"{when}: {line}")
                self.assertIn(f"pref {prio} ", line, f"{when}: {line}")
            self.assertEqual(ours["tcx"], {"ingress": [], "egress": []}, f"{when}: tcx links in tc mode: {ours}")

    def assert_no_ours(self, st: dict, when: str):
        ours = Agent.ours(st)
        self.assertEqual(ours, {"filters": {"ingress": [], "egress": []}, "tcx": {"ingress": [], "egress": []}},
                         f"{when}: tapwire left programs attached")

    def assert_foreign_ran(self, agent: Agent, before: dict[int, int], when: str) -> dict[int, int]:
        now = agent.counts()
        self.assertEqual(set(now), set(before), f"{when}: foreign programs {set(before)} -> {set(now)}")
        for pid, n in now.items():
            self.assertGreater(n, before[pid], f"{when}: foreign program {pid} saw no packet (still {n})")
        return now

    def compared_phase(self, L: lab.Lab, sensor: lab.Sensor, data: Path, what: str):
        """tcpdump and the sensor on the same traffic: the sensor's export of
        that window equals tcpdump's capture."""
        ref = L.start_tcpdump(L.srv_veth, L.dir / f"ref-{what}.pcap")
        t0 = int(time.time()) + 1
        time.sleep(max(0.0, t0 - time.time()) + 0.05)  # nothing before t0 in either capture
        self.traffic(L)
        time.sleep(1.5)
        rc = sensor.stop()
        ref.stop()
        self.assertEqual(rc, 0, f"{what}: sensor exit {rc}:\n{sensor.output()[-2000:]}")
        self.assertEqual(ref.kernel_drops, 0, "the reference tcpdump dropped packets")
        final = sensor.final_status or {}
        self.assertEqual(lab.all_zero(final.get("drops", {})), [], f"{what}: drops")
        out = L.dir / f"export-{what}.pcapng"
        lab.export_pcap(data, out, extra=["--from", str(t0)])
        cmp = pcapcmp.compare(pcapcmp.read_capture(ref.out), pcapcmp.read_capture(out))
        self.assertEqual(cmp.problems, [], f"{what}: export differs from tcpdump's capture:\n" + "\n".join(cmp.problems))
        self.assertGreaterEqual(cmp.tcp_flows_ref, 2)
        self.assertGreater(cmp.tcp_bytes_compared, 2_000_000)
        self.assertEqual(cmp.udp_datagrams, 4)
        lab.log(f"{what}: {cmp.summary()}")

    # ------------------------------------------------------------------
    def test_legacy_tc_filters(self):
        with lab.Lab() as L:
            agent = Agent(L)
            try:
                self.run_legacy(L, agent)
            finally:
                agent.close()

    def run_legacy(self, L: lab.Lab, agent: Agent):
        agent.add_root_qdisc()
        if agent.tcx:
            agent.add_tcx("ingress", "fgn_x")
        data = L.dir / "data"
        # Phase A: tapwire creates the clsact qdisc; the other agent adds its filters to it afterwards,
        # one of them in tapwire's priority group (prio 1), as Cilium-style agents do.
        s1 = L.start_sensor(data, extra=["--attach", "tc"])
        self.assertEqual(s1.status().get("attach"), "tc")
        agent.add_bpf_filter("ingress", "fgn_a", prio=1, handle=1)
        agent.add_bpf_filter("ingress", "fgn_b")  # tc's automatic priority (49152)
        agent.add_bpf_filter("egress", "fgn_c", prio=3)
        agent.add_u32_never_matching("egress", prio=5)
        want = agent.foreign(agent.state())
        lab.log(f"the other agent: {json.dumps(want)}")
        self.assertEqual(len(want["filters"]["ingress"]), 2)
        st = self.assert_foreign(agent, want, "tapwire running, the other agent added filters")
        self.assert_ours_once(st, "tc", "first start")
        self.traffic(L)
        counts = agent.counts()
        self.assertEqual(len(counts), 3 + (1 if agent.tcx else 0), counts)

        # kill -9: tapwire's filters stay (TC filters outlive their process), the others too.
        s1.kill9()
        st = self.assert_foreign(agent, want, "after kill -9")
        self.assert_ours_once(st, "tc", "after kill -9 (leftovers)")
        self.assertIn("clsact", "\n".join(st["qdiscs"]))

        # Restart: the leftovers go, the others stay, in order; tapwire attaches once.
        s2 = L.start_sensor(data, extra=["--attach", "tc"])
        self.assertTrue(s2.wait_for_line(r"removed 2 filter\(s\) left by a previous run", 5), s2.output())
        st = self.assert_foreign(agent, want, "after restart")
        self.assert_ours_once(st, "tc", "after restart")
        # A second sensor (its own data dir) on the same interface neither takes the live one's
        # filters over nor removes them as leftovers: it refuses to start, in one line.
        other = L.start_sensor(L.dir / "data-other", extra=["--attach", "tc"], wait=False)
        other.p.wait(30)
        self.assertNotEqual(other.p.returncode, 0, other.output())
        self.assertRegex(other.output(), rf"another tapwire-sensor \(pid {s2.pid}\) captures on {L.srv_veth}")
        again = self.assert_foreign(agent, want, "after a second sensor tried to start")
        self.assertEqual(Agent.ours(again), Agent.ours(st), "the second sensor changed the first one's filters")
        self.compared_phase(L, s2, data, "tc-restarted")
        st = self.assert_foreign(agent, want, "after a clean stop")
        self.assert_no_ours(st, "after a clean stop")
        self.assertIn("clsact", "\n".join(st["qdiscs"]), "tapwire removed a clsact qdisc other filters use")
        counts = self.assert_foreign_ran(agent, counts, "after the compared phase")

        # Phase B: priority 1 of egress is held by another kind of filter: tapwire takes its own
        # fallback priority there, and still captures everything.
        agent.add_u32_never_matching("egress", prio=1)
        want = agent.foreign(agent.state())
        s3 = L.start_sensor(data, extra=["--attach", "tc"])
        st = self.assert_foreign(agent, want, "fallback priority")
        self.assert_ours_once(st, "tc", "fallback priority", egress_prio=0x7477)
        self.compared_phase(L, s3, data, "tc-fallback-priority")
        st = self.assert_foreign(agent, want, "after the fallback phase")
        self.assert_no_ours(st, "after the fallback phase")
        self.assert_foreign_ran(agent, counts, "after the fallback phase")

        # Phase C: the other agent's clsact is empty (it will attach later). State files that cannot be
        # trusted claim tapwire created it: tapwire must not remove it, nor write through a link.
        for hook in ("ingress", "egress"):
            agent.tc("filter", "del", "dev", self.dev_of(L), hook)
        self.assertEqual(agent.state()["filters"], {"ingress": [], "egress": []})
        ifindex = int(L.srv(["cat", f"/sys/class/net/{L.srv_veth}/ifindex"]).stdout)
        forged = json.dumps({"pid": 1, "interfaces": [{"ifindex": ifindex, "name": L.srv_veth, "created_qdisc": True}]})
        state = data / "tc-state.json"
        victim = L.dir / "victim.json"
        for how in ("symlink", "other owner", "group-writable"):
            for p in (state, victim):
                if p.is_symlink() or p.exists():
                    p.unlink()
            if how == "symlink":
                victim.write_text(forged)
                os.chmod(victim, 0o600)
                state.symlink_to(victim)
            else:
                state.write_text(forged)
                if how == "other owner":
                    os.chown(state, 65534, 65534)
                    os.chmod(state, 0o600)
                else:
                    os.chmod(state, 0o660)
            before = agent.state()
            self.assertIn("clsact", "\n".join(before["qdiscs"]))
            s = L.start_sensor(data, extra=["--attach", "tc"])
            self.assertTrue(s.wait_for_line(r"ignoring .*tc-state\.json", 5), f"{how}: no warning:\n{s.output()}")
            self.assertFalse(state.is_symlink(), f"{how}: the state file is still a link")
            st = os.lstat(state)
            self.assertEqual((st.st_uid, st.st_mode & 0o777), (0, 0o600), f"{how}: the new state file's owner/mode")
            rc = s.stop()
            self.assertEqual(rc, 0, s.output())
            after = agent.state()
            self.assertIn("clsact", "\n".join(after["qdiscs"]), f"{how}: the other agent's empty clsact was removed")
            self.assertEqual(agent.foreign(after), agent.foreign(before), how)
            self.assert_no_ours(after, how)
            if how == "symlink":
                self.assertEqual(victim.read_text(), forged, "the link's target was written to")

        # Phase D: a clsact tapwire creates and nobody else uses goes when tapwire stops.
        agent.tc("qdisc", "del", "dev", L.srv_veth, "clsact")
        before = agent.foreign(agent.state())
        s = L.start_sensor(data, extra=["--attach", "tc"])
        self.assertIn("clsact", "\n".join(agent.state()["qdiscs"]))
        self.assertEqual(s.stop(), 0)
        after = agent.state()
        self.assertNotIn("clsact", "\n".join(after["qdiscs"]), "tapwire left the clsact qdisc it created")
        self.assertEqual(agent.foreign(after), before)
        print(f"legacy TC: the other agent's root qdisc ({agent.root_qdisc}), 3 BPF filters, 2 u32 filters"
              f"{' and a tcx program' if agent.tcx else ''} survived start, kill -9, restart, stop, in order")

    @staticmethod
    def dev_of(L):
        return L.srv_veth

    # ------------------------------------------------------------------
    def test_tcx_links(self):
        with lab.Lab() as L:
            agent = Agent(L)
            try:
                if not agent.tcx:
                    self.skipTest("this kernel has no tcx links (Linux 6.6+): the TC filter test covers it")
                self.run_tcx(L, agent)
            finally:
                agent.close()

    def run_tcx(self, L: lab.Lab, agent: Agent):
        agent.add_root_qdisc()
        agent.tc("qdisc", "add", "dev", L.srv_veth, "clsact")
        agent.add_bpf_filter("ingress", "fgn_a", prio=1, handle=1)
        agent.add_bpf_filter("egress", "fgn_b", prio=2)
        agent.add_tcx("ingress", "fgn_x")
        agent.add_tcx("ingress", "fgn_y")
        agent.add_tcx("egress", "fgn_z")
        want = agent.foreign(agent.state())
        lab.log(f"the other agent: {json.dumps(want)}")
        self.assertEqual([n for n, _ in want["tcx"]["ingress"]], ["fgn_x", "fgn_y"])
        counts = agent.counts()
        data = L.dir / "data"

        s1 = L.start_sensor(data)  # auto: tcx on this kernel
        self.assertEqual(s1.status().get("attach"), "tcx")
        st = self.assert_foreign(agent, want, "first start")
        self.assert_ours_once(st, "tcx", "first start")
        self.traffic(L)
        counts = self.assert_foreign_ran(agent, counts, "first start")

        # kill -9: the kernel removes tapwire's links with its file descriptors.
        s1.kill9()
        st = self.assert_foreign(agent, want, "after kill -9")
        self.assert_no_ours(st, "after kill -9")

        s2 = L.start_sensor(data, extra=["--attach", "tcx"])
        st = self.assert_foreign(agent, want, "after restart")
        self.assert_ours_once(st, "tcx", "after restart")
        self.compared_phase(L, s2, data, "tcx-restarted")
        st = self.assert_foreign(agent, want, "after a clean stop")
        self.assert_no_ours(st, "after a clean stop")
        self.assert_foreign_ran(agent, counts, "after a clean stop")
        print("tcx: the other agent's root qdisc, clsact with 2 BPF filters and 3 tcx programs survived start, "
              "kill -9, restart, stop, in order; tapwire's programs ran first")


if __name__ == "__main__":
    lab.require(tools=("ip", "tc", "nginx", "dnsmasq", "tcpdump", "tshark", "curl", "dig", "clang", "bpftool"))
    if not os.access(tcx_tool(), os.X_OK):
        msg = f"cannot run: missing binary {tcx_tool()} (build first)"
        print(("FAIL (CI=true): " if lab.in_ci() else "SKIP: ") + msg, file=sys.stderr)
        sys.exit(1 if lab.in_ci() else lab.SKIP)
    unittest.main()

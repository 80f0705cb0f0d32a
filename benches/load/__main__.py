"""Load benchmark driver: `benches/run [--smoke|--quick|--full]` (see benches/README.md).

Starts a throwaway PostgreSQL, fencegate and PgBouncer, runs the pgbench matrix against
direct PostgreSQL, PgBouncer (session mode), fencegate without tokens and fencegate with
tokens, measures proxy memory with idle clients, and writes benches/RESULTS.md. Everything
it started is stopped by PID on the way out, errors and signals included.
"""

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass

import checks as checks_
import idle
import machine
import postgres
import procs
import proxies
import report
import workloads
from workloads import Target, Workload

MATRIX = ([Workload("select-only", p, c) for p in ("simple", "extended") for c in (1, 8, 32)]
          + [Workload("tpcb-like", "simple", 8)])


@dataclass
class Mode:
    scale: int
    reps: int
    duration: int = None         # seconds per pgbench run (-T)
    transactions: int = None     # or transactions per client (-t)
    matrix: tuple = tuple(MATRIX)
    idle_counts: tuple = (1, 100, 1000)
    token_clients: tuple = None  # client counts the token targets run at (None: all)
    floor_clients: tuple = (8,)  # client counts the floor target runs at (simple protocol)
    labels: tuple = None         # the targets that run (None: all)
    report: bool = True          # writes benches/RESULTS.md by default; else prints its tables

    def has(self, label):
        """Whether the target called `label` runs in this mode."""
        return self.labels is None or label in self.labels

    def runs(self, target, workload):
        if target.scripts.startswith("setlocal") and workload.script != "tpcb-like":
            return False
        if target.scripts == "floor":
            return workload.protocol == "simple" and workload.clients in self.floor_clients
        return (target.scripts == "builtin" or self.token_clients is None
                or workload.clients in self.token_clients)

    def max_clients(self, target_scripts, **match):
        """Most clients any workload of `target_scripts` runs with (for the fence checks)."""
        probe = Target("", 0, None, target_scripts)
        return max(w.clients for w in self.matrix if self.runs(probe, w)
                   and all(getattr(w, k) == v for k, v in match.items()))


MODES = {
    # Seconds: every target answers and every workload completes without errors.
    "smoke": Mode(scale=1, reps=1, transactions=20, idle_counts=(1, 10), floor_clients=(2,),
                  matrix=(Workload("select-only", "simple", 2),
                          Workload("select-only", "extended", 2),
                          Workload("tpcb-like", "simple", 2))),
    # Token targets at 8 clients only, to stay under 2 minutes on this 2-core machine.
    "quick": Mode(scale=10, reps=3, duration=1, token_clients=(8,)),
    "full": Mode(scale=10, reps=5, duration=6),
    # Issue 13's cells only, in many short repetitions (their spread in --full is wide):
    # about 8 minutes; prints its tables and writes no report unless --out is given.
    "cost": Mode(scale=10, reps=14, duration=4, idle_counts=(), report=False,
                 matrix=(Workload("select-only", "simple", 8), Workload("tpcb-like", "simple", 8)),
                 labels=("fencegate", "fencegate+token", "fencegate+floor",
                         "fencegate+SET LOCAL unfenced", "fencegate+SET LOCAL")),
}


def main():
    ap = argparse.ArgumentParser(prog="benches/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    for m in MODES:
        g.add_argument(f"--{m}", dest="mode", action="store_const", const=m)
    ap.add_argument("--out", help="where to write the report (default benches/RESULTS.md; "
                    "smoke writes none unless given)")
    ap.add_argument("--fencegate", default=os.environ.get("FENCEGATE_BIN", os.path.join(
        machine.REPO, "target", "release", "fencegate")))
    args = ap.parse_args()
    args.mode = args.mode or "quick"
    if args.out is None and args.mode != "smoke" and MODES[args.mode].report:
        args.out = os.path.join(machine.REPO, "benches", "RESULTS.md")

    # SIGTERM and SIGHUP end the run like Ctrl-C does: through the finally below.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    procs_ = procs.Procs()
    cluster = postgres.Cluster(procs_)
    try:
        return Bench(args, procs_, cluster).run()
    finally:
        procs_.stop_all()
        cluster.remove()


class Bench:
    def __init__(self, args, procs_, cluster):
        self.args, self.procs, self.cluster = args, procs_, cluster
        self.mode = MODES[args.mode]
        self.checks = checks_.Checks()
        self.notes = []

    def run(self):
        t0 = time.monotonic()
        info = machine.info(self.args.mode, self.mode)
        mode = self.mode
        say(f"mode {self.args.mode}: scale {mode.scale}, {mode.reps} repetition(s) of "
            f"{info['length']}")
        self.cluster.start()
        say(f"PostgreSQL on port {self.cluster.port}; pgbench -i -s {mode.scale}: "
            f"{self.cluster.pgbench_init(mode.scale):.1f} s")
        fg, pb = self.start_proxies(info, with_pgbouncer=mode.has("pgbouncer"))
        runs = self.run_matrix(self.targets(fg, pb))
        checks_.fence_rows(self.checks, self.cluster, mode.max_clients("token", protocol="simple"),
                           mode.max_clients("setlocal"),
                           extended=mode.has("fencegate+token")
                           and any(w.protocol == "extended" for w in mode.matrix),
                           shared=mode.has("fencegate+shared"))
        checks_.stale_rejected(self.checks, fg.port)
        for proxy in (fg, pb):
            if proxy:
                self.procs.stop(proxy.proc)
        self.cluster.wait_no_backends()
        memory = self.measure_memory() if self.mode.idle_counts else {}
        self.note_logs(("fencegate", "fencegate-idle", "pgbouncer/pgbouncer",
                        "pgbouncer-idle/pgbouncer"))
        info["elapsed"] = time.monotonic() - t0
        info["load_end"] = machine.loadavg()
        return self.finish(info, runs, memory)

    def start_proxies(self, info, with_pgbouncer):
        proxies.migrate(self.args.fencegate, self.cluster)
        fg = proxies.start_fencegate(self.procs, self.args.fencegate, self.cluster)
        pb = proxies.start_pgbouncer(self.procs, self.cluster) if with_pgbouncer else None
        info["fencegate"] = fg.version
        info["pgbouncer"] = pb.version if pb else (
            "not installed: skipped" if with_pgbouncer else "not run in this mode")
        if pb is None and with_pgbouncer:
            self.notes.append("PgBouncer is not installed and could not be installed: its "
                              "rows and the ratios to it are missing")
        return fg, pb

    def targets(self, fg, pb):
        targets = [Target("direct", self.cluster.port, None, "builtin")]
        if pb:
            targets.append(Target("pgbouncer", pb.port, pb, "builtin"))
        targets += [Target("fencegate", fg.port, fg, "builtin"),
                    Target("fencegate+token", fg.port, fg, "token"),
                    Target("fencegate+shared", fg.port, fg, "shared"),
                    Target("fencegate+floor", fg.port, fg, "floor"),
                    Target("fencegate+SET LOCAL unfenced", fg.port, fg, "setlocal-unfenced"),
                    Target("fencegate+SET LOCAL", fg.port, fg, "setlocal")]
        targets = [t for t in targets if self.mode.has(t.label)]
        for t in targets:
            if t.scripts == "builtin":
                self.checks.expect(proxies.answers(t.port),
                                   f"{t.label} answers SELECT 40 + 2 with 42")
        return targets

    def run_matrix(self, targets):
        mode = self.mode
        script_dir = os.path.join(self.cluster.dir, "scripts")
        os.makedirs(script_dir)
        runs = []
        for workload in mode.matrix:
            for rep in range(mode.reps):
                for target in (t for t in targets if mode.runs(t, workload)):
                    run = workloads.pgbench(workload, target, mode.scale, script_dir, rep,
                                            mode.duration, mode.transactions)
                    if mode.transactions:
                        self.checks.expect(
                            run.transactions == workload.clients * mode.transactions,
                            f"{workload.name} via {target.label}: {run.transactions} "
                            "transactions, none failed")
                    runs.append(run)
                    cpu = f"  proxy cpu {run.cpu_s:.2f} s" if run.cpu_s is not None else ""
                    say(f"{workload.name:26} {target.label:20} rep {rep + 1}: "
                        f"{run.tps:9.0f} tps {run.latency_ms:7.3f} ms{cpu}")
        return runs

    def measure_memory(self):
        """Fresh proxies, one after the other (each needs up to 1,000 server backends)."""
        memory = {}
        starters = (
            ("fencegate", lambda: proxies.start_fencegate(
                self.procs, self.args.fencegate, self.cluster, "fencegate-idle")),
            ("pgbouncer", lambda: proxies.start_pgbouncer(
                self.procs, self.cluster, "pgbouncer-idle")))
        for name, start in starters:
            proxy = start()
            if proxy is None:
                continue
            memory[name] = base, rows = idle.measure(proxy, self.cluster, self.mode.idle_counts)
            n, rss, per, backends = rows[-1]
            say(f"memory {name}: {base} KiB idle, {rss} KiB with {n} clients "
                f"({per:.1f} KiB per client, {backends} server backends)")
            self.checks.expect(backends >= n, f"{name}: {n} idle clients hold {backends} "
                               "server connections (session mode)")
            self.procs.stop(proxy.proc)
            if name != starters[-1][0]:
                self.cluster.wait_no_backends()
        return memory

    def note_logs(self, names):
        """Surfaces what the proxies logged (fencegate at warn; PgBouncer's errors)."""
        for name in names:
            try:
                with open(os.path.join(self.cluster.dir, f"{name}.log"), errors="replace") as f:
                    # The stale-token check's own rejection is expected.
                    lines = [line.rstrip() for line in f
                             if line.strip() and "bench-stale" not in line]
            except OSError:
                continue
            if name.startswith("pgbouncer"):
                lines = [line for line in lines if " ERROR " in line or " FATAL " in line]
            if lines:
                self.notes.append(f"{name} logged {len(lines)} line(s) at warn/error level, "
                                  f"the first: {lines[0][:300]}")

    def finish(self, info, runs, memory):
        summary = report.summarize(runs)
        if self.args.out:
            with open(self.args.out, "w") as f:
                f.write(report.results_md(info, summary, memory, self.checks.lines,
                                          self.notes))
        if self.args.out or not self.mode.report:
            print(report.throughput_table(summary))
            if memory:
                print(report.memory_table(memory))
                print(report.issue_targets(summary, memory))
            print(report.token_cost_targets(summary))
        if self.args.out:
            say(f"wrote {os.path.relpath(self.args.out)} in {info['elapsed']:.0f} s")
        elif not self.mode.report:
            say(f"done in {info['elapsed']:.0f} s (no report written; --out FILE writes one)")
        failed = self.checks.failed
        for line in failed:
            print(line)
        for note in self.notes:
            print("note:", note)
        print(f"{self.args.mode}: {len(self.checks.lines) - len(failed)} passed, "
              f"{len(failed)} failed")
        return 1 if failed else 0


def say(msg):
    print(f"[bench] {msg}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

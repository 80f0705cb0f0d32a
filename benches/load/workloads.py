"""pgbench workloads: the matrix cells, the token-carrying scripts, one timed run.

Tokens are per client, so clients never queue on one fence row: the resource is
`bench:<client_id>` (`bench-<client_id>` for SET LOCAL), token 1 (admitted again and again: a token equal to the high-water
mark passes). pgbench substitutes `:client_id` inside the comment in simple mode only; in
extended mode it turns every `:name` into a bind parameter, comment or not, so the
extended-protocol token workload uses one script per resource instead (`benchx:<i>`,
i < min(128, 4 x clients), pgbench picks one at random per transaction); two clients
then share a resource for a moment now and then, which costs little on a statement that
holds the row lock for well under a millisecond.
The "shared" scripts give every client the same resource (`leader`) and token: one holder
writing through a pool, which must run as concurrently as without a token (G7).
The "floor" scripts send, in the Query where the proxy would put its check, a statement
that only takes a lock: what any check costs before it reads the fence row (issue 13).
"""

import os
import re
import subprocess
from dataclasses import dataclass

import postgres
import procs

TOKEN = 1
SHARED_RESOURCE = "leader"


@dataclass(frozen=True)
class Workload:
    script: str     # "select-only" or "tpcb-like"
    protocol: str   # "simple" or "extended"
    clients: int

    @property
    def name(self):
        return f"{self.script} {self.protocol} c={self.clients}"


@dataclass(frozen=True)
class Target:
    label: str        # column in the report
    port: int
    proxy: object     # proxies.Proxy whose CPU is measured, or None (direct)
    scripts: str      # "builtin", "token" (sqlcommenter), "shared" (one token), "setlocal",
                      # "setlocal-unfenced" or "floor" (a lock where the check would go)


def comment(resource):
    return f"/*fencing_resource='{resource}',fencing_token='{TOKEN}'*/"


def select_only(scale, note="", first=""):
    return (f"\\set aid random(1, {100000 * scale})\n"
            f"{first}SELECT abalance FROM pgbench_accounts WHERE aid = :aid{note};\n")


def tpcb_like(scale, note="", prologue="", first=""):
    return (f"\\set aid random(1, {100000 * scale})\n"
            f"\\set bid random(1, {scale})\n"
            f"\\set tid random(1, {10 * scale})\n"
            "\\set delta random(-5000, 5000)\n"
            "BEGIN;\n" + prologue +
            f"{first}UPDATE pgbench_accounts SET abalance = abalance + :delta "
            f"WHERE aid = :aid{note};\n"
            f"SELECT abalance FROM pgbench_accounts WHERE aid = :aid{note};\n"
            f"UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid{note};\n"
            f"UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid{note};\n"
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
            f"VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP){note};\n"
            "END;\n")


# Not 'bench::client_id': pgbench leaves `::` (a cast) alone, and every client would share
# the resource "bench::client_id".
SET_LOCAL = ("SET LOCAL fencing.resource = 'bench-:client_id';\n"
             f"SET LOCAL fencing.token = {TOKEN};\n")
# The same two statements without fencing (settings fencegate does not read): what a SET
# LOCAL token costs is the difference to these, the two extra statements are the client's.
SET_LOCAL_UNFENCED = SET_LOCAL.replace("fencing.", "bench.")
# The least a check can cost (issue 13): a statement of its own, sent in the same Query as
# the statement it would guard (pgbench's `\;` joins them, as the proxy joins its check),
# taking a shared advisory lock of the client's, as every check takes K(r) shared, and
# reading nothing. A real check costs more: it must also read the fence row.
FLOOR = "SELECT pg_catalog.pg_try_advisory_xact_lock_shared(:client_id)\\; "


def script_args(workload, target, scale, script_dir):
    """pgbench options choosing the script(s) for this workload and target."""
    if target.scripts == "builtin":
        return ["-b", workload.script]
    if target.scripts in ("setlocal", "setlocal-unfenced"):
        assert workload.script == "tpcb-like" and workload.protocol == "simple"
        prologue = SET_LOCAL if target.scripts == "setlocal" else SET_LOCAL_UNFENCED
        return _files(script_dir, target.scripts, [tpcb_like(scale, prologue=prologue)])
    make = select_only if workload.script == "select-only" else tpcb_like
    if target.scripts == "floor":
        assert workload.protocol == "simple"
        return _files(script_dir, f"floor-{workload.script}", [make(scale, first=FLOOR)])
    if target.scripts == "shared":
        # One holder, many connections (G7): every client presents the same token.
        return _files(script_dir, f"shared-{workload.script}",
                      [make(scale, " " + comment(SHARED_RESOURCE))])
    if workload.protocol == "simple":
        return _files(script_dir, f"token-{workload.script}",
                      [make(scale, " " + comment("bench%3A:client_id"))])
    count = 1 if workload.clients == 1 else min(128, 4 * workload.clients)
    return _files(script_dir, f"token-{workload.script}-x",
                  [make(scale, " " + comment(f"benchx%3A{i}")) for i in range(count)])


def _files(script_dir, stem, texts):
    args = []
    for i, text in enumerate(texts):
        path = os.path.join(script_dir, f"{stem}-{i}.sql")
        with open(path, "w") as f:
            f.write(text)
        args += ["-f", f"{path}@1"]
    return args


@dataclass
class Run:
    workload: Workload
    target: str
    rep: int
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    cpu_s: float = None   # proxy CPU (user + system) during the run; None for direct
    sys_s: float = None   # the system part of it


def pgbench(workload, target, scale, script_dir, rep, duration=None, transactions=None):
    """One pgbench run against `target`; raises when pgbench fails or reports errors."""
    length = ["-T", str(duration)] if duration else ["-t", str(transactions)]
    args = [postgres.tool("pgbench"), "-h", "127.0.0.1", "-p", str(target.port),
            "-U", "postgres", "-n", "-c", str(workload.clients),
            "-j", str(min(workload.clients, 2)), "-M", workload.protocol, *length,
            *script_args(workload, target, scale, script_dir), postgres.DATABASE]
    cpu0 = procs.cpu_seconds(target.proxy.pid) if target.proxy else None
    out = subprocess.run(args, capture_output=True, text=True,
                         timeout=(duration or 30) + 120)
    cpu1 = procs.cpu_seconds(target.proxy.pid) if target.proxy else None
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"pgbench {workload.name} via {target.label} failed "
                           f"({out.returncode}):\n{text[-2000:]}")
    run = Run(workload, target.label, rep,
              tps=_number(r"^tps = ([\d.]+)", text),
              latency_ms=_number(r"^latency average = ([\d.]+) ms", text),
              transactions=int(_number(r"^number of transactions actually processed: (\d+)", text)),
              failed=int(_number(r"^number of failed transactions: (\d+)", text, default=0)),
              cpu_s=cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1] if cpu0 else None,
              sys_s=cpu1[1] - cpu0[1] if cpu0 else None)
    if run.failed or run.transactions == 0:
        raise RuntimeError(f"pgbench {workload.name} via {target.label}: {run.failed} failed, "
                           f"{run.transactions} processed:\n{text[-2000:]}")
    return run


def _number(pattern, text, default=None):
    m = re.search(pattern, text, re.MULTILINE)
    if m:
        return float(m.group(1))
    if default is not None:
        return default
    raise RuntimeError(f"pgbench output lacks /{pattern}/:\n{text[-2000:]}")

"""Correctness checks made along the way: a benchmark of wrong answers is worthless, and
these are what `--smoke` exists for."""

import postgres
import workloads


class Checks:
    def __init__(self):
        self.lines = []

    def expect(self, ok, what):
        self.lines.append(("ok: " if ok else "FAILED: ") + what)
        if not ok:
            print(f"[bench] FAILED: {what}", flush=True)

    @property
    def failed(self):
        return [c for c in self.lines if c.startswith("FAILED")]


def fence_rows(checks, cluster, simple_clients, setlocal_clients, extended=True, shared=True):
    """Every token workload that ran went through the fence check with its own resources
    (`extended`, `shared`: whether the extended-protocol and shared-token workloads ran)."""
    for pattern, what, expected, ran in (
            ("^bench:[0-9]+$", "sqlcommenter, simple protocol", simple_clients, True),
            ("^bench-[0-9]+$", "SET LOCAL", setlocal_clients, True),
            ("^benchx:[0-9]+$", "sqlcommenter, extended protocol", None, extended),
            (f"^{workloads.SHARED_RESOURCE}$", "one token shared by every client", 1, shared)):
        if not ran:
            continue
        count, tokens = cluster.psql(
            postgres.DATABASE, "SELECT count(*), coalesce(string_agg(DISTINCT token::text, ','), "
            f"'') FROM fencegate.fence WHERE resource ~ '{pattern}'").split("|")
        count = int(count)
        ok = count >= 1 if expected is None else count == expected
        checks.expect(ok and tokens == str(workloads.TOKEN),
                      f"{what}: {count} fence rows /{pattern}/, token(s) {tokens or '-'} "
                      f"(expected {expected or 'some'}, token {workloads.TOKEN})")


def stale_rejected(checks, port):
    """Through fencegate, a token below the admitted one is refused."""
    sql = "SELECT 1 /*fencing_resource='bench-stale',fencing_token='{}'*/"
    admitted = postgres.psql(port, postgres.DATABASE, sql.format(5)) == "1"
    status, text = postgres.psql(port, postgres.DATABASE, sql.format(4), check=False)
    checks.expect(admitted and status != 0 and "stale fencing token" in text,
                  "through fencegate, token 4 after token 5 is rejected as stale")

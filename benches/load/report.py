"""Medians, ratios and the RESULTS.md text."""

import statistics

TARGET_ORDER = ["direct", "pgbouncer", "fencegate", "fencegate+token", "fencegate+shared",
                "fencegate+floor", "fencegate+SET LOCAL unfenced", "fencegate+SET LOCAL"]


def summarize(runs):
    """{workload: {target: row}} with median TPS and latency, spread, CPU per 10k tx."""
    table = {}
    for run in runs:
        table.setdefault(run.workload, {}).setdefault(run.target, []).append(run)
    out = {}
    for workload, by_target in table.items():
        rows = {}
        for target, rs in by_target.items():
            tx = sum(r.transactions for r in rs)
            measured = rs[0].cpu_s is not None and tx
            cpu = sum(r.cpu_s for r in rs) / tx * 10000 if measured else None
            sys_ = sum(r.sys_s for r in rs) / tx * 10000 if measured else None
            rows[target] = {
                "tps": statistics.median(r.tps for r in rs),
                "tps_min": min(r.tps for r in rs),
                "tps_max": max(r.tps for r in rs),
                "lat": statistics.median(r.latency_ms for r in rs),
                "cpu10k": cpu,
                "sys10k": sys_,
                "reps": len(rs),
            }
        for row in rows.values():
            row["x_direct"] = _ratio(row, rows.get("direct"))
            row["x_pgbouncer"] = _ratio(row, rows.get("pgbouncer"))
        out[workload] = rows
    return out


def _ratio(row, base):
    return row["tps"] / base["tps"] if base else None


def _fmt(x, spec):
    return "–" if x is None else format(x, spec)


def throughput_table(summary):
    lines = ["| workload | target | TPS (median) | TPS min–max | latency ms (median) "
             "| × direct | × PgBouncer | proxy CPU s / 10k tx | of which system |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for workload, rows in summary.items():
        for target in TARGET_ORDER:
            r = rows.get(target)
            if r is None:
                continue
            lines.append(
                f"| {workload.name} | {target} | {r['tps']:.0f} | "
                f"{r['tps_min']:.0f}–{r['tps_max']:.0f} | {r['lat']:.3f} | "
                f"{_fmt(r['x_direct'], '.2f')} | {_fmt(r['x_pgbouncer'], '.2f')} | "
                f"{_fmt(r['cpu10k'], '.2f')} | {_fmt(r['sys10k'], '.2f')} |")
    return "\n".join(lines)


def memory_table(memory):
    lines = ["| proxy | idle clients | VmRSS KiB | KiB per client above the 0-client "
             "baseline | server backends |", "|---|---:|---:|---:|---:|"]
    for name, (base, rows) in memory.items():
        lines.append(f"| {name} | 0 | {base} | – | – |")
        for n, rss, per, backends in rows:
            lines.append(f"| {name} | {n} | {rss} | {per:.1f} | {backends} |")
    return "\n".join(lines)


def token_cost_targets(summary):
    """Issue 13's goals: what a token costs, as TPS with tokens over fencegate without."""
    out = []
    goals = (("tpcb-like", "simple", 8, "fencegate+token", "tpcb-like, comment tokens", 0.90),
             ("select-only", "simple", 8, "fencegate+token", "one-statement fenced read", 0.85),
             ("tpcb-like", "simple", 8, "fencegate+SET LOCAL", "tpcb-like, SET LOCAL tokens", 0.85))
    for script, protocol, clients, label, name, goal in goals:
        rows = next((r for w, r in summary.items()
                     if (w.script, w.protocol, w.clients) == (script, protocol, clients)), None)
        if rows and label in rows and "fencegate" in rows:
            x = rows[label]["tps"] / rows["fencegate"]["tps"]
            out.append(f"- {name} ({script} {protocol} c={clients}): {label} / fencegate TPS = "
                       f"{x:.2f} (goal ≥ {goal:.2f}): {'met' if x >= goal else 'missed'}")
            if label == "fencegate+token" and "fencegate+floor" in rows:
                floor = rows["fencegate+floor"]["tps"]
                out.append(f"  - the floor under it, a statement that takes a lock and reads "
                           f"nothing in the same Query: fencegate+floor / fencegate TPS = "
                           f"{floor / rows['fencegate']['tps']:.2f}; the check above it, "
                           f"fencegate+token / fencegate+floor TPS = "
                           f"{rows[label]['tps'] / floor:.2f}")
    rows = next((r for w, r in summary.items()
                 if (w.script, w.protocol, w.clients) == ("tpcb-like", "simple", 8)), None)
    plain, fenced = "fencegate+SET LOCAL unfenced", "fencegate+SET LOCAL"
    if rows and plain in rows and fenced in rows and "fencegate" in rows:
        out.append(f"- for reading the last one: the client's two SET LOCAL statements alone, "
                   f"unfenced, give {plain} / fencegate TPS = "
                   f"{rows[plain]['tps'] / rows['fencegate']['tps']:.2f}; what the token itself "
                   f"costs is {fenced} / {plain} TPS = {rows[fenced]['tps'] / rows[plain]['tps']:.2f}")
    return "\n".join(out)


def issue_targets(summary, memory):
    """The issue's goals, judged on this run's medians (a benchmark, never a test)."""
    out = []

    def find(script, protocol, clients):
        for w, rows in summary.items():
            if (w.script, w.protocol, w.clients) == (script, protocol, clients):
                return rows
        return None

    for protocol in ("simple", "extended"):
        for clients, goal in ((1, 1.0), (8, 1.05), (32, 1.05)):
            rows = find("select-only", protocol, clients)
            if rows and "fencegate" in rows and "pgbouncer" in rows:
                x = rows["fencegate"]["x_pgbouncer"]
                out.append(f"- select-only {protocol} c={clients}: fencegate / PgBouncer TPS = "
                           f"{x:.2f} (goal ≥ {goal:.2f}): {'met' if x >= goal else 'missed'}")
    rows = find("tpcb-like", "simple", 8)
    if rows and "fencegate" in rows:
        for label, goal in (("fencegate+token", 0.9), ("fencegate+shared", 0.8),
                            ("fencegate+SET LOCAL", 0.9)):
            if label in rows:
                x = rows[label]["tps"] / rows["fencegate"]["tps"]
                out.append(f"- tpcb-like c=8: {label} / fencegate TPS = {x:.2f} (goal ≥ {goal:.2f}): "
                           f"{'met' if x >= goal else 'missed'}")
    fg_cpu, pb_cpu = [], []
    for rows in summary.values():
        if "fencegate" in rows and "pgbouncer" in rows:
            fg_cpu.append(rows["fencegate"]["cpu10k"])
            pb_cpu.append(rows["pgbouncer"]["cpu10k"])
    # A run too short for the clock tick can measure PgBouncer at 0 s (smoke mode): no ratio.
    ratios = [f / p for f, p in zip(fg_cpu, pb_cpu) if p]
    if ratios:
        worse = sum(f > p for f, p in zip(fg_cpu, pb_cpu))
        out.append(f"- proxy CPU per transaction ≤ PgBouncer's: fencegate uses more in {worse} of "
                   f"{len(fg_cpu)} workloads (median ratio {statistics.median(ratios):.2f}): "
                   f"{'met' if worse == 0 else 'missed'}")
    if "fencegate" in memory:
        rows = memory["fencegate"][1]
        n, _, per, _ = rows[-1]
        out.append(f"- ≤ 16 KiB RSS per idle client at {n} connections: {per:.1f} KiB: "
                   f"{'met' if per <= 16 else 'missed'}")
    return "\n".join(out)


def results_md(info, summary, memory, checks, notes):
    return f"""# Load benchmark results

Written by `{info['command']}` on {info['date']} in {info['elapsed']:.0f} s. The machine is
shared and small, so numbers are noisy: compare the ratios within one run (targets are
interleaved for exactly that reason), not absolute numbers across runs.

## Machine and versions
- CPU: {info['cpu']}; nproc {info['nproc']}; memory {info['mem']}
- kernel {info['kernel']}; load average at start {info['load_start']}, at end {info['load_end']}
- {info['postgres']}; {info['pgbench']}
- PgBouncer: {info['pgbouncer']}
- fencegate: {info['fencegate']} (git {info['git']}), release build

## Settings
- mode `{info['mode']}`: pgbench scale {info['scale']}; {info['reps']} repetitions of {info['length']}
  per workload and target{info['token_note']}; in each repetition the targets run one after another
  (A B C D A B C D ...); the next workload starts after the last repetition
- pgbench: `-n -c <clients> -j min(clients, 2) -M <protocol>`; direct, pgbouncer and
  fencegate run the built-in script; fencegate+token runs the same statements with
  `/*fencing_resource='bench%3A<client_id>',fencing_token='1'*/` on every data statement
  (extended protocol: one script per resource `benchx:<i>`, see benches/README.md);
  fencegate+shared runs them with `/*fencing_resource='leader',fencing_token='1'*/`, the
  same token on every client (one holder writing through a pool, G7);
  fencegate+floor (simple protocol, 8 clients) runs the built-in statements with
  `SELECT pg_catalog.pg_try_advisory_xact_lock_shared(<client_id>)` sent in the same Query
  as the first data statement, where the proxy puts its check: the least any check costs;
  fencegate+SET LOCAL runs tpcb-like with `SET LOCAL fencing.resource/fencing.token`
  after BEGIN; fencegate+SET LOCAL unfenced the same with `SET LOCAL bench.resource/
  bench.token`, settings fencegate does not read (the two statements without a fence)
- PostgreSQL, fencegate and PgBouncer each run in a process session of their own (own
  scheduler autogroup, like separate services); pgbench runs in the benchmark's
- latency: the median over repetitions of pgbench's per-run average latency
- proxy CPU: user + system seconds of the proxy process (/proc/<pid>/stat) during the
  runs, per 10,000 transactions (connection setup included)
- fencegate: `serve {info['fencegate_flags']}`, `FENCEGATE_LOG=warn`, after `fencegate migrate`
- PostgreSQL (one throwaway cluster for every target):
```
{info['pg_settings']}```
- PgBouncer:
```
{info['pgbouncer_ini']}```

## Throughput and latency
{throughput_table(summary)}

## Memory: proxy RSS with idle clients
Fresh proxy processes; each client did its startup and one `SELECT 1`, then stayed idle.
{memory_table(memory) if memory else '(not measured)'}

## Issue 5 goals, judged on this run
{issue_targets(summary, memory) or '(not enough data)'}

## Issue 13 goals (what a token costs), judged on this run
{token_cost_targets(summary) or '(not enough data)'}

## Checks
{chr(10).join('- ' + c for c in checks)}
{chr(10).join('- ' + n for n in notes)}
"""

"""What the report says about the machine, the versions and the settings."""

import datetime
import os
import platform
import subprocess

import postgres
import proxies

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _first(path, key):
    with open(path) as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), "?")


def _cmd(*args):
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO).stdout.strip()


def info(mode_name, mode):
    dirty = " + uncommitted changes" if _cmd("git", "status", "--porcelain") else ""
    token_note = ""
    if mode.token_clients:
        token_note = f" (token targets at {', '.join(map(str, mode.token_clients))} clients only)"

    class _Cluster:
        port = "<postgres port>"

    return {
        "command": f"benches/run --{mode_name}",
        "mode": mode_name,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "nproc": os.cpu_count(),
        "mem": f"{int(_first('/proc/meminfo', 'MemTotal').split()[0]) / 2**20:.1f} GiB",
        "kernel": platform.release(),
        "load_start": loadavg(),
        "postgres": postgres.version(),
        "pgbench": _cmd(postgres.tool("pgbench"), "--version"),
        "git": _cmd("git", "rev-parse", "--short", "HEAD") + dirty,
        "scale": mode.scale,
        "reps": mode.reps,
        "length": (f"{mode.duration} s" if mode.duration
                   else f"{mode.transactions} transactions per client"),
        "token_note": token_note,
        "fencegate_flags": " ".join(proxies.FENCEGATE_FLAGS),
        "pg_settings": postgres.SETTINGS,
        "pgbouncer_ini": proxies.pgbouncer_ini(_Cluster, "<free port>", "<workdir>"),
    }

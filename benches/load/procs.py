"""Processes the benchmark starts, and what it reads about them from /proc.

Every long-running process (PostgreSQL, fencegate, PgBouncer) is started through
`Procs.start`, which records its PID; `Procs.stop_all` ends them in reverse order, by PID,
first politely and then with SIGKILL. As root, server programs run as the `postgres` user:
the child switches user itself before exec, so the recorded PID is the server's own (no
runuser or su in between), which is what the CPU and RSS readings need.
"""

import os
import pwd
import signal
import socket
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def server_user():
    """The (name, uid, gid) server programs run as, or None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise SystemExit("running as root, but there is no `postgres` user to run servers as")
    return pw.pw_name, pw.pw_uid, pw.pw_gid


def chown_to_server_user(path):
    """Gives `path` and everything below it to the server user (when root)."""
    user = server_user()
    if user is None:
        return
    _, uid, gid = user
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid)


def as_server_user():
    """subprocess keyword arguments that run a child as the server user."""
    user = server_user()
    if user is None:
        return {}
    name, uid, gid = user
    return {"user": uid, "group": gid, "extra_groups": [],
            "env": {**os.environ, "HOME": pwd.getpwnam(name).pw_dir, "USER": name}}


def run_as_server_user(args, **kw):
    """Runs a one-shot server-side program (initdb) to completion; raises on failure."""
    out = subprocess.run(args, capture_output=True, text=True, **as_server_user(), **kw)
    if out.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stderr.strip()}")
    return out


def free_port():
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30.0):
    """Waits until something accepts TCP connections on `port`; fails early if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def cpu_seconds(pid):
    """(user, system) CPU seconds the process has used (/proc/<pid>/stat utime, stime)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces; fields after it start at ") ".
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return utime / CLK_TCK, stime / CLK_TCK


def rss_kib(pid):
    """Resident set size of the process (/proc/<pid>/status VmRSS), KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Procs:
    """The long-running processes started so far, stopped in reverse order."""

    def __init__(self):
        self._started = []  # (name, Popen, stop signal)

    def start(self, name, args, log_path, as_server=False, stop_signal=signal.SIGTERM, env=None):
        kw = as_server_user() if as_server else {}
        if env:
            kw["env"] = {**kw.get("env", os.environ), **env}
        log = open(log_path, "ab")
        try:
            # Each server in a session of its own, as separate services would be: with the
            # kernel's autogroup scheduling, a server sharing the benchmark's session would
            # share one CPU share with pgbench, and which proxy happened to share it would
            # skew the comparison (measured: a third more context switches per transaction).
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, **kw)
        finally:
            log.close()
        self._started.append((name, proc, stop_signal))
        return proc

    def stop(self, proc, timeout=15.0):
        """Stops one process by PID: its stop signal, then SIGKILL after `timeout`."""
        for i, (name, p, sig) in enumerate(self._started):
            if p is proc:
                del self._started[i]
                _stop(name, p, sig, timeout)
                return

    def stop_all(self):
        while self._started:
            name, p, sig = self._started.pop()
            _stop(name, p, sig, 15.0)


def _stop(name, proc, sig, timeout):
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {name} (pid {proc.pid}) did not stop in {timeout:.0f} s; killing it")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass

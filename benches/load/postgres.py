"""The throwaway PostgreSQL server every target talks to, and the client tools.

One cluster for the whole run, so every target meets the same server with the same
settings (`SETTINGS`). It lives in a temporary directory that is removed afterwards.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

import procs

DATABASE = "bench"

# Identical for every target. max_connections leaves room for the memory test's 1,000
# idle sessions (each proxy holds one server connection per client). Durability is off:
# the subject is the proxy, not the disk, and the disk here is shared with other work.
SETTINGS = """\
listen_addresses = '127.0.0.1'
max_connections = 1100
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
checkpoint_timeout = 30min
max_wal_size = 4GB
log_min_messages = warning
"""


def bindir():
    d = os.environ.get("FENCEGATE_PG_BINDIR")
    if d and os.path.exists(os.path.join(d, "initdb")):
        return d
    out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
    if out.returncode == 0 and os.path.exists(os.path.join(out.stdout.strip(), "initdb")):
        return out.stdout.strip()
    raise SystemExit("PostgreSQL server binaries not found (run via benches/run, which "
                     "installs them, or set FENCEGATE_PG_BINDIR)")


def tool(name):
    return os.path.join(bindir(), name)


def version():
    return subprocess.run([tool("postgres"), "--version"], capture_output=True,
                          text=True).stdout.strip()


class Cluster:
    """initdb, start, stop; the postmaster runs as the server user with a known PID."""

    def __init__(self, procs_):
        self.procs = procs_
        self.dir = tempfile.mkdtemp(prefix="fencegate-bench-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.port = procs.free_port()
        self.proc = None

    def start(self):
        procs.chown_to_server_user(self.dir)
        procs.run_as_server_user([tool("initdb"), "-D", self.data, "-U", "postgres",
                                  "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(SETTINGS)
            f.write(f"port = {self.port}\nunix_socket_directories = '{self.dir}'\n")
        self.proc = self.procs.start("postgres", [tool("postgres"), "-D", self.data],
                                     os.path.join(self.dir, "postgres.log"), as_server=True,
                                     stop_signal=signal.SIGINT)  # fast shutdown
        deadline = time.monotonic() + 60
        while subprocess.run([tool("pg_isready"), "-q", "-h", "127.0.0.1", "-p",
                              str(self.port)]).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL did not start:\n" + self.log_tail())
            time.sleep(0.1)
        self.psql("postgres", f"CREATE DATABASE {DATABASE}")

    def log_tail(self, lines=30):
        try:
            with open(os.path.join(self.dir, "postgres.log")) as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def url(self, database=DATABASE):
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, database, sql, port=None):
        return psql(port or self.port, database, sql)

    def pgbench_init(self, scale):
        t0 = time.monotonic()
        out = subprocess.run([tool("pgbench"), "-i", "-q", "-s", str(scale), "-h", "127.0.0.1",
                              "-p", str(self.port), "-U", "postgres", DATABASE],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {out.stderr.strip()}")
        return time.monotonic() - t0

    def backends(self):
        """Client backends connected to the bench database right now."""
        return int(self.psql("postgres", "SELECT count(*) FROM pg_stat_activity "
                             f"WHERE datname = '{DATABASE}' AND backend_type = 'client backend'"))

    def wait_no_backends(self, timeout=30.0):
        """Waits until the bench database has no client backends (a stopped proxy's server
        connections take a moment to go)."""
        deadline = time.monotonic() + timeout
        while self.backends() > 0 and time.monotonic() < deadline:
            time.sleep(0.1)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def psql(port, database, sql, check=True):
    """Runs SQL with psql; returns its unaligned, tuples-only output. With check=False,
    returns (exit status, stdout + stderr) instead of raising."""
    out = subprocess.run([tool("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                          "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", database,
                          "-c", sql], capture_output=True, text=True, timeout=60)
    if not check:
        return out.returncode, out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"psql on port {port} failed: {out.stderr.strip()}")
    return out.stdout.strip()

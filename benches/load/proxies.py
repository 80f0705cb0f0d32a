"""The two proxies in front of the throwaway server: fencegate and PgBouncer.

Each is started on a free loopback port with its PID recorded (for CPU and RSS readings)
and stopped by that PID. fencegate is the release build, `migrate`d into the bench
database first and served with logs at warn. PgBouncer runs in session mode (one server
connection per client, like fencegate) with trust authentication, as the server user
(it refuses to run as root).
"""

import os
import shutil
import subprocess

import postgres
import procs


class Proxy:
    def __init__(self, name, port, proc, version):
        self.name, self.port, self.proc, self.version = name, port, proc, version

    @property
    def pid(self):
        return self.proc.pid


def fencegate_version(binary):
    out = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def migrate(binary, cluster):
    out = subprocess.run([binary, "migrate", "--database-url", cluster.url()],
                         capture_output=True, text=True, env={**os.environ, "FENCEGATE_LOG": "warn"})
    if out.returncode != 0:
        raise RuntimeError(f"fencegate migrate failed: {out.stderr.strip()}")


# Extra `fencegate serve` flags from the environment, e.g.
# FENCEGATE_BENCH_FLAGS="--worker-threads 2" to measure another runtime shape.
FENCEGATE_FLAGS = ["--max-connections", "1100", *os.environ.get("FENCEGATE_BENCH_FLAGS", "").split()]


def start_fencegate(procs_, binary, cluster, label="fencegate"):
    port = procs.free_port()
    log = os.path.join(cluster.dir, f"{label}.log")
    args = [binary, "serve", "--listen", f"127.0.0.1:{port}",
            "--upstream", f"127.0.0.1:{cluster.port}", *FENCEGATE_FLAGS]
    proc = procs_.start(label, args, log, env={"FENCEGATE_LOG": "warn"})
    procs.wait_port(port, proc, label)
    return Proxy("fencegate", port, proc, fencegate_version(binary))


def pgbouncer_binary():
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)


def pgbouncer_version(binary):
    out = subprocess.run([binary, "--version"], capture_output=True, text=True)
    return (out.stdout.strip().splitlines() or ["unknown"])[0]


def pgbouncer_ini(cluster, port, workdir):
    return f"""\
[databases]
* = host=127.0.0.1 port={cluster.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = session
max_client_conn = 1200
default_pool_size = 1100
max_db_connections = 0
logfile = {workdir}/pgbouncer.log
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
"""


def start_pgbouncer(procs_, cluster, label="pgbouncer"):
    """None when PgBouncer is not installed (the caller notes the skip)."""
    binary = pgbouncer_binary()
    if binary is None:
        return None
    port = procs.free_port()
    workdir = os.path.join(cluster.dir, label)
    os.makedirs(workdir, exist_ok=True)
    ini = os.path.join(workdir, "pgbouncer.ini")
    with open(ini, "w") as f:
        f.write(pgbouncer_ini(cluster, port, workdir))
    with open(os.path.join(workdir, "userlist.txt"), "w") as f:
        f.write('"postgres" ""\n')
    procs.chown_to_server_user(workdir)
    proc = procs_.start(label, [binary, ini], os.path.join(workdir, "stdout.log"), as_server=True)
    procs.wait_port(port, proc, label)
    return Proxy("pgbouncer", port, proc, pgbouncer_version(binary))


def answers(port):
    """True when a trivial query through `port` returns what it should."""
    try:
        return postgres.psql(port, postgres.DATABASE, "SELECT 40 + 2") == "42"
    except (RuntimeError, subprocess.TimeoutExpired):
        return False

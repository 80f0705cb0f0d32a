"""Proxy memory with idle clients: open N client connections (startup handshake, one
`SELECT 1` so that PgBouncer's session mode also ties a server connection to each client,
as fencegate does), leave them idle, read the proxy's VmRSS.

Connections are raw sockets speaking just enough of the protocol (trust authentication
only), so 1,000 of them cost one Python process, not 1,000 psql processes.
"""

import socket
import struct
import time

import postgres
import procs

BATCH = 200


def _startup(user, database):
    params = b"".join(k + b"\0" + v + b"\0" for k, v in (
        (b"user", user.encode()), (b"database", database.encode()),
        (b"application_name", b"fencegate-bench-idle")))
    body = struct.pack("!i", 196608) + params + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def _query(sql):
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!i", len(body) + 4) + body


def _read_until_ready(sock, buf=b""):
    """Reads server messages up to ReadyForQuery; raises on ErrorResponse or a password
    request."""
    while True:
        while len(buf) >= 5:
            tag = buf[0:1]
            (length,) = struct.unpack("!i", buf[1:5])
            if len(buf) < length + 1:
                break
            body, buf = buf[5:length + 1], buf[length + 1:]
            if tag == b"E":
                raise RuntimeError("server error: " + body.decode(errors="replace"))
            if tag == b"R" and struct.unpack("!i", body[:4])[0] != 0:
                raise RuntimeError("the idle-connection client only does trust authentication")
            if tag == b"Z":
                return buf
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("server closed the connection during startup")
        buf += chunk


def open_idle(port, n, conns):
    """Opens `n` more idle sessions on `port`, appending the sockets to `conns`."""
    startup = _startup("postgres", postgres.DATABASE)
    query = _query("SELECT 1")
    while n > 0:
        batch = []
        for _ in range(min(BATCH, n)):
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            conns.append(s)
            s.sendall(startup)
            batch.append(s)
        for s in batch:
            rest = _read_until_ready(s)
            s.sendall(query)
            _read_until_ready(s, rest)
        n -= len(batch)


def close_all(conns):
    for s in conns:
        try:
            s.sendall(b"X\0\0\0\4")
        except OSError:
            pass
        s.close()
    conns.clear()


def measure(proxy, cluster, counts):
    """RSS of the proxy with no client, then with each count of idle clients (cumulative).
    Returns (baseline KiB, [(clients, RSS KiB, KiB per client above baseline, server
    backends)])."""
    conns = []
    rows = []
    try:
        time.sleep(0.2)
        base = procs.rss_kib(proxy.pid)
        for n in counts:
            open_idle(proxy.port, n - len(conns), conns)
            time.sleep(0.2)
            rss = procs.rss_kib(proxy.pid)
            rows.append((n, rss, (rss - base) / n, cluster.backends()))
    finally:
        close_all(conns)
    return base, rows

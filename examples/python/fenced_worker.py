#!/usr/bin/env python3
"""A fenced worker in Python with psycopg 3: writes a job's result through fencegate
with the fencing token of the lock it holds, and stops when the lock turns out lost.

The token can be attached two ways (fencegate also understands SET LOCAL, as in Rust):

  --via comment   a sqlcommenter comment on the statement:
                  UPDATE ... /*fencing_resource='job%3A7',fencing_token='42'*/
  --via options   the connection's startup options, for the whole session:
                  options='-c fencing.resource=job:7 -c fencing.token=42'

A stale token (a newer lock holder has written since) comes back as an ordinary
psycopg.errors exception whose sqlstate is 55Z01; its diagnostic DETAIL reads
"presented_token=T current_token=H resource=R". The worker must then stop: the lock is
lost, and retrying cannot succeed.

Usage:
  fenced_worker.py --dsn postgresql://app@127.0.0.1:6432/shop \\
      --resource job:7 --token 42 --job 7 --result done --via comment

Prints one JSON line. Exit status: 0 written, 3 lock lost, 1 anything else.
Needs psycopg 3 (Debian: apt-get install python3-psycopg; or pip install "psycopg[binary]").
"""

import argparse
import json
import sys
from urllib.parse import quote

import psycopg

STALE_TOKEN = "55Z01"
EXIT_LOCK_LOST = 3


def sql_comment(resource: str, token: int) -> str:
    """The sqlcommenter tag: keys sorted, values URL-encoded and single-quoted."""

    def value(v) -> str:
        # safe="" encodes everything but letters, digits and "_.-~", quotes included.
        return "'" + quote(str(v), safe="") + "'"

    return "/*fencing_resource=%s,fencing_token=%s*/" % (value(resource), value(token))


def connect_options(resource: str, token: int) -> str:
    """libpq's `options` value; whitespace and backslashes in values need a backslash."""

    def escape(v: str) -> str:
        return "".join("\\" + c if c in " \t\n\r\f\v\\" else c for c in v)

    return "-c fencing.resource=%s -c fencing.token=%d" % (escape(resource), token)


UPDATE = "UPDATE job SET result = %s, token = %s WHERE id = %s"


def write_with_comment(dsn: str, resource: str, token: int, job: int, result: str) -> dict:
    with psycopg.connect(dsn) as conn:
        # The comment's URL escapes contain '%', psycopg's placeholder character: double it.
        query = UPDATE + " " + sql_comment(resource, token).replace("%", "%%")
        try:
            conn.execute(query, (result, token, job))
            conn.commit()
        except psycopg.Error:
            conn.rollback()
            # The connection stays usable after a fencing rejection.
            conn.execute("SELECT 1").fetchone()
            raise
    return {"outcome": "written", "via": "comment", "token": token}


def write_with_options(dsn: str, resource: str, token: int, job: int, result: str) -> dict:
    # psycopg quotes the options value for the conninfo string itself.
    with psycopg.connect(dsn, options=connect_options(resource, token)) as conn:
        shown = conn.execute("SHOW fencing.resource").fetchone()[0]
        conn.execute(UPDATE, (result, token, job))
        conn.commit()
    return {"outcome": "written", "via": "options", "token": token, "shown_resource": shown}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--resource", required=True)
    parser.add_argument("--token", type=int, required=True)
    parser.add_argument("--job", type=int, required=True)
    parser.add_argument("--result", required=True)
    parser.add_argument("--via", choices=["comment", "options"], required=True)
    args = parser.parse_args()

    write = write_with_comment if args.via == "comment" else write_with_options
    try:
        report = write(args.dsn, args.resource, args.token, args.job, args.result)
    except psycopg.Error as e:
        if e.sqlstate != STALE_TOKEN:
            raise
        # Lock lost: a newer holder has been admitted. Stop; never retry. psycopg has no
        # class of its own for 55Z01, so it raises the one for SQLSTATE class 55:
        # psycopg.errors.OperationalError (a DatabaseError, as the DB-API says).
        name = type(e).__name__
        in_errors = getattr(psycopg.errors, name, None) is type(e)
        report = {
            "outcome": "lock_lost",
            "via": args.via,
            "sqlstate": e.sqlstate,
            "exception": ("psycopg.errors." if in_errors else type(e).__module__ + ".") + name,
            "message": e.diag.message_primary,
            "detail": e.diag.message_detail,
        }
        print(json.dumps(report), flush=True)
        return EXIT_LOCK_LOST
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

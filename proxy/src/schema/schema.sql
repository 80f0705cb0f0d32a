-- The `fencegate` schema, version 13: the authority for fencing decisions. `fencegate
-- migrate` runs this whole file in one transaction; it is idempotent and upgrades any
-- earlier version in place. The design, case by case, is in docs/fencing.md.
--
-- Locks per resource r (all transaction-level advisory locks, released at commit,
-- rollback, or ROLLBACK TO a savepoint taken before them):
--   K(r) = hashtextextended(r, 7405), one bigint key:
--     shared    by every transaction admitted with the token that equals H(r);
--     exclusive by a transaction that raises H(r), from before it reads H until it ends.
--   published token, taken by the slow path only (a raise, a wait to share, a refusal):
--     shared two-int4 keys (hashtext('fencegate:' || r), low 32 bits) and, for a token of
--     2^32 or more only, first (hashtext(r), high 32 bits), so that a raiser can read from
--     pg_locks which token such a session presented (preemption). The high key is taken
--     before the low one: whoever sees the low key sees the token whole. A holder of K(r)
--     shared that published nothing was admitted by a fast path and holds H, unless it is
--     inside a check on its way from a fast path to its slow path (schema 12; _preempt).
-- A check never locks or writes the fence row unless it raises H, and tells whether the
-- row version its snapshot shows is still the newest from the version's xmax: a raise
-- that committed after the snapshot was taken leaves its xid there.

SET LOCAL client_min_messages = warning;
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('fencegate.migrate'));

CREATE SCHEMA IF NOT EXISTS fencegate;

CREATE TABLE IF NOT EXISTS fencegate.meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE IF NOT EXISTS fencegate.fence (
    resource text PRIMARY KEY CHECK (octet_length(resource) BETWEEN 1 AND 256),
    token bigint NOT NULL CHECK (token >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON fencegate.fence FROM PUBLIC;
REVOKE ALL ON fencegate.meta FROM PUBLIC;
GRANT USAGE ON SCHEMA fencegate TO PUBLIC;

-- Version 4 locked fence rows FOR UPDATE under REPEATABLE READ: such a lock leaves a
-- committed xmax on the row's newest version, which version 5 would read as "raised after
-- this snapshot". Rewriting those rows once clears it (only when upgrading from 4 or older).
UPDATE fencegate.fence SET token = token
WHERE xmax <> '0'::xid
  AND COALESCE((SELECT m.value::int4 FROM fencegate.meta m WHERE m.key = 'schema_version'), 0) < 5;

DROP FUNCTION IF EXISTS fencegate._try_admit(text, bigint);
DROP FUNCTION IF EXISTS fencegate._admit(text, bigint);
DROP FUNCTION IF EXISTS fencegate._raised(text);
DROP FUNCTION IF EXISTS fencegate._slow(text, bigint, int4);
DROP FUNCTION IF EXISTS fencegate._settings_error(text, text, boolean);

-- The status of a transaction given as a 32-bit xid (a row's xmin or xmax), as
-- pg_xact_status reports it: 'committed', 'aborted', 'in progress', or NULL when too old.
-- The xid's epoch is taken from the transaction's snapshot; a row's xid is within 2^31 of it.
CREATE OR REPLACE FUNCTION fencegate._xact_status(p_xid xid)
RETURNS text LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT pg_xact_status((s.next + ((p_xid::text::int8 - (s.next & 4294967295)
                                      + 6442450944) % 4294967296 - 2147483648))::text::xid8)
    FROM (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS next) s
$fn$;

-- The fence row as this transaction's snapshot shows it, and what became of it since:
-- superseded when a transaction that committed after the snapshot replaced it (so H is now
-- higher than `token`), mine when this transaction wrote it.
CREATE OR REPLACE FUNCTION fencegate._read(p_resource text,
    OUT token bigint, OUT superseded boolean, OUT mine boolean)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT f.token,
           f.xmax <> '0'::xid AND fencegate._xact_status(f.xmax) IS NOT DISTINCT FROM 'committed',
           fencegate._xact_status(f.xmin) IS NOT DISTINCT FROM 'in progress'
    FROM (SELECT 1) one LEFT JOIN fencegate.fence f ON f.resource = p_resource
$fn$;

-- Takes K(p_resource) in the given mode, waiting at most p_grace_ms a round. After a round
-- in exclusive mode the sessions holding older tokens than p_token are ended (preemption,
-- _preempt). Once rounds that end nobody add up to twice the grace or 10 s,
-- whichever is longer, the wait fails with 55P03: whoever holds the lock is no older holder
-- this check may end (a newer or equal holder inside a long transaction, a superuser's
-- session, a holder whose token this transaction's snapshot cannot read, a prepared
-- transaction, or a session that took fencegate's key itself), and a check must not stall
-- behind it for ever.
-- p_grace_ms <= 0: wait as the session's own lock_timeout allows, and never preempt.
CREATE OR REPLACE FUNCTION fencegate._lock(p_resource text, p_token bigint,
                                           p_exclusive boolean, p_grace_ms int4)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    k int8 := hashtextextended(p_resource, '7405'::int8);
    saved text := current_setting('lock_timeout');
    stuck_since timestamptz;
    bound_ms int4 := GREATEST(2 * p_grace_ms, 10000);
BEGIN
    IF (p_exclusive AND pg_try_advisory_xact_lock(k))
       OR (NOT p_exclusive AND pg_try_advisory_xact_lock_shared(k)) THEN
        RETURN;
    END IF;
    IF p_grace_ms <= 0 THEN
        IF p_exclusive THEN PERFORM pg_advisory_xact_lock(k);
        ELSE PERFORM pg_advisory_xact_lock_shared(k); END IF;
        RETURN;
    END IF;
    LOOP
        BEGIN
            PERFORM set_config('lock_timeout', format('%sms', p_grace_ms), true);
            IF p_exclusive THEN PERFORM pg_advisory_xact_lock(k);
            ELSE PERFORM pg_advisory_xact_lock_shared(k); END IF;
            PERFORM set_config('lock_timeout', saved, true);
            RETURN;
        EXCEPTION WHEN lock_not_available THEN
            -- The subtransaction's rollback restored lock_timeout.
            IF p_exclusive AND fencegate._preempt(p_resource, p_token) > 0 THEN
                stuck_since := NULL;
            ELSE
                stuck_since := COALESCE(stuck_since, clock_timestamp() - format('%s ms', p_grace_ms)::interval);
            END IF;
            IF clock_timestamp() - stuck_since >= format('%s ms', bound_ms)::interval THEN
                RAISE EXCEPTION USING ERRCODE = '55P03',
                    MESSAGE = format('fencing check for resource %s could not lock the resource within %s ms',
                        quote_literal(p_resource), bound_ms),
                    DETAIL = 'The resource is held by a session this check may not end: a holder of the same or a newer token inside a long transaction, a superuser''s session, a holder whose token this transaction''s snapshot cannot read, a prepared transaction, or a session that took fencegate''s advisory lock itself.',
                    HINT = 'Keep transactions that present a new token short; never take fencegate''s advisory locks directly.';
            END IF;
        END;
    END LOOP;
END
$fn$;

-- Publishes this transaction's token for a resource as shared advisory locks (one for a
-- token below 2^32, two above), so that other sessions can read it from pg_locks at once.
-- Bounded like _lock: only a session holding one of these keys exclusively, which
-- fencegate never does, can make it wait.
CREATE OR REPLACE FUNCTION fencegate._publish(p_resource text, p_token bigint, p_grace_ms int4)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    hi int4 := hashtext(p_resource);
    lo int4 := hashtext('fencegate:' || p_resource);
    saved text := current_setting('lock_timeout');
BEGIN
    IF (p_token < 4294967296 OR pg_try_advisory_xact_lock_shared(hi, (p_token >> 32)::text::int4))
       AND pg_try_advisory_xact_lock_shared(lo, ((p_token & 4294967295) - 2147483648)::text::int4) THEN
        RETURN;
    END IF;
    BEGIN
        PERFORM set_config('lock_timeout', format('%sms', GREATEST(p_grace_ms, 1)), true);
        IF p_token >= 4294967296 THEN
            PERFORM pg_advisory_xact_lock_shared(hi, (p_token >> 32)::text::int4);
        END IF;
        PERFORM pg_advisory_xact_lock_shared(lo, ((p_token & 4294967295) - 2147483648)::text::int4);
        PERFORM set_config('lock_timeout', saved, true);
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION USING ERRCODE = '55P03',
            MESSAGE = format('fencing check for resource %s is blocked by a session that holds one of fencegate''s advisory locks',
                quote_literal(p_resource)),
            HINT = 'Never take fencegate''s advisory locks directly.';
    END;
END
$fn$;

-- The highest token session p_pid has published for p_resource in its open transaction
-- (an upper bound when it published several), or NULL. The low key says a token was
-- published; a high key is there only for a token of 2^32 or more (taken first).
CREATE OR REPLACE FUNCTION fencegate._published_token(p_pid int4, p_resource text)
RETURNS bigint LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    WITH mine AS (
        SELECT l.classid, l.objid::text::int8 AS objid
        FROM pg_catalog.pg_locks l
        WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.pid = p_pid AND l.granted
          AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                            WHERE d.datname = pg_catalog.current_database())
    )
    SELECT COALESCE((SELECT max(objid) FROM mine
                     WHERE classid = pg_catalog.hashtext(p_resource)::oid), '0'::pg_catalog.int8) * 4294967296
         + (SELECT max(CASE WHEN objid >= 2147483648 THEN objid - 4294967296 ELSE objid END)
            FROM mine
            WHERE classid = pg_catalog.hashtext('fencegate:' || p_resource)::oid) + 2147483648
$fn$;

-- Tells the session that ran the check that it ended session p_victim (preemption): one
-- NOTICE with SQLSTATE FG100, sent whatever the session's client_min_messages says. The
-- proxy counts it (fencegate_preemptions_total) and hides it, as it hides everything its
-- check returns; a client calling fencegate.check() itself sees it.
CREATE OR REPLACE FUNCTION fencegate._report_preempted(p_resource text, p_victim int4,
                                                       p_theirs bigint, p_token bigint)
RETURNS void LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET client_min_messages = notice AS $fn$
BEGIN
    RAISE NOTICE USING ERRCODE = 'FG100',
        MESSAGE = format('fencegate: ended session %s holding stale token %s for resource %s (newer token %s)',
            p_victim, p_theirs, quote_literal(p_resource), p_token);
END
$fn$;

-- The sessions (but this one) holding fencegate's advisory locks for p_resource in database
-- p_db, one row each, from one read of pg_locks: their transaction (NULL while one is
-- ending: its rows may then show two), whether they hold K(r) shared, and whether they
-- published a token for it (its value: _published_token).
CREATE OR REPLACE FUNCTION fencegate._lockers(p_resource text, p_db oid,
    OUT pid int4, OUT vxid text, OUT shares boolean, OUT published boolean)
RETURNS SETOF record LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT l.pid,
           CASE WHEN count(DISTINCT l.virtualtransaction) = 1 THEN min(l.virtualtransaction) END,
           bool_or(l.objsubid = 1 AND l.mode = 'ShareLock'),
           bool_or(l.objsubid = 2)
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.database = p_db
      AND l.pid <> pg_backend_pid()
      AND ((l.objsubid = 2 AND l.classid = hashtext('fencegate:' || p_resource)::oid)
           OR (l.objsubid = 1
               AND l.classid = ((hashtextextended(p_resource, '7405'::int8) >> 32) & 4294967295)::text::oid
               AND l.objid = (hashtextextended(p_resource, '7405'::int8) & 4294967295)::text::oid))
    GROUP BY l.pid
$fn$;

-- Ends the sessions that hold older tokens for p_resource than p_token (docs/fencing.md,
-- "Preemption", case by case). Two kinds hold one:
-- - a session that published tokens for the resource (a slow path did: a raise, a wait to
--   share, a refusal): ended when the highest it published, read again just before, is
--   older;
-- - a session that holds K(r) shared and published none: a fast path admitted it with the
--   token that equals H, and H cannot move while it holds K(r) (a raise needs K(r)
--   exclusive), so it holds the committed H. But a session inside a check between a fast
--   path's K(r) and its slow path's publication looks the same for a moment, and its
--   token may be newer. So such sessions are looked at twice, 20 ms apart, and counted
--   only if the same transaction shared K(r) and had published nothing both times; H is
--   read after the second look (this statement's snapshot: under REPEATABLE READ, when it
--   shows no row or a row a raise replaced since, H is unknown and nobody is ended), and
--   the statement that ends the session checks its transaction and lock once more.
-- Its LOG line goes to the server log only (client_min_messages: nothing reaches the client);
-- the caller learns of each ended session from _report_preempted.
CREATE OR REPLACE FUNCTION fencegate._preempt(p_resource text, p_token bigint)
RETURNS int4 LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp SET client_min_messages = error AS $fn$
DECLARE
    db oid := (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    pids int4[];
    vxids text[];
    unpublished boolean[];
    settled int4[];
    seen record;
    h bigint;
    theirs bigint;
    ended_now boolean;
    ended int4 := 0;
BEGIN
    SELECT array_agg(x.pid ORDER BY x.pid), array_agg(x.vxid ORDER BY x.pid),
           array_agg(x.shares AND NOT x.published ORDER BY x.pid)
    INTO pids, vxids, unpublished
    FROM fencegate._lockers(p_resource, db) x;
    IF pids IS NULL THEN
        RETURN 0;
    END IF;
    IF true = ANY (unpublished) THEN
        PERFORM pg_sleep('0.02'::float8);
        SELECT array_agg(x.pid) INTO settled
        FROM fencegate._lockers(p_resource, db) x
        JOIN unnest(pids, vxids, unpublished) f(pid, vxid, unpublished)
          ON f.pid = x.pid AND f.vxid = x.vxid
        WHERE f.unpublished AND x.shares AND NOT x.published;
        seen := fencegate._read(p_resource);
        h := CASE WHEN seen.superseded THEN NULL ELSE seen.token END;
    END IF;
    FOR i IN 1 .. array_length(pids, 1) LOOP
        IF unpublished[i] THEN
            CONTINUE WHEN settled IS NULL OR NOT pids[i] = ANY (settled);
            theirs := h;
        ELSE
            theirs := fencegate._published_token(pids[i], p_resource);
        END IF;
        CONTINUE WHEN theirs IS NULL OR theirs >= p_token;
        BEGIN
            IF unpublished[i] THEN
                ended_now := COALESCE((SELECT pg_terminate_backend(x.pid, int8 '0')
                                       FROM fencegate._lockers(p_resource, db) x
                                       WHERE x.pid = pids[i] AND x.vxid = vxids[i]
                                         AND x.shares AND NOT x.published), false);
            ELSE
                ended_now := pg_terminate_backend(pids[i], int8 '0');
            END IF;
        EXCEPTION WHEN insufficient_privilege THEN
            -- A superuser's session, which pg_signal_backend may not end: waited for
            -- (bounded, as in _lock). Any other refusal is the raise's error, as before.
            PERFORM pg_stat_clear_snapshot();
            IF NOT EXISTS (SELECT 1 FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
                           WHERE a.pid = pids[i] AND r.rolsuper) THEN
                RAISE;
            END IF;
            ended_now := false;
        END;
        IF ended_now THEN
            RAISE LOG 'fencegate: ended session % holding stale token % for resource % (newer token %)',
                pids[i], theirs, p_resource, p_token;
            PERFORM fencegate._report_preempted(p_resource, pids[i], theirs, p_token);
            ended := ended + 1;
        END IF;
    END LOOP;
    RETURN ended;
END
$fn$;

-- Raises 55Z01 for a stale token. p_current: the committed H read with the resource settled,
-- or NULL when only "newer than p_known" is known (a raise committed after this
-- transaction's snapshot). The COLUMN field carries H and the resource in hex for the proxy
-- (which learns its cache from it and strips the field): values fencegate produced, never
-- text a client wrote.
CREATE OR REPLACE FUNCTION fencegate._stale(p_resource text, p_token bigint,
                                            p_current bigint, p_mine boolean)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    hint text := 'The lock was taken over by a newer holder. Do not retry: stop working on this resource.';
BEGIN
    IF p_mine THEN
        RAISE EXCEPTION USING ERRCODE = '55Z01',
            MESSAGE = format('stale fencing token %s for resource %s: token %s was admitted earlier in this transaction',
                p_token, quote_literal(p_resource), p_current),
            DETAIL = format('presented_token=%s resource=%s', p_token, p_resource),
            HINT = hint;
    ELSIF p_current IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55Z01',
            MESSAGE = format('stale fencing token %s for resource %s: a newer token was admitted after this transaction took its snapshot',
                p_token, quote_literal(p_resource)),
            DETAIL = format('presented_token=%s resource=%s', p_token, p_resource),
            HINT = hint;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '55Z01',
        MESSAGE = format('stale fencing token %s for resource %s: the current token is %s',
            p_token, quote_literal(p_resource), p_current),
        DETAIL = format('presented_token=%s current_token=%s resource=%s',
            p_token, p_current, p_resource),
        HINT = hint,
        COLUMN = format('fencegate:%s:%s', p_current, encode(convert_to(p_resource, 'UTF8'), 'hex'));
END
$fn$;

-- The check's slow path: everything the fast path in check() does not settle (a busy
-- resource, a missing row, a raise, a stale or invalid token). See docs/fencing.md.
CREATE OR REPLACE FUNCTION fencegate._check_slow(p_resource text, p_token bigint, p_grace_ms int4)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    seen record;
    rounds int4 := 0;
    -- READ COMMITTED: every statement takes a new snapshot, so a raise that committed
    -- during the check is seen by the next read, and is never a serialization failure.
    per_statement boolean := current_setting('transaction_isolation') IN ('read committed', 'read uncommitted');
BEGIN
    IF p_resource IS NULL OR octet_length(p_resource) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION USING ERRCODE = '55Z02',
            MESSAGE = format('invalid fencing annotation: resource must be 1 to 256 bytes, got %s',
                COALESCE(octet_length(p_resource)::text || ' bytes', 'none'));
    END IF;
    IF p_token IS NULL OR p_token < 0 THEN
        RAISE EXCEPTION USING ERRCODE = '55Z02',
            MESSAGE = format('invalid fencing annotation: token must be a non-negative integer, got %s',
                COALESCE(p_token::text, 'none'));
    END IF;
    PERFORM fencegate._publish(p_resource, p_token, p_grace_ms);
    LOOP
        rounds := rounds + 1;
        IF rounds > 50 THEN
            RAISE EXCEPTION USING ERRCODE = '55P03',
                MESSAGE = format('fencing check for resource %s did not settle', quote_literal(p_resource));
        END IF;
        seen := fencegate._read(p_resource);
        IF seen.superseded AND per_statement THEN
            -- Replaced while this statement's snapshot was taken: the next read's snapshot
            -- (a new one per statement) shows the replacement.
            CONTINUE;
        END IF;
        IF seen.token > p_token OR (seen.superseded AND seen.token >= p_token) THEN
            -- Stale at once, without waiting for anyone: H only grows.
            PERFORM fencegate._stale(p_resource, p_token,
                CASE WHEN seen.superseded THEN NULL ELSE seen.token END, seen.mine);
        END IF;
        IF seen.superseded THEN
            RAISE EXCEPTION USING ERRCODE = '40001',
                MESSAGE = format('could not serialize access: the fencing token of resource %s was raised by a transaction that committed after this transaction took its snapshot',
                    quote_literal(p_resource)),
                HINT = 'Retry the transaction.';
        END IF;
        IF seen.token = p_token THEN
            -- The current token: share the resource with its other holders. Queues behind
            -- a raise that waits for the resource, which then decides.
            PERFORM fencegate._lock(p_resource, p_token, false, p_grace_ms);
            seen := fencegate._read(p_resource);
            IF seen.token = p_token AND NOT seen.superseded THEN
                RETURN p_token;
            END IF;
            CONTINUE;
        END IF;
        -- A newer token (or the first one): raise H, alone on the resource.
        IF current_setting('transaction_read_only') = 'on' THEN
            RAISE EXCEPTION USING ERRCODE = '25006',
                MESSAGE = format('cannot admit fencing token %s for resource %s in a read-only transaction: it is newer than the current token %s, and admitting it must record it',
                    p_token, quote_literal(p_resource), COALESCE(seen.token::text, '(none)')),
                HINT = 'Present a new token first in a read-write transaction; read-only transactions may then use it.';
        END IF;
        BEGIN
            PERFORM fencegate._lock(p_resource, p_token, true, p_grace_ms);
            seen := fencegate._read(p_resource);
            IF seen.token >= p_token OR seen.superseded THEN
                -- Settled meanwhile by another transaction: undo the exclusive lock (this
                -- block's subtransaction) and decide again.
                RAISE EXCEPTION USING ERRCODE = 'FG001';
            END IF;
            IF seen.token IS NULL THEN
                INSERT INTO fencegate.fence (resource, token) VALUES (p_resource, p_token);
            ELSE
                UPDATE fencegate.fence SET token = p_token, updated_at = now()
                WHERE resource = p_resource;
            END IF;
            RETURN p_token;
        EXCEPTION
            WHEN SQLSTATE 'FG001' THEN NULL;
            WHEN unique_violation THEN
                -- A row this snapshot cannot see: inserted after it was taken.
                IF per_statement THEN
                    CONTINUE;
                END IF;
                RAISE EXCEPTION USING ERRCODE = '40001',
                    MESSAGE = format('could not serialize access: the fencing token of resource %s was raised by a transaction that committed after this transaction took its snapshot',
                        quote_literal(p_resource)),
                    HINT = 'Retry the transaction.';
        END;
    END LOOP;
END
$fn$;

-- The committed high-water mark of a resource, or NULL.
CREATE OR REPLACE FUNCTION fencegate.high_water(p_resource text)
RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT token FROM fencegate.fence WHERE resource = p_resource
$fn$;

-- The fast paths' lock: K(r) shared, without waiting; true when granted. The fast paths
-- publish no token (schema 12): a holder of K(r) shared that published none was admitted
-- with the token that equals H (or is on its way to its slow path, which publishes), and a
-- raise reads H for it (_preempt; docs/fencing.md, "Preemption"). A SQL function of one expression, neither SECURITY DEFINER nor with a SET
-- clause, so PostgreSQL inlines it into the expression of each caller when it plans that
-- (once per session): the same instructions as the expression written out in both.
CREATE OR REPLACE FUNCTION fencegate._try_share(p_resource text)
RETURNS boolean LANGUAGE sql VOLATILE AS $fn$
    SELECT pg_catalog.pg_try_advisory_xact_lock_shared(
               pg_catalog.hashtextextended(p_resource, '7405'::pg_catalog.int8))
$fn$;

-- The check: admits (p_resource, p_token) in the caller's transaction or raises 55Z01.
-- p_grace_ms bounds the wait behind an older holder's open transaction before that
-- transaction is ended (0: wait as long as the session's own lock_timeout allows).
--
-- The fast path settles the common case, the token that equals H: when the row the
-- snapshot shows holds the token, take K(r) shared without waiting (publishing nothing,
-- see _try_share), then read the row again (after the lock); admitted when it still holds the token and no raise
-- replaced it. Nothing is written. Everything else goes to the slow path, which then holds
-- no lock of the fast path's: a raise taken from there never has to upgrade a shared lock
-- (two first touches of a new token would deadlock).
--
-- PL/pgSQL, because it keeps its statements' plans for the session: the same fast path as
-- one SQL function was planned again on every call and cost 3.7 times as much
-- (benches/README.md, "The check's own cost").
--
-- check, check_current and check_settings pin no search_path, unlike every other function
-- here: `SET search_path` on a function makes each call change the setting twice and look
-- the new path up, 25 of check_current's 149 kIr (benches/README.md). Instead every name in
-- them is qualified: functions and types with pg_catalog (pg_temp is searched for types),
-- operators as OPERATOR(pg_catalog.x), the collation as pg_catalog."C", and none of NULLIF,
-- IS DISTINCT FROM and BETWEEN, which look an operator up by its bare name. So the caller's
-- search_path never decides what runs as the schema's owner (fence_names.rs plants a
-- lookalike of each name first in the path and in pg_temp). What they call pins its own.
--
-- Once a table requires a token (`fencegate require`), an admission also leaves its proof in
-- the transaction for that table's trigger (require.sql); until then that costs nothing.
CREATE OR REPLACE FUNCTION fencegate.check(p_resource text, p_token bigint,
                                           p_grace_ms int4 DEFAULT 5000)
RETURNS bigint LANGUAGE plpgsql VOLATILE SECURITY DEFINER AS $fn$
DECLARE
    admitted pg_catalog.int8;
BEGIN
    -- COALESCE: without a row the comparison is NULL, and AND would go on to the locks.
    IF COALESCE((SELECT f0.token FROM fencegate.fence f0
                 WHERE f0.resource OPERATOR(pg_catalog.=) p_resource) OPERATOR(pg_catalog.=) p_token,
                false)
       AND fencegate._try_share(p_resource) THEN
        SELECT f1.token INTO admitted FROM fencegate.fence f1
        WHERE f1.resource OPERATOR(pg_catalog.=) p_resource AND f1.token OPERATOR(pg_catalog.=) p_token
          AND (f1.xmax OPERATOR(pg_catalog.=) '0'::pg_catalog.xid
               OR COALESCE(fencegate._xact_status(f1.xmax) OPERATOR(pg_catalog.<>) 'committed', true));
    END IF;
    IF admitted IS NULL THEN
        admitted := fencegate._check_slow(p_resource, p_token, p_grace_ms);
    END IF;
    IF fencegate._proving() THEN
        PERFORM fencegate._prove();
    END IF;
    RETURN admitted;
END
$fn$;

-- The proof for required tables (require.sql), left by an admission: only in a database
-- that has some (the callers ask `_proving()` first), and once per transaction (a value
-- already there, right or forged, is left for the trigger to judge).
CREATE OR REPLACE FUNCTION fencegate._prove()
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF COALESCE(current_setting('fencegate.admitted', true), '') = '' THEN
        -- fencegate._proof(key) written out, in one statement with the key's lookup.
        PERFORM set_config('fencegate.admitted',
            encode(sha256(convert_to(m.value || ':' || pg_backend_pid()::text || ':'
                                     || extract(epoch FROM now())::text, 'UTF8')), 'hex'), true)
        FROM fencegate.meta m WHERE m.key = 'proof_key';
    END IF;
END
$fn$;

-- The check for a token the proxy has seen admitted for this resource before (so H is at
-- least the token, unless the fence went back: a restore, or a failover that lost the
-- raise). The same decision as check(), one read cheaper: take K(r) shared without waiting
-- first (publishing nothing, see _try_share), then read the row once, after the lock,
-- with the same admission rule as check()'s second read. Anything else goes to the slow
-- path, which publishes the token and then holds this path's lock too: harmless for a stale token (no exclusive lock is needed to
-- refuse it), and for a raise (H below the token) the shared K(r) is upgraded, which only
-- two such raises of one token at once can turn into a deadlock (docs/fencing.md).
CREATE OR REPLACE PROCEDURE fencegate.admit_current(p_resource text, p_token bigint,
                                                    p_grace_ms int4 DEFAULT 5000)
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    -- FOUND: whether the read found the row (false also when the locks were not granted).
    IF fencegate._try_share(p_resource) THEN
        PERFORM FROM fencegate.fence f1
        WHERE f1.resource OPERATOR(pg_catalog.=) p_resource AND f1.token OPERATOR(pg_catalog.=) p_token
          AND (f1.xmax OPERATOR(pg_catalog.=) '0'::pg_catalog.xid
               OR COALESCE(fencegate._xact_status(f1.xmax) OPERATOR(pg_catalog.<>) 'committed', true));
    END IF;
    IF NOT FOUND THEN
        PERFORM fencegate._check_slow(p_resource, p_token, p_grace_ms);
    END IF;
    IF fencegate._proving() THEN
        PERFORM fencegate._prove();
    END IF;
END
$fn$;

-- The first settings check of a transaction whose client has just set both settings with
-- SET statements of its own that the proxy read, in Queries that began inside the
-- transaction block with nothing else sent in between (proxy/src/fence/settings_known.rs): the
-- proxy passes what they set, so no row has to tell it what was admitted. When the
-- settings in effect are those (the token in its canonical text), it admits them as
-- admit_current() does, written out here (a nested CALL would cost a frame of its own);
-- else the proxy misread a SET, and the statement is refused (XX000) rather than checked
-- under settings the proxy would then take for admitted (docs/fencing.md, "Settings the
-- client just set").
CREATE OR REPLACE PROCEDURE fencegate.admit_set(p_resource text, p_token bigint,
                                                p_grace_ms int4 DEFAULT 5000)
LANGUAGE plpgsql SECURITY DEFINER AS $fn$
BEGIN
    -- COALESCE: a setting never set in the session reads as NULL.
    IF NOT COALESCE(pg_catalog.current_setting('fencing.token', true) OPERATOR(pg_catalog.=) p_token::pg_catalog.text
                    AND pg_catalog.current_setting('fencing.resource', true) OPERATOR(pg_catalog.=) p_resource,
                    false) THEN
        RAISE EXCEPTION USING ERRCODE = 'XX000',
            MESSAGE = 'fencegate could not confirm the fencing settings this transaction set; the statement was not run',
            HINT = 'This is a defect of fencegate: please report the SET statements that preceded it.';
    END IF;
    IF fencegate._try_share(p_resource) THEN
        PERFORM FROM fencegate.fence f1
        WHERE f1.resource OPERATOR(pg_catalog.=) p_resource AND f1.token OPERATOR(pg_catalog.=) p_token
          AND (f1.xmax OPERATOR(pg_catalog.=) '0'::pg_catalog.xid
               OR COALESCE(fencegate._xact_status(f1.xmax) OPERATOR(pg_catalog.<>) 'committed', true));
    END IF;
    IF NOT FOUND THEN
        PERFORM fencegate._check_slow(p_resource, p_token, p_grace_ms);
    END IF;
    IF fencegate._proving() THEN
        PERFORM fencegate._prove();
    END IF;
END
$fn$;

-- check_current() as a function, returning the token it admitted: for direct callers and
-- for proxies before schema 11. The decision is admit_current()'s.
CREATE OR REPLACE FUNCTION fencegate.check_current(p_resource text, p_token bigint,
                                                   p_grace_ms int4 DEFAULT 5000)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    CALL fencegate.admit_current(p_resource, p_token, p_grace_ms);
    RETURN p_token;
END
$fn$;

-- Internal functions are for check() only, which runs as the schema's owner.
REVOKE ALL ON FUNCTION fencegate._xact_status(xid), fencegate._read(text),
    fencegate._lock(text, bigint, boolean, int4), fencegate._publish(text, bigint, int4),
    fencegate._published_token(int4, text), fencegate._preempt(text, bigint),
    fencegate._lockers(text, oid),
    fencegate._report_preempted(text, int4, bigint, bigint),
    fencegate._stale(text, bigint, bigint, boolean), fencegate._check_slow(text, bigint, int4),
    fencegate._prove(), fencegate._try_share(text)
    FROM PUBLIC;
DROP FUNCTION IF EXISTS fencegate._publish(text, bigint);
DROP FUNCTION IF EXISTS fencegate._try_share(text, bigint);

INSERT INTO fencegate.meta (key, value) VALUES ('schema_version', '13')
ON CONFLICT (key) DO UPDATE SET value = excluded.value;


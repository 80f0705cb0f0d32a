//! The `fencegate` schema: the authority for fencing decisions, installed in each upstream
//! database by `fencegate migrate`.
//!
//! # Locking design (why G1-G4 and G6 hold)
//! - `fencegate.fence(resource, token)` holds the high-water mark H of every resource.
//! - Holders of one resource are serialised by the resource's lock: an exclusive
//!   transaction-level advisory lock keyed by a 64-bit hash of the resource name
//!   (`pg_advisory_xact_lock(hashtextextended(resource, 7405))`, the single-bigint key
//!   space, apart from the two-int4 keys the published tokens use). Every path that reads
//!   or raises H for a check takes it first and keeps it until the transaction ends.
//! - `fencegate.check(r, t)` runs inside the client's own transaction, before the client's
//!   statement. With the lock held it reads H (under READ COMMITTED a fresh snapshot, which
//!   shows every earlier holder's commit, because a holder releases the lock only after its
//!   commit is visible), rejects `t < H` with 55Z01, and writes the row only when `t > H`
//!   (or inserts it, the first time). The update commits or rolls back with the client's
//!   write (G3: check and write are one transaction). A holder presenting the same token
//!   again writes nothing: no row version, no WAL.
//! - So a holder with token t waits for any open transaction that admitted a token on the
//!   same resource, then compares against the committed H. An older holder's transaction
//!   therefore either committed before a newer holder's first admitted statement, or fails
//!   (G2); once t' has committed, t < t' can never be admitted (G1), after restarts too,
//!   because H is an ordinary durable row; every proxy instance uses the same lock and row
//!   (G4); and the newer holder's first statement, a read included, takes the lock and
//!   raises H (G6).
//! - The fast path (inside `check`) takes the lock without waiting; when another
//!   transaction holds it, or the row does not exist yet, the check falls back to `_admit`,
//!   which waits for the lock inside the preemption loop below and upserts the row.
//! - Checking the same (resource, token) again in one transaction is correct and cheap: the
//!   locks are the transaction's already, and H reads as the token. The proxy sends a check
//!   once per transaction (`super::memo`), so PostgreSQL keeps no record of its own; it
//!   only notes in the transaction-local setting `fencegate.raised` which resources this
//!   transaction raised, to word a later rejection (ROLLBACK TO SAVEPOINT undoes the note
//!   together with the raise and the lock).
//! - Preemption: a check waits at most the grace period for the lock (`lock_timeout`
//!   inside the check). Each check first publishes its token as two shared
//!   transaction-level advisory locks keyed by the resource (visible in `pg_locks` at once,
//!   before commit); when the wait times out, the check terminates the sessions whose
//!   published tokens for that resource are all older than its own, and waits again.
//!   Holders of the same or a newer token are never ended.
//! - Under REPEATABLE READ or SERIALIZABLE the snapshot may predate the last holder's
//!   commit, so the check also locks the row (`FOR UPDATE`, or the upsert): a row updated
//!   after the snapshot fails with 40001 (serialization failure), still a rejection, never
//!   an admission of a stale token.

/// Version recorded in `fencegate.meta` by this build's migration.
pub const SCHEMA_VERSION: i32 = 4;

/// Idempotent installation script for [`SCHEMA_VERSION`]; run in one transaction.
pub const INSTALL: &str = r#"
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

-- Publishes this transaction's token for a resource as two shared advisory locks
-- (high and low 32 bits), so that other sessions can read it from pg_locks at once.
CREATE OR REPLACE FUNCTION fencegate._publish(p_resource text, p_token bigint)
RETURNS void LANGUAGE sql AS $fn$
    SELECT pg_catalog.pg_advisory_xact_lock_shared(
               pg_catalog.hashtext(p_resource), (p_token >> 32)::int4),
           pg_catalog.pg_advisory_xact_lock_shared(
               pg_catalog.hashtext('fencegate:' || p_resource),
               ((p_token & 4294967295) - 2147483648)::int4)
$fn$;

-- The highest token session p_pid has published for p_resource in its open transaction
-- (an upper bound when it published several), or NULL.
CREATE OR REPLACE FUNCTION fencegate._published_token(p_pid int4, p_resource text)
RETURNS bigint LANGUAGE sql STABLE AS $fn$
    WITH mine AS (
        SELECT l.classid, l.objid::int8 AS objid
        FROM pg_catalog.pg_locks l
        WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.pid = p_pid AND l.granted
          AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                            WHERE d.datname = pg_catalog.current_database())
    )
    SELECT (SELECT max(objid) FROM mine
            WHERE classid = pg_catalog.hashtext(p_resource)::oid) * 4294967296
         + (SELECT max(CASE WHEN objid >= 2147483648 THEN objid - 4294967296 ELSE objid END)
            FROM mine
            WHERE classid = pg_catalog.hashtext('fencegate:' || p_resource)::oid) + 2147483648
$fn$;

-- Notes in the transaction-local setting `fencegate.raised` that this transaction raised
-- H(p_resource), so that a later stale token in the same transaction is reported as such
-- (the row then holds this transaction's uncommitted value). Rolled back with a savepoint
-- together with the raise itself. Runs only when H rises, so its cost does not matter.
CREATE OR REPLACE FUNCTION fencegate._raised(p_resource text)
RETURNS void LANGUAGE sql AS $fn$
    SELECT pg_catalog.set_config('fencegate.raised',
        COALESCE(NULLIF(pg_catalog.current_setting('fencegate.raised', true), ''), ';')
        || pg_catalog.encode(pg_catalog.convert_to(p_resource, 'UTF8'), 'hex') || ';', true)
$fn$;

-- Raises H(p_resource) to p_token unless it is higher; true when admitted. Waits for the
-- resource's lock (bounded by lock_timeout), which it then holds until the end of the
-- caller's transaction, together with the row lock of the upsert.
CREATE OR REPLACE FUNCTION fencegate._admit(p_resource text, p_token bigint)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM fencegate._publish(p_resource, p_token);
    PERFORM pg_advisory_xact_lock(hashtextextended(p_resource, 7405));
    INSERT INTO fencegate.fence AS f (resource, token) VALUES (p_resource, p_token)
    ON CONFLICT (resource) DO UPDATE SET token = excluded.token, updated_at = now()
    WHERE f.token <= excluded.token;
    RETURN FOUND;
END
$fn$;

-- Version 3's fast path, folded into check() since version 4.
DROP FUNCTION IF EXISTS fencegate._try_admit(text, bigint);

-- Ends the sessions whose published tokens for p_resource are all older than p_token.
CREATE OR REPLACE FUNCTION fencegate._preempt(p_resource text, p_token bigint)
RETURNS int4 LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    victim int4;
    theirs bigint;
    ended int4 := 0;
BEGIN
    FOR victim IN
        SELECT DISTINCT l.pid FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.objsubid = 2 AND l.granted
          AND l.classid = hashtext(p_resource)::oid AND l.pid <> pg_backend_pid()
    LOOP
        theirs := fencegate._published_token(victim, p_resource);
        IF theirs IS NOT NULL AND theirs < p_token AND pg_terminate_backend(victim) THEN
            RAISE LOG 'fencegate: ended session % holding stale token % for resource % (newer token %)',
                victim, theirs, p_resource, p_token;
            ended := ended + 1;
        END IF;
    END LOOP;
    RETURN ended;
END
$fn$;

-- The committed high-water mark of a resource, or NULL.
CREATE OR REPLACE FUNCTION fencegate.high_water(p_resource text)
RETURNS bigint LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT token FROM fencegate.fence WHERE resource = p_resource
$fn$;

-- The check: admits (p_resource, p_token) in the caller's transaction or raises 55Z01.
-- p_grace_ms bounds the wait behind an older holder's open transaction before that
-- transaction is ended (0: wait as long as the session's own lock_timeout allows).
--
-- The fast path is one condition and one SELECT, so that PL/pgSQL sets up few expressions
-- per transaction: publish the token, take the resource's lock without waiting, read H in
-- a fresh snapshot, and return when the token equals H (a repeated check writes nothing)
-- or raise H when the token is higher. Everything else (a bad argument, a busy resource, a
-- missing row, a stale token) takes the slow path below.
CREATE OR REPLACE FUNCTION fencegate.check(p_resource text, p_token bigint,
                                           p_grace_ms int4 DEFAULT 5000)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    h bigint;
    admitted boolean;
    saved_timeout text;
BEGIN
    IF octet_length(p_resource) BETWEEN 1 AND 256 AND p_token >= 0
       AND pg_try_advisory_xact_lock_shared(hashtext(p_resource), (p_token >> 32)::int4)
       AND pg_try_advisory_xact_lock_shared(hashtext('fencegate:' || p_resource),
                                            ((p_token & 4294967295) - 2147483648)::int4)
       AND pg_try_advisory_xact_lock(hashtextextended(p_resource, 7405)) THEN
        IF current_setting('transaction_isolation') = 'read committed' THEN
            -- A new snapshot, taken with the lock held: every holder that could have
            -- raised H held this lock until its commit was visible.
            SELECT f.token INTO h FROM fencegate.fence f WHERE f.resource = p_resource;
        ELSE
            SELECT f.token INTO h FROM fencegate.fence f WHERE f.resource = p_resource
            FOR UPDATE;
        END IF;
        IF h = p_token THEN
            RETURN p_token;
        ELSIF h < p_token THEN
            UPDATE fencegate.fence SET token = p_token, updated_at = now()
            WHERE resource = p_resource;
            PERFORM fencegate._raised(p_resource);
            RETURN p_token;
        END IF;
    END IF;

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
    IF h IS NOT NULL THEN
        -- Read with the lock held, so H is settled: the token is stale.
        admitted := false;
    ELSIF p_grace_ms > 0 THEN
        saved_timeout := current_setting('lock_timeout');
        LOOP
            BEGIN
                PERFORM set_config('lock_timeout', p_grace_ms || 'ms', true);
                admitted := fencegate._admit(p_resource, p_token);
                PERFORM set_config('lock_timeout', saved_timeout, true);
                EXIT;
            EXCEPTION WHEN lock_not_available THEN
                PERFORM fencegate._preempt(p_resource, p_token);
            END;
        END LOOP;
    ELSE
        admitted := fencegate._admit(p_resource, p_token);
    END IF;
    IF admitted THEN
        PERFORM fencegate._raised(p_resource);
        RETURN p_token;
    END IF;
    h := fencegate.high_water(p_resource);
    IF strpos(COALESCE(current_setting('fencegate.raised', true), ''),
              ';' || encode(convert_to(p_resource, 'UTF8'), 'hex') || ';') > 0 THEN
        -- This transaction itself raised H: the row's value is not committed, so it is
        -- not reported as the current token.
        RAISE EXCEPTION USING ERRCODE = '55Z01',
            MESSAGE = format('stale fencing token %s for resource %s: token %s was admitted earlier in this transaction',
                p_token, quote_literal(p_resource), h),
            DETAIL = format('presented_token=%s resource=%s', p_token, p_resource),
            HINT = 'The lock was taken over by a newer holder. Do not retry: stop working on this resource.';
    END IF;
    RAISE EXCEPTION USING ERRCODE = '55Z01',
        MESSAGE = format('stale fencing token %s for resource %s: the current token is %s',
            p_token, quote_literal(p_resource), h),
        DETAIL = format('presented_token=%s current_token=%s resource=%s',
            p_token, h, p_resource),
        HINT = 'The lock was taken over by a newer holder. Do not retry: stop working on this resource.';
END
$fn$;

-- The check for tokens given as settings (SET [LOCAL] fencing.resource / fencing.token,
-- or startup options): PostgreSQL resolves SET LOCAL > SET > startup, RESET, DISCARD and
-- rollbacks itself. Returns NULL when no token is in effect. The proxy calls it before
-- every data statement of a session that may have settings, so it remembers the settings
-- it admitted in the transaction-local `fencegate.settings_admitted` and returns at once
-- while they are unchanged (ROLLBACK TO SAVEPOINT undoes the note with the admission).
CREATE OR REPLACE FUNCTION fencegate.check_settings(p_grace_ms int4 DEFAULT 5000,
                                                    p_required boolean DEFAULT false)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    r text := NULLIF(pg_catalog.current_setting('fencing.resource', true), '');
    t text := NULLIF(pg_catalog.current_setting('fencing.token', true), '');
    -- Unambiguous whatever the resource holds: its length first.
    settings text := pg_catalog.octet_length(r) || ':' || r || '=' || t;
    admitted bigint;
BEGIN
    IF pg_catalog.current_setting('fencegate.settings_admitted', true) = settings THEN
        RETURN t::bigint;
    END IF;
    IF t IS NULL THEN
        IF p_required THEN
            RAISE EXCEPTION USING ERRCODE = '55Z02',
                MESSAGE = 'invalid fencing annotation: this statement writes to a table that requires a fencing token, and none is set';
        END IF;
        RETURN NULL;
    END IF;
    IF r IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55Z02',
            MESSAGE = 'invalid fencing annotation: fencing.token is set but fencing.resource is not';
    END IF;
    IF t !~ '^[0-9]{1,19}$' OR (pg_catalog.length(t) = 19 AND t > '9223372036854775807') THEN
        RAISE EXCEPTION USING ERRCODE = '55Z02',
            MESSAGE = pg_catalog.format('invalid fencing annotation: fencing.token must be an integer from 0 to 9223372036854775807, got %s',
                pg_catalog.quote_literal(t));
    END IF;
    admitted := fencegate.check(r, t::bigint, p_grace_ms);
    PERFORM pg_catalog.set_config('fencegate.settings_admitted', settings, true);
    RETURN admitted;
END
$fn$;

-- The lease service: a lock with a time-to-live that issues fencing tokens. Time is the
-- database's clock. Tokens strictly increase per resource across all grants (never reused,
-- not after release, not after expiry) and are always above the resource's committed H,
-- so a token from this service is never born stale.
CREATE TABLE IF NOT EXISTS fencegate.lease (
    resource text PRIMARY KEY CHECK (octet_length(resource) BETWEEN 1 AND 256),
    holder text,
    token bigint NOT NULL CHECK (token >= 0),
    expires_at timestamptz NOT NULL
);
REVOKE ALL ON fencegate.lease FROM PUBLIC;

-- Grants the lease to p_holder for p_ttl when it is free or expired; returns the new token,
-- or NULL while another holder's lease is live.
CREATE OR REPLACE FUNCTION fencegate.acquire(p_resource text, p_holder text, p_ttl interval)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    granted bigint;
BEGIN
    IF p_resource IS NULL OR octet_length(p_resource) NOT BETWEEN 1 AND 256 THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'resource must be 1 to 256 bytes';
    END IF;
    IF p_holder IS NULL OR p_ttl IS NULL OR p_ttl <= interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'holder and a positive ttl are required';
    END IF;
    INSERT INTO fencegate.lease (resource, holder, token, expires_at)
    VALUES (p_resource, NULL, 0, '-infinity')
    ON CONFLICT (resource) DO NOTHING;
    UPDATE fencegate.lease l
    SET holder = p_holder,
        token = greatest(l.token,
                         COALESCE((SELECT f.token FROM fencegate.fence f
                                   WHERE f.resource = p_resource), 0)) + 1,
        expires_at = clock_timestamp() + p_ttl
    WHERE l.resource = p_resource AND (l.holder IS NULL OR l.expires_at <= clock_timestamp())
    RETURNING l.token INTO granted;
    RETURN granted;
END
$fn$;

-- Extends a live lease; false when it expired or belongs to someone else (the lease is lost).
CREATE OR REPLACE FUNCTION fencegate.renew(p_resource text, p_holder text, p_token bigint,
                                           p_ttl interval)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH renewed AS (
        UPDATE fencegate.lease SET expires_at = clock_timestamp() + p_ttl
        WHERE resource = p_resource AND holder = p_holder AND token = p_token
          AND expires_at > clock_timestamp() AND p_ttl > interval '0'
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM renewed)
$fn$;

-- Gives a lease back early; false when it was no longer held by this holder and token.
CREATE OR REPLACE FUNCTION fencegate.release(p_resource text, p_holder text, p_token bigint)
RETURNS boolean LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH released AS (
        UPDATE fencegate.lease SET holder = NULL, expires_at = clock_timestamp()
        WHERE resource = p_resource AND holder = p_holder AND token = p_token
        RETURNING 1
    )
    SELECT EXISTS (SELECT 1 FROM released)
$fn$;

-- The current holder of a resource's lease (no row when free or expired).
CREATE OR REPLACE FUNCTION fencegate.lease_holder(p_resource text)
RETURNS TABLE (holder text, token bigint, expires_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT l.holder, l.token, l.expires_at FROM fencegate.lease l
    WHERE l.resource = p_resource AND l.holder IS NOT NULL AND l.expires_at > clock_timestamp()
$fn$;

INSERT INTO fencegate.meta (key, value) VALUES ('schema_version', '4')
ON CONFLICT (key) DO UPDATE SET value = excluded.value;
"#;

/// SQLSTATEs a check raises when the schema is missing (no schema / no function).
pub const MISSING_SCHEMA_STATES: &[&[u8]] = &[b"3F000", b"42883"];

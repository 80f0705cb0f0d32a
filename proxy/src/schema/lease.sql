-- Run by `fencegate migrate` after schema.sql, in the same transaction: the lease service.

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
    VALUES (p_resource, NULL, int8 '0', '-infinity')
    ON CONFLICT (resource) DO NOTHING;
    IF (SELECT greatest(l.token, COALESCE((SELECT f.token FROM fencegate.fence f
                                           WHERE f.resource = p_resource), int8 '0'))
        FROM fencegate.lease l WHERE l.resource = p_resource) = 9223372036854775807 THEN
        RAISE EXCEPTION USING ERRCODE = '55Z04',
            MESSAGE = format('the fencing tokens of resource %s are used up: its token is 9223372036854775807',
                quote_literal(p_resource)),
            HINT = 'An operator can retire the resource (use a new name), or, with no holder left, delete its rows from fencegate.fence and fencegate.lease.';
    END IF;
    UPDATE fencegate.lease l
    SET holder = p_holder,
        token = greatest(l.token,
                         COALESCE((SELECT f.token FROM fencegate.fence f
                                   WHERE f.resource = p_resource), int8 '0')) + 1,
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

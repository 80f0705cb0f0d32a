-- Run by `fencegate migrate` after require.sql: the operator's view of the fence, read by
-- `fencegate fences` and by anyone granted pg_monitor. Relations are read with the view
-- owner's rights (the fence and lease tables); pg_stat_activity shows each reader what it
-- shows them directly (another role's client address and state only to pg_read_all_stats
-- members), so no reader learns more through these views than it may.

-- Per resource: its high-water mark, when it last rose, and its lease, if the lease
-- service is used (a lease that expired shows no holder; a resource leased but never
-- fenced has no high-water mark yet).
CREATE OR REPLACE VIEW fencegate.fences AS
SELECT COALESCE(f.resource, l.resource) AS resource,
       f.token AS high_water,
       f.updated_at AS raised_at,
       CASE WHEN l.expires_at > pg_catalog.clock_timestamp() THEN l.holder END AS lease_holder,
       CASE WHEN l.expires_at > pg_catalog.clock_timestamp() THEN l.expires_at END AS lease_expires_at
FROM fencegate.fence f
FULL JOIN fencegate.lease l ON l.resource = f.resource;

-- The sessions holding a resource's fence lock K(r) in their open transaction: `holding`
-- (shared, admitted with the token that equals H) or `raising` (exclusive, raising H), with
-- their token, their transaction's age, and who and where they are. The token is the
-- highest the session published for the resource; a holder that published none was
-- admitted by a fast path, which publishes nothing, and holds H (docs/fencing.md).
CREATE OR REPLACE VIEW fencegate.holders AS
SELECT f.resource,
       k.pid,
       a.usename AS user_name,
       a.client_addr,
       a.state,
       CASE k.mode WHEN 'ExclusiveLock' THEN 'raising' ELSE 'holding' END AS role,
       COALESCE(fencegate._published_token(k.pid, f.resource),
                CASE WHEN k.mode = 'ShareLock' THEN f.token END) AS token,
       pg_catalog.clock_timestamp() - a.xact_start AS xact_age
FROM fencegate.fence f
JOIN pg_catalog.pg_locks k
  ON k.locktype = 'advisory' AND k.objsubid = 1 AND k.granted
 AND k.database = (SELECT d.oid FROM pg_catalog.pg_database d
                   WHERE d.datname = pg_catalog.current_database())
 AND k.classid = ((pg_catalog.hashtextextended(f.resource, 7405) >> 32) & 4294967295)::text::oid
 AND k.objid = (pg_catalog.hashtextextended(f.resource, 7405) & 4294967295)::text::oid
LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = k.pid;

REVOKE ALL ON fencegate.fences, fencegate.holders FROM PUBLIC;
GRANT SELECT ON fencegate.fences, fencegate.holders TO pg_monitor;
-- It reads pg_locks only, which every role may read.
GRANT EXECUTE ON FUNCTION fencegate._published_token(int4, text) TO pg_monitor;

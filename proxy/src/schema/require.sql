-- Tables that require a fencing token (`fencegate require`), part of the `fencegate` schema:
-- run by `fencegate migrate` after schema.sql, in the same transaction. check() leaves the
-- proof of an admission in the transaction; the trigger of a required table looks for it.
-- The argument, case by case, is in docs/fencing.md ("Tables that require a token").

-- The proof that a check admitted a token in the running transaction: a digest of the
-- schema's secret proof key (a row of fencegate.meta no client can read), the backend and
-- the transaction's start time. check() leaves it in the transaction-local setting
-- fencegate.admitted; a required table's trigger computes it again and compares. A client
-- can set that setting to anything, but without the key it cannot compute the value for its
-- own transaction, and a value copied from another transaction names another start time
-- or backend. It follows the transaction's fate as the check's locks do: a rollback to a
-- savepoint taken before the check removes both.
CREATE OR REPLACE FUNCTION fencegate._proof(p_key text)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    RETURN encode(sha256(convert_to(p_key || ':' || pg_backend_pid()::text || ':'
                                    || extract(epoch FROM now())::text, 'UTF8')), 'hex');
END
$fn$;

-- True when a check admitted a token in the running transaction (its proof is there).
CREATE OR REPLACE FUNCTION fencegate._admitted()
RETURNS boolean LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    proof text := current_setting('fencegate.admitted', true);
    proof_key text;
BEGIN
    IF proof IS NULL OR proof = '' THEN
        RETURN false;
    END IF;
    SELECT m.value INTO proof_key FROM fencegate.meta m WHERE m.key = 'proof_key';
    RETURN proof_key IS NOT NULL AND proof = fencegate._proof(proof_key);
END
$fn$;

-- The trigger `fencegate require` puts on a table (BEFORE INSERT, UPDATE, DELETE or TRUNCATE,
-- once per statement): refuses the write unless a check admitted a current token earlier in
-- the same transaction, whatever path the write took (the proxy, a direct connection, a
-- function, a view, a rule, COPY, MERGE). The check's locks, held to the end of the
-- transaction, keep that token current until the write commits. Maintenance without a token:
-- a member of the role fencegate_maintenance (as current_user, so SET ROLE works; membership
-- is explicit, a superuser is no member by being one), or a superuser's
-- `SET session_replication_role = replica`, under which PostgreSQL fires no such trigger.
-- Invoker's rights, so that current_user is the role that writes.
CREATE OR REPLACE FUNCTION fencegate.require_token()
RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF fencegate._admitted() OR EXISTS (
        WITH RECURSIVE members(oid) AS (
            SELECT r.oid FROM pg_roles r WHERE r.rolname = 'fencegate_maintenance'
            UNION
            SELECT am.member FROM pg_auth_members am JOIN members m ON am.roleid = m.oid)
        SELECT 1 FROM members m JOIN pg_roles r ON r.oid = m.oid
        WHERE r.rolname = current_user) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION USING ERRCODE = '55Z02',
        MESSAGE = format('invalid fencing annotation: table %s requires a fencing token, and no fencing check admitted one in this transaction',
            quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME)),
        HINT = 'Attach a current fencing token to the statement, or call fencegate.check(resource, token) earlier in the transaction. Maintenance: write as a member of fencegate_maintenance.';
END
$fn$;

-- Whether check() leaves proofs: true while some table of this database requires a token.
-- An IMMUTABLE SQL constant, so that check() pays nothing for it (the planner folds it into
-- check()'s cached plan, and replacing the function invalidates that plan).
-- fencegate._refresh_proving() sets it from the triggers there are; `fencegate require`
-- calls it, and so does every migration (below), which keeps it as it was.
CREATE OR REPLACE FUNCTION fencegate._refresh_proving()
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    proving boolean := EXISTS (SELECT 1 FROM pg_trigger t
                               WHERE t.tgfoid = 'fencegate.require_token()'::regprocedure);
BEGIN
    EXECUTE format('CREATE OR REPLACE FUNCTION fencegate._proving() RETURNS boolean '
                   'LANGUAGE sql IMMUTABLE PARALLEL SAFE AS %L',
                   CASE WHEN proving THEN 'SELECT true' ELSE 'SELECT false' END);
    RETURN proving;
END
$fn$;
SELECT fencegate._refresh_proving();

-- The secret of fencegate._proof: random, made once per database, never shown to clients.
INSERT INTO fencegate.meta (key, value)
VALUES ('proof_key', gen_random_uuid()::text || gen_random_uuid()::text)
ON CONFLICT (key) DO NOTHING;

REVOKE ALL ON FUNCTION fencegate._proof(text), fencegate._refresh_proving() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION fencegate._admitted(), fencegate.require_token() TO PUBLIC;

-- Run by `fencegate migrate` last, after schema.sql and require.sql, in the same transaction:
-- the roles, and the ownership of everything in the schema.

-- Ownership: everything of the schema belongs to `fencegate_owner`, a role that cannot log
-- in and is no superuser. The SECURITY DEFINER functions run as it, so they can read and
-- write the schema's tables and, as a member of pg_signal_backend, end the sessions of
-- older holders (preemption) -- but never a superuser's session, and nothing else.
-- Roles are shared by the cluster's databases, whose migrations may run at once (the
-- migration lock above is per database): a concurrent creation or grant is no error.
-- `fencegate_maintenance` (NOLOGIN, no rights of its own): its members may write tables that
-- require a token without one (require.sql).
DO $own$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['fencegate_owner', 'fencegate_maintenance'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END;
        END IF;
    END LOOP;
    IF NOT pg_catalog.pg_has_role('fencegate_owner', 'pg_signal_backend', 'MEMBER') THEN
        BEGIN
            GRANT pg_signal_backend TO fencegate_owner;
        EXCEPTION WHEN unique_violation OR duplicate_object THEN NULL;
        END;
    END IF;
END$own$;
ALTER SCHEMA fencegate OWNER TO fencegate_owner;
ALTER TABLE fencegate.meta OWNER TO fencegate_owner;
ALTER TABLE fencegate.fence OWNER TO fencegate_owner;
ALTER TABLE fencegate.lease OWNER TO fencegate_owner;
ALTER VIEW fencegate.fences OWNER TO fencegate_owner;
ALTER VIEW fencegate.holders OWNER TO fencegate_owner;
DO $own$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'fencegate'::regnamespace LOOP
        EXECUTE pg_catalog.format('ALTER ROUTINE %s OWNER TO fencegate_owner', f);
    END LOOP;
END$own$;

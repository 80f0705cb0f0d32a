-- Run by `fencegate migrate` last, after schema.sql and require.sql, in the same transaction.

-- Ownership: everything of the schema belongs to `fencegate_owner`, a role that cannot log
-- in and is no superuser. The SECURITY DEFINER functions run as it, so they can read and
-- write the schema's tables and, as a member of pg_signal_backend, end the sessions of
-- older holders (preemption) -- but never a superuser's session, and nothing else.
-- Roles are shared by the cluster's databases, whose migrations may run at once (the
-- migration lock above is per database): a concurrent creation or grant is no error.
DO $own$BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'fencegate_owner') THEN
        BEGIN
            CREATE ROLE fencegate_owner NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END;
    END IF;
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
DO $own$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'fencegate'::regnamespace LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO fencegate_owner', f);
    END LOOP;
END$own$;

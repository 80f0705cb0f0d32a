-- Run by `fencegate migrate` after schema.sql, in the same transaction: the checks for
-- tokens given as settings (`SET [LOCAL] fencing.resource / fencing.token`, startup
-- options), which PostgreSQL resolves itself, and the comparisons the proxy sends before the
-- later statements of a transaction whose settings a check admitted (docs/fencing.md,
-- "Where the check runs"). None is SECURITY DEFINER: they run with the caller's rights and
-- call the checks of schema.sql. Those the proxy sends name everything with its schema
-- (docs/security.md); `_settings_invalid`, reached only for wrong settings, pins its path.

-- Raises 55Z02 for fencing settings that are wrong (called only when they are).
CREATE OR REPLACE FUNCTION fencegate._settings_invalid(p_resource text, p_token text,
                                                       p_required boolean)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    IF p_token IS NULL AND p_required THEN
        RAISE EXCEPTION USING ERRCODE = '55Z02',
            MESSAGE = 'invalid fencing annotation: this statement writes to a table that requires a fencing token, and none is set';
    END IF;
    IF p_resource IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '55Z02',
            MESSAGE = 'invalid fencing annotation: fencing.token is set but fencing.resource is not';
    END IF;
    RAISE EXCEPTION USING ERRCODE = '55Z02',
        MESSAGE = format('invalid fencing annotation: fencing.token must be an integer from 0 to 9223372036854775807, got %s',
            quote_literal(p_token));
END
$fn$;

-- The check for tokens given as settings (SET [LOCAL] fencing.resource / fencing.token,
-- or startup options): PostgreSQL resolves SET LOCAL > SET > startup, RESET, DISCARD and
-- rollbacks itself. Returns NULL when no token is in effect. It keeps no memo of its own:
-- a repeated check takes the fast path, and nothing a client can SET stands for a check.
CREATE OR REPLACE FUNCTION fencegate.check_settings(p_grace_ms int4 DEFAULT 5000,
                                                    p_required boolean DEFAULT false)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    r pg_catalog.text := pg_catalog.current_setting('fencing.resource', true);
    t pg_catalog.text := pg_catalog.current_setting('fencing.token', true);
BEGIN
    IF t IS NULL OR t OPERATOR(pg_catalog.=) '' THEN
        IF NOT p_required THEN
            RETURN NULL;
        END IF;
        t := NULL;
    END IF;
    IF r OPERATOR(pg_catalog.<>) '' AND t OPERATOR(pg_catalog.~) '^[0-9]{1,19}$'
       AND (pg_catalog.length(t) OPERATOR(pg_catalog.<) 19
            OR t COLLATE pg_catalog."C" OPERATOR(pg_catalog.<=) '9223372036854775807') THEN
        RETURN fencegate.check(r, t::pg_catalog.int8, p_grace_ms);
    END IF;
    RETURN fencegate._settings_invalid(CASE WHEN r OPERATOR(pg_catalog.<>) '' THEN r END, t,
                                       p_required);
END
$fn$;

-- What the proxy sends before each later statement of a transaction whose first settings
-- check admitted (p_token, p_resource): NULL at once while the settings in effect are still
-- those, else check_settings() with the settings in effect now (server-side code, such as a
-- function calling set_config, may have changed them without the proxy seeing it). A
-- function, so that PostgreSQL keeps its plans for the session: the same comparison as a
-- statement of its own was parsed and planned before every statement, at twice the cost
-- (benches/README.md, "The check's own cost"). Not SECURITY DEFINER, so without a pinned
-- search_path: every name in it is schema-qualified, and it runs with the caller's rights.
CREATE OR REPLACE FUNCTION fencegate.settings_same(p_token text, p_resource text,
                                                   p_grace_ms int4, p_required boolean)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
    IF pg_catalog.current_setting('fencing.token', true) OPERATOR(pg_catalog.=) p_token
       AND pg_catalog.current_setting('fencing.resource', true) OPERATOR(pg_catalog.=) p_resource THEN
        RETURN NULL;
    END IF;
    RETURN fencegate.check_settings(p_grace_ms, p_required);
END
$fn$;

-- settings_same() as a procedure, which is what the proxy sends (schema 11): a CALL is
-- neither planned nor executed as a query, 20 kIr less than the SELECT (benches/README.md).
CREATE OR REPLACE PROCEDURE fencegate.settings_unchanged(p_token text, p_resource text,
                                                       p_grace_ms int4, p_required boolean)
LANGUAGE plpgsql AS $fn$
BEGIN
    IF pg_catalog.current_setting('fencing.token', true) OPERATOR(pg_catalog.=) p_token
       AND pg_catalog.current_setting('fencing.resource', true) OPERATOR(pg_catalog.=) p_resource THEN
        RETURN;
    END IF;
    PERFORM fencegate.check_settings(p_grace_ms, p_required);
END
$fn$;

-- settings_unchanged() for the common case, the default grace (5000 ms) and no token
-- required (schema 13): each argument of a CALL costs PostgreSQL 3 to 5 thousand
-- instructions, and the comparison runs before every later statement of the transaction.
CREATE OR REPLACE PROCEDURE fencegate.settings_unchanged(p_token text, p_resource text)
LANGUAGE plpgsql AS $fn$
BEGIN
    IF pg_catalog.current_setting('fencing.token', true) OPERATOR(pg_catalog.=) p_token
       AND pg_catalog.current_setting('fencing.resource', true) OPERATOR(pg_catalog.=) p_resource THEN
        RETURN;
    END IF;
    PERFORM fencegate.check_settings(5000, false);
END
$fn$;

-- The first settings check of a transaction in a session that believes the settings are
-- (p_token, p_resource), because a check of an earlier transaction admitted them: when they
-- are, admit_current() decides for them (one read of the fence row), else check_settings()
-- decides for the settings in effect, as without a belief. `matched` tells the proxy which
-- ran, so that it keeps (p_token, p_resource) as this transaction's memo only when they
-- were admitted here. The token is compared in its canonical text (no sign, no leading
-- zero): anything else reads as no match and goes to check_settings(). A CALL with an
-- INOUT argument returns one row; 178 kIr against 266 for the first check without a
-- belief, which also returns what it read (benches/README.md).
CREATE OR REPLACE PROCEDURE fencegate.admit_settings(p_token bigint, p_resource text,
                                                   p_grace_ms int4, p_required boolean,
                                                   INOUT matched boolean DEFAULT NULL)
LANGUAGE plpgsql AS $fn$
BEGIN
    IF pg_catalog.current_setting('fencing.token', true) OPERATOR(pg_catalog.=) p_token::pg_catalog.text
       AND pg_catalog.current_setting('fencing.resource', true) OPERATOR(pg_catalog.=) p_resource THEN
        CALL fencegate.admit_current(p_resource, p_token, p_grace_ms);
        matched := true;
    ELSE
        PERFORM fencegate.check_settings(p_grace_ms, p_required);
        matched := false;
    END IF;
END
$fn$;

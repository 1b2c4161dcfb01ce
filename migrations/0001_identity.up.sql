-- Identity primitives the schema relies on: uuid_generate_v4(), the auth schema with
-- auth.users and auth.uid(), and the roles anon and authenticated.
--
-- Each is created only where absent, so this runs unchanged on a Supabase database
-- (which has them all) and on a bare PostgreSQL. Whatever this migration creates is
-- marked with a comment starting 'sitebuilder-realtime:' and the down migration
-- removes exactly the marked objects, never ones that existed before.

-- Grants cannot carry a comment: the ones this migration makes on objects it did not
-- create (a Supabase auth schema, the login role) are listed here for the down
-- migration to revoke, so a rollback leaves no privilege behind.
CREATE TABLE public.sitebuilder_realtime_grants (
    revoke_statement text PRIMARY KEY
);

DO $$
BEGIN
    IF to_regprocedure('uuid_generate_v4()') IS NULL THEN
        IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'uuid-ossp') THEN
            CREATE EXTENSION "uuid-ossp" SCHEMA public;
            COMMENT ON EXTENSION "uuid-ossp" IS
                'sitebuilder-realtime: created by migration 0001 for uuid_generate_v4()';
        ELSE
            -- The embedded server ships no uuid-ossp; gen_random_uuid() is built in
            -- since PostgreSQL 13 and produces the same version-4 UUIDs.
            CREATE FUNCTION public.uuid_generate_v4() RETURNS uuid
                LANGUAGE sql VOLATILE PARALLEL SAFE
                AS 'SELECT gen_random_uuid()';
            COMMENT ON FUNCTION public.uuid_generate_v4() IS
                'sitebuilder-realtime: created by migration 0001, stand-in for uuid-ossp over gen_random_uuid()';
        END IF;
    END IF;
END
$$;

DO $$
DECLARE
    may_set_role boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'anon') THEN
        CREATE ROLE anon NOLOGIN NOINHERIT;
        COMMENT ON ROLE anon IS 'sitebuilder-realtime: created by migration 0001';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
        CREATE ROLE authenticated NOLOGIN NOINHERIT;
        COMMENT ON ROLE authenticated IS 'sitebuilder-realtime: created by migration 0001';
    END IF;
    -- The gateway acts as a user with SET LOCAL ROLE authenticated: its login role
    -- must be a member that may SET it (a superuser already may). It can grant that to
    -- itself where it created the role, or holds it WITH ADMIN OPTION (hosted
    -- Supabase), or with CREATEROLE before PostgreSQL 16; elsewhere an administrator
    -- must. Since PostgreSQL 16 membership has options: the creator of a role holds it
    -- with ADMIN only, which does not allow SET ROLE.
    may_set_role := pg_has_role(current_user, 'authenticated',
        CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'SET' ELSE 'MEMBER' END);
    IF NOT may_set_role THEN
        BEGIN
            EXECUTE format('GRANT authenticated TO %I', current_user);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'role % must be a member of role authenticated to act as a user',
                current_user
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('As a superuser, or a role holding authenticated WITH ADMIN '
                                    'OPTION, run: GRANT authenticated TO %I', current_user);
        END;
        INSERT INTO public.sitebuilder_realtime_grants (revoke_statement)
            VALUES (format('REVOKE authenticated FROM %I', current_user));
    END IF;
END
$$;

DO $$
BEGIN
    IF to_regnamespace('auth') IS NULL THEN
        CREATE SCHEMA auth;
        COMMENT ON SCHEMA auth IS 'sitebuilder-realtime: created by migration 0001';
    END IF;

    IF to_regclass('auth.users') IS NULL THEN
        CREATE TABLE auth.users (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            email text UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE auth.users IS 'sitebuilder-realtime: created by migration 0001';
    END IF;

    IF to_regprocedure('auth.uid()') IS NULL THEN
        -- The PostgREST / Supabase convention: the acting user is the `sub` claim of
        -- the JSON in request.jwt.claims (or the older request.jwt.claim.sub).
        CREATE FUNCTION auth.uid() RETURNS uuid
            LANGUAGE sql STABLE
            AS $f$
                SELECT coalesce(
                    nullif(current_setting('request.jwt.claim.sub', true), ''),
                    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
                )::uuid
            $f$;
        COMMENT ON FUNCTION auth.uid() IS 'sitebuilder-realtime: created by migration 0001';
    END IF;

    IF NOT has_schema_privilege('authenticated', 'auth', 'USAGE') THEN
        GRANT USAGE ON SCHEMA auth TO authenticated;
        INSERT INTO public.sitebuilder_realtime_grants (revoke_statement)
            VALUES ('REVOKE USAGE ON SCHEMA auth FROM authenticated');
    END IF;
    IF NOT has_schema_privilege('anon', 'auth', 'USAGE') THEN
        GRANT USAGE ON SCHEMA auth TO anon;
        INSERT INTO public.sitebuilder_realtime_grants (revoke_statement)
            VALUES ('REVOKE USAGE ON SCHEMA auth FROM anon');
    END IF;
END
$$;

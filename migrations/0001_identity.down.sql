-- Removes only what 0001 up created: objects whose comment carries its marker, and
-- the grants it listed in public.sitebuilder_realtime_grants.

DO $$
DECLARE
    revoke_statement text;
BEGIN
    FOR revoke_statement IN SELECT g.revoke_statement FROM public.sitebuilder_realtime_grants g LOOP
        EXECUTE revoke_statement;
    END LOOP;
END
$$;

DROP TABLE public.sitebuilder_realtime_grants;

DO $$
DECLARE
    ours constant text := 'sitebuilder-realtime:%';
BEGIN
    IF to_regprocedure('auth.uid()') IS NOT NULL
       AND obj_description(to_regprocedure('auth.uid()'), 'pg_proc') LIKE ours THEN
        DROP FUNCTION auth.uid();
    END IF;

    IF to_regclass('auth.users') IS NOT NULL
       AND obj_description(to_regclass('auth.users'), 'pg_class') LIKE ours THEN
        DROP TABLE auth.users;
    END IF;

    IF to_regnamespace('auth') IS NOT NULL
       AND obj_description(to_regnamespace('auth'), 'pg_namespace') LIKE ours THEN
        DROP SCHEMA auth;
    END IF;

    IF to_regprocedure('public.uuid_generate_v4()') IS NOT NULL
       AND obj_description(to_regprocedure('public.uuid_generate_v4()'), 'pg_proc') LIKE ours THEN
        DROP FUNCTION public.uuid_generate_v4();
    END IF;

    IF EXISTS (
        SELECT 1 FROM pg_extension
        WHERE extname = 'uuid-ossp' AND obj_description(oid, 'pg_extension') LIKE ours
    ) THEN
        DROP EXTENSION "uuid-ossp";
    END IF;
END
$$;

-- Roles belong to the whole cluster: another database migrated by this project may
-- still hold privileges granted to them, in which case they stay.
DO $$
DECLARE
    ours constant text := 'sitebuilder-realtime:%';
    role_name text;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['authenticated', 'anon'] LOOP
        IF EXISTS (
            SELECT 1 FROM pg_roles
            WHERE rolname = role_name AND shobj_description(oid, 'pg_authid') LIKE ours
        ) THEN
            BEGIN
                EXECUTE format('DROP ROLE %I', role_name);
            EXCEPTION WHEN dependent_objects_still_exist THEN
                RAISE NOTICE 'role % kept: other databases still use it', role_name;
            END;
        END IF;
    END LOOP;
END
$$;

-- A display name per user: what presence, `project.members` and version history show
-- beside a user id. Supabase keeps what a user says of themselves in
-- auth.users.raw_user_meta_data (`full_name`, or `name` from OAuth providers); failing
-- that, the part of their email before the `@`.
--
-- Only the gateway calls it (EXECUTE is revoked from everyone else): it shows a name
-- only beside what the caller could already see (a member of a project they can read,
-- the author of a version they can read, someone in a project's presence), so no query
-- of a signed-in user can look names, or email prefixes, up by id.
--
-- Where auth.users is the minimal table migration 0001 made (no Supabase auth server),
-- the metadata column is added, so names can be set the same way.

DO $$
BEGIN
    IF obj_description('auth.users'::regclass, 'pg_class')
            = 'sitebuilder-realtime: created by migration 0001'
       AND NOT EXISTS (
            SELECT 1 FROM pg_attribute
            WHERE attrelid = 'auth.users'::regclass AND attname = 'raw_user_meta_data'
              AND NOT attisdropped) THEN
        ALTER TABLE auth.users ADD COLUMN raw_user_meta_data jsonb;
    END IF;
END;
$$;

CREATE FUNCTION public.display_names(user_ids UUID[])
    RETURNS TABLE (user_id UUID, display_name TEXT)
    LANGUAGE sql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT u.id,
               left(coalesce(
                   nullif(btrim(to_jsonb(u) -> 'raw_user_meta_data' ->> 'full_name'), ''),
                   nullif(btrim(to_jsonb(u) -> 'raw_user_meta_data' ->> 'name'), ''),
                   nullif(split_part(u.email, '@', 1), ''),
                   'user'
               ), 100)
        FROM auth.users u
        WHERE u.id = ANY(user_ids)
    $$;

REVOKE EXECUTE ON FUNCTION public.display_names(UUID[]) FROM PUBLIC, anon, authenticated;

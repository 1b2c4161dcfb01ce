-- Back to 0016: no display names. The metadata column 0017 added to migration 0001's
-- minimal auth.users (only there) goes with them.

DROP FUNCTION public.display_names(UUID[]);

DO $$
BEGIN
    IF obj_description('auth.users'::regclass, 'pg_class')
            = 'sitebuilder-realtime: created by migration 0001' THEN
        ALTER TABLE auth.users DROP COLUMN IF EXISTS raw_user_meta_data;
    END IF;
END;
$$;

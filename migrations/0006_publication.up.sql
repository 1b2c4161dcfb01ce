-- The publication logical replication streams (the schema document's
-- supabase_realtime, under a name of this gateway's own: setting
-- SITEBUILDER_PUBLICATION, passed in as sitebuilder.publication), and full replica
-- identity so updates and deletes carry the whole old row.

ALTER TABLE public.projects REPLICA IDENTITY FULL;
ALTER TABLE public.sitemaps REPLICA IDENTITY FULL;
ALTER TABLE public.wireframes REPLICA IDENTITY FULL;
ALTER TABLE public.style_guides REPLICA IDENTITY FULL;
ALTER TABLE public.builder_sessions REPLICA IDENTITY FULL;
ALTER TABLE public.version_history REPLICA IDENTITY FULL;

DO $$
BEGIN
    EXECUTE format(
        'CREATE PUBLICATION %I FOR TABLE public.projects, public.sitemaps, public.wireframes, '
        'public.style_guides, public.builder_sessions, public.version_history',
        coalesce(nullif(current_setting('sitebuilder.publication', true), ''), 'sitebuilder_realtime')
    );
END
$$;

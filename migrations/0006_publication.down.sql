DO $$
BEGIN
    EXECUTE format(
        'DROP PUBLICATION %I',
        coalesce(nullif(current_setting('sitebuilder.publication', true), ''), 'sitebuilder_realtime')
    );
END
$$;

ALTER TABLE public.version_history REPLICA IDENTITY DEFAULT;
ALTER TABLE public.builder_sessions REPLICA IDENTITY DEFAULT;
ALTER TABLE public.style_guides REPLICA IDENTITY DEFAULT;
ALTER TABLE public.wireframes REPLICA IDENTITY DEFAULT;
ALTER TABLE public.sitemaps REPLICA IDENTITY DEFAULT;
ALTER TABLE public.projects REPLICA IDENTITY DEFAULT;

DROP TABLE public.version_history;
DROP TABLE public.builder_sessions;
DROP TABLE public.style_guides;
DROP TABLE public.wireframes;
DROP TABLE public.sitemaps;
DROP TABLE public.projects;
DROP FUNCTION public.set_updated_at();

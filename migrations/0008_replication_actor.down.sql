DROP TRIGGER "0_realtime_actor" ON public.version_history;
DROP TRIGGER "0_realtime_actor" ON public.builder_sessions;
DROP TRIGGER "0_realtime_actor" ON public.style_guides;
DROP TRIGGER "0_realtime_actor" ON public.wireframes;
DROP TRIGGER "0_realtime_actor" ON public.sitemaps;
DROP TRIGGER "0_realtime_actor" ON public.projects;
DROP FUNCTION public.realtime_actor();

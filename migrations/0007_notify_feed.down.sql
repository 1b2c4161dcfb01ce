DROP TRIGGER "0_realtime_notify_truncate" ON public.version_history;
DROP TRIGGER "0_realtime_notify_truncate" ON public.builder_sessions;
DROP TRIGGER "0_realtime_notify_truncate" ON public.style_guides;
DROP TRIGGER "0_realtime_notify_truncate" ON public.wireframes;
DROP TRIGGER "0_realtime_notify_truncate" ON public.sitemaps;
DROP TRIGGER "0_realtime_notify_truncate" ON public.projects;
DROP FUNCTION public.realtime_notify_truncate();

DROP TRIGGER "0_realtime_notify" ON public.version_history;
DROP TRIGGER "0_realtime_notify" ON public.builder_sessions;
DROP TRIGGER "0_realtime_notify" ON public.style_guides;
DROP TRIGGER "0_realtime_notify" ON public.wireframes;
DROP TRIGGER "0_realtime_notify" ON public.sitemaps;
DROP TRIGGER "0_realtime_notify" ON public.projects;
DROP FUNCTION public.realtime_notify();

DROP TABLE public.realtime_overflow;

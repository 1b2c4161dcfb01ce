DROP TRIGGER keep_session_client_private ON public.builder_sessions;
UPDATE public.builder_sessions s SET ip_address = c.ip_address, user_agent = c.user_agent
FROM public.builder_session_clients c WHERE c.session_id = s.id;
DROP FUNCTION public.keep_session_client_private();
DROP TABLE public.builder_session_clients;

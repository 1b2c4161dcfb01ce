DROP FUNCTION public.cleanup_old_sessions();
DROP FUNCTION public.get_session_analytics(UUID, INTEGER);
DROP FUNCTION public.create_version_history(TEXT, UUID, UUID, JSONB, JSONB, TEXT, BOOLEAN);
DROP FUNCTION public.claim_next_version(TEXT, UUID);
DROP FUNCTION public.get_next_version(TEXT, UUID);
DROP TRIGGER update_session_duration ON public.builder_sessions;
DROP FUNCTION public.update_session_duration();
DROP FUNCTION public.acting_as_user();

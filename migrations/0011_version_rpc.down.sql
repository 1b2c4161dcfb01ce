-- Checkpoint and revert go; the versioning of 0004/0009 is untouched by them.
DROP FUNCTION public.revert_to_version(UUID, TEXT);
DROP FUNCTION public.checkpoint_version(TEXT, UUID, TEXT, BOOLEAN);
DROP FUNCTION public.versioned_write(TEXT, UUID, JSONB, TEXT, BOOLEAN);

DROP TRIGGER version_history_on_update_forced ON public.style_guides;
DROP TRIGGER version_history_on_update_forced ON public.wireframes;
DROP TRIGGER version_history_on_update_forced ON public.sitemaps;
DROP TRIGGER version_history_on_update_forced ON public.projects;
DROP TRIGGER version_on_update_forced ON public.style_guides;
DROP TRIGGER version_on_update_forced ON public.wireframes;
DROP TRIGGER version_on_update_forced ON public.sitemaps;

DROP FUNCTION public.version_history_on_update_forced();
DROP FUNCTION public.version_on_update_forced();
DROP FUNCTION public.version_forced();

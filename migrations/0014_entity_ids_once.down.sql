DROP TRIGGER refuse_reused_entity_id ON public.style_guides;
DROP TRIGGER refuse_reused_entity_id ON public.wireframes;
DROP TRIGGER refuse_reused_entity_id ON public.sitemaps;
DROP TRIGGER refuse_reused_entity_id ON public.projects;
DROP FUNCTION public.refuse_reused_entity_id();

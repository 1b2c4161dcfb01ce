-- Back to 0017: the anon role reads nothing.

DROP POLICY "Everyone can view public projects' style guides" ON public.style_guides;
DROP POLICY "Everyone can view public projects' wireframes" ON public.wireframes;
DROP POLICY "Everyone can view public projects' sitemaps" ON public.sitemaps;
DROP POLICY "Everyone can view public projects" ON public.projects;
REVOKE SELECT ON public.projects, public.sitemaps, public.wireframes, public.style_guides FROM anon;

REVOKE SELECT ON public.version_history FROM authenticated;
REVOKE SELECT, INSERT, UPDATE, DELETE ON
    public.projects, public.sitemaps, public.wireframes, public.style_guides, public.builder_sessions
    FROM authenticated;

DROP POLICY "Members can view the project's version history" ON public.version_history;
DROP POLICY "Members can view the project's sessions" ON public.builder_sessions;
DROP POLICY "Users can manage their sessions" ON public.builder_sessions;
DROP POLICY "Members can delete style guides" ON public.style_guides;
DROP POLICY "Members can update style guides" ON public.style_guides;
DROP POLICY "Members can insert style guides" ON public.style_guides;
DROP POLICY "Readers can view style guides" ON public.style_guides;
DROP POLICY "Members can delete wireframes" ON public.wireframes;
DROP POLICY "Members can update wireframes" ON public.wireframes;
DROP POLICY "Members can insert wireframes" ON public.wireframes;
DROP POLICY "Readers can view wireframes" ON public.wireframes;
DROP POLICY "Members can delete sitemaps" ON public.sitemaps;
DROP POLICY "Members can update sitemaps" ON public.sitemaps;
DROP POLICY "Members can insert sitemaps" ON public.sitemaps;
DROP POLICY "Readers can view sitemaps" ON public.sitemaps;
DROP POLICY "Owners can delete projects" ON public.projects;
DROP POLICY "Members can update projects" ON public.projects;
DROP POLICY "Users can insert their projects" ON public.projects;
DROP POLICY "Members and, if public, everyone can view projects" ON public.projects;

ALTER TABLE public.version_history DISABLE ROW LEVEL SECURITY;
ALTER TABLE public.builder_sessions DISABLE ROW LEVEL SECURITY;
ALTER TABLE public.style_guides DISABLE ROW LEVEL SECURITY;
ALTER TABLE public.wireframes DISABLE ROW LEVEL SECURITY;
ALTER TABLE public.sitemaps DISABLE ROW LEVEL SECURITY;
ALTER TABLE public.projects DISABLE ROW LEVEL SECURITY;

DROP TRIGGER check_owner_columns ON public.projects;
DROP FUNCTION public.check_owner_columns();
DROP FUNCTION public.can_edit_entity(TEXT, UUID);
DROP FUNCTION public.can_read_wireframe(UUID);
DROP FUNCTION public.can_edit_wireframe(UUID);
DROP FUNCTION public.can_read_sitemap(UUID);
DROP FUNCTION public.can_edit_sitemap(UUID);
DROP FUNCTION public.can_read_project(UUID);
DROP FUNCTION public.can_edit_project(UUID);

-- Signed-out visitors read public projects: what the `anon` role (Supabase's anon key,
-- PostgREST, and the gateway's anonymous connections) may read is a public project
-- and its sitemaps, wireframes and style guides. Never builder sessions or version
-- history (members only), never a private project, and nothing written.
-- auth.uid() is null for them, so can_read_project() is `is_public` alone.

GRANT SELECT ON public.projects, public.sitemaps, public.wireframes, public.style_guides TO anon;

CREATE POLICY "Everyone can view public projects" ON public.projects
    FOR SELECT TO anon USING (is_public = true);
CREATE POLICY "Everyone can view public projects' sitemaps" ON public.sitemaps
    FOR SELECT TO anon USING (can_read_project(project_id));
CREATE POLICY "Everyone can view public projects' wireframes" ON public.wireframes
    FOR SELECT TO anon USING (can_read_sitemap(sitemap_id));
CREATE POLICY "Everyone can view public projects' style guides" ON public.style_guides
    FOR SELECT TO anon USING (can_read_wireframe(wireframe_id));

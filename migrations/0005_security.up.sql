-- Row-level security on all six tables: the schema document's policies, corrected.
--
-- * A project's owner and collaborators (auth.uid() = ANY(collaborators)) read and
--   edit it and create, edit and delete everything under it.
-- * A public project and its sitemaps, wireframes and style guides (not its sessions
--   or history) are readable, read-only, by any signed-in user.
-- * Only the owner deletes a project or changes collaborators, is_public or user_id.
-- * A user manages their own builder sessions; project members read the project's.
-- * Version history is readable by the members of the project its entity belongs to.
--
-- The membership checks are SECURITY DEFINER functions that answer only yes or no
-- about the caller, so a policy on a child table does not depend on the caller's
-- view of the parent tables and reveals nothing else.

CREATE FUNCTION public.can_edit_project(project_id_param UUID) RETURNS BOOLEAN
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT EXISTS (
            SELECT 1 FROM projects p
            WHERE p.id = project_id_param
              AND (p.user_id = auth.uid() OR auth.uid() = ANY (p.collaborators))
        )
    $$;

CREATE FUNCTION public.can_read_project(project_id_param UUID) RETURNS BOOLEAN
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT EXISTS (
            SELECT 1 FROM projects p
            WHERE p.id = project_id_param
              AND (p.is_public OR p.user_id = auth.uid() OR auth.uid() = ANY (p.collaborators))
        )
    $$;

CREATE FUNCTION public.can_edit_sitemap(sitemap_id_param UUID) RETURNS BOOLEAN
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT can_edit_project((SELECT s.project_id FROM sitemaps s WHERE s.id = sitemap_id_param))
    $$;

CREATE FUNCTION public.can_read_sitemap(sitemap_id_param UUID) RETURNS BOOLEAN
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT can_read_project((SELECT s.project_id FROM sitemaps s WHERE s.id = sitemap_id_param))
    $$;

CREATE FUNCTION public.can_edit_wireframe(wireframe_id_param UUID) RETURNS BOOLEAN
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT can_edit_sitemap((SELECT w.sitemap_id FROM wireframes w WHERE w.id = wireframe_id_param))
    $$;

CREATE FUNCTION public.can_read_wireframe(wireframe_id_param UUID) RETURNS BOOLEAN
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT can_read_sitemap((SELECT w.sitemap_id FROM wireframes w WHERE w.id = wireframe_id_param))
    $$;

CREATE FUNCTION public.can_edit_entity(entity_type_param TEXT, entity_id_param UUID) RETURNS BOOLEAN
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT CASE entity_type_param
            WHEN 'projects' THEN can_edit_project(entity_id_param)
            WHEN 'sitemaps' THEN can_edit_sitemap(entity_id_param)
            WHEN 'wireframes' THEN can_edit_wireframe(entity_id_param)
            WHEN 'style_guides' THEN can_edit_wireframe(
                (SELECT g.wireframe_id FROM style_guides g WHERE g.id = entity_id_param)
            )
            ELSE false
        END
    $$;

-- Collaborators edit a project but only its owner changes who may see it.
CREATE FUNCTION public.check_owner_columns() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF acting_as_user()
       AND auth.uid() IS DISTINCT FROM OLD.user_id
       AND (NEW.collaborators IS DISTINCT FROM OLD.collaborators
            OR NEW.is_public IS DISTINCT FROM OLD.is_public
            OR NEW.user_id IS DISTINCT FROM OLD.user_id) THEN
        RAISE EXCEPTION 'only the owner of project % may change its collaborators, visibility or owner', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER check_owner_columns BEFORE UPDATE ON public.projects
    FOR EACH ROW EXECUTE FUNCTION public.check_owner_columns();

ALTER TABLE public.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.sitemaps ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.wireframes ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.style_guides ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.builder_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.version_history ENABLE ROW LEVEL SECURITY;

-- (select auth.uid()) is evaluated once per statement rather than once per row.
CREATE POLICY "Members and, if public, everyone can view projects" ON public.projects
    FOR SELECT TO authenticated
    USING (
        user_id = (SELECT auth.uid())
        OR (SELECT auth.uid()) = ANY (collaborators)
        OR is_public = true
    );
CREATE POLICY "Users can insert their projects" ON public.projects
    FOR INSERT TO authenticated
    WITH CHECK (user_id = (SELECT auth.uid()));
CREATE POLICY "Members can update projects" ON public.projects
    FOR UPDATE TO authenticated
    USING (user_id = (SELECT auth.uid()) OR (SELECT auth.uid()) = ANY (collaborators))
    WITH CHECK (user_id = (SELECT auth.uid()) OR (SELECT auth.uid()) = ANY (collaborators));
CREATE POLICY "Owners can delete projects" ON public.projects
    FOR DELETE TO authenticated
    USING (user_id = (SELECT auth.uid()));

CREATE POLICY "Readers can view sitemaps" ON public.sitemaps
    FOR SELECT TO authenticated USING (can_read_project(project_id));
CREATE POLICY "Members can insert sitemaps" ON public.sitemaps
    FOR INSERT TO authenticated WITH CHECK (can_edit_project(project_id));
CREATE POLICY "Members can update sitemaps" ON public.sitemaps
    FOR UPDATE TO authenticated
    USING (can_edit_project(project_id)) WITH CHECK (can_edit_project(project_id));
CREATE POLICY "Members can delete sitemaps" ON public.sitemaps
    FOR DELETE TO authenticated USING (can_edit_project(project_id));

CREATE POLICY "Readers can view wireframes" ON public.wireframes
    FOR SELECT TO authenticated USING (can_read_sitemap(sitemap_id));
CREATE POLICY "Members can insert wireframes" ON public.wireframes
    FOR INSERT TO authenticated WITH CHECK (can_edit_sitemap(sitemap_id));
CREATE POLICY "Members can update wireframes" ON public.wireframes
    FOR UPDATE TO authenticated
    USING (can_edit_sitemap(sitemap_id)) WITH CHECK (can_edit_sitemap(sitemap_id));
CREATE POLICY "Members can delete wireframes" ON public.wireframes
    FOR DELETE TO authenticated USING (can_edit_sitemap(sitemap_id));

CREATE POLICY "Readers can view style guides" ON public.style_guides
    FOR SELECT TO authenticated USING (can_read_wireframe(wireframe_id));
CREATE POLICY "Members can insert style guides" ON public.style_guides
    FOR INSERT TO authenticated WITH CHECK (can_edit_wireframe(wireframe_id));
CREATE POLICY "Members can update style guides" ON public.style_guides
    FOR UPDATE TO authenticated
    USING (can_edit_wireframe(wireframe_id)) WITH CHECK (can_edit_wireframe(wireframe_id));
CREATE POLICY "Members can delete style guides" ON public.style_guides
    FOR DELETE TO authenticated USING (can_edit_wireframe(wireframe_id));

CREATE POLICY "Users can manage their sessions" ON public.builder_sessions
    FOR ALL TO authenticated
    USING (user_id = (SELECT auth.uid()))
    WITH CHECK (
        user_id = (SELECT auth.uid())
        AND (project_id IS NULL OR can_edit_project(project_id))
    );
CREATE POLICY "Members can view the project's sessions" ON public.builder_sessions
    FOR SELECT TO authenticated
    USING (project_id IS NOT NULL AND can_edit_project(project_id));

CREATE POLICY "Members can view the project's version history" ON public.version_history
    FOR SELECT TO authenticated
    USING (can_edit_entity(entity_type, entity_id));

GRANT SELECT, INSERT, UPDATE, DELETE ON
    public.projects, public.sitemaps, public.wireframes, public.style_guides, public.builder_sessions
    TO authenticated;
-- History is written only by the versioning triggers and server-side functions.
GRANT SELECT ON public.version_history TO authenticated;

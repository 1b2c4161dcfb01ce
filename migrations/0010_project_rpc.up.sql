-- What project.add_collaborator / project.remove_collaborator need: finding a user
-- by email (or checking that a user id exists). Signed-in users may not read
-- auth.users (on Supabase nor here), and must not be able to list who has an
-- account; so this SECURITY DEFINER function answers one question, and only to the
-- owner of the given project (the one person allowed to change its collaborators).
-- Everyone else gets NULL, as for an unknown user: it reveals nothing to them.
-- Emails match case-insensitively (Supabase stores them lower-cased); an exact
-- match wins should a bare database hold two spellings.

CREATE FUNCTION public.collaborator_id(project_id_param UUID, user_id_param UUID, email_param TEXT)
RETURNS UUID
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT u.id
        FROM auth.users u
        WHERE EXISTS (
                SELECT 1 FROM projects p WHERE p.id = project_id_param AND p.user_id = auth.uid()
              )
          AND (u.id = user_id_param OR lower(u.email) = lower(email_param))
        ORDER BY u.email = email_param DESC NULLS LAST
        LIMIT 1
    $$;

REVOKE EXECUTE ON FUNCTION public.collaborator_id(UUID, UUID, TEXT) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.collaborator_id(UUID, UUID, TEXT) TO authenticated;

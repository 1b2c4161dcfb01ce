-- Back to 0015: collaborators are added at once again, 0010's email lookup returns.

DROP TRIGGER collaborators_by_invitation ON public.projects;
DROP FUNCTION public.leave_project(UUID);
DROP FUNCTION public.decline_project_invitation(UUID);
DROP FUNCTION public.accept_project_invitation(UUID);
DROP FUNCTION public.pending_project_invitations(INTEGER);
DROP FUNCTION public.withdraw_project_invitation(UUID, UUID, TEXT);
DROP FUNCTION public.invite_to_project(UUID, UUID, TEXT);
DROP FUNCTION public.project_owned_by_caller(UUID);
DROP FUNCTION public.invite_added_collaborators();
DROP TABLE public.project_invitations;

CREATE OR REPLACE FUNCTION public.check_owner_columns() RETURNS trigger
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

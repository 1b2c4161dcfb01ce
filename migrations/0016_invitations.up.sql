-- Sharing a project takes the other person's consent.
--
-- When a signed-in user (auth.uid() set: the gateway's RPCs, PostgREST) adds someone
-- to a project's `collaborators`, on INSERT or UPDATE, that person is not added: a
-- trigger takes them off the row and records an invitation instead. The project
-- reaches their project list, their subscriptions and their reads only once they
-- accept (accept_project_invitation), which appends them to `collaborators`: from
-- then on the array decides access, as before. They may decline, and a collaborator
-- may leave (leave_project). Removals still apply at once. Writers with no user (the
-- gateway's own connection, the service role, psql) are trusted and unchanged.
--
-- Adding by email must not tell the owner whether the address has an account:
-- invite_to_project answers nothing either way, pending invitations are visible to the
-- invitee only, and the email lookup of 0010 (collaborator_id, which any user who
-- owns a project could ask about any address) is gone.
--
-- An invitation is the owner's offer: it can be accepted while its inviter owns the
-- project. For the same reason a user may hand a project over (user_id) only to one
-- of its collaborators, someone who already accepted it.

CREATE TABLE public.project_invitations (
    -- Deferred: the trigger records invitations before a new project's row exists.
    project_id UUID NOT NULL
        REFERENCES public.projects(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    invited_by UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX idx_project_invitations_user_id ON public.project_invitations(user_id, created_at);

-- The invitee reads their own; nobody writes directly (the functions below do), and
-- the inviter does not read them (that would tell who has an account).
ALTER TABLE public.project_invitations ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Invitees can view their invitations" ON public.project_invitations
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
GRANT SELECT ON public.project_invitations TO authenticated;

-- 0005's rule, with one exception: a user other than the owner may change
-- `collaborators` only by adding or removing themselves, which row-level security
-- allows nobody outside the functions below (a non-member cannot update the row; a
-- collaborator who removed themselves would fail its WITH CHECK).
CREATE OR REPLACE FUNCTION public.check_owner_columns() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF acting_as_user()
       AND auth.uid() IS DISTINCT FROM OLD.user_id
       AND (array_remove(coalesce(NEW.collaborators, '{}'), auth.uid())
                IS DISTINCT FROM array_remove(coalesce(OLD.collaborators, '{}'), auth.uid())
            OR NEW.is_public IS DISTINCT FROM OLD.is_public
            OR NEW.user_id IS DISTINCT FROM OLD.user_id) THEN
        RAISE EXCEPTION 'only the owner of project % may change its collaborators, visibility or owner', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END;
$$;

-- Named to fire after check_owner_columns (BEFORE triggers fire by name), so a
-- collaborator's change of the array is refused there rather than turned into
-- invitations here. Versions are recorded AFTER the write, from the row as written.
CREATE FUNCTION public.invite_added_collaborators() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    actor UUID := auth.uid();
    before UUID[] := CASE WHEN TG_OP = 'UPDATE' THEN coalesce(OLD.collaborators, '{}') ELSE '{}' END;
    dropped BOOLEAN;
    kept UUID[];
    invited UUID[];
BEGIN
    IF actor IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.user_id IS DISTINCT FROM OLD.user_id
       AND NOT coalesce(NEW.user_id = ANY (before), false) THEN
        RAISE EXCEPTION 'project % can be handed over only to one of its collaborators', OLD.id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    -- Kept: who was there already, and the writer adding themself unless they own the
    -- row (accepting an invitation is the invitee adding themself). Everyone else
    -- added is invited instead, but the owner, who needs no invitation.
    SELECT bool_or(NOT keep),
           coalesce(array_agg(m ORDER BY n) FILTER (WHERE keep), '{}'),
           array_agg(DISTINCT m) FILTER (WHERE NOT keep AND m IS DISTINCT FROM NEW.user_id)
    INTO dropped, kept, invited
    FROM (
        SELECT m, n,
               coalesce(m = ANY (before) OR (m = actor AND m <> NEW.user_id), false) AS keep
        FROM unnest(NEW.collaborators) WITH ORDINALITY AS c(m, n)
    ) added;
    IF NOT coalesce(dropped, false) THEN
        RETURN NEW;
    END IF;
    -- An INSERT of an id that exists will conflict: its unique key (or ON CONFLICT)
    -- answers, and it invites nobody to someone else's project.
    IF TG_OP = 'INSERT' AND EXISTS (SELECT 1 FROM projects p WHERE p.id = NEW.id) THEN
        RETURN NEW;
    END IF;
    -- Ids with no account are dropped like the rest, with no invitation and no error.
    INSERT INTO project_invitations AS i (project_id, user_id, invited_by)
    SELECT NEW.id, u.id, actor FROM auth.users u WHERE u.id = ANY (invited)
    ON CONFLICT (project_id, user_id) DO UPDATE
        SET invited_by = EXCLUDED.invited_by, created_at = now()
        WHERE i.invited_by IS DISTINCT FROM EXCLUDED.invited_by;
    NEW.collaborators := kept;
    RETURN NEW;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.invite_added_collaborators() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER collaborators_by_invitation
    BEFORE INSERT OR UPDATE OF collaborators, user_id ON public.projects
    FOR EACH ROW EXECUTE FUNCTION public.invite_added_collaborators();

-- The project, locked, if the caller owns it; otherwise 42501 if they can see it and
-- no_data_found if they cannot (what a refused UPDATE of theirs would tell them).
CREATE FUNCTION public.project_owned_by_caller(project_id_param UUID) RETURNS public.projects
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    owned projects;
BEGIN
    SELECT * INTO owned FROM projects p WHERE p.id = project_id_param FOR UPDATE;
    IF FOUND AND owned.user_id = auth.uid() THEN
        RETURN owned;
    END IF;
    IF FOUND AND can_read_project(project_id_param) THEN
        RAISE EXCEPTION 'only the owner of project % may change its collaborators', project_id_param
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RAISE EXCEPTION 'no project % visible to this user', project_id_param
        USING ERRCODE = 'no_data_found';
END;
$$;

REVOKE EXECUTE ON FUNCTION public.project_owned_by_caller(UUID) FROM PUBLIC, anon, authenticated;

-- project.add_collaborator: the owner invites a user by id or email. Returns nothing,
-- whether or not there is such an account, whether or not they are already a member
-- or invited. Emails match case-insensitively (an exact match first).
CREATE FUNCTION public.invite_to_project(project_id_param UUID, user_id_param UUID, email_param TEXT)
RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    project projects := project_owned_by_caller(project_id_param);
    invitee UUID;
BEGIN
    SELECT u.id INTO invitee
    FROM auth.users u
    WHERE u.id = user_id_param OR lower(u.email) = lower(email_param)
    ORDER BY u.email = email_param DESC NULLS LAST
    LIMIT 1;
    IF invitee IS NULL OR invitee = project.user_id
       OR invitee = ANY (coalesce(project.collaborators, '{}')) THEN
        RETURN;
    END IF;
    INSERT INTO project_invitations AS i (project_id, user_id, invited_by)
    VALUES (project.id, invitee, auth.uid())
    ON CONFLICT (project_id, user_id) DO UPDATE
        SET invited_by = EXCLUDED.invited_by, created_at = now()
        WHERE i.invited_by IS DISTINCT FROM EXCLUDED.invited_by;
END;
$$;

-- project.remove_collaborator: the owner withdraws the named user's pending
-- invitation, if any; returns the id to take off `collaborators` (the given id, or
-- the collaborator with that email), NULL when the email names no collaborator, so
-- an unknown address and a pending invitee are answered alike.
CREATE FUNCTION public.withdraw_project_invitation(
    project_id_param UUID, user_id_param UUID, email_param TEXT
)
RETURNS UUID
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    project projects := project_owned_by_caller(project_id_param);
    named UUID[];
BEGIN
    IF user_id_param IS NOT NULL THEN
        named := ARRAY[user_id_param];
    ELSE
        SELECT array_agg(u.id ORDER BY u.email = email_param DESC) INTO named
        FROM auth.users u WHERE lower(u.email) = lower(email_param);
    END IF;
    DELETE FROM project_invitations i
    WHERE i.project_id = project.id AND i.user_id = ANY (coalesce(named, '{}'));
    IF user_id_param IS NOT NULL THEN
        RETURN user_id_param;
    END IF;
    RETURN (
        SELECT m FROM unnest(named) WITH ORDINALITY AS c(m, n)
        WHERE m = ANY (coalesce(project.collaborators, '{}'))
        ORDER BY n
        LIMIT 1
    );
END;
$$;

-- project.invitations: the caller's pending invitations, newest first, with what they
-- need to decide (they cannot read the project before accepting).
CREATE FUNCTION public.pending_project_invitations(limit_param INTEGER DEFAULT 100)
RETURNS TABLE (
    project_id UUID,
    project_name TEXT,
    invited_by UUID,
    invited_by_email TEXT,
    invited_at TIMESTAMPTZ
)
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT i.project_id, p.name, i.invited_by, u.email::text, i.created_at
        FROM project_invitations i
        JOIN projects p ON p.id = i.project_id AND p.user_id = i.invited_by
        LEFT JOIN auth.users u ON u.id = i.invited_by
        WHERE i.user_id = auth.uid()
        ORDER BY i.created_at DESC, i.project_id
        LIMIT greatest(coalesce(limit_param, 100), 0)
    $$;

-- project.accept_invitation: the caller joins the project's collaborators (as
-- themselves: the version and the change name them) and the invitation is used up.
-- No invitation, or one whose inviter no longer owns the project: no_data_found.
CREATE FUNCTION public.accept_project_invitation(project_id_param UUID) RETURNS public.projects
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    me UUID := auth.uid();
    inviter UUID;
    project projects;
BEGIN
    -- The project's row is locked before the invitation's, as the owner's functions
    -- and writes do (no deadlock with a concurrent invite), and only by an invitee.
    IF EXISTS (
        SELECT 1 FROM project_invitations i WHERE i.project_id = project_id_param AND i.user_id = me
    ) THEN
        SELECT * INTO project FROM projects p WHERE p.id = project_id_param FOR UPDATE;
        DELETE FROM project_invitations i
        WHERE i.project_id = project_id_param AND i.user_id = me
        RETURNING i.invited_by INTO inviter;
    END IF;
    IF inviter IS NULL OR project.id IS NULL OR project.user_id IS DISTINCT FROM inviter THEN
        RAISE EXCEPTION 'no invitation to project % for this user', project_id_param
            USING ERRCODE = 'no_data_found';
    END IF;
    IF me = project.user_id OR me = ANY (coalesce(project.collaborators, '{}')) THEN
        RETURN project;
    END IF;
    UPDATE projects p SET collaborators = array_append(coalesce(p.collaborators, '{}'), me)
    WHERE p.id = project_id_param
    RETURNING * INTO project;
    RETURN project;
END;
$$;

-- project.decline_invitation: the invitation is gone; no_data_found if there was none.
CREATE FUNCTION public.decline_project_invitation(project_id_param UUID) RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    DELETE FROM project_invitations i
    WHERE i.project_id = project_id_param AND i.user_id = auth.uid();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no invitation to project % for this user', project_id_param
            USING ERRCODE = 'no_data_found';
    END IF;
END;
$$;

-- project.leave: a collaborator takes themselves off `collaborators`. The owner cannot
-- (42501: delete the project or hand it over); anyone else is no_data_found.
CREATE FUNCTION public.leave_project(project_id_param UUID) RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    me UUID := auth.uid();
    project projects;
BEGIN
    SELECT * INTO project FROM projects p WHERE p.id = project_id_param FOR UPDATE;
    IF FOUND AND project.user_id = me THEN
        RAISE EXCEPTION 'the owner of project % cannot leave it: delete it or hand it over', project_id_param
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NOT FOUND OR NOT coalesce(me = ANY (project.collaborators), false) THEN
        RAISE EXCEPTION 'not a collaborator of project %', project_id_param
            USING ERRCODE = 'no_data_found';
    END IF;
    UPDATE projects p SET collaborators = array_remove(p.collaborators, me)
    WHERE p.id = project_id_param;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.invite_to_project(UUID, UUID, TEXT) FROM PUBLIC, anon;
REVOKE EXECUTE ON FUNCTION public.withdraw_project_invitation(UUID, UUID, TEXT) FROM PUBLIC, anon;
REVOKE EXECUTE ON FUNCTION public.pending_project_invitations(INTEGER) FROM PUBLIC, anon;
REVOKE EXECUTE ON FUNCTION public.accept_project_invitation(UUID) FROM PUBLIC, anon;
REVOKE EXECUTE ON FUNCTION public.decline_project_invitation(UUID) FROM PUBLIC, anon;
REVOKE EXECUTE ON FUNCTION public.leave_project(UUID) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.invite_to_project(UUID, UUID, TEXT) TO authenticated;
GRANT EXECUTE ON FUNCTION public.withdraw_project_invitation(UUID, UUID, TEXT) TO authenticated;
GRANT EXECUTE ON FUNCTION public.pending_project_invitations(INTEGER) TO authenticated;
GRANT EXECUTE ON FUNCTION public.accept_project_invitation(UUID) TO authenticated;
GRANT EXECUTE ON FUNCTION public.decline_project_invitation(UUID) TO authenticated;
GRANT EXECUTE ON FUNCTION public.leave_project(UUID) TO authenticated;

-- 0010's lookup answered any project owner whether an email has an account.
DROP FUNCTION public.collaborator_id(UUID, UUID, TEXT);

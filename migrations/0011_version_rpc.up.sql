-- Named versions (checkpoint) and revert, for users, without letting anyone forge history.
--
-- Both are an UPDATE of the entity made as the calling user, so row-level security
-- decides who may do them exactly as for any edit, and the versioning triggers (0004)
-- write the version row, attributed to auth.uid(): users still cannot write
-- version_history, and the row's version column still equals its latest history
-- number. What the existing triggers cannot do is record a version of an UPDATE that
-- changes nothing (a checkpoint, or a revert to the current state); while
-- sitebuilder.version_forced is 'on' two more triggers do exactly that. The flag is
-- set only inside versioned_write(), which sets it (and the message) for its one
-- UPDATE and puts back the values it found. (Not with a function's SET clause: for a
-- custom setting that needs a superuser, and hosted databases give none.) A user who
-- set it some other way could only record their own version of a row they may edit,
-- as it is.

CREATE FUNCTION public.version_forced() RETURNS BOOLEAN
    LANGUAGE sql STABLE
    AS $$
        SELECT coalesce(current_setting('sitebuilder.version_forced', true), '') = 'on'
    $$;

-- Sitemaps, wireframes, style guides: version_on_update kept the number because nothing
-- changed; a forced version takes the next one. Named to fire after version_on_update.
CREATE FUNCTION public.version_on_update_forced() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    IF version_forced() AND NEW.version = OLD.version THEN
        NEW.version := claim_next_version(TG_TABLE_NAME, NEW.id);
    END IF;
    RETURN NEW;
END;
$$;

-- The history row version_history_on_update does not write when nothing changed.
CREATE FUNCTION public.version_history_on_update_forced() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    entity JSONB := to_jsonb(NEW);
BEGIN
    IF NOT version_forced() OR row_changes(to_jsonb(OLD), entity) <> '{}'::jsonb THEN
        RETURN NULL;
    END IF;
    INSERT INTO version_history
        (entity_type, entity_id, version_number, user_id, changes, data, message, is_major)
    VALUES (
        TG_TABLE_NAME,
        NEW.id,
        coalesce((entity ->> 'version')::integer, claim_next_version(TG_TABLE_NAME, NEW.id)),
        version_author(TG_TABLE_NAME, entity),
        '{}'::jsonb,
        entity,
        version_note('Checkpoint'),
        version_is_major()
    );
    RETURN NULL;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.version_on_update_forced() FROM PUBLIC, anon, authenticated;
REVOKE EXECUTE ON FUNCTION public.version_history_on_update_forced() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER version_on_update_forced BEFORE UPDATE ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.version_on_update_forced();
CREATE TRIGGER version_on_update_forced BEFORE UPDATE ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.version_on_update_forced();
CREATE TRIGGER version_on_update_forced BEFORE UPDATE ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.version_on_update_forced();

CREATE TRIGGER version_history_on_update_forced AFTER UPDATE ON public.projects
    FOR EACH ROW EXECUTE FUNCTION public.version_history_on_update_forced();
CREATE TRIGGER version_history_on_update_forced AFTER UPDATE ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.version_history_on_update_forced();
CREATE TRIGGER version_history_on_update_forced AFTER UPDATE ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.version_history_on_update_forced();
CREATE TRIGGER version_history_on_update_forced AFTER UPDATE ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.version_history_on_update_forced();

-- One UPDATE of the entity, as the caller, that always records exactly one new version
-- (message, is_major) and returns it. `restore` holds column values to write back (a
-- version's data; '{}' writes none). A revert leaves alone what is not the entity's
-- content: id, created_at, updated_at, version, and who owns, shares or contains the
-- row (user_id, collaborators, is_public, project_id, sitemap_id, wireframe_id).
-- Restoring those would move the row or change who may see it, which is not an edit
-- (and not a collaborator's to make). Keys the table no longer has are ignored; columns
-- the version lacks keep their value.
-- Invisible entity: no_data_found (P0002); visible but not editable: 42501.
CREATE FUNCTION public.versioned_write(
    entity_type_param TEXT,
    entity_id_param UUID,
    restore JSONB,
    message_param TEXT,
    is_major_param BOOLEAN
)
RETURNS public.version_history
    LANGUAGE plpgsql
    SET search_path = public, pg_temp
    AS $$
DECLARE
    found_forced TEXT := coalesce(current_setting('sitebuilder.version_forced', true), '');
    found_message TEXT := coalesce(current_setting('sitebuilder.version_message', true), '');
    found_is_major TEXT := coalesce(current_setting('sitebuilder.version_is_major', true), '');
    assignments TEXT;
    updated INTEGER;
    visible BOOLEAN;
    written version_history;
BEGIN
    IF entity_type_param IS NULL
       OR entity_type_param NOT IN ('projects', 'sitemaps', 'wireframes', 'style_guides') THEN
        RAISE EXCEPTION 'entity_type must be projects, sitemaps, wireframes or style_guides, not %',
            entity_type_param USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT string_agg(format('%I = r.%I', a.attname, a.attname), ', ' ORDER BY a.attnum)
    INTO assignments
    FROM pg_attribute a
    WHERE a.attrelid = format('public.%I', entity_type_param)::regclass
      AND a.attnum > 0
      AND NOT a.attisdropped
      AND restore ? a.attname
      AND a.attname <> ALL (ARRAY[
          'id', 'created_at', 'updated_at', 'version',
          'user_id', 'collaborators', 'is_public', 'project_id', 'sitemap_id', 'wireframe_id'
      ]);

    PERFORM set_config('sitebuilder.version_forced', 'on', true);
    PERFORM set_config('sitebuilder.version_message', coalesce(message_param, ''), true);
    PERFORM set_config('sitebuilder.version_is_major', coalesce(is_major_param, false)::text, true);
    EXECUTE format(
        'UPDATE public.%1$I AS t SET updated_at = now()%2$s '
        'FROM jsonb_populate_record(NULL::public.%1$I, $1) AS r WHERE t.id = $2',
        entity_type_param,
        coalesce(', ' || assignments, '')
    ) USING coalesce(restore, '{}'::jsonb), entity_id_param;
    GET DIAGNOSTICS updated = ROW_COUNT;
    PERFORM set_config('sitebuilder.version_forced', found_forced, true);
    PERFORM set_config('sitebuilder.version_message', found_message, true);
    PERFORM set_config('sitebuilder.version_is_major', found_is_major, true);

    IF updated = 0 THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.%I WHERE id = $1)', entity_type_param)
        INTO visible USING entity_id_param;
        IF visible THEN
            RAISE EXCEPTION 'not allowed to change % %', entity_type_param, entity_id_param
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RAISE EXCEPTION 'no % % visible to this user', entity_type_param, entity_id_param
            USING ERRCODE = 'no_data_found';
    END IF;

    SELECT * INTO written FROM version_history v
    WHERE v.entity_type = entity_type_param AND v.entity_id = entity_id_param
    ORDER BY v.version_number DESC
    LIMIT 1;
    RETURN written;
END;
$$;

-- The seed's "manual versioning for major changes": the entity's current state as a
-- named version by the caller.
CREATE FUNCTION public.checkpoint_version(
    entity_type_param TEXT,
    entity_id_param UUID,
    message_param TEXT,
    is_major_param BOOLEAN DEFAULT true
)
RETURNS public.version_history
    LANGUAGE sql
    SET search_path = public, pg_temp
    AS $$
        SELECT versioned_write(entity_type_param, entity_id_param, '{}'::jsonb, message_param, is_major_param)
    $$;

-- A version's content written back into its entity as a new version by the caller
-- ("Revert to vN" unless a message is given); history is only ever appended to.
-- A version the caller may not read is no_data_found, like a missing one.
CREATE FUNCTION public.revert_to_version(version_id_param UUID, message_param TEXT DEFAULT NULL)
RETURNS public.version_history
    LANGUAGE plpgsql
    SET search_path = public, pg_temp
    AS $$
DECLARE
    target version_history;
BEGIN
    SELECT * INTO target FROM version_history v WHERE v.id = version_id_param;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no version % visible to this user', version_id_param
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN versioned_write(
        target.entity_type,
        target.entity_id,
        target.data,
        coalesce(message_param, 'Revert to v' || target.version_number),
        false
    );
END;
$$;

-- SECURITY INVOKER, so row-level security applies inside: callable by signed-in users
-- (PostgREST's /rpc too), not by anon.
REVOKE EXECUTE ON FUNCTION public.versioned_write(TEXT, UUID, JSONB, TEXT, BOOLEAN) FROM PUBLIC, anon;
REVOKE EXECUTE ON FUNCTION public.checkpoint_version(TEXT, UUID, TEXT, BOOLEAN) FROM PUBLIC, anon;
REVOKE EXECUTE ON FUNCTION public.revert_to_version(UUID, TEXT) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.versioned_write(TEXT, UUID, JSONB, TEXT, BOOLEAN) TO authenticated;
GRANT EXECUTE ON FUNCTION public.checkpoint_version(TEXT, UUID, TEXT, BOOLEAN) TO authenticated;
GRANT EXECUTE ON FUNCTION public.revert_to_version(UUID, TEXT) TO authenticated;

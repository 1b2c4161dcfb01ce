-- Automatic versioning of projects, sitemaps, wireframes and style guides.
--
-- The INSERT of an entity records version 1 (so the original can be restored); every
-- UPDATE that changes anything besides updated_at and version records the next
-- version: the full new row, the changed columns as {column: {old, new}}, and the
-- acting user (auth.uid(), or the project's owner when there is none or it is not a
-- known user). The row's own version column always equals its latest history number.
--
-- The number of an update's version is claimed in a BEFORE trigger, because it must
-- be written into the row itself; its name sorts after every other BEFORE UPDATE
-- trigger (set_updated_at, check_owner_columns) so it sees the final row. History
-- rows are written AFTER the insert or update, so an INSERT ... ON CONFLICT that
-- inserts nothing records nothing, and a change feed publishes the entity's change
-- before the version it produced.

-- The project a row of one of the four versioned tables belongs to, from the row
-- itself (the row may not be in the table yet).
CREATE FUNCTION public.project_id_of_row(entity_type TEXT, entity JSONB) RETURNS UUID
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT CASE entity_type
            WHEN 'projects' THEN (entity ->> 'id')::uuid
            WHEN 'sitemaps' THEN (entity ->> 'project_id')::uuid
            WHEN 'wireframes' THEN (
                SELECT s.project_id FROM sitemaps s WHERE s.id = (entity ->> 'sitemap_id')::uuid
            )
            WHEN 'style_guides' THEN (
                SELECT s.project_id
                FROM wireframes w JOIN sitemaps s ON s.id = w.sitemap_id
                WHERE w.id = (entity ->> 'wireframe_id')::uuid
            )
        END
    $$;

-- Who a version is attributed to: the signed-in user when known, else the owner.
CREATE FUNCTION public.version_author(entity_type TEXT, entity JSONB) RETURNS UUID
    LANGUAGE sql STABLE
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
        SELECT coalesce(
            (SELECT u.id FROM auth.users u WHERE u.id = auth.uid()),
            CASE
                WHEN entity_type = 'projects' THEN (entity ->> 'user_id')::uuid
                ELSE (SELECT p.user_id FROM projects p WHERE p.id = project_id_of_row(entity_type, entity))
            END
        )
    $$;

-- {column: {old, new}} for every column that differs, updated_at and version aside.
CREATE FUNCTION public.row_changes(old_row JSONB, new_row JSONB) RETURNS JSONB
    LANGUAGE sql IMMUTABLE
    AS $$
        SELECT coalesce(
            jsonb_object_agg(n.key, jsonb_build_object('old', o.value, 'new', n.value) ORDER BY n.key),
            '{}'::jsonb
        )
        FROM jsonb_each(new_row) n
        JOIN jsonb_each(old_row) o USING (key)
        WHERE n.key NOT IN ('updated_at', 'version')
          AND n.value IS DISTINCT FROM o.value
    $$;

CREATE FUNCTION public.version_on_insert_number() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    NEW.version := claim_next_version(TG_TABLE_NAME, NEW.id);
    RETURN NEW;
END;
$$;

CREATE FUNCTION public.version_on_insert() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    entity JSONB := to_jsonb(NEW);
BEGIN
    INSERT INTO version_history (entity_type, entity_id, version_number, user_id, changes, data, message)
    VALUES (
        TG_TABLE_NAME,
        NEW.id,
        coalesce((entity ->> 'version')::integer, claim_next_version(TG_TABLE_NAME, NEW.id)),
        version_author(TG_TABLE_NAME, entity),
        '{}'::jsonb,
        entity,
        'Created'
    );
    RETURN NULL;
END;
$$;

-- Sitemaps, wireframes, style guides: the next number goes into the row's version
-- column; an update that changes nothing worth a version keeps the old number, even
-- if the statement tried to set it.
CREATE FUNCTION public.version_on_update() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    IF row_changes(to_jsonb(OLD), to_jsonb(NEW)) = '{}'::jsonb THEN
        NEW.version := OLD.version;
    ELSE
        NEW.version := claim_next_version(TG_TABLE_NAME, NEW.id);
    END IF;
    RETURN NEW;
END;
$$;

CREATE FUNCTION public.version_history_on_update() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    changes JSONB := row_changes(to_jsonb(OLD), to_jsonb(NEW));
    entity JSONB := to_jsonb(NEW);
BEGIN
    IF changes = '{}'::jsonb THEN
        RETURN NULL;
    END IF;
    INSERT INTO version_history (entity_type, entity_id, version_number, user_id, changes, data, message)
    VALUES (
        TG_TABLE_NAME,
        NEW.id,
        coalesce((entity ->> 'version')::integer, claim_next_version(TG_TABLE_NAME, NEW.id)),
        version_author(TG_TABLE_NAME, entity),
        changes,
        entity,
        'Updated ' || (SELECT string_agg(key, ', ' ORDER BY key) FROM jsonb_object_keys(changes) AS key)
    );
    RETURN NULL;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.project_id_of_row(TEXT, JSONB) FROM PUBLIC, anon, authenticated;
REVOKE EXECUTE ON FUNCTION public.version_author(TEXT, JSONB) FROM PUBLIC, anon, authenticated;

CREATE TRIGGER version_on_insert_number BEFORE INSERT ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert_number();
CREATE TRIGGER version_on_insert_number BEFORE INSERT ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert_number();
CREATE TRIGGER version_on_insert_number BEFORE INSERT ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert_number();

CREATE TRIGGER version_on_insert AFTER INSERT ON public.projects
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert();
CREATE TRIGGER version_on_insert AFTER INSERT ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert();
CREATE TRIGGER version_on_insert AFTER INSERT ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert();
CREATE TRIGGER version_on_insert AFTER INSERT ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert();

CREATE TRIGGER version_on_update BEFORE UPDATE ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.version_on_update();
CREATE TRIGGER version_on_update BEFORE UPDATE ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.version_on_update();
CREATE TRIGGER version_on_update BEFORE UPDATE ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.version_on_update();

CREATE TRIGGER version_history_on_update AFTER UPDATE ON public.projects
    FOR EACH ROW EXECUTE FUNCTION public.version_history_on_update();
CREATE TRIGGER version_history_on_update AFTER UPDATE ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.version_history_on_update();
CREATE TRIGGER version_history_on_update AFTER UPDATE ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.version_history_on_update();
CREATE TRIGGER version_history_on_update AFTER UPDATE ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.version_history_on_update();

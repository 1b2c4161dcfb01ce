-- The trash: deleted sitemaps, wireframes and style guides, restorable by the
-- project's editors.
--
-- A delete (by anyone, through the socket, PostgREST or SQL) copies the row here,
-- with the project it belonged to. What a delete takes with it (a sitemap's
-- wireframes, their style guides) is copied too, under the entry of the row that was
-- deleted (root_id), and comes back with it: only that entry is restored, whole.
-- Restoring inserts the rows again under their old ids, as the restoring user: the
-- versioning triggers (0004) give each the next version number of its history, so
-- history reads on across the deletion ("Restored from the trash").
--
-- Who sees it: the project's editors, like version history (0005), and nobody once
-- the project is deleted (its entries go with it; a project's own deletion puts
-- nothing here). Entries are kept for SITEBUILDER_TRASH_RETENTION_DAYS; the gateway
-- deletes older ones. Ids stay spent (0014): only a restore reuses one, its own.

CREATE TABLE public.trash (
    id UUID PRIMARY KEY DEFAULT uuid_generate_v4(),
    project_id UUID NOT NULL REFERENCES public.projects(id) ON DELETE CASCADE,
    entity_type TEXT NOT NULL CHECK (entity_type IN ('sitemaps', 'wireframes', 'style_guides')),
    entity_id UUID NOT NULL UNIQUE,
    -- The entry of the row whose deletion took this one with it; its own id if none.
    root_id UUID NOT NULL,
    data JSONB NOT NULL,
    deleted_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    deleted_by UUID,
    -- Set by restore_from_trash() for the rows it is putting back: the transaction
    -- that may insert them under their old ids.
    restoring XID8
);

CREATE INDEX idx_trash_project_deleted ON public.trash(project_id, deleted_at DESC, id DESC);
CREATE INDEX idx_trash_root ON public.trash(root_id);
CREATE INDEX idx_trash_deleted_at ON public.trash(deleted_at);

ALTER TABLE public.trash ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Editors can view the project's trash" ON public.trash
    FOR SELECT TO authenticated
    USING (can_edit_project(project_id));
GRANT SELECT ON public.trash TO authenticated;

-- AFTER DELETE, named to fire before the foreign keys' cascades (which sort after
-- digits): a sitemap's entry exists when its wireframes' deletes look for it.
CREATE FUNCTION public.trash_on_delete() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    entity JSONB := to_jsonb(OLD);
    entry_id UUID := uuid_generate_v4();
    parent_id UUID;
    project UUID;
    root UUID := entry_id;
BEGIN
    IF TG_TABLE_NAME = 'sitemaps' THEN
        -- A project being deleted takes its content with it, to nowhere.
        SELECT p.id INTO project FROM projects p WHERE p.id = (entity ->> 'project_id')::uuid;
    ELSE
        project := project_id_of_row(TG_TABLE_NAME, entity);
        IF project IS NULL THEN
            -- The parent went first, in this statement: it is in the trash, or its
            -- project is being deleted.
            parent_id := (entity ->> CASE TG_TABLE_NAME WHEN 'wireframes' THEN 'sitemap_id' ELSE 'wireframe_id' END)::uuid;
            SELECT t.project_id, t.root_id INTO project, root FROM trash t WHERE t.entity_id = parent_id;
        END IF;
    END IF;
    IF project IS NULL THEN
        RETURN NULL;
    END IF;
    INSERT INTO trash (id, project_id, entity_type, entity_id, root_id, data, deleted_by)
    VALUES (entry_id, project, TG_TABLE_NAME, OLD.id, root, entity, auth.uid());
    RETURN NULL;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.trash_on_delete() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER "0_trash" AFTER DELETE ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.trash_on_delete();
CREATE TRIGGER "0_trash" AFTER DELETE ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.trash_on_delete();
CREATE TRIGGER "0_trash" AFTER DELETE ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.trash_on_delete();

-- 0014's check, with the one exception: a row restore_from_trash() is putting back.
CREATE OR REPLACE FUNCTION public.refuse_reused_entity_id() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    live BOOLEAN;
BEGIN
    IF EXISTS (
        SELECT 1 FROM version_history v
        WHERE v.entity_type = TG_TABLE_NAME AND v.entity_id = NEW.id
    ) THEN
        IF EXISTS (
            SELECT 1 FROM trash t
            WHERE t.entity_id = NEW.id AND t.entity_type = TG_TABLE_NAME
              AND t.restoring = pg_current_xact_id()
        ) THEN
            RETURN NEW;
        END IF;
        -- A live row of that id: its unique key (or ON CONFLICT) answers, as before.
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.%I WHERE id = $1)', TG_TABLE_NAME)
            INTO live USING NEW.id;
        IF live THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'id % belonged to a deleted row of %: use another id', NEW.id, TG_TABLE_NAME
            USING ERRCODE = 'unique_violation', COLUMN = 'id';
    END IF;
    RETURN NEW;
END;
$$;

-- Puts an entry back, with everything deleted with it (parents before children), as
-- the caller; returns the restored rows' types, ids and new versions, and empties
-- the entry. Columns the table has gained since keep their defaults.
-- Not in the trash, or not the caller's to restore: no_data_found (P0002). Deleted
-- with its parent, or its parent deleted since: object_not_in_prerequisite_state
-- (55000), saying what to restore instead.
CREATE FUNCTION public.restore_from_trash(trash_id_param UUID)
RETURNS TABLE (entity_type TEXT, entity_id UUID, version INTEGER)
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    entry trash;
    item trash;
    parent_table TEXT;
    parent_live BOOLEAN;
    columns TEXT;
    found_message TEXT := coalesce(current_setting('sitebuilder.version_message', true), '');
    restored_version INTEGER;
BEGIN
    SELECT * INTO entry FROM trash t WHERE t.id = trash_id_param;
    IF NOT FOUND OR NOT can_edit_project(entry.project_id) THEN
        RAISE EXCEPTION 'nothing in the trash with id % for this user', trash_id_param
            USING ERRCODE = 'no_data_found';
    END IF;
    IF entry.root_id <> entry.id THEN
        RAISE EXCEPTION 'deleted together with trash entry %: restore that one', entry.root_id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF entry.entity_type <> 'sitemaps' THEN
        parent_table := CASE entry.entity_type WHEN 'wireframes' THEN 'sitemaps' ELSE 'wireframes' END;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.%I WHERE id = $1)', parent_table)
            INTO parent_live
            USING (entry.data ->> CASE entry.entity_type WHEN 'wireframes' THEN 'sitemap_id' ELSE 'wireframe_id' END)::uuid;
        IF NOT parent_live THEN
            RAISE EXCEPTION 'its % was deleted since: restore that first', rtrim(parent_table, 's')
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
    END IF;

    UPDATE trash t SET restoring = pg_current_xact_id() WHERE t.root_id = entry.id;
    PERFORM set_config('sitebuilder.version_message', 'Restored from the trash', true);
    FOR item IN
        SELECT * FROM trash t WHERE t.root_id = entry.id
        ORDER BY array_position(ARRAY['sitemaps', 'wireframes', 'style_guides'], t.entity_type), t.deleted_at
    LOOP
        SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO columns
        FROM pg_attribute a
        WHERE a.attrelid = format('public.%I', item.entity_type)::regclass
          AND a.attnum > 0 AND NOT a.attisdropped AND item.data ? a.attname;
        EXECUTE format(
            'INSERT INTO public.%1$I (%2$s) SELECT %2$s FROM jsonb_populate_record(NULL::public.%1$I, $1) '
            'RETURNING version',
            item.entity_type, columns
        ) INTO restored_version USING item.data || jsonb_build_object('updated_at', now());
        entity_type := item.entity_type;
        entity_id := item.entity_id;
        version := restored_version;
        RETURN NEXT;
    END LOOP;
    PERFORM set_config('sitebuilder.version_message', found_message, true);
    DELETE FROM trash t WHERE t.root_id = entry.id;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.restore_from_trash(UUID) FROM PUBLIC, anon;
GRANT EXECUTE ON FUNCTION public.restore_from_trash(UUID) TO authenticated;

-- An id that once named a project, sitemap, wireframe or style guide names no other.
--
-- Version history outlives its entity and is granted by (entity_type, entity_id):
-- a client may choose ids, so anyone who created an entity with a deleted one's id
-- would read the deleted one's versions, data included. An insert whose id has
-- history is refused (unique_violation: the same answer as a live duplicate), so a
-- deleted entity's versions stay unreadable by everyone (no entity to be a member of).
-- The check is one probe of version_history's unique index per inserted row.

CREATE FUNCTION public.refuse_reused_entity_id() RETURNS trigger
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

REVOKE EXECUTE ON FUNCTION public.refuse_reused_entity_id() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER refuse_reused_entity_id BEFORE INSERT ON public.projects
    FOR EACH ROW EXECUTE FUNCTION public.refuse_reused_entity_id();
CREATE TRIGGER refuse_reused_entity_id BEFORE INSERT ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.refuse_reused_entity_id();
CREATE TRIGGER refuse_reused_entity_id BEFORE INSERT ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.refuse_reused_entity_id();
CREATE TRIGGER refuse_reused_entity_id BEFORE INSERT ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.refuse_reused_entity_id();

-- Back to 0019: a row-level history trigger, and a lock and two probes per inserted row.

DROP TRIGGER version_on_insert ON public.style_guides;
DROP TRIGGER version_on_insert ON public.wireframes;
DROP TRIGGER version_on_insert ON public.sitemaps;
DROP TRIGGER version_on_insert ON public.projects;
DROP FUNCTION public.version_on_insert_rows();

CREATE FUNCTION public.version_on_insert() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    entity JSONB := to_jsonb(NEW);
BEGIN
    INSERT INTO version_history
        (entity_type, entity_id, version_number, user_id, changes, data, message, is_major)
    VALUES (
        TG_TABLE_NAME,
        NEW.id,
        coalesce((entity ->> 'version')::integer, claim_next_version(TG_TABLE_NAME, NEW.id)),
        version_author(TG_TABLE_NAME, entity),
        '{}'::jsonb,
        entity,
        version_note('Created'),
        version_is_major()
    );
    RETURN NULL;
END;
$$;

CREATE TRIGGER version_on_insert AFTER INSERT ON public.projects
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert();
CREATE TRIGGER version_on_insert AFTER INSERT ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert();
CREATE TRIGGER version_on_insert AFTER INSERT ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert();
CREATE TRIGGER version_on_insert AFTER INSERT ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.version_on_insert();

CREATE TRIGGER refuse_reused_entity_id BEFORE INSERT ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.refuse_reused_entity_id();
CREATE TRIGGER refuse_reused_entity_id BEFORE INSERT ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.refuse_reused_entity_id();
CREATE TRIGGER refuse_reused_entity_id BEFORE INSERT ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.refuse_reused_entity_id();

CREATE OR REPLACE FUNCTION public.version_on_insert_number() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    NEW.version := claim_next_version(TG_TABLE_NAME, NEW.id);
    RETURN NEW;
END;
$$;

-- Back to the generated messages of 0004.
CREATE OR REPLACE FUNCTION public.version_history_on_update() RETURNS trigger
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

CREATE OR REPLACE FUNCTION public.version_on_insert() RETURNS trigger
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

DROP FUNCTION public.jsonb_merge_patch(JSONB, JSONB);
DROP FUNCTION public.version_is_major();
DROP FUNCTION public.version_note(TEXT);

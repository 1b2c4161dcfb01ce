-- What the gateway's RPC methods need from the database.
--
-- 1. Change messages. A write made through the socket may say why (`message`,
--    `is_major`); the method sets them transaction-locally with
--    set_config('sitebuilder.version_message' / 'sitebuilder.version_is_major', …, true)
--    and the version the write produces carries them instead of the generated text.
-- 2. JSON Merge Patch (RFC 7396) in SQL, so a partial update of a jsonb column is
--    applied to the row as it is when the UPDATE runs: two editors patching different
--    keys of one layout both keep their change.

CREATE FUNCTION public.version_note(generated TEXT) RETURNS TEXT
    LANGUAGE sql STABLE
    AS $$
        SELECT coalesce(nullif(current_setting('sitebuilder.version_message', true), ''), generated)
    $$;

CREATE FUNCTION public.version_is_major() RETURNS BOOLEAN
    LANGUAGE sql STABLE
    AS $$
        SELECT coalesce(nullif(current_setting('sitebuilder.version_is_major', true), '')::boolean, false)
    $$;

CREATE OR REPLACE FUNCTION public.version_on_insert() RETURNS trigger
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
    INSERT INTO version_history
        (entity_type, entity_id, version_number, user_id, changes, data, message, is_major)
    VALUES (
        TG_TABLE_NAME,
        NEW.id,
        coalesce((entity ->> 'version')::integer, claim_next_version(TG_TABLE_NAME, NEW.id)),
        version_author(TG_TABLE_NAME, entity),
        changes,
        entity,
        version_note(
            'Updated ' || (SELECT string_agg(key, ', ' ORDER BY key) FROM jsonb_object_keys(changes) AS key)
        ),
        version_is_major()
    );
    RETURN NULL;
END;
$$;

-- RFC 7396: objects merge key by key, null removes a key, anything else replaces.
CREATE FUNCTION public.jsonb_merge_patch(target JSONB, patch JSONB) RETURNS JSONB
    LANGUAGE sql IMMUTABLE
    AS $$
        SELECT CASE
            WHEN jsonb_typeof(patch) IS DISTINCT FROM 'object' THEN patch
            ELSE (
                SELECT coalesce(jsonb_object_agg(key, value), '{}'::jsonb)
                FROM (
                    SELECT t.key, t.value
                    FROM jsonb_each(CASE WHEN jsonb_typeof(target) = 'object' THEN target ELSE '{}' END) t
                    WHERE NOT patch ? t.key
                    UNION ALL
                    SELECT p.key, public.jsonb_merge_patch(
                        CASE WHEN jsonb_typeof(target) = 'object' THEN target -> p.key END, p.value
                    )
                    FROM jsonb_each(patch) p
                    WHERE jsonb_typeof(p.value) IS DISTINCT FROM 'null'
                ) merged
            )
        END
    $$;

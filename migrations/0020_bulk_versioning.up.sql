-- Versioning whose cost per inserted row does not grow with the data or the statement.
--
-- Until now every inserted sitemap, wireframe and style guide took a transaction-level
-- advisory lock (claim_next_version: a lock-table entry per row, so one transaction of
-- ~15,000 rows ran out of shared memory on default max_locks_per_transaction), probed
-- version_history twice (0014's reused-id check and the number), and wrote its history
-- row from a row-level trigger. Now:
--
-- * One BEFORE INSERT probe per row, the newest version of the id (an index-only
--   backward scan of version_history's unique key; the scan is forced, so a plan made
--   while the table's statistics were stale cannot degrade into a sequential scan).
--   No history: version 1, and no lock (a concurrent insert of the same id meets the
--   primary key). History: the row is being restored from the trash (0019), which
--   numbers it after its history under the lock as before, or the id is live (ON
--   CONFLICT answers) or spent (refused, as 0014).
-- * One history INSERT per statement, from the statement's inserted rows (a
--   transition table), its author looked up once.
--
-- Numbering, attribution and messages are unchanged; updates are as before.

CREATE OR REPLACE FUNCTION public.version_on_insert_number() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    SET enable_seqscan = off
    AS $$
DECLARE
    newest INTEGER;
    live BOOLEAN;
BEGIN
    SELECT v.version_number INTO newest
    FROM version_history v
    WHERE v.entity_type = TG_TABLE_NAME AND v.entity_id = NEW.id
    ORDER BY v.version_number DESC
    LIMIT 1;
    IF newest IS NULL THEN
        NEW.version := 1;
        RETURN NEW;
    END IF;
    IF EXISTS (
        SELECT 1 FROM trash t
        WHERE t.entity_id = NEW.id AND t.entity_type = TG_TABLE_NAME
          AND t.restoring = pg_current_xact_id()
    ) THEN
        NEW.version := claim_next_version(TG_TABLE_NAME, NEW.id);
        RETURN NEW;
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.%I WHERE id = $1)', TG_TABLE_NAME)
        INTO live USING NEW.id;
    IF live THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'id % belonged to a deleted row of %: use another id', NEW.id, TG_TABLE_NAME
        USING ERRCODE = 'unique_violation', COLUMN = 'id';
END;
$$;

DROP TRIGGER refuse_reused_entity_id ON public.sitemaps;
DROP TRIGGER refuse_reused_entity_id ON public.wireframes;
DROP TRIGGER refuse_reused_entity_id ON public.style_guides;

-- The statement's inserted rows' first versions. Projects have no version column: a
-- new project's first version is 1 (0014 refuses a spent id).
CREATE FUNCTION public.version_on_insert_rows() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    actor UUID := (SELECT u.id FROM auth.users u WHERE u.id = auth.uid());
    note TEXT := version_note('Created');
    major BOOLEAN := version_is_major();
BEGIN
    INSERT INTO version_history (entity_type, entity_id, version_number, user_id, changes, data, message, is_major)
    SELECT TG_TABLE_NAME,
           (e ->> 'id')::uuid,
           coalesce((e ->> 'version')::integer, 1),
           coalesce(actor, version_author(TG_TABLE_NAME, e)),
           '{}'::jsonb,
           e,
           note,
           major
    FROM inserted r, LATERAL to_jsonb(r) AS e;
    RETURN NULL;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.version_on_insert_rows() FROM PUBLIC, anon, authenticated;

DROP TRIGGER version_on_insert ON public.projects;
DROP TRIGGER version_on_insert ON public.sitemaps;
DROP TRIGGER version_on_insert ON public.wireframes;
DROP TRIGGER version_on_insert ON public.style_guides;
DROP FUNCTION public.version_on_insert();

CREATE TRIGGER version_on_insert AFTER INSERT ON public.projects
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION public.version_on_insert_rows();
CREATE TRIGGER version_on_insert AFTER INSERT ON public.sitemaps
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION public.version_on_insert_rows();
CREATE TRIGGER version_on_insert AFTER INSERT ON public.wireframes
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION public.version_on_insert_rows();
CREATE TRIGGER version_on_insert AFTER INSERT ON public.style_guides
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION public.version_on_insert_rows();

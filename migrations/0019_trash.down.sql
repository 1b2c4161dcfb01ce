-- Back to 0018: deletes are final again.

DROP FUNCTION public.restore_from_trash(UUID);
DROP TRIGGER "0_trash" ON public.style_guides;
DROP TRIGGER "0_trash" ON public.wireframes;
DROP TRIGGER "0_trash" ON public.sitemaps;
DROP FUNCTION public.trash_on_delete();
DROP TABLE public.trash;
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

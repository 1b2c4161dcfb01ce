-- The LISTEN/NOTIFY change feed: an AFTER ROW trigger on the six tables publishes
-- every committed change on channel `sitebuilder_changes` (NOTIFY delivers at
-- commit, in commit order). A NOTIFY payload must stay under 8000 bytes; a larger
-- change is stored in realtime_overflow and the payload only names its row, so a
-- 1 MB style guide is delivered in full and still in order.
--
-- The trigger is named to sort before PostgreSQL's foreign-key triggers
-- ("RI_ConstraintTrigger_…"), which fire in name order after it: a cascaded delete
-- then publishes the parent before its children, the order the write-ahead log has.

CREATE TABLE public.realtime_overflow (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    payload text NOT NULL
);
-- Row-level security with no policy and no grant: no user reads other people's changes here.
ALTER TABLE public.realtime_overflow ENABLE ROW LEVEL SECURITY;
CREATE INDEX idx_realtime_overflow_created_at ON public.realtime_overflow(created_at);

CREATE FUNCTION public.realtime_notify() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    -- Position of this change in its transaction; also keeps payloads distinct, since
    -- NOTIFY drops a payload identical to one already sent in the same transaction.
    seq integer := coalesce(nullif(current_setting('sitebuilder.change_seq', true), ''), '0')::integer + 1;
    payload text;
    overflow_id bigint;
BEGIN
    PERFORM set_config('sitebuilder.change_seq', seq::text, true);
    payload := json_build_object(
        'xid', pg_current_xact_id()::text,
        'seq', seq,
        'table', TG_TABLE_NAME,
        'op', TG_OP,
        'new', CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END,
        'old', CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
        'actor', auth.uid(),
        'at', clock_timestamp()
    )::text;
    IF octet_length(payload) > 7500 THEN
        INSERT INTO realtime_overflow (payload) VALUES (payload) RETURNING id INTO overflow_id;
        payload := json_build_object(
            'xid', pg_current_xact_id()::text, 'seq', seq, 'overflow', overflow_id
        )::text;
    END IF;
    PERFORM pg_notify('sitebuilder_changes', payload);
    RETURN NULL;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.realtime_notify() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER "0_realtime_notify" AFTER INSERT OR UPDATE OR DELETE ON public.projects
    FOR EACH ROW EXECUTE FUNCTION public.realtime_notify();
CREATE TRIGGER "0_realtime_notify" AFTER INSERT OR UPDATE OR DELETE ON public.sitemaps
    FOR EACH ROW EXECUTE FUNCTION public.realtime_notify();
CREATE TRIGGER "0_realtime_notify" AFTER INSERT OR UPDATE OR DELETE ON public.wireframes
    FOR EACH ROW EXECUTE FUNCTION public.realtime_notify();
CREATE TRIGGER "0_realtime_notify" AFTER INSERT OR UPDATE OR DELETE ON public.style_guides
    FOR EACH ROW EXECUTE FUNCTION public.realtime_notify();
CREATE TRIGGER "0_realtime_notify" AFTER INSERT OR UPDATE OR DELETE ON public.builder_sessions
    FOR EACH ROW EXECUTE FUNCTION public.realtime_notify();
CREATE TRIGGER "0_realtime_notify" AFTER INSERT OR UPDATE OR DELETE ON public.version_history
    FOR EACH ROW EXECUTE FUNCTION public.realtime_notify();

-- A TRUNCATE has no rows to publish: subscribers are told to resynchronise.
CREATE FUNCTION public.realtime_notify_truncate() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    seq integer := coalesce(nullif(current_setting('sitebuilder.change_seq', true), ''), '0')::integer + 1;
BEGIN
    PERFORM set_config('sitebuilder.change_seq', seq::text, true);
    PERFORM pg_notify('sitebuilder_changes', json_build_object(
        'xid', pg_current_xact_id()::text, 'seq', seq, 'table', TG_TABLE_NAME,
        'op', 'TRUNCATE', 'at', clock_timestamp()
    )::text);
    RETURN NULL;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.realtime_notify_truncate() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER "0_realtime_notify_truncate" AFTER TRUNCATE ON public.projects
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_notify_truncate();
CREATE TRIGGER "0_realtime_notify_truncate" AFTER TRUNCATE ON public.sitemaps
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_notify_truncate();
CREATE TRIGGER "0_realtime_notify_truncate" AFTER TRUNCATE ON public.wireframes
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_notify_truncate();
CREATE TRIGGER "0_realtime_notify_truncate" AFTER TRUNCATE ON public.style_guides
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_notify_truncate();
CREATE TRIGGER "0_realtime_notify_truncate" AFTER TRUNCATE ON public.builder_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_notify_truncate();
CREATE TRIGGER "0_realtime_notify_truncate" AFTER TRUNCATE ON public.version_history
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_notify_truncate();

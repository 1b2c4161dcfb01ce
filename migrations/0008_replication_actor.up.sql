-- Who made a change, for the logical-replication feed. The write-ahead log holds
-- rows, not the session's JWT claims, so a transaction made by a signed-in user
-- (request.jwt.claims set, as PostgREST and the gateway's RPCs do) also writes one
-- transactional logical decoding message with the user's id; the feed reads it
-- and attributes the transaction's changes. Once per transaction, and nothing at
-- all for anonymous writers (psql, jobs): a cost of one small WAL record.
--
-- The gateway enables these triggers when it runs the replication feed and the
-- NOTIFY triggers (0007, which carry the actor themselves) when it runs NOTIFY,
-- never both, so writers pay for one feed only.

CREATE FUNCTION public.realtime_actor() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    actor uuid := auth.uid();
BEGIN
    IF actor IS NOT NULL
       AND current_setting('sitebuilder.actor_sent', true) IS DISTINCT FROM actor::text THEN
        PERFORM set_config('sitebuilder.actor_sent', actor::text, true);
        PERFORM pg_logical_emit_message(true, 'sitebuilder.actor', actor::text);
    END IF;
    RETURN NULL;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.realtime_actor() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER "0_realtime_actor" AFTER INSERT OR UPDATE OR DELETE ON public.projects
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_actor();
CREATE TRIGGER "0_realtime_actor" AFTER INSERT OR UPDATE OR DELETE ON public.sitemaps
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_actor();
CREATE TRIGGER "0_realtime_actor" AFTER INSERT OR UPDATE OR DELETE ON public.wireframes
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_actor();
CREATE TRIGGER "0_realtime_actor" AFTER INSERT OR UPDATE OR DELETE ON public.style_guides
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_actor();
CREATE TRIGGER "0_realtime_actor" AFTER INSERT OR UPDATE OR DELETE ON public.builder_sessions
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_actor();
CREATE TRIGGER "0_realtime_actor" AFTER INSERT OR UPDATE OR DELETE ON public.version_history
    FOR EACH STATEMENT EXECUTE FUNCTION public.realtime_actor();

-- Off until a gateway starts the replication feed (pg_logical_emit_message also
-- needs wal_level = logical, which a NOTIFY-only server may not have).
ALTER TABLE public.projects DISABLE TRIGGER "0_realtime_actor";
ALTER TABLE public.sitemaps DISABLE TRIGGER "0_realtime_actor";
ALTER TABLE public.wireframes DISABLE TRIGGER "0_realtime_actor";
ALTER TABLE public.style_guides DISABLE TRIGGER "0_realtime_actor";
ALTER TABLE public.builder_sessions DISABLE TRIGGER "0_realtime_actor";
ALTER TABLE public.version_history DISABLE TRIGGER "0_realtime_actor";

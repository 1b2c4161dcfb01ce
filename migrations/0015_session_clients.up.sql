-- A builder session's client (the address and user agent of the connection that
-- started it) is its owner's alone.
--
-- Members of a project see each other's sessions (their steps and progress), and
-- row-level security cannot hide columns. So the two columns move to a table only the
-- session's owner can read: a trigger takes them off every row written to
-- builder_sessions, which keeps its columns (the seed's shape, `select('*')` included)
-- but always NULL there, so no snapshot, change, Supabase record, RPC result or direct
-- query of another member carries them. The owner reads them in
-- builder_session_clients (and in the session RPCs' results).

CREATE TABLE public.builder_session_clients (
    -- Deferred: the trigger writes this row before its session's row exists.
    session_id UUID PRIMARY KEY
        REFERENCES public.builder_sessions(id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    user_id UUID NOT NULL,
    ip_address INET,
    user_agent TEXT
);

ALTER TABLE public.builder_session_clients ENABLE ROW LEVEL SECURITY;
CREATE POLICY "Only the session's owner reads its client" ON public.builder_session_clients
    FOR SELECT TO authenticated USING (user_id = (SELECT auth.uid()));
GRANT SELECT ON public.builder_session_clients TO authenticated;

CREATE FUNCTION public.keep_session_client_private() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    IF NEW.ip_address IS NOT NULL OR NEW.user_agent IS NOT NULL THEN
        INSERT INTO builder_session_clients AS c (session_id, user_id, ip_address, user_agent)
        VALUES (NEW.id, NEW.user_id, NEW.ip_address, NEW.user_agent)
        ON CONFLICT (session_id) DO UPDATE SET
            user_id = EXCLUDED.user_id,
            ip_address = coalesce(EXCLUDED.ip_address, c.ip_address),
            user_agent = coalesce(EXCLUDED.user_agent, c.user_agent);
        NEW.ip_address := NULL;
        NEW.user_agent := NULL;
    END IF;
    RETURN NEW;
END;
$$;

REVOKE EXECUTE ON FUNCTION public.keep_session_client_private() FROM PUBLIC, anon, authenticated;

CREATE TRIGGER keep_session_client_private BEFORE INSERT OR UPDATE ON public.builder_sessions
    FOR EACH ROW EXECUTE FUNCTION public.keep_session_client_private();

INSERT INTO public.builder_session_clients (session_id, user_id, ip_address, user_agent)
SELECT id, user_id, ip_address, user_agent FROM public.builder_sessions
WHERE ip_address IS NOT NULL OR user_agent IS NOT NULL;
UPDATE public.builder_sessions SET ip_address = NULL, user_agent = NULL
WHERE ip_address IS NOT NULL OR user_agent IS NOT NULL;

-- Which request made a change, so the gateway can hand the request's `ref` back on
-- the `change` frames of the connection that sent it (an editor reconciles its
-- optimistic UI with them). A gateway RPC's transaction sets the transaction-local
-- `sitebuilder.request` to '<gateway instance>:<connection id>:<ref as JSON>'; both
-- feeds carry it beside the acting user. Writers that do not set it (psql, jobs,
-- PostgREST) carry none. It is a hint for delivery, not an authority: any session
-- may set it, so the gateway also requires the change's actor to be the
-- connection's user.
--
-- NOTIFY (0007): every payload gains `request` (in the overflow row too, since the
-- whole payload is stored there).

CREATE OR REPLACE FUNCTION public.realtime_notify() RETURNS trigger
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
        'request', nullif(current_setting('sitebuilder.request', true), ''),
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

-- Replication (0008): the transactional logical message now carries both, as JSON
-- {"actor": uuid | null, "request": text | null}, written when either is known. The
-- statement trigger writes it again whenever what it would say differs from what it
-- last wrote in this transaction (a request tag or user set after an earlier
-- statement still arrives); the feed applies the transaction's last message to all
-- its changes, and a gateway RPC sets both before its first statement.

CREATE OR REPLACE FUNCTION public.realtime_actor() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    actor uuid := auth.uid();
    request text := nullif(current_setting('sitebuilder.request', true), '');
    content text;
BEGIN
    IF actor IS NOT NULL OR request IS NOT NULL THEN
        content := json_build_object('actor', actor, 'request', request)::text;
        IF current_setting('sitebuilder.origin_sent', true) IS DISTINCT FROM content THEN
            PERFORM set_config('sitebuilder.origin_sent', content, true);
            PERFORM pg_logical_emit_message(true, 'sitebuilder.actor', content);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

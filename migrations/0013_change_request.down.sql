-- Back to 0007's NOTIFY payload and 0008's bare-uuid actor message.

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

CREATE OR REPLACE FUNCTION public.realtime_actor() RETURNS trigger
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

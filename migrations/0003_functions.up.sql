-- The schema document's utility functions, with its security holes closed:
-- create_version_history and cleanup_old_sessions are no longer callable by users
-- (they would let anyone forge history or purge others' sessions), and
-- get_session_analytics answers a signed-in user only about themselves.

-- True when the statement runs on behalf of an end user (the gateway's
-- SET LOCAL ROLE authenticated + request.jwt.claims, or PostgREST), false for the
-- gateway's own or an operator's connection. SECURITY INVOKER so current_user is
-- the caller's role.
CREATE FUNCTION public.acting_as_user() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
        SELECT auth.uid() IS NOT NULL OR current_user IN ('anon', 'authenticated')
    $$;

CREATE FUNCTION public.update_session_duration() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- Recomputed whenever either end moves, and cleared when a session is reopened,
    -- so duration never disagrees with started_at and ended_at.
    IF NEW.ended_at IS NULL THEN
        NEW.duration := NULL;
    ELSE
        NEW.duration := EXTRACT(EPOCH FROM (NEW.ended_at - NEW.started_at))::INTEGER;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER update_session_duration BEFORE INSERT OR UPDATE ON public.builder_sessions
    FOR EACH ROW EXECUTE FUNCTION public.update_session_duration();

CREATE FUNCTION public.get_next_version(entity_type_param TEXT, entity_id_param UUID)
RETURNS INTEGER
    LANGUAGE plpgsql
    SET search_path = public, pg_temp
    AS $$
DECLARE
    next_version INTEGER;
BEGIN
    SELECT COALESCE(MAX(version_number), 0) + 1 INTO next_version
    FROM version_history
    WHERE entity_type = entity_type_param AND entity_id = entity_id_param;

    RETURN next_version;
END;
$$;

-- Serialises numbering per entity for the rest of the transaction, then returns the
-- next number. Every writer of version_history goes through here, which is what
-- makes "1..N with no gap and no duplicate" hold under concurrent writers.
CREATE FUNCTION public.claim_next_version(entity_type_param TEXT, entity_id_param UUID)
RETURNS INTEGER
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(
        hashtextextended('version_history:' || entity_type_param || ':' || entity_id_param::text, 0)
    );
    RETURN get_next_version(entity_type_param, entity_id_param);
END;
$$;

CREATE FUNCTION public.create_version_history(
    entity_type_param TEXT,
    entity_id_param UUID,
    user_id_param UUID,
    changes_param JSONB DEFAULT '{}'::jsonb,
    data_param JSONB DEFAULT '{}'::jsonb,
    message_param TEXT DEFAULT NULL,
    is_major_param BOOLEAN DEFAULT FALSE
)
RETURNS UUID
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    next_version INTEGER;
    version_id UUID;
BEGIN
    next_version := claim_next_version(entity_type_param, entity_id_param);

    INSERT INTO version_history (
        entity_type, entity_id, version_number, user_id,
        changes, data, message, is_major
    ) VALUES (
        entity_type_param, entity_id_param, next_version, user_id_param,
        changes_param, data_param, message_param, is_major_param
    ) RETURNING id INTO version_id;

    RETURN version_id;
END;
$$;

-- Fixed: most_common_step is the mode of current_step over the window (ties go to
-- the alphabetically first step), not whichever active session came first, and
-- avg_duration averages ended sessions only. SECURITY INVOKER: row-level security
-- decides what a user may count, and a user may only ask about themselves.
CREATE FUNCTION public.get_session_analytics(user_id_param UUID, days_param INTEGER DEFAULT 30)
RETURNS TABLE (
    total_sessions BIGINT,
    avg_duration NUMERIC,
    completed_sessions BIGINT,
    most_common_step TEXT,
    sessions_per_day NUMERIC
)
    LANGUAGE plpgsql
    STABLE
    SET search_path = public, pg_temp
    AS $$
BEGIN
    IF acting_as_user() AND user_id_param IS DISTINCT FROM auth.uid() THEN
        RAISE EXCEPTION 'get_session_analytics answers only for the signed-in user'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF days_param IS NULL OR days_param < 1 THEN
        RAISE EXCEPTION 'days_param must be 1 or more, got %', days_param
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    RETURN QUERY
    WITH in_window AS (
        SELECT s.status, s.current_step, s.duration, s.ended_at
        FROM builder_sessions s
        WHERE s.user_id = user_id_param
          AND s.created_at >= NOW() - make_interval(days => days_param)
    )
    SELECT
        COUNT(*) AS total_sessions,
        AVG(w.duration) FILTER (WHERE w.ended_at IS NOT NULL)::NUMERIC AS avg_duration,
        COUNT(*) FILTER (WHERE w.status = 'completed') AS completed_sessions,
        (
            SELECT m.current_step FROM in_window m
            GROUP BY m.current_step
            ORDER BY COUNT(*) DESC, m.current_step ASC
            LIMIT 1
        ) AS most_common_step,
        COUNT(*) / days_param::NUMERIC AS sessions_per_day
    FROM in_window w;
END;
$$;

CREATE FUNCTION public.cleanup_old_sessions()
RETURNS INTEGER
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path = public, pg_temp
    AS $$
DECLARE
    deleted_count INTEGER;
BEGIN
    DELETE FROM builder_sessions
    WHERE created_at < NOW() - INTERVAL '30 days'
    AND status IN ('completed', 'cancelled');

    GET DIAGNOSTICS deleted_count = ROW_COUNT;
    RETURN deleted_count;
END;
$$;

-- Functions are executable by PUBLIC by default, and Supabase also grants new
-- functions to anon and authenticated explicitly: revoke from all three.
REVOKE EXECUTE ON FUNCTION public.claim_next_version(TEXT, UUID) FROM PUBLIC, anon, authenticated;
REVOKE EXECUTE ON FUNCTION public.create_version_history(TEXT, UUID, UUID, JSONB, JSONB, TEXT, BOOLEAN)
    FROM PUBLIC, anon, authenticated;
REVOKE EXECUTE ON FUNCTION public.cleanup_old_sessions() FROM PUBLIC, anon, authenticated;

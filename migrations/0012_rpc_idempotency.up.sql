-- Idempotency keys of RPC requests: a request that carries `idempotency_key` claims
-- (user_id, key) in the same transaction as its writes and stores its result there
-- before committing, so a repeat of the key (after a reconnect, say) finds the row
-- and is answered with that result instead of running again. A request that fails
-- rolls back, claim included, and may be retried with the same key. A repeat that
-- arrives while the first is still running waits for it on the primary key.
--
-- Rows are written as the user (row-level security: only their own) and removed by
-- the gateway, as the table's owner, once older than SITEBUILDER_RPC_IDEMPOTENCY_TTL_SECONDS.
-- Users may insert only the identifying columns (created_at is always now(), so no
-- row outlives the retention) and update only the result.

CREATE TABLE public.rpc_idempotency (
    user_id UUID NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    key TEXT NOT NULL CHECK (char_length(key) BETWEEN 1 AND 128),
    method TEXT NOT NULL,
    params_hash TEXT NOT NULL,
    result JSONB,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idx_rpc_idempotency_created_at ON public.rpc_idempotency(created_at);

ALTER TABLE public.rpc_idempotency ENABLE ROW LEVEL SECURITY;

CREATE POLICY "Users can view their idempotency keys" ON public.rpc_idempotency
    FOR SELECT TO authenticated
    USING (user_id = (SELECT auth.uid()));
CREATE POLICY "Users can claim their idempotency keys" ON public.rpc_idempotency
    FOR INSERT TO authenticated
    WITH CHECK (user_id = (SELECT auth.uid()));
CREATE POLICY "Users can store the results of their idempotency keys" ON public.rpc_idempotency
    FOR UPDATE TO authenticated
    USING (user_id = (SELECT auth.uid()))
    WITH CHECK (user_id = (SELECT auth.uid()));

GRANT SELECT ON public.rpc_idempotency TO authenticated;
GRANT INSERT (user_id, key, method, params_hash) ON public.rpc_idempotency TO authenticated;
GRANT UPDATE (result) ON public.rpc_idempotency TO authenticated;

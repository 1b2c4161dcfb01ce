-- The table's policies and grants go with it.
DROP TABLE public.rpc_idempotency;

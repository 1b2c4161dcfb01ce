"""The RPC methods: each runs as the calling user in PostgreSQL, where row-level
security decides what it may read and write, not Python.

One module per method group (their params are protocol's, in protocol/rpc_<group>.py);
`call` answers an `rpc` frame, `methods` is every method the gateway serves.
"""

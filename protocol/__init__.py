"""The gateway's websocket protocol: typed frames and their encoding, free of I/O."""

"""Redis-backed state: key building, the prediction cache, the feature store and its real-time stream worker, call coalescing, the embedded Redis and the runtime that owns the clients."""

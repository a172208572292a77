"""Runtime: loading programs, installing rules, the cache agent (later work)."""

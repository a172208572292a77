"""The flow cache agent: slow path in chain 1, cache rules in chain 0.

``core`` holds the agent loop (events, eviction, policy update, restart
adoption); ``seams`` the protocols it needs of an installer and a slow path,
with ``slow_path_model`` an in-memory slow path for tests without root;
``priorities`` chain 0's priority plan; ``counters`` the one table of its
metrics and ``metrics`` their Prometheus exposition and the ``agent status`` reader.
"""

"""The flow cache agent: slow path in chain 1, cache rules in chain 0.

``core`` holds the agent loop (events, eviction, policy update, restart
adoption); ``metrics`` its Prometheus exposition and the ``agent status`` reader.
"""

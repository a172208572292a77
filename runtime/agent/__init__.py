"""The agents: the flow cache (slow path in chain 1, cache rules in chain 0) and
the slow path alone on a netkit device.

``loop`` holds what every agent does over time (poll, reload, stop);
``core`` the flow cache agent (events, eviction, policy update, restart
adoption); ``netkit_agent`` the agent on a netkit device (its pinned link,
updates behind it, adoption on restart); ``seams`` the protocols they need of
an installer and a slow path, with ``slow_path_model`` an in-memory slow path
for tests without root; ``priorities`` chain 0's priority plan; ``counters``
the one table of their metrics and ``metrics`` their Prometheus exposition and
the ``agent status`` reader.
"""

"""Backends: targets the IR is lowered to.

* ``backends.bpf``: IR -> BPF C for the slow path (entry point ``backends.bpf.lower``),
  its classifier tables and the ABI the generated program shares with the loader.
* ``backends.flower``: IR -> tc-flower filters (entry point ``backends.flower.lower``),
  the flower key registry, the rule model, text forms and NIC conformance.
* ``nic_profile``: what a NIC can offload, as data (``profiles/*.toml``).
"""

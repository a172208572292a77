"""The tc-flower backend: IR -> flower filters for a NIC profile.

``lower(policy, profile)`` is the entry point (``lowering``); ``rules`` is the
flower rule model (filters, keys, actions, cookies) with flower's semantics,
``text`` its ``tc -j`` and ``tc -batch`` forms.
"""

from backends.flower.lowering import lower

__all__ = ["lower"]

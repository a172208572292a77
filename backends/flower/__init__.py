"""The tc-flower backend: IR -> flower filters for a NIC profile.

``lower(policy, profile)`` is the entry point (``lowering``); ``rules`` is the
flower rule model (filters, keys, actions, cookies) with flower's semantics,
``text`` its ``tc -j`` and ``tc -batch`` forms.
"""

from __future__ import annotations

from typing import Any

__all__ = ["lower"]


def __getattr__(name: str) -> Any:
    # ``lower`` is looked up on first use, not imported here: backends.nic_profile
    # imports backends.flower.rules, which runs this file, and lowering imports
    # backends.nic_profile, so an eager import here made the two modules' import
    # order matter.
    if name == "lower":
        from backends.flower.lowering import lower

        return lower
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

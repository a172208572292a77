"""A token bucket: at most ``rate`` events per second, up to one second's worth at once.

The NIC model's insertion limit and the cache's own limit are the same rule.
"""

from __future__ import annotations


class TokenBucket:
    """Admit events at ``rate`` per second (None: every event), starting full."""

    def __init__(self, rate: float | None, now: float) -> None:
        self.rate = rate
        self.tokens = rate if rate is not None else 0.0
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one (refilled for the time since the last call)."""
        if self.rate is None:
            return True
        self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

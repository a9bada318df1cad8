"""Pure timing policies: retry delays and restart intensity. No I/O, no trio."""

from __future__ import annotations

import random
from collections import deque


def delay(tries: int, *, base_seconds: float, max_seconds: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter for the ``tries``-th retry (1-based).

    The delay lies in ``[d/2, d]`` where ``d = min(max, base * 2**(tries-1))``:
    growing, never zero, and spread so that many failures do not retry in step.
    """
    exponent = min(max(0, tries - 1), 64)  # 2**64 * base is past any cap; no overflow
    capped = min(max_seconds, base_seconds * 2.0**exponent)
    return capped / 2 + rng.uniform(0, capped / 2)


class Intensity:
    """At most ``limit`` restarts in any ``window_seconds`` (OTP's intensity/period).

    Args:
        limit: restarts allowed within the window.
        window_seconds: the sliding window.
    """

    def __init__(self, limit: int, window_seconds: float) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self._times: deque[float] = deque()

    def allow(self, now: float) -> bool:
        """Record a restart at ``now``; False if it goes past the limit."""
        while self._times and now - self._times[0] > self.window_seconds:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self.limit

    def __len__(self) -> int:
        return len(self._times)


class TokenBucket:
    """``rate`` events per second on average, ``burst`` at once (a rate limit).

    Args:
        rate: tokens added per second.
        burst: the most tokens held.
        now: the time the bucket starts, full.
    """

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        """Spend one token at ``now``; False when none is left (over the limit)."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

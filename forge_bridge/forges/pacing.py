"""Space a forge's calls: a token bucket that lets a task's handful of writes (labels, the status comment, a
reaction) go at once and holds sustained writing to one per `interval`; and, near the end of a rate-limit quota,
what remains spread until its reset.

GitHub's guidance on secondary rate limits is about sustained bulk writes (about one a second); a fixed sleep
before every write, as PyGithub's `seconds_between_writes` does, made each task wait several seconds before its
agent started."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

BURST = 10
SLOW_DOWN_BELOW = 0.05  # of the quota: from there on, calls are spread out until the reset
MAX_PACE = 60.0


def quota_pause(remaining: int, limit: int, reset_at: float, now: float) -> float:
    """Seconds to wait before the next call: none while more than SLOW_DOWN_BELOW of the quota is left, then the
    time to the reset shared among the calls that remain (at most MAX_PACE)."""
    if limit <= 0 or remaining > limit * SLOW_DOWN_BELOW:
        return 0.0
    return min(max((reset_at - now) / max(remaining, 1), 0.0), MAX_PACE)


class WriteBucket:
    def __init__(self, interval: float, *, burst: int = BURST, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval, self.burst, self.clock, self.sleep = interval, burst, clock, sleep
        self.tokens, self.stamp = float(burst), clock()
        self.lock = threading.Lock()

    def wait(self) -> float:
        """Take one write's token, sleeping until there is one; returns how long it slept."""
        if self.interval <= 0:
            return 0.0
        with self.lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) / self.interval)
            self.stamp = now
            self.tokens -= 1
            pause = max(0.0, -self.tokens * self.interval)
        if pause:
            self.sleep(pause)
        return pause

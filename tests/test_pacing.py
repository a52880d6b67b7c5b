"""The write bucket: a task's burst of writes goes at once; sustained writing is held to one per interval."""
from __future__ import annotations

from forge_bridge.forges.pacing import WriteBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_a_burst_goes_at_once_and_then_one_write_per_interval():
    clock = Clock()
    bucket = WriteBucket(1.0, burst=5, clock=clock, sleep=clock.sleep)
    assert [bucket.wait() for _ in range(5)] == [0.0] * 5   # a task's labels, comment and reaction: no wait
    assert bucket.wait() == 1.0 and bucket.wait() == 1.0     # past the burst: one a second
    clock.now += 10                                           # quiet for a while: the burst is back
    assert [bucket.wait() for _ in range(5)] == [0.0] * 5


def test_no_interval_never_waits():
    assert WriteBucket(0).wait() == 0.0


def test_near_the_end_of_a_quota_the_rest_is_spread_until_the_reset():
    from forge_bridge.forges.pacing import MAX_PACE, quota_pause

    assert quota_pause(500, 1000, reset_at=160.0, now=100.0) == 0.0    # plenty left
    assert quota_pause(30, 1000, reset_at=160.0, now=100.0) == 2.0     # 60 s shared by 30 calls
    assert quota_pause(0, 1000, reset_at=100.0 + 10 * MAX_PACE, now=100.0) == MAX_PACE
    assert quota_pause(10, 1000, reset_at=90.0, now=100.0) == 0.0      # the reset has passed
    assert quota_pause(0, 0, reset_at=160.0, now=100.0) == 0.0         # no limit sent

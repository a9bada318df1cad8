"""Unit tests for ``grandhotel.backoff``: retry delays and restart intensity."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grandhotel import backoff


class EdgeRandom(random.Random):
    """A random source pinned to one end of every range (``low`` or high)."""

    def __init__(self, *, low: bool) -> None:
        super().__init__(0)
        self.low = low

    def uniform(self, a: float, b: float) -> float:
        return a if self.low else b


def _cap(tries: int, base: float, most: float) -> float:
    return min(most, base * 2.0 ** max(0, tries - 1))


@given(
    tries=st.integers(min_value=1, max_value=60),
    base=st.floats(min_value=0.001, max_value=10),
    most=st.floats(min_value=0.001, max_value=600),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_lies_between_half_and_all_of_the_cap(
    tries: int, base: float, most: float, seed: int
) -> None:
    d = _cap(tries, base, most)
    got = backoff.delay(tries, base_seconds=base, max_seconds=most, rng=random.Random(seed))
    assert d / 2 <= got <= d


@pytest.mark.parametrize(
    ("low", "expected"), [(True, [0.5, 1, 2, 4, 4, 4]), (False, [1, 2, 4, 8, 8, 8])]
)
def test_delay_doubles_then_stays_at_the_cap(low: bool, expected: list[float]) -> None:
    rng = EdgeRandom(low=low)
    got = [backoff.delay(n, base_seconds=1, max_seconds=8, rng=rng) for n in range(1, 7)]
    assert got == expected


@given(st.integers(min_value=1, max_value=200))
def test_the_cap_never_shrinks(tries: int) -> None:
    high = EdgeRandom(low=False)
    now = backoff.delay(tries, base_seconds=0.05, max_seconds=5, rng=high)
    later = backoff.delay(tries + 1, base_seconds=0.05, max_seconds=5, rng=high)
    assert now <= later <= 5


def test_the_zeroth_try_waits_like_the_first() -> None:
    high = EdgeRandom(low=False)
    assert backoff.delay(0, base_seconds=0.5, max_seconds=9, rng=high) == 0.5


def test_delay_is_reproducible_with_a_seed() -> None:
    def run() -> list[float]:
        rng = random.Random(7)
        return [backoff.delay(n, base_seconds=1, max_seconds=60, rng=rng) for n in range(1, 9)]

    assert run() == run()


def test_a_long_outage_still_gives_a_capped_delay() -> None:
    # vault.land and the notifier count failures without bound and pass them here.
    got = backoff.delay(5000, base_seconds=0.05, max_seconds=5, rng=random.Random(1))
    assert 2.5 <= got <= 5


def test_intensity_allows_up_to_the_limit_within_the_window() -> None:
    intensity = backoff.Intensity(limit=3, window_seconds=5)
    assert [intensity.allow(t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert intensity.allow(3.0) is False
    assert len(intensity) == 4


def test_intensity_forgets_restarts_older_than_the_window() -> None:
    intensity = backoff.Intensity(limit=2, window_seconds=5)
    assert intensity.allow(0.0)
    assert intensity.allow(1.0)
    assert intensity.allow(5.5)  # 0.0 is more than 5 s ago
    assert len(intensity) == 2


def test_intensity_counts_a_restart_exactly_one_window_ago() -> None:
    intensity = backoff.Intensity(limit=1, window_seconds=5)
    assert intensity.allow(0.0)
    assert intensity.allow(5.0) is False
    assert intensity.allow(10.5)


def test_intensity_slides_over_a_steady_trickle() -> None:
    intensity = backoff.Intensity(limit=3, window_seconds=5)
    assert all(intensity.allow(t * 2.0) for t in range(100))  # one every 2 s: <= 3 per 5 s
    assert len(intensity) == 3


def test_intensity_with_limit_zero_refuses_the_first_restart() -> None:
    assert backoff.Intensity(limit=0, window_seconds=5).allow(0.0) is False

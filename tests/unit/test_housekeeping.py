"""The collector's pauses are counted and timed per generation."""

from __future__ import annotations

import gc

from grandhotel import housekeeping


def test_every_collection_is_counted_in_its_generation() -> None:
    pauses = housekeeping.Pauses()
    gc.callbacks.append(pauses)
    try:
        gc.collect(0)
        gc.collect(2)
        gc.collect(2)
    finally:
        gc.callbacks.remove(pauses)
    report = pauses.report()
    assert report["gen0"]["collections"] >= 1
    assert report["gen2"]["collections"] >= 2
    assert report["gen2"]["total_ms"] >= report["gen2"]["longest_ms"] > 0
    assert report["thresholds"] == list(gc.get_threshold())


def test_a_collection_outside_the_watch_is_not_counted() -> None:
    pauses = housekeeping.Pauses()
    gc.collect()
    assert all(pauses.report()[f"gen{n}"]["collections"] == 0 for n in range(3))

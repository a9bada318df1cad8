"""Housekeeping: the server process's garbage collector, tuned and watched.

Theory of operation
-------------------
CPython's cyclic collector stops the whole process while it runs, and the hotel
is one thread: every live guest waits for it. A young-generation collection is
cheap; a full one walks every object the hotel holds (tens of thousands of
butlers, notebooks and connections) and is the longest pause a guest can see.
``tune`` freezes what start-up made (it lives forever, so no collection needs
to look at it again) and sets the thresholds from the config; ``Pauses``
measures every collection through ``gc.callbacks`` so that operators (``GET
/stats``) and the benchmark see what the collector costs instead of guessing.
"""

from __future__ import annotations

import gc
import time
from typing import Any

GENERATIONS = 3


class Pauses:
    """Count and time the collector's runs, per generation."""

    def __init__(self) -> None:
        self.count = [0] * GENERATIONS
        self.seconds = [0.0] * GENERATIONS
        self.longest = [0.0] * GENERATIONS
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        """The ``gc.callbacks`` hook."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = int(info.get("generation", GENERATIONS - 1))
        self.count[generation] += 1
        self.seconds[generation] += took
        self.longest[generation] = max(self.longest[generation], took)

    def report(self) -> dict[str, Any]:
        """Collections, their total and longest pause (ms), per generation."""
        return {
            f"gen{n}": {
                "collections": self.count[n],
                "total_ms": round(self.seconds[n] * 1000, 1),
                "longest_ms": round(self.longest[n] * 1000, 2),
            }
            for n in range(GENERATIONS)
        } | {"frozen_objects": gc.get_freeze_count(), "thresholds": list(gc.get_threshold())}


pauses = Pauses()
"""The process's one collector, watched once (``tune`` installs the hook)."""


def tune(gen0: int, gen1: int, gen2: int) -> None:
    """Freeze what exists now, set the thresholds, and start timing collections."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0, gen1, gen2)
    if pauses not in gc.callbacks:
        gc.callbacks.append(pauses)

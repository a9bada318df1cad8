"""Fault injection, off by default, for tests and the benchmark. Never for production.

Two settings drive it (see ``config.py``): ``chaos_butler_crash_rate`` makes a
butler raise ``ChaosCrash`` on a random share of its reports, and
``chaos_exit_at`` ends the whole process abruptly (``os._exit``, as a SIGKILL
would: no cleanup, no flush) the first time the laundry reaches a named point.
"""

from __future__ import annotations

import logging
import os
from typing import Final

logger = logging.getLogger(__name__)

EXIT_POINTS: Final = frozenset({"after_claim", "before_complete", "after_complete"})
"""Where ``chaos_exit_at`` may end the process: right after a job is claimed;
after the service returned but before its completion is written; after the
completion committed but before the butler hears of it."""
EXIT_CODE: Final = 86


class ChaosCrash(RuntimeError):
    """Raised on purpose by the fault-injection setting ``chaos_butler_crash_rate``."""


def exit_if(point: str, configured: str) -> None:
    """End the process at once if ``configured`` names ``point``."""
    if configured == point:
        logger.critical("chaos: exiting abruptly at %s", point)
        logging.shutdown()
        os._exit(EXIT_CODE)

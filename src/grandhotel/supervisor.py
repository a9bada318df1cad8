"""The butler manager: hires butlers, replaces sick ones, and lets them retire.

Theory of operation
-------------------
Every ticket gets one task in the supervisor's nursery (``_tend``). The task
registers the ticket's line in the directory *before* it is started (``hire`` is
synchronous), runs butler shifts (``butler.serve``) one after another, and
removes the entry in a ``finally`` however it ends. So an entry exists exactly
while a butler is on duty, and one ticket's trouble never reaches the nursery:
``_tend`` catches what a butler raises, so no sibling is cancelled.

Restart policy, per butler ("transient" children in OTP's terms): a butler that
returns has finished its ticket and is not replaced; one that raises is replaced
after a jittered, growing backoff, unless it raised more than
``butler_restart_limit`` times within ``butler_restart_window_seconds``. Then the
ticket is failed with a reason (``give_up``: the safe's fenced write, the job
attempt cancelled) and its watchers get ``failed``. Elixir applies its default
3-in-5-s limit to the whole supervisor, which would take every butler down after
four crashes anywhere; here the limit is per butler, and the hotel-wide count is
only reported (``restarts``).

A replacement starts from the line: last good notebook, same watchers, same
seq, the report in hand redelivered at most ``butler_redeliveries`` times.

Context: trio gives a new task a copy of the context of the task that spawned
it, and ``hire`` is called from the front desk's request handler, whose context
holds quart's request (its headers, body and app context). A butler lives far
longer than that request, so it is spawned in the supervisor's own context
instead: with the request's, every queued ticket kept its request alive, about
60 more objects for each young collection to walk (the intake benchmark: 238
young collections in 10 s against 107).
"""

from __future__ import annotations

import contextvars
import logging
import random
from collections.abc import Awaitable, Callable

import trio

from grandhotel import backoff, butler, chaos, config, directory, tickets

logger = logging.getLogger(__name__)

GiveUp = Callable[[butler.Line, str], Awaitable[None]]
"""Ends a ticket whose butlers keep failing (writes the safe, tells the guests)."""


class Supervisor:
    """Hires one supervised butler per ticket.

    Args:
        settings: the hotel's config.
        lines: the directory the supervisor keeps true.
        give_up: called once when a ticket's butlers crashed past the limit.
        rng: randomness for jitter and fault injection (seed it in tests).
    """

    def __init__(
        self,
        settings: config.HotelConfig,
        lines: directory.Directory[butler.Line],
        give_up: GiveUp,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.lines = lines
        self.give_up = give_up
        self.rng = rng or random.Random()
        self.hires = 0
        """Butlers hired since start."""
        self.restarts = 0
        """Butler restarts since start-up, hotel-wide (operators read it)."""
        self.given_up = 0
        self.alarms = 0
        """How often the hotel-wide restart rate went over the alarm threshold."""
        self._recent = backoff.Intensity(settings.restart_alarm_per_minute, 60.0)
        self._alarmed_at = -float("inf")
        self._nursery: trio.Nursery | None = None
        self._context: contextvars.Context | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the butlers' nursery open until cancelled.

        Cancellation: every butler is cancelled with it; their lines retire.
        """
        self._context = contextvars.copy_context()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def hire(self, notebook: tickets.Notebook, token_hashes: list[bytes]) -> butler.Line:
        """Put a butler on duty for ``notebook``'s ticket; return its line.

        The directory entry exists when this returns. If the ticket already has
        a butler on duty (the laundry may claim a new job before the front desk
        has hired), that butler's line is returned and nothing else happens.
        """
        if self._nursery is None or self._context is None:
            raise RuntimeError("the supervisor is not running")
        existing = self.lines.lookup(notebook.ticket_id)
        if existing is not None:
            return existing
        line = butler.Line(
            notebook,
            token_hashes,
            inbox_size=self.settings.butler_inbox_size,
            watcher_buffer=self.settings.watcher_buffer_events,
        )
        self.lines.register(notebook.ticket_id, line)
        self.hires += 1
        # The butler's context is a copy of the supervisor's, not the caller's.
        self._context.run(self._start, self._nursery, line)
        return line

    def _start(self, nursery: trio.Nursery, line: butler.Line) -> None:
        nursery.start_soon(self._tend, line, name=f"butler {line.ticket_id}")

    @property
    def on_duty(self) -> int:
        """Butlers on duty now."""
        return len(self.lines)

    async def _tend(self, line: butler.Line) -> None:
        intensity: backoff.Intensity | None = None  # made at the first crash, if any
        try:
            while True:
                try:
                    await butler.serve(
                        line, crash_rate=self.settings.chaos_butler_crash_rate, rng=self.rng
                    )
                    return
                except Exception as crash:  # noqa: BLE001 - any butler bug is a sick butler
                    if intensity is None:
                        intensity = backoff.Intensity(
                            self.settings.butler_restart_limit,
                            self.settings.butler_restart_window_seconds,
                        )
                    if not await self._replace(line, intensity, crash):
                        return
        finally:
            self.lines.unregister(line.ticket_id, line)
            line.retire()

    @property
    def restarts_last_minute(self) -> int:
        """Hotel-wide butler restarts within the last minute (as last recorded)."""
        return len(self._recent)

    def _count_restart(self) -> None:
        self.restarts += 1
        now = trio.current_time()
        if not self._recent.allow(now) and now - self._alarmed_at > 60.0:
            self._alarmed_at = now
            self.alarms += 1
            logger.error(
                "ALARM: %d butler restarts in the last minute (threshold %d); "
                "every butler keeps working, but something is wrong",
                len(self._recent), self.settings.restart_alarm_per_minute,
            )  # fmt: skip

    async def _replace(
        self, line: butler.Line, intensity: backoff.Intensity, crash: Exception
    ) -> bool:
        """Decide about a sick butler; True once a replacement may start."""
        self._count_restart()
        logger.warning(
            "butler of ticket %s fell over (%s); restart %d",
            line.ticket_id, type(crash).__name__, len(intensity) + 1,
            exc_info=not isinstance(crash, chaos.ChaosCrash),
            extra={"ticket": line.ticket_id},
        )  # fmt: skip
        self._drop_poison(line)
        if line.notebook.status.terminal:
            return False  # the ending was published without a butler: nothing left to do
        if not intensity.allow(trio.current_time()):
            self.given_up += 1
            reason = (
                f"butler crashed {len(intensity)} times within "
                f"{self.settings.butler_restart_window_seconds:g}s: {type(crash).__name__}"
            )
            try:
                await self.give_up(line, reason)
            except Exception:
                # One ticket must never take the nursery down.
                # The ticket stays unfinished in the safe; the next start hires it again.
                logger.exception("could not fail ticket %s", line.ticket_id)
            return False
        await trio.sleep(
            backoff.delay(
                len(intensity),
                base_seconds=self.settings.butler_restart_backoff_seconds,
                max_seconds=self.settings.butler_restart_backoff_max_seconds,
                rng=self.rng,
            )
        )
        return True

    def _drop_poison(self, line: butler.Line) -> None:
        """Give up redelivering a report that keeps crashing butlers.

        A progress or status report is dropped (the next one carries the whole
        state anyway). An ending is never dropped: the safe already holds it, so
        it is published to the watchers directly, without a butler.
        """
        line.in_hand_tries += 1
        if line.in_hand is None or line.in_hand_tries <= self.settings.butler_redeliveries:
            return
        if isinstance(line.in_hand, tickets.Ended):
            try:
                line.publish(*tickets.advance(line.notebook, line.in_hand, butler.utc_now()))
            except Exception:
                logger.exception("could not publish the ending of ticket %s", line.ticket_id)
        else:
            logger.error(
                "dropping a report that crashed %d butlers of ticket %s: %r",
                line.in_hand_tries, line.ticket_id, line.in_hand,
            )  # fmt: skip
        line.in_hand = None
        line.in_hand_tries = 0

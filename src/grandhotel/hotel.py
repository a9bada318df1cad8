"""The hotel: the one root nursery that starts, wires and stops everything.

Start-up order: migrate the safe; open the butlers' quarters (supervisor); hire
a butler for every unfinished ticket in the safe; start the heartbeat and the
laundry; open the doors (hypercorn on the hotel's own trio run). ``run`` reports
the bound addresses through ``task_status`` once the doors are open.

Stopping (``stop``, called on SIGINT/SIGTERM) drains in order: ``/readyz`` turns
503 and the laundry stops claiming; running attempts get
``shutdown_grace_seconds`` to finish; the rest are cancelled and their jobs
released back to ``available`` (not counted as failures); butlers retire, which
closes every watcher with 1001; the doors close; the node deregisters.
"""

from __future__ import annotations

import functools
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import hypercorn.config
import trio

from grandhotel import (
    butler,
    checkout,
    checkpoints,
    config,
    directory,
    doorman,
    doors,
    front_desk,
    housekeeping,
    intake,
    laundry,
    pace,
    services,
    supervisor,
    tickets,
    tokens,
)
from grandhotel.safe import pool, vault
from grandhotel.services import laundry as laundry_service

logger = logging.getLogger(__name__)

Located = tuple[butler.Line | None, tickets.Notebook]


def default_catalogue(settings: config.HotelConfig) -> services.Catalogue:
    """The built-in services: the laundry."""
    return services.Catalogue(
        laundry_service.make(settings.laundry_step_seconds, settings.laundry_price_per_suit_cents)
    )


async def _scoped(
    run: Callable[..., Awaitable[None]], *, task_status: trio.TaskStatus[trio.CancelScope]
) -> None:
    """Run a component under its own cancel scope, handed to the caller when started."""
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            task_status.started(scope)


def _paced_line(settings: config.HotelConfig, min_rate: float, recovery: float) -> pace.Turns:
    """A line of newcomers paced by the loop's lag (pace.py), with the hotel's target."""
    policy = pace.Pace(
        target_lag=settings.live_lag_target_ms / 1000, min_rate=min_rate, recovery=recovery,
        backoff=settings.pace_backoff, cooldown=settings.pace_cooldown_seconds,
    )  # fmt: skip
    return pace.Turns(policy)


class Hotel:
    """One hotel node.

    Args:
        settings: the config.
        catalogue: the services on offer (default: the built-in laundry).
        rng: randomness for jitter and fault injection (seed it in tests).
    """

    def __init__(
        self,
        settings: config.HotelConfig,
        catalogue: services.Catalogue | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue or default_catalogue(settings)
        rng = rng or random.Random()
        self.rng = rng
        self.pool = pool.Pool(
            settings.database_url, size=settings.pool_size,
            connect_timeout_seconds=settings.connect_timeout_seconds,
        )  # fmt: skip
        self.safe = vault.Vault(self.pool, settings.query_timeout_seconds)
        self.lines: directory.Directory[butler.Line] = directory.Directory()
        self.checkout = checkout.Checkout(settings, self.safe, self.catalogue)
        self.supervisor = supervisor.Supervisor(settings, self.lines, self.checkout.give_up, rng)
        self.intake = intake.Intake(self.safe, settings.intake_batch_max)
        self.intake_gate = trio.CapacityLimiter(settings.intake_concurrency)
        """New tickets written at once (bounds a crowd's work and memory)."""
        self.turns = _paced_line(
            settings, settings.pace_min_rate, settings.pace_recovery_per_second
        )
        """New tickets' turns at the desk, paced while frames are late (pace.py)."""
        self.door_turns = _paced_line(
            settings, settings.door_min_rate, settings.door_recovery_per_second
        )
        """New connections' turns at the door, paced the same way (doorman.py)."""
        self.sessions = 0
        """Guests' WebSocket sessions attending a live ticket (the concierge counts)."""
        self.book = checkpoints.Checkpoints(self.safe, settings.checkpoint_interval_seconds)
        self.laundry = laundry.Laundry(
            settings, self.safe, self.catalogue, self.lines, self._hire_for_job, self.book,
            self._ended_elsewhere, rng,
        )  # fmt: skip
        self._relays: set[str] = set()
        self._relay_wanted = trio.Event()
        self.draining = False
        self.binds: list[str] = []
        self._stop = trio.Event()
        self._doors_closed = trio.Event()
        self.doors = doors.Doors(front_desk.make_app(self), settings)
        """The ASGI app hypercorn serves: the front desk and concierge behind the doors."""

    def stop(self) -> None:
        """Begin a graceful stop (safe to call more than once, from any task)."""
        self._stop.set()

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the hotel until ``stop``; report the bound addresses when serving."""
        try:
            if self.settings.migrate_on_start:
                await self.safe.migrate()
            # A node restarting under its old name rescues its own jobs at once.
            await self.safe.rescue_orphans(
                self.settings.node_stale_seconds, self.settings.node_name
            )
            async with trio.open_nursery() as nursery:
                quarters = await nursery.start(_scoped, self.supervisor.run)
                await self._hire_unfinished()
                heart = await nursery.start(_scoped, self._heartbeat)
                books = await nursery.start(_scoped, self.book.run)
                desk = await nursery.start(_scoped, self.intake.run)
                relays = await nursery.start(_scoped, self._relay_endings)
                staff = await nursery.start(_scoped, self.laundry.run)
                keeper = await nursery.start(_scoped, self._full_collections)
                metronome = await nursery.start(_scoped, self._metronome)
                young = await nursery.start(_scoped, self._young_collections)
                self.binds = await nursery.start(self._serve)
                task_status.started(self.binds)
                await self._stop.wait()
                await self._drain(staff, quarters)
                books.cancel()
                desk.cancel()
                keeper.cancel()
                metronome.cancel()
                young.cancel()
                relays.cancel()
                heart.cancel()
        finally:
            await self.pool.aclose()

    async def _full_collections(self, *, task_status: trio.TaskStatus[None]) -> None:
        await housekeeping.full_collections(
            check_seconds=self.settings.gc_check_seconds,
            interval_seconds=self.settings.gc_full_interval_seconds,
            quiet=lambda: self.supervisor.on_duty == 0,
            hires=lambda: self.supervisor.hires,
            task_status=task_status,
        )

    async def _young_collections(self, *, task_status: trio.TaskStatus[None]) -> None:
        settings = self.settings
        if settings.gc_young_interval_seconds > 0:
            await housekeeping.young_collections(
                shortest_seconds=settings.gc_young_interval_seconds,
                longest_seconds=settings.gc_young_longest_interval_seconds,
                pause_target_seconds=settings.gc_young_pause_target_ms / 1000,
                task_status=task_status,
            )
        else:
            task_status.started()

    async def _metronome(self, *, task_status: trio.TaskStatus[None]) -> None:
        await pace.metronome(
            [self.turns, self.door_turns], tick_seconds=self.settings.pace_tick_seconds,
            watched=lambda: self.sessions > 0, held=housekeeping.pauses.held, rng=self.rng,
            task_status=task_status,
        )  # fmt: skip

    async def _heartbeat(self, *, task_status: trio.TaskStatus[None]) -> None:
        await laundry.heartbeat(self.settings, self.safe, task_status=task_status)

    async def _serve(self, *, task_status: trio.TaskStatus[list[str]]) -> None:
        hc = hypercorn.config.Config()
        hc.bind = [f"{self.settings.host}:{self.settings.port}"]
        hc.backlog = self.settings.listen_backlog
        hc.graceful_timeout = self.settings.shutdown_grace_seconds
        hc.read_timeout = self.settings.idle_timeout_seconds  # type: ignore[assignment]
        hc.websocket_ping_interval = self.settings.ws_ping_interval_seconds
        hc.websocket_max_message_size = self.settings.ws_max_message_bytes
        hc.accesslog = None
        hc.errorlog = logging.getLogger("hypercorn.error")
        await doorman.serve(
            self.doors, hc, accept_batch=self.settings.accept_batch,
            shutdown_trigger=self._doors_closed.wait, turn=self.door_turns.take,
            task_status=task_status,
        )  # fmt: skip

    async def _drain(self, staff: trio.CancelScope, quarters: trio.CancelScope) -> None:
        logger.info("draining: no new work; %d job(s) running", sum(self.laundry.running.values()))
        self.draining = True
        self.laundry.accepting = False
        with trio.move_on_after(self.settings.shutdown_grace_seconds):
            await self.laundry.wait_idle()
        staff.cancel()
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(self.settings.shutdown_grace_seconds),
        ):
            released = await self._quietly(self.safe.release_jobs(self.settings.node_name))
            if released:
                logger.info("released %d running job(s) back to the queue", released)
        quarters.cancel()
        self._doors_closed.set()
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(self.settings.shutdown_grace_seconds),
        ):
            await self._quietly(self.safe.deregister_node(self.settings.node_name))

    @staticmethod
    async def _quietly(write: Awaitable[Any]) -> Any:
        try:
            return await write
        except vault.SafeUnavailable as ex:
            logger.warning("could not write to the safe while stopping: %s", ex)
            return None

    def _ended_elsewhere(self, ticket_id: str) -> None:
        if ticket_id in self.lines:
            self._relays.add(ticket_id)
            self._relay_wanted.set()

    async def _relay_endings(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Tell butlers here of endings written by other nodes (or by us: a no-op)."""
        task_status.started()
        while True:
            await self._relay_wanted.wait()
            self._relay_wanted = trio.Event()
            batch, self._relays = self._relays, set()
            for ticket_id in batch:
                line = self.lines.lookup(ticket_id)
                if line is not None and not line.notebook.status.terminal:
                    await vault.land(
                        functools.partial(self.checkout.relay, line),
                        max_delay_seconds=self.settings.safe_retry_max_seconds,
                        rng=self.checkout.rng,
                    )

    async def _hire_unfinished(self) -> None:
        rows = await self.safe.hire_unfinished()
        for row in rows:
            notebook = tickets.restore(vault.plain(row), tickets.first_seq(row["epoch"]))
            self.supervisor.hire(notebook, [bytes(h) for h in row["token_hashes"]])
        if rows:
            logger.info("hired butlers for %d unfinished ticket(s)", len(rows))

    def _hire_for_job(self, job: Mapping[str, Any]) -> butler.Line:
        """A butler for a job claimed here whose ticket has none on this node."""
        row = dict(vault.plain(job), id=str(job["ticket_id"]), status="queued")
        row["attempt"] = int(job["attempt"]) - 1
        notebook = tickets.restore(row, tickets.first_seq(job["epoch"]))
        return self.supervisor.hire(notebook, [bytes(h) for h in job["token_hashes"]])

    def stats(self) -> dict[str, Any]:
        """Counters for operators (``GET /stats``), all from memory."""
        sup = self.supervisor
        return {
            "node": self.settings.node_name,
            "draining": self.draining,
            "butlers_on_duty": sup.on_duty,
            # Counted by the concierge: summing every line's watchers walked
            # each live ticket on every poll (100,000 of them in the intake bench).
            "watchers": self.sessions,
            "butler_restarts": sup.restarts,
            "butler_restarts_last_minute": sup.restarts_last_minute,
            "butlers_given_up": sup.given_up,
            "restart_alarms": sup.alarms,
            "jobs_running": dict(self.laundry.running),
            "listening": self.laundry.notifier.connected,
            "safe_connections_borrowed": self.pool.borrowed,
            "intake_waiting": self.intake_gate.statistics().tasks_waiting + self.turns.waiting,
            "intake_pace": self.turns.pace.report(),
            "door_pace": self.door_turns.pace.report() | {"waiting": self.door_turns.waiting},
            "gc": housekeeping.pauses.report(),
        }

    async def locate(
        self, ticket_id: uuid.UUID | str, token: str | None, *, check_token: bool = True
    ) -> Located | None:
        """A ticket the token may see: its live line (if any) and notebook.

        Live tickets cost no query. Returns None for a ticket that does not exist
        and for a wrong or missing token alike, with the same work done.
        """
        try:
            key = uuid.UUID(str(ticket_id))
        except ValueError:
            return None
        line = self.lines.lookup(str(key))
        if line is not None and (not check_token or tokens.matches_any(token, line.token_hashes)):
            return line, line.notebook
        row = await self.safe.ticket(key)
        hashes = [bytes(h) for h in row["token_hashes"]] if row else []
        if row is None or (check_token and not tokens.matches_any(token, hashes)):
            return None
        line = self.lines.lookup(str(key))
        if line is not None:
            return line, line.notebook
        record = await self.safe.record(key) if row["record_id"] is not None else None
        seq = tickets.archive_seq(row["epoch"])
        return None, tickets.restore(vault.plain(row), seq, record)

"""The laundry: the durable job executor on the safe's ``jobs`` table.

Theory of operation
-------------------
One producer per queue claims ready jobs with ``FOR UPDATE SKIP LOCKED`` while
the queue has free slots (``queue_limits``). It sleeps until woken by
LISTEN/NOTIFY (``safe.notifier``), by a slot freeing up, by a retry falling due,
or by the ``poll_interval_seconds`` fallback. Each claim is a new attempt, and
every write an attempt makes is fenced on ``(job, attempt)``.

An attempt runs the service function in a cancel scope that it leaves on the
ticket's line: ending the ticket from elsewhere (a guest's cancel, a butler
given up) cancels it. Each ``ctx.progress`` looks the butler up in the directory
and hands it the report in memory; the database never carries progress.

When the function returns, the completion (job, ticket, record) is written in
one statement; when it raises, the job is retried after a jittered exponential
backoff, or, past ``max_attempts``, discarded and its ticket failed. Those
writes must land: while the safe is unreachable they are retried with backoff,
so no job is left ``executing`` once the safe is back. Only then is the butler
told, so a guest never sees an ending that the safe does not hold.
"""

from __future__ import annotations

import collections
import functools
import logging
import random
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import trio

from grandhotel import backoff, butler, chaos, checkpoints, config, directory, services, tickets
from grandhotel.safe import notifier, vault

logger = logging.getLogger(__name__)

T = TypeVar("T")
CLAIM_BATCH = 100  # jobs per claim statement: one round trip takes many at once


def describe(error: BaseException) -> str:
    """``Type: message`` of an exception, short enough for a reason field."""
    text = f"{type(error).__name__}: {error}".strip().rstrip(":")
    return text if len(text) <= 500 else text[:497] + "..."


def reporter(
    book: checkpoints.Checkpoints,
    lookup: Callable[[str], butler.Line | None],
    job: Mapping[str, Any],
) -> services.Reporter:
    """An attempt's ``ctx.progress``: note the step in ``book``, then hand it to
    the ticket's butler (found with ``lookup``) in memory."""
    ticket_id, job_id, attempt = str(job["ticket_id"]), job["job_id"], job["attempt"]
    note, new, progress = book.note, tickets.new, tickets.Progress  # bound once: every step calls

    def report(done: int, total: int, message: str | None) -> Awaitable[object]:
        # A plain function handing back the line's own awaitable: no coroutine
        # of its own to make and resume per step.
        note(job_id, attempt, done, total, message)
        line = lookup(ticket_id)
        if line is None:  # the butler left: nobody to tell, still a checkpoint
            return trio.lowlevel.checkpoint_if_cancelled()  # noqa: ASYNC105 - the caller awaits
        return line.report(new(progress, (done, total, message)))

    return report


def saver(book: checkpoints.Checkpoints, job: Mapping[str, Any]) -> services.Saver:
    """An attempt's ``ctx.checkpoint``: kept in ``book`` for its next flush."""
    # A partial, not a closure: one Python call less per step.
    return functools.partial(book.save, job["job_id"], job["attempt"])


class Laundry:
    """Claims jobs and runs them, reporting every step to the ticket's butler.

    Args:
        settings: the hotel's config.
        safe: the safe.
        catalogue: the services on offer.
        lines: the directory of butlers' lines.
        hire: hires a butler for a claimed job's ticket that has none on this node.
        book: where running attempts' progress and checkpoints are noted.
        ended_elsewhere: told of each ticket ended from outside its job, on any node.
        rng: randomness for retry jitter.
    """

    def __init__(
        self,
        settings: config.HotelConfig,
        safe: vault.Vault,
        catalogue: services.Catalogue,
        lines: directory.Directory[butler.Line],
        hire: Callable[[Mapping[str, Any]], object],
        book: checkpoints.Checkpoints,
        ended_elsewhere: Callable[[str], None] = lambda ticket_id: None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.safe = safe
        self.catalogue = catalogue
        self.lines = lines
        self.hire = hire
        self.book = book
        self.ended_elsewhere = ended_elsewhere
        self.rng = rng or random.Random()
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopped_at: dict[str, float] = {}
        self.queues = sorted({service.queue for service in catalogue})
        self.running: collections.Counter[str] = collections.Counter()
        self.accepting = True
        """False once the hotel drains: no new claims."""
        self._wakeups = {queue: trio.Event() for queue in self.queues}
        self._due: dict[str, float] = {}
        self._idle = trio.lowlevel.ParkingLot()
        self._nursery: trio.Nursery | None = None
        self.notifier = notifier.Notifier(
            safe.pool,
            {notifier.JOBS: self.wake, notifier.STOP: self.stop},
            health_seconds=settings.heartbeat_seconds,
            retry_max_seconds=settings.safe_retry_max_seconds,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run producers, listener and heartbeat until cancelled.

        Cancellation: running attempts are cancelled with the rest; their jobs
        stay ``executing`` under this node and are rescued at the next start.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.notifier.run)
            for queue in self.queues:
                nursery.start_soon(self._produce, queue, name=f"laundry producer {queue}")
            task_status.started()

    async def wait_idle(self) -> None:
        """Return once no attempt is running (at once if none is)."""
        while self.running.total():
            await self._idle.park()
        await trio.lowlevel.checkpoint()

    def stop(self, ticket_id: str) -> None:
        """A ticket was ended from outside its job: cancel its attempt here, if any."""
        scope = self._scopes.get(ticket_id)
        if scope is not None:
            scope.cancel()
            self._stopped_at.setdefault(ticket_id, trio.current_time())
        self.ended_elsewhere(ticket_id)

    def wake(self, queue: str) -> None:
        """Wake the producer of ``queue`` (every producer for ``""``)."""
        for name in self.queues if queue == "" else (queue,):
            event = self._wakeups.get(name)
            if event is not None:
                event.set()

    # --- producing -------------------------------------------------------------

    async def _produce(self, queue: str) -> None:
        limit = self.settings.queue_limit(queue)
        failures = 0
        while True:
            free = limit - self.running[queue]
            claimed = 0
            if free > 0 and self.accepting:
                try:
                    claimed = await self._claim(queue, min(free, CLAIM_BATCH))
                    failures = 0
                except vault.SafeUnavailable as ex:
                    failures += 1
                    logger.warning("cannot claim jobs of queue %s: %s", queue, ex)
                    await trio.sleep(self._retry_delay(failures))
                    continue
            if claimed and claimed == min(free, CLAIM_BATCH):
                continue  # there may be more ready right now
            await self._wait(queue)

    async def _claim(self, queue: str, limit: int) -> int:
        jobs = await self.safe.claim_jobs(queue, self.settings.node_name, limit)
        if self._nursery is None:
            raise RuntimeError("the laundry is not running")
        for job in jobs:
            chaos.exit_if("after_claim", self.settings.chaos_exit_at)
            if self.lines.lookup(str(job["ticket_id"])) is None:
                self.hire(job)
            self.running[queue] += 1
            self._nursery.start_soon(self._attempt, queue, job, name=f"job {job['job_id']}")
        return len(jobs)

    async def _wait(self, queue: str) -> None:
        timeout = self.settings.poll_interval_seconds
        due = self._due.pop(queue, None)
        if due is not None:
            timeout = min(timeout, max(0.0, due - trio.current_time()))
        with trio.move_on_after(timeout):
            await self._wakeups[queue].wait()
        self._wakeups[queue] = trio.Event()

    def _retry_delay(self, failures: int) -> float:
        return backoff.delay(
            failures, base_seconds=0.05, max_seconds=self.settings.safe_retry_max_seconds,
            rng=self.rng,
        )  # fmt: skip

    # --- one attempt -----------------------------------------------------------

    async def _attempt(self, queue: str, job: Mapping[str, Any]) -> None:
        try:
            await self._run_attempt(job)
        finally:
            self.running[queue] -= 1
            self.wake(queue)
            if not self.running.total():
                self._idle.unpark_all()

    async def _run_attempt(self, job: Mapping[str, Any]) -> None:
        ticket_id, attempt = str(job["ticket_id"]), int(job["attempt"])
        service = self.catalogue.get(job["service"])
        context = services.Context(
            ticket_id, job["args"], attempt, reporter(self.book, self.lines.lookup, job),
            resumed=job["checkpoint"], save=saver(self.book, job),
        )  # fmt: skip
        error: BaseException | None = None
        result: services.Result = None
        line: butler.Line | None = None
        scope = trio.CancelScope()
        try:
            with scope:
                self._scopes[ticket_id] = scope
                line = self.lines.lookup(ticket_id)
                if line is not None:
                    line.attempt_scope = scope
                    await line.report(tickets.Started(attempt))
                try:
                    if service is None:
                        raise LookupError(f"no service named {job['service']!r} is offered here")
                    result = await service.run(context)
                except Exception as ex:  # noqa: BLE001 - a failing service fails its attempt
                    error = ex
        finally:
            self.book.forget(job["job_id"])
            self._check_stop_deadline(ticket_id)
            if self._scopes.get(ticket_id) is scope:
                del self._scopes[ticket_id]
            if line is not None and line.attempt_scope is scope:
                line.attempt_scope = None
        if scope.cancelled_caught:
            return  # the ticket was ended elsewhere; that write won the fence
        if error is None:
            await self._complete(job, service, context, result)
        else:
            await self._fail(job, service, context, error)

    def _check_stop_deadline(self, ticket_id: str) -> None:
        stopped_at = self._stopped_at.pop(ticket_id, None)
        if stopped_at is None:
            return
        took = trio.current_time() - stopped_at
        if took > self.settings.cancel_deadline_seconds:
            logger.error(
                "the attempt of ticket %s took %.1fs to stop (deadline %gs): its service "
                "must yield to trio more often", ticket_id, took,
                self.settings.cancel_deadline_seconds,
            )  # fmt: skip

    async def _complete(
        self,
        job: Mapping[str, Any],
        service: services.Service | None,
        context: services.Context,
        result: services.Result,
    ) -> None:
        if service is None:  # pragma: no cover - _run_attempt fails unknown services
            raise LookupError(job["service"])
        total = context.total or service.total(context.args)
        done = context.done if context.total else total
        chaos.exit_if("before_complete", self.settings.chaos_exit_at)
        record = await self.land(
            lambda: self.safe.complete_job(
                job["job_id"], context.attempt, done=done, total=total,
                message=context.message, amount_cents=service.bill(context.args, done),
                currency=self.settings.currency, result=result,
            )
        )  # fmt: skip
        chaos.exit_if("after_complete", self.settings.chaos_exit_at)
        if record is None:
            logger.warning(
                "job %s attempt %d is stale: its completion changed nothing",
                job["job_id"], context.attempt,
            )  # fmt: skip
            return
        await self._tell(context.ticket_id, tickets.Ended(tickets.Status.COMPLETED, record))

    async def _fail(
        self,
        job: Mapping[str, Any],
        service: services.Service | None,
        context: services.Context,
        error: BaseException,
    ) -> None:
        reason = describe(error)
        entry = {"attempt": context.attempt, "error": reason,
                 "traceback": "".join(traceback.format_exception(error))[-4000:]}  # fmt: skip
        logger.info("job %s attempt %d failed: %s", job["job_id"], context.attempt, reason)
        if service is not None and context.attempt < int(job["max_attempts"]):
            delay = backoff.delay(
                context.attempt, base_seconds=self.settings.retry_base_seconds,
                max_seconds=self.settings.retry_max_seconds, rng=self.rng,
            )  # fmt: skip
            moved = await self.land(
                lambda: self.safe.retry_job(
                    job["job_id"], context.attempt, delay_seconds=delay, reason=reason, error=entry
                )
            )
            if moved is not None:
                self._due[service.queue] = min(
                    self._due.get(service.queue, float("inf")), trio.current_time() + delay
                )
                await self._tell(context.ticket_id, tickets.Retrying(context.attempt, reason))
            return
        bill = service.bill(context.args, context.done) if service else 0
        record = await self.land(
            lambda: self.safe.end_ticket(
                context.ticket_id, "failed", reason=reason, done=context.done,
                amount_cents=bill, currency=self.settings.currency,
                attempt=context.attempt, error=entry,
            )
        )  # fmt: skip
        if record is not None:
            ended = tickets.Ended(tickets.Status.FAILED, record, reason)
            await self._tell(context.ticket_id, ended)

    async def _tell(self, ticket_id: str, report: tickets.Report) -> None:
        line = self.lines.lookup(ticket_id)
        if line is not None:
            await line.report(report)

    async def land(self, write: Callable[[], Awaitable[T]]) -> T:
        """Run ``write`` until the safe takes it (see ``vault.land``)."""
        return await vault.land(
            write, max_delay_seconds=self.settings.safe_retry_max_seconds, rng=self.rng
        )


async def heartbeat(
    settings: config.HotelConfig,
    safe: vault.Vault,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep this node's heartbeat fresh and rescue jobs of dead nodes (the lifeline).

    A job is rescued only when its node's heartbeat is stale, never for running
    long, so a long job on a live node is never run twice.
    """
    task_status.started()
    while True:
        try:
            await safe.heartbeat(settings.node_name)
            rescued = await safe.rescue_orphans(settings.node_stale_seconds, None)
            if rescued:
                logger.warning("rescued %d job(s) from dead nodes", rescued)
        except vault.SafeUnavailable as ex:
            logger.warning("heartbeat failed: %s", ex)
        await trio.sleep(settings.heartbeat_seconds)

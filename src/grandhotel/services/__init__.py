"""The services the hotel offers, and the public API to define your own.

A service is a name, an argument schema and an async function. The function gets
a ``Context``: the validated arguments, and ``progress(done, total, message)``,
which reaches the ticket's butler (and every guest watching) through the
directory, never through the database. Example::

    from grandhotel import schemas, services

    catalogue = services.Catalogue()

    @catalogue.service(
        "polish", args=schemas.Object({"shoes": schemas.Integer(1, 20)}),
        total=lambda args: args["shoes"], bill=lambda args, done: 300 * done,
    )
    async def polish(ctx: services.Context) -> dict[str, int]:
        for shoe in range(1, ctx.args["shoes"] + 1):
            await trio.sleep(1)                       # the real work
            await ctx.progress(shoe, ctx.args["shoes"], f"Shoe {shoe} shines")
        return {"shoes": ctx.args["shoes"]}           # stored in the service record

Execution is at-least-once: an attempt that raises is retried (with backoff) up
to ``max_attempts``, and a server killed mid-job runs it again. Make side effects
idempotent. Cancellation arrives as ``trio.Cancelled`` at the next checkpoint;
a function that computes for long without awaiting cannot be cancelled until it
does (call ``await trio.lowlevel.checkpoint()`` in long loops).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from grandhotel import schemas

Result = Mapping[str, Any] | None
Reporter = Callable[[int, int, "str | None"], Awaitable[object]]
Saver = Callable[[int, int, "str | None", Any], None]


class Context:
    """What a service function gets: its ticket, arguments and the butler's line.

    Attributes:
        ticket_id: the ticket being served.
        args: the validated arguments.
        attempt: 1 for the first attempt, 2 for the next (a retry or a rescue), ...
        resumed: the last checkpoint an earlier attempt saved, or None.
    """

    __slots__ = (
        "_report", "_save", "args", "attempt", "done", "message", "resumed", "ticket_id", "total",
    )  # fmt: skip

    def __init__(
        self,
        ticket_id: str,
        args: Mapping[str, Any],
        attempt: int,
        report: Reporter,
        *,
        resumed: Any = None,
        save: Saver | None = None,
    ) -> None:
        self.ticket_id = ticket_id
        self.args = args
        self.attempt = attempt
        self.resumed = resumed
        self.done = 0
        self.total = 0
        self.message: str | None = None
        self._report = report
        self._save = save

    async def progress(self, done: int, total: int, message: str | None = None) -> None:
        """Tell the butler that ``done`` of ``total`` steps are finished.

        Waits only if the butler's inbox is full. ``done`` and ``total`` are
        clamped to ``0 <= done <= total``.
        """
        if not (type(done) is int and type(total) is int and 0 <= done <= total):
            # Clamped only when needed: this runs for every step of every ticket.
            total = max(0, int(total))
            done = min(max(0, int(done)), total)
        self.done, self.total, self.message = done, total, message
        await self._report(done, total, message)

    def checkpoint(self, value: Any) -> None:
        """Save ``value`` (JSON) so that a later attempt can resume from it.

        Never waits: the value is written with the next batch of checkpoints
        (``checkpoint_interval_seconds``), fenced so that only the attempt
        that currently owns the job can save. A later attempt finds it in
        ``resumed``. Progress reported before this call is saved with it.
        """
        if self._save is not None:
            self._save(self.done, self.total, self.message, value)


@dataclasses.dataclass(frozen=True)
class Service:
    """One service the hotel offers.

    Attributes:
        name: what guests ask for in ``POST /tickets``.
        args: the argument schema.
        run: the async function doing the work; its return value goes in the record.
        total: the number of steps a new ticket shows before work starts.
        bill: the amount, in cents, for ``done`` finished steps.
        queue: the laundry queue (concurrency limits are per queue).
        max_attempts: overrides the hotel's ``max_attempts``.
    """

    name: str
    args: schemas.Object
    run: Callable[[Context], Awaitable[Result]]
    total: Callable[[Mapping[str, Any]], int] = lambda args: 0
    bill: Callable[[Mapping[str, Any], int], int] = lambda args, done: 0
    queue: str = "default"
    max_attempts: int | None = None


class Catalogue:
    """The services on offer, by name."""

    def __init__(self, *offered: Service) -> None:
        self._services: dict[str, Service] = {}
        for service in offered:
            self.add(service)

    def add(self, service: Service) -> Service:
        """Offer ``service``; raise ValueError if the name is taken."""
        if service.name in self._services:
            raise ValueError(f"a service named {service.name!r} is already offered")
        self._services[service.name] = service
        return service

    def service(
        self, name: str, *, args: schemas.Object, **options: Any
    ) -> Callable[[Callable[[Context], Awaitable[Result]]], Service]:
        """Decorator form of ``add``: ``@catalogue.service("name", args=...)``."""

        def define(run: Callable[[Context], Awaitable[Result]]) -> Service:
            return self.add(Service(name=name, args=args, run=run, **options))

        return define

    def get(self, name: str) -> Service | None:
        """The service called ``name``, or None."""
        return self._services.get(name)

    def __iter__(self) -> Iterator[Service]:
        return iter(self._services.values())

    def __len__(self) -> int:
        return len(self._services)

"""Service tickets: their states, the butler's notebook, and the events guests see.

Theory of operation
-------------------
A ticket moves through a small state machine (``TRANSITIONS``)::

    queued -> in_progress -> completed
                 |   ^   \\-> failed | cancelled
                 v   |
               retrying  -> completed | failed | cancelled
    queued -> completed | failed | cancelled

The butler's notebook is an immutable value. ``advance(notebook, report, at)`` is
the only way to change it: it returns the next notebook and the events that the
change produced, each numbered with the next ``seq``. Because it is pure, a butler
that raises halfway through a message loses nothing: the notebook it started
from is still the last good one, and whoever holds it can start over.

Invariants, each checked by the tests:

* ``seq`` increases by exactly one per event within an epoch. A butler hired
  from the safe (after a restart) gets a new epoch, and every seq of epoch ``e``
  lies in ``[e * SEQ_EPOCH_SPAN, (e + 1) * SEQ_EPOCH_SPAN)``, so seqs never
  repeat across server restarts even though progress is never written down.
* Exactly one terminal event per ticket: once the notebook is terminal,
  ``advance`` returns it unchanged with no events.
* A report that makes no sense in the current state (progress before the job
  started, a second start of the same attempt) produces no event.

This module does no I/O and imports neither trio nor psycopg.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

TupleT = TypeVar("TupleT", bound=tuple[Any, ...])

SEQ_EPOCH_SPAN: Final = 1_000_000_000
"""Seqs of one epoch; 2**53 / 1e9 leaves room for nine million restarts."""

BUTLER_NAMES: Final = (
    "Jenkins", "Williams", "Chen", "Okafor", "Dubois", "Haddad", "Nakamura", "Rossi",
    "Kowalski", "Silva", "Lindqvist", "Mbeki", "Novak", "Quispe", "Sato", "Fitzgerald",
)  # fmt: skip


class Status(enum.StrEnum):
    """Where a ticket stands, as guests and the safe see it."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    terminal: bool
    """True for the three ways a ticket ends. An attribute of each member, set
    below, rather than a property: it is read several times per report of every
    ticket, and a property (with an enum's hash written in Python) costs a call
    or two each time."""


_TERMINAL: Final = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED})
for _status in Status:
    _status.terminal = _status in _TERMINAL
UNFINISHED: Final = (Status.QUEUED, Status.IN_PROGRESS, Status.RETRYING)

# Any unfinished state may end in any way: an ending comes from the safe and is
# the truth, even when the butler missed the status reports before it (a report
# dropped after crashing butlers, a butler hired after the job had started).
TRANSITIONS: Final[Mapping[Status, frozenset[Status]]] = {
    Status.QUEUED: frozenset(
        {Status.IN_PROGRESS, Status.COMPLETED, Status.FAILED, Status.CANCELLED}
    ),
    # in_progress -> in_progress: a rescued job starts a new attempt.
    Status.IN_PROGRESS: frozenset(
        {Status.IN_PROGRESS, Status.RETRYING, Status.COMPLETED, Status.FAILED, Status.CANCELLED}
    ),
    Status.RETRYING: frozenset(
        {Status.IN_PROGRESS, Status.COMPLETED, Status.FAILED, Status.CANCELLED}
    ),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


def can_move(old: Status, new: Status) -> bool:
    """Whether the state machine allows ``old -> new``."""
    return new in TRANSITIONS[old]


def butler_name(ticket_id: uuid.UUID) -> str:
    """The butler's name for a ticket: stable, so a replacement keeps the name."""
    return BUTLER_NAMES[ticket_id.int % len(BUTLER_NAMES)]


def percent(done: int, total: int) -> int:
    """Whole percent done, 0..100 (a ticket with no steps is 0% until it ends)."""
    if total <= 0:
        return 0
    return max(0, min(100, done * 100 // total))


# --- reports: what the staff tell the butler -------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Started:
    """An attempt of the ticket's job began."""

    attempt: int


class Progress(NamedTuple):
    """The service finished a step: ``done`` of ``total``.

    A named tuple, not a frozen dataclass like the other reports: one is made
    per step of every ticket, and a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__`` (0.40 against 0.25 us here).
    """

    done: int
    total: int
    message: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Retrying:
    """An attempt failed and the job will run again."""

    attempt: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Ended:
    """The ticket ended; the safe already holds its record."""

    outcome: Status
    record: Mapping[str, Any] | None
    reason: str | None = None


Report = Started | Progress | Retrying | Ended

if TYPE_CHECKING:

    def new(cls: type[TupleT], fields: tuple[Any, ...]) -> TupleT:
        """``new(Progress, (done, total, message))``: see below."""

else:
    new = tuple.__new__
    """Builds a named tuple from a tuple of all its fields, as the named tuple's
    own constructor does inside, without the Python call around it: for the ones
    made per step of every ticket (a report, a notebook, an event)."""


# --- the notebook and its events -----------------------------------------------


class Notebook(NamedTuple):
    """Everything the butler knows about one ticket. Immutable: see ``advance``.

    A named tuple rather than a frozen dataclass: the butler makes one per
    report, and building a tuple costs a third of a frozen dataclass's
    ``__init__`` (measured in the fanout benchmark's profile).
    """

    ticket_id: str
    guest: str
    service: str
    args: Mapping[str, Any]
    butler: str
    status: Status
    done: int
    total: int
    message: str | None
    seq: int
    attempt: int
    created_at: str
    updated_at: str
    reason: str | None = None
    record: Mapping[str, Any] | None = None

    @property
    def percent(self) -> int:
        """Whole percent done; 100 once completed."""
        return 100 if self.status is Status.COMPLETED else percent(self.done, self.total)


class Event(NamedTuple):
    """One numbered event for the guests watching a ticket."""

    seq: int
    kind: str
    terminal: bool
    body: Mapping[str, Any]


def first_seq(epoch: int) -> int:
    """The seq of the snapshot a butler of ``epoch`` starts from."""
    return epoch * SEQ_EPOCH_SPAN + 1


def archive_seq(epoch: int) -> int:
    """The seq of a finished ticket's snapshot read from the safe.

    Above every seq its butlers used (they had epochs <= ``epoch``), so a guest
    resuming after the ending still sees seqs increase.
    """
    return (epoch + 1) * SEQ_EPOCH_SPAN


def snapshot(notebook: Notebook) -> dict[str, Any]:
    """The ``snapshot`` event: the whole notebook at its current seq."""
    body = _state(notebook, "snapshot")
    body.update(
        service=notebook.service, guest=notebook.guest, butler=notebook.butler,
        attempt=notebook.attempt, created_at=notebook.created_at,
    )  # fmt: skip
    _add_ending(body, notebook)
    return body


def view(notebook: Notebook, token: str | None = None) -> dict[str, Any]:
    """The ticket as the HTTP API shows it (``POST`` and ``GET /tickets/{id}``)."""
    body: dict[str, Any] = {
        "id": notebook.ticket_id,
        "service": notebook.service,
        "guest": notebook.guest,
        "status": notebook.status.value,
        "butler": notebook.butler,
        "progress": {
            "done": notebook.done, "total": notebook.total, "percent": notebook.percent,
        },
        "message": notebook.message,
        "attempt": notebook.attempt,
        "seq": notebook.seq,
        "created_at": notebook.created_at,
        "updated_at": notebook.updated_at,
        "links": {
            "self": f"/tickets/{notebook.ticket_id}",
            "live": f"/tickets/{notebook.ticket_id}/live",
        },
    }  # fmt: skip
    if token is not None:
        body["token"] = token
    _add_ending(body, notebook)
    return body


def _state(notebook: Notebook, kind: str) -> dict[str, Any]:
    return {
        "type": kind,
        "ticket": notebook.ticket_id,
        "seq": notebook.seq,
        "status": notebook.status.value,
        "done": notebook.done,
        "total": notebook.total,
        "percent": notebook.percent,
        "message": notebook.message,
        "at": notebook.updated_at,
    }


def _add_ending(body: dict[str, Any], notebook: Notebook) -> None:
    if notebook.reason is not None:
        body["reason"] = notebook.reason
    if notebook.record is not None:
        body["record"] = dict(notebook.record)


def advance(notebook: Notebook, report: Report, at: str) -> tuple[Notebook, list[Event]]:
    """Apply one report; return the new notebook and the events it produced.

    Args:
        notebook: the current notebook.
        report: what a member of staff reported.
        at: the wall-clock time of the change, ISO 8601 with ``Z``.
    """
    if notebook.status.terminal:
        return notebook, []
    if isinstance(report, Progress):  # every step of every ticket: no class pattern
        if notebook.status is not _IN_PROGRESS_STATUS:
            return notebook, []
        return _progressed(notebook, *report, at)
    match report:
        case Started(attempt=attempt):
            if attempt <= notebook.attempt and notebook.status is Status.IN_PROGRESS:
                return notebook, []
            return _move(notebook, Status.IN_PROGRESS, at, attempt=attempt, reason=None)
        case Retrying(attempt=attempt, reason=reason):
            return _move(notebook, Status.RETRYING, at, attempt=attempt, reason=reason)
        case Ended(outcome=outcome, record=record, reason=reason):
            if not outcome.terminal:
                return notebook, []
            done = record.get("done", notebook.done) if record else notebook.done
            return _move(notebook, outcome, at, record=record, reason=reason, done=done)


def _progressed(
    notebook: Notebook, done: int, total: int, message: str | None, at: str
) -> tuple[Notebook, list[Event]]:
    # The report of every step, so the hot path (the fanout benchmark): the
    # notebook built field by field (``_replace`` costs three times as much),
    # the body directly (it equals ``_event(changed, "progress", terminal=False)``),
    # and both tuples with ``new`` (see there).
    seq = notebook.seq + 1
    changed = new(Notebook, (
        notebook.ticket_id, notebook.guest, notebook.service, notebook.args, notebook.butler,
        notebook.status, done, total, message, seq, notebook.attempt, notebook.created_at, at,
        notebook.reason, notebook.record,
    ))  # fmt: skip
    body = {
        "type": "progress", "ticket": notebook.ticket_id, "seq": seq,
        "status": _IN_PROGRESS, "done": done, "total": total,
        "percent": percent(done, total), "message": message, "at": at,
    }  # fmt: skip
    if notebook.reason is not None or notebook.record is not None:
        _add_ending(body, changed)
    return changed, [new(Event, (seq, "progress", False, body))]


_IN_PROGRESS_STATUS: Final = Status.IN_PROGRESS
_IN_PROGRESS: Final = Status.IN_PROGRESS.value


def _move(
    notebook: Notebook, status: Status, at: str, **changes: Any
) -> tuple[Notebook, list[Event]]:
    if not can_move(notebook.status, status):
        return notebook, []
    changed = notebook._replace(status=status, seq=notebook.seq + 1, updated_at=at, **changes)
    kind = status.value if status.terminal else "status"
    return changed, [_event(changed, kind, terminal=status.terminal)]


def _event(notebook: Notebook, kind: str, *, terminal: bool) -> Event:
    body = _state(notebook, kind)
    if kind == "status":
        body["attempt"] = notebook.attempt
    _add_ending(body, notebook)
    return Event(seq=notebook.seq, kind=kind, terminal=terminal, body=body)


def restore(row: Mapping[str, Any], seq: int, record: Mapping[str, Any] | None = None) -> Notebook:
    """A notebook rebuilt from the safe's ticket row (JSON-ready values)."""
    return Notebook(
        ticket_id=str(row["id"]), guest=row["guest_id"], service=row["service"],
        args=row["args"], butler=row["butler"], status=Status(row["status"]),
        done=row["done"], total=row["total"], message=row["message"], seq=seq,
        attempt=row["attempt"], created_at=row["created_at"], updated_at=row["updated_at"],
        reason=row["reason"], record=record,
    )  # fmt: skip

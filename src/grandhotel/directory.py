"""The hotel directory: ticket id -> the butler's direct line, in O(1).

An entry exists exactly while the ticket's butler is on duty: the supervisor
registers it before the butler starts (so the line exists before the front desk
answers 201) and removes it in a ``finally`` when the butler leaves, whatever the
reason. A line survives its butler's restarts, so a lookup during a restart
still reaches a live line and the message waits in its inbox.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

LineT = TypeVar("LineT")


class AlreadyRegistered(KeyError):
    """A ticket already has a butler on duty."""


class Directory(Generic[LineT]):
    """A dict with the two rules above; generic so that tests can use fakes."""

    def __init__(self) -> None:
        self._lines: dict[str, LineT] = {}
        self.lookup: Callable[[str], LineT | None] = self._lines.get
        """The line of the butler on duty for a ticket id, or None. The dict's
        own ``get`` (never rebound): every step of every job looks its butler up."""

    def __len__(self) -> int:
        return len(self._lines)

    def __contains__(self, ticket_id: object) -> bool:
        return ticket_id in self._lines

    def register(self, ticket_id: str, line: LineT) -> None:
        """Add the entry; raise ``AlreadyRegistered`` if one exists."""
        if ticket_id in self._lines:
            raise AlreadyRegistered(ticket_id)
        self._lines[ticket_id] = line

    def unregister(self, ticket_id: str, line: LineT) -> None:
        """Remove the entry if it is still ``line`` (never someone else's)."""
        if self._lines.get(ticket_id) is line:
            del self._lines[ticket_id]

    def lines(self) -> list[LineT]:
        """The lines of every butler on duty (a copy)."""
        return list(self._lines.values())

    def ticket_ids(self) -> list[str]:
        """The tickets with a butler on duty (a copy)."""
        return list(self._lines)

"""Fixtures shared by the unit tests (no database, no network)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from grandhotel import tickets

CREATED_AT = "2024-05-01T09:00:00.000Z"


def _notebook(ticket_id: str = "ticket-1", **changes: Any) -> tickets.Notebook:
    fields: dict[str, Any] = {
        "ticket_id": ticket_id,
        "guest": "room-412",
        "service": "laundry",
        "args": {"suits": 3},
        "butler": "Jenkins",
        "status": tickets.Status.QUEUED,
        "done": 0,
        "total": 3,
        "message": None,
        "seq": tickets.first_seq(0),
        "attempt": 0,
        "created_at": CREATED_AT,
        "updated_at": CREATED_AT,
    }
    fields.update(changes)
    return tickets.Notebook(**fields)


@pytest.fixture(scope="session")
def make_notebook() -> Callable[..., tickets.Notebook]:
    """A factory of fresh queued notebooks; keyword arguments replace fields.

    Session-scoped because it is stateless (and so usable under hypothesis).
    """
    return _notebook

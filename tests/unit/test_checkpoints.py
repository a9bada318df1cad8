"""Unit tests for ``grandhotel.checkpoints``: notes in memory, flushed in batches."""

from __future__ import annotations

from typing import Any

import pytest

from grandhotel import checkpoints
from grandhotel.safe import vault


class FakeSafe:
    """Records each batch; refuses while ``away``."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[Any, ...]]] = []
        self.away = False

    async def save_progress(self, rows: list[vault.Progress]) -> int:
        if self.away:
            raise vault.SafeUnavailable("the safe is away")
        self.batches.append([(r.job, r.attempt, r.done, r.total, r.message, r.checkpoint)
                             for r in rows])  # fmt: skip
        return len(rows)


@pytest.fixture
def safe() -> FakeSafe:
    return FakeSafe()


@pytest.fixture
def book(safe: FakeSafe) -> checkpoints.Checkpoints:
    return checkpoints.Checkpoints(safe, interval_seconds=1.0)  # type: ignore[arg-type]


async def test_the_latest_note_and_checkpoint_are_flushed_once(
    book: checkpoints.Checkpoints, safe: FakeSafe
) -> None:
    for step in range(1, 6):
        book.note(7, 1, step, 5, f"step {step}")
        book.save(7, 1, step, 5, f"step {step}", {"done": step})
    book.note(8, 1, 1, 2, None)
    await book.flush()
    assert safe.batches == [[(7, 1, 5, 5, "step 5", {"done": 5}), (8, 1, 1, 2, None, None)]]
    await book.flush()  # nothing new: no statement at all
    assert len(safe.batches) == 1


async def test_a_note_keeps_the_checkpoint_saved_before_it(
    book: checkpoints.Checkpoints, safe: FakeSafe
) -> None:
    book.save(7, 1, 2, 5, "two", {"done": 2})
    book.note(7, 1, 3, 5, "three")
    await book.flush()
    assert safe.batches == [[(7, 1, 3, 5, "three", {"done": 2})]]


async def test_a_new_attempt_starts_from_nothing(
    book: checkpoints.Checkpoints, safe: FakeSafe
) -> None:
    book.save(7, 1, 2, 5, "two", {"done": 2})
    book.note(7, 2, 1, 5, "one again")
    await book.flush()
    assert safe.batches == [[(7, 2, 1, 5, "one again", None)]]


async def test_a_batch_the_safe_refused_is_kept_and_newer_notes_win(
    book: checkpoints.Checkpoints, safe: FakeSafe
) -> None:
    book.save(7, 1, 2, 5, "two", {"done": 2})
    book.note(8, 1, 1, 2, None)
    safe.away = True
    await book.flush()
    book.note(7, 1, 3, 5, "three")  # progress only: the unsaved checkpoint must survive
    safe.away = False
    await book.flush()
    assert safe.batches == [[(7, 1, 3, 5, "three", {"done": 2}), (8, 1, 1, 2, None, None)]]


async def test_an_ended_attempt_is_forgotten(book: checkpoints.Checkpoints, safe: FakeSafe) -> None:
    book.note(7, 1, 1, 5, None)
    book.forget(7)
    await book.flush()
    assert safe.batches == []

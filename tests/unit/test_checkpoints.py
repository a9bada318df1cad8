"""Unit tests for ``grandhotel.checkpoints``: notes in memory, flushed in batches; and the
laundry's reporter and saver, which note every step there and hand it to the butler."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from grandhotel import butler, checkpoints, directory, laundry, services, tickets
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


# --- laundry.reporter and laundry.saver: what ctx.progress and ctx.checkpoint do

JOB = {"ticket_id": "t-1", "job_id": 7, "attempt": 2}


def make_line() -> butler.Line:
    notebook = tickets.Notebook(
        ticket_id="t-1", guest="room-1", service="laundry", args={"suits": 3}, butler="Chen",
        status=tickets.Status.IN_PROGRESS, done=0, total=3, message=None, seq=1, attempt=2,
        created_at="2026-12-04T00:00:00.000Z", updated_at="2026-12-04T00:00:00.000Z",
    )  # fmt: skip
    return butler.Line(notebook, [b""], inbox_size=4, watcher_buffer=4)


def context(book: checkpoints.Checkpoints, lines: directory.Directory[butler.Line]) -> Any:
    return services.Context(
        "t-1", {"suits": 3}, 2, laundry.reporter(book, lines.lookup, JOB),
        save=laundry.saver(book, JOB),
    )  # fmt: skip


async def test_a_step_reaches_the_butler_as_a_progress_report_and_the_book() -> None:
    safe = FakeSafe()
    book = checkpoints.Checkpoints(safe, interval_seconds=1.0)  # type: ignore[arg-type]
    lines: directory.Directory[butler.Line] = directory.Directory()
    line = make_line()
    lines.register("t-1", line)
    ctx = context(book, lines)
    await ctx.progress(2, 3, "Suit 2/3 complete")
    ctx.checkpoint({"suits_done": 2})
    report = await line.inbox.receive()
    assert type(report) is tickets.Progress
    assert report == tickets.Progress(2, 3, "Suit 2/3 complete")
    assert (report.done, report.total, report.message) == (2, 3, "Suit 2/3 complete")
    await book.flush()
    assert safe.batches == [[(7, 2, 2, 3, "Suit 2/3 complete", {"suits_done": 2})]]


async def test_a_step_with_no_butler_is_still_noted_and_still_a_checkpoint() -> None:
    safe = FakeSafe()
    book = checkpoints.Checkpoints(safe, interval_seconds=1.0)  # type: ignore[arg-type]
    ctx = context(book, directory.Directory())
    await ctx.progress(1, 3, None)  # nobody to tell: no error
    with trio.CancelScope() as scope:
        scope.cancel()
        await ctx.progress(2, 3, None)
    assert scope.cancelled_caught  # a cancelled attempt stops at its next step
    await book.flush()
    assert safe.batches == [[(7, 2, 2, 3, None, None)]]

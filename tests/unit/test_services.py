"""What a service function gets: ``Context.progress`` reports clamped steps."""

from __future__ import annotations

from typing import Any

import pytest

from grandhotel import services


@pytest.mark.parametrize(
    ("done", "total", "reported"),
    [
        (2, 5, (2, 5)),
        (0, 0, (0, 0)),
        (7, 5, (5, 5)),  # never past the total
        (-1, 5, (0, 5)),
        (3, -2, (0, 0)),
        (2.9, 5.5, (2, 5)),  # whole steps
        (True, 3, (1, 3)),
    ],
)
async def test_progress_reports_whole_steps_within_the_total(
    done: Any, total: Any, reported: tuple[int, int]
) -> None:
    seen: list[tuple[Any, ...]] = []

    async def report(done: int, total: int, message: str | None) -> None:
        seen.append((done, total, message))

    ctx = services.Context("ticket-1", {}, 1, report)
    await ctx.progress(done, total, "a step")
    assert seen == [(*reported, "a step")]
    assert all(type(value) is int for value in seen[0][:2])
    assert (ctx.done, ctx.total, ctx.message) == (*reported, "a step")

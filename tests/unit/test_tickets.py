"""Unit tests for ``grandhotel.tickets``: the state machine, the notebook and its events."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grandhotel import tickets

Status = tickets.Status
AT = "2024-05-01T09:00:01.000Z"
NotebookFactory = Callable[..., tickets.Notebook]


# --- the state machine ---------------------------------------------------------


def test_every_status_has_a_row_in_the_table() -> None:
    assert set(tickets.TRANSITIONS) == set(Status)


@pytest.mark.parametrize("status", [Status.COMPLETED, Status.FAILED, Status.CANCELLED])
def test_terminal_statuses_go_nowhere(status: Status) -> None:
    assert status.terminal
    assert not any(tickets.can_move(status, new) for new in Status)


def test_unfinished_statuses_are_exactly_the_non_terminal_ones() -> None:
    assert set(tickets.UNFINISHED) == {s for s in Status if not s.terminal}


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (Status.QUEUED, Status.IN_PROGRESS, True),
        (Status.QUEUED, Status.CANCELLED, True),
        (Status.QUEUED, Status.FAILED, True),
        (Status.QUEUED, Status.COMPLETED, True),
        (Status.QUEUED, Status.RETRYING, False),
        (Status.QUEUED, Status.QUEUED, False),
        (Status.IN_PROGRESS, Status.IN_PROGRESS, True),
        (Status.IN_PROGRESS, Status.RETRYING, True),
        (Status.IN_PROGRESS, Status.COMPLETED, True),
        (Status.IN_PROGRESS, Status.QUEUED, False),
        (Status.RETRYING, Status.IN_PROGRESS, True),
        (Status.RETRYING, Status.COMPLETED, True),
        (Status.RETRYING, Status.RETRYING, False),
    ],
)
def test_can_move(old: Status, new: Status, allowed: bool) -> None:
    assert tickets.can_move(old, new) is allowed


# --- names and percent -----------------------------------------------------------


def test_butler_name_is_stable_per_ticket() -> None:
    ticket_id = uuid.UUID("8d0c1f4e-0b6c-4f5e-9a51-3f1a2b3c4d5e")
    assert tickets.butler_name(ticket_id) == tickets.butler_name(uuid.UUID(str(ticket_id)))


def test_butler_names_cover_the_whole_staff() -> None:
    names = {tickets.butler_name(uuid.UUID(int=n)) for n in range(len(tickets.BUTLER_NAMES))}
    assert names == set(tickets.BUTLER_NAMES)


@pytest.mark.parametrize(
    ("done", "total", "expected"),
    [(0, 3, 0), (1, 3, 33), (2, 3, 66), (3, 3, 100), (5, 3, 100), (4, 0, 0), (1, -2, 0)],
)
def test_percent(done: int, total: int, expected: int) -> None:
    assert tickets.percent(done, total) == expected


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=-5, max_value=10**6))
def test_percent_stays_within_0_and_100(done: int, total: int) -> None:
    assert 0 <= tickets.percent(done, total) <= 100


def test_percent_stays_within_0_and_100_for_a_negative_done() -> None:
    # The docstring promises 0..100; a service reporting done=-1 must not show -10%.
    assert 0 <= tickets.percent(-1, 10) <= 100


def test_a_completed_notebook_is_100_percent(make_notebook: NotebookFactory) -> None:
    assert make_notebook(status=Status.COMPLETED, done=0, total=0).percent == 100
    assert make_notebook(status=Status.FAILED, done=1, total=4).percent == 25


# --- seqs across epochs ------------------------------------------------------------


@given(st.integers(min_value=0, max_value=10**6))
def test_first_seq_lies_in_its_epoch(epoch: int) -> None:
    span = tickets.SEQ_EPOCH_SPAN
    assert epoch * span <= tickets.first_seq(epoch) < (epoch + 1) * span


@given(st.integers(min_value=0, max_value=10**6))
def test_archive_seq_is_above_every_seq_of_its_epochs(epoch: int) -> None:
    last_seq_of_epoch = (epoch + 1) * tickets.SEQ_EPOCH_SPAN - 1
    assert tickets.archive_seq(epoch) > last_seq_of_epoch
    assert tickets.archive_seq(epoch) < tickets.archive_seq(epoch + 1)


def test_first_seq_of_epoch_zero_is_one() -> None:
    assert tickets.first_seq(0) == 1


# --- advance -------------------------------------------------------------------


def test_started_moves_a_queued_ticket_in_progress(make_notebook: NotebookFactory) -> None:
    before = make_notebook()
    after, events = tickets.advance(before, tickets.Started(1), AT)
    assert (after.status, after.attempt, after.seq, after.updated_at) == (
        Status.IN_PROGRESS, 1, before.seq + 1, AT,
    )  # fmt: skip
    [event] = events
    assert (event.seq, event.kind, event.terminal) == (after.seq, "status", False)
    assert event.body["attempt"] == 1
    assert event.body["status"] == "in_progress"


def test_a_second_start_of_the_same_attempt_is_ignored(make_notebook: NotebookFactory) -> None:
    started, _ = tickets.advance(make_notebook(), tickets.Started(1), AT)
    assert tickets.advance(started, tickets.Started(1), AT) == (started, [])
    assert tickets.advance(started, tickets.Started(0), AT) == (started, [])


def test_a_new_attempt_restarts_in_progress(make_notebook: NotebookFactory) -> None:
    started, _ = tickets.advance(make_notebook(), tickets.Started(1), AT)
    restarted, [event] = tickets.advance(started, tickets.Started(2), AT)
    assert (restarted.status, restarted.attempt) == (Status.IN_PROGRESS, 2)
    assert event.seq == started.seq + 1


def test_progress_before_the_start_is_ignored(make_notebook: NotebookFactory) -> None:
    queued = make_notebook()
    assert tickets.advance(queued, tickets.Progress(1, 3), AT) == (queued, [])


def test_progress_updates_the_notebook(make_notebook: NotebookFactory) -> None:
    started, _ = tickets.advance(make_notebook(), tickets.Started(1), AT)
    after, [event] = tickets.advance(started, tickets.Progress(2, 4, "two down"), AT)
    assert (after.done, after.total, after.message) == (2, 4, "two down")
    assert (event.kind, event.terminal, event.seq) == ("progress", False, started.seq + 1)
    assert event.body["percent"] == 50
    assert event.body["message"] == "two down"
    assert "attempt" not in event.body


@given(
    done=st.integers(0, 10),
    total=st.integers(0, 10),
    message=st.none() | st.text(max_size=20),
    reason=st.none() | st.text(max_size=20),
    record=st.none() | st.fixed_dictionaries({"done": st.integers(0, 10)}),
)
def test_a_progress_step_equals_the_general_event(
    make_notebook: NotebookFactory,
    done: int,
    total: int,
    message: str | None,
    reason: str | None,
    record: dict[str, int] | None,
) -> None:
    # advance builds a step's notebook and body by hand (the hot path): they must
    # be what _replace and _event give, reason and record included.
    running = make_notebook(status=Status.IN_PROGRESS, attempt=2, reason=reason, record=record)
    after, [event] = tickets.advance(running, tickets.Progress(done, total, message), AT)
    expected = running._replace(done=done, total=total, message=message, seq=running.seq + 1,
                                updated_at=AT)  # fmt: skip
    assert after == expected
    assert event == tickets._event(expected, "progress", terminal=False)


def test_retrying_keeps_the_reason_until_the_next_start(make_notebook: NotebookFactory) -> None:
    started, _ = tickets.advance(make_notebook(), tickets.Started(1), AT)
    retrying, [event] = tickets.advance(started, tickets.Retrying(1, "boom"), AT)
    assert (retrying.status, retrying.reason, event.body["reason"]) == (
        Status.RETRYING, "boom", "boom",
    )  # fmt: skip
    assert tickets.advance(retrying, tickets.Progress(1, 3), AT) == (retrying, [])
    again, _ = tickets.advance(retrying, tickets.Started(2), AT)
    assert (again.status, again.reason) == (Status.IN_PROGRESS, None)


def test_retrying_a_queued_ticket_is_ignored(make_notebook: NotebookFactory) -> None:
    queued = make_notebook()
    assert tickets.advance(queued, tickets.Retrying(1, "boom"), AT) == (queued, [])


def test_completion_takes_done_from_the_record(make_notebook: NotebookFactory) -> None:
    started, _ = tickets.advance(make_notebook(), tickets.Started(1), AT)
    record = {"done": 3, "amount_cents": 1350}
    ended, [event] = tickets.advance(started, tickets.Ended(Status.COMPLETED, record), AT)
    assert (ended.status, ended.done, ended.percent) == (Status.COMPLETED, 3, 100)
    assert (event.kind, event.terminal) == ("completed", True)
    assert event.body["record"] == record


def test_a_queued_ticket_completes_even_if_its_start_was_missed(
    make_notebook: NotebookFactory,
) -> None:
    """The safe's ending is the truth, even when the butler missed the start report."""
    queued = make_notebook()
    ended, [event] = tickets.advance(queued, tickets.Ended(Status.COMPLETED, {"done": 3}), AT)
    assert (ended.status, ended.done, event.kind, event.terminal) == (
        Status.COMPLETED, 3, "completed", True,
    )  # fmt: skip


@pytest.mark.parametrize("outcome", [Status.FAILED, Status.CANCELLED])
def test_a_queued_ticket_can_fail_or_be_cancelled(
    make_notebook: NotebookFactory, outcome: Status
) -> None:
    ended, [event] = tickets.advance(make_notebook(), tickets.Ended(outcome, None, "why"), AT)
    assert (ended.status, ended.reason, ended.done) == (outcome, "why", 0)
    assert (event.kind, event.terminal, event.body["reason"]) == (outcome.value, True, "why")


@pytest.mark.parametrize(
    "report",
    [
        tickets.Started(9),
        tickets.Progress(1, 3),
        tickets.Retrying(2, "again"),
        tickets.Ended(Status.FAILED, None, "twice"),
    ],
)
def test_a_terminal_notebook_never_changes(
    make_notebook: NotebookFactory, report: tickets.Report
) -> None:
    ended = make_notebook(status=Status.CANCELLED, seq=7)
    after, events = tickets.advance(ended, report, AT)
    assert after is ended
    assert events == []


# --- the property: any sequence of reports --------------------------------------

_texts = st.text(max_size=4)
_reports = st.one_of(
    st.builds(tickets.Started, st.integers(0, 4)),
    st.builds(tickets.Progress, st.integers(0, 10), st.integers(0, 10), st.none() | _texts),
    st.builds(tickets.Retrying, st.integers(0, 4), _texts),
    st.builds(
        tickets.Ended,
        st.sampled_from(Status),
        st.none() | st.fixed_dictionaries({"done": st.integers(0, 10)}),
        st.none() | _texts,
    ),
)


def _check_step(old: tickets.Notebook, new: tickets.Notebook, events: list[tickets.Event]) -> None:
    if old.status.terminal or not events:
        assert new is old
        assert events == []
        return
    [event] = events
    assert event.seq == new.seq == old.seq + 1
    assert event.body["seq"] == event.seq
    assert event.terminal is new.status.terminal
    assert tickets.can_move(old.status, new.status) or event.kind == "progress"
    if event.kind == "progress":
        assert old.status is new.status is Status.IN_PROGRESS


@given(st.lists(_reports, max_size=40))
def test_any_sequence_of_reports_keeps_the_invariants(
    make_notebook: NotebookFactory, reports: list[tickets.Report]
) -> None:
    notebook = start = make_notebook()
    produced: list[tickets.Event] = []
    for report in reports:
        new, events = tickets.advance(notebook, report, AT)
        _check_step(notebook, new, events)
        produced += events
        notebook = new
    assert [e.seq for e in produced] == list(range(start.seq + 1, notebook.seq + 1))
    terminal = [i for i, e in enumerate(produced) if e.terminal]
    assert terminal in ([], [len(produced) - 1])
    assert notebook.status.terminal == bool(terminal)


# --- snapshot, view, restore ------------------------------------------------------


def test_snapshot_carries_the_whole_notebook(make_notebook: NotebookFactory) -> None:
    body = tickets.snapshot(make_notebook(seq=5, attempt=2, done=1))
    assert body["type"] == "snapshot"
    assert (body["seq"], body["attempt"], body["done"], body["percent"]) == (5, 2, 1, 33)
    assert (body["service"], body["guest"], body["butler"]) == ("laundry", "room-412", "Jenkins")
    assert "reason" not in body
    assert "record" not in body


def test_snapshot_of_an_ended_ticket_has_reason_and_record(
    make_notebook: NotebookFactory,
) -> None:
    record = {"done": 1}
    body = tickets.snapshot(make_notebook(status=Status.FAILED, reason="no", record=record))
    assert (body["status"], body["reason"], body["record"]) == ("failed", "no", record)
    assert body["record"] is not record


def test_view_shows_the_token_only_when_given(make_notebook: NotebookFactory) -> None:
    notebook = make_notebook()
    assert "token" not in tickets.view(notebook)
    assert tickets.view(notebook, token="secret")["token"] == "secret"


def test_view_links_and_progress(make_notebook: NotebookFactory) -> None:
    body = tickets.view(make_notebook(ticket_id="abc", done=2, total=4))
    assert body["links"] == {"self": "/tickets/abc", "live": "/tickets/abc/live"}
    assert body["progress"] == {"done": 2, "total": 4, "percent": 50}
    assert (body["id"], body["status"], body["seq"]) == ("abc", "queued", 1)


def test_restore_rebuilds_a_notebook_from_a_row(make_notebook: NotebookFactory) -> None:
    ticket_id = uuid.UUID(int=7)
    row = {
        "id": ticket_id, "guest_id": "room-412", "service": "laundry", "args": {"suits": 3},
        "butler": "Jenkins", "status": "retrying", "done": 1, "total": 3, "message": "m",
        "attempt": 2, "created_at": "c", "updated_at": "u", "reason": "r",
    }  # fmt: skip
    notebook = tickets.restore(row, seq=42, record={"done": 1})
    assert notebook == make_notebook(
        ticket_id=str(ticket_id), status=Status.RETRYING, done=1, message="m", seq=42,
        attempt=2, created_at="c", updated_at="u", reason="r", record={"done": 1},
    )  # fmt: skip
    assert notebook.status is Status.RETRYING


def test_terminal_is_an_attribute_of_each_status_not_a_member() -> None:
    assert list(Status.__members__) == [
        "QUEUED", "IN_PROGRESS", "RETRYING", "COMPLETED", "FAILED", "CANCELLED",
    ]  # fmt: skip
    assert {s for s in Status if s.terminal} == {
        Status.COMPLETED, Status.FAILED, Status.CANCELLED,
    }  # fmt: skip
    assert Status("failed").terminal
    assert not Status("retrying").terminal

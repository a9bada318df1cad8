"""The front desk: the HTTP API (tickets, health, guest history).

``POST /tickets`` validates the request against the service's argument schema,
writes ticket + job + audit event in one statement, hires the butler (whose line
is in the directory before the 201 leaves) and returns the ticket with its token,
shown once. Reads of a live ticket come from the butler's notebook and cost no
query; finished tickets come from the safe with their record. Every error is
``application/problem+json``; a wrong or missing token looks exactly like a
ticket that does not exist (404).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from typing import TYPE_CHECKING, Any, Final

import trio
from quart import Response, current_app, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from grandhotel import (
    bench_routes,
    butler,
    checkout,
    concierge,
    openapi,
    problems,
    tickets,
    tokens,
)
from grandhotel.safe import vault

if TYPE_CHECKING:
    from grandhotel.hotel import Hotel

logger = logging.getLogger(__name__)

GUEST_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}")
IDEMPOTENCY_KEY: Final = re.compile(r"[!-~]{1,255}")
TICKET_FIELDS: Final = frozenset({"service", "args", "guest"})
HISTORY_LIMIT_MAX: Final = 500
READY_TIMEOUT_SECONDS: Final = 2.0


def reply(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response."""
    return Response(json.dumps(body), status=status, headers=headers,
                    content_type="application/json")  # fmt: skip


def problem_reply(problem: problems.Problem) -> Response:
    """A problem+json response."""
    return Response(json.dumps(problem.body()), status=problem.status,
                    headers=problem.headers, content_type=problems.CONTENT_TYPE)  # fmt: skip


def parse_ticket_id(raw: str) -> uuid.UUID:
    """The ticket id of a path, or the same 404 as an unknown ticket."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise problems.Problem(404, "no such ticket") from None


def request_hash(body: dict[str, Any]) -> bytes:
    """What makes two requests 'the same' for an idempotency key."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


class FrontDesk:
    """The HTTP routes, bound to one hotel."""

    def __init__(self, hotel: Hotel) -> None:
        self.hotel = hotel

    def install(self, app: QuartTrio) -> None:
        """Add the routes and error handlers to ``app``."""
        app.add_url_rule("/tickets", "create", self.create, methods=["POST"])
        app.add_url_rule("/tickets/<ticket_id>", "read", self.read, methods=["GET"])
        app.add_url_rule("/tickets/<ticket_id>", "cancel", self.cancel, methods=["DELETE"])
        app.add_url_rule("/guests/<guest>/history", "history", self.history, methods=["GET"])
        app.add_url_rule("/stats", "stats", self.stats, methods=["GET"])
        app.add_url_rule("/healthz", "healthz", self.healthz, methods=["GET"])
        app.add_url_rule("/readyz", "readyz", self.readyz, methods=["GET"])
        app.add_url_rule("/openapi.json", "openapi", self.openapi, methods=["GET"])
        app.register_error_handler(problems.Problem, problem_reply)
        app.register_error_handler(HTTPException, self._http_error)
        app.register_error_handler(vault.SafeUnavailable, self._safe_away)
        app.register_error_handler(Exception, self._bug)

    # --- tickets -----------------------------------------------------------------

    async def create(self) -> Response:
        """``POST /tickets``: validate, write, hire, answer 201 with the token.

        A valid ticket waits its turn: in order, at the pace the loop allows
        while guests watch (pace.py), up to ``intake_wait_seconds`` (then 503);
        then at most ``intake_concurrency`` are written at once.
        """
        body = await self._json_body()
        service, args, guest = self._validate(body)
        await self._take_turn()
        try:
            return await self._create(body, service, args, guest)
        finally:
            self.hotel.intake_gate.release()

    async def _take_turn(self) -> None:
        """Wait for the ticket's turn and a place at the intake gate (503 after
        ``intake_wait_seconds``). When neither is held up, as under any load the
        hotel keeps up with, both are taken at once: no timer, no scheduler trip."""
        hotel = self.hotel
        gate = hotel.intake_gate
        turn = hotel.turns.take_nowait()
        if turn:
            try:
                gate.acquire_nowait()  # refused while others wait: they keep their order
                return
            except trio.WouldBlock:
                pass
        with trio.move_on_after(hotel.settings.intake_wait_seconds) as waiting:
            if not turn:
                await hotel.turns.take()
            await gate.acquire()
        if waiting.cancelled_caught:  # only the wait is timed: never a half-made ticket
            raise problems.Problem(
                503, "the desk is busy: new tickets wait their turn while live updates run "
                "late or the safe is slow; try again",
                {"Retry-After": str(hotel.turns.retry_after())},
            )  # fmt: skip

    async def _create(
        self, body: dict[str, Any], service: Any, args: dict[str, Any], guest: str
    ) -> Response:
        hotel = self.hotel
        key = self._idempotency_key()
        token = tokens.mint()
        ticket_id = uuid.uuid4()
        new = vault.NewTicket(
            id=ticket_id, guest=guest, service=service.name, args=args,
            butler=tickets.butler_name(ticket_id), token_hash=tokens.digest(token),
            total=service.total(args), queue=service.queue,
            max_attempts=service.max_attempts or hotel.settings.max_attempts,
            idempotency_key=key, request_hash=request_hash(body) if key else None,
        )  # fmt: skip
        # Hired before the insert commits: the laundry may claim the job at once,
        # and must find this butler rather than hire another.
        now = butler.utc_now()
        notebook = tickets.Notebook(
            ticket_id=str(ticket_id), guest=guest, service=service.name, args=args,
            butler=new.butler, status=tickets.Status.QUEUED, done=0, total=new.total,
            message=None, seq=tickets.first_seq(0), attempt=0, created_at=now, updated_at=now,
        )  # fmt: skip
        line = hotel.supervisor.hire(notebook, [new.token_hash])
        try:
            written = await hotel.intake.insert(new)
        except BaseException:
            line.dismiss()
            raise
        if not written:
            line.dismiss()
            return await self._replay(key or "", new, token)
        location = f"/tickets/{ticket_id}"
        return reply(tickets.view(line.notebook, token=token), 201, {"Location": location})

    async def read(self, ticket_id: str) -> Response:
        """``GET /tickets/{id}``: live from memory, finished from the safe."""
        _, notebook = await self._find(parse_ticket_id(ticket_id))
        return reply(tickets.view(notebook))

    async def cancel(self, ticket_id: str) -> Response:
        """``DELETE /tickets/{id}``: end the ticket ``cancelled``; 409 if it ended."""
        parsed = parse_ticket_id(ticket_id)
        line, notebook = await self._find(parsed)
        if notebook.status.terminal:
            raise problems.Problem(409, f"the ticket has already ended: {notebook.status}")
        reason = "cancelled by the guest"
        try:
            record = await self.hotel.checkout.end(notebook, line, tickets.Status.CANCELLED, reason)
        except checkout.AlreadyEnded as ended:
            outcome = ended.record["outcome"] if ended.record else "ended"
            raise problems.Problem(409, f"the ticket has already ended: {outcome}") from None
        # The butler may not have handled the ending yet: show what it will show.
        current = line.notebook if line is not None else notebook
        ending = tickets.Ended(tickets.Status.CANCELLED, record, reason)
        cancelled, _ = tickets.advance(current, ending, butler.utc_now())
        return reply(tickets.view(cancelled), 202)

    # --- operators and probes ------------------------------------------------------

    async def history(self, guest: str) -> Response:
        """``GET /guests/{guest}/history``: the guest's records (operator token)."""
        self._require_operator()
        if not GUEST_PATTERN.fullmatch(guest):
            raise problems.Problem(422, "guest must be 1-64 of A-Z a-z 0-9 . _ : @ -")
        limit = self._limit(request.args.get("limit", "100"))
        records = await self.hotel.safe.guest_history(guest, limit)
        return reply({"guest": guest, "records": records})

    async def stats(self) -> Response:
        """``GET /stats``: what an operator watches (operator token); no query."""
        self._require_operator()
        return reply(self.hotel.stats())

    async def openapi(self) -> Response:
        """``GET /openapi.json``: this API, generated from the routes and services."""
        hotel = self.hotel
        return reply(openapi.document(current_app, hotel.catalogue, hotel.settings))  # type: ignore[arg-type]

    async def healthz(self) -> Response:
        """``GET /healthz``: the process is alive."""
        return reply({"status": "ok"})

    async def readyz(self) -> Response:
        """``GET /readyz``: the safe answers and the hotel takes work."""
        if self.hotel.draining:
            raise problems.Problem(503, "the hotel is shutting down")
        with trio.move_on_after(READY_TIMEOUT_SECONDS):
            await self.hotel.safe.ping()
            return reply({"status": "ready", "node": self.hotel.settings.node_name})
        raise problems.Problem(503, "the safe does not answer")

    # --- helpers -------------------------------------------------------------------

    @staticmethod
    def _idempotency_key() -> str | None:
        key = request.headers.get("Idempotency-Key")
        if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
            raise problems.Problem(422, "Idempotency-Key must be 1-255 visible ASCII characters")
        return key

    def _token(self) -> str | None:
        return tokens.bearer(request.headers.get("Authorization"))

    async def _find(self, ticket_id: uuid.UUID) -> tuple[butler.Line | None, tickets.Notebook]:
        found = await self.hotel.locate(ticket_id, self._token())
        if found is None:
            raise problems.Problem(404, "no such ticket")
        return found

    def _require_operator(self) -> None:
        expected = self.hotel.settings.operator_token
        if not expected:
            raise problems.Problem(403, "operator endpoints are off: no operator token is set")
        presented = self._token() or ""
        if not tokens.matches(presented, tokens.digest(expected)):
            raise problems.Problem(
                401, "an operator token is required", {"WWW-Authenticate": "Bearer"}
            )

    @staticmethod
    def _limit(raw: str) -> int:
        if not raw.isdigit() or not 1 <= int(raw) <= HISTORY_LIMIT_MAX:
            raise problems.Problem(422, f"limit must be a whole number 1..{HISTORY_LIMIT_MAX}")
        return int(raw)

    async def _json_body(self) -> dict[str, Any]:
        if request.mimetype != "application/json":
            raise problems.Problem(415, "send the request as application/json")
        raw = await request.get_data(as_text=False)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise problems.Problem(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise problems.Problem(422, "the body must be a JSON object")
        return body

    def _validate(self, body: dict[str, Any]) -> tuple[Any, dict[str, Any], str]:
        unknown = sorted(set(body) - TICKET_FIELDS)
        if unknown:
            raise problems.Problem(422, f"unknown field(s): {', '.join(unknown)}")
        name, guest = body.get("service"), body.get("guest")
        service = self.hotel.catalogue.get(name) if isinstance(name, str) else None
        if service is None:
            offered = ", ".join(sorted(s.name for s in self.hotel.catalogue))
            raise problems.Problem(422, f"service must be one of: {offered}")
        if not isinstance(guest, str) or not GUEST_PATTERN.fullmatch(guest):
            raise problems.Problem(422, "guest must be 1-64 of A-Z a-z 0-9 . _ : @ -")
        raw_args = body.get("args", {})
        if len(json.dumps(raw_args)) > self.hotel.settings.max_args_bytes:
            raise problems.Problem(
                422, f"args must be at most {self.hotel.settings.max_args_bytes} bytes of JSON"
            )
        try:
            args = service.args.validate(raw_args)
        except ValueError as ex:
            raise problems.Problem(422, str(ex)) from None
        return service, args, guest

    async def _replay(self, key: str, new: vault.NewTicket, token: str) -> Response:
        """The ticket an earlier request with this key created, with a token of its own.

        Each replay mints a new token (stored as a hash beside the others, up to
        ``replay_tokens_max``), so a client whose first response was lost can
        still watch its ticket. Past the limit the replay carries no token.
        """
        earlier = await self.hotel.safe.ticket_by_idempotency_key(key)
        if earlier is None or bytes(earlier["request_hash"]) != new.request_hash:
            raise problems.Problem(422, "this Idempotency-Key was used with a different request")
        ticket_id = earlier["id"]
        given = await self.hotel.safe.add_token(
            ticket_id, new.token_hash, self.hotel.settings.replay_tokens_max
        )
        found = await self.hotel.locate(ticket_id, None, check_token=False)
        if found is None:
            raise problems.Problem(409, "the ticket of this Idempotency-Key is gone")
        line, notebook = found
        if given and line is not None:
            line.token_hashes.append(new.token_hash)
        body = tickets.view(notebook, token=token if given else None)
        return reply(body, 200, {"Location": f"/tickets/{ticket_id}"})

    async def _http_error(self, error: HTTPException) -> Response:
        status = error.code or 500
        return problem_reply(problems.Problem(status, error.description or error.name))

    async def _bug(self, error: Exception) -> Response:
        logger.error("unexpected error in %s %s", request.method, request.path, exc_info=error)
        return problem_reply(problems.Problem(500, "something went wrong on our side"))

    async def _safe_away(self, error: vault.SafeUnavailable) -> Response:
        logger.warning("the safe is unreachable: %s", error)
        return problem_reply(
            problems.Problem(503, "the safe is unreachable; try again", {"Retry-After": "1"})
        )


def make_app(hotel: Hotel) -> QuartTrio:
    """The ASGI app: front desk routes plus the concierge's WebSocket."""
    app = QuartTrio("grandhotel")
    app.config["MAX_CONTENT_LENGTH"] = hotel.settings.max_body_bytes
    desk = FrontDesk(hotel)
    desk.install(app)
    concierge.Concierge(hotel).install(app)
    if hotel.settings.bench_routes:
        bench_routes.install(app, desk)
    return app

"""The OpenAPI document (``GET /openapi.json``), generated from the routes and services.

Every HTTP route of the app is looked up in ``OPERATIONS`` by its endpoint name,
so a route without a description fails loudly (``KeyError``) instead of going
undocumented; the request body of ``POST /tickets`` is built from each offered
service's argument schema. WebSocket routes cannot be described by OpenAPI 3.1:
they are listed under the ``x-websockets`` extension. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any, Final

from quart_trio import QuartTrio

from grandhotel import config, services

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_TICKET_ID = {
    "name": "ticket_id", "in": "path", "required": True,
    "schema": {"type": "string", "format": "uuid"},
}  # fmt: skip
_GUEST = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,63}$"}


def _json(ref: str, description: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{ref}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OPERATIONS: Final[dict[str, dict[str, Any]]] = {
    "create": {
        "summary": "Request a service: a ticket, its job and its butler.",
        "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                        "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"}}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/TicketRequest"}}}},
        "responses": {"201": _json("Ticket", "Created; the token is shown once."),
                      "200": _json("Ticket", "An idempotent replay."),
                      "400": _PROBLEM, "413": _PROBLEM, "415": _PROBLEM, "422": _PROBLEM,
                      "503": _PROBLEM},
    },
    "read": {
        "summary": "A ticket: live from its butler's memory, or finished from the safe.",
        "parameters": [_TICKET_ID], "security": [{"ticket": []}],
        "responses": {"200": _json("Ticket", "The ticket."), "404": _PROBLEM, "503": _PROBLEM},
    },
    "cancel": {
        "summary": "Cancel a ticket; it ends cancelled with its record.",
        "parameters": [_TICKET_ID], "security": [{"ticket": []}],
        "responses": {"202": _json("Ticket", "Cancelled."), "404": _PROBLEM, "409": _PROBLEM,
                      "503": _PROBLEM},
    },
    "history": {
        "summary": "A guest's service records, newest first (operators).",
        "parameters": [
            {"name": "guest", "in": "path", "required": True, "schema": _GUEST},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
        ],
        "security": [{"operator": []}],
        "responses": {"200": _json("History", "The records."), "401": _PROBLEM,
                      "403": _PROBLEM, "422": _PROBLEM, "503": _PROBLEM},
    },
    "stats": {
        "summary": "Counters for operators, from memory.",
        "security": [{"operator": []}],
        "responses": {"200": _json("Stats", "The counters."), "401": _PROBLEM, "403": _PROBLEM},
    },
    "healthz": {"summary": "Liveness.", "responses": {"200": _json("Status", "Alive.")}},
    "readyz": {
        "summary": "Readiness: the safe answers and the hotel takes work.",
        "responses": {"200": _json("Status", "Ready."), "503": _PROBLEM},
    },
    "openapi": {
        "summary": "This document.",
        "responses": {"200": {"description": "OpenAPI 3.1",
                              "content": {"application/json": {"schema": {"type": "object"}}}}},
    },
}  # fmt: skip

_RECORD: Final = {
    "type": "object",
    "required": ["ticket_id", "guest_id", "service", "outcome", "done", "total",
                 "amount_cents", "currency", "attempts", "started_at", "finished_at"],
    "properties": {
        "ticket_id": {"type": "string"}, "guest_id": {"type": "string"},
        "service": {"type": "string"},
        "outcome": {"enum": ["completed", "failed", "cancelled"]},
        "done": {"type": "integer"}, "total": {"type": "integer"},
        "amount_cents": {"type": "integer"}, "currency": {"type": "string"},
        "attempts": {"type": "integer"}, "result": {}, "reason": {"type": ["string", "null"]},
        "started_at": {"type": "string"}, "finished_at": {"type": "string"},
        "duration_ms": {"type": ["integer", "null"]},
    },
}  # fmt: skip

_TICKET: Final = {
    "type": "object",
    "required": ["id", "service", "guest", "status", "butler", "progress", "seq", "links"],
    "properties": {
        "id": {"type": "string", "format": "uuid"}, "service": {"type": "string"},
        "guest": {"type": "string"},
        "status": {"enum": ["queued", "in_progress", "retrying", "completed", "failed",
                            "cancelled"]},
        "butler": {"type": "string"},
        "progress": {"type": "object", "required": ["done", "total", "percent"],
                     "properties": {"done": {"type": "integer"}, "total": {"type": "integer"},
                                    "percent": {"type": "integer"}}},
        "message": {"type": ["string", "null"]}, "attempt": {"type": "integer"},
        "seq": {"type": "integer"}, "created_at": {"type": "string"},
        "updated_at": {"type": "string"},
        "token": {"type": "string", "description": "Shown once, in the 201."},
        "reason": {"type": "string"}, "record": _RECORD,
        "links": {"type": "object", "properties": {"self": {"type": "string"},
                                                   "live": {"type": "string"}}},
    },
}  # fmt: skip


def _ticket_request(catalogue: services.Catalogue, settings: config.HotelConfig) -> Any:
    variants = [
        {
            "type": "object",
            "required": ["service", "guest"] + (["args"] if service.args.fields else []),
            "additionalProperties": False,
            "properties": {
                "service": {"const": service.name},
                "args": service.args.json_schema(),
                "guest": _GUEST,
            },
        }
        for service in catalogue
    ]
    return {"oneOf": variants, "description": f"args: at most {settings.max_args_bytes} bytes"}


def _path(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)


def document(
    app: QuartTrio, catalogue: services.Catalogue, settings: config.HotelConfig
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` offering ``catalogue``."""
    paths: dict[str, dict[str, Any]] = {}
    websockets: dict[str, Any] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static",) or rule.endpoint.startswith("bench_"):
            continue
        if rule.websocket:
            websockets[_path(rule.rule)] = {"endpoint": rule.endpoint, "see": "docs/api.md"}
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            paths.setdefault(_path(rule.rule), {})[method.lower()] = OPERATIONS[rule.endpoint]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "grandhotel",
            "version": "1",
            "description": "Every service request gets its own butler.",
        },
        "paths": paths,
        "x-websockets": websockets,
        "components": {
            "securitySchemes": {
                "ticket": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The ticket's token (from its 201).",
                },
                "operator": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "GRANDHOTEL_OPERATOR_TOKEN.",
                },
            },
            "schemas": {
                "TicketRequest": _ticket_request(catalogue, settings),
                "Ticket": _TICKET,
                "Record": _RECORD,
                "History": {
                    "type": "object",
                    "required": ["guest", "records"],
                    "properties": {
                        "guest": {"type": "string"},
                        "records": {"type": "array", "items": _RECORD},
                    },
                },
                "Stats": {"type": "object"},
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}},
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                    },
                },
            },
            "responses": {
                "Problem": {
                    "description": "An error (RFC 9457).",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                },
            },
        },
    }

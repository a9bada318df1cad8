"""Every limit, duration and size of the hotel, in one frozen object.

Units are in the names (``*_seconds``, ``*_bytes``, ``*_cents``). Values come from
defaults, then ``GRANDHOTEL_<NAME>`` environment variables, then command-line
flags (``cli.py``). ``HotelConfig.from_env`` is the one place that reads the
environment.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from typing import Any, Final

from grandhotel import chaos

ENV_PREFIX: Final = "GRANDHOTEL_"


def default_node_name() -> str:
    """``host:pid``: unique per process on a machine, readable in the safe."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclasses.dataclass(frozen=True, slots=True)
class HotelConfig:
    """The hotel's settings. Each field is also ``GRANDHOTEL_<FIELD>`` in the env."""

    # --- where ---
    database_url: str = ""
    """libpq URL or conninfo; empty means libpq's defaults (``PG*`` variables)."""
    host: str = "127.0.0.1"
    port: int = 8000
    node_name: str = dataclasses.field(default_factory=default_node_name)
    operator_token: str = ""
    """Bearer token for operator endpoints (history); empty disables them (403)."""

    # --- the safe ---
    pool_size: int = 10
    connect_timeout_seconds: float = 5.0
    query_timeout_seconds: float = 10.0
    """A statement (with its wait for a connection) taking longer means the safe is away."""
    migrate_on_start: bool = True

    # --- the front desk and its doors ---
    max_body_bytes: int = 64 * 1024
    max_args_bytes: int = 8 * 1024
    """A service request's ``args``, as JSON, may not be bigger (422)."""
    max_connections: int = 20_000
    """Requests and WebSockets open at once, hotel-wide (more get 503)."""
    max_connections_per_client: int = 1_000
    """Requests and WebSockets open at once from one client address (more get 429)."""
    allowed_origins: tuple[str, ...] = ()
    """Exact ``Origin`` values browsers may open WebSockets from (others get 403)."""
    allow_missing_origin: bool = True
    """Allow WebSockets without ``Origin`` (scripts and mobile apps send none)."""
    listen_backlog: int = 4096
    """Above hypercorn's 100: thousands of WebSocket clients connect at once."""
    accept_batch: int = 1
    """Connections taken off the backlog per wake-up of the doorman (doorman.py).
    1 is trio's own pace; more lets a crowd in faster (see doorman.py for why
    it is not the default)."""
    shutdown_grace_seconds: float = 10.0
    intake_batch_max: int = 200
    """New tickets written by one INSERT at most (group commit under load)."""
    intake_concurrency: int = 32
    """``POST /tickets`` written at once; more wait their turn at the desk. It
    bounds the work and memory of a crowd of new tickets; the live updates of
    running ones are kept on time by the pace (``live_lag_target_ms``), so the
    gate can be wide enough for large group commits (8 was the default before
    the pace: intake 0.72 x the bare route against ~0.78 x with 32)."""
    intake_wait_seconds: float = 30.0
    """Longest a new ticket waits for its turn at the desk before a 503."""
    live_lag_target_ms: float = 5.0
    """While guests watch and the loop's lag is above this, the desk paces new
    tickets so that the frames of running ones stay on time (pace.py); 0 turns
    pacing off."""
    pace_tick_seconds: float = 0.05
    """How often, on average, the loop's lag is measured and a paced desk's turns
    are handed out (each wait jittered by +-50 %, pace.py); only while newcomers
    arrive or wait."""
    pace_min_rate: float = 2.0
    """The slowest pace of the desk, in new tickets per second."""
    pace_recovery_per_second: float = 5.0
    """Tickets per second the pace regains per second the loop is on time."""
    door_min_rate: float = 20.0
    """The slowest pace of the door (new connections per second) while the loop
    is late with guests watching (doorman.py)."""
    door_recovery_per_second: float = 20.0
    """Connections per second the door's pace regains per second on time."""
    pace_backoff: float = 0.8
    """The factor the pace is cut by when the loop is late (0 < f < 1)."""
    pace_cooldown_seconds: float = 0.5
    """The shortest time between two cuts of the pace."""
    gc_gen0_threshold: int = 10_000
    """Python's default (700) lets the cyclic GC dominate CPU with thousands of
    open connections (architecture.md); 50,000 made each young collection a
    150-500 ms pause at 3,000 watched tickets; 10,000 had the lowest p99 of
    2,000 / 10,000 / 50,000 side by side (bench/README.md)."""
    gc_gen1_threshold: int = 0
    """Young collections per middle-generation collection (Python's own is 10);
    0: none, the hotel's full collections do that work too. A middle collection
    walks every object that survived a young one (each live ticket's tasks and
    connections), and was the longest pause of a busy run: 229-346 ms at 3,000
    watched tickets, against none with 0 and a peak RSS no higher (bench/README.md)."""
    gc_young_interval_seconds: float = 0.1
    """The shortest wait between the hotel's young collections, and the first.
    They run besides Python's own trigger, which lets the young generation grow
    far past its threshold when old objects die (housekeeping.py); 0: Python's
    trigger only."""
    gc_young_longest_interval_seconds: float = 1.0
    """The longest wait between the hotel's young collections: the wait grows
    from ``gc_young_interval_seconds`` while pauses stay short, since most
    young objects of a steady load die before a longer wait ends (fewer
    collections, not longer ones: housekeeping.py)."""
    gc_young_pause_target_ms: float = 20.0
    """A young collection longer than this halves the wait before the next one.
    At 500 watched tickets stepping every 0.2 s a young pause was 8-13 ms at any
    wait from 0.25 s to 1 s; a 10 ms target kept halving the wait there (three
    times the collector's CPU for the same pause), 20 ms let it stay at 1 s."""
    gc_full_interval_seconds: float = 600.0
    """Longest time between full collections, which stop the whole hotel; it makes
    one whenever no ticket is live, and Python never does (housekeeping.py)."""
    gc_check_seconds: float = 1.0
    """How often the hotel looks whether a full collection is due."""
    replay_tokens_max: int = 16
    """Tokens a ticket may hold: each idempotent replay of its POST gets its own."""

    bench_routes: bool = False
    """Serve the bare comparison routes under /_bench (benchmarks only)."""

    # --- the laundry (job executor) ---
    queue_limits: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"default": 1000})
    """Attempts running at once per queue; a queue not listed gets ``default``."""
    max_attempts: int = 5
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    poll_interval_seconds: float = 1.0
    """Polling fallback behind LISTEN/NOTIFY; also bounds pickup of retries."""
    heartbeat_seconds: float = 5.0
    node_stale_seconds: float = 30.0
    """A node whose heartbeat is older than this is dead: its jobs are rescued."""
    safe_retry_max_seconds: float = 5.0
    """Longest wait between tries of a write that must land (completion, failure)."""
    checkpoint_interval_seconds: float = 1.0
    """Running attempts' progress and checkpoints are saved at most this often."""
    cancel_deadline_seconds: float = 5.0
    """How long a cancelled attempt may take to stop before it is reported stuck."""

    # --- the built-in laundry service ---
    laundry_step_seconds: float = 2.0
    laundry_price_per_suit_cents: int = 450
    currency: str = "EUR"

    # --- butlers and their supervisor ---
    butler_restart_limit: int = 3
    butler_restart_window_seconds: float = 5.0
    butler_restart_backoff_seconds: float = 0.05
    butler_restart_backoff_max_seconds: float = 1.0
    restart_alarm_per_minute: int = 120
    """Hotel-wide butler restarts per minute above which an alarm is logged (only
    logged: one ticket's trouble never stops the others)."""
    butler_inbox_size: int = 64
    butler_redeliveries: int = 2
    """How often a message that crashed a butler is handed to its replacement."""
    chaos_butler_crash_rate: float = 0.0
    """FAULT INJECTION, off by default: chance that a butler raises on a message."""
    chaos_exit_at: str = ""
    """FAULT INJECTION, off by default: end the process abruptly at this point of a
    job (``after_claim``, ``before_complete``, ``after_complete``; see chaos.py)."""

    # --- concierges (WebSocket watchers) ---
    watcher_buffer_events: int = 32
    """Progress frames a watcher's mailbox holds before it coalesces them."""
    write_deadline_seconds: float = 10.0
    """A frame not written within this is a stuck reader: closed with 1008."""
    ws_ping_interval_seconds: float = 10.0
    """The server pings every WebSocket this often; live clients answer."""
    idle_timeout_seconds: float = 30.0
    """A connection that sends nothing (no request, no pong) this long is dropped:
    dead peers, guests that stopped reading, half-finished requests."""
    ws_max_message_bytes: int = 64 * 1024
    """A bigger message from a guest closes the WebSocket with 1009."""
    max_watchers_per_ticket: int = 32
    """More WebSockets on one ticket are refused (429)."""
    guest_messages_per_second: float = 5.0
    guest_message_burst: int = 20
    """A guest sending faster than this (token bucket) is closed with 1008."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> HotelConfig:
        """Defaults, overridden by ``GRANDHOTEL_*`` variables, then by ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _parse(field.name, raw, _default_of(field))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        if not 0.0 <= self.chaos_butler_crash_rate <= 1.0:
            raise ValueError("chaos_butler_crash_rate must be within 0..1")
        if self.chaos_exit_at and self.chaos_exit_at not in chaos.EXIT_POINTS:
            raise ValueError(f"chaos_exit_at must be one of {sorted(chaos.EXIT_POINTS)}")
        for name in ("pool_size", "max_attempts", "butler_restart_limit", "butler_inbox_size",
                     "watcher_buffer_events", "replay_tokens_max", "accept_batch",
                     "intake_concurrency", "gc_gen0_threshold"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("gc_gen1_threshold", "gc_young_interval_seconds", "live_lag_target_ms",
                     "pace_cooldown_seconds"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not 0.0 < self.pace_backoff < 1.0:
            raise ValueError("pace_backoff must be between 0 and 1")
        if self.gc_young_longest_interval_seconds < self.gc_young_interval_seconds:
            raise ValueError(
                "gc_young_longest_interval_seconds must not be below gc_young_interval_seconds"
            )
        for name in ("gc_check_seconds", "gc_full_interval_seconds", "intake_wait_seconds",
                     "pace_tick_seconds", "pace_min_rate", "pace_recovery_per_second",
                     "door_min_rate", "door_recovery_per_second",
                     "gc_young_pause_target_ms"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be above 0")

    def queue_limit(self, queue: str) -> int:
        """How many attempts of ``queue`` may run at once."""
        return self.queue_limits.get(queue, self.queue_limits.get("default", 1))


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    factory: Any = field.default_factory
    return factory()


def _parse(name: str, raw: str, default: Any) -> Any:
    """Parse ``raw`` as the type of ``default``; raise ValueError naming the setting."""
    try:
        if isinstance(default, bool):
            if raw.lower() not in {"1", "0", "true", "false", "yes", "no"}:
                raise ValueError(raw)
            return raw.lower() in {"1", "true", "yes"}
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            # "https://a.example,https://b.example"
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        if isinstance(default, Mapping):
            # "default=1000,mail=10"
            pairs = (item.split("=", 1) for item in raw.split(",") if item.strip())
            return {k.strip(): int(v) for k, v in pairs}
    except ValueError as ex:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}: cannot parse {raw!r}") from ex
    return raw

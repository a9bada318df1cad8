"""The peer: the laundry the way Python teams build it today, on Celery + Redis.

A Celery task cleans one suit per ``step_seconds`` and reports each step with
``update_state(state="PROGRESS", meta=...)`` to the Redis result backend; the
client polls the result every 100 ms. ``meta["at"]`` is the worker's wall clock
when it reported the step, so the poller's receipt time minus it is the same
report-to-receipt latency that grandhotel's ``at`` gives.

Settings from the environment (set by ``bench.peer`` for its worker):
``BENCH_PEER_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``) and
``BENCH_PEER_QUEUE``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

REDIS_URL = os.environ.get("BENCH_PEER_REDIS_URL", "redis://127.0.0.1:6379/15")
QUEUE = os.environ.get("BENCH_PEER_QUEUE", "bench-peer")

app = Celery("bench_peer", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue=QUEUE,
    result_expires=3600,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_acks_late=False,
    worker_prefetch_multiplier=1,
)


@app.task(bind=True, name="bench.laundry")
def laundry(self: Any, suits: int, step_seconds: float) -> dict[str, Any]:
    """Clean ``suits`` suits, reporting each one."""
    started = time.time()
    for suit in range(1, suits + 1):
        time.sleep(step_seconds)  # cleaning suit number `suit`
        self.update_state(
            state="PROGRESS",
            meta={
                "done": suit,
                "total": suits,
                "message": f"Suit {suit}/{suits} complete",
                "at": time.time(),
                "started_at": started,
            },
        )
    return {"suits_cleaned": suits, "started_at": started, "at": time.time()}

"""``chaos``: watch with sick butlers and watchers that disconnect and resume.

The server runs with ``GRANDHOTEL_CHAOS_BUTLER_CRASH_RATE`` (a butler raises on
that share of the reports it handles; the supervisor replaces it, or fails the
ticket after too many crashes in a row). Each watcher, after each frame, hangs
up with ``--disconnect-probability``, waits up to ``--pause`` seconds and
resumes with ``?after=<last seq>``.

Lost, as the issue defines it: a watcher whose final state misses the terminal
event, or seqs out of order or duplicated within one connection (also: a
resumed snapshot older than what the watcher had, a second terminal event, a
gap within one connection). Any of them fails the run. Restart counts come from
``GET /stats`` (operator token). A ticket given up after repeated crashes ends
``failed``: that is a terminal event delivered, not a loss, and is counted.
Progress reports dropped after ``butler_redeliveries`` crashes are by design
(the next report carries the whole state); they show as ``steps_unseen``.
"""

from __future__ import annotations

import argparse
import random
import secrets

from bench import driver, report, server, watch

CHAOS_KEYS = (
    "missing_terminal", "extra_terminal", "duplicated", "out_of_order",
    "not_snapshot_first", "after_terminal", "lost_gaps",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The chaos scenario's options."""
    parser.add_argument("--tickets", type=int, default=2000, help="tickets (default 2,000)")
    parser.add_argument("--steps", type=int, default=10, help="steps per ticket")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between steps")
    parser.add_argument("--crash-rate", type=float, default=0.05, help="butler crash rate")
    parser.add_argument(
        "--disconnect-probability",
        type=float,
        default=0.1,
        help="chance that a watcher hangs up after a frame",
    )
    parser.add_argument("--pause", type=float, default=0.3, help="longest pause before resuming")
    parser.add_argument("--concurrency", type=int, default=32, help="HTTP connections")
    parser.add_argument(
        "--pool-size", type=int, default=20, help="the server's GRANDHOTEL_POOL_SIZE"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the watchers' randomness")
    parser.add_argument("--timeout", type=float, default=0.0, help="give up after (0: auto)")
    driver.add_target_arguments(parser)


async def run(options: argparse.Namespace) -> report.Result:
    """The chaos scenario."""
    token = secrets.token_urlsafe(16)
    env = watch.server_env(options, token)
    env["GRANDHOTEL_CHAOS_BUTLER_CRASH_RATE"] = options.crash_rate
    seed = options.seed if options.seed is not None else random.randrange(2**32)
    chaos = driver.Chaos(options.disconnect_probability, options.pause, random.Random(seed))
    timeout = options.timeout or watch.default_timeout(
        options.tickets, options.steps, options.interval + options.pause
    )
    async with server.target_for(options, env) as target:
        the_run = await watch.drive(
            target,
            tickets=options.tickets,
            steps=options.steps,
            concurrency=options.concurrency,
            http_client=options.http_client,
            limit_seconds=timeout,
            chaos=chaos,
            label="chaos ",
        )
    metrics = watch.summarise(
        the_run, tickets=options.tickets, steps=options.steps, interval=options.interval
    )
    events = metrics["events"]
    lost = sum(events[key] for key in CHAOS_KEYS)
    metrics["lost"] = lost
    failures = driver.failures_of(events, keys=CHAOS_KEYS)
    if the_run.tally.created < options.tickets:
        failures.append(f"only {the_run.tally.created} of {options.tickets} tickets were created")
    if the_run.server_death:
        failures.insert(0, the_run.server_death)
    if the_run.timed_out:
        failures.append("timed out before every ticket ended")
    if not the_run.final_stats:
        failures.append("no restart counts: GET /stats did not answer (operator token?)")
    result = report.Result(
        scenario="chaos",
        parameters={
            "tickets": options.tickets,
            "steps": options.steps,
            "interval_seconds": options.interval,
            "butler_crash_rate": options.crash_rate,
            "disconnect_probability": options.disconnect_probability,
            "pause_max_seconds": options.pause,
            "seed": seed,
            "url": options.url or "(started here)",
        },
        metrics=metrics,
        targets=[report.Target("lost events (chaos definition)", float(lost), 0, "events")],
        failures=failures,
        series=the_run.sampler.series(),
        latencies_ms={"progress (report to receipt)": the_run.latencies},
        postgres_url=options.admin_url,
    )
    result.notes.append(
        f"butler restarts {metrics['server']['butler_restarts']}, tickets given up "
        f"{metrics['server']['butlers_given_up']} (ended failed: {events['failed']}), "
        f"watcher resumes {events['resumes']}"
    )
    return result

"""Results: the machine, statistics, and the JSON + Markdown + PNG files of a run.

A scenario returns a ``Result``: its parameters, its metrics (nested dicts of
plain values), the targets it was held to (``Target``), the correctness checks
(``failures``: non-empty means the run failed), time series and latency samples
for the plot. ``write`` puts ``<scenario>-<UTC time>.json``, ``.md`` and ``.png``
in the results folder (``bench/results/``, git-ignored). The PNG needs
matplotlib (the ``bench`` extra); without it the run says so and writes the rest.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import server

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


# --- statistics ---------------------------------------------------------------------


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (NaN when empty)."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded to 3 places; None when either is missing or ``b`` is 0."""
    if a is None or b is None or not b:
        return None
    return round(a / b, 3)


def median_ratio(ratios: Sequence[float | None]) -> float | None:
    """The median of the rounds' ratios; None if any round measured nothing."""
    present = [r for r in ratios if r is not None]
    if not present or len(present) != len(ratios):
        return None
    return round(statistics.median(present), 3)


def summary(values: Iterable[float], digits: int = 2) -> dict[str, float | int | None]:
    """count, mean, p50, p95, p99, max (None where there is no sample)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), digits),
        "p50": round(percentile(ordered, 0.50), digits),
        "p95": round(percentile(ordered, 0.95), digits),
        "p99": round(percentile(ordered, 0.99), digits),
        "max": round(ordered[-1], digits),
    }


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Counts per bucket ``[edges[i], edges[i+1])``; the last bucket takes the rest."""
    counts = [0] * len(edges)
    for value in values:
        index = 0
        for i, edge in enumerate(edges):
            if value >= edge:
                index = i
            else:
                break
        counts[index] += 1
    return counts


LATENCY_EDGES_MS: tuple[float, ...] = (
    0,
    0.5,
    1,
    2,
    3,
    5,
    7.5,
    10,
    15,
    20,
    30,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    1000,
    2000,
)


# --- the machine ----------------------------------------------------------------------


def _meminfo_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=server.REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _versions(names: Iterable[str]) -> dict[str, str]:
    from importlib import metadata

    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def machine(postgres_url: str | None = None) -> dict[str, Any]:
    """Cores, memory, CPU, OS, Python, PostgreSQL, packages, the code's commit."""
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cores": os.cpu_count(),
        "memory_bytes": _meminfo_bytes(),
        "memory_gib": round(_meminfo_bytes() / 2**30, 1),
        "cpu_model": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "postgresql": server.postgres_version(postgres_url) if postgres_url else "",
        "packages": _versions(
            [
                "grandhotel",
                "trio",
                "hypercorn",
                "quart",
                "quart-trio",
                "psycopg",
                "wsproto",
                "trio-websocket",
                "httpx",
                "celery",
                "redis",
                "kombu",
            ]
        ),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty),
        "load_average": os.getloadavg(),
    }


def command_line() -> str:
    """The exact command that started this process."""
    return shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))


# --- results ----------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    """One target of the issue: a measured value against a bound."""

    name: str
    value: float | None
    bound: float
    unit: str
    higher_is_better: bool = False

    @property
    def met(self) -> bool:
        """Whether the value is within the bound (a missing value misses)."""
        if self.value is None or math.isnan(self.value):
            return False
        return self.value >= self.bound if self.higher_is_better else self.value <= self.bound

    def as_dict(self) -> dict[str, Any]:
        """Plain values for the JSON."""
        return {
            "name": self.name,
            "value": self.value,
            "bound": self.bound,
            "unit": self.unit,
            "rule": ">=" if self.higher_is_better else "<=",
            "met": self.met,
        }


@dataclasses.dataclass
class Result:
    """What a scenario measured."""

    scenario: str
    parameters: dict[str, Any]
    metrics: dict[str, Any]
    targets: list[Target] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    """Correctness failures (lost, duplicated, out-of-order events ...): exit non-zero."""
    notes: list[str] = dataclasses.field(default_factory=list)
    series: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    """Time series for the plot: ``t`` (s) and any named columns of the same length."""
    latencies_ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    """Latency samples per label (kept out of the JSON; summarised and plotted)."""
    postgres_url: str | None = None

    @property
    def passed(self) -> bool:
        """No correctness failure."""
        return not self.failures


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def code_version() -> dict[str, Any]:
    """The commit and whether tracked files had local changes (read at the start)."""
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def write(
    result: Result,
    out: Path,
    *,
    started_at: datetime.datetime,
    finished_at: datetime.datetime,
    code: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the JSON, the Markdown summary and (with matplotlib) the PNG.

    ``code`` is ``code_version()`` taken when the run started (the tree may move
    during a long run); without it, it is read now.
    """
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{result.scenario}-{started_at.strftime('%Y%m%dT%H%M%SZ')}"
    document = {
        "scenario": result.scenario,
        "command": command_line(),
        "cwd": os.getcwd(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": finished_at.isoformat(timespec="seconds"),
        "duration_seconds": round((finished_at - started_at).total_seconds(), 1),
        "machine": {**machine(result.postgres_url), **(code or {})},
        "parameters": result.parameters,
        "metrics": result.metrics,
        "latency_histograms_ms": {
            label: {"edges": list(LATENCY_EDGES_MS), "counts": histogram(values, LATENCY_EDGES_MS)}
            for label, values in result.latencies_ms.items()
        },
        "targets": [target.as_dict() for target in result.targets],
        "passed": result.passed,
        "failures": result.failures,
        "notes": result.notes,
        "series": result.series,
    }
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    png = out / f"{stem}.png"
    plotted = plot(result, png)
    document["notes"] = result.notes
    paths["json"].write_text(json.dumps(_jsonable(document), indent=2) + "\n")
    paths["md"].write_text(markdown(document, png.name if plotted else None))
    if plotted:
        paths["png"] = png
    return paths


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _flatten(prefix: str, value: Any, rows: list[tuple[str, Any]]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, rows)
    else:
        rows.append((prefix, value))


def markdown(document: Mapping[str, Any], png_name: str | None) -> str:
    """The human summary of one run."""
    m = document["machine"]
    lines = [
        f"# bench {document['scenario']}: {'PASSED' if document['passed'] else 'FAILED'}",
        "",
        f"- command: `{document['command']}` (in `{document['cwd']}`)",
        f"- started {document['started_at']}, took {document['duration_seconds']} s",
        f"- machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, {m['os']}, "
        f"Python {m['python']}, PostgreSQL: {m['postgresql'] or '-'}",
        f"- code: {m['git_commit'][:12] or '-'}{' (with local changes)' if m['git_dirty'] else ''}",
        "",
        "## Parameters",
        "",
        "| parameter | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_cell(v)} |" for k, v in document["parameters"].items()]
    if document["targets"]:
        lines += ["", "## Targets", "", "| target | measured | bound | met |", "|---|---|---|---|"]
        for t in document["targets"]:
            lines.append(
                f"| {t['name']} | {_cell(t['value'])} {t['unit']} | {t['rule']} {_cell(t['bound'])}"
                f" {t['unit']} | {'yes' if t['met'] else '**NO**'} |"
            )
    rows: list[tuple[str, Any]] = []
    _flatten("", document["metrics"], rows)
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows]
    if document["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in document["failures"]]
    if document["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in document["notes"]]
    if png_name:
        lines += ["", f"![plot]({png_name})"]
    return "\n".join(lines) + "\n"


def plot(result: Result, path: Path) -> bool:
    """Latency distribution and tickets in flight over time; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        result.notes.append("no plot: matplotlib is not installed (pip install -e '.[bench]')")
        return False
    series = result.series
    panels = int(bool(result.latencies_ms)) + int(len(series.get("t", [])) > 1)
    if not panels:
        return False
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    col = 0
    if result.latencies_ms:
        ax = axes[0][col]
        col += 1
        for label, values in result.latencies_ms.items():
            if not values:
                continue
            ordered = sorted(values)
            floor = 0.01
            ax.plot(
                [max(v, floor) for v in ordered],
                [100.0 * (i + 1) / len(ordered) for i in range(len(ordered))],
                label=f"{label} (p50 {percentile(ordered, 0.5):.1f}, "
                f"p99 {percentile(ordered, 0.99):.1f} ms)",
            )
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("cumulative % of events")
        ax.set_title("latency distribution")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if len(series.get("t", [])) > 1:
        ax = axes[0][col]
        t = series["t"]
        for name, values in series.items():
            if name == "t" or name.endswith("_mb") or len(values) != len(t):
                continue
            ax.plot(t, values, label=name.replace("_", " "))
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("count")
        ax.set_title("in flight over time")
        ax.grid(True, alpha=0.3)
        rss = [(name, values) for name, values in series.items() if name.endswith("_mb")]
        if rss:
            twin = ax.twinx()
            for name, values in rss:
                twin.plot(t, values, linestyle="--", color="grey", label=name.replace("_", " "))
            twin.set_ylabel("MB")
            twin.legend(loc="upper right", fontsize=8)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"grandhotel bench {result.scenario}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True

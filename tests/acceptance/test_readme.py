"""The README's "Define a service" example works as written, in a real hotel."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from helpers import assert_one_stream, create, watch

README = Path(__file__).parents[2] / "README.md"


def readme_example() -> dict[str, Any]:
    text = README.read_text(encoding="utf-8")
    [code] = [
        block for block in re.findall(r"```python\n(.*?)```", text, re.S) if "polish" in block
    ]
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    return namespace


async def test_the_readme_service_runs(start_hotel: Any, query: Any) -> None:
    example = readme_example()
    _, base = await start_hotel(catalogue=example["catalogue"])
    async with httpx.AsyncClient(base_url=base) as client:
        ticket = await create(client, service="polish", args={"shoes": 1})
    seen = await watch(base, ticket["id"], ticket["token"])
    assert_one_stream(seen.events, "completed")
    assert seen.events[-1]["record"]["amount_cents"] == 300
    assert seen.events[-1]["record"]["result"] == {"shoes": 1}
    assert [e["message"] for e in seen.events if e["type"] == "progress"] == ["Shoe 1 shines"]

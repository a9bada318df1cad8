"""The built-in ``laundry`` service: one step per suit, a price per suit."""

from __future__ import annotations

from typing import Any

import trio

from grandhotel import schemas, services

ARGS = schemas.Object(
    {"suits": schemas.Integer(minimum=1, maximum=100, description="Suits to clean.")}
)


def make(step_seconds: float, price_per_suit_cents: int) -> services.Service:
    """The laundry, cleaning a suit every ``step_seconds``."""

    async def clean_suits(ctx: services.Context) -> dict[str, Any]:
        suits: int = ctx.args["suits"]
        already = int(ctx.resumed["suits_done"]) if ctx.resumed else 0
        if already:
            await ctx.progress(already, suits, f"Resuming after suit {already}/{suits}")
        for suit in range(already + 1, suits + 1):
            await trio.sleep(step_seconds)  # cleaning suit number `suit`
            await ctx.progress(suit, suits, f"Suit {suit}/{suits} complete")
            ctx.checkpoint({"suits_done": suit})
        return {"suits_cleaned": suits, "resumed_after": already}

    return services.Service(
        name="laundry",
        args=ARGS,
        run=clean_suits,
        total=lambda args: int(args["suits"]),
        bill=lambda args, done: price_per_suit_cents * done,
    )

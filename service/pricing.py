"""What LLM tokens cost, from the per-model price table in settings (USD per million tokens)."""

from __future__ import annotations

from collections.abc import Mapping


def token_cost(prompt_tokens: int, completion_tokens: int, model: str,
               prices: Mapping[str, tuple[float, float]], discount: float = 1.0) -> float | None:
    """USD for these tokens at the model's prices; None when the table has no price for it."""
    price = prices.get(model)
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6 * discount

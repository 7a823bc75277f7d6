"""What a model call costs: the one place tokens become dollars.

Prices come from `pricing` in config/settings.yaml (per million tokens, per model). Input tokens the
provider served from its prompt cache are billed at `cached_input_per_million` when the model has
one (OpenAI bills cached input at a fraction of the price), else at the full input price. A model
without a price costs None here; callers decide whether that is 0 (the ledger) or "unpriced" (the
report). A request sent through the Batch API (`batch=True`) is billed at the model's
`batch_*_per_million` prices, each missing one being the live price times `batch_discount` (0.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cost_usd(pricing: Mapping[str, Any] | None, model: str, prompt_tokens: int,
             completion_tokens: int, cached_tokens: int = 0, batch: bool = False
             ) -> float | None:
    entry = (pricing or {}).get(model)
    if entry is None:
        return None
    get = entry.get if isinstance(entry, Mapping) else lambda k, d=None: getattr(entry, k, d)
    cached = min(max(cached_tokens or 0, 0), prompt_tokens or 0)
    cached_price = get("cached_input_per_million", None)
    if cached_price is None:
        cached_price = get("input_per_million")
    prices = {"input": get("input_per_million"), "cached": cached_price,
              "output": get("output_per_million")}
    if batch:
        discount = get("batch_discount", None) or 0.5
        for kind, key in (("input", "batch_input_per_million"),
                          ("cached", "batch_cached_input_per_million"),
                          ("output", "batch_output_per_million")):
            own = get(key, None)
            prices[kind] = own if own is not None else prices[kind] * discount
    return ((prompt_tokens - cached) * prices["input"] + cached * prices["cached"]
            + completion_tokens * prices["output"]) / 1e6

"""What a model call costs: the one place tokens become dollars.

Prices come from `pricing` in config/settings.yaml (per million tokens, per model). Input tokens the
provider served from its prompt cache are billed at `cached_input_per_million` when the model has
one (OpenAI bills cached input at a fraction of the price), else at the full input price. A model
without a price costs None here; callers decide whether that is 0 (the ledger) or "unpriced" (the
report).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def cost_usd(pricing: Mapping[str, Any] | None, model: str, prompt_tokens: int,
             completion_tokens: int, cached_tokens: int = 0) -> float | None:
    entry = (pricing or {}).get(model)
    if entry is None:
        return None
    get = entry.get if isinstance(entry, Mapping) else lambda k, d=None: getattr(entry, k, d)
    cached = min(max(cached_tokens or 0, 0), prompt_tokens or 0)
    cached_price = get("cached_input_per_million", None)
    if cached_price is None:
        cached_price = get("input_per_million")
    return ((prompt_tokens - cached) * get("input_per_million") + cached * cached_price
            + completion_tokens * get("output_per_million")) / 1e6

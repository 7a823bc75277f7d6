"""One pricing function for the ledger and the report, cached input billed at its own price."""

from crews.pricing import cost_usd
from crews.settings import Price

PRICING = {"gpt-4o-mini": Price(input_per_million=0.15, output_per_million=0.60,
                                cached_input_per_million=0.075),
           "plain": {"input_per_million": 1.0, "output_per_million": 2.0}}


def test_cached_input_is_billed_at_the_cached_price():
    full = cost_usd(PRICING, "gpt-4o-mini", 2_000, 100)
    half_cached = cost_usd(PRICING, "gpt-4o-mini", 2_000, 100, cached_tokens=1_024)
    assert full == (2_000 * 0.15 + 100 * 0.60) / 1e6
    assert half_cached == ((2_000 - 1_024) * 0.15 + 1_024 * 0.075 + 100 * 0.60) / 1e6


def test_without_a_cached_price_cached_tokens_cost_the_full_input_price():
    assert cost_usd(PRICING, "plain", 1_000, 10, cached_tokens=512) == \
        cost_usd(PRICING, "plain", 1_000, 10) == (1_000 + 20) / 1e6


def test_a_cached_count_larger_than_the_prompt_is_clamped_and_an_unknown_model_is_unpriced():
    assert cost_usd(PRICING, "gpt-4o-mini", 100, 0, cached_tokens=5_000) == 100 * 0.075 / 1e6
    assert cost_usd(PRICING, "no-such-model", 100, 100) is None

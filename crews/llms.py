"""Which language model each role uses, and the check that a real model can be reached.

`offline` is the built-in deterministic model. Any other name goes through CrewAI's own `LLM`
with OPENAI_API_KEY / OPENAI_BASE_URL from the environment (or the project's .env), so any
OpenAI-compatible server works. There is no silent fallback: `preflight` refuses to start a run
whose configured model has no key, before a single ticket is touched. Keys are read here and
handed to the client only; they are never stored anywhere.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .settings import AGENTS_FILE, OFFLINE, ROLES, SETTINGS_FILE, Config, ConfigError

NATIVE_PREFIXES = ("openai/", "anthropic/", "azure/", "bedrock/", "gemini/", "ollama/",
                   "hosted_vllm/")


def role_models(config: Config, default_model: str) -> dict[str, str]:
    return {role: config.model_for(role, default_model) for role in ROLES}


def preflight(config: Config, default_model: str, environ=os.environ) -> None:
    """Fail with the fix if a configured real model cannot authenticate (no network involved)."""
    models = role_models(config, default_model)
    real = sorted({m for m in models.values() if m != OFFLINE})
    if real and not environ.get("OPENAI_API_KEY"):
        where = ", ".join(f"{r}={m}" for r, m in models.items() if m != OFFLINE)
        raise ConfigError([
            f"model {', '.join(real)} ({where}) needs OPENAI_API_KEY: set it in the environment or "
            "in .env at the project root (for a local OpenAI-compatible server any non-empty "
            "value works, with OPENAI_BASE_URL pointing at it), or run with --offline"])
    base_url = config.settings.llm.base_url or environ.get("OPENAI_BASE_URL")
    if real and base_url and not base_url.startswith(("http://", "https://")):
        raise ConfigError([f"{SETTINGS_FILE}: `llm.base_url` (or OPENAI_BASE_URL) is {base_url!r}; "
                           "it must start with http:// or https://"])
    for role, model in models.items():
        if not model.strip():
            raise ConfigError([f"{AGENTS_FILE}: agent `{role}` has an empty `llm`; name a model "
                               "or remove the key to use the default"])
    if OFFLINE in models.values():
        from .replies import load_replies

        load_replies(config)  # the offline model's replies file: its problems before any ticket


def build_llms(config: Config, default_model: str, environ=os.environ,
               processes: int = 1, pauses: dict[str, Any] | None = None,
               fleet: dict[str, Any] | None = None, batch: bool = False) -> dict[str, Any]:
    """One managed LLM per distinct model name, shared by the roles that use it (thread-safe).

    Each is wrapped in `calls.ManagedLLM`, so every call to that model shares one rate limiter
    and the one retry policy of settings.yaml. `pauses` (model → `engine.SharedPause`, kept in
    the ledger) carries a Retry-After to every worker of the run, on every host. With `batch`
    (`--batch-api`, batch.py) the live rate limits and the backoff between attempts do not apply:
    a retry waits for the next wave, and the Batch API has limits of its own.
    """
    from .calls import ManagedLLM, RateLimiter, RetryPolicy

    r = config.settings.retry
    policy = RetryPolicy(max_attempts=r.max_attempts, repair_attempts=r.repair_attempts,
                         base_delay_s=r.base_delay_s, max_delay_s=r.max_delay_s)
    built: dict[str, Any] = {}
    out = {}
    for role, model in role_models(config, default_model).items():
        if model not in built:
            limit = None if batch else config.settings.rate_limits.get(model)
            window = None if batch else (fleet or {}).get(model)
            # The fleet's window in the ledger holds the whole limit for every worker together;
            # without one, each of the `processes` gets an equal share.
            limiter = RateLimiter(
                None if window else _share(limit.requests_per_minute if limit else None,
                                           processes),
                None if window else _share(limit.tokens_per_minute if limit else None,
                                           processes),
                None if batch else (pauses or {}).get(model), window)
            built[model] = ManagedLLM(_build(config, model, environ), policy, limiter,
                                      sleep=_no_wait if batch else time.sleep)
        out[role] = built[model]
    return out


def _no_wait(_seconds: float) -> None:
    """Batch mode's backoff: none (the next wave is the wait)."""


def _share(limit: int | None, processes: int) -> int | None:
    return None if limit is None else max(1, limit // max(1, processes))


def offline_model(config: Config) -> Any:
    """The built-in offline model, speaking with the project's replies file."""
    from .offline import MODEL_NAME, OfflineLLM
    from .replies import load_replies

    return OfflineLLM(model=MODEL_NAME, temperature=0, replies=load_replies(config))


def _build(config: Config, model: str, environ) -> Any:
    if model == OFFLINE:
        return offline_model(config)
    from crewai import LLM

    s = config.settings.llm
    kwargs: dict[str, Any] = {"api_key": environ.get("OPENAI_API_KEY"), "timeout": s.timeout_s,
                              "max_retries": s.max_retries}
    if s.temperature is not None:
        kwargs["temperature"] = s.temperature
    base_url = s.base_url or environ.get("OPENAI_BASE_URL")
    if base_url:
        kwargs["base_url"] = base_url
        if not model.startswith(NATIVE_PREFIXES) or model.startswith("openai/"):
            # Any model name on an OpenAI-compatible endpoint: CrewAI's native OpenAI client.
            return LLM(model=model.removeprefix("openai/"), custom_openai=True, **kwargs)
    return LLM(model=model, **kwargs)


def size_pools(llms, in_flight: int) -> int:
    """Give each HTTP model's client connection pools for `in_flight` concurrent calls.

    The openai SDK's default pool keeps 100 idle connections (of 1,000): past 100 tickets in
    flight, each call could close its connection and the next open a new one, a TCP handshake per
    request. The pools keep one connection per in-flight call, in shards (`calls.ShardedPools`)
    unless a proxy is configured in the environment: httpx applies the environment's proxies to
    its own pool only, so then the calls go through one pool of that size. Returns how many
    clients were resized.
    """
    import urllib.request

    from openai import DefaultHttpxClient

    from .calls import ShardedPools, pool_limits

    proxied = any(k in ("http", "https", "all") for k in urllib.request.getproxies())
    resized = 0
    for inner in {id(m): m for m in (getattr(m, "inner", m) for m in llms)}.values():
        client = getattr(inner, "_get_sync_client", None)
        if client is None:
            continue  # the offline model, or a provider without the openai SDK client
        # CrewAI builds the SDK client from `client_params` without a way to hand it an httpx
        # client for the sync path only (the same params build the async client, which refuses
        # one), so the sync client is replaced by a copy with its own pools.
        old = client()
        inner._client = old.with_options(http_client=DefaultHttpxClient(
            limits=pool_limits(in_flight)) if proxied
            else DefaultHttpxClient(transport=ShardedPools(in_flight)))
        old.close()
        resized += 1
    return resized


def close_clients(llms) -> None:
    """Close the HTTP models' connection pools (once no call is running)."""
    for inner in {id(m): m for m in (getattr(m, "inner", m) for m in llms)}.values():
        client = getattr(inner, "_client", None)
        if client is not None and hasattr(client, "close"):
            client.close()

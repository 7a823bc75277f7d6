"""The one door to CrewAI: switch off its side effects before it is imported.

`import crewai` phones home (telemetry, tracing, version checks), installs signal handlers and
writes storage under the home directory unless told otherwise, and costs seconds. Every crewbatch
module that needs CrewAI imports it after `prepare()`, and only where a crew really runs, so
`crewbatch --help`, `runs`, `show`, `export` and `check` stay fast and never touch it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

QUIET = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_DISABLE_VERSION_CHECK": "true",
    "OTEL_SDK_DISABLED": "true",
}


def prepare(storage_dir: Path) -> None:
    """Set CrewAI's environment (call before the first crewai import; later calls are no-ops)."""
    for key, value in QUIET.items():
        os.environ[key] = value
    storage_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CREWAI_STORAGE_DIR", str(storage_dir.resolve()))
    import crewai  # noqa: F401  (imported here, with the environment above in force)
    from crewai_core.printer import set_suppress_console_output

    set_suppress_console_output(True)
    # "approximate input token count" on every call of a model without a tokenizer: noise under cron.
    logging.getLogger("crewai.llms.base_llm").setLevel(logging.ERROR)
    detach_builtin_listeners()


def detach_builtin_listeners() -> int:
    """Unsubscribe CrewAI's own event listeners (console panels, telemetry, trace collection).

    With their output suppressed and telemetry and tracing off they do nothing useful, yet every
    task, agent, tool and model-call event was still handed to a thread pool for them: a tenth of
    a ticket's CPU under concurrency. crewbatch's own listener (accounting) is registered later
    and stays. CrewAI registers these once per process, so once is enough; returns how many.
    """
    from crewai.events.event_bus import crewai_event_bus

    handlers = getattr(crewai_event_bus, "_sync_handlers", {})  # no public listing exists
    detached = 0
    for event_type, registered in list(handlers.items()):
        for handler in list(registered):
            if getattr(handler, "__module__", "").startswith("crewai."):
                crewai_event_bus.off(event_type, handler)
                detached += 1
    return detached

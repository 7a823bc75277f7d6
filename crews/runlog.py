"""The per-run log, runs/<run_id>/run.log: what happened, for the morning after a cron run.

While a run is active every log record — crewbatch's own and the libraries' (CrewAI and the
openai client log their errors) — goes to this file instead of the terminal, so cron mail stays
quiet. Lines are text, or JSON lines with `log_json: true` in settings.yaml. Every line passes
through `redact`, so no key reaches the file.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

LOGGER = logging.getLogger("crewbatch")


class _Redacting(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from .redaction import redact

        record.msg = redact(record.getMessage())
        record.args = ()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"at_utc": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage(), **getattr(record, "fields", {})}
        return json.dumps(entry, ensure_ascii=False, default=str)


class RunLog:
    def __init__(self, path: Path, json_lines: bool = False):
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.addFilter(_Redacting())
        self.handler.setFormatter(_JsonFormatter() if json_lines else logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.root = logging.getLogger()
        self._level = self.root.level
        self.root.addHandler(self.handler)
        self.root.setLevel(logging.INFO)
        for noisy in ("httpx", "httpcore", "openai"):  # one line per HTTP request is too much
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.json_lines = json_lines

    def info(self, message: str, **fields) -> None:
        text = message if self.json_lines else " ".join(
            [message, *(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())])
        LOGGER.info(text, extra={"fields": fields})

    def close(self) -> None:
        self.root.removeHandler(self.handler)
        self.root.setLevel(self._level)
        self.handler.close()

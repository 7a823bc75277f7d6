"""Secrets out of everything crewbatch writes: the ledger, logs, sheets, reports and errors."""

from __future__ import annotations

import os
import re


def redact(text: str, environ=os.environ) -> str:
    """Remove anything that looks like a secret before it reaches the ledger, logs or sheets."""
    key = environ.get("OPENAI_API_KEY")
    if key and len(key) >= 6:
        text = text.replace(key, "***")
    return re.sub(r"\b(sk-|sk_)[A-Za-z0-9_-]{6,}", r"\1***", text)

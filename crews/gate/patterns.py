"""The gate's regular expressions and word lists, compiled once from `patterns.yaml`.

They are data so a shop can extend them (another currency, another language's month names)
without reading the checks; the checks import the compiled constants from here. A pattern that
does not compile stops at import with the pattern's name, never silently matching nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

FILE = Path(__file__).with_name("patterns.yaml")
_DATA = yaml.safe_load(FILE.read_text(encoding="utf-8"))
_FLAGS = {"IGNORECASE": re.IGNORECASE, "MULTILINE": re.MULTILINE, "DOTALL": re.DOTALL}

MONTHS: dict[str, int] = dict(_DATA["months"])
NUMWORDS: dict[str, int] = dict(_DATA["numbers"])
UNITS: list[tuple[str, str]] = list(_DATA["units"].items())
ECHO: int = _DATA["settings"]["echo_words"]
SHINGLE: int = _DATA["settings"]["shingle_words"]

_INSERTS = {
    **_DATA["fragments"],
    "months": "|".join(sorted(MONTHS, key=len, reverse=True)),
    "number": rf"(?:\d+|{'|'.join(NUMWORDS)})",
    "units": "|".join(f"(?P<{name}>{pattern})" for name, pattern in UNITS),
}


def _compile(name: str) -> re.Pattern:
    spec = _DATA["patterns"][name]
    source = "|".join(spec["any_of"]) if "any_of" in spec else spec["regex"]
    source = re.sub(r"<<(\w+)>>", lambda m: _INSERTS[m.group(1)], source)
    flags = 0
    for flag in spec.get("flags", []):
        flags |= _FLAGS[flag]
    try:
        return re.compile(source, flags)
    except re.error as exc:
        raise ValueError(f"{FILE}: pattern `{name}` does not compile: {exc}") from exc


ORDER_ID = _compile("order_id")
EMAIL = _compile("email")
PLACEHOLDER = _compile("placeholder")
LEAK = _compile("leak")
KEY = _compile("key")
TOOL_JSON = _compile("tool_json")
INJECTION = _compile("injection")
AMOUNT = _compile("amount")
BARE_DECIMAL = _compile("bare_decimal")
NUMBER = _compile("number")
ISO_DATE = _compile("iso_date")
NUMERIC_DATE = _compile("numeric_date")
TIME = _compile("time")
DAY_MONTH = _compile("day_month")
MONTH_DAY = _compile("month_day")
TRACKING = _compile("tracking")
PLUS_PHONE = _compile("plus_phone")
PHONE = _compile("phone")
ADDRESS = _compile("address")
URL = _compile("url")
CARD = _compile("card")
PASSWORD = _compile("password")
DURATION = _compile("duration")
PERCENT = _compile("percent")
DISCOUNT_WORD = _compile("discount_word")
OFFER = _compile("offer")
CODE = _compile("code")
NEGATION = _compile("negation")
REFUND_WORD = _compile("refund_word")
COMMITMENT = _compile("commitment")
HEDGE = _compile("hedge")
DONE = _compile("done")
NOT_DONE = _compile("not_done")
GUARANTEE = _compile("guarantee")
SOFTENER = _compile("softener")
CODE_OR_MARKUP = _compile("code_or_markup")
SENTENCE = _compile("sentence")
WORDS = _compile("words")

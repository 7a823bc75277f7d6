"""Reading numbers, dates, durations and words out of text, the way the checks compare them.

Every function is pure and works on plain strings, so the checks share one reading of "1.299,00
EUR" or "3 to 5 business days" and a fact is judged the same in the ticket, the tool results and
the reply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from .patterns import (
    DAY_MONTH,
    DURATION,
    ISO_DATE,
    MONTH_DAY,
    MONTHS,
    NUMERIC_DATE,
    NUMWORDS,
    PERCENT,
    PHONE,
    SENTENCE,
    SHINGLE,
    UNITS,
    WORDS,
)


def amount_values(raw: str) -> set[Decimal]:
    """Every value a written number can mean: '1,299.00' → {1299}; '24,00' → {24}; '1.299' → both."""
    raw = raw.strip().rstrip(".,")
    if not raw or not raw[0].isdigit():
        return set()
    candidates: list[str] = []
    if "," in raw and "." in raw:
        dec = "." if raw.rfind(".") > raw.rfind(",") else ","
        thousands = "," if dec == "." else "."
        candidates.append(raw.replace(thousands, "").replace(dec, "."))
    elif "," in raw or "." in raw:
        sep = "," if "," in raw else "."
        parts = raw.split(sep)
        if len(parts) == 2 and len(parts[1]) in (1, 2):
            candidates.append(f"{parts[0]}.{parts[1]}")
        elif all(len(p) == 3 for p in parts[1:]):
            candidates.append("".join(parts))
            if len(parts) == 2:
                candidates.append(f"{parts[0]}.{parts[1]}")
        else:
            candidates.append("".join(parts))
    else:
        candidates.append(raw)
    values = set()
    for c in candidates:
        try:
            values.add(Decimal(c).quantize(Decimal("0.01")))
        except InvalidOperation:
            continue
    return values


def mask(text: str, *patterns: re.Pattern) -> str:
    """The text with every match of the patterns blanked out (positions kept)."""
    for pattern in patterns:
        text = pattern.sub(lambda m: " " * len(m.group(0)), text)
    return text


def dates(text: str) -> set[tuple[int, int, int | None]]:
    """(month, day, year or None) for every date written in ISO, numeric or words."""
    found: set[tuple[int, int, int | None]] = set()

    def add(month: int, day: int, year: int | None) -> None:
        if 1 <= month <= 12 and 1 <= day <= 31:
            found.add((month, day, year))

    for m in ISO_DATE.finditer(text):
        add(int(m.group(2)), int(m.group(3)), int(m.group(1)))
    for m in NUMERIC_DATE.finditer(text):
        a, b, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
        y = y + 2000 if y < 100 else y
        add(b, a, y)   # day first (most of the world)
        add(a, b, y)   # month first (US)
    for m in DAY_MONTH.finditer(text):
        add(MONTHS[m.group(2).lower()], int(m.group(1)), int(m.group(3)) if m.group(3) else None)
    for m in MONTH_DAY.finditer(text):
        add(MONTHS[m.group(1).lower()], int(m.group(2)), int(m.group(3)) if m.group(3) else None)
    return found


def date_spans(text: str) -> list[tuple[str, set[tuple[int, int, int | None]]]]:
    """Each written date in the reply with the dates it can mean (numeric ones are ambiguous)."""
    spans = []
    for pattern in (ISO_DATE, NUMERIC_DATE, DAY_MONTH, MONTH_DAY):
        for m in pattern.finditer(text):
            meanings = dates(m.group(0))
            if meanings:
                spans.append((m.group(0), meanings))
    return spans


def date_known(meanings: set, known: set) -> bool:
    for month, day, year in meanings:
        for k_month, k_day, k_year in known:
            if (month, day) == (k_month, k_day) and (year is None or k_year is None
                                                     or year == k_year):
                return True
    return False


def durations(text: str) -> set[tuple[int, int, str]]:
    found = set()
    for m in DURATION.finditer(text.replace("**", "")):
        n = number(m.group("n"))
        high = number(m.group("m")) if m.group("m") else n
        unit = next(name for name, _ in UNITS if m.group(name))
        found.add((n, high, unit))
    return found


def percentages(text: str) -> set[Decimal]:
    return {v for m in PERCENT.finditer(text) for v in amount_values(m.group(1))}


def number(word: str) -> int:
    return int(word) if word.isdigit() else NUMWORDS[word.lower()]


def phones(text: str) -> list[re.Match]:
    return [m for m in PHONE.finditer(text) if 8 <= len(digits(m.group(0))) <= 15]


def mask_phones(text: str) -> str:
    for m in phones(text):
        text = text[:m.start()] + " " * (m.end() - m.start()) + text[m.end():]
    return text


def digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def sentences(text: str) -> list[str]:
    return [s for s in SENTENCE.split(text) if s.strip()]


def shingles(text: str, n: int = SHINGLE, skip: set[str] = frozenset()) -> set[str]:
    """Every run of `n` words (lower case), for spotting text repeated verbatim."""
    tokens = [t for t in WORDS.findall(text.lower()) if t not in skip]
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def flatten(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from flatten(v)
    elif isinstance(value, list):
        for v in value:
            yield from flatten(v)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def luhn(number_digits: str) -> bool:
    if not 13 <= len(number_digits) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(number_digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0

"""How the reports write numbers, durations, money, times and short texts.

Plain functions of a value to a string, so the run, eval and diff pages say `1.2 s` and `$0.0040`
the same way; the templates use them as filters of the same names.
"""

from __future__ import annotations

import re

from ..show import cut  # one truncation for every view (a template filter here)


def n(value: float) -> str:
    return f"{value:,.0f}"


def compact(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:,.0f}"


def usd(value: float | None) -> str:
    if value is None:
        return "—"
    return f"${value:,.4f}" if value < 100 else f"${value:,.2f}"


def ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.1f} s"
    minutes, seconds = divmod(round(value / 1000), 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "—"


def when(utc: str | None) -> str:
    if not utc:
        return "—"
    return utc.replace("T", " ").split(".")[0].rstrip("Z") + " UTC"


def css_name(value: str) -> str:
    """A ledger value made safe to end a class name (`s-needs_human`)."""
    return re.sub(r"[^a-z_]", "", value.lower())


def f1(value: float) -> str:
    """An SVG coordinate: one decimal is finer than a pixel."""
    return f"{value:.1f}"


FILTERS = {f.__name__: f for f in (n, compact, usd, ms, pct, when, css_name, cut, f1)}

"""Chart geometry for the reports: where every bar, tick and label of an inline SVG chart goes.

Pure functions of the numbers to plain dataclasses of coordinates, colours and label texts, so
the layout is tested as numbers and the templates (charts.html.j2) only draw what is here.
A function returns None when there is nothing to draw; the template then says so.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .formats import cut, ms, n

CHAR_W = 6.7  # average width of a 12px sans-serif character, for laying out labels
PROMPT_COLOR, COMPLETION_COLOR = "#4f7cc9", "#e3a04f"

Segments = Sequence[tuple[str, float, str]]  # (segment name, value, colour)


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    color: str = ""
    title: str = ""


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str
    anchor: str = ""  # text-anchor; empty: the SVG default (start)
    title: str = ""  # the full text, when `text` is cut to fit


@dataclass(frozen=True)
class LegendItem:
    box: Rect
    label: Label


@dataclass(frozen=True)
class GridLine:
    x1: float
    x2: float
    y: float
    base: bool  # the zero line, drawn darker
    label: Label


@dataclass(frozen=True)
class Bar:
    label: Label
    track: Rect
    segments: list[Rect]
    value: Label


@dataclass(frozen=True)
class HBarChart:
    width: int
    height: int
    legend: list[LegendItem]
    bars: list[Bar]


@dataclass(frozen=True)
class Column:
    segments: list[Rect]
    value: Label
    name: Label


@dataclass(frozen=True)
class ColumnChart:
    width: int
    height: int
    legend: list[LegendItem]
    axis: list[GridLine]
    columns: list[Column]
    title: Label


@dataclass(frozen=True)
class Marker:
    x: float
    y1: float
    y2: float
    color: str
    label: Label


@dataclass(frozen=True)
class Histogram:
    width: int
    height: int
    axis: list[GridLine]
    bars: list[Rect]
    counts: list[Label]  # over each bar, drawn after the markers so they stay readable
    ticks: list[Label]
    markers: list[Marker]
    title: Label


@dataclass(frozen=True)
class Strip:
    width: int
    height: int
    parts: list[Rect]
    legend: list[LegendItem]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th quantile (q in hundredths: .5, .9, .99) by linear interpolation between closest
    ranks, numpy's default. That is `statistics.quantiles(method="inclusive")`; the default
    "exclusive" method extrapolates beyond the ranks (p90 of 1..100 would be 90.9, not 90.1)."""
    if len(values) < 2:  # quantiles needs two points before Python 3.13
        return float(values[0]) if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def nice_step(span: float, target: int, integer: bool = False) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) that cuts `span` into about `target`."""
    if span <= 0:
        return 1
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    for m in ((1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)):
        if m * mag >= raw:
            step = m * mag
            return max(1, round(step)) if integer else step
    return 10 * mag


def legend(items: Sequence[tuple[str, str]], x: float, y: float) -> list[LegendItem]:
    out = []
    for name, color in items:
        out.append(LegendItem(Rect(x, y - 9, 10, 10, color), Label(x + 15, y, name)))
        x += 15 + len(name) * CHAR_W + 18
    return out


def hbar(rows: Sequence[tuple[str, Segments]], fmt: Callable[[float], str] = n,
         legend_items: Sequence[tuple[str, str]] = (), width: int = 600,
         labels_above: bool = False) -> HBarChart | None:
    """Horizontal bars, one per row; each row is (label, [(segment, value, colour)...]).

    Labels sit left of the bars, or above them (`labels_above`) when they are sentences.
    """
    totals = [sum(v for _, v, _ in segs) for _, segs in rows]
    if not rows or max(totals) <= 0:
        return None
    row_h, bar_h = (44, 16) if labels_above else (30, 18)
    top = 28 if legend_items else 6
    label_w = 0 if labels_above else min(
        int(width * 0.38), max(70, int(max(len(r[0]) for r in rows) * CHAR_W) + 16))
    value_w = max(56, int(max(len(fmt(t)) for t in totals) * CHAR_W) + 14)
    plot_w = width - label_w - value_w
    vmax = max(totals)
    bars = []
    for i, ((name, segs), total) in enumerate(zip(rows, totals, strict=True)):
        y = top + i * row_h
        if labels_above:
            by = y + row_h - bar_h - 6
            label = Label(0, by - 6, cut(name, int(width / CHAR_W)), title=name)
        else:
            by = y + (row_h - bar_h) / 2
            label = Label(label_w - 10, by + bar_h / 2 + 4,
                          cut(name, int((label_w - 14) / CHAR_W)), "end", name)
        x = float(label_w)
        pieces = []
        for seg, value, color in segs:
            if value <= 0:
                continue
            w = max(1.5, value / vmax * plot_w)
            pieces.append(Rect(x, by, w, bar_h, color, f"{name} · {seg}: {fmt(value)}"))
            x += w
        bars.append(Bar(label, Rect(label_w, by, plot_w, bar_h), pieces,
                        Label(x + 7, by + bar_h / 2 + 4, fmt(total))))
    return HBarChart(width, top + row_h * len(rows) + 4, legend(legend_items, label_w, 14), bars)


def y_axis(left: float, top: float, plot_w: float, plot_h: float, ymax: float,
           step: float) -> list[GridLine]:
    lines = []
    tick = 0.0
    while tick <= ymax + 1e-9:
        y = top + plot_h - tick / ymax * plot_h
        lines.append(GridLine(left, left + plot_w, y, tick == 0,
                              Label(left - 8, y + 4, n(tick), "end")))
        tick += step
    return lines


def columns(cols: Sequence[tuple[str, Segments]], x_title: str,
            legend_items: Sequence[tuple[str, str]] = (), width: int = 600,
            height: int = 250) -> ColumnChart | None:
    """Vertical (stacked) columns for a few categories, with a count axis."""
    totals = [sum(v for _, v, _ in segs) for _, segs in cols]
    if not cols or max(totals) <= 0:
        return None
    left, right, top, bottom = 44, 12, 34 if legend_items else 18, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    step = nice_step(max(totals), 4, integer=True)
    ymax = math.ceil(max(totals) / step) * step
    slot = plot_w / len(cols)
    col_w = min(64, slot * 0.6)
    out = []
    for i, ((name, segs), total) in enumerate(zip(cols, totals, strict=True)):
        cx = left + slot * (i + 0.5)
        y = top + plot_h
        pieces = []
        for seg, value, color in segs:
            if value <= 0:
                continue
            h = value / ymax * plot_h
            y -= h
            pieces.append(Rect(cx - col_w / 2, y, col_w, h, color,
                               f"{x_title} {name} · {seg}: {n(value)}"))
        out.append(Column(pieces, Label(cx, y - 5, n(total), "middle"),
                          Label(cx, top + plot_h + 16, name, "middle")))
    return ColumnChart(width, height, legend(legend_items, left, 14),
                       y_axis(left, top, plot_w, plot_h, ymax, step), out,
                       Label(left + plot_w / 2, height - 6, x_title, "middle"))


def histogram(values: Sequence[float], x_title: str, fmt: Callable[[float], str] = ms,
              markers: Sequence[tuple[str, float, str]] = (), width: int = 1080,
              height: int = 290) -> Histogram | None:
    """Counts of `values` in equal-width bins, with labelled vertical markers (percentiles).

    A long tail (a few tickets far slower than the rest) would squeeze every other bar into one;
    values beyond three times the 95th percentile share a last `≥` bin instead.
    """
    if not values:
        return None
    lo, hi = min(values), max(values)
    p95 = percentile(values, .95) or 0
    cap = p95 if p95 > lo and hi > 3 * p95 else hi
    step = nice_step(cap - lo, 16) if cap > lo else nice_step(max(cap, 1), 4)
    x0 = math.floor(lo / step) * step
    n_bins = max(1, math.ceil((cap - x0) / step - 1e-9))
    if cap == hi and x0 + n_bins * step <= hi:
        n_bins += 1
    x1 = x0 + n_bins * step
    counts = [0] * n_bins
    overflow = 0
    for v in values:
        if v >= x1:
            overflow += 1
        else:
            counts[int((v - x0) // step)] += 1
    slots = n_bins + (1 if overflow else 0)
    left, right, top, bottom = 48, 24, 34 + 14 * len(markers), 44
    plot_w, plot_h = width - left - right, height - top - bottom
    ystep = nice_step(max(counts + [overflow]), 4, integer=True)
    ymax = math.ceil(max(counts + [overflow]) / ystep) * ystep
    slot_w = plot_w / slots

    def x(v: float) -> float:
        if v >= x1 and overflow:
            return left + (n_bins + 0.5) * slot_w
        return left + (v - x0) / step * slot_w

    bins = [(f"{fmt(x0 + i * step)} – {fmt(x0 + (i + 1) * step)}", c, PROMPT_COLOR)
            for i, c in enumerate(counts)]
    if overflow:
        bins.append((f"≥ {fmt(x1)}", overflow, COMPLETION_COLOR))
    bars, count_labels = [], []
    for i, (span, count, color) in enumerate(bins):
        if not count:
            continue
        a = left + i * slot_w
        h = max(2.0, count / ymax * plot_h)
        bars.append(Rect(a + 1, top + plot_h - h, slot_w - 2, h, color,
                         f"{span}: {count:,} ticket(s)"))
        if slots <= 40:
            count_labels.append(Label(a + slot_w / 2, top + plot_h - h - 5, f"{count:,}",
                                      "middle"))
    every = max(1, math.ceil((n_bins + 1) / 12))
    ticks = [Label(left + i * slot_w, top + plot_h + 16, fmt(x0 + i * step), "middle")
             for i in range(0, n_bins if overflow else n_bins + 1, every)]
    if overflow:
        ticks.append(Label(left + (n_bins + 0.5) * slot_w, top + plot_h + 16, f"≥ {fmt(x1)}",
                           "middle"))
    lines = []
    for row, (name, value, color) in enumerate(markers):
        mx = x(value)
        ly = 14 + 14 * row
        anchor, dx = ("end", -5) if mx > left + plot_w * 0.8 else ("start", 5)
        lines.append(Marker(mx, ly - 3, top + plot_h, color,
                            Label(mx + dx, ly + 1, f"{name} {fmt(value)}", anchor)))
    return Histogram(width, height, y_axis(left, top, plot_w, plot_h, ymax, ystep), bars,
                     count_labels, ticks, lines,
                     Label(left + plot_w / 2, height - 6, x_title, "middle"))


def strip(parts: Sequence[tuple[str, float, str, str]], width: int = 1080) -> Strip | None:
    """One bar cut into shares; each part is (title, value, colour, legend text)."""
    total = sum(v for _, v, _, _ in parts)
    if not total:
        return None
    rects = []
    x = 0.0
    for title, value, color, _ in parts:
        w = value / total * width
        rects.append(Rect(x, 0, w, 14, color, title))
        x += w
    return Strip(width, 44, rects, legend([(text, color) for _, _, color, text in parts], 0, 36))

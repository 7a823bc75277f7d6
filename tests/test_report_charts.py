"""The reports' chart geometry as numbers: where bars, ticks and markers land (crews/report/charts)."""

from __future__ import annotations

import math
import random

import pytest

from crews.report.charts import (
    CHAR_W,
    COMPLETION_COLOR,
    PROMPT_COLOR,
    columns,
    hbar,
    histogram,
    nice_step,
    percentile,
    strip,
)


def test_hbar_scales_every_segment_to_the_longest_row():
    chart = hbar([("a", [("x", 30, "#1")]), ("bb", [("x", 10, "#1"), ("y", 5, "#2")])])
    # Labels need 70 px at least, values 56: 600 - 70 - 56 = 474 px of bar for the longest row.
    assert (chart.width, chart.height) == (600, 6 + 2 * 30 + 4)
    first, second = chart.bars
    assert (first.track.x, first.track.width, first.track.y) == (70, 474, 12)
    assert [(s.x, s.width) for s in first.segments] == [(70, 474)]
    assert [(s.x, s.width) for s in second.segments] == [(70, 158), (228, 79)]
    assert second.track.y == 42 and second.value.x == 70 + 158 + 79 + 7
    assert (first.label.x, first.label.anchor, first.label.text) == (60, "end", "a")
    assert second.segments[1].title == "bb · y: 5"


def test_hbar_keeps_a_sliver_visible_and_skips_empty_segments():
    chart = hbar([("a", [("x", 1000, "#1")]), ("b", [("x", 1, "#1"), ("y", 0, "#2")])])
    assert [s.width for s in chart.bars[1].segments] == [1.5]
    assert hbar([("a", [("x", 0, "#1")])]) is None and hbar([]) is None


def test_hbar_labels_above_span_the_width_and_long_labels_are_cut():
    name = "policy refused: " + "x" * 200
    chart = hbar([(name, [("n", 3, "#1")])], labels_above=True)
    (bar,) = chart.bars
    assert bar.track.x == 0 and bar.label.x == 0 and bar.label.y == bar.track.y - 6
    assert len(bar.label.text) == int(600 / CHAR_W) and bar.label.text.endswith("…")
    assert bar.label.title == name


def test_legend_items_advance_by_their_text():
    chart = hbar([("a", [("x", 1, "#1")])], legend_items=[("one", "#1"), ("three", "#2")])
    first, second = chart.legend
    assert (first.box.x, first.box.y, first.label.x) == (70, 5, 85)
    assert second.box.x == pytest.approx(70 + 15 + 3 * CHAR_W + 18)
    assert chart.bars[0].track.y == 28 + 6  # the legend's row comes first


def test_columns_stack_on_a_round_count_axis():
    chart = columns([("0", [("a", 3, "#1")]), ("1", [("a", 5, "#1"), ("b", 2, "#2")])], "revisions")
    # 7 at most, in steps of 2: ticks 0, 2, 4, 6, 8.
    assert [g.label.text for g in chart.axis] == ["0", "2", "4", "6", "8"]
    assert chart.axis[0].base and not any(g.base for g in chart.axis[1:])
    plot_h = 250 - 18 - 42
    assert chart.axis[0].y == 18 + plot_h and chart.axis[-1].y == 18
    low, high = chart.columns[1].segments
    assert low.height == pytest.approx(5 / 8 * plot_h) and high.y + high.height == pytest.approx(low.y)
    assert chart.columns[1].value.text == "7" and chart.columns[1].value.y == pytest.approx(high.y - 5)
    slot = (600 - 44 - 12) / 2
    assert chart.columns[0].name.x == 44 + slot / 2 and low.width == min(64, slot * 0.6)


def test_histogram_puts_a_long_tail_into_one_last_bin():
    values = [100.0] * 19 + [10_000.0]
    # p95 = 595 ms: the 10 s ticket is beyond three times that, so bins stop at 600 ms.
    assert percentile(values, .95) == pytest.approx(595)
    chart = histogram(values, "time", markers=[("p50", 100.0, "#1")])
    first, last = chart.bars
    assert first.title == "100 ms – 150 ms: 19 ticket(s)" and first.color == PROMPT_COLOR
    assert last.title == "≥ 600 ms: 1 ticket(s)" and last.color == COMPLETION_COLOR
    slot = (1080 - 48 - 24) / 11  # ten 50 ms bins and the overflow
    assert last.x == pytest.approx(48 + 10 * slot + 1) and last.width == pytest.approx(slot - 2)
    assert chart.ticks[-1].text == "≥ 600 ms" and chart.ticks[0].text == "100 ms"
    (marker,) = chart.markers
    assert marker.x == 48 and marker.label.anchor == "start" and marker.label.text == "p50 100 ms"
    assert [c.text for c in chart.counts] == ["19", "1"]


def test_histogram_of_equal_values_is_one_full_bin():
    chart = histogram([1500.0] * 5, "time")
    (bar,) = chart.bars
    plot_h = 290 - 34 - 44
    assert bar.height == pytest.approx(5 / 6 * plot_h) and bar.width == pytest.approx(1008 - 2)
    assert [t.text for t in chart.ticks] == ["1.5 s", "2.0 s"] and histogram([], "x") is None


def test_strip_shares_add_up_to_the_width():
    chart = strip([("a", 3, "#1", "a 3"), ("b", 1, "#2", "b 1")], width=1000)
    assert [(p.x, p.width) for p in chart.parts] == [(0, 750), (750, 250)]
    assert [i.label.text for i in chart.legend] == ["a 3", "b 1"] and strip([]) is None


@pytest.mark.parametrize("span, target, integer, step", [
    (7, 4, True, 2), (1, 4, True, 1), (495, 16, False, 50), (1500, 4, False, 500),
    (36, 16, False, 2.5), (0, 4, False, 1)])
def test_nice_step(span, target, integer, step):
    assert nice_step(span, target, integer) == step


def test_percentile_is_linear_between_closest_ranks():
    def closest_ranks(data, q):  # numpy's default, as the report computed it by hand before
        data = sorted(data)
        k = (len(data) - 1) * q
        lo = math.floor(k)
        hi = min(lo + 1, len(data) - 1)
        return data[lo] + (data[hi] - data[lo]) * (k - lo)

    rng = random.Random(16)
    for size in (2, 3, 10, 51, 400):
        values = [rng.expovariate(1 / 3000) for _ in range(size)]
        for q in (.5, .9, .95, .99):
            assert percentile(values, q) == pytest.approx(closest_ranks(values, q), rel=1e-12)

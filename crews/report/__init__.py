"""The run report: one self-contained HTML page per run, for the person who reads it in the morning.

Everything on it comes from the ledger, so a report can be written for any run, finished or not:
`data` collects and sums it up, `charts` lays out the charts as numbers, and `render` fills the
Jinja2 templates in templates/ (autoescaped: ticket text and model output are untrusted). The page
opens without a network: the stylesheet inlined, charts as inline SVG, no scripts, fonts or images.
"""

from __future__ import annotations

from pathlib import Path

from ..files import write_atomically
from . import data, render
from .charts import percentile
from .render import CSS, card, empty, esc, grid, hbar_chart, pill, section, table

__all__ = ["CSS", "card", "empty", "esc", "grid", "hbar_chart", "percentile", "pill", "section",
           "table", "write_atomically", "write_report"]


def write_report(ledger, run_id: str, path: Path, pricing: dict | None = None) -> Path:
    """Write the run's report as one self-contained HTML file, atomically; return its path.

    `pricing` maps a model name to USD per million input/output tokens (the `pricing` of
    settings.yaml); without it the agents' usage is shown in tokens only.
    """
    return write_atomically(path, render.render(data.collect(ledger, run_id, pricing)))

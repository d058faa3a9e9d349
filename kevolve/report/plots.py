"""Plots as inline SVG text (matplotlib, no display), so the pages that hold them need no files,
no network and no CDN. Text stays text in the SVG: searchable, and readable by a test."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
          "#7f7f7f", "#bcbd22")


@dataclass(frozen=True)
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]  # best so far: drawn flat until the next improvement
    points: tuple[tuple[float, float], ...] = ()  # each evaluation's own value, drawn as dots


def _figure(width_in: float, height_in: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "kevolve", "font.size": 9})
    return Figure(figsize=(width_in, height_in), layout="constrained")


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog or doctype


def line_svg(series: Sequence[Series], *, title: str, xlabel: str, ylabel: str, note: str = "",
             reference: float | None = None) -> str:
    """Lines of best-so-far values (with each evaluation's value as dots), e.g. speedup over
    evaluations. `reference` draws a dashed horizontal line (1.0: parity with the baseline)."""
    fig = _figure(6.4, 3.4)
    ax = fig.add_subplot()
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        if s.xs:
            ax.step(s.xs, s.ys, where="post", color=color, label=s.label, linewidth=1.6)
        if s.points:
            ax.scatter([p[0] for p in s.points], [p[1] for p in s.points], s=12, color=color, alpha=0.45,
                       linewidths=0)
    if reference is not None:
        ax.axhline(reference, color="#555555", linestyle="--", linewidth=0.8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7, ncols=2 if len(series) > 6 else 1, loc="best")
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="#a00000")
    return _svg(fig)


def bars_svg(labels: Sequence[str], groups: dict[str, Sequence[float | None]], *, title: str, ylabel: str,
             note: str = "", reference: float | None = 1.0) -> str:
    """Grouped bars, one group per label (e.g. speedup of each spec over each baseline); a value
    of None is left out and marked "n/a"."""
    fig = _figure(max(6.4, 0.55 * len(labels) + 1.5), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / max(len(groups), 1)
    top = max([v for vals in groups.values() for v in vals if v is not None and math.isfinite(v)], default=1.0)
    for gi, (name, values) in enumerate(groups.items()):
        xs = [i + (gi - (len(groups) - 1) / 2) * width for i in range(len(labels))]
        present = [(x, v) for x, v in zip(xs, values) if v is not None]
        ax.bar([x for x, _ in present], [v for _, v in present], width=width, color=COLORS[gi % len(COLORS)],
               label=name)
        for x, v in zip(xs, values):
            if v is None:
                ax.text(x, 0.02 * top, "n/a", ha="center", va="bottom", fontsize=6, rotation=90, color="#777777")
    if reference is not None:
        ax.axhline(reference, color="#555555", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=7)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, color="#a00000")
    return _svg(fig)

"""Charts for the report, drawn with matplotlib's Agg canvas (no display, no pyplot state, so a
report can be drawn in the daemon's scheduler thread).  Each chart is a PNG, shared by the
HTML report (as a data URI) and the PDF.  Colours are the Okabe-Ito palette, which people with
colour-blindness can tell apart; every chart also has its numbers in a table beside it."""

from __future__ import annotations

import io
from dataclasses import dataclass

from mailbot.reports.data import COMPLAINT_KINDS, DEADLINE_LABELS, DEADLINE_ORDER, TIMELINESS, Report

PALETTE = {"met": "#009E73", "met after extension": "#E69F00", "missed": "#D55E00",
           "not yet due": "#999999", "not applicable": "#DDDDDD"}
BLUE, ORANGE, GREY = "#0072B2", "#E69F00", "#999999"


@dataclass
class Chart:
    name: str
    caption: str
    png: bytes


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=8)


def weekly_chart(report: Report) -> Chart | None:
    if not report.weekly:
        return None
    weeks = sorted(report.weekly)
    complaints = [sum(report.weekly[w][k] for k in COMPLAINT_KINDS) for w in weeks]
    compliments = [report.weekly[w]["compliment"] for w in weeks]
    other = [sum(report.weekly[w].values()) - c - p for w, c, p in zip(weeks, complaints, compliments)]
    fig = _figure(7.0, 2.6)
    ax = fig.add_subplot()
    x = range(len(weeks))
    ax.bar(x, complaints, color=BLUE, label="complaints")
    ax.bar(x, compliments, bottom=complaints, color=ORANGE, label="compliments")
    ax.bar(x, other, bottom=[a + b for a, b in zip(complaints, compliments)], color=GREY, label="other")
    ax.set_xticks(list(x), [f"{w:%-d %b}" for w in weeks], rotation=60, ha="right")
    ax.set_ylabel("cases opened", fontsize=8)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, frameon=False, ncols=3, loc="lower left", bbox_to_anchor=(0.0, 1.0))
    _style(ax)
    return Chart("weekly", "Cases opened each week (week beginning)", _png(fig))


def timeliness_chart(report: Report) -> Chart | None:
    names = [n for n in DEADLINE_ORDER if n in report.timeliness]
    if not names:
        return None
    fig = _figure(7.0, 0.55 * len(names) + 1.0)
    ax = fig.add_subplot()
    left = [0] * len(names)
    for kind in TIMELINESS:
        values = [report.timeliness[n][kind] for n in names]
        ax.barh(range(len(names)), values, left=left, color=PALETTE[kind], label=kind)
        left = [a + b for a, b in zip(left, values)]
    ax.set_yticks(range(len(names)), [DEADLINE_LABELS[n] for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("time limits falling due in the period", fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, frameon=False, ncols=5, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    _style(ax)
    return Chart("timeliness", "Were our time limits kept?", _png(fig))


def bars_chart(name: str, caption: str, counts, colour: str = BLUE) -> Chart | None:
    items = [(k, v) for k, v in counts.most_common() if v]
    if not items:
        return None
    fig = _figure(7.0, 0.32 * len(items) + 0.8)
    ax = fig.add_subplot()
    ax.barh(range(len(items)), [v for _, v in items], color=colour)
    ax.set_yticks(range(len(items)), [k.replace("_", " ") for k, _ in items])
    ax.invert_yaxis()
    ax.xaxis.get_major_locator().set_params(integer=True)
    for i, (_, v) in enumerate(items):
        ax.text(v, i, f" {v}", va="center", fontsize=7)
    _style(ax)
    return Chart(name, caption, _png(fig))


def charts(report: Report) -> list[Chart]:
    made = [weekly_chart(report), timeliness_chart(report),
            bars_chart("themes", "What the complaints were about (a complaint can have several themes)",
                       report.themes),
            bars_chart("outcomes", "How the complaints opened in the period stand now", report.by_outcome, ORANGE)]
    return [c for c in made if c is not None]

"""The report as a person reads it: a standalone HTML page (charts embedded as data URIs, no
external files, so it can be mailed or put on a website as it is), a PDF of the same content,
and a CSV of every number.

Both HTML and PDF are drawn from one layout (``layout``: summary figures, then sections of
charts, tables and lists), so they cannot disagree.  The PDF is made with reportlab's platypus,
which is pure Python and installs from PyPI alone: HTML-to-PDF converters either need system
libraries (WeasyPrint: Pango) or bring a long chain of dependencies (xhtml2pdf).  Its font is
DejaVu Sans from matplotlib's own data, so any character a role title or a staff note may hold
prints.
"""

from __future__ import annotations

import base64
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from mailbot.reports.charts import Chart, charts
from mailbot.reports.data import (ACTIONS, DEADLINE_LABELS, DEADLINE_ORDER, TIMELINESS, Report,
                                  Stats)

HERE = Path(__file__).parent


@dataclass
class TableView:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    title: str
    intro: str = ""
    charts: list[Chart] = field(default_factory=list)
    tables: list[TableView] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    empty: str = ""


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _num(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} {unit}"


def _counts(title: str, counts, label: str = "", of: int | None = None) -> TableView:
    """Counts with their share of ``of`` (default: their total; themes and flags give the
    number of complaints, as one complaint can have several)."""
    total = sum(counts.values()) if of is None else of
    rows = [[k.replace("_", " "), str(v), _pct(v, total)] for k, v in counts.most_common()]
    return TableView([label or title, "cases", "share" if of is None else "of complaints"], rows, title)


def summary(report: Report) -> list[tuple[str, str]]:
    respond = report.timeliness.get("respond", {})
    kept = respond.get("met", 0) + respond.get("met after extension", 0)
    due = kept + respond.get("missed", 0)
    return [
        ("cases opened", str(report.cases)),
        ("complaints", str(report.complaints)),
        ("compliments", str(report.compliments)),
        ("complaints still open", str(report.open_at_end)),
        ("responses sent in time", f"{_pct(kept, due)} of {due}"),
        ("median time to respond", _num(report.respond_days.median, "days")),
    ]


def layout(report: Report) -> list[Section]:
    """The report's sections; made once per report (the charts take the time), then shared by
    the HTML and the PDF."""
    cached = getattr(report, "_layout", None)
    if cached is None:
        cached = report._layout = _layout(report)
    return cached


def _layout(report: Report) -> list[Section]:
    made = {c.name: c for c in charts(report)}
    sections = []

    volume = Section("How many, and how they came",
                     "Every case opened in the period, by what it was and how it arrived.",
                     [made[n] for n in ("weekly",) if n in made],
                     [_counts("By kind", report.by_kind, "kind"), _counts("By channel", report.by_channel, "channel")])
    if report.not_accepted:
        volume.tables.append(TableView(["channel", "messages"], [[k.replace("_", " "), str(v)] for k, v in
                                                                 report.not_accepted.most_common()],
                                       "Complaints by a channel the policy does not accept (recorded, not a case)"))
    sections.append(volume)

    rows = []
    for name in DEADLINE_ORDER:
        if name in report.timeliness:
            counts = report.timeliness[name]
            due = counts["met"] + counts["met after extension"] + counts["missed"]
            rows.append([DEADLINE_LABELS[name]] + [str(counts[t]) for t in TIMELINESS]
                        + [_pct(counts["met"] + counts["met after extension"], due)])

    def stat_row(label: str, s: Stats, unit: str) -> list[str]:
        return [label, str(s.n), _num(s.median, unit), _num(s.p90, unit)]

    sections.append(Section(
        "Timeliness", "Each time limit whose date first promised falls in the period: kept on time, "
        "kept after the date was extended (with the complainant told), or missed.",
        [made[n] for n in ("timeliness",) if n in made],
        [TableView(["time limit", *TIMELINESS, "kept"], rows, "Time limits"),
         TableView(["measure", "cases", "median", "90th percentile"],
                   [stat_row("time to acknowledge", report.acknowledge_hours, "hours"),
                    stat_row("time to respond", report.respond_days, "days"),
                    stat_row("time to answer an appeal", report.appeal_respond_days, "days")],
                   "From arrival to the recorded date")],
        empty="" if rows else "No time limits fell due in the period."))

    outcome = Section("Outcomes and appeals", "Where the complaints opened in the period stand now.",
                      [made[n] for n in ("outcomes",) if n in made],
                      [_counts("Outcome", report.by_outcome, "outcome")])
    if report.appeals:
        outcome.tables.append(TableView(["request for a review or appeal", "number"],
                                        [[k, str(v)] for k, v in sorted(report.appeals.items())],
                                        "Requests received in the period"))
    for stage, counts in sorted(report.appeal_results.items()):
        outcome.tables.append(TableView(["result", "number"], [[k, str(v)] for k, v in sorted(counts.items())],
                                        f"Results: {report.stage_names.get(stage, f'stage {stage}')}"))
    sections.append(outcome)

    nature = Section("What the complaints were about",
                     "Themes are found from words in each complaint; the complaints themselves are not "
                     "shown.", [made[n] for n in ("themes",) if n in made],
                     [_counts("Themes", report.themes, "theme", of=report.complaints)])
    if report.flags:
        nature.tables.append(_counts("Handled specially", report.flags, "flag", of=report.complaints))
    sections.append(nature)

    sections.append(Section(
        "Remedial actions and lessons learned", "As recorded by staff on each case.",
        items=[f"{ref} ({ACTIONS.get(kind, kind)}): {text}" for ref, kind, text in sorted(report.actions)],
        empty="None recorded in the period."))

    sections.append(Section(
        "Compliments", "Compliments are passed on to the people they name, and quoted (below) only "
        "where the policy allows it and the sender agreed.",
        tables=[TableView(["", "number"], [["received", str(report.compliments)],
                                           ["passed on to the people named", str(report.compliments_passed_on)]]
                          + [[f"by {k.replace('_', ' ')}", str(v)] for k, v in sorted(report.compliments_by_channel.items())],
                          "Compliments")]))
    from mailbot.reports.compliments import feedback_sections  # quotes given permission, survey

    sections += feedback_sections(report)
    return sections


NOTES = ("Cases are those opened in the period; outcomes are as they stand on the date the report "
         "was made. Medians and 90th percentiles are by nearest rank. No personal data: cases are "
         "referred to by reference only, and staff notes have addresses, telephone numbers and "
         "known names removed.")


def render_html(report: Report) -> str:
    env = Environment(loader=FileSystemLoader(str(HERE)), autoescape=select_autoescape(["j2", "html"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["data_uri"] = lambda png: "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return env.get_template("report.html.j2").render(
        report=report, summary=summary(report), sections=layout(report), notes=NOTES)


def render_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["section", "item", "value"])
    writer.writerows(report.rows())
    return out.getvalue()


def _font() -> tuple[str, str]:
    """DejaVu Sans (shipped inside matplotlib) for full Unicode; Helvetica if it is missing."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    try:
        import matplotlib

        fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        if "DejaVuSans" not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(TTFont("DejaVuSans", str(fonts / "DejaVuSans.ttf")))
            pdfmetrics.registerFont(TTFont("DejaVuSans-Bold", str(fonts / "DejaVuSans-Bold.ttf")))
        return "DejaVuSans", "DejaVuSans-Bold"
    except Exception:  # noqa: BLE001
        return "Helvetica", "Helvetica-Bold"


def render_pdf(report: Report) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.enums import TA_LEFT
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import cm
    from reportlab.platypus import (Image, KeepTogether, ListFlowable, ListItem, Paragraph,
                                    SimpleDocTemplate, Spacer, Table, TableStyle)
    from xml.sax.saxutils import escape

    regular, bold = _font()
    base = ParagraphStyle("base", fontName=regular, fontSize=9.5, leading=13, alignment=TA_LEFT)
    small = ParagraphStyle("small", parent=base, fontSize=8, leading=10.5, textColor=colors.HexColor("#444444"))
    h1 = ParagraphStyle("h1", parent=base, fontName=bold, fontSize=17, leading=21, spaceAfter=4)
    h2 = ParagraphStyle("h2", parent=base, fontName=bold, fontSize=12.5, leading=16, spaceBefore=10,
                        spaceAfter=4, textColor=colors.HexColor("#0B3C5D"))
    caption = ParagraphStyle("caption", parent=base, fontName=bold, fontSize=9, spaceBefore=6, spaceAfter=2)
    width = A4[0] - 4 * cm

    def table(view: TableView):
        data = [[Paragraph(escape(h), small) for h in view.headers]]
        data += [[Paragraph(escape(c), base) for c in row] for row in view.rows]
        first = 0.34 * width if len(view.headers) > 2 else 0.6 * width
        rest = (width - first) / max(1, len(view.headers) - 1)
        t = Table(data, colWidths=[first] + [rest] * (len(view.headers) - 1), repeatRows=1)
        t.setStyle(TableStyle([
            ("LINEBELOW", (0, 0), (-1, 0), 0.8, colors.HexColor("#0B3C5D")),
            ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.HexColor("#CCCCCC")),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("ROWBACKGROUNDS", (0, 1), (-1, -1), [colors.white, colors.HexColor("#F4F7FA")]),
        ]))
        parts = [Paragraph(escape(view.caption), caption)] if view.caption else []
        return parts + [t, Spacer(1, 4)]

    def image(chart: Chart):
        from reportlab.lib.utils import ImageReader

        reader = ImageReader(io.BytesIO(chart.png))
        w, h = reader.getSize()
        scale = width / w
        return [Paragraph(escape(chart.caption), caption),
                Image(io.BytesIO(chart.png), width=width, height=h * scale), Spacer(1, 4)]

    story = [Paragraph(escape(report.organisation), small), Paragraph(escape(report.title), h1),
             Paragraph(escape(f"{report.period}. Made {report.generated_at:%-d %B %Y}."), base),
             Spacer(1, 8)]
    figures = summary(report)
    cells = [[Paragraph(f"<font size=15>{escape(v)}</font><br/>{escape(k)}", small) for k, v in figures[i:i + 3]]
             for i in range(0, len(figures), 3)]
    boxes = Table(cells, colWidths=[width / 3] * 3)
    boxes.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.5, colors.HexColor("#CCCCCC")),
                               ("INNERGRID", (0, 0), (-1, -1), 0.5, colors.HexColor("#CCCCCC")),
                               ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#F4F7FA")),
                               ("TOPPADDING", (0, 0), (-1, -1), 6), ("BOTTOMPADDING", (0, 0), (-1, -1), 6)]))
    story += [boxes]
    for section in layout(report):
        head = [Paragraph(escape(section.title), h2)]
        if section.intro:
            head.append(Paragraph(escape(section.intro), base))
        # a heading stays with its first chart or table; each chart and table is kept whole
        first = image(section.charts[0]) if section.charts else (table(section.tables[0]) if section.tables else [])
        story.append(KeepTogether(head + first))
        for chart in section.charts[1:]:
            story.append(KeepTogether(image(chart)))
        for view in section.tables[0 if section.charts else 1:]:
            story.append(KeepTogether(table(view)))
        if section.items:
            story.append(ListFlowable([ListItem(Paragraph(escape(i), base)) for i in section.items],
                                      bulletType="bullet", leftIndent=12))
        elif section.empty and not section.tables:
            story.append(Paragraph(escape(section.empty), base))
        elif section.empty:
            story.append(Paragraph(escape(section.empty), small))
    story += [Spacer(1, 10), Paragraph(escape(NOTES), small)]

    out = io.BytesIO()

    def footer(canvas, doc):
        canvas.saveState()
        canvas.setFont(regular, 7.5)
        canvas.setFillColor(colors.HexColor("#666666"))
        canvas.drawString(2 * cm, 1.2 * cm, f"{report.organisation}: {report.title}, {report.period}")
        canvas.drawRightString(A4[0] - 2 * cm, 1.2 * cm, f"page {doc.page}")
        canvas.restoreState()

    doc = SimpleDocTemplate(out, pagesize=A4, leftMargin=2 * cm, rightMargin=2 * cm, topMargin=1.8 * cm,
                            bottomMargin=2 * cm, title=f"{report.title}, {report.period}",
                            author=report.organisation, invariant=1)
    doc.build(story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()

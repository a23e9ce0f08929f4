"""Compliments and feedback in reports (mailbot.feedback): the compliments board for the office
wall and the website, and the feedback sections of the board report.

Only compliments whose sender said yes to being quoted (``Compliment.consent == "yes"``) are
quoted, and only when the policy publishes compliments at all (``[compliment] publish`` is not
"never").  A quote is what the sender wrote in the message that opened the case, without the
quoted history and signature (``mailbot.classify.prepare``), with their name (whole or any part),
their address, any email address and any telephone number removed; the names of staff are kept,
because the praise is theirs.  Survey results are figures only: how many were asked, how many
answered, how the answers spread over the policy's scale, and the themes of the comments
(never the comments themselves).
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from sqlmodel import Session, col, select

from mailbot.cases.models import Case, Compliment, Message, Survey, utcnow
from mailbot.policy.calendar import LONDON
from mailbot.policy.rules import Rules

HERE = Path(__file__).parent
QUOTE_LIMIT = 700


@dataclass
class Quote:
    reference: str
    day: date
    praised: list[str]
    text: str


@dataclass
class SurveyFigures:
    sent: int = 0
    answered: int = 0
    distribution: list[tuple[str, int]] = field(default_factory=list)  # the scale, best first
    no_rating: int = 0
    themes: Counter = field(default_factory=Counter)
    average: float | None = None  # on the scale's numbers, 1 (worst) .. n (best)
    scale_size: int = 5

    @property
    def rate(self) -> str:
        return f"{100 * self.answered / self.sent:.0f}%" if self.sent else "-"


@dataclass
class Feedback:
    compliments: int = 0
    consent: Counter = field(default_factory=Counter)  # yes | no | no answer | not asked
    quotes: list[Quote] = field(default_factory=list)
    survey: SurveyFigures = field(default_factory=SurveyFigures)


def _aware(moment):
    from datetime import timezone

    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def _first_inbound(session: Session, case: Case) -> Message | None:
    return session.exec(select(Message).where(col(Message.case_id) == case.id, col(Message.direction) == "in")
                        .order_by(col(Message.id)).limit(1)).first()


def anonymised_words(session: Session, case: Case) -> str:
    """The compliment's own words, without the sender's name, address or telephone number."""
    from mailbot.classify.prepare import prepare
    from mailbot.intake.parse import ParseError, parse
    from mailbot.reports.data import scrub

    row = _first_inbound(session, case)
    if row is None:
        return ""
    try:
        msg = parse(row.raw)
    except ParseError:
        return ""
    text = prepare(msg.text or "", case.channel, msg.subject or "").new_text
    names = [case.complainant_name, msg.from_name]
    local = (case.complainant or "").split("@")[0]
    names += [p for p in re.split(r"[._\-+0-9]+", local) if len(p) >= 3]
    text = scrub(text, names=[n for n in names if n], addresses=[case.complainant, msg.from_addr])
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > QUOTE_LIMIT:
        text = text[:QUOTE_LIMIT].rsplit(" ", 1)[0] + " …"
    return text


def _bounds(start: date, end: date):
    from mailbot.reports.data import london_midnight

    return london_midnight(start), london_midnight(end)


def consented_quotes(session: Session, rules: Rules, start: date, end: date) -> list[Quote]:
    """Compliments opened in [start, end) whose sender agreed to be quoted, oldest first."""
    if rules.compliment.publish == "never":
        return []
    t0, t1 = _bounds(start, end)
    rows = session.exec(select(Case, Compliment).join(Compliment, col(Compliment.case_id) == col(Case.id))
                        .where(col(Case.kind) == "compliment", col(Compliment.consent) == "yes",
                               col(Case.opened_at) >= t0, col(Case.opened_at) < t1)
                        .order_by(col(Case.opened_at), col(Case.id))).all()
    quotes = []
    for case, compliment in rows:
        text = anonymised_words(session, case)
        if not text:
            continue
        try:
            praised = [p["name"] for p in json.loads(compliment.praised or "[]") if p.get("kind") != "role"]
        except (ValueError, TypeError):
            praised = []
        quotes.append(Quote(case.reference, _aware(case.opened_at).astimezone(LONDON).date(), praised, text))
    return quotes


def survey_figures(session: Session, rules: Rules, start: date, end: date) -> SurveyFigures:
    """Surveys sent in [start, end) and what became of them (answers received up to now)."""
    from mailbot.reports.data import themes_of

    t0, t1 = _bounds(start, end)
    scale = rules.survey.scale
    n = len(scale)
    figures = SurveyFigures(scale_size=n)
    rows = session.exec(select(Survey).where(col(Survey.sent_at) >= t0, col(Survey.sent_at) < t1)).all()
    counts: Counter = Counter()
    scores = []
    for s in rows:
        figures.sent += 1
        if s.answered_at is None:
            continue
        figures.answered += 1
        if s.score is not None and 1 <= s.score <= n:
            counts[scale[n - s.score]] += 1
            scores.append(s.score)
        else:
            figures.no_rating += 1
        comment = s.comment or ""
        for word in [*scale, r"\d+\s*(?:/|out of)\s*\d+", r"^\W*\d+"]:
            comment = re.sub(word if word.startswith(("\\", "^")) else r"(?<!\w)" + re.escape(word) + r"(?!\w)",
                             " ", comment, flags=re.IGNORECASE)
        if len(re.findall(r"\w+", comment)) >= 4:  # more than "thanks": a comment worth a theme
            for theme in themes_of(rules, comment):
                figures.themes[theme] += 1
    figures.distribution = [(word, counts[word]) for word in scale]
    figures.average = sum(scores) / len(scores) if scores else None
    return figures


def build_feedback(session: Session, rules: Rules, start: date, end: date) -> Feedback:
    t0, t1 = _bounds(start, end)
    fb = Feedback()
    rows = session.exec(select(Case, Compliment).join(Compliment, col(Compliment.case_id) == col(Case.id),
                                                      isouter=True)
                        .where(col(Case.kind) == "compliment", col(Case.opened_at) >= t0,
                               col(Case.opened_at) < t1)).all()
    for case, compliment in rows:
        fb.compliments += 1
        consent = compliment.consent if compliment is not None else ""
        fb.consent[{"yes": "agreed to be quoted", "no": "said no", "asked": "no answer yet"}.get(
            consent, "not asked")] += 1
    fb.quotes = consented_quotes(session, rules, start, end)
    fb.survey = survey_figures(session, rules, start, end)
    return fb


# -- in the board report (mailbot.reports.render) ---------------------------------------------


def feedback_rows(fb: Feedback | None) -> list[tuple[str, str, str]]:
    if fb is None:
        return []
    rows = [("compliments consent", k, str(v)) for k, v in sorted(fb.consent.items())]
    rows += [("compliments quoted", q.reference, q.text) for q in fb.quotes]
    s = fb.survey
    rows += [("survey", "sent", str(s.sent)), ("survey", "answered", str(s.answered)),
             ("survey", "response rate", s.rate), ("survey", "no rating given", str(s.no_rating))]
    rows += [("survey rating", word, str(count)) for word, count in s.distribution]
    rows += [("survey theme", k, str(v)) for k, v in s.themes.most_common()]
    return rows


def feedback_sections(report) -> list:
    from mailbot.reports.render import Section, TableView

    fb = getattr(report, "feedback", None)
    if fb is None:
        return []
    sections = []
    items = [f"“{q.text}”" + (f" (about {', '.join(q.praised)})" if q.praised else "")
             + f" {q.reference}, {q.day:%-d %B %Y}" for q in fb.quotes]
    consent_rows = [[k, str(v)] for k, v in sorted(fb.consent.items())]
    sections.append(Section(
        "Compliments in their own words",
        "Quoted only where the sender agreed, without their name or contact details; the names "
        "of the staff they praise are kept.",
        tables=[TableView(["", "compliments"], consent_rows, "Permission to quote")] if consent_rows else [],
        items=items, empty="No compliment received in the period may be quoted."))
    s = fb.survey
    total = sum(c for _, c in s.distribution)
    dist = [[word, str(count), f"{100 * count / total:.0f}%" if total else "-"] for word, count in s.distribution]
    tables = [TableView(["", "number"], [["surveys sent", str(s.sent)], ["answered", str(s.answered)],
                                         ["response rate", s.rate]], "Responses")]
    if s.answered:
        tables.append(TableView(["rating", "answers", "share"], dist + (
            [["(a comment, no rating)", str(s.no_rating), ""]] if s.no_rating else []), "How they rated us"))
    if s.themes:
        tables.append(TableView(["theme", "comments"], [[k, str(v)] for k, v in s.themes.most_common()],
                                "What the comments were about"))
    sections.append(Section(
        "How complainants rated our handling",
        "One short survey after each complaint closes (or after an appeal outcome), never twice to "
        "one person and never after anonymous, abusive or withdrawn complaints. Comments are "
        "counted by theme, not quoted.", tables=tables,
        empty="" if s.sent else "No surveys were sent in the period."))
    return sections


# -- the compliments board ------------------------------------------------------------------------


@dataclass
class Board:
    organisation: str
    title: str
    start: date
    end: date  # exclusive
    generated_at: datetime
    quotes: list[Quote]
    website: str = ""

    @property
    def period(self) -> str:
        from datetime import timedelta

        return f"{self.start:%-d %B %Y} to {(self.end - timedelta(days=1)):%-d %B %Y}"


def build_board(session: Session, rules: Rules, start: date, end: date, *,
                title: str = "What people say about us", now: datetime | None = None) -> Board:
    return Board(rules.organisation.name, title, start, end, now or utcnow(),
                 consented_quotes(session, rules, start, end), rules.organisation.website)


def render_board_html(board: Board) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(HERE)), autoescape=select_autoescape(["j2", "html"]),
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("compliments.html.j2").render(board=board)


def render_board_pdf(board: Board) -> bytes:
    from xml.sax.saxutils import escape

    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import cm
    from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    from mailbot.reports.render import _font

    regular, bold = _font()
    base = ParagraphStyle("base", fontName=regular, fontSize=12, leading=17)
    quote = ParagraphStyle("quote", parent=base, fontSize=14, leading=20)
    small = ParagraphStyle("small", parent=base, fontSize=9, leading=12, textColor=colors.HexColor("#555555"))
    h1 = ParagraphStyle("h1", parent=base, fontName=bold, fontSize=24, leading=30, spaceAfter=4,
                        textColor=colors.HexColor("#0B3C5D"))
    width = A4[0] - 4 * cm
    story = [Paragraph(escape(board.organisation), small), Paragraph(escape(board.title), h1),
             Paragraph(escape(f"Compliments received {board.period}, shared with the senders' permission."), small),
             Spacer(1, 12)]
    if not board.quotes:
        story.append(Paragraph("No compliments to show for this period yet.", base))
    for q in board.quotes:
        who = f"About {', '.join(q.praised)}, " if q.praised else ""
        cell = [Paragraph(escape(f"“{q.text}”"), quote), Spacer(1, 4),
                Paragraph(escape(f"{who}{q.day:%B %Y}"), small)]
        box = Table([[cell]], colWidths=[width])
        box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.8, colors.HexColor("#0B3C5D")),
                                 ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#F4F7FA")),
                                 ("LEFTPADDING", (0, 0), (-1, -1), 12), ("RIGHTPADDING", (0, 0), (-1, -1), 12),
                                 ("TOPPADDING", (0, 0), (-1, -1), 10), ("BOTTOMPADDING", (0, 0), (-1, -1), 10)]))
        story += [KeepTogether([box]), Spacer(1, 10)]
    out = io.BytesIO()
    doc = SimpleDocTemplate(out, pagesize=A4, leftMargin=2 * cm, rightMargin=2 * cm, topMargin=2 * cm,
                            bottomMargin=2 * cm, title=f"{board.title}, {board.period}",
                            author=board.organisation, invariant=1)
    doc.build(story)
    return out.getvalue()

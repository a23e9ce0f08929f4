"""Subject access: everything held about one person, as a bundle a caseworker can check and send.

``export_person(db, address, out_dir)`` writes:

- ``index.html``: a readable overview (cases, then every message and event in time order);
- ``messages/NNNN.eml``: the original bytes of every message the person sent or was sent;
- ``data.json``: the same facts as structured data (cases, messages, events, classifications).

What is included, and why (the documented rule):

- every case whose complainant is the person, every message from or to them, every message
  and event of their cases;
- staff-only notes (events with action ``note``) are included by default, because under UK
  GDPR internal notes about a person are their personal data; ``include_notes=False`` leaves
  them out where an exemption applies (e.g. legal advice), and the bundle says so;
- messages between staff about the case (notifications, notes) are shown as text only, never
  as originals, and third parties' personal data in any text is redacted: every email
  address other than the person's own and the organisation's is replaced, and each name
  given in ``redact`` is replaced wherever it appears.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import col, or_, select

from mailbot.cases.models import Case, Event, Message
from mailbot.db import Database
from mailbot.intake.parse import ParseError, parse

_ADDRESS = re.compile(r"[\w.+'-]+@[\w-]+(\.[\w-]+)+")


@dataclass
class ExportSummary:
    cases: int
    messages: int
    originals: int
    events: int
    path: Path


class Redactor:
    def __init__(self, person: str, keep_domains: set[str], names: list[str]):
        self.person = person.lower()
        self.keep_domains = {d.lower() for d in keep_domains}
        self.names = [re.compile(rf"\b{re.escape(n)}\b", re.I) for n in names if n.strip()]

    def __call__(self, text: str) -> str:
        def address(match: re.Match) -> str:
            value = match.group(0).lower()
            if value == self.person or value.rsplit("@", 1)[-1] in self.keep_domains:
                return match.group(0)
            return "[address redacted]"

        text = _ADDRESS.sub(address, text or "")
        for pattern in self.names:
            text = pattern.sub("[name redacted]", text)
        return text


def _text_of(raw: bytes) -> str:
    try:
        return parse(raw).text
    except ParseError as exc:
        return f"(message could not be read: {exc})"


def export_person(db: Database, address: str, out_dir: Path, *, organisation_domains: set[str],
                  include_notes: bool = True, redact: list[str] | None = None) -> ExportSummary:
    address = address.strip().lower()
    out_dir = Path(out_dir)
    (out_dir / "messages").mkdir(parents=True, exist_ok=True)
    redactor = Redactor(address, organisation_domains, redact or [])
    with db.session() as session:
        cases = session.exec(select(Case).where(col(Case.complainant) == address).order_by(col(Case.id))).all()
        case_ids = [c.id for c in cases]
        messages = session.exec(select(Message).where(or_(
            col(Message.sender) == address,
            col(Message.recipients).contains(address),
            col(Message.case_id).in_(case_ids or [-1]))).order_by(col(Message.at), col(Message.id))).all()
        message_ids = [m.id for m in messages]
        events = session.exec(select(Event).where(or_(
            col(Event.case_id).in_(case_ids or [-1]),
            col(Event.message_id).in_(message_ids or [-1]))).order_by(col(Event.at), col(Event.id))).all()
    if not include_notes:
        events = [e for e in events if e.action != "note"]

    refs = {c.id: c.reference for c in cases}
    msg_rows, originals = [], 0
    for m in messages:
        theirs = m.sender == address or address in m.recipients.split(",")
        original = None
        if theirs:
            originals += 1
            original = f"messages/{originals:04d}.eml"
            (out_dir / original).write_bytes(m.raw)
        msg_rows.append({
            "id": m.id, "case": refs.get(m.case_id), "direction": m.direction, "at": m.at.isoformat(),
            "from": m.sender if theirs or m.direction == "out" else redactor(m.sender),
            "to": redactor(m.recipients), "subject": redactor(m.subject),
            "text": redactor(_text_of(m.raw)), "label": m.label,
            "classification": json.loads(m.classification) if m.classification else None,
            "outcome": m.outcome, "original": original,
        })
    event_rows = [{"case": refs.get(e.case_id), "at": e.at.isoformat(), "actor": redactor(e.actor),
                   "action": e.action, "detail": redactor(e.detail or "")} for e in events]
    case_rows = [{"reference": c.reference, "kind": c.kind, "status": c.status, "channel": c.channel,
                  "flags": c.flag_list, "subject": redactor(c.subject), "opened_at": c.opened_at.isoformat(),
                  "closed_at": c.closed_at.isoformat() if c.closed_at else None} for c in cases]
    data = {"person": address, "notes_included": include_notes, "cases": case_rows,
            "messages": msg_rows, "events": event_rows,
            "rule": "Staff notes are included unless an exemption applies; other people's "
                    "addresses and the names listed for redaction are replaced."}
    (out_dir / "data.json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    (out_dir / "index.html").write_text(_html(data), encoding="utf-8")
    return ExportSummary(len(cases), len(messages), originals, len(events), out_dir)


def _html(data: dict) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Information held about "
             f"{e(data['person'])}</title><style>body{{font-family:Arial,sans-serif;max-width:60em;margin:2em auto}}"
             f"pre{{white-space:pre-wrap;background:#f6f6f6;padding:.6em}}td,th{{border:1px solid #ccc;padding:.3em}}"
             f"table{{border-collapse:collapse}}</style></head><body>",
             f"<h1>Information held about {e(data['person'])}</h1>",
             f"<p>{e(data['rule'])} Staff notes {'are' if data['notes_included'] else 'are not'} included.</p>",
             "<h2>Cases</h2><table><tr><th>Reference</th><th>Kind</th><th>Status</th><th>Opened</th><th>Subject</th></tr>"]
    for c in data["cases"]:
        parts.append(f"<tr><td>{e(c['reference'])}</td><td>{e(c['kind'])}</td><td>{e(c['status'])}</td>"
                     f"<td>{e(c['opened_at'][:16])}</td><td>{e(c['subject'])}</td></tr>")
    parts.append("</table><h2>Messages</h2>")
    for m in data["messages"]:
        link = f" (<a href='{e(m['original'])}'>original</a>)" if m["original"] else ""
        parts.append(f"<h3>{e(m['at'][:16])} {'received' if m['direction'] == 'in' else 'sent'}: "
                     f"{e(m['subject'])}</h3><p>From {e(m['from'])} to {e(m['to'])}{link}</p>"
                     f"<pre>{e(m['text'])}</pre>")
    parts.append("<h2>Events</h2><table><tr><th>When</th><th>Case</th><th>Who</th><th>What</th><th>Detail</th></tr>")
    for ev in data["events"]:
        parts.append(f"<tr><td>{e(ev['at'][:19])}</td><td>{e(ev['case'] or '')}</td><td>{e(ev['actor'])}</td>"
                     f"<td>{e(ev['action'])}</td><td>{e(ev['detail'][:500])}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)

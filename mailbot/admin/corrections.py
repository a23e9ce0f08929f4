"""Staff corrections of a classification, as training examples.

When staff correct what a case is (``#reclassify compliment`` in a reply, see
``mailbot.staffmail``), the correction is an audit ``Event`` (action ``reclassified``, detail
``{"from": ..., "to": ..., "messages": [{"id": ..., "label": ...}]}``).  ``mailbot train
--include-corrections`` learns from them: each corrected message's *prepared* text (what the
person wrote now, without quoted history, signatures or relay wrapping: what the model reads)
becomes one extra example with the corrected label.

Why in memory and not in ``rules/training/``: the messages are complainants' mail, kept under
the retention rules of ``[retention]``; copied into the repository they would outlive an
erasure.  Read from the database at training time, an erased message is simply gone.
``mailbot corrections --export FILE`` writes them out (owner-only) for anyone who wants to
look at them first.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlmodel import Session, col, select

from mailbot.admin.plan import aware
from mailbot.cases.models import Case, Event, Message
from mailbot.classify.model import TrainingExample
from mailbot.intake.parse import ParseError, parse
from mailbot.policy.rules import FLAGS, LABELS


@dataclass
class Correction:
    case: str
    message_id: int
    was: str  # the label the classifier gave the message
    label: str  # the label staff gave the case
    by: str
    at: datetime
    erased: bool = False  # the message's text is gone (retention, erasure): not used


def corrections(session: Session) -> list[Correction]:
    """The latest correction of each message, oldest first.

    A correction is about the case; the messages it applies to are those the classifier filed
    under the case's old kind (the ones that made it that kind), or else the first one.  A
    later reply on the case (an appeal, a withdrawal) keeps its own label."""
    found: dict[int, Correction] = {}
    events = session.exec(select(Event).where(col(Event.action) == "reclassified").order_by(col(Event.id))).all()
    for event in events:
        detail = event.detail_fields
        label = str(detail.get("to", "")).lower()
        if label not in LABELS or event.case_id is None:
            continue
        listed = [m for m in detail.get("messages", []) if isinstance(m, dict) and m.get("id")]
        if not listed:
            first = session.exec(select(Message.id, Message.label).where(
                col(Message.case_id) == event.case_id, col(Message.direction) == "in")
                .order_by(col(Message.id))).first()
            listed = [{"id": first[0], "label": first[1]}] if first else []
        chosen = [m for m in listed if m.get("label") == detail.get("from")] or listed[:1]
        case = session.get(Case, event.case_id)
        for item in chosen:
            row = session.get(Message, int(item["id"]))
            if row is None:
                continue
            found[row.id] = Correction(case.reference if case else "?", row.id, row.label or str(item.get("label", "")),
                                       label, event.actor, aware(event.at), erased=not row.raw)
    return sorted(found.values(), key=lambda c: c.message_id)


def training_examples(session: Session) -> list[TrainingExample]:
    """One example per corrected message whose text is still held and whose label changed."""
    from mailbot.classify.prepare import prepare

    examples = []
    for item in corrections(session):
        if item.erased or item.was == item.label:
            continue
        row = session.get(Message, item.message_id)
        try:
            msg = parse(row.raw)
        except ParseError:
            continue
        try:
            recorded = json.loads(row.classification or "{}")
        except ValueError:
            recorded = {}
        prepared = prepare(msg.text, recorded.get("channel", "email"), msg.subject)
        body = prepared.new_text.strip() or msg.text.strip()
        if not body:
            continue
        flags = [f for f in recorded.get("flags", []) if f in FLAGS]
        examples.append(TrainingExample(msg.subject or "", body, item.label, flags,
                                        f"correction of {item.case} (message {item.message_id})"))
    return examples


def export(examples: list[TrainingExample], path: Path) -> None:
    """The examples as a training file (one JSON object a line), readable by its owner only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        for ex in examples:
            handle.write(json.dumps({"subject": ex.subject, "body": ex.body, "label": ex.label,
                                     "flags": ex.flags}) + "\n")


def from_config(config) -> list[TrainingExample]:
    """The corrections in the installation's database, read-only (``mailbot train``)."""
    from mailbot.admin.plan import read_session
    from mailbot.admin.simulate import case_book

    engine = case_book(config)
    try:
        with read_session(engine) as session:
            examples = training_examples(session)
            session.rollback()
    finally:
        engine.dispose()
    return examples


def measure(rules_dir: Path, model_dir: Path | None, folder: Path, review_below: float = 0.6) -> dict:
    """``mailbot eval`` of one model on the admin's labelled folder."""
    from mailbot.classify import Classifier
    from mailbot.classify.evaluate import evaluate
    from mailbot.policy.rules import load_rules

    return evaluate(Classifier(load_rules(rules_dir), model_dir, review_below), folder)


def before_after(before: dict, after: dict) -> list[tuple[str, str, str, str]]:
    """(measure, before, after, change) rows: macro-F1, F1 per label, flag recall, channel
    accuracy and how much would go to staff review."""
    rows = []

    def row(name: str, a: float, b: float, digits: int = 3) -> None:
        change = b - a
        rows.append((name, f"{a:.{digits}f}", f"{b:.{digits}f}",
                     "=" if abs(change) < 10 ** -digits / 2 else f"{change:+.{digits}f}"))

    row("macro-F1", before["macro_f1"], after["macro_f1"])
    for label in before["labels"]:
        if before["labels"][label]["support"]:
            row(f"F1 {label}", before["labels"][label]["f1"], after["labels"][label]["f1"])
    for flag in before["flags"]:
        if before["flags"][flag]["support"]:
            row(f"recall {flag}", before["flags"][flag]["recall"], after["flags"][flag]["recall"])
    row("channel accuracy", before["channel_accuracy"], after["channel_accuracy"])
    row("to staff review", before["needs_review"], after["needs_review"], 0)
    return rows

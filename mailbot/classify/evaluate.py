"""Measure the classifier on a labelled folder: ``.eml`` files plus ``labels.csv`` with columns
``file,label,channel,safeguarding,legal,abusive,anonymous,reference[,notes]``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from mailbot.classify import Classification, Classifier
from mailbot.intake.parse import ParseError, parse
from mailbot.policy.rules import FLAGS, LABELS


class EvalDataError(Exception):
    pass


@dataclass
class Gold:
    file: str
    label: str
    channel: str
    flags: list[str]
    reference: str | None


def read_labels(directory: Path) -> list[Gold]:
    path = Path(directory) / "labels.csv"
    if not path.is_file():
        raise EvalDataError(f"{path} not found: the folder needs a labels.csv beside the .eml files")
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.DictReader(handle), 2):
            if row.get("label") not in LABELS:
                raise EvalDataError(f"{path}:{number}: label {row.get('label')!r} is not one of {LABELS}")
            flags = [f for f in FLAGS if str(row.get(f, "0")).strip() in ("1", "true", "yes")]
            rows.append(Gold(row["file"], row["label"], row.get("channel") or "email", flags,
                             (row.get("reference") or "").strip().upper() or None))
    return rows


def _prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "support": tp + fn}


def evaluate(classifier: Classifier, directory: Path) -> dict:
    gold = read_labels(directory)
    messages, kept, errors = [], [], []
    for item in gold:
        try:
            messages.append(parse((Path(directory) / item.file).read_bytes()))
            kept.append(item)
        except (OSError, ParseError) as exc:
            errors.append({"file": item.file, "error": str(exc)})
    predictions: list[Classification] = classifier.classify_many(messages)
    confusion = {g: {p: 0 for p in LABELS} for g in LABELS}
    for g, p in zip(kept, predictions):
        confusion[g.label][p.label] += 1
    per_label = {}
    for label in LABELS:
        tp = confusion[label][label]
        fp = sum(confusion[g][label] for g in LABELS if g != label)
        fn = sum(confusion[label][p] for p in LABELS if p != label)
        per_label[label] = _prf(tp, fp, fn)
    present = [l for l in LABELS if per_label[l]["support"]]
    macro = sum(per_label[l]["f1"] for l in present) / len(present) if present else 0.0
    flags = {}
    for flag in FLAGS:
        tp = sum(1 for g, p in zip(kept, predictions) if flag in g.flags and flag in p.flags)
        fp = sum(1 for g, p in zip(kept, predictions) if flag not in g.flags and flag in p.flags)
        fn = sum(1 for g, p in zip(kept, predictions) if flag in g.flags and flag not in p.flags)
        flags[flag] = _prf(tp, fp, fn)
    channel_ok = sum(1 for g, p in zip(kept, predictions) if g.channel == p.channel)
    reference_ok = sum(1 for g, p in zip(kept, predictions) if g.reference == p.reference)
    mistakes = [{"file": g.file, "expected": g.label, "got": p.label, "confidence": p.confidence,
                 "channel": [g.channel, p.channel], "flags": [g.flags, p.flags]}
                for g, p in zip(kept, predictions)
                if g.label != p.label or g.channel != p.channel or set(g.flags) != set(p.flags)]
    return {
        "messages": len(kept),
        "macro_f1": round(macro, 4),
        "labels": per_label,
        "confusion": confusion,
        "flags": flags,
        "channel_accuracy": round(channel_ok / len(kept), 4) if kept else 0.0,
        "reference_accuracy": round(reference_ok / len(kept), 4) if kept else 0.0,
        "needs_review": sum(1 for p in predictions if p.needs_review),
        "unreadable": errors,
        "mistakes": mistakes,
    }

"""The spaCy pipeline: ``spacy.blank("en")`` plus two bag-of-words text classifiers the project
trains and ships (no downloaded vectors or models, so it runs offline).

- ``textcat`` (exclusive): complaint | compliment | appeal | withdrawal | other.
- ``flags`` (multi-label): safeguarding | legal | abusive | anonymous.

A first experiment (shared/design/classification-notes.md) found bag-of-words n-grams both
better and ~8x faster than the CNN ensemble without pretrained vectors, so that is what is
used.  Training data is every ``*.jsonl`` file under ``rules/training/`` (one object a line:
``{"subject": ..., "body": ..., "label": ..., "flags": [...]}``), so admins teach the model by
adding lines, then running ``mailbot train``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import spacy
from spacy.language import Language
from spacy.training import Example
from spacy.util import minibatch

from mailbot.policy.rules import FLAGS, LABELS

FLAG_OVERSAMPLE = 5
SHIPPED_MODEL = Path(__file__).resolve().parent / "model"
_WHITESPACE = re.compile(r"\s+")
# Rulers of signs ("*****", "-----", "=====") that frame disclaimers and signatures: each sign would
# be a token, and "*" also stands in starred swearing ("f***"), which a ruler is not.
_RULER = re.compile(r"(?<![\w*])[*=_~#+\-]{4,}(?![\w*])")
_GENERIC_REFERENCE = re.compile(r"\b([A-Z]{2,6}[-/ ]?|(?i:[a-z]{2,6})[-/])\d{2,4}[-/]\d{2,6}\b")
# "ref 00144", "complaint no. 162", "case #00213": the number of a case written without its prefix
_SHORT_REFERENCE = re.compile(r"\b((?:complaint|case|ref|reference)(?:\s*(?:no\.?|number|#))?\s*[:.#-]?)\s*\d{3,6}\b",
                              re.IGNORECASE)


def _bow(exclusive: bool) -> dict:
    return {"model": {"@architectures": "spacy.TextCatBOW.v3", "exclusive_classes": exclusive,
                      "ngram_size": 2, "no_output_layer": False, "length": 262144}}


@dataclass
class TrainingExample:
    subject: str
    body: str
    label: str
    flags: list[str]
    source: str
    # ``"flags_only": true`` in the file: the example teaches the flag model and not the label model.
    # For the many plain complaints written to show how a risk is mentioned in passing: shown to the
    # label model too, they would pull every letter that shares their words (a husband, a home, a
    # hospital) towards "complaint", which it already is when in doubt.
    flags_only: bool = False


class TrainingDataError(Exception):
    pass


_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})
MODEL_TEXT_CHARS = 4000  # the gist of a letter is in its first pages; the rest only costs time


def normalise(text: str) -> str:
    """What the model reads: registration numbers become one token, whatever their format."""
    # Line breaks and indentation are layout, not language: spaCy would make each run of them a
    # token that breaks phrases ("small\n  claims") and n-grams, so text wrapped at 72 columns and
    # the same words from an HTML mail read alike.
    text = _RULER.sub(" ", text[:MODEL_TEXT_CHARS * 2])
    text = _WHITESPACE.sub(" ", text)[:MODEL_TEXT_CHARS]
    # Phones and word processors curl apostrophes and quotes ("he’ll", “a friend”): read them as
    # the plain signs the phrase rules and the training data are written with
    text = text.translate(_QUOTES)
    text = _GENERIC_REFERENCE.sub(" REFNUM ", text)
    return _SHORT_REFERENCE.sub(r"\1 REFNUM ", text)


def load_training(directory: Path, extra: Iterable[Path] = ()) -> list[TrainingExample]:
    """Every example under ``directory`` (recursively), with line-precise errors."""
    examples: list[TrainingExample] = []
    problems: list[str] = []
    files = sorted(Path(directory).rglob("*.jsonl")) + list(extra)
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(f"{where}: not valid JSON ({exc.msg})")
                continue
            label, flags = item.get("label"), item.get("flags", [])
            if label not in LABELS:
                problems.append(f"{where}: label {label!r} is not one of {', '.join(LABELS)}")
                continue
            bad = [f for f in flags if f not in FLAGS]
            if bad:
                problems.append(f"{where}: unknown flag(s) {bad}; flags are {', '.join(FLAGS)}")
                continue
            text = item.get("body", item.get("text", ""))
            if not isinstance(text, str) or not text.strip():
                problems.append(f"{where}: the example has no body text")
                continue
            flags_only = item.get("flags_only", False)
            if not isinstance(flags_only, bool):
                problems.append(f"{where}: flags_only must be true or false")
                continue
            examples.append(TrainingExample(item.get("subject", "") or "", text, label, list(flags), where,
                                            flags_only))
    if problems:
        raise TrainingDataError("\n".join(problems))
    if not examples:
        raise TrainingDataError(f"no training examples found under {directory}")
    return examples


def training_fingerprint(examples: list[TrainingExample]) -> str:
    digest = hashlib.sha256()
    for ex in examples:
        digest.update(json.dumps([ex.subject, ex.body, ex.label, sorted(ex.flags)]
                                 + (["flags_only"] if ex.flags_only else [])).encode())
    return digest.hexdigest()


def build() -> Language:
    nlp = spacy.blank("en")
    textcat = nlp.add_pipe("textcat", config=_bow(True))
    for label in LABELS:
        textcat.add_label(label)
    flags = nlp.add_pipe("textcat_multilabel", name="flags", config=_bow(False))
    for flag in FLAGS:
        flags.add_label(flag)
    return nlp


def example_text(ex: TrainingExample) -> str:
    from mailbot.classify.prepare import prepare

    return normalise(prepare(ex.body, subject=ex.subject).model_text(ex.subject))


def train(examples: list[TrainingExample], epochs: int = 25, seed: int = 7,
          progress: Callable[[int, int, dict], None] | None = None) -> Language:
    """Train both classifiers; ``progress(epoch, epochs, losses)`` is called after each epoch."""
    random.seed(seed)
    spacy.util.fix_random_seed(seed)
    nlp = build()
    texts = [example_text(ex) for ex in examples]
    docs = list(nlp.make_doc(t) for t in texts)
    label_examples = [Example.from_dict(doc, {"cats": {l: float(l == ex.label) for l in LABELS}})
                      for doc, ex in zip(docs, examples)]
    flag_examples = [Example.from_dict(doc.copy(), {"cats": {f: float(f in ex.flags) for f in FLAGS}})
                     for doc, ex in zip(docs, examples)]
    textcat, flags = nlp.get_pipe("textcat"), nlp.get_pipe("flags")
    # Initialise each classifier with its own examples and labels: left to itself, the
    # multi-label component would adopt every category it sees, labels included.
    with nlp.select_pipes(enable=["textcat"]):
        optimizer = nlp.initialize(lambda: label_examples)
    flags.initialize(lambda: flag_examples, nlp=nlp, labels=list(FLAGS))
    # Flags are rare (a few percent each), so flagged examples are shown to the flag model
    # several times per epoch: a missed safeguarding concern costs far more than a false alarm.
    flag_order = [i for i, ex in enumerate(examples) for _ in range(FLAG_OVERSAMPLE if ex.flags else 1)]
    order = [i for i, ex in enumerate(examples) if not ex.flags_only]
    for epoch in range(1, epochs + 1):
        random.shuffle(order)
        random.shuffle(flag_order)
        losses: dict[str, float] = {}
        for batch in minibatch(order, size=16):
            textcat.update([label_examples[i] for i in batch], sgd=optimizer, losses=losses, drop=0.2)
        for batch in minibatch(flag_order, size=16):
            flags.update([flag_examples[i] for i in batch], sgd=optimizer, losses=losses, drop=0.2)
        if progress:
            progress(epoch, epochs, losses)
    return nlp


def save(nlp: Language, directory: Path, fingerprint: str, count: int) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    nlp.meta["name"] = "mailbot_classifier"
    nlp.meta["version"] = "1.0.0"
    nlp.meta["mailbot"] = {"training_fingerprint": fingerprint, "examples": count}
    nlp.to_disk(directory)


def load(directory: Path | None = None) -> Language:
    for candidate in [directory, SHIPPED_MODEL]:
        if candidate and (Path(candidate) / "meta.json").is_file():
            return spacy.load(candidate)
    raise FileNotFoundError(
        f"no trained classifier at {directory} or {SHIPPED_MODEL}: run `mailbot train`")

"""Throughput of the classify step alone (screen + text preparation + spaCy + rules), on one core.

    python bench/classify.py [--messages N] [--json]

Messages are the project's own held-out mail (tests/data/unseen-mail), parsed once up front,
repeated to N. Side by side, the same messages through stdlib parsing alone, so the figure
can be read against something on the same noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailbot.classify import Classifier  # noqa: E402
from mailbot.intake.parse import parse  # noqa: E402
from mailbot.policy.rules import load_rules  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the target says
    except (AttributeError, OSError):
        pass
    raws = [p.read_bytes() for p in sorted((REPO / "tests/data/unseen-mail").glob("*.eml"))]
    raws = (raws * (args.messages // len(raws) + 1))[: args.messages]
    classifier = Classifier(load_rules(REPO / "rules"))
    classifier.classify_many([parse(r) for r in raws[:50]])  # warm up

    start = time.perf_counter()
    parsed = [parse(r) for r in raws]
    parse_seconds = time.perf_counter() - start
    start = time.perf_counter()
    results = classifier.classify_many(parsed)
    classify_seconds = time.perf_counter() - start
    assert len(results) == len(raws)
    figures = {
        "messages": len(raws),
        "classify_per_second": round(len(raws) / classify_seconds, 1),
        "parse_per_second": round(len(raws) / parse_seconds, 1),
        "classify_seconds": round(classify_seconds, 3),
        "target_per_second": 1000,
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"{'step':<12}{'messages':>10}{'seconds':>10}{'msg/s':>10}")
    print(f"{'parse':<12}{len(raws):>10}{parse_seconds:>10.2f}{figures['parse_per_second']:>10.0f}")
    print(f"{'classify':<12}{len(raws):>10}{classify_seconds:>10.2f}{figures['classify_per_second']:>10.0f}"
          f"   (target >= 1000 msg/s on one core)")


if __name__ == "__main__":
    main()

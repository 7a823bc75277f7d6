"""What the offline crew does with tickets nobody here wrote: how many it approves, escalates or
sends back, and a sample of the approved replies to read.

    .venv/bin/python benchmarks/offline_quality.py [--per-corpus 60] [--seed 1] [--show 20]

The ticket sets of ../shared/corpora (Kaggle suraj520, Bitext, Tobi-Bueck multilingual, Twitter;
skipped when absent, read in place) are sampled with a seed and run through the real crew (real
agents, tasks, tools and gate) with the built-in offline model and the sample shop's knowledge,
orders and replies. None of these customers is in the sample's order table, so a good outcome is
an answer from the knowledge base when it has one, and a person otherwise. The table gives the
share of each status; `--show N` prints N approved replies (spread over the corpora) with their
tickets, for a person to judge whether each answers its ticket. `--json FILE` keeps every record.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CORPORA = ROOT.parent / "shared" / "corpora"


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="", errors="replace") as f:
        return list(csv.DictReader(f))


def corpus_tickets(directory: Path, per_corpus: int, seed: int) -> dict[str, list[dict]]:
    """{corpus: [{subject, body}]}, a seeded sample of each ticket set that is present."""
    found: dict[str, list[dict]] = {}
    sources = {
        "kaggle-suraj520": ("tickets-kaggle-suraj520/customer_support_tickets.csv",
                            lambda r: (r.get("Ticket Subject", ""), r.get("Ticket Description", ""))),
        "bitext": ("tickets-bitext-customer-service/"
                   "Bitext_Sample_Customer_Service_Training_Dataset.csv",
                   lambda r: ("", r.get("utterance", ""))),
        "tobi-bueck": ("tickets-tobi-bueck-multilang/dataset-tickets-multi-lang3-4k.csv",
                       lambda r: (r.get("subject", ""), r.get("body", ""))),
        "twitter": ("tickets-twitter-customer-support/twcs_sample.csv",
                    lambda r: ("", r.get("text", "")) if r.get("inbound") == "True" else ("", "")),
    }
    for name, (relative, fields) in sources.items():
        path = directory / relative
        if not path.is_file():
            continue
        rows = [dict(zip(("subject", "body"), fields(r), strict=True)) for r in _rows(path)]
        rows = [r for r in rows if r["body"].strip()]
        found[name] = random.Random(f"{seed}:{name}").sample(rows, min(per_corpus, len(rows)))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-corpus", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", type=int, default=20, help="approved replies to print")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--corpora", type=Path, default=CORPORA)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    sets = corpus_tickets(args.corpora, args.per_corpus, args.seed)
    if not sets:
        print(f"skipped: no ticket corpora under {args.corpora}")
        return 0
    os.environ.setdefault("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="offline-quality-"))
    from crews import framework

    framework.prepare(Path(os.environ["CREWAI_STORAGE_DIR"]))
    from concurrent.futures import ThreadPoolExecutor

    from crews.crew import CrewRunner
    from crews.knowledge import KnowledgeBase, Orders
    from crews.offline import OfflineLLM
    from crews.replies import load_replies
    from crews.settings import load_config
    from crews.ticket import Ticket

    config = load_config(ROOT)
    llm = OfflineLLM(model="offline", replies=load_replies(config))
    runner = CrewRunner(config, {r: llm for r in config.agents}, KnowledgeBase(config.knowledge_dir),
                        Orders(config.orders_file), config.settings.revision_limit)
    started = time.monotonic()
    records = []
    print("| corpus | tickets | approved | needs_human | failed | top needs_human reasons |")
    print("|---|---:|---:|---:|---:|---|")
    for name, rows in sets.items():
        tickets = [Ticket(key=f"{name}-{i}", ticket_id=f"{name}-{i}", source=name,
                          received_at="2026-11-20T10:00:00Z", customer="someone@example.org",
                          customer_name="", subject=r["subject"][:200], body=r["body"][:4000],
                          record_no=i) for i, r in enumerate(rows)]
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(runner.run, tickets))
        counts = Counter(r.status.value for r in results)
        reasons = Counter(_reason_kind(r.needs_human_reason) for r in results
                          if r.status.value == "needs_human")
        print(f"| {name} | {len(tickets)} | {counts['approved']} "
              f"({counts['approved'] / len(tickets):.0%}) | {counts['needs_human']} "
              f"({counts['needs_human'] / len(tickets):.0%}) | {counts['failed']} | "
              + ", ".join(f"{k} {v}" for k, v in reasons.most_common(4)) + " |")
        for t, r in zip(tickets, results, strict=True):
            records.append({"corpus": name, "ticket_id": t.ticket_id, "subject": t.subject,
                            "body": t.body, "status": r.status.value,
                            "reason": r.needs_human_reason,
                            "reply": r.draft.reply if r.draft else "", "error": r.error})
    runner.close()
    approved = [r for r in records if r["status"] == "approved"]
    shown = random.Random(args.seed).sample(approved, min(args.show, len(approved)))
    for rec in shown:
        print(f"\n--- {rec['ticket_id']} (approved)\nTICKET: {' '.join(rec['body'].split())[:300]}"
              f"\nREPLY: {' '.join(rec['reply'].split())[:600]}")
    print(f"\n({time.monotonic() - started:.0f}s)")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1, ensure_ascii=False), encoding="utf-8")
    return 0


def _reason_kind(reason: str) -> str:
    """The first clause of a needs_human reason, for counting (e.g. `wrong_language`)."""
    for marker in ("wrong_language", "no confident answer", "must see this ticket: ",
                   "instructions aimed", "policy refused", "did not approve", "escalated"):
        if marker in reason:
            if marker.startswith("must see"):
                return "must see: " + reason.split(marker, 1)[1].split(":", 1)[0]
            return marker
    return reason[:40]


if __name__ == "__main__":
    sys.exit(main())

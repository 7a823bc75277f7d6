"""Language detection for the gate's `wrong_language` check: the candidates, measured.

Each candidate runs in a fresh process (so import time and peak RSS are its own) over real text
from ../shared/corpora:

- tobi-bueck `multi-lang3-4k`: 1,167 ticket/answer pairs in en/de/es/fr/pt, each pair in one
  language. "flagged" counts pairs whose ticket (subject and body, as the gate sees it; and body
  alone) and answer are called different languages: every one is a false `wrong_language`.
- tobi-bueck `aa_…5-2-50` ("held-out"): 1,872 more pairs, en/de (its `language` labels are often
  wrong; each pair is still in one language).
- short replies: each ticket of both sets against only the first sentence of its answer.
- cross-language: each multi-lang3-4k ticket against the answer (and the answer's first sentence)
  of a ticket in another language (seeded); a good check catches all of them.
- tweets: the 93 customer and brand tweets of the Twitter sample (all English), alone, and the
  66 tweet/reply pairs of its threads.

The candidates: the stop-word vote the gate used before (copied here as the baseline), lingua (low and high accuracy mode) and
py3langid, each restricted to crews.language.LANGUAGES and asked for their top language; lingua
with the undetermined rule of crews.language on its confidence values; and crews.language itself
(py3langid with that rule). Wheel sizes need the wheels in a
folder (`pip download --no-deps -d DIR lingua-language-detector py3langid`).

    .venv/bin/python benchmarks/language_bench.py [--wheel-dir DIR]

The tables go to stdout and, as JSON, to benchmarks/results/language-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPORA = REPO.parent / "shared" / "corpora"
TOBI = CORPORA / "tickets-tobi-bueck-multilang"
TWEETS = CORPORA / "tickets-twitter-customer-support" / "twcs_sample.csv"
LABELS = ("en", "de", "es", "fr", "pt")

# name: (distribution, what to install)
CANDIDATES = {
    "stop-word vote (old gate)": (None, None),
    "lingua, low accuracy": ("lingua-language-detector", "lingua-language-detector"),
    "lingua, high accuracy": ("lingua-language-detector", "lingua-language-detector"),
    "py3langid": ("py3langid", "py3langid"),
    "lingua, low accuracy + rule": ("lingua-language-detector", "lingua-language-detector"),
    "lingua, high accuracy + rule": ("lingua-language-detector", "lingua-language-detector"),
    "crews.language (py3langid + rule)": ("py3langid", "py3langid"),
}
WHEELS = {"lingua-language-detector": "lingua_language_detector-*.whl",
          "py3langid": "py3langid-*.whl"}


# --- the corpora -----------------------------------------------------------------------------------


def read_pairs(name: str) -> list[dict]:
    """The complete records of one tobi-bueck file (the truncated last one is left out)."""
    csv.field_size_limit(sys.maxsize)
    rows = []
    with open(TOBI / name, encoding="utf-8", newline="") as f:
        try:
            for row in csv.DictReader(f):
                if row.get("language") in LABELS and row.get("answer"):
                    rows.append({"ticket": f"{row['subject']}\n{row['body']}".strip(),
                                 "body": row["body"], "answer": row["answer"],
                                 "language": row["language"]})
        except csv.Error:
            pass  # the upstream copy is cut inside its last record
    return rows


def first_sentence(answer: str) -> str:
    """The answer's first sentence after a salutation line ("Sehr geehrter <name>,")."""
    text = re.sub(r"^[^\n]{0,60},[ \t]*\n", "", answer.strip(), count=1)
    return next((s for s in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if s.strip()), text)


def corpora() -> dict:
    main = read_pairs("dataset-tickets-multi-lang3-4k.csv")
    held_out = read_pairs("aa_dataset-tickets-multi-lang-5-2-50-version.csv")
    rng = random.Random(7)
    cross, cross_short = [], []
    for pair in main:
        other = rng.choice([p for p in main if p["language"] != pair["language"]])
        cross.append((pair["ticket"], other["answer"]))
        cross_short.append((pair["ticket"], first_sentence(other["answer"])))
    with open(TWEETS, encoding="utf-8", newline="") as f:
        tweets = list(csv.DictReader(f))
    by_id = {t["tweet_id"]: t["text"] for t in tweets}
    threads = [(by_id[t["in_response_to_tweet_id"]], t["text"]) for t in tweets
               if t["in_response_to_tweet_id"] in by_id]
    return {"main": main, "held_out": held_out, "cross": cross, "cross_short": cross_short,
            "short": [(p["ticket"], first_sentence(p["answer"])) for p in main + held_out],
            "tweets": [t["text"] for t in tweets], "threads": threads}


# --- the candidates --------------------------------------------------------------------------------

# The gate's language check before crews/language.py, kept here as the baseline.
STOPWORDS = {
    "en": ["the", "and", "you", "your", "is", "are", "have", "has", "for", "with", "this", "that", "not", "please", "thanks", "order", "my", "we", "it"],
    "de": ["der", "die", "das", "und", "ich", "nicht", "ist", "ein", "eine", "mit", "sie", "bitte", "danke", "meine", "bestellung", "wurde", "noch"],
    "es": ["el", "la", "los", "las", "y", "que", "no", "es", "un", "una", "con", "por", "para", "mi", "pedido", "gracias", "hola", "está"],
    "fr": ["le", "la", "les", "et", "je", "ne", "pas", "est", "un", "une", "avec", "pour", "mon", "ma", "commande", "merci", "bonjour", "vous"],
    "nl": ["de", "het", "en", "ik", "niet", "is", "een", "met", "voor", "mijn", "bestelling", "bedankt", "u", "je"],
    "it": ["il", "la", "e", "che", "non", "è", "un", "una", "con", "per", "mio", "ordine", "grazie", "sono"],
    "pt": ["o", "a", "os", "as", "e", "que", "não", "é", "um", "uma", "com", "para", "meu", "pedido", "obrigado"],
}


def stopword_vote(text: str) -> str:
    tokens = re.findall(r"[^\W\d_]+", (text or "").lower())
    if not tokens:
        return "en"
    scores = {lang: sum(1 for t in tokens if t in set(words)) for lang, words in STOPWORDS.items()}
    best = max(scores, key=lambda k: (scores[k], k == "en"))
    return best if scores[best] >= 2 else "en"


def build(name: str):
    """(detect, differ): text → code or None; (ticket, reply) → a `wrong_language` finding?"""
    from crews import language

    if name.startswith("stop-word"):
        detect = stopword_vote
    elif name.startswith("lingua"):
        from lingua import IsoCode639_1, LanguageDetectorBuilder

        builder = LanguageDetectorBuilder.from_iso_codes_639_1(
            *(getattr(IsoCode639_1, code.upper()) for code in language.LANGUAGES))
        if "low" in name:
            builder = builder.with_low_accuracy_mode()
        detector = builder.build()

        if name.endswith("+ rule"):
            def scores(text: str) -> dict[str, float]:
                clean = language.NOISE.sub(" ", text or "")
                if sum(ch.isalpha() for ch in clean) < language.MIN_LETTERS:
                    return {}
                return {c.language.iso_code_639_1.name.lower(): c.value
                        for c in detector.compute_language_confidence_values(clean)}

            return (lambda text: language.best_language(scores(text)),
                    lambda ticket, reply: not language.scores_agree(scores(ticket), scores(reply)))

        def detect(text: str) -> str | None:
            found = detector.detect_language_of(text)
            return found.iso_code_639_1.name.lower() if found else None
    elif name == "py3langid":
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        identifier.set_languages(list(language.LANGUAGES))

        def detect(text: str) -> str | None:
            return identifier.classify(text)[0]
    else:
        def detect(text: str) -> str | None:
            return language.detect_language(text, default=None)

        return detect, lambda ticket, reply: not language.same_language(ticket, reply)
    return detect, lambda ticket, reply: detect(ticket) != detect(reply)


def import_library(name: str) -> None:
    if name.startswith("stop-word"):
        pass
    elif name.startswith("lingua"):
        import lingua  # noqa: F401
    else:
        import py3langid.langid  # noqa: F401


def child(name: str) -> dict:
    """Measure one candidate in this (fresh) process."""
    sys.path.insert(0, str(REPO))
    data = corpora()
    rss_before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    import_library(name)
    import_s = time.perf_counter() - started
    started = time.perf_counter()
    detect, differ = build(name)
    detect("Where is my order? It has not arrived yet.")
    first_call_s = time.perf_counter() - started

    texts = [t for p in data["main"] for t in (p["ticket"], p["answer"])]
    started = time.perf_counter()
    found = [detect(t) for t in texts]
    ms_per_call = 1000 * (time.perf_counter() - started) / len(texts)
    labels = [p["language"] for p in data["main"] for _ in (1, 2)]

    def flagged(pairs) -> int:
        return sum(differ(a, b) for a, b in pairs)

    tweets = [detect(t) for t in data["tweets"]]
    return {
        "main_flagged": flagged((p["ticket"], p["answer"]) for p in data["main"]),
        "main_body_flagged": flagged((p["body"], p["answer"]) for p in data["main"]),
        "main_pairs": len(data["main"]),
        "held_out_flagged": flagged((p["ticket"], p["answer"]) for p in data["held_out"]),
        "held_out_pairs": len(data["held_out"]),
        "short_flagged": flagged(data["short"]), "short_pairs": len(data["short"]),
        "cross_caught": flagged(data["cross"]), "cross_pairs": len(data["cross"]),
        "cross_short_caught": flagged(data["cross_short"]),
        "label_right": sum(f == label for f, label in zip(found, labels, strict=True)),
        "label_undetermined": sum(f is None for f in found), "label_texts": len(texts),
        "tweets_en": tweets.count("en"), "tweets_undetermined": tweets.count(None),
        "tweets": len(tweets),
        "threads_flagged": flagged(data["threads"]), "threads": len(data["threads"]),
        "mean_chars": round(sum(map(len, texts)) / len(texts)),
        "import_s": import_s, "first_call_s": first_call_s, "ms_per_call": ms_per_call,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_increase_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                            - rss_before_kb) / 1024,
    }


# --- sizes, the run, the tables --------------------------------------------------------------------


def installed_mb(dist: str | None) -> float | None:
    if dist is None:
        return 0.0
    files = metadata.distribution(dist).files or []
    return sum(f.locate().stat().st_size for f in files if f.locate().exists()) / 1e6


def wheel_mb(dist: str | None, wheel_dir: Path | None) -> float | None:
    if dist is None:
        return 0.0
    if wheel_dir is None:
        return None
    wheels = sorted(wheel_dir.glob(WHEELS[dist]))
    return wheels[-1].stat().st_size / 1e6 if wheels else None


def available(dist: str | None) -> bool:
    if dist is None:
        return True
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def measure(name: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name], check=True,
                         capture_output=True, text=True, cwd=REPO).stdout
    return json.loads(out)


def pct(n: int, of: int) -> str:
    return f"{n}/{of} ({100 * n / of:.1f} %)"


def wrong(r: dict, right: str, undetermined: str, total: str) -> str:
    """Wrong guesses / undetermined, of r[total] texts with a known language."""
    return f"{r[total] - r[right] - r[undetermined]}/{r[undetermined]} of {r[total]}"


def render(results: dict) -> str:
    lines = ["Accuracy (a flagged same-language pair is a false `wrong_language`)", ""]
    head = (f"{'candidate':<35}{'tickets flagged':>20}{'body only':>18}{'held-out flagged':>20}"
            f"{'short replies':>20}{'cross caught':>20}{'cross, short':>20}{'texts wrong/und':>16}"
            f"{'tweets wrong/und':>17}{'threads flagged':>16}")
    lines += [head, "-" * len(head)]
    for name, r in results.items():
        if "missing" in r:
            lines.append(f"{name:<35}  not installed: .venv/bin/pip install {r['missing']}")
            continue
        lines.append(
            f"{name:<35}{pct(r['main_flagged'], r['main_pairs']):>20}"
            f"{pct(r['main_body_flagged'], r['main_pairs']):>18}"
            f"{pct(r['held_out_flagged'], r['held_out_pairs']):>20}"
            f"{pct(r['short_flagged'], r['short_pairs']):>20}"
            f"{pct(r['cross_caught'], r['cross_pairs']):>20}"
            f"{pct(r['cross_short_caught'], r['cross_pairs']):>20}"
            f"{wrong(r, 'label_right', 'label_undetermined', 'label_texts'):>16}"
            f"{wrong(r, 'tweets_en', 'tweets_undetermined', 'tweets'):>17}"
            f"{r['threads_flagged']:>11}/{r['threads']:<4}")
    lines += ["", "Cost (each in a fresh process; ms per call over texts of "
              f"{next((r['mean_chars'] for r in results.values() if 'mean_chars' in r), 0)} "
              "characters on average)", ""]
    head = (f"{'candidate':<35}{'wheel MB':>9}{'installed MB':>13}{'import s':>9}"
            f"{'build+1st s':>12}{'ms/call':>8}{'peak RSS MB':>12}{'RSS +MB':>8}")
    lines += [head, "-" * len(head)]
    for name, r in results.items():
        if "missing" in r:
            continue
        wheel = "n/a" if r["wheel_mb"] is None else f"{r['wheel_mb']:.1f}"
        lines.append(f"{name:<35}{wheel:>9}{r['installed_mb']:>13.1f}{r['import_s']:>9.2f}"
                     f"{r['first_call_s']:>12.2f}{r['ms_per_call']:>8.2f}{r['peak_rss_mb']:>12.0f}"
                     f"{r['rss_increase_mb']:>8.0f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--wheel-dir", type=Path, help="folder with the candidates' wheels")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    if not TOBI.is_dir() or not TWEETS.is_file():
        print(f"skipped: the corpora are not at {CORPORA} (they come with ../shared)",
              file=sys.stderr)
        return 0
    results = {}
    for name, (dist, install) in CANDIDATES.items():
        if not available(dist):
            results[name] = {"missing": install}
            continue
        print(f"... {name}", file=sys.stderr, flush=True)
        results[name] = {**measure(name), "version": metadata.version(dist) if dist else None,
                         "installed_mb": installed_mb(dist), "wheel_mb": wheel_mb(dist, args.wheel_dir)}
    print(render(results))
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out / f"language-{stamp}.json"
    out.write_text(json.dumps({"settings": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                            "started_utc": stamp}, "results": results}, indent=1))
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

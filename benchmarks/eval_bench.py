"""`crewbatch eval` on public labelled tickets: the figures of the README's "Evaluating the crew".

    .venv/bin/python benchmarks/eval_bench.py [--tickets 1000] [--seed 7] [--http-tickets 100]

For each dataset of ../shared/corpora (skipped when absent): a seeded sample, `--offline`, through
the real CLI in a throwaway copy of the project — the Bitext customer-service set with its intents
mapped onto the sample shop's taxonomy (data/eval/bitext-intents.yaml), and the multilingual
Tobi-Bueck helpdesk set in the IT-helpdesk project (data/eval/it-helpdesk: its own taxonomy and
map). Then the Bitext sample again, smaller, through the fake OpenAI-compatible server
(tests/fake_openai.py), i.e. CrewAI's real HTTP model path with strict json_schema answers.
Prints a table per eval (the crew beside the majority and TF-IDF baselines) and the wall time and
tickets/s of the eval itself; `--json FILE` keeps the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPORA = ROOT.parent / "shared" / "corpora"
BITEXT = CORPORA / "tickets-bitext-customer-service/Bitext_Sample_Customer_Service_Training_Dataset.csv"
TOBI = CORPORA / "tickets-tobi-bueck-multilang/dataset-tickets-multi-lang3-4k.csv"


def project_copy(source: Path, into: Path) -> Path:
    into.mkdir(parents=True)
    for name in ("config", "data", "knowledge"):
        if (source / name).is_dir():
            shutil.copytree(source / name, into / name,
                            ignore=shutil.ignore_patterns("runs", "it-helpdesk"))
    for name in ("orders.csv", "map.yaml"):
        if (source / name).is_file():
            shutil.copy(source / name, into / name)
    (into / "runs").mkdir(exist_ok=True)
    return into


def run_eval(root: Path, dataset: Path, labels: list[str], map_file: Path, sample: int,
             seed: int, out: Path, model: list[str], env: dict | None = None) -> dict:
    command = [sys.executable, "-m", "crews", "--root", str(root), "eval", str(dataset),
               *[a for label in labels for a in ("--label", label)], "--map", str(map_file),
               "--sample", str(sample), "--seed", str(seed), "-o", str(out), *model]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=root)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"eval failed ({done.returncode}):\n{done.stderr[-3000:]}")
    log = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    return {"log": log, "wall_s": wall, "stdout": done.stdout}


def table(name: str, result: dict) -> list[str]:
    log = result["log"]
    base = {n: {s["name"]: s for s in b.get("scores", [])} for n, b in log["baselines"].items()}
    lines = [f"\n{name}: {log['results']['total_samples']} tickets, model "
             f"{log['eval']['model']}, wall {result['wall_s']:.1f} s "
             f"({log['results']['total_samples'] / result['wall_s']:.1f} tickets/s)",
             "| field | metric | crew | majority | TF-IDF + LR |", "|---|---|---:|---:|---:|"]
    for score in log["results"]["scores"]:
        for key, metric in score["metrics"].items():
            if score["name"] == "needs_human" and key in ("f1", "accuracy"):
                continue
            cells = [f"{base[s][score['name']]['metrics'][key]['value']:.3f}"
                     if score["name"] in base.get(s, {}) else "skipped"
                     for s in ("majority", "tfidf_logreg")]
            lines.append(f"| {score['name']} | {key} | {metric['value']:.3f} | "
                         + " | ".join(cells) + " |")
    meta = log["results"]["metadata"]
    lines.append(f"reliability {meta['reliability']:.3f}, approved {meta['approval_rate']:.3f}, "
                 f"cost/ticket ${meta['cost_per_ticket']:.5f}, {meta['tokens_per_ticket']:.0f} "
                 f"tokens/ticket, p50 {meta['latency_p50_ms'] or 0:.0f} ms, "
                 f"p95 {meta['latency_p95_ms'] or 0:.0f} ms; gate: "
                 + ", ".join(f"{k} {v}" for k, v in list(meta["gate_findings"].items())[:5]))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=1000)
    parser.add_argument("--http-tickets", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not BITEXT.is_file() or not TOBI.is_file():
        print(f"skipped: the ticket corpora are not under {CORPORA}")
        return 0
    work = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    shop = project_copy(ROOT, work / "shop")
    helpdesk = project_copy(ROOT / "data/eval/it-helpdesk", work / "it-helpdesk")
    results = {
        "bitext offline": run_eval(shop, BITEXT, ["category=intent", "needs_human=intent"],
                                   ROOT / "data/eval/bitext-intents.yaml", args.tickets, args.seed,
                                   work / "bitext", ["--offline"]),
        "tobi-bueck offline": run_eval(helpdesk, TOBI, ["category=type", "queue=queue",
                                                        "priority=priority"],
                                       helpdesk / "map.yaml", args.tickets, args.seed,
                                       work / "tobi", ["--offline"]),
    }
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_openai import FakeOpenAI

    settings = shop / "config/settings.yaml"
    settings.write_text(settings.read_text().replace(
        "pricing:\n", "pricing:\n  fake-model: {input_per_million: 0.15, output_per_million: 0.6}\n"))
    with FakeOpenAI() as server:
        results["bitext via the fake OpenAI server"] = run_eval(
            shop, BITEXT, ["category=intent", "needs_human=intent"],
            ROOT / "data/eval/bitext-intents.yaml", args.http_tickets, args.seed, work / "http",
            ["--model", "fake-model", "--concurrency", "8"],
            {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "fake-key"})
    for name, result in results.items():
        print("\n".join(table(name, result)))
    print(f"\nreports: {work}/*/report.html")
    if args.json:
        args.json.write_text(json.dumps({k: {"wall_s": v["wall_s"], "results": v["log"]["results"],
                                             "baselines": v["log"]["baselines"]}
                                         for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

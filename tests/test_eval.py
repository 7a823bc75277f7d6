"""`crewbatch eval` as a user runs it: a recorded run with side effects off, scored and reported."""

from __future__ import annotations

import csv
import json
import sqlite3
import sys

import pytest
from conftest import CORPORA, REPO

from crews.evaluation import EvalLog

HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"
ROWS = [
    # ticket_id, customer, subject, body, label_category, label_priority, handled_by
    ("E-1", "jess.lee@example.net", "Refund request",
     "I received the soy candle set (NW-10335), still sealed. Can I get a refund of $24.00?",
     "Refunds", "normal", "bot"),
    ("E-2", "brian.foster@example.org", "money back for night lights",
     "The night lights are too bright. Order NW-10382. I'd like my money back ($19.99) please.",
     "Refunds", "normal", "bot"),
    ("E-3", "ann@example.org", "Manager now", "This is unacceptable, I want a manager.",
     "Complaints", "high", "human"),
    ("E-4", "bo@example.org", "=HYPERLINK(\"http://x\")", "I forgot my password and cannot log in",
     "Login", "normal", "bot"),
    ("E-5", "cy@example.org", "Gift card", "How do I use a gift card? " + HOSTILE, "Gift cards", "low",
     "human"),
    ("E-6", "di@example.org", "Where is my parcel", "My parcel has not arrived yet.", "Delivery",
     "normal", "bot"),
]
MAP = """\
category: {Refunds: refund, Complaints: complaint, Login: account, Delivery: shipping}
needs_human: {human: true, bot: false}
"""


@pytest.fixture
def dataset(project):
    path = project / "labelled.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["ticket_id", "customer", "subject", "body", "type", "prio", "handled_by"])
        out.writerows(ROWS)
    (project / "map.yaml").write_text(MAP, encoding="utf-8")
    return path


def run_eval(cli, *extra):
    return cli("eval", "labelled.csv", "--label", "category=type", "--label", "priority=prio",
               "--label", "needs_human=handled_by", "--map", "map.yaml", "--offline", *extra)


def test_an_eval_scores_every_field_and_writes_log_sheet_and_report(project, cli, dataset):
    result = run_eval(cli)
    assert result.exit_code == 0, result.output
    eval_id = result.stdout.splitlines()[0]
    folder = project / "runs" / "evals" / eval_id
    log = EvalLog.model_validate_json((folder / "eval.json").read_text(encoding="utf-8"))
    assert log.eval.run_id == eval_id and log.results.total_samples == 6
    scores = {s.name: s for s in log.results.scores}
    assert set(scores) == {"category", "priority", "needs_human"}
    category = scores["category"]
    # E-5's "Gift cards" maps to nothing: reported, and scored as a class the crew cannot say.
    assert category.metadata["unmapped"] == {"Gift cards": 1}
    assert category.metrics["accuracy"].value == pytest.approx(5 / 6)
    assert "Gift cards" in category.metadata["confusion"]["labels"]
    human = scores["needs_human"].metadata["counts"]
    assert human["tp"] + human["fn"] == 2
    meta = log.results.metadata
    assert meta["reliability"] == 1.0 and meta["statuses"]["approved"] >= 3
    assert meta["latency_p95_ms"] >= meta["latency_p50_ms"] > 0
    assert set(log.baselines) == {"majority", "tfidf_logreg"}
    assert f"category     accuracy   {5 / 6:.3f}" in result.stdout

    raw = (folder / "samples.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(raw.decode("utf-8-sig").splitlines(keepends=True)))
    assert {r["field"] for r in rows} == {"category", "priority", "needs_human"}
    e4 = next(r for r in rows if r["ticket_id"] == "E-4")
    assert e4["text"].startswith("'=HYPERLINK")  # formula-neutralised
    gift = next(r for r in rows if r["ticket_id"] == "E-5" and r["field"] == "category")
    assert (gift["label"], gift["correct"]) == ("Gift cards", "no")

    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page and "<img" not in page  # ticket text is escaped, never markup
    assert "&lt;script&gt;" in page and "&lt;img src=x onerror=" in page
    assert 'aria-label="confusion matrix"' in page and "Worst confusions" in page
    assert "src=" not in page.replace("&lt;img src=x", "") and "<link" not in page


def test_side_effects_are_off_and_later_runs_are_not_skipped(project, cli, dataset, tickets_file,
                                                             results):
    result = run_eval(cli)
    assert result.exit_code == 0, result.output
    run_id = result.stdout.splitlines()[0]
    assert not (project / "runs" / run_id / "outbox").exists()
    assert not (project / "runs" / run_id / "refund_requests").exists()
    db = sqlite3.connect(project / "runs" / "ledger.db")
    assert db.execute("SELECT COUNT(*) FROM side_effects").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM refunds").fetchone()[0] == 0
    options = json.loads(db.execute("SELECT options_json FROM runs WHERE run_id = ?",
                                    (run_id,)).fetchone()[0])
    assert options["side_effects"] is False
    decisions = {r[0] for r in db.execute(
        "SELECT a.decision FROM actions a JOIN outcomes o USING (outcome_id) WHERE o.run_id = ? "
        "AND o.status = 'approved'", (run_id,))}
    assert decisions == {"not_run"}  # allowed, planned, never carried out
    planned = db.execute("SELECT COUNT(*) FROM actions a JOIN outcomes o USING (outcome_id) "
                         "WHERE o.run_id = ? AND a.kind = 'request_refund'", (run_id,)).fetchone()
    assert planned[0] >= 1
    # A real run over the same tickets answers them: the eval's keys are its own.
    source = tickets_file(project / "same.csv", [
        {"ticket_id": r[0], "customer": r[1], "subject": r[2], "body": r[3]} for r in ROWS])
    real = cli("run", str(source), "--offline")
    assert real.exit_code == 0, real.output
    rows = results(project / "runs" / real.stdout.strip() / "results.csv")
    assert not [r for r in rows if r["status"] == "skipped"]
    assert db.execute("SELECT COUNT(*) FROM side_effects").fetchone()[0] > 0
    # Neither a review sheet nor `retry` can carry out an eval's actions.
    sheet = project / "review.csv"
    assert cli("export", run_id, "-o", str(sheet)).exit_code == 0
    applied = cli("review", "apply", str(sheet))
    assert applied.exit_code == 2 and "an eval" in applied.output
    retried = cli("retry", run_id)
    assert retried.exit_code in (0, 2)


def test_baseline_deltas_better_and_worse_and_max_drop(project, cli, dataset):
    first = run_eval(cli)
    assert first.exit_code == 0, first.output
    eval_id = first.stdout.splitlines()[0]
    same = run_eval(cli, "--baseline", eval_id[:15], "--max-drop", "0.02")
    assert same.exit_code == 0, same.output
    assert "(Δ +0.000)" in same.stdout
    # Teach the offline classifier a worse cue: refund tickets become complaints.
    taxonomy = project / "config/taxonomy.yaml"
    taxonomy.write_text(taxonomy.read_text(encoding="utf-8").replace(
        "'terrible service',", "'terrible service', 'refund',"), encoding="utf-8")
    worse = run_eval(cli, "--baseline", eval_id, "--max-drop", "0.02")
    assert worse.exit_code == 1, worse.output
    assert "fell by more than 0.02: category.accuracy" in worse.stdout
    log = EvalLog.model_validate_json(
        (project / "runs/evals" / worse.stdout.splitlines()[0] / "eval.json").read_text())
    assert log.comparison.worse["category"] == ["labelled.csv:2"]  # E-1 says "refund"
    assert log.comparison.deltas["category.accuracy"]["delta"] == pytest.approx(-1 / 6)
    page = (project / "runs/evals" / log.eval.eval_id / "report.html").read_text()
    assert f"Against eval {eval_id}" in page and "-0.167" in page


@pytest.mark.parametrize("args, message", [
    (["--label", "sentiment=type"], "`sentiment` is not a field the crew predicts"),
    (["--label", "category=kind"], "the dataset has no column `kind`"),
    (["--label", "category=type", "--baseline", "nope"], "--baseline nope: no eval"),
    (["--label", "category=type", "--limit", "2", "--sample", "2"], "exclude each other"),
])
def test_what_cannot_run_exits_2_saying_why(cli, dataset, args, message):
    result = cli("eval", "labelled.csv", "--offline", *args)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_map_onto_names_the_taxonomy_lacks_is_a_configuration_problem(project, cli, dataset):
    (project / "map.yaml").write_text("category: {Refunds: refunds}\n", encoding="utf-8")
    result = cli("eval", "labelled.csv", "--label", "category=type", "--map", "map.yaml",
                 "--offline")
    assert result.exit_code == 2
    assert ("map.yaml: `category.Refunds` maps to `refunds`, which is not one of the category "
            "names of config/taxonomy.yaml (did you mean `refund`?)") in result.output


def test_without_scikit_learn_the_learned_baseline_is_skipped_and_says_how(project, cli, dataset,
                                                                           monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    result = cli("eval", "labelled.csv", "--label", "category=type", "--map", "map.yaml",
                 "--offline")
    assert result.exit_code == 0, result.output
    assert 'tfidf_logreg: skipped: scikit-learn is not installed' in result.stdout
    assert 'pip install -e ".[eval]"' in result.stdout
    log = EvalLog.model_validate_json(
        (project / "runs/evals" / result.stdout.splitlines()[0] / "eval.json").read_text())
    assert log.baselines["tfidf_logreg"]["available"] is False
    assert log.baselines["majority"]["scores"]


def test_the_learned_baseline_learns(project, cli, tmp_path):
    pytest.importorskip("sklearn")
    rows = [(f"R-{i}", f"u{i}@example.org", "", text, label, "", "")
            for i in range(30) for text, label in
            ((f"where is my parcel number {i}", "Delivery"),
             (f"please refund my money {i}", "Refunds"))]
    with open(project / "labelled.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["ticket_id", "customer", "subject", "body", "type", "prio", "handled_by"])
        out.writerows(rows)
    (project / "map.yaml").write_text(MAP, encoding="utf-8")
    result = cli("eval", "labelled.csv", "--label", "category=type", "--map", "map.yaml",
                 "--sample", "20", "--seed", "3", "--offline")
    assert result.exit_code == 0, result.output
    log = EvalLog.model_validate_json(
        (project / "runs/evals" / result.stdout.splitlines()[0] / "eval.json").read_text())
    tfidf = log.baselines["tfidf_logreg"]
    assert tfidf["training_pool"] == 40
    assert tfidf["scores"][0]["metrics"]["accuracy"]["value"] == 1.0
    assert log.eval.dataset.sample == 20 and log.results.total_samples == 20


needs_corpora = pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora is not here")


@needs_corpora
def test_bitext_worked_example(project, cli):
    """The README's Bitext example at small size: intents mapped onto the sample taxonomy."""
    dataset = CORPORA / "tickets-bitext-customer-service" / \
        "Bitext_Sample_Customer_Service_Training_Dataset.csv"
    result = cli("eval", str(dataset), "--label", "category=intent", "--label",
                 "needs_human=intent", "--map", str(REPO / "data/eval/bitext-intents.yaml"),
                 "--sample", "40", "--seed", "1", "--offline")
    assert result.exit_code == 0, result.output
    log = EvalLog.model_validate_json(
        (project / "runs/evals" / result.stdout.splitlines()[0] / "eval.json").read_text())
    scores = {s.name: s for s in log.results.scores}
    assert scores["category"].metadata["unmapped"] == {}
    assert scores["category"].scored_samples == 40 and scores["needs_human"].scored_samples == 40


@needs_corpora
def test_tobi_bueck_worked_example_with_its_own_taxonomy(tmp_path):
    """The IT-helpdesk project of data/eval/it-helpdesk: its own taxonomy, queues and map."""
    import shutil

    from click.testing import CliRunner

    from crews.cli import main

    root = tmp_path / "it-helpdesk"
    shutil.copytree(REPO / "data/eval/it-helpdesk", root)
    dataset = CORPORA / "tickets-tobi-bueck-multilang" / "dataset-tickets-multi-lang3-4k.csv"
    result = CliRunner().invoke(main, [
        "--root", str(root), "eval", str(dataset), "--label", "queue=queue", "--label",
        "priority=priority", "--label", "category=type", "--map", str(root / "map.yaml"),
        "--sample", "30", "--seed", "2", "--offline", "-o", str(tmp_path / "out")],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    log = EvalLog.model_validate_json((tmp_path / "out/eval.json").read_text())
    scores = {s.name: s for s in log.results.scores}
    assert set(scores) == {"queue", "priority", "category"}
    assert all(not s.metadata["unmapped"] for s in scores.values())
    assert log.results.metadata["reliability"] == 1.0

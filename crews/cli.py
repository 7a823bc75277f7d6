"""The `crewbatch` command line: parse options, call one function, render the result.

Data goes to stdout, progress and errors to stderr. Exit codes: 0 every record reached a final
status; 1 the run finished but some tickets failed; 2 it could not run (config, input); 3 it
stopped early on purpose (SIGTERM, Ctrl-C) and the rest stays pending. CrewAI is imported only
inside `run`, so every other command starts fast and needs no key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
import threading
from pathlib import Path

import click

from . import rundir
from .settings import FORMATS, ConfigError, find_root, load_config, resolve_options
from .ticket import ExitCode


class Context:
    def __init__(self, root: str | None, debug: bool):
        self.root_option = root
        self.debug = debug

    def config(self, check_files: bool = True):
        root = find_root(self.root_option)
        from dotenv import load_dotenv

        load_dotenv(root / ".env", override=False)
        return load_config(root, check_files=check_files)

    def ledger(self, config):
        from .ledger import Ledger

        if Ledger.is_empty(config.ledger_url):
            raise click.ClickException(f"{config.ledger_name}: no ledger yet (or an empty one); "
                                       "start a run with `crewbatch run`")
        return Ledger(config.ledger_url)


def fail(message: str, code: int = ExitCode.CANNOT_RUN) -> None:
    click.echo(f"crewbatch: {message}", err=True)
    sys.exit(code)


class CrewbatchGroup(click.Group):
    """Turns configuration and input errors into one clear message and exit 2 (no traceback)."""

    def invoke(self, ctx):
        from .intake import SourceError
        from .ledger import LedgerError
        from .lock import LockHeld

        try:
            return super().invoke(ctx)
        except ConfigError as err:
            if ctx.obj and ctx.obj.debug:
                raise
            click.echo("crewbatch: configuration problems:" if len(err.problems) > 1
                       else "crewbatch: configuration problem:", err=True)
            for problem in err.problems:
                click.echo(f"  - {problem}", err=True)
            sys.exit(ExitCode.CANNOT_RUN)
        except (SourceError, LockHeld, LedgerError) as err:
            if ctx.obj and ctx.obj.debug:
                raise
            fail(str(err))
        except OSError as err:
            # A folder or file of the project that cannot be written or read (permissions,
            # a full or read-only disk): one line naming it, exit 2, as for the ledger.
            if ctx.obj and ctx.obj.debug:
                raise
            where = err.filename or "a project file"
            fail(f"{where}: {err.strerror or err}; check that this user can write there and "
                 "that the disk has free space, then run again (unfinished tickets stay pending)")


@click.group(cls=CrewbatchGroup)
@click.option("--root", type=click.Path(file_okay=False), envvar="CREWBATCH_ROOT",
              help="Project directory (holds config/settings.yaml). Default: the nearest one at or "
                   "above the working directory.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of short error messages.")
@click.version_option(package_name="crewbatch")
@click.pass_context
def main(ctx, root, debug):
    """Run a four-role CrewAI crew (researcher, writer, critic, executor) over support tickets.

    \b
    Examples:
      crewbatch check                       # validate config/ without calling a model
      crewbatch run data/tickets.csv --offline
      crewbatch runs                        # list runs
      crewbatch show RUN_ID T-1001          # one ticket's full trail
      crewbatch export RUN_ID -o review.csv
    """
    ctx.obj = Context(root, debug)


format_option = click.option("--format", "fmt", type=click.Choice(FORMATS),
                             help="Source format (default: by suffix or content).")
encoding_option = click.option("--encoding", help="Text encoding of the sources, e.g. cp1252 "
                                                  "(default: detected).")


@main.command()
@click.argument("sources", nargs=-1)
@click.option("--offline", is_flag=True, help="Use the built-in deterministic model (no network).")
@click.option("--model", help="Model for every role without an override in agents.yaml "
                              "(env CREWBATCH_MODEL; settings `llm.model`).")
@click.option("--concurrency", type=click.IntRange(1, 10_000),
              help="Tickets in flight at once (at most 256 live; with --batch-api default "
                   "`batch.concurrency`, 1000).")
@click.option("--batch-api", is_flag=True,
              help="Send every model request through the provider's Batch API: one batch per "
                   "step wave, half price, answers within 24 h; resumable (settings "
                   "`llm.mode: batch`).")
@click.option("--workers", type=click.IntRange(1, 64),
              help="Processes on this machine sharing the work (CPU-bound runs on several cores; "
                   "default 1). Other hosts join with `crewbatch worker`.")
@click.option("--worker-concurrency", type=click.IntRange(1, 256),
              help="Tickets one process works at once, this one or any worker that joins "
                   "(default: --concurrency divided by --workers); with workers on other hosts, "
                   "set it below --concurrency so they get tickets too.")
@click.option("--batch-size", type=click.IntRange(1, 10_000),
              help="Records read and registered in the ledger per batch.")
@click.option("--revision-limit", type=click.IntRange(0, 10),
              help="Rewrites the critic may ask for before a ticket goes to a person.")
@click.option("--limit", type=click.IntRange(1), help="Read at most N records.")
@click.option("--reprocess", is_flag=True,
              help="Process tickets again even if an earlier run finished them.")
@click.option("--max-cost", type=click.FloatRange(min=0), metavar="USD",
              help="Stop starting tickets once the run has cost this much (exit 3).")
@click.option("--max-minutes", type=click.FloatRange(min=0), metavar="M",
              help="Stop starting tickets after M minutes (exit 3).")
@click.option("--new-ledger", is_flag=True,
              help="Start a new ledger although earlier run folders exist (the old runs' "
                   "tickets will be answered again).")
@format_option
@encoding_option
@click.pass_obj
def run(obj: Context, sources, offline, model, concurrency, batch_api, workers,
        worker_concurrency, batch_size, revision_limit, limit, reprocess, max_cost, max_minutes,
        new_ledger, fmt, encoding):
    """Process tickets from SOURCE files (default: `sources` in settings.yaml).

    Prints the run id on stdout and writes runs/RUN_ID/results.csv.

    \b
    Examples:
      crewbatch run data/tickets.csv --offline
      crewbatch run exports/*.csv --model gpt-4o-mini --concurrency 8
      crewbatch run --model gpt-4o-mini --batch-api --max-minutes 600   # nightly, half price
      crewbatch run            # the sources listed in config/settings.yaml (for cron)
    """
    from . import pipeline
    from .intake import IntakeOptions

    config = obj.config()
    intake_options = IntakeOptions.from_config(config, fmt, encoding)
    options = resolve_options(config, {
        "offline": offline, "model": model, "concurrency": concurrency,
        "batch_size": batch_size, "revision_limit": revision_limit, "limit": limit,
        "reprocess": reprocess, "max_cost": max_cost, "max_minutes": max_minutes,
        "workers": workers, "worker_concurrency": worker_concurrency,
        "new_ledger": new_ledger, "batch_api": batch_api})
    _run_and_report(pipeline.run, config, options, list(sources), intake_options)


@main.command("worker")
@click.option("--run", "run_id", metavar="RUN_ID",
              help="Join this run only (default: the active run, or wait for the next).")
@click.option("--concurrency", type=click.IntRange(1, 256),
              help="Tickets this worker works at once (default: the run's concurrency divided "
                   "by its --workers).")
@click.option("--once", is_flag=True, help="Leave after one run instead of waiting for the next.")
@click.pass_obj
def worker_command(obj: Context, run_id, concurrency, once):
    """Join the active run from this host and work its tickets, with the run's own options.

    Any host that reaches the ledger's database and has the same config/ and data/ can join; the
    run's --concurrency is the limit for all workers together. SIGTERM or Ctrl-C: no new
    tickets, the ones in flight finish. A worker that stops beating for `lease_s` (settings) is
    declared dead and its tickets go to the live ones.

    \b
    Examples:
      crewbatch worker                      # every run, as it comes (a service)
      crewbatch worker --run 20261121-093012-ab12 --concurrency 16
    """
    from . import worker

    config = obj.config()
    stop = threading.Event()
    worker.signal_stop(stop)
    with contextlib.redirect_stdout(sys.stderr):
        worker.main(config, run_id, concurrency, once, stop,
                    lambda text: click.echo(text, err=True))


def _run_and_report(run_function, config, options, *args, **kwargs) -> None:
    """Run with signal handling and a progress bar; print the run id and the summary; exit."""
    from .pipeline import Stop

    stop = Stop()

    def request_stop(signum, frame):
        if stop.is_set():
            stop.forced.set()  # a second signal: stop now
            return
        stop.set()
        click.echo("crewbatch: stopping: in-flight tickets finish, the rest stays pending "
                   f"(exit 3; at once after {config.settings.stop_grace_s:g}s or a second "
                   "signal)", err=True)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        # CrewAI prints warnings with print(); stdout carries only the run id.
        with _progress() as advance, contextlib.redirect_stdout(sys.stderr):
            summary = run_function(config, options, *args, stop=stop, progress=advance,
                                   **kwargs)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    for warning in summary.warnings:
        click.echo(f"crewbatch: warning: {warning}", err=True)
    click.echo(summary.run_id)
    if summary.stop_reason:
        click.echo(f"crewbatch: stopped early: {summary.stop_reason}; the rest stays pending for "
                   "the next run", err=True)
    click.echo(summary.line(), err=True)
    sys.exit(summary.exit_code)


@main.command()
@click.argument("run_id")
@click.option("--offline", is_flag=True, help="Use the built-in deterministic model.")
@click.option("--model", help="Model for every role without an override in agents.yaml.")
@click.option("--concurrency", type=click.IntRange(1, 256), help="Tickets in flight at once.")
@click.pass_obj
def retry(obj: Context, run_id, offline, model, concurrency):
    """Re-run a run's `failed` tickets, from the ticket bodies stored in the ledger.

    Starts a new run (its id is printed) holding only those tickets.

    \b
    Example:
      crewbatch retry 20261121-093012-ab12
    """
    from . import pipeline

    config = obj.config()
    with obj.ledger(config) as ledger:
        run_id = _resolve_run(ledger, run_id)
        failed = ledger.counts(run_id).get("failed", 0)
        if ledger.run(run_id).options.get("side_effects") is False:
            fail(f"run {run_id} is an eval (side effects off), not a queue of tickets; run "
                 "`crewbatch eval` again to score its failed tickets")
    if not failed:
        click.echo(f"crewbatch: run {run_id} has no failed tickets; nothing to retry", err=True)
        sys.exit(ExitCode.OK)
    options = resolve_options(config, {"offline": offline, "model": model,
                                       "concurrency": concurrency})
    _run_and_report(pipeline.run, config, options, [], retry_of=run_id)


@main.command()
@click.argument("run_id", required=False)
@click.option("--ticket", "tickets", multiple=True, metavar="T",
              help="Only this ticket (its id or key); repeat for more.")
@click.option("--strict", is_flag=True,
              help="A request the recording does not hold fails its ticket, saying what changed; "
                   "no model is asked (and none needs a key).")
@click.option("--offline", is_flag=True,
              help="Requests the recording lacks are answered by the built-in offline model "
                   "(the others still come from the recording); no key needed.")
@click.option("--model", help="Model for every role without an override in agents.yaml "
                              "(default: the replayed run's). The model is part of every request, "
                              "so with another one nothing is answered from the recording.")
@click.option("--concurrency", type=click.IntRange(1, 256), help="Tickets in flight at once.")
@click.option("--save-cassette", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the --ticket tickets' recording to FILE (a cassette) instead of "
                   "replaying.")
@click.option("--cassette", type=click.Path(dir_okay=False, exists=True), metavar="FILE",
              help="Replay a cassette file instead of a run (no ledger needed); exits 1 if an "
                   "outcome differs from the one it recorded.")
@click.pass_obj
def replay(obj: Context, run_id, tickets, strict, offline, model, concurrency, save_cassette,
           cassette):
    """Re-run a run's tickets with today's config, answering unchanged requests from its recording.

    Starts a new run (its id is printed), marked as a replay of RUN_ID. A model request identical
    to a recorded one of the same ticket is answered from the recording: no network, no cost. One
    that changed goes to the model (--strict: the ticket fails with `request changed at step
    STEP: PART`). The gate and the policy-bound executor run for real; side effects are
    simulated: replies and refund requests go to runs/REPLAY_ID/, nothing is sent, no real refund
    is recorded. `crewbatch diff RUN_ID REPLAY_ID` shows what changed.

    \b
    Examples:
      crewbatch replay 20261121-093012-ab12
      crewbatch replay 20261121-093012-ab12 --strict --ticket T-1002
      crewbatch replay 20261121-093012-ab12 --model gpt-4o-mini
      crewbatch replay 20261121-093012-ab12 --ticket T-1002 --save-cassette tests/cassettes/T-1002.json
      crewbatch replay --cassette tests/cassettes/T-1002.json --strict
    """
    from . import pipeline
    from . import replay as replays

    if offline and model:
        fail("--offline and --model name two models; give one")
    config = obj.config()
    try:
        if cassette:
            if run_id or tickets or save_cassette:
                fail("--cassette replays a file: give no RUN_ID, --ticket or --save-cassette")
            with contextlib.redirect_stdout(sys.stderr):  # CrewAI print()s warnings
                checks = replays.replay_cassette(config, Path(cassette), model, strict=strict,
                                                 offline=offline)
            for check_ in checks:
                click.echo(check_.line())
            changed = [c for c in checks if not c.same]
            click.echo(f"cassette {cassette}: {len(checks) - len(changed)} of {len(checks)} "
                       "ticket(s) replayed with the recorded outcome", err=True)
            sys.exit(1 if changed else 0)
        if not run_id:
            fail("name the run to replay (`crewbatch runs` lists them), or --cassette FILE")
        with obj.ledger(config) as ledger:
            run_id = _resolve_run(ledger, run_id)
            if save_cassette:
                if not tickets:
                    fail("--save-cassette needs the ticket(s) to save: --ticket T")
                written = replays.save_cassette(ledger, run_id, tickets, Path(save_cassette))
                click.echo(str(written))
                click.echo(f"crewbatch: replay it with `crewbatch replay --cassette {written}`",
                           err=True)
                return
            plan = replays.ReplayPlan.for_run(ledger, run_id, strict, tickets, offline)
            recorded_model = ledger.run(run_id).model
    except replays.ReplayError as err:
        fail(str(err))
    # --offline does not change the requests (they stay the recorded model's, so they match its
    # recording): the offline model answers only those the recording lacks.
    options = resolve_options(config, {"model": model or recorded_model,
                                       "concurrency": concurrency, "reprocess": True,
                                       "workers": 1})
    _run_and_report(pipeline.run, config, options, [], replay=plan)


@main.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write it as FILE: .html (a self-contained page) or .csv (a row per "
                   "ticket, for a spreadsheet).")
@click.pass_obj
def diff_command(obj: Context, run_a, run_b, output):
    """Show what changed per ticket between two runs, e.g. a run and its replay.

    Tickets are matched by ticket key; an outcome is the status, category, priority, actions
    (added, removed, refused), the gate's findings, the critic's verdict and the reply (a word
    diff). Exits 0 if no ticket's outcome changed, 1 if some did, 2 on error. Tokens, cost and
    time are reported but do not count.

    \b
    Examples:
      crewbatch diff 20261121-093012-ab12 20261122-081500-cd34
      crewbatch diff 20261121-093012-ab12 20261122-081500-cd34 -o diff.html
      crewbatch diff 20261121-093012-ab12 20261122-081500-cd34 -o diff.csv
    """
    from . import diff

    if output and Path(output).suffix.lower() not in (".html", ".htm", ".csv"):
        fail(f"{output}: name the file *.html or *.csv")
    config = obj.config(check_files=False)
    try:
        with obj.ledger(config) as ledger:
            result = diff.diff_runs(ledger, _resolve_run(ledger, run_a),
                                    _resolve_run(ledger, run_b))
    except click.ClickException as err:
        fail(err.message)
    click.echo(diff.render_text(result))
    if output:
        click.echo(f"crewbatch: wrote {diff.write(result, Path(output))}", err=True)
    sys.exit(1 if result.changed else 0)


class _progress:
    """A progress bar on stderr when it is a terminal; silent under cron."""

    def __enter__(self):
        self._bar = None
        if sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("tickets"), BarColumn(), MofNCompleteColumn(),
                                 transient=True)
            self._bar.start()
            self._task = self._bar.add_task("tickets", total=None)
        return self.advance

    def advance(self, n: int) -> None:
        if self._bar is not None and n:
            self._bar.advance(self._task, n)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.stop()


@main.command()
@click.option("--limit", default=20, show_default=True, help="How many recent runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def runs(obj: Context, limit, as_json):
    """List recent runs with their status, counts, cost and duration.

    \b
    Example:
      crewbatch runs --limit 5
    """
    from .show import runs_table

    config = obj.config(check_files=False)
    with obj.ledger(config) as ledger:
        data = ledger.runs(limit)
    click.echo(json.dumps([dataclasses.asdict(r) for r in data], indent=2) if as_json
               else runs_table(data))


def _resolve_run(ledger, run_id: str) -> str:
    if ledger.run(run_id):
        return run_id
    matches = ledger.run_ids_like(run_id)
    if len(matches) == 1:
        return matches[0]
    hint = f" (matches: {', '.join(matches[:5])})" if matches else \
        "; `crewbatch runs` lists the run ids"
    raise click.ClickException(f"no run `{run_id}`{hint}")


@main.command()
@click.argument("run_id")
@click.argument("ticket_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_obj
def show(obj: Context, run_id, ticket_id, as_json):
    """Show one run's tickets, or one ticket's full trail.

    The trail has every agent's output, each critic verdict and revision, the gate's
    findings, the actions and every status change.

    \b
    Examples:
      crewbatch show 20261121-093012-ab12
      crewbatch show 20261121-093012-ab12 T-1014
    """
    from .show import batches_text, run_table, trail_text

    config = obj.config(check_files=False)
    with obj.ledger(config) as ledger:
        run_id = _resolve_run(ledger, run_id)
        if ticket_id is None:
            outcomes = ledger.outcomes(run_id)
            if as_json:
                click.echo(json.dumps(outcomes, indent=2, ensure_ascii=False,
                                      default=dataclasses.asdict))
                return
            click.echo(run_table(ledger.run(run_id), outcomes))
            from .report.data import batch_summary

            summary = batch_summary(ledger.batches(run_id), ledger.call_usage(run_id),
                                    config.settings.pricing)
            if summary is not None:
                click.echo(batches_text(summary))
            return
        trail = ledger.trail(run_id, ticket_id)
    if trail is None:
        raise click.ClickException(f"run {run_id} has no ticket `{ticket_id}`; "
                                   f"`crewbatch show {run_id}` lists its tickets")
    click.echo(json.dumps(trail, indent=2, ensure_ascii=False, default=dataclasses.asdict)
               if as_json else trail_text(trail))


@main.command()
@click.argument("run_id")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the sheet (.csv or .xlsx).")
@click.pass_obj
def export(obj: Context, run_id, output):
    """Write the review sheet of any run, as CSV or as an Excel workbook.

    \b
    Examples:
      crewbatch export 20261121-093012-ab12 -o review.csv
      crewbatch export 20261121-093012-ab12 -o review.xlsx
    """
    from .export import write_results

    if Path(output).suffix.lower() not in (".csv", ".xlsx"):
        raise click.ClickException(f"{output}: name the file *.csv or *.xlsx")
    config = obj.config(check_files=False)
    with obj.ledger(config) as ledger:
        run_id = _resolve_run(ledger, run_id)
        path = write_results(ledger, run_id, Path(output), config.runs_dir, config.taxonomy)
    click.echo(str(path))


@main.command()
@click.argument("run_id")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Where to write it (default: runs/RUN_ID/report.html).")
@click.pass_obj
def report(obj: Context, run_id, output):
    """Write a run's self-contained HTML report (charts, findings, the needs_human queue).

    Every run writes one at the end; this makes it again, e.g. after `review apply`.

    \b
    Example:
      crewbatch report 20261121-093012-ab12
    """
    from .report import write_report

    config = obj.config(check_files=False)
    with obj.ledger(config) as ledger:
        run_id = _resolve_run(ledger, run_id)
        path = Path(output) if output else rundir.report(rundir.run_dir(config.runs_dir, run_id))
        click.echo(str(write_report(ledger, run_id, path, config.settings.pricing)))


@main.group()
def review():
    """Read a reviewer's decisions back from the exported sheet.

    \b
    Example:
      crewbatch review apply review.xlsx
    """


@review.command("apply")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_obj
def review_apply(obj: Context, file):
    """Record each decision in FILE (CSV or XLSX) and act on it exactly once.

    approve runs a needs_human ticket's proposed actions through the policy-bound executor,
    edit sends the reviewer's edited draft_reply, reject closes the ticket. Applying the same
    sheet again changes nothing. Exits 1 if some rows could not be applied.

    \b
    Example:
      crewbatch review apply review.xlsx
    """
    from . import review as review_module
    from .lock import RunLock

    config = obj.config()
    try:
        with RunLock(config.runs_dir / rundir.LOCK), obj.ledger(config) as ledger:
            report = review_module.apply(config, ledger, Path(file))
    except review_module.SheetError as err:
        fail(str(err))
    for line in report.applied + report.unchanged:
        click.echo(line)
    for line in report.warnings:
        click.echo(f"crewbatch: warning: {line}", err=True)
    for line in report.problems:
        click.echo(f"crewbatch: {line}", err=True)
    click.echo(f"review of run {report.run_id}: {len(report.applied)} applied, "
               f"{len(report.unchanged)} already applied, {len(report.problems)} problem(s), "
               f"{report.undecided} row(s) without a decision", err=True)
    sys.exit(1 if report.problems else 0)


def _check_ledger(config) -> None:
    """The ledger's integrity and schema, read-only; a missing ledger beside earlier runs."""
    from .ledger import SCHEMA_VERSION, Ledger, LedgerError
    from .pipeline import missing_ledger

    problems = Ledger.inspect(config.ledger_url)
    if not problems and Ledger.is_empty(config.ledger_url):
        missing = missing_ledger(config)
        if missing is None:
            click.echo(f"ledger: none yet ({config.ledger_name} is created by the first run)")
            return
        problems.append(missing)
    if problems:
        raise LedgerError("; ".join(problems))
    checked = "server reachable" if config.database_url else "integrity check passed"
    click.echo(f"ledger: ok ({checked}, schema version {SCHEMA_VERSION}) in "
               f"{config.ledger_name}")


@main.command()
@click.argument("sources", nargs=-1)
@click.option("--offline", is_flag=True, help="Check as if the run were offline (skip the key check).")
@format_option
@encoding_option
@click.pass_obj
def check(obj: Context, sources, offline, fmt, encoding):
    """Validate config/, the knowledge files, the orders table and sources. Calls no model.

    Exits 2 listing every problem at once, or 0 with a summary.

    \b
    Examples:
      crewbatch check
      crewbatch check data/tickets.csv
    """
    from . import intake
    from .knowledge import KnowledgeBase, Orders
    from .llms import preflight, role_models

    config = obj.config()
    options = resolve_options(config, {"offline": offline})
    preflight(config, options.model)
    kb = KnowledgeBase(config.knowledge_dir)
    try:
        orders = Orders(config.orders_file)
    except (ValueError, OSError) as exc:
        raise ConfigError([f"config/settings.yaml: `paths.orders`: {exc}"]) from exc
    click.echo(f"project: {config.root}")
    click.echo("models: " + ", ".join(f"{r}={m}" for r, m in
                                      role_models(config, options.model).items()))
    click.echo(f"knowledge: {len(kb.sections)} sections in {config.knowledge_dir}")
    click.echo(f"orders: {len(orders.frame)} in {config.orders_file}")
    _check_ledger(config)
    from .gate import CHECKS
    from .gate.registry import active

    on = active(config.policy.checks)
    click.echo(f"gate: {len(on)} checks active: " + ", ".join(
        f"{c.name} ({severity or c.severity}{', escalates' if c.escalates else ''})"
        for c, severity in on))
    off = [name for name in CHECKS if config.policy.checks.get(name) == "off"]
    if off:
        click.echo(f"gate: switched off in config/policy.yaml: {', '.join(off)}")
    click.echo(f"escalation: {', '.join(config.policy.escalate_kinds) or 'none'} "
               f"(phrases in config/escalation.yaml)")
    t = config.taxonomy
    click.echo(f"taxonomy: {len(t.categories)} categories, {len(t.priorities)} priorities, "
               f"{len(t.queues)} queues (config/taxonomy.yaml)")
    files = intake.expand_sources(list(sources) or config.settings.sources, config.root,
                                  follow_symlinks=config.settings.intake.follow_symlinks)
    intake_options = intake.IntakeOptions.from_config(config, fmt, encoding)
    for path in files:
        how, *details = intake.inspect_source(path, intake_options).describe()
        click.echo(f"source {path}: {how}")
        for line in details:
            click.echo(f"  {line}")
        tickets = rejections = messages = 0
        reasons: dict[str, int] = {}
        sample: list[intake.Ticket] = []
        for item in intake.read_source(path, intake_options):
            if isinstance(item, intake.Ticket):
                tickets += 1
                messages += item.messages
                if len(sample) < 3:
                    sample.append(item)
            else:
                rejections += 1
                reasons[item.reason] = reasons.get(item.reason, 0) + 1
        if sample:
            click.echo("  sample:")
        for t in sample:
            body = " ".join(t.body.split())
            click.echo(f"    {t.ticket_id} · {t.customer or '(no address)'} · "
                       f"{t.subject[:50]!r} · {body[:70]!r}"
                       + (f" · thread of {t.messages}" if t.messages > 1 else "")
                       + (f" · {len(t.attachments)} attachment(s)" if t.attachments else ""))
        merged = f" ({messages} messages in threads)" if messages != tickets else ""
        click.echo(f"source {path}: {tickets} tickets, {rejections} rejected{merged}")
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
            click.echo(f"  {n} × {reason}")
    click.echo("ok")


@main.command("eval")
@click.argument("datasets", nargs=-1, required=True, metavar="DATASET...")
@click.option("--label", "labels", multiple=True, metavar="FIELD=COLUMN",
              help="A label column to score: category, priority, queue or needs_human "
                   "(a person handled it), e.g. --label queue=queue. Repeatable.")
@click.option("--map", "map_file", type=click.Path(dir_okay=False),
              help="YAML mapping the dataset's label values onto config/taxonomy.yaml.")
@click.option("--limit", type=click.IntRange(1), help="Score the first N records.")
@click.option("--sample", type=click.IntRange(1), help="Score a seeded random sample of N records.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --sample and the "
              "baselines' folds.")
@click.option("--offline", is_flag=True, help="Use the built-in deterministic model.")
@click.option("--model", help="Model for every role without an override in agents.yaml.")
@click.option("--concurrency", type=click.IntRange(1, 256), help="Tickets in flight at once.")
@click.option("--baseline", metavar="EVAL_ID",
              help="An earlier eval (its id, or its eval.json) to compare with.")
@click.option("--max-drop", type=click.FloatRange(min=0), metavar="X",
              help="With --baseline: exit 1 if a metric falls by more than X (e.g. 0.02).")
@click.option("-o", "--output", type=click.Path(file_okay=False),
              help="Where to write the eval (default: runs/evals/EVAL_ID/).")
@format_option
@encoding_option
@click.pass_obj
def eval_command(obj: Context, datasets, labels, map_file, limit, sample, seed, offline, model,
                 concurrency, baseline, max_drop, output, fmt, encoding):
    """Score the crew on labelled tickets: accuracy, macro-F1 and confusion per field,
    escalation precision/recall, reliability, cost, beside majority and TF-IDF baselines.

    The eval is a recorded run with side effects off (nothing is sent, no refund requested);
    its id is printed first. Writes eval.json, samples.csv and report.html to
    runs/evals/EVAL_ID/. Exit 0, 1 if --max-drop is exceeded, 2 if it cannot run.

    \b
    Examples:
      crewbatch eval tickets.csv --label category=type --map map.yaml --offline
      crewbatch eval tickets.csv --label queue=queue --sample 500 --seed 1 --model gpt-4o-mini
      crewbatch eval tickets.csv --label queue=queue --baseline 20261201-101010-ab12 --max-drop 0.02
    """
    from . import evaluation
    from .intake import IntakeOptions

    if limit and sample:
        fail("--limit and --sample exclude each other; use one")
    if max_drop is not None and not baseline:
        fail("--max-drop needs --baseline EVAL_ID to compare with")
    config = obj.config()
    try:
        spec = evaluation.EvalOptions(list(datasets), evaluation.parse_labels(list(labels)),
                                      map_file, limit, sample, seed, baseline, max_drop, output)
        options = resolve_options(config, {"offline": offline, "model": model,
                                           "concurrency": concurrency})
        result = _eval(evaluation, config, options, spec,
                       IntakeOptions.from_config(config, fmt, encoding))
    except evaluation.EvalError as err:
        fail(str(err))
    for line in evaluation.summary_lines(result):
        click.echo(line)
    sys.exit(result.exit_code)


def _eval(evaluation, config, options, spec, intake_options):
    """run_eval with the run's signal handling and progress bar; CrewAI's prints to stderr."""
    from .pipeline import Stop

    stop = Stop()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT,
                                                                     signal.SIGTERM)}
    try:
        with _progress() as advance, contextlib.redirect_stdout(sys.stderr):
            return evaluation.run_eval(config, options, spec, intake_options, stop=stop,
                                       progress=advance)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    main()

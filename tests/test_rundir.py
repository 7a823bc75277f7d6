"""crews/rundir.py names the run folder's files: a real run writes exactly those."""

from __future__ import annotations

from crews import rundir


def test_a_run_id_matches_the_run_folder_pattern_and_other_folders_are_not_runs(tmp_path):
    run_id = rundir.new_run_id()
    assert rundir.RUN_ID.match(run_id)
    for name in (run_id, "20261121-093012-ab12", "evals", ".crewai", "20261121-093012"):
        (tmp_path / name).mkdir(exist_ok=True)
    (tmp_path / "20261121-093013-cd34").write_text("a file, not a run folder")
    assert rundir.run_ids(tmp_path) == sorted(["20261121-093012-ab12", run_id])


def test_an_offline_run_writes_the_files_rundir_names(project, cli):
    result = cli("run", "--offline", "--limit", "12")
    assert result.exit_code == 0, result.output
    run_id = result.stdout.strip()
    folder = rundir.run_dir(project / "runs", run_id)
    assert rundir.run_ids(project / "runs") == [run_id]
    for path in (rundir.results(folder), rundir.report(folder), rundir.log(folder)):
        assert path.is_file() and path.stat().st_size > 0, path
    replies = sorted((folder / rundir.OUTBOX).iterdir())
    assert replies and all(p.suffix == ".eml" for p in replies)
    assert (project / "runs" / rundir.CREWAI).is_dir()
    names = {p.name for p in folder.iterdir()}
    assert names <= {rundir.RESULTS, rundir.REPORT, rundir.LOG, rundir.WORKERS_LOG,
                     rundir.OUTBOX, rundir.REFUND_REQUESTS}, names

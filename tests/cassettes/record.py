"""Record the tests' cassettes again: `.venv/bin/python tests/cassettes/record.py`.

Runs the sample tickets named below through the real crew against the fake OpenAI server (in a
throwaway copy of the project) and saves each ticket's recording as tests/cassettes/<id>.json
with `crewbatch replay RUN --ticket T --save-cassette FILE`, exactly as one would from a
production run. Needed when the prompts change (config/tasks.yaml, agents.yaml, the policy
text): a cassette holds the requests they produced, and a strict replay refuses any other.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# approved with a refund; a revision loop (wrong language) ending needs_human; an injection
# escalated; a refund above the auto-approve limit refused by the executor's tool
TICKETS = ("T-1001", "T-1002", "T-1012", "T-1024")


def main() -> None:
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    os.environ.update({"CREWAI_DISABLE_TELEMETRY": "true", "CREWAI_TRACING_ENABLED": "false",
                       "CREWAI_DISABLE_VERSION_CHECK": "true", "CREWAI_TESTING": "true"})
    from click.testing import CliRunner
    from fake_openai import FakeOpenAI

    from crews.cli import main as crewbatch

    with tempfile.TemporaryDirectory(prefix="crewbatch-cassettes-") as tmp:
        root = Path(tmp) / "project"
        shutil.copytree(REPO / "config", root / "config")
        shutil.copytree(REPO / "data", root / "data")
        (root / "runs").mkdir()

        def run(*args: str, env: dict | None = None) -> str:
            result = CliRunner().invoke(crewbatch, ["--root", str(root), *args], env=env,
                                        catch_exceptions=False)
            if result.exit_code != 0:
                raise SystemExit(f"crewbatch {' '.join(args)} failed:\n{result.output}")
            return result.stdout.strip()

        with FakeOpenAI() as server:
            env = {"OPENAI_API_KEY": "sk-cassette-recording", "OPENAI_BASE_URL": server.base_url}
            run_id = run("run", "--model", "fake-model", "--limit", "24", env=env)
        for ticket in TICKETS:
            print(run("replay", run_id, "--ticket", ticket, "--save-cassette",
                      str(HERE / f"{ticket}.json")))


if __name__ == "__main__":
    main()

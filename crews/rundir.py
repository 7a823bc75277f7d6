"""The layout of `runs/`: one folder per run, named by its run id, and what goes in it.

```
runs/<run_id>/results.csv        the review sheet, rewritten when the run ends
runs/<run_id>/report.html        the self-contained run report
runs/<run_id>/run.log            what happened (and workers.log: the --workers processes' stderr)
runs/<run_id>/outbox/            one .eml per reply sent
runs/<run_id>/refund_requests/   one .json per refund requested
runs/crewbatch.lock              the single-flight lock; runs/.crewai: CrewAI's storage
```

Names only, no I/O: the run folder is a plain `Path` wherever it is passed around.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from pathlib import Path

RUN_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")  # UTC start time and 4 random hex digits

RESULTS = "results.csv"
REPORT = "report.html"
LOG = "run.log"
WORKERS_LOG = "workers.log"
OUTBOX = "outbox"
REFUND_REQUESTS = "refund_requests"

LOCK = "crewbatch.lock"
CREWAI = ".crewai"


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def run_dir(runs_dir: Path, run_id: str) -> Path:
    return Path(runs_dir) / run_id


def run_ids(runs_dir: Path) -> list[str]:
    """The run folders under `runs_dir`, oldest first (other folders there are not runs)."""
    return sorted(p.name for p in Path(runs_dir).glob("*") if RUN_ID.match(p.name) and p.is_dir())


def results(run_dir: Path) -> Path:
    return run_dir / RESULTS


def report(run_dir: Path) -> Path:
    return run_dir / REPORT


def log(run_dir: Path) -> Path:
    return run_dir / LOG


def workers_log(run_dir: Path) -> Path:
    return run_dir / WORKERS_LOG


def reply(run_dir: Path, name: str) -> Path:
    """Where a reply named `name` (outcome id and ticket) is written."""
    return run_dir / OUTBOX / f"{name}.eml"


def refund_request(run_dir: Path, name: str) -> Path:
    return run_dir / REFUND_REQUESTS / f"{name}.json"

"""Peak memory and speed of intake as the input grows: does a 1,000,000-row CSV stay flat?

Generates CSV exports of 10k, 100k and 1M rows (some with quoted multi-line bodies) and mboxes of
10k and 100k messages (every tenth a reply, so threads are built) in a temporary directory, then
reads each through `intake.read_sources` in a fresh subprocess and reports that process's peak RSS
(ru_maxrss) and records per second. CSV memory should not grow with size; an mbox's first pass
keeps each message's offsets and ids (see crews/mail.py), so it grows a little per message.

    .venv/bin/python benchmarks/intake_memory.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSV_SIZES = (10_000, 100_000, 1_000_000)
MBOX_SIZES = (10_000, 100_000)


def write_csv(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("Ticket ID,Customer Email,Customer Name,Ticket Subject,Ticket Description\r\n")
        for i in range(rows):
            body = (f'"Order NW-{i} arrived late.\r\nPlease refund the ""express"" fee."'
                    if i % 7 == 0 else f"My order NW-{i} has not arrived yet; where is it?")
            f.write(f"{i},customer{i % 5000}@example.com,Customer {i},Order {i},{body}\r\n")


def write_mbox(path: Path, messages: int) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i in range(messages):
            reply = f"In-Reply-To: <m{i - 1}@example.com>\n" if i % 10 == 9 else ""
            f.write(f"From customer{i}@example.com Mon Nov  2 09:00:00 2026\n"
                    f"From: Customer {i} <customer{i}@example.com>\n"
                    f"Subject: Order NW-{i}\nMessage-ID: <m{i}@example.com>\n{reply}"
                    f"Date: Mon, 2 Nov 2026 09:{i % 60:02d}:00 +0000\n"
                    "Content-Type: text/plain; charset=utf-8\n\n"
                    f"Hello,\n\nmy order NW-{i} has not arrived. Can you check?\n\n"
                    "> an earlier quoted line\n\n-- \nA customer\n\n")


def child(path: str) -> None:
    """Read one source through intake and report records, seconds and peak RSS as JSON."""
    import resource

    sys.path.insert(0, str(REPO))
    from crews.intake import IntakeOptions, read_sources

    started = time.perf_counter()
    records = sum(1 for _ in read_sources([Path(path)], IntakeOptions()))
    seconds = time.perf_counter() - started
    print(json.dumps({"records": records, "seconds": seconds,
                      "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print(f"{'source':<22}{'MB':>8}{'records':>10}{'seconds':>9}{'records/s':>11}"
          f"{'peak RSS MB':>13}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="crewbatch-bench-") as tmp:
        for kind, sizes, writer in (("csv", CSV_SIZES, write_csv), ("mbox", MBOX_SIZES, write_mbox)):
            for n in sizes:
                path = Path(tmp) / f"{n}.{kind}"
                writer(path, n)
                r = measure(path)
                results[(kind, n)] = r
                print(f"{f'{kind} {n:,}':<22}{path.stat().st_size / 1e6:>8.1f}{r['records']:>10,}"
                      f"{r['seconds']:>9.1f}{r['records'] / r['seconds']:>11,.0f}"
                      f"{r['peak_rss_kb'] / 1024:>13.1f}", flush=True)
                path.unlink()
    csv_ratio = results[("csv", 1_000_000)]["peak_rss_kb"] / results[("csv", 10_000)]["peak_rss_kb"]
    mbox_ratio = results[("mbox", 100_000)]["peak_rss_kb"] / results[("mbox", 10_000)]["peak_rss_kb"]
    print(f"peak RSS ratio, CSV 1M rows / 10k rows: {csv_ratio:.2f}")
    print(f"peak RSS ratio, mbox 100k messages / 10k messages: {mbox_ratio:.2f}")


if __name__ == "__main__":
    main()

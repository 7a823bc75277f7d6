"""Intake against hostile input: injected headers, invalid Unicode, links, FIFOs, unreadable folders.

Each test builds, in tmp_path, the input a hostile-input test found a defect with, and asserts the
outcome a user sees: a rejection whose reason names the field or the file, or exit 2 with a message
naming the path and the fix; never a crash, a traceback, a hang, or a linked file's text. Permission
errors are real: as root, where chmod denies nothing, the reading runs in a forked child that has
dropped to uid 65534 (`as_nobody`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from conftest import CORPORA, REPO

from crews import files
from crews.intake import IntakeOptions, SourceError, expand_sources, read_source
from crews.ticket import Rejection, Ticket, content_hash

FOLLOW_HINT = "set intake.follow_symlinks: true to read linked files"
NOT_A_FILE = "not a regular file; crewbatch reads regular files and folders"


def items(path, **options):
    return list(read_source(Path(path), IntakeOptions(**options)))


def reasons(got) -> dict[str, str]:
    return {i.source: i.reason for i in got if isinstance(i, Rejection)}


def within(seconds: float, fn, *args):
    """fn(*args), failing the test (instead of hanging it) if it has not returned in time."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 — re-raised in the test's thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds}s: it blocked (on a FIFO?)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def message(mid: str, body: str = "My order NW-10335 is late.", extra: str = "") -> str:
    return (f"From: Ann <ann@example.com>\nSubject: Late order\nMessage-ID: <{mid}>\n{extra}\n"
            f"{body}\n")


def set_setting(project: Path, key: str, value: str) -> None:
    settings = project / "config" / "settings.yaml"
    text = settings.read_text()
    assert f"  {key}: " in text
    lines = [f"  {key}: {value}" if line.startswith(f"  {key}: ") else line
             for line in text.splitlines()]
    settings.write_text("\n".join(lines) + "\n")


# --- 4: line breaks and control characters in ids and addresses ---------------------------------

INJECTED = [  # (ticket_id, customer, expected reason or None for a ticket)
    ("T-1\nBcc: x@evil.example", "a@example.com",
     "ticket_id contains a line break or control character (\\n); fix the export"),
    ("T-2", "a@x\nBcc: b@y",
     "customer contains a line break or control character (\\n); fix the export"),
    ("T-3", "a@x\rBcc: b@y",
     "customer contains a line break or control character (\\r); fix the export"),
    ("T-4\u2028Bcc: x", "a@example.com",
     "ticket_id contains a line break or control character (\\u2028); fix the export"),
    ("T-5\x1b[2J", "a@example.com",
     "ticket_id contains a line break or control character (\\x1b); fix the export"),
    ("T-6", "a@example.com\x85b",
     "customer contains a line break or control character (\\x85); fix the export"),
    ("T-7", "a@x, b@y", "customer is not one plain e-mail address ('a@x, b@y'); fix the export, "
     "or name the column that holds the address in config/settings.yaml intake.columns.customer"),
    ("T-8", "Jane <jane@example.com>", "customer is not one plain e-mail address ('Jane "
     "<jane@example.com>'); fix the export, or name the column that holds the address in "
     "config/settings.yaml intake.columns.customer"),
    ("T-9", "=?utf-8?q?a=0ABcc:_b@y?=@x", "customer is not one plain e-mail address "
     "('=?utf-8?q?a=0ABcc:_b@y?=@x'); fix the export, or name the column that holds the address "
     "in config/settings.yaml intake.columns.customer"),
    ("T-10", "a@", "customer is not one plain e-mail address ('a@'); fix the export, or name the "
     "column that holds the address in config/settings.yaml intake.columns.customer"),
    ("T-11", "Jöhn.O'Neil+tag@Exämple.co.uk", None),
    ("T-12", "", None),
    ("T-13", "a@[192.0.2.1]", None),
]


def injected_csv(path: Path) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["ticket_id", "customer", "subject", "body"])
        for ticket_id, customer, _ in INJECTED:
            w.writerow([ticket_id, customer, "Late order", f"My order for {ticket_id!r} is late."])
    return path


def test_line_breaks_and_bad_addresses_are_rejections_that_name_the_field(tmp_path):
    csv_items = items(injected_csv(tmp_path / "injected.csv"))
    jsonl = tmp_path / "injected.jsonl"
    jsonl.write_text("".join(json.dumps({"id": t, "email": c, "body": "Where is my order?"}) + "\n"
                             for t, c, _ in INJECTED))
    for got in (csv_items, items(jsonl)):
        assert len(got) == len(INJECTED)
        for item, (_, customer, reason) in zip(got, INJECTED, strict=True):
            if reason is None:
                assert isinstance(item, Ticket), item
                assert item.customer == customer.lower()
            else:
                assert isinstance(item, Rejection), item
                assert item.reason == reason
                assert "\n" not in item.ticket_id + item.reason  # a rejection is one line too
    assert csv_items[0].ticket_id == "T-1\\nBcc: x@evil.example"  # what the export said, escaped


def test_a_message_id_with_a_control_character_is_a_rejection(tmp_path):
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "a.eml").write_text(message("a\x01b@example.com"))
    (got,) = items(folder)
    assert got.reason == ("ticket_id contains a line break or control character (\\x01); a "
                          "person must open the message")


def test_every_ticket_intake_accepts_can_be_written_as_a_reply(tmp_path):
    # the seam the defect crashed in: the outbox's headers (To:, Subject:, X-Crewbatch-Ticket:)
    from crews.actions import write_outbox

    src = injected_csv(tmp_path / "injected.csv")
    with open(src, "a", newline="", encoding="utf-8") as f:
        f.write('T-20,b@example.com,"Late\r\nBcc: x@evil.example\x07","Body"\r\n')
    tickets = [t for t in items(src) if isinstance(t, Ticket)]
    assert len(tickets) == 4
    for n, ticket in enumerate(tickets):
        target = write_outbox(ticket, "Your order is on its way.", tmp_path / f"{n}.eml")
        written = message_from_bytes(target.read_bytes(), policy=policy.default)
        assert [a.addr_spec for a in written["To"].addresses] == \
            [ticket.customer or "unknown-customer@invalid"]
        assert written["Bcc"] is None and written["X-Crewbatch-Ticket"] == ticket.ticket_id
    assert tickets[-1].subject == "Late Bcc: x@evil.example"


def test_other_fields_are_folded_or_cleaned_not_rejected(tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text(json.dumps({
        "id": "T-1", "email": "a@example.com", "name": "Ann\r\n\x1b[31mSmith",
        "created_at": "2026-11-02\n09:00", "subject": "Late\torder\x00\u2028again",
        "body": "Hi\x07 there,\r\n\tmy order\x0cis late\x85Thanks\x00\x9b"}) + "\n")
    (t,) = items(src)
    assert (t.customer_name, t.received_at, t.subject) == \
        ("Ann [31mSmith", "2026-11-02 09:00", "Late order again")
    assert t.body == "Hi there,\r\n\tmy order\nis late\nThanks"


def test_a_run_over_injected_headers_completes_and_so_does_the_next(project, cli, results):
    # before: ValueError while writing the first reply's headers, the rest left pending, and
    # every re-run stopped at the same record
    src = injected_csv(project / "injected.csv")
    for _ in range(2):
        result = cli("run", "--offline", str(src))
        assert result.exit_code == 0, result.output
        rows = results(project / "runs" / result.stdout.strip() / "results.csv")
        assert len(rows) == len(INJECTED)
        assert {r["status"] for r in rows} <= {"approved", "needs_human", "rejected", "skipped"}
        assert [r["status"] == "rejected" for r in rows] == [x[2] is not None for x in INJECTED]
    assert rows[0]["ticket_id"] == "T-1\\nBcc: x@evil.example"


# --- 5: lone surrogates ----------------------------------------------------------------------------


def surrogate_jsonl(path: Path) -> Path:
    # JSON text with the escapes written out, as the hostile export had them
    path.write_text(
        '{"id": "J-1", "email": "a@example.com", "body": "bad \\ud800 text"}\n'
        '{"id": "J-2\\udc00", "body": "Where is my order?"}\n'
        '{"id": "J-3", "body": "Where is my order?", "note": "x\\udfff"}\n'
        '{"id": "J-4", "body": "Where is my order?", "\\ud800key": "x"}\n'
        '{"id": "J-5", "email": "b@example.com", "body": "A pair is fine \\ud83d\\ude00"}\n',
        encoding="utf-8")
    return path


def test_lone_surrogates_are_rejections_naming_the_field(tmp_path):
    got = items(surrogate_jsonl(tmp_path / "s.jsonl"))
    assert [getattr(i, "reason", "ticket") for i in got] == [
        "field body is not valid Unicode (lone surrogate \\ud800); fix the export",
        "field ticket_id is not valid Unicode (lone surrogate \\udc00); fix the export",
        "field note is not valid Unicode (lone surrogate \\udfff); fix the export",
        "a field name is not valid Unicode (lone surrogate \\ud800); fix the export",
        "ticket"]
    assert got[1].ticket_id == "J-2\\udc00"
    assert got[4].body == "A pair is fine 😀"
    for item in got:  # everything intake hands on encodes as UTF-8, as SQLite will
        json.dumps(item.__dict__, ensure_ascii=False).encode("utf-8")
    assert content_hash("\ud800") == content_hash("\ud800")  # never raises


def test_check_lists_surrogate_rejections_and_run_records_them(project, cli, results):
    # before: UnicodeEncodeError in content_hash while registering: exit 1, nothing processed,
    # and `check` said ok
    src = surrogate_jsonl(project / "s.jsonl")
    check = cli("check", "--offline", str(src))
    assert check.exit_code == 0, check.output
    assert (f"source {src}: 1 tickets, 4 rejected\n"
            "  1 × field body is not valid Unicode (lone surrogate \\ud800); fix the export\n"
            "  1 × field ticket_id is not valid Unicode (lone surrogate \\udc00); fix the export\n"
            ) in check.stdout
    run = cli("run", "--offline", str(src))
    assert run.exit_code == 0, run.output
    rows = results(project / "runs" / run.stdout.strip() / "results.csv")
    assert [r["ticket_id"] for r in rows] == ["J-1", "J-2\\udc00", "J-3", "J-4", "J-5"]
    assert [r["status"] for r in rows][:4] == ["rejected"] * 4


def test_a_utf7_body_with_a_lone_surrogate_is_a_rejection(tmp_path):
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "u.eml").write_text(message("u7@example.com", "hello +2AA- there",
                                          "Content-Type: text/plain; charset=utf-7\n"))
    (got,) = items(folder)
    assert got.reason == ("field body is not valid Unicode (lone surrogate \\ud800); a person "
                          "must open the message")


def test_a_file_name_that_is_not_utf8_is_shown_escaped_and_stored(project, cli, results):
    folder = project / "mail"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9\n.eml")).write_text(message("m1@example.com"))
    result = cli("run", "--offline", str(folder))
    assert result.exit_code == 0, result.output
    (row,) = results(project / "runs" / result.stdout.strip() / "results.csv")
    assert row["source"] == "caf\\xe9\\n.eml" and row["status"] in ("approved", "needs_human")


def test_rejections_never_carry_a_surrogate():
    r = Rejection(1, "a\udce9.csv:2", "unreadable \ud800", "T\n\udfff", "raw\r\n\ud800")
    assert (r.source, r.reason, r.ticket_id, r.raw) == \
        ("a\\udce9.csv:2", "unreadable \\ud800", "T\\n\\udfff", "raw\r\n\\ud800")


# --- 6: symbolic links ---------------------------------------------------------------------------


_recording: list[list[str]] = []


def _audit(event, args):
    if _recording and event in ("open", "os.listdir", "os.scandir") and args and \
            isinstance(args[0], str | bytes):
        _recording[-1].append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # hooks cannot be removed; this one records only inside opened_by()


def opened_by(fn, *args) -> tuple[object, list[str]]:
    """fn(*args) and every path it opened or listed (Python's audit events see every open)."""
    _recording.append([])
    try:
        return fn(*args), _recording[-1]
    finally:
        _recording.pop()


def linked_folder(project: Path) -> tuple[Path, Path, Path]:
    """A mail folder with one message and links to the project's .env, a file and a folder
    outside it; returns (folder, secret file, secret folder)."""
    (project / ".env").write_text("OPENAI_API_KEY=sk-test-SECRET\n")
    outside = project.parent / "outside"
    (outside / "box").mkdir(parents=True)
    (outside / "shadow").write_text("root:$6$SECRET-HASH:19000:0:99999:7:::\n")
    (outside / "box" / "m.eml").write_text(message("outside@example.com", "SECRET in a folder"))
    folder = project / "mail"
    folder.mkdir()
    (folder / "ok.eml").write_text(message("ok@example.com"))
    (folder / "env.eml").symlink_to("../.env")
    (folder / "shadow").symlink_to(outside / "shadow")
    (folder / "box").symlink_to(outside / "box")
    return folder, outside / "shadow", outside / "box"


def test_links_in_a_mail_folder_are_rejected_and_never_opened(project, cli):
    folder, shadow, box = linked_folder(project)
    result = cli("check", "--offline", str(folder))
    assert result.exit_code == 0, result.output
    assert "SECRET" not in result.output
    assert (f"source {folder}: 1 tickets, 3 rejected\n") in result.stdout
    got, opened = opened_by(items, folder)  # (check itself reads .env for the key, as it should)
    assert reasons(got) == {
        "box": f"a symbolic link (to {box}), not followed; {FOLLOW_HINT}",
        "env.eml": f"a symbolic link (to ../.env), not followed; {FOLLOW_HINT}",
        "shadow": f"a symbolic link (to {shadow}), not followed; {FOLLOW_HINT}"}
    secrets = {str(project / ".env"), str(shadow), str(box), str(box / "m.eml")}
    assert str(folder / "ok.eml") in opened and not secrets & set(opened)


def test_links_in_a_maildir_are_rejected(tmp_path):
    box = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    (box / "new" / "1.host").write_text(message("one@example.com"))
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-test-SECRET\n")
    (box / "new" / "2.host").symlink_to("../../.env")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "3.host").write_text(message("three@example.com"))
    (box / "cur").rmdir()
    (box / "cur").symlink_to(elsewhere)  # a Maildir whose cur/ is a link
    got = items(box)
    assert [t.key for t in got if isinstance(t, Ticket)] == ["one@example.com"]
    assert reasons(got) == {
        "new/2.host": f"a symbolic link (to ../../.env), not followed; {FOLLOW_HINT}",
        "cur": f"a symbolic link (to {elsewhere}), not followed; {FOLLOW_HINT}"}
    (box / "new" / "2.host").unlink()
    assert [t.key for t in items(box, follow_symlinks=True) if isinstance(t, Ticket)] == \
        ["one@example.com", "three@example.com"]


def test_follow_symlinks_reads_linked_files_and_folders_once(project, cli):
    folder, shadow, box = linked_folder(project)
    (folder / "env.eml").unlink()
    (folder / "again").symlink_to(".")                   # a loop: read once, not forever
    os.mkfifo(project.parent / "pipe")
    (folder / "pipe.eml").symlink_to(project.parent / "pipe")
    (folder / "gone.eml").symlink_to("nowhere.eml")
    set_setting(project, "follow_symlinks", "true")
    result = within(30, cli, "check", "--offline", str(folder))
    assert result.exit_code == 0, result.output
    assert f"source {folder}: 2 tickets, 3 rejected\n" in result.stdout
    got = items(folder, follow_symlinks=True)
    assert sorted(t.key for t in got if isinstance(t, Ticket)) == \
        ["ok@example.com", "outside@example.com"]
    assert reasons(got) == {
        "gone.eml": "a symbolic link to nowhere.eml, which does not exist; fix or remove the link",
        "pipe.eml": f"a symbolic link to a FIFO ({project.parent / 'pipe'}), not a regular file; "
                    "never opened",
        # "root:$6$…" reads as a header line, so the shadow file parses as an empty message
        "shadow": "no ticket text (the message has no subject and no readable body)"}


def test_a_source_named_on_the_command_line_is_followed(project, cli):
    (project / "real.mbox").write_text("From ann@example.com Mon Nov  2 09:00:00 2026\n" +
                                       message("m@example.com"))
    (project / "link.mbox").symlink_to("real.mbox")
    (project / "link.csv").symlink_to(project / "data" / "tickets.csv")
    for name in ("link.mbox", "link.csv"):
        result = cli("check", "--offline", name)
        assert result.exit_code == 0, result.output
        assert " 0 rejected" in result.stdout
    (project / "dangling.csv").symlink_to("missing.csv")
    result = cli("check", "--offline", "dangling.csv")
    assert result.exit_code == 2
    assert result.stderr == (f"crewbatch: {project / 'dangling.csv'}: a symbolic link to "
                             "missing.csv, which does not exist; fix the link\n")


def test_a_link_matched_by_a_glob_is_not_followed_unless_set(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text("id,body\n1,Hello\n")
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-test-SECRET\n")
    (drop / "b.csv").symlink_to("../.env")
    with pytest.raises(SourceError) as err:
        expand_sources(["drop/*.csv"], tmp_path, from_settings=True)
    assert str(err.value) == (f"{drop / 'b.csv'}: a symbolic link (to ../.env) matched by "
                              f"`drop/*.csv`, not followed; name the file itself, or {FOLLOW_HINT}")
    assert expand_sources(["drop/*.csv"], tmp_path, from_settings=True, follow_symlinks=True) == \
        [drop / "a.csv", drop / "b.csv"]


def test_the_setting_reaches_intake_options(project):
    from crews.settings import load_config

    set_setting(project, "follow_symlinks", "true")
    assert IntakeOptions.from_config(load_config(project)).follow_symlinks is True


# --- 7: FIFOs, devices, sockets --------------------------------------------------------------------


def test_a_fifo_or_socket_in_a_mail_folder_is_rejected_without_hanging(project, cli, results):
    folder = project / "mail"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.eml").write_text(message("ok@example.com"))
    os.mkfifo(folder / "pipe.eml")
    box = project / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    os.mkfifo(box / "new" / "1.host")
    cwd = os.getcwd()
    os.chdir(folder / "sub")  # a socket's path has a length limit; a relative one is short
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("s.sock")
    finally:
        os.chdir(cwd)
    try:
        result = within(30, cli, "check", "--offline", str(folder), str(box))
        assert result.exit_code == 0, result.output
        assert (f"source {folder}: 1 tickets, 2 rejected\n"
                "  1 × a FIFO, not a regular file; never opened\n"
                "  1 × a socket, not a regular file; never opened\n") in result.stdout
        assert (f"source {box}: 0 tickets, 1 rejected\n"
                "  1 × a FIFO, not a regular file; never opened\n") in result.stdout
        run = cli("run", "--offline", str(folder), str(box))  # check showed it does not block
        assert run.exit_code == 0, run.output
        rows = results(project / "runs" / run.stdout.strip() / "results.csv")
        assert [r["source"] for r in rows if r["status"] == "rejected"] == \
            ["pipe.eml", "sub/s.sock", "new/1.host"]
    finally:
        sock.close()


def test_a_fifo_or_device_as_source_says_what_it_is(project, cli):
    os.mkfifo(project / "export.csv")
    for args, what in ((["export.csv"], "a FIFO"), (["--format", "csv", "export.csv"], "a FIFO"),
                       (["--format", "mbox", "export.csv"], "a FIFO"),
                       (["/dev/null"], "a character device")):
        result = within(30, cli, "check", "--offline", *args)
        assert result.exit_code == 2, (args, result.output)
        path = project / args[-1] if what == "a FIFO" else args[-1]
        assert result.stderr == f"crewbatch: {path}: is {what}, {NOT_A_FILE}\n"


def test_open_regular_refuses_what_was_swapped_in_after_lstat(tmp_path, monkeypatch):
    # lstat saw a regular file; by the open a FIFO (or a link) is there: O_NONBLOCK keeps the
    # open from blocking, fstat (or O_NOFOLLOW) refuses it
    fifo, link = tmp_path / "fifo", tmp_path / "link"
    os.mkfifo(fifo)
    (tmp_path / "target").write_text("secret")
    link.symlink_to("target")
    real_lstat = os.lstat
    plain = real_lstat(tmp_path / "target")
    monkeypatch.setattr(files.os, "lstat", lambda p: plain if Path(p) in (fifo, link)
                        else real_lstat(p))
    with pytest.raises(files.NotRegularFile) as err:
        within(10, files.open_regular, fifo)
    assert err.value.reason == "a FIFO, not a regular file; never opened"
    with pytest.raises(files.NotRegularFile) as err:
        within(10, files.open_regular, link)
    assert err.value.reason == f"a symbolic link (to target), not followed; {FOLLOW_HINT}"


# --- 9: unreadable folders and files ---------------------------------------------------------------


@pytest.fixture
def shared_tmp():
    """A folder other users can reach (pytest's own tmp folders are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="crewbatch-perm-"))
    path.chmod(0o755)
    yield path
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(fn, timeout: float = 60) -> dict:
    """fn() in a forked child running as uid/gid 65534 (if we are root), its JSON result back.

    Forked, not exec'd: the interpreter may live where that user cannot reach (/root/.pyenv); the
    child runs the modules already imported, so the parent warms them up first.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        out = {}
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            out = fn()
        except BaseException as exc:  # noqa: BLE001 — reported to the parent
            out = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            os.write(write_end, json.dumps(out).encode())
            os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the unprivileged child hung")
        time.sleep(0.05)
    with os.fdopen(read_end, "rb") as f:
        return json.loads(f.read() or b"{}")


def test_unreadable_folders_and_files_stop_with_exit_2_naming_them(shared_tmp):
    from click.testing import CliRunner

    from crews.cli import main

    root = shared_tmp / "project"
    shutil.copytree(REPO / "config", root / "config")
    shutil.copytree(REPO / "data", root / "data")
    (root / "runs").mkdir()
    for dirpath, dirnames, filenames in os.walk(shared_tmp):
        for name in dirnames + filenames:
            os.chmod(os.path.join(dirpath, name), 0o755 if name in dirnames else 0o644)

    def mailbox(name: str) -> Path:
        folder = shared_tmp / name
        (folder / "inner").mkdir(parents=True)
        (folder / "a.eml").write_text(message(f"a-{name}@example.com"))
        (folder / "inner" / "b.eml").write_text(message(f"b-{name}@example.com"))
        for p in (folder, folder / "inner"):
            p.chmod(0o755)
        for p in (folder / "a.eml", folder / "inner" / "b.eml"):
            p.chmod(0o644)
        return folder

    locked_inner, no_search, locked_file = mailbox("m1"), mailbox("m2"), mailbox("m3")
    maildir = shared_tmp / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
        (maildir / sub).chmod(0o755)
    maildir.chmod(0o755)
    (maildir / "new" / "1.host").write_text(message("md@example.com"))
    (maildir / "new" / "1.host").chmod(0o644)
    csv_file = shared_tmp / "export.csv"
    csv_file.write_text("id,body\n1,Where is my order?\n")

    def check(src: Path) -> dict:
        result = CliRunner().invoke(main, ["--root", str(root), "check", "--offline", str(src)])
        return {"exit": result.exit_code, "stderr": result.stderr}

    def denied(target: Path) -> bool:
        return not os.access(target, os.R_OK | (os.X_OK if target.is_dir() else 0))

    cases = {locked_inner: (locked_inner / "inner", 0o000), no_search: (no_search, 0o644),
             locked_file: (locked_file / "a.eml", 0o000), maildir: (maildir / "new", 0o000),
             csv_file: (csv_file, 0o000)}
    for src in cases:  # as root: all readable; this also imports what the child will need
        assert check(src)["exit"] == 0, src
    for _, (target, mode) in cases.items():
        target.chmod(mode)
    user = "nobody" if os.geteuid() == 0 else files._user()
    expected = {
        locked_inner: f"{locked_inner / 'inner'}: cannot be read (Permission denied); give the "
                      f"user crewbatch runs as ({user}) read and search (r-x) access to it, or "
                      "copy it somewhere it can read",
        no_search: f"{no_search}: cannot be read (Permission denied); give the user crewbatch "
                   f"runs as ({user}) read and search (r-x) access to it, or copy it somewhere "
                   "it can read",
        locked_file: f"{locked_file / 'a.eml'}: cannot be read (Permission denied); give the "
                     f"user crewbatch runs as ({user}) read access to it, or copy it somewhere "
                     "it can read",
        maildir: f"{maildir / 'new'}: cannot be read (Permission denied); give the user "
                 f"crewbatch runs as ({user}) read and search (r-x) access to it, or copy it "
                 "somewhere it can read",
        csv_file: f"{csv_file}: cannot be read (Permission denied); give the user crewbatch runs "
                  f"as ({user}) read access to it, or copy it somewhere it can read",
    }
    for src, message_text in expected.items():
        got = as_nobody(lambda src=src: {"denied": denied(cases[src][0]), **check(src)})
        if "error" in got:
            pytest.skip(f"cannot run as an unprivileged user here: {got['error']}")
        assert got["denied"], f"{cases[src][0]} is still readable: the test proves nothing"
        assert (got["exit"], got["stderr"]) == (2, f"crewbatch: {message_text}\n"), src


def test_an_io_error_is_exit_2_naming_the_file(project, cli):
    mem = Path("/proc/self/mem")
    try:
        with open(mem, "rb") as f:
            f.read(1)
        pytest.skip("/proc/self/mem reads here; no I/O error to test with")
    except FileNotFoundError:
        pytest.skip("no /proc")
    except OSError:
        pass
    result = cli("check", "--offline", str(mem))
    assert result.exit_code == 2
    assert result.stderr == ("crewbatch: /proc/self/mem: cannot be read (Input/output error); the "
                             "disk or share it is on may be failing: copy it elsewhere and pass "
                             "the copy\n")
    folder = project / "mail"
    folder.mkdir()
    (folder / "mem.eml").symlink_to(mem)
    set_setting(project, "follow_symlinks", "true")
    result = cli("check", "--offline", str(folder))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"crewbatch: {folder / 'mem.eml'}: cannot be read "
                                    "(Input/output error)")


# --- the corpora ------------------------------------------------------------------------------------


@pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora is absent")
def test_sloppy_from_headers_in_the_ruby_corpus():
    root = CORPORA / "email-ruby-mail-fixtures" / "plain_emails"
    (one,) = items(root / "mix_caps_content_type.eml")      # From: Big Bug bb@bug.com
    assert (one.customer, one.customer_name) == ("bb@bug.com", "Big Bug")
    (two,) = items(root / "raw_email_multiple_from.eml")    # From: tim@… concierge@…
    assert two.reason == ("customer is not one plain e-mail address ('tim@powerupdev.com "
                          "concierge@powerupdev.com'); a person must open the message")

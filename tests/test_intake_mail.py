"""E-mail sources: MIME decoding, quotes and signatures, threads, and the real-world corpora.

Every message of the e-mail corpora in ../shared/corpora (CPython's test_email data, the ruby
mail fixtures, notmuch's Maildirs, perceval's mboxes) must end in exactly one ticket or
rejection: the tests count the messages independently (files, `mailbox.mbox`) and reconcile.
"""

from __future__ import annotations

import mailbox
import os
from pathlib import Path

import pytest
from conftest import CORPORA

from crews import mail
from crews.intake import IntakeOptions, read_source
from crews.ticket import Rejection, Ticket

needs_corpora = pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora is absent")


def items(path, **options):
    return list(read_source(path, IntakeOptions(**options)))


def message(headers: str, body: str = "", raw: bytes = b"") -> bytes:
    return headers.strip().replace("\n", "\r\n").encode() + b"\r\n\r\n" + \
        (raw or body.replace("\n", "\r\n").encode())


# --- one message ----------------------------------------------------------------------------------


def test_encoded_headers_and_transfer_encodings_are_decoded():
    m = mail.parse(message(
        "From: =?iso-8859-1?q?Ren=E9_Dupr=E9?= <Rene@Example.FR>\n"
        "Subject: =?utf-8?b?UmVmdW5kIOKckw==?= for =?iso-8859-2?q?=BFo=B3=B1d?=\n"
        "Date: Tue, 3 Nov 2026 10:00:00 +0100\nMessage-ID: <abc@example.fr>\n"
        "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable",
        "Bonjour, le caf=E9 est froid. Une tr=\nes longue ligne."))
    assert (m.sender, m.sender_name) == ("rene@example.fr", "René Dupré")
    assert m.subject == "Refund ✓ for żołąd"
    assert m.date == "2026-11-03T10:00:00+01:00" and m.message_id == "abc@example.fr"
    assert m.text == "Bonjour, le café est froid. Une tres longue ligne."


def test_unknown_and_lying_charsets_fall_back_without_errors():
    utf8 = mail.parse(message("Subject: x\nContent-Type: text/plain; charset=X-UNKNOWN\n"
                              "Content-Transfer-Encoding: 8bit", raw="Grüße".encode()))
    assert utf8.text == "Grüße"
    latin = mail.parse(message("Subject: x\nContent-Type: text/plain; charset=X-UNKNOWN",
                               raw="Grüße".encode("cp1252")))
    assert latin.text == "Grüße"
    labelled = mail.parse(message("Subject: x\nContent-Type: text/plain; charset=iso-8859-1",
                                  raw="DISCOVER® — UTF-8 really".encode()))
    assert labelled.text == "DISCOVER® — UTF-8 really"
    raw_header = mail.parse(b"Subject: " + "Säying Hello".encode() + b"\n\nbody")
    assert raw_header.subject == "Säying Hello"


def test_html_only_bodies_become_readable_text():
    m = mail.parse(message(
        "Subject: x\nContent-Type: text/html; charset=utf-8",
        "<html><head><style>p {color: red}</style><script>alert('x')</script></head><body>"
        "<p>Hello&nbsp;team,</p><p>My order <b>NW-10335</b> is late.<br>Please help.</p>"
        "<ul><li>one</li><li>two</li></ul><a href='https://example.com/t'>tracking</a>"
        "<blockquote>Earlier: your order shipped</blockquote></body></html>"))
    assert m.text == ("Hello team,\n\nMy order NW-10335 is late.\nPlease help.\n\n- one\n- two\n"
                      "tracking <https://example.com/t>")
    assert m.quoted == "> Earlier: your order shipped"
    assert "alert" not in m.text and "color" not in m.text


def test_html_as_mail_clients_break_it_keeps_its_text():
    # an unclosed <head> (ruby-mail's email_with_similar_boundaries.eml), a malformed tag in an
    # export cell (Kaggle ticket 290), a link left open, quotes closed together
    assert mail.html_to_text("<html><head>\n<title>T</title>\n<body>\n<p>Test</p>") == "Test"
    assert mail.html_to_text("Please assist.\n<div id='c'> <div I'm not sure why.") == \
        "Please assist.\n <div I'm not sure why."
    assert mail.html_to_text('see <a href="https://e.example/x">this') == \
        "see this <https://e.example/x>"
    assert mail.html_to_text("<blockquote><blockquote>x</blockquote></blockquote>after") == \
        ">\n> > x\nafter"


def test_alternative_prefers_plain_and_attachments_are_listed_not_opened():
    m = mail.parse(message(
        'Subject: x\nContent-Type: multipart/mixed; boundary="OUT"',
        '--OUT\nContent-Type: multipart/alternative; boundary="ALT"\n\n'
        "--ALT\nContent-Type: text/plain\n\nPlain words.\n"
        "--ALT\nContent-Type: text/html\n\n<p>HTML words.</p>\n--ALT--\n"
        '--OUT\nContent-Type: application/pdf; name="invoice.pdf"\n'
        "Content-Disposition: attachment; filename=invoice.pdf\nContent-Transfer-Encoding: base64"
        "\n\nJVBERi0xLjQKJcfsj6IKMSAwIG9iago8PC9UeXBlL0NhdGFsb2c+PgplbmRvYmoK\n"
        '--OUT\nContent-Type: application/x-msdownload; name="run.exe"\n\nMZ\x90\n--OUT--\n'))
    assert m.text == "Plain words."
    assert m.attachments == ["invoice.pdf (application/pdf, 48 B)",
                             "run.exe (application/x-msdownload, 4 B)"]


def test_broken_multipart_is_still_read_from_the_raw_payload():
    m = mail.parse(message("Subject: x\nContent-Type: multipart/mixed",
                           "--X\nContent-Type: text/plain\n\nthe text survives\n--X--"))
    assert "the text survives" in m.text


def test_quoted_replies_and_signatures_are_separated():
    m = mail.parse(message(
        "Subject: Re: order",
        "Still no parcel, see below.\n\n-- \nJane Doe\nACME Ltd\n\n"
        "On Mon, 2 Nov 2026 at 09:00, Support <help@shop.example> wrote:\n"
        "> Your parcel left our warehouse.\n>\n> Kind regards"))
    assert m.text == "Still no parcel, see below."
    assert m.signature == "--\nJane Doe\nACME Ltd"
    assert m.quoted == ("On Mon, 2 Nov 2026 at 09:00, Support <help@shop.example> wrote:\n"
                        "> Your parcel left our warehouse.\n>\n> Kind regards")
    outlook = mail.split_reply("Please cancel.\n\nFrom: Support\nSent: Monday\nTo: me\n\nold")
    assert outlook == ("Please cancel.", "From: Support\nSent: Monday\nTo: me\n\nold", "")
    forwarded = mail.split_reply("FYI\n---------- Forwarded message ---------\nFrom: a\n"
                                 "Sent: b\n\ncontent")
    assert forwarded[1] == ""


def test_encrypted_messages_are_rejected_not_guessed(tmp_path):
    src = tmp_path / "secret.eml"
    src.write_bytes(message(
        'Subject: hi\nMessage-ID: <s@x>\nContent-Type: multipart/encrypted; '
        'protocol="application/pgp-encrypted"; boundary="B"',
        "--B\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n--B\n"
        "Content-Type: application/octet-stream\n\n-----BEGIN PGP MESSAGE-----\nxx\n--B--"))
    (r,) = items(src)
    assert isinstance(r, Rejection)
    assert r.reason == ("the message cannot be read: it is encrypted (multipart/encrypted); a "
                        "person must open it")


# --- mailboxes, threads, keys ---------------------------------------------------------------------


def test_a_thread_is_one_ticket_with_the_latest_message_as_body(tmp_path):
    box = tmp_path / "inbox.mbox"
    box.write_bytes(
        b"From alice@example.com Mon Nov  2 09:00:00 2026\n" + message(
            "From: Alice <alice@example.com>\nSubject: Refund\nMessage-ID: <a@x>\n"
            "Date: Mon, 2 Nov 2026 09:00:00 +0000", "I want a refund for NW-10335.") + b"\n"
        b"From bob@example.com Mon Nov  2 10:00:00 2026\n" + message(
            "From: Unrelated <bob@example.com>\nSubject: Hello\nMessage-ID: <z@x>\n"
            "Date: Mon, 2 Nov 2026 10:00:00 +0000", "Another matter.") + b"\n"
        b"From alice@example.com Tue Nov  3 09:00:00 2026\n" + message(
            "From: Alice <alice@example.com>\nSubject: Re: Refund\nMessage-ID: <c@x>\n"
            "In-Reply-To: <b@x>\nReferences: <a@x> <b@x>\nDate: Tue, 3 Nov 2026 09:00:00 +0000",
            "It is order NW-10335, as I said.\n\n> Which order?") + b"\n"
        b"From help@shop.example Mon Nov  2 12:00:00 2026\n" + message(
            "From: Support <help@shop.example>\nSubject: Re: Refund\nMessage-ID: <b@x>\n"
            "In-Reply-To: <a@x>\nDate: Mon, 2 Nov 2026 12:00:00 +0000",
            "Which order?\n\n> I want a refund for NW-10335.") + b"\n")
    got = items(box)
    assert [t.key for t in got] == ["z@x", "a@x"]
    thread = got[1]
    assert (thread.body, thread.subject, thread.customer, thread.messages, thread.source) == \
        ("It is order NW-10335, as I said.", "Re: Refund", "alice@example.com", 3, "inbox.mbox:3")
    assert thread.history == (
        "--- 2026-11-02T09:00:00+00:00 · Alice <alice@example.com> · Refund\n"
        "I want a refund for NW-10335.\n\n"
        "--- 2026-11-02T12:00:00+00:00 · Support <help@shop.example> · Re: Refund\n"
        "Which order?")
    assert thread.as_prompt_data()["history"] == thread.history
    assert [t.record_no for t in got] == [1, 2]


def test_messages_without_headers_get_stable_derived_keys(tmp_path):
    box = tmp_path / "bare.mbox"
    box.write_bytes(b"From x Mon Nov  2 09:00:00 2026\nPlease call me back about my order.\n\n"
                    b"From y Mon Nov  2 09:00:00 2026\n\n\n")
    first, empty = items(box)
    assert first.body == "Please call me back about my order."
    assert first.key.startswith("h-") and first.key == items(box)[0].key
    assert (first.subject, first.customer, first.received_at) == ("", "", "")
    assert empty.reason == "no ticket text (the message has no subject and no readable body)"


def test_copies_of_one_message_are_one_ticket(tmp_path):
    for n in (1, 2):
        (tmp_path / f"copy{n}.eml").write_bytes(message(
            f"Message-ID: <same@x>\nSubject: [list] Help {n}\nFrom: a@example.com", "Body"))
    (t,) = items(tmp_path)
    assert (t.key, t.messages, t.subject, t.extra["copies"]) == ("same@x", 2, "[list] Help 1", "2")


def test_a_folder_reports_files_that_are_not_messages(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.eml").write_bytes(message("Subject: a", "text a"))
    (tmp_path / "README.md").write_text("These are our exported mails.\n")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    got = items(tmp_path)
    assert [(type(i).__name__, i.source) for i in got] == [("Rejection", "README.md"),
                                                          ("Ticket", "sub/a.eml")]
    assert got[0].reason == ("not an e-mail message (the file does not start with header "
                             "lines); keep only messages in a mail folder")


def test_over_long_messages_are_rejected(tmp_path):
    src = tmp_path / "long.eml"
    src.write_bytes(message("Subject: long", "x" * 300))
    (r,) = items(src, max_body_chars=200)
    assert r.reason == ("body is 300 characters, over the limit of 200 (limits.max_body_chars in "
                        "settings.yaml)")


# --- the corpora ----------------------------------------------------------------------------------


def expected_messages(root: Path) -> int:
    """Messages in a folder counted without crewbatch: mbox files by Python's mailbox, others 1."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d != "tmp"]
        for name in filenames:
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            with open(path, "rb") as f:
                is_mbox = f.read(5) == b"From "
            count += len(mailbox.mbox(path)) if is_mbox else 1
    return count


def reconcile(got) -> tuple[int, int, int]:
    tickets = [i for i in got if isinstance(i, Ticket)]
    rejections = [i for i in got if isinstance(i, Rejection)]
    return len(tickets), sum(t.messages for t in tickets), len(rejections)


# corpus -> (tickets, messages merged into them, rejections); rejections include the corpus's
# UPSTREAM license/readme files, which sit in the folder and are not messages, and the ruby
# raw_email_multiple_from.eml, whose "From: a@x b@y" is two addresses (no one customer to answer).
CORPUS_FIGURES = {
    "email-cpython-test_email": (42, 47, 5),
    "email-ruby-mail-fixtures": (69, 103, 2),
    "email-notmuch-corpora": (34, 70, 7),
    "email-perceval-mbox": (14, 30, 1),
}


@needs_corpora
@pytest.mark.parametrize("corpus", sorted(CORPUS_FIGURES))
def test_every_corpus_message_ends_in_exactly_one_ticket_or_rejection(corpus):
    root = CORPORA / corpus
    got = items(root)
    tickets, merged, rejected = reconcile(got)
    assert merged + rejected == expected_messages(root)
    assert (tickets, merged, rejected) == CORPUS_FIGURES[corpus]
    assert len({i.record_no for i in got}) == len(got)
    for t in got:
        if isinstance(t, Ticket):
            assert t.body.strip() and "=?" not in t.subject, t.source


@needs_corpora
def test_cpython_messages_decode_without_leftovers():
    for t in items(CORPORA / "email-cpython-test_email"):
        if isinstance(t, Ticket):
            assert "\ufffd" not in t.subject + t.body + t.customer_name, t.source


@needs_corpora
def test_ruby_fixtures_charsets_and_malformed_headers():
    root = CORPORA / "email-ruby-mail-fixtures"
    (jp,) = items(root / "multi_charset" / "japanese_iso_2022.eml")
    assert (jp.subject, jp.body) == ("まみむめも", "すみません。")
    (utf8,) = items(root / "rfc6532" / "utf8_headers.eml")
    assert (utf8.subject, utf8.customer, utf8.customer_name) == \
        ("Säying Hello", "jdöe@mächine.example", "Jöhn Doe")
    (unknown,) = items(root / "plain_emails" / "raw_email10.eml")  # charset=X-UNKNOWN
    assert unknown.body.startswith("Test test. Hi. Waving. m")
    (bad_date,) = items(root / "error_emails" / "bad_date_header.eml")
    assert bad_date.received_at == bad_date.extra["date"] == "<HR>"  # kept as written
    broken = ["bad_date_header2", "empty_in_reply_to", "missing_body", "must_supply_encoding"]
    for name in broken:
        (t,) = items(root / "error_emails" / f"{name}.eml")
        assert isinstance(t, Ticket), name


@needs_corpora
def test_notmuch_maildir_and_folder_counts_duplicates_crypto_and_loops():
    root = CORPORA / "email-notmuch-corpora"
    assert reconcile(items(root / "default"))[1:] == (43, 0)              # as a Maildir
    assert reconcile(items(root / "default", format="eml"))[1:] == (53, 0)
    dupes = items(root / "duplicate")
    assert sorted(t.messages for t in dupes) == [2, 2, 5]
    crypto = items(root / "crypto")
    assert all(isinstance(r, Rejection) and "encrypted" in r.reason for r in crypto)
    assert len(crypto) == 4
    (loop,) = items(root / "broken" / "loop")
    assert loop.messages == 2 and loop.key in ("mid-loop-12@example.org", "mid-loop-21@example.org")


@needs_corpora
def test_perceval_mbox_counts_match_pythons_mailbox():
    for path in sorted((CORPORA / "email-perceval-mbox").rglob("*.mbox")):
        got = items(path)
        tickets, merged, rejected = reconcile(got)
        assert merged + rejected == len(mailbox.mbox(path)), path.name
    no_fields = items(CORPORA / "email-perceval-mbox" / "mbox" / "mbox_no_fields.mbox")
    assert reconcile(no_fields)[1:] == (6, 0)

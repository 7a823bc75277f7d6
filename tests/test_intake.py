"""CSV intake: column mapping, stable keys, and a reason for every record that can't be a ticket."""

from __future__ import annotations

import pytest

from crews.intake import IntakeOptions, SourceError, map_columns, read_source
from crews.ticket import Rejection, Ticket


def items(path, limit=20_000):
    return list(read_source(path, IntakeOptions(max_body_chars=limit)))


def test_helpdesk_headers_are_mapped():
    mapping = map_columns(["Ticket ID", "Customer Email", "Customer Name", "Ticket Subject",
                           "Ticket Description", "Date of Purchase", "Created At"])
    assert mapping == {"ticket_id": "Ticket ID", "customer": "Customer Email",
                       "customer_name": "Customer Name", "subject": "Ticket Subject",
                       "body": "Ticket Description", "received_at": "Created At"}


def test_every_record_becomes_a_ticket_or_a_rejection(tmp_path):
    src = tmp_path / "t.csv"
    src.write_bytes(
        b"\xef\xbb\xbfid,email,subject,description\r\n"
        b"1,a@example.com,Hi,\"line one\r\nline two\"\r\n"
        b"\r\n"
        b"2,b@example.com,,\r\n"
        b"3,c@example.com,Ragged,too,many,fields\r\n"
        b"4,d@example.com,Nul,has \x00 a nul\r\n"
        b",e@example.com,No id,Body without id\r\n"
        b"6,f@example.com,Long," + b"x" * 300 + b"\r\n")
    got = items(src, limit=200)
    assert [type(i).__name__ for i in got] == ["Ticket", "Rejection", "Rejection", "Ticket",
                                               "Ticket", "Rejection"]
    assert got[0].body == "line one\r\nline two" and got[0].customer == "a@example.com"
    assert got[1].reason == "no ticket text (subject and body are empty)"
    assert got[2].reason == "line 6: row has 6 fields, the header has 4"
    assert got[3].body == "has  a nul"
    assert got[4].key.startswith("h-") and got[4].ticket_id == got[4].key
    assert got[5].reason.startswith("body is 300 characters, over the limit of 200")
    assert [i.record_no for i in got] == [1, 2, 3, 4, 5, 6]


def test_key_and_content_hash_are_stable(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("ticket_id,customer,subject,body\nT-1,a@example.com,Hi,Hello there\n")
    a, b = items(src)[0], items(src)[0]
    assert isinstance(a, Ticket) and a.key == "T-1" and a.content_hash == b.content_hash
    src.write_text("ticket_id,customer,subject,body\nT-1,a@example.com,Hi,\"Hello there, edited\"\n")
    assert items(src)[0].content_hash != a.content_hash


def test_undecodable_and_bodyless_sources_are_clear_errors(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("id,body\n1,caf\xe9\n".encode("latin-1"))
    assert items(latin)[0].body == "café"  # not UTF-8, so detected as cp1252
    with pytest.raises(SourceError) as err:
        list(read_source(latin, IntakeOptions(encoding="utf-8")))
    assert str(err.value) == (
        f"{latin}: not valid utf-8 text near line 2 (invalid continuation byte); name the file's "
        "encoding with --encoding (e.g. --encoding cp1252), or leave --encoding out to detect it")
    nobody = tmp_path / "nobody.csv"
    nobody.write_text("id,colour\n1,red\n")
    with pytest.raises(SourceError) as err:
        items(nobody)
    assert "no column holds the ticket text" in str(err.value)


def test_sample_tickets_all_parse(project):
    got = items(project / "data/tickets.csv")
    assert len(got) >= 40 and not [i for i in got if isinstance(i, Rejection)]
    assert len({t.key for t in got}) == len(got)

"""Tabular sources: CSV dialects and encodings, column mapping, JSONL, format detection.

The corpus tests read third-party files from ../shared/corpora (csv-spectrum, csvkit's examples,
the Kaggle ticket export and its spreadsheet-mangled copies) and skip when it is absent.
"""

from __future__ import annotations

import csv
import json

import pytest
from conftest import CORPORA

from crews.intake import (
    IntakeOptions,
    SourceError,
    detect_encoding,
    detect_format,
    expand_sources,
    inspect_source,
    map_columns,
    read_rows,
    read_source,
    read_sources,
)
from crews.ticket import Rejection, Ticket

SPECTRUM = CORPORA / "csv-spectrum"
CSVKIT = CORPORA / "csvkit-edge-csv" / "examples"
KAGGLE = CORPORA / "tickets-kaggle-suraj520"
needs_corpora = pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora is absent")


def items(path, **options):
    return list(read_source(path, IntakeOptions(**options)))


def tickets(got):
    return [i for i in got if isinstance(i, Ticket)]


def rejections(got):
    return [i for i in got if isinstance(i, Rejection)]


# --- the corpora ---------------------------------------------------------------------------------


@needs_corpora
@pytest.mark.parametrize("name", sorted(p.stem for p in (SPECTRUM / "csvs").glob("*.csv"))
                         if SPECTRUM.is_dir() else [])
def test_csv_spectrum_parses_to_its_expected_json(name):
    expected = json.loads((SPECTRUM / "json" / f"{name}.json").read_text(encoding="utf-8"))
    assert list(read_rows(SPECTRUM / "csvs" / f"{name}.csv")) == expected


@needs_corpora
def test_csv_spectrum_keeps_an_embedded_crlf():
    rows = list(read_rows(SPECTRUM / "csvs" / "newlines_crlf.csv"))
    assert rows[1]["a"] == "Once upon \r\na time"


@needs_corpora
@pytest.mark.parametrize("name, encoding", [
    ("test_utf8.csv", "utf-8 (detected)"),
    ("test_utf8_bom.csv", "utf-8-sig (byte-order mark)"),
    ("test_utf16_big.csv", "utf-16 (byte-order mark)"),
    ("test_utf16_little.csv", "utf-16 (byte-order mark)"),
    ("test_latin1.csv", "cp1252 (detected: not valid UTF-8)"),
])
def test_csvkit_encodings_are_detected(name, encoding):
    expected = json.loads((CSVKIT.parent / "expected_from_csvkit_tests.json").read_text())
    rows = expected["cases"][name]["rows"]
    info = inspect_source(CSVKIT / name, IntakeOptions())
    assert info.encoding == encoding
    assert info.headers == rows[0]  # no "\ufeff" in the first column name
    assert [list(r.values()) for r in read_rows(CSVKIT / name)] == rows[1:]


@needs_corpora
def test_csvkit_ragged_rows_are_rejected_with_line_numbers_and_the_valid_row_goes_on():
    for name, first_line in (("bad.csv", 2), ("bad_skip_lines.csv", 5)):
        got = items(CSVKIT / name, columns={"body": "column_b"})
        assert [r.reason for r in rejections(got)] == [
            f"line {first_line}: row has 4 fields, the header has 3",
            f"line {first_line + 1}: row has 2 fields, the header has 3"]
        (ticket,) = tickets(got)
        assert ticket.body == "mixed types.... uh oh" and ticket.source == f"{name}:{first_line + 2}"


@needs_corpora
def test_csvkit_bare_cr_nul_empty_and_null_like_strings():
    rows = list(read_rows(CSVKIT / "mac_newlines.csv"))
    assert rows == [{"a": "1", "b": "2", "c": "3"}, {"a": "Once upon\ra time", "b": "5", "c": "6"}]
    assert list(read_rows(CSVKIT / "null_byte.csv")) == [{"a": "\x00", "b": "2", "c": "3"}]
    (nul,) = items(CSVKIT / "null_byte.csv", columns={"body": "a", "subject": "b"})
    assert isinstance(nul, Ticket) and nul.body == "2"  # the NUL is dropped, the subject stands in
    assert items(CSVKIT / "empty.csv") == []
    assert list(read_rows(CSVKIT / "blanks.csv")) == [
        {"a": "", "b": "NA", "c": "N/A", "d": "NONE", "e": "NULL", "f": "."}]


@needs_corpora
def test_kaggle_export_maps_automatically_and_keeps_every_description():
    path = KAGGLE / "customer_support_tickets.csv"
    info = inspect_source(path, IntakeOptions())
    assert info.mapping == {"ticket_id": "Ticket ID", "customer": "Customer Email",
                            "customer_name": "Customer Name", "subject": "Ticket Subject",
                            "body": "Ticket Description"}
    got = items(path)
    assert len(got) == 8469 and not rejections(got)
    with open(path, encoding="utf-8", newline="") as f:
        source = list(csv.DictReader(f))
    assert [t.body for t in got] == [r["Ticket Description"].strip() for r in source]
    assert got[0].key == "1" and got[0].customer == "carrollallison@example.com"
    assert got[0].extra["Ticket Priority"] == "Critical"
    assert "\n\n" in got[0].body


@needs_corpora
def test_kaggle_variants_ingest_the_same_tickets_or_fail_loudly():
    variants = KAGGLE / "variants"
    assert len(tickets(items(variants / "excel_resave_crlf_records_lf_in_fields.csv"))) == 8469
    assert len(tickets(items(variants / "utf8_bom_subset.csv"))) == 999
    mangled = variants / "excel_semicolon_resave_mangled.csv"
    with pytest.raises(SourceError) as err:
        items(mangled)
    assert str(err.value) == (
        f"{mangled}: the first 20 records do not fit the header of 17 columns (line 2: row has 1 "
        "field, the header has 17); the delimiter ',' or the quoting is wrong, as after a "
        "spreadsheet re-saved the file; open it, fix it and export it again as CSV")


@needs_corpora
def test_truncated_and_excel_padded_exports_never_emit_broken_tickets():
    multi = CORPORA / "tickets-tobi-bueck-multilang"
    got = items(multi / "dataset-tickets-multi-lang3-4k.csv")
    assert len(tickets(got)) == 1167
    assert [r.reason for r in rejections(got)] == ["line 21568: row has 3 fields, the header has 17"]
    padded = items(multi / "variants" / "aa_99rows_plus_2543_empty_excel_rows.csv")
    assert len(padded) == 99 and not rejections(padded)


@needs_corpora
def test_bom_is_stripped_from_the_first_column_name():
    path = CORPORA / "tickets-bitext-customer-service" / \
        "Bitext_Sample_Customer_Service_Training_Dataset.csv"
    info = inspect_source(path, IntakeOptions())
    assert info.headers[0] == "flags" and info.mapping == {"body": "utterance"}


# --- dialects and encodings, hand-made ------------------------------------------------------------


def test_delimiter_is_sniffed_from_the_header(tmp_path):
    for delimiter in (";", "\t", "|"):
        src = tmp_path / "t.csv"
        src.write_text(f"id{delimiter}subject{delimiter}body\n"
                       f"1{delimiter}Hi, there{delimiter}\"a{delimiter} b\"\n", encoding="utf-8")
        (t,) = items(src)
        assert (t.subject, t.body) == ("Hi, there", f"a{delimiter} b")
    tsv = tmp_path / "t.tsv"
    tsv.write_text("id\tbody\n1\thello, world\n")
    assert items(tsv)[0].body == "hello, world"


def test_line_endings_blank_lines_and_quoted_multiline_fields(tmp_path):
    src = tmp_path / "t.csv"
    src.write_bytes(b"\r\n\r\nid,body\r1,\"one\r\ntwo\"\r2,\"x\ny\"\r\n\r\n3,last")
    got = items(src)
    assert [t.body for t in got] == ["one\r\ntwo", "x\ny", "last"]
    assert [t.source for t in got] == ["t.csv:4", "t.csv:6", "t.csv:9"]


def test_cp1252_utf16_without_bom_and_named_encodings(tmp_path):
    cp = tmp_path / "cp.csv"
    cp.write_bytes("id,body\n1,“smart” quotes — 5 €\n".encode("cp1252"))
    assert items(cp)[0].body == "“smart” quotes — 5 €"
    utf16 = tmp_path / "u16.csv"
    utf16.write_bytes("id,body\n1,Grüße\n".encode("utf-16-le"))
    assert items(utf16)[0].body == "Grüße"
    koi = tmp_path / "koi.csv"
    koi.write_bytes("id,body\n1,привет\n".encode("koi8-r"))
    assert items(koi, encoding="koi8-r")[0].body == "привет"
    mixed = tmp_path / "mixed.csv"  # UTF-8 with one stray cp1252 byte far down: no crash, no U+FFFD
    mixed.write_bytes(b"id,body\n" + b"".join(b"%d,ok \xc3\xa9\n" % i for i in range(40_000))
                      + b"40000,caf\xe9\n")
    got = items(mixed)
    assert got[0].body == "ok é" and got[-1].body == "café"


def test_legacy_cjk_encodings_are_detected(tmp_path):
    # charset-normalizer's part of detect_encoding: 8-bit text that does not read as cp1252. It
    # is not always right (short Japanese text in Shift_JIS it often reads as cp949; see
    # benchmarks/library_bench.py), but cp1252 was never right for these.
    korean = tmp_path / "kr.csv"
    korean.write_bytes("id,body\n1,주문한 상품이 아직 도착하지 않았습니다. 확인 부탁드립니다.\n"
                       .encode("euc-kr"))
    assert items(korean)[0].body == "주문한 상품이 아직 도착하지 않았습니다. 확인 부탁드립니다."
    japanese = tmp_path / "jp.csv"
    body = ("お世話になっております。先週注文した商品がまだ届いていません。注文番号はNW-10335です。"
            "配送状況を確認していただけますか。よろしくお願いいたします。")
    japanese.write_bytes(f"id,body\n1,{body}\n".encode("euc-jp"))
    assert items(japanese)[0].body == body
    assert detect_encoding("Grüße aus Köln".encode("cp1252")) == \
        ("cp1252", "detected: not valid UTF-8")


def test_files_that_cannot_be_decoded_are_clear_errors(tmp_path):
    broken16 = tmp_path / "b16.csv"
    broken16.write_bytes(b"\xff\xfe" + "id,body\n1,x\n".encode("utf-16-le") + b"\x00\xdc\n\x00")
    with pytest.raises(SourceError) as err:
        items(broken16)
    assert str(err.value).startswith(f"{broken16}: not valid utf-16 text near line 3 (")
    assert str(err.value).endswith("name the file's encoding with --encoding (e.g. --encoding "
                                   "cp1252), or leave --encoding out to detect it")
    with pytest.raises(SourceError) as err:
        items(broken16, encoding="no-such-codec")
    assert str(err.value).startswith("unknown encoding `no-such-codec` (--encoding or")
    xlsx = tmp_path / "export.csv"
    xlsx.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(SourceError) as err:
        items(xlsx)
    assert str(err.value) == (f"{xlsx}: a ZIP archive or Excel workbook, not text; save the "
                              "sheet as CSV UTF-8 and pass the .csv (or unzip the archive)")
    binary = tmp_path / "blob.csv"
    binary.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(SourceError) as err:
        items(binary)
    assert "binary data, not text; if it is text in an unusual encoding, name it with " \
        "--encoding" in str(err.value)


def test_a_file_cut_off_inside_a_quoted_field_is_a_rejection(tmp_path):
    src = tmp_path / "cut.csv"
    src.write_text('id,body\n1,fine\n2,"this export stops in the mid')
    got = items(src)
    assert got[0].body == "fine"
    assert got[1].reason == ("line 3: the file ends inside a quoted field; the record is cut off "
                             "(an incomplete export?)")


def test_trailing_empty_cells_are_not_ragged(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("id,body\n1,hello,,\n")
    assert items(src)[0].body == "hello"


# --- column mapping -------------------------------------------------------------------------------


@pytest.mark.parametrize("headers, expected", [
    (["Id", "Requester", "Requester id", "Requester email", "Subject", "Status", "Created at",
      "Description"],  # Zendesk
     {"ticket_id": "Id", "received_at": "Created at", "customer": "Requester email",
      "customer_name": "Requester", "subject": "Subject", "body": "Description"}),
    (["Ticket ID", "Subject", "Status", "Priority", "Source", "Created time", "Full name", "Email",
      "Description"],  # Freshdesk
     {"ticket_id": "Ticket ID", "received_at": "Created time", "customer": "Email",
      "customer_name": "Full name", "subject": "Subject", "body": "Description"}),
    (["Conversation ID", "Number", "Customer", "Customer email", "Subject", "Mailbox",
      "Created at", "Preview"],  # Help Scout
     {"ticket_id": "Conversation ID", "received_at": "Created at", "customer": "Customer email",
      "customer_name": "Customer", "subject": "Subject", "body": "Preview"}),
])
def test_helpdesk_exports_are_mapped_automatically(headers, expected):
    assert map_columns(headers) == expected


def test_configured_columns_win_and_bad_ones_are_clear_errors(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text("Case,Text,Notes,Email\nC-1,the real question,internal note,a@example.com\n")
    (t,) = items(src, columns={"ticket_id": "Case", "body": "notes "})
    assert (t.key, t.body, t.extra) == ("C-1", "internal note", {"Text": "the real question"})
    assert items(src, columns={"customer": ""})[0].customer == ""  # "" leaves a field unmapped
    with pytest.raises(SourceError) as err:
        items(src, columns={"body": "Desc"})
    assert str(err.value) == (f"{src}: config/settings.yaml `intake.columns.body` names column "
                              "`Desc`, which is not in the header; the columns are Case, Text, "
                              "Notes, Email")
    with pytest.raises(SourceError) as err:
        items(src, columns={"bdy": "Text"})
    assert str(err.value) == ("config/settings.yaml: `intake.columns.bdy` is not a ticket field "
                              "(did you mean `body`?); the fields are ticket_id, received_at, "
                              "customer, customer_name, subject, body")


def test_html_cells_become_text(tmp_path):
    src = tmp_path / "t.csv"
    src.write_text('id,body\n1,"<p>Hello<br>my order <b>NW-1</b></p><script>x()</script>"\n')
    assert items(src)[0].body == "Hello\nmy order NW-1"


# --- JSONL ----------------------------------------------------------------------------------------


def test_jsonl_records_nested_fields_and_bad_lines(tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text("\n".join([
        json.dumps({"id": 7, "subject": "Hi", "description": "Help with NW-1",
                    "requester": {"email": "A@Example.com", "name": "Ann"},
                    "tags": ["vip"], "created_at": "2026-01-02T03:04:05Z"}),
        "{not json",
        "[1, 2]",
        "",
        json.dumps({"id": 8, "subject": "", "description": ""}),
        json.dumps({"id": 9, "note": "no text field"}),
    ]) + "\n", encoding="utf-8")
    got = items(src)
    t = got[0]
    assert (t.key, t.customer, t.customer_name, t.received_at, t.body) == \
        ("7", "a@example.com", "Ann", "2026-01-02T03:04:05Z", "Help with NW-1")
    assert t.extra == {"tags": '["vip"]'}
    assert [r.reason for r in got[1:]] == [
        "line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        "line 3: a JSON list is not a ticket record (expected an object)",
        "no ticket text (subject and body are empty)",
        "line 6: no field holds the ticket text (fields: id, note); name it in "
        "config/settings.yaml under intake.columns.body"]
    assert [i.source for i in got] == ["t.jsonl:1", "t.jsonl:2", "t.jsonl:3", "t.jsonl:5",
                                       "t.jsonl:6"]


# --- formats and several sources ------------------------------------------------------------------


def test_format_by_suffix_directory_content_or_option(tmp_path):
    (tmp_path / "a.txt").write_text("id,body\n1,x\n")
    (tmp_path / "inbox").write_bytes(b"From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n\nhi\n")
    (tmp_path / "msg").write_bytes(b"Message-ID: <1@x>\nSubject: x\n\nhi\n")
    (tmp_path / "export").write_text('{"body": "x"}\n')
    (tmp_path / "maildir" / "cur").mkdir(parents=True)
    (tmp_path / "maildir" / "new").mkdir()
    (tmp_path / "emls").mkdir()
    expected = {"a.txt": "csv", "inbox": "mbox", "msg": "eml", "export": "jsonl",
                "maildir": "maildir", "emls": "eml"}
    assert {n: detect_format(tmp_path / n, IntakeOptions()) for n in expected} == expected
    assert detect_format(tmp_path / "a.txt", IntakeOptions(format="tsv")) == "tsv"
    with pytest.raises(SourceError) as err:
        detect_format(tmp_path / "emls", IntakeOptions(format="maildir"))
    assert str(err.value) == (f"{tmp_path / 'emls'}: not a Maildir (it needs cur/ and new/ "
                              "subdirectories); for a folder of message files use --format eml")
    array = tmp_path / "dump.json"
    array.write_text('[{"body": "x"}]')
    with pytest.raises(SourceError) as err:
        detect_format(array, IntakeOptions())
    assert "a JSON array; crewbatch reads JSON Lines" in str(err.value)


def test_several_sources_are_numbered_as_one_stream(tmp_path, monkeypatch):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "tickets.csv").write_text(f"id,body\n{sub}1,x\n{sub}2,y\n")
    monkeypatch.chdir(tmp_path)
    files = expand_sources(["*/tickets.csv"], tmp_path)
    assert files == [tmp_path / "a" / "tickets.csv", tmp_path / "b" / "tickets.csv"]
    got = list(read_sources(files, IntakeOptions()))
    assert [(t.key, t.record_no) for t in got] == [("a1", 1), ("a2", 2), ("b1", 3), ("b2", 4)]


def test_readers_are_lazy(tmp_path):
    src = tmp_path / "t.csv"
    with open(src, "w") as f:
        f.write("id,body\n")
        f.writelines(f"{i},body {i}\n" for i in range(50_000))
    stream = read_source(src, IntakeOptions())
    first = next(stream)
    assert first.key == "0"
    stream.close()

"""Maintained libraries against the hand-written code they replaced, measured on ../shared/corpora.

Three comparisons, each old vs new on data nobody on this project wrote (plus the byte strings
the intake tests feed in):

- encodings: `intake.detect_encoding` before charset-normalizer (BOM, NUL pattern, strict UTF-8,
  else cp1252), charset-normalizer alone, and today's `intake.detect_encoding`. A case is decoded
  correctly when the text read with the detected codec equals the known text. Known text: a
  file's BOM or the encoding its corpus documents (csvkit's `test_latin1.csv`), else valid UTF-8;
  a mail part's declared charset where it decodes strictly (a part labelled 8-bit but valid
  UTF-8 is left out: which one is true is unknown); and DERIVED cases, tickets of the
  multilingual corpus written as a one-ticket CSV in cp1252, as a German or French Excel saves it.
- HTML to text: the html.parser walker `mail.html_to_text` used before (copied below as the
  baseline) and today's (BeautifulSoup with lxml), over every text/html part of the mail corpora
  and every Kaggle ticket cell with HTML tags in it. Measured against the source, not against
  either implementation: words of the visible text kept, script/style text leaked, entities left
  undecoded, http(s) links kept as "<url>", and <p>/<li> blocks that start a line.
- quoted replies: `mail.split_reply` against the maintained splitters on PyPI (mail-parser-reply,
  email-reply-parser, quotequail), over every message of the mail corpora whose parent (by
  In-Reply-To/References) is in the corpora too. A line of the new text that is a line of the
  parent (after ">" and blanks are stripped) is a quote left in; a line that is in neither the
  parent nor an attribution/signature must stay in the new text. The splitters are not project
  dependencies: install them beside the venv to compare, e.g.
  `pip install --target /tmp/replysplit mail-parser-reply email-reply-parser quotequail` and pass
  `--site /tmp/replysplit`; without them only split_reply is measured.

    .venv/bin/python benchmarks/library_bench.py [--corpora ../shared/corpora] [--site DIR]

Tables go to stdout.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import email
import email.policy
import html as htmllib
import re
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crews import intake, mail  # noqa: E402

csv.field_size_limit(2**31 - 1)


# --- baselines: the hand-written code before the libraries ---------------------------------------

BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"))


def old_detect_encoding(head: bytes, complete: bool = True) -> str:
    for bom, codec in BOMS:
        if head.startswith(bom):
            return codec
    if len(head) >= 4:
        even, odd = head[0::2], head[1::2]
        if odd.count(0) > len(odd) * 0.3 and even.count(0) < len(even) * 0.05:
            return "utf-16-le"
        if even.count(0) > len(even) * 0.3 and odd.count(0) < len(odd) * 0.05:
            return "utf-16-be"
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if not complete and exc.reason == "unexpected end of data" and exc.start >= len(head) - 3:
            return "utf-8"
    return "cp1252"


def charset_normalizer_alone(head: bytes, complete: bool = True) -> str:
    from charset_normalizer import from_bytes

    best = from_bytes(head).best()
    return best.encoding if best else "cp1252"


class _OldHTMLText(HTMLParser):
    SKIP = {"script", "style", "title", "noscript", "template", "head"}
    BLOCK = {"p", "div", "tr", "table", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
             "hr", "section", "article", "header", "footer", "dl", "dt", "dd", "center", "form",
             "address", "figure", "main", "nav", "aside"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = self.quote = self.pre = 0
        self.href: list[str | None] = []

    def newline(self, n=1):
        self.parts.append(("\n" + "> " * self.quote) * n)

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.skip = 0
        if tag in self.SKIP:
            self.skip += 1
            return
        if tag == "br":
            self.newline()
        elif tag == "blockquote":
            self.quote += 1
            self.newline()
        elif tag == "li":
            self.newline()
            self.parts.append("- ")
        elif tag in self.BLOCK:
            self.newline(2 if tag in ("p", "h1", "h2", "h3") else 1)
        elif tag in ("td", "th"):
            self.parts.append(" ")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt and not self.skip:
                self.parts.append(f"[image: {alt}]")
        if tag == "pre":
            self.pre += 1
        if tag == "a":
            self.href.append(dict(attrs).get("href"))

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
            return
        if tag == "blockquote":
            self.quote = max(0, self.quote - 1)
            self.newline()
        elif tag in self.BLOCK:
            self.newline()
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag == "a" and self.href:
            href = self.href.pop()
            if href and href.startswith(("http://", "https://")) and \
                    href not in "".join(self.parts[-3:]):
                self.parts.append(f" <{href}>")

    def handle_data(self, data):
        if self.skip:
            return
        self.parts.append(data.replace("\n", "\n" + "> " * self.quote) if self.pre
                          else re.sub(r"\s+", " ", data))


def old_html_to_text(html: str) -> str:
    parser = _OldHTMLText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:
        return re.sub(r"<[^>]*>", " ", html)
    text = "".join(parser.parts).replace("\xa0", " ")
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n(?:>? ?\n){2,}", "\n\n", "\n".join(lines)).strip()


# --- reading the corpora -------------------------------------------------------------------------


def _messages(corpora: Path):
    """(label, raw bytes) of every message in the mail corpora."""
    for f in sorted(corpora.glob("email-*/**/*")):
        if not f.is_file() or f.name.startswith(("UPSTREAM", "VERIFICATION", ".")) or \
                f.suffix in (".md", ".jsonl", ".json"):
            continue
        label = str(f.relative_to(corpora))
        head = f.read_bytes()[:4096]
        if mail.looks_like_mbox(head):
            for env in mail.scan_mbox(f):
                yield f"{label}:{env.number}", env.read()
        elif mail.looks_like_message(head):
            yield label, f.read_bytes()


def _text_parts(raw: bytes):
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        try:
            data = part.get_payload(decode=True)
        except Exception:  # noqa: BLE001
            continue
        if data:
            yield part.get_content_subtype(), part.get_content_charset(), data


def _decode(data: bytes, codec: str) -> str | None:
    strict = codecs.lookup(codec).name.startswith(("utf-16", "utf-32"))
    try:
        return data.decode(codec, errors="strict" if strict else "crewbatch-cp1252")
    except (UnicodeDecodeError, LookupError):
        return None


# --- encodings -----------------------------------------------------------------------------------

KNOWN = {"csvkit-edge-csv/examples/test_latin1.csv": "latin-1"}


def encoding_cases(corpora: Path) -> dict[str, list[tuple[str, bytes, str]]]:
    """Set name -> (label, bytes, known text)."""
    sets: dict[str, list] = {"CSV/text files, BOM": [], "CSV/text files, no BOM": [],
                             "mail parts, declared charset": [],
                             "tickets re-encoded cp1252 (derived)": [],
                             "files re-encoded UTF-16, no BOM (derived)": [],
                             "CJK mail text re-encoded (derived)": [],
                             "repo test fixtures": []}
    files = [*corpora.glob("csv-spectrum/csvs/*.csv"), *corpora.glob("csvkit-edge-csv/examples/*.csv"),
             *corpora.glob("tickets-*/**/*.csv"), *corpora.glob("csv-formula-injection/**/*.txt"),
             *corpora.glob("prompt-injection-*/**/*.jsonl")]
    for f in sorted(files):
        label = str(f.relative_to(corpora))
        data = f.read_bytes()
        bom = next((c for b, c in BOMS if data.startswith(b)), None)
        codec = bom or KNOWN.get(label) or "utf-8"
        try:
            truth = data.decode(codec)
        except UnicodeDecodeError:
            continue  # no known text (a file cut inside a character): not a case
        sets["CSV/text files, BOM" if bom else "CSV/text files, no BOM"].append((label, data, truth))
        if not bom and len(data) < 200_000 and truth.strip():
            for codec in ("utf-16-le", "utf-16-be"):
                sets["files re-encoded UTF-16, no BOM (derived)"].append(
                    (f"{label} as {codec}", truth.encode(codec), truth))
    cjk_texts: dict[str, str] = {}
    for label, raw in _messages(corpora):
        for _, charset, data in _text_parts(raw):
            codec = mail.known_charset(charset)
            if not codec:
                continue
            try:
                truth = data.decode(codec)
            except UnicodeDecodeError:
                continue
            if data.isascii() and truth == data.decode("ascii"):
                continue  # ASCII says nothing about detection
            if codec != "utf-8":
                try:
                    data.decode("utf-8")
                    continue  # valid UTF-8 labelled otherwise: which is true is unknown
                except UnicodeDecodeError:
                    pass
            sets["mail parts, declared charset"].append((label, data, truth))
            if "multi_charset" in label or codec in ("cp949", "cp932", "iso2022_jp"):
                cjk_texts.setdefault(truth, label)
    for truth, label in cjk_texts.items():
        for codec in ("shift_jis", "euc-jp", "iso-2022-jp", "euc-kr", "utf-16-le"):
            try:
                data = truth.encode(codec)
            except UnicodeEncodeError:
                continue
            if not data.isascii() or codec == "iso-2022-jp":
                sets["CJK mail text re-encoded (derived)"].append((f"{label} as {codec}", data,
                                                                   truth))
    source = corpora / "tickets-tobi-bueck-multilang/dataset-tickets-multi-lang3-4k.csv"
    if source.exists():
        per_language: dict[str, int] = {}
        with source.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                lang, body = row.get("language", ""), row.get("body") or ""
                if lang not in ("de", "es", "fr", "pt") or body.isascii() or \
                        per_language.get(lang, 0) >= 50:
                    continue
                text = f'id,body\r\n1,"{body.replace(chr(34), chr(34) * 2)}"\r\n'
                try:
                    data = text.encode("cp1252")
                except UnicodeEncodeError:
                    continue
                per_language[lang] = per_language.get(lang, 0) + 1
                sets["tickets re-encoded cp1252 (derived)"].append((f"multi-lang3-4k {lang}", data,
                                                                    text))
    mixed = b"id,body\n" + b"".join(b"%d,ok \xc3\xa9\n" % i for i in range(40_000)) + \
        b"40000,caf\xe9\n"
    for label, text, codec in (("test_intake latin-1", "id,body\n1,caf\xe9\n", "latin-1"),
                               ("test_intake_csv cp1252", "id,body\n1,“smart” quotes — 5 €\n",
                                "cp1252"),
                               ("test_intake_csv utf-16-le, no BOM", "id,body\n1,Grüße\n",
                                "utf-16-le"),
                               ("test_intake_csv koi8-r (test names it)", "id,body\n1,привет\n",
                                "koi8-r")):
        sets["repo test fixtures"].append((label, text.encode(codec), text))
    sets["repo test fixtures"].append(("test_intake_csv UTF-8 + one stray cp1252 byte", mixed,
                                       mixed.decode("utf-8", errors="crewbatch-cp1252")))
    for f in sorted((ROOT / "data").glob("*.csv")):
        sets["repo test fixtures"].append((f"data/{f.name}", f.read_bytes(),
                                           f.read_bytes().decode("utf-8-sig")))
    return sets


def _kind(data: bytes, truth: str) -> str:
    if any(data.startswith(b) for b, _ in BOMS):
        return "byte-order mark"
    if data.count(0) > len(data) // 4:
        return "UTF-16 without BOM"
    try:
        data.decode("utf-8")
        return "valid UTF-8"
    except UnicodeDecodeError:
        pass
    if _decode(data, "cp1252") == truth:
        return "8-bit Western (cp1252 reads it)"
    if _decode(data, "utf-8") == truth:
        return "UTF-8 with stray bytes"
    return "other (CJK, Cyrillic)"


def bench_encodings(corpora: Path) -> None:
    detectors = {"before (hand-written)": old_detect_encoding,
                 "charset-normalizer alone": charset_normalizer_alone,
                 "intake.detect_encoding now": lambda h, complete=True:
                     intake.detect_encoding(h, complete)[0]}
    sets = encoding_cases(corpora)
    print("## Encodings: correct decodes")
    print(f"{'set':<40} {'cases':>5}" + "".join(f" {name:>27}" for name in detectors))
    totals = dict.fromkeys(detectors, 0)
    seconds = dict.fromkeys(detectors, 0.0)
    wrong: dict[str, list[str]] = {name: [] for name in detectors}
    n = 0
    for set_name, cases in sets.items():
        row = []
        for name, detect in detectors.items():
            good = 0
            for label, data, truth in cases:
                head = data[:intake.SAMPLE_BYTES]
                started = time.perf_counter()
                codec = detect(head, len(data) <= intake.SAMPLE_BYTES)
                seconds[name] += time.perf_counter() - started
                if _decode(data, codec) == truth:
                    good += 1
                else:
                    wrong[name].append(f"{label} -> {codec}")
            totals[name] += good
            row.append(good)
        n += len(cases)
        print(f"{set_name:<40} {len(cases):>5}" + "".join(f" {g:>27}" for g in row))
    print(f"{'all':<40} {n:>5}" + "".join(f" {totals[d]:>27}" for d in detectors))
    print(f"{'seconds (detection only)':<40} {'':>5}" +
          "".join(f" {seconds[d]:>27.2f}" for d in detectors))
    print("\nthe same cases by kind of bytes")
    kinds: dict[str, list] = {}
    for cases in sets.values():
        for case in cases:
            kinds.setdefault(_kind(case[1], case[2]), []).append(case)
    for kind, cases in kinds.items():
        row = [sum(1 for _, data, truth in cases
                   if _decode(data, detect(data[:intake.SAMPLE_BYTES],
                                           len(data) <= intake.SAMPLE_BYTES)) == truth)
               for detect in detectors.values()]
        print(f"{kind:<40} {len(cases):>5}" + "".join(f" {g:>27}" for g in row))
    for name, items in wrong.items():
        print(f"\nwrong, {name} ({len(items)}):")
        for item in items[:40]:
            print(f"  {item}")


# --- HTML ------------------------------------------------------------------------------------

WORDS = re.compile(r"[^\W_]+")
ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z]{2,8});")
HIDDEN = re.compile(r"<(script|style|head|title)\b[^>]*>(.*?)</\1\s*>", re.IGNORECASE | re.DOTALL)
COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
ANCHOR = re.compile(r"<a\b[^>]*\bhref\s*=\s*[\"']?(https?://[^\"'\s>]+)[^>]*>(.*?)</a\s*>",
                    re.IGNORECASE | re.DOTALL)
BLOCK_START = re.compile(r"<(p|li)\b[^>]*>([^<]*)", re.IGNORECASE)


def html_documents(corpora: Path) -> list[tuple[str, str]]:
    docs = []
    for label, raw in _messages(corpora):
        for subtype, charset, data in _text_parts(raw):
            if subtype == "html":
                docs.append((label, mail.decode_bytes(data, charset)))
    kaggle = corpora / "tickets-kaggle-suraj520/customer_support_tickets.csv"
    if kaggle.exists():
        with kaggle.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                cell = row.get("Ticket Description", "")
                if re.search(r"<(p|br|div|blockquote|h\d|font)\b", cell, re.IGNORECASE):
                    docs.append((f"kaggle ticket {row.get('Ticket ID')}", cell))
    # the intake tests' HTML (the corpora's HTML has no script or style worth the name)
    docs.append(("test_intake_mail", "<html><head><style>p {color: red}</style><script>"
                 "alert('x')</script></head><body><p>Hello&nbsp;team,</p><p>My order <b>NW-10335"
                 "</b> is late.<br>Please help.</p><ul><li>one</li><li>two</li></ul><a href="
                 "'https://example.com/t'>tracking</a><blockquote>Earlier: your order shipped"
                 "</blockquote></body></html>"))
    docs.append(("test_intake_csv", "<p>Hello<br>my order <b>NW-1</b></p><script>window.x = "
                 "exfiltrate()</script>"))
    return docs


def _visible_words(source: str) -> list[str]:
    text = COMMENT.sub(" ", HIDDEN.sub(" ", source))
    text = htmllib.unescape(re.sub(r"<[^>]*>", " ", text))
    return [w.lower() for w in WORDS.findall(text)]


def html_scores(source: str, text: str) -> dict[str, int]:
    out_words = [w.lower() for w in WORDS.findall(text)]
    pool: dict[str, int] = {}
    for w in out_words:
        pool[w] = pool.get(w, 0) + 1
    want = _visible_words(source)
    kept = 0
    for w in want:
        if pool.get(w):
            pool[w] -= 1
            kept += 1
    leaked = 0
    for tag, inner in HIDDEN.findall(source):
        if tag.lower() in ("script", "style"):
            snippet = " ".join(inner.split())[:40]
            if len(snippet) >= 12 and snippet in " ".join(text.split()):
                leaked += 1
    hidden = sum(1 for tag, inner in HIDDEN.findall(source)
                 if tag.lower() in ("script", "style") and len(" ".join(inner.split())) >= 12)
    unescaped = htmllib.unescape(COMMENT.sub(" ", source))
    entities = sum(1 for e in ENTITY.findall(text) if e not in unescaped)
    links = [(href, re.sub(r"<[^>]*>", "", label)) for href, label in ANCHOR.findall(source)]
    links = [(htmllib.unescape(h), a) for h, a in links if htmllib.unescape(h) not in a]
    links_kept = sum(1 for href, _ in links if f"<{href}>" in text)
    lines = [re.sub(r"^[>\s]*(?:- )?", "", line) for line in text.split("\n")]
    blocks = [" ".join(htmllib.unescape(t).split()[:3]) for _, t in BLOCK_START.findall(source)]
    blocks = [b for b in blocks if b and not HIDDEN.search(b)]
    starts = sum(1 for b in blocks if any(line.startswith(b) for line in lines))
    return {"words": len(want), "kept": kept, "hidden": hidden, "leaked": leaked,
            "entities": entities, "links": len(links), "links_kept": links_kept,
            "blocks": len(blocks), "block_starts": starts}


def bench_html(corpora: Path) -> None:
    docs = html_documents(corpora)
    converters = {"before (html.parser)": old_html_to_text,
                  "bs4 + lxml": lambda h: mail.html_to_text(h, parser="lxml"),
                  "bs4 + html.parser": lambda h: mail.html_to_text(h, parser="html.parser"),
                  "mail.html_to_text now": mail.html_to_text}
    print(f"\n## HTML to text: {len(docs)} documents "
          f"({sum(1 for d in docs if d[0].startswith('email-'))} mail parts, "
          f"{sum(1 for d in docs if d[0].startswith('kaggle'))} Kaggle cells with HTML tags, "
          f"{sum(1 for d in docs if d[0].startswith('test_'))} from the intake tests)")
    print(f"{'converter':<34} {'words kept':>16} {'script/style':>13} {'entities':>9} "
          f"{'links kept':>12} {'<p>/<li> lines':>15} {'ms':>7}")
    outputs = {}
    for name, convert in converters.items():
        total: dict[str, int] = {}
        started = time.perf_counter()
        texts = [convert(source) for _, source in docs]
        ms = (time.perf_counter() - started) * 1000
        outputs[name] = texts
        for (_, source), text in zip(docs, texts, strict=True):
            for k, v in html_scores(source, text).items():
                total[k] = total.get(k, 0) + v
        print(f"{name:<34} {total['kept']:>7}/{total['words']:<8} "
              f"{total['leaked']:>4} of {total['hidden']:<5} {total['entities']:>9} "
              f"{total['links_kept']:>5}/{total['links']:<6} "
              f"{total['block_starts']:>6}/{total['blocks']:<8} {ms:>7.0f}")
    old, new = outputs["before (html.parser)"], outputs["mail.html_to_text now"]
    differ = [(label, a, b) for (label, _), a, b in zip(docs, old, new, strict=True) if a != b]
    print(f"outputs that differ: {len(differ)} of {len(docs)}")
    for label, a, b in differ[:8]:
        print(f"  {label}: {_first_difference(a, b)}")


def _first_difference(a: str, b: str) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"before {a[max(0, i - 30):i + 40]!r} / now {b[max(0, i - 30):i + 40]!r}"


# --- quoted replies --------------------------------------------------------------------------

ATTRIBUTION_LIKE = re.compile(r"\b(wrote|writes|schrieb|a écrit|escribió)\s*:\s*$|^-- ?$|"
                              r"^-+\s*Original Message", re.IGNORECASE)


MESSAGE_ID = re.compile(r"<([^<>\s]+)>")


def _norm_line(line: str) -> str:
    return " ".join(re.sub(r"^[\s>|]+", "", line).split())


def reply_cases(corpora: Path) -> list[tuple[str, str, str]]:
    """(label, message text, parent text) for messages whose parent is in the corpora."""
    by_id: dict[str, str] = {}
    parsed = []
    for label, raw in _messages(corpora):
        try:
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        except Exception:  # noqa: BLE001
            continue
        # the message's whole text (plain parts, else HTML ones as text), before any split
        parts = list(_text_parts(raw))
        plain = [mail.decode_bytes(d, cs) for sub, cs, d in parts if sub == "plain"]
        text = "\n".join(plain or [mail.html_to_text(mail.decode_bytes(d, cs))
                                    for sub, cs, d in parts if sub == "html"])
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        ids = MESSAGE_ID.findall(str(msg.get("message-id", "")))
        mid = ids[0] if ids else ""
        parents = MESSAGE_ID.findall(str(msg.get("in-reply-to", ""))) or \
            MESSAGE_ID.findall(str(msg.get("references", "")))[-1:]
        parsed.append((label, text, parents))
        if mid:
            by_id.setdefault(mid, text)
    return [(label, text, by_id[parents[0]]) for label, text, parents in parsed
            if parents and parents[0] in by_id and by_id[parents[0]] != text]


def reply_scores(text: str, parent: str, new_text: str) -> tuple[int, int, int, int]:
    parent_lines = {_norm_line(line) for line in parent.split("\n")}
    parent_lines.discard("")
    new_lines = [_norm_line(line) for line in new_text.split("\n")]
    quoted_left = sum(1 for line in new_lines if len(line) >= 20 and line in parent_lines)
    own = [_norm_line(line) for line in text.split("\n")]
    own = [line for line in own if len(line) >= 20 and line not in parent_lines
           and not ATTRIBUTION_LIKE.search(line)]
    kept_set = set(new_lines)
    kept = sum(1 for line in own if line in kept_set)
    return quoted_left, sum(1 for line in new_lines if len(line) >= 20), kept, len(own)


def bench_replies(corpora: Path, site: str | None) -> None:
    if site:
        sys.path.insert(0, site)
    splitters = {"mail.split_reply": lambda t: mail.split_reply(t)[0]}
    try:
        from mailparser_reply import EmailReplyParser as MPR

        parser = MPR(languages=["en", "de", "fr", "es"])
        splitters["mail-parser-reply 1.36"] = lambda t: parser.parse_reply(t) or ""
    except ImportError:
        pass
    try:
        from email_reply_parser import EmailReplyParser as ERP

        splitters["email-reply-parser 0.5.12"] = lambda t: ERP.parse_reply(t) or ""
    except ImportError:
        pass
    try:
        import quotequail

        def _quotequail(t: str) -> str:
            return "\n".join(text for own, text in quotequail.quote(t) if own)
        splitters["quotequail 0.5.4"] = _quotequail
    except ImportError:
        pass
    cases = reply_cases(corpora)
    print(f"\n## Quoted replies: {len(cases)} messages whose parent is in the corpora")
    print(f"{'splitter':<28} {'quote lines left in new text':>30} {'own lines kept':>16} "
          f"{'ms':>7}")
    for name, split in splitters.items():
        left = new_total = kept = own_total = 0
        started = time.perf_counter()
        for _, text, parent in cases:
            try:
                new_text = split(text)
            except Exception:  # noqa: BLE001 — a splitter that raises keeps nothing
                new_text = ""
            a, b, c, d = reply_scores(text, parent, new_text)
            left, new_total, kept, own_total = left + a, new_total + b, kept + c, own_total + d
        ms = (time.perf_counter() - started) * 1000
        print(f"{name:<28} {left:>17} of {new_total:<10} {kept:>7}/{own_total:<8} {ms:>7.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", type=Path, default=ROOT.parent / "shared" / "corpora")
    ap.add_argument("--site", help="a folder the reply splitters are installed in (pip --target)")
    args = ap.parse_args()
    if not args.corpora.is_dir():
        sys.exit(f"{args.corpora}: no corpora folder; pass --corpora DIR")
    bench_encodings(args.corpora)
    bench_html(args.corpora)
    bench_replies(args.corpora, args.site)


if __name__ == "__main__":
    main()

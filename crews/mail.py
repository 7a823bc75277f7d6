"""E-mail: find the messages in a mailbox, group them into threads, and read each as a person would.

Intake hands this module an mbox, a Maildir or a folder of .eml files. Reading is two passes: the
first keeps only where each message is and the ids that link it (Message-ID, In-Reply-To,
References), so memory grows with the number of messages, never with their size; the second parses
one message (or one thread) at a time. `parse` never trusts the MIME structure: real mailboxes have
undeclared or unknown charsets, containers without boundaries and invented transfer encodings, so
every body is decoded from the raw payload with fallbacks instead of `get_content()`, which raises.
Walking a folder never skips what it cannot list (a folder it cannot read is an OSError for intake
to report), and every entry that is not a regular message file (a symbolic link, a FIFO) becomes an
Envelope with a `problem`, opened never (`files` holds that rule).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email
import email.message
import email.policy
import os
import quopri
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timezone
from email.header import decode_header
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path

from . import files
from .ticket import PLAIN_ADDRESS

# The charsets mail clients declare, read as the supersets they actually send (WHATWG's choice).
CHARSET_SUPERSETS = {
    "us-ascii": "cp1252", "ascii": "cp1252", "iso-8859-1": "cp1252", "latin1": "cp1252",
    "latin-1": "cp1252", "iso-8859-9": "cp1254", "ks_c_5601-1987": "cp949", "euc-kr": "cp949",
    "shift_jis": "cp932", "x-sjis": "cp932", "gb2312": "gb18030", "gbk": "gb18030",
    "big5": "big5hkscs", "iso-8859-8-i": "iso-8859-8", "tis-620": "cp874",
}
WESTERN = ("cp1252", "latin-1", "iso8859-15", "ascii")
# Files in a mail folder that are never messages (the folder's own bookkeeping).
NOT_MAIL_NAMES = {".keep", ".ds_store", "thumbs.db", "desktop.ini"}
ID = re.compile(r"<([^<>\s]+)>")
HEADER_LINE = re.compile(rb"^[!-9;-~]+:")
LINK_HEADERS = (b"message-id:", b"in-reply-to:", b"references:")


# --- text decoding ---------------------------------------------------------------------------------


def _cp1252_fallback(exc: UnicodeError):
    """Decode the bytes UTF-8 (or cp1252) refused as cp1252, latin-1 for its five unassigned bytes."""
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    chunk = exc.object[exc.start:exc.end]
    return "".join(bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in chunk), exc.end


codecs.register_error("crewbatch-cp1252", _cp1252_fallback)


def known_charset(name: str | None) -> str | None:
    """A codec Python has for the declared charset (its superset where one is usual), or None."""
    if not name:
        return None
    name = name.strip().strip("\"'").lower()
    name = CHARSET_SUPERSETS.get(name, name)
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_bytes(data: bytes, charset: str | None = None) -> str:
    """Text from bytes: the declared charset if it fits, else UTF-8, else cp1252 — never an error."""
    codec = known_charset(charset)
    if codec in WESTERN and not data.isascii():
        # valid UTF-8 labelled latin-1 is UTF-8: real latin-1 text almost never decodes as UTF-8
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec:
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if codec and codec not in ("utf-8", "cp1252"):
        return data.decode(codec, errors="replace")
    return data.decode("cp1252", errors="crewbatch-cp1252")


def _unescape_raw(value: str, hint: str | None = None) -> str:
    # Parsed headers keep undeclared 8-bit bytes as surrogates: UTF-8 (RFC 6532), else most likely
    # the charset the message's body declares (`hint`), else cp1252.
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        data = value.encode("ascii", "surrogateescape")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return decode_bytes(data, hint)
    return value


def decode_header_value(value: str | None, hint: str | None = None) -> str:
    """A header as text: unfolded, RFC 2047 encoded words decoded, unknown charsets tolerated."""
    if not value:
        return ""
    value = re.sub(r"\r?\n[ \t]*", " ", _unescape_raw(str(value), hint)).strip()
    if "=?" not in value:
        return value
    try:
        chunks = decode_header(value)
    except Exception:  # the header parser raises several types on broken encoded words
        return value
    # each chunk in its declared charset (or a fallback): unknown and lying charsets still read;
    # plain chunks keep their own spaces, adjacent encoded words are joined as RFC 2047 says
    text = "".join(decode_bytes(c, cs) if isinstance(c, bytes) else c for c, cs in chunks)
    return text.replace("\x00", "").strip()


# --- HTML --------------------------------------------------------------------------------------------


SKIP_TAGS = {"script", "style", "title", "noscript", "template"}
BLOCK_TAGS = {"p", "div", "tr", "table", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "pre",
              "hr", "section", "article", "header", "footer", "dl", "dt", "dd", "center", "form",
              "address", "figure", "main", "nav", "aside"}


class _TextWriter:
    """The text of an HTML tree as a person reads it, written as the tree is walked."""

    def __init__(self):
        self.parts: list[str] = []
        self.quote = 0
        self.pre = 0
        self.anchors: list[int] = []     # where each open <a>'s text starts in parts

    def newline(self, n: int = 1) -> None:
        self.parts.append(("\n" + "> " * self.quote) * n)

    def start(self, tag) -> None:
        name = tag.name
        if name == "br":
            self.newline()
        elif name == "blockquote":
            self.quote += 1
            self.newline()
        elif name == "li":
            self.newline()
            self.parts.append("- ")
        elif name in BLOCK_TAGS:
            self.newline(2 if name in ("p", "h1", "h2", "h3") else 1)
        elif name in ("td", "th"):
            self.parts.append(" ")
        elif name == "img" and tag.get("alt"):
            self.parts.append(f"[image: {tag['alt']}]")
        if name == "pre":
            self.pre += 1
        if name == "a":
            self.anchors.append(len(self.parts))

    def end(self, tag) -> None:
        name = tag.name
        if name == "blockquote":
            self.quote = max(0, self.quote - 1)
            if self.parts and self.parts[-1].startswith("\n") and not self.parts[-1].strip("\n> "):
                self.parts.pop()  # quotes closing together end one line, not one line each
            self.newline()
        elif name in BLOCK_TAGS:
            self.newline()
        if name == "pre":
            self.pre = max(0, self.pre - 1)
        if name != "a" or not self.anchors:
            return
        start = self.anchors.pop()
        href = tag.get("href")
        # a link is kept as " <url>" unless its text says the URL (its first parts: a link
        # left open runs to the end of the document), or the link just before was the same
        # (an empty anchor beside the real one, as newsletters write them)
        if isinstance(href, str) and href.startswith(("http://", "https://")) \
                and href not in "".join(self.parts[start:start + 20]) \
                and f" <{href}>" not in self.parts[-3:]:
            self.parts.append(f" <{href}>")

    def data(self, text: str) -> None:
        if self.pre:
            self.parts.append(text.replace("\n", "\n" + "> " * self.quote))
        else:
            self.parts.append(re.sub(r"\s+", " ", text))


def html_to_text(html: str, parser: str = "html.parser") -> str:
    """Readable text from an HTML body: scripts and styles dropped, blocks on their own lines,
    list items as "- ", links as "text <url>", blockquotes marked with "> " so quoted replies are
    recognised like plain-text ones; the walk is a loop, so a deeply nested document cannot
    exhaust the stack.

    BeautifulSoup builds the tree on Python's html.parser (`parser`). Its lxml builder is not
    used: it drops the text after a malformed tag, which real exports have ("<div I'm not sure
    if this issue is specific to my device…" in the Kaggle tickets), and kept 5,162 of the
    5,758 visible words of the HTML in benchmarks/library_bench.py against 5,739 (as before).
    """
    # imported here: intake (and so `crewbatch check`) reads most sources without HTML
    from bs4 import BeautifulSoup, NavigableString, Tag
    from bs4.element import PreformattedString

    try:
        soup = BeautifulSoup(html.replace("\x00", ""), parser)
    except Exception:  # noqa: BLE001 — a pathological document must not stop intake
        return re.sub(r"<[^>]*>", " ", html)
    writer = _TextWriter()
    stack: list[tuple[object, bool]] = [(soup, False)]
    while stack:
        node, closing = stack.pop()
        if isinstance(node, Tag):
            if closing:
                writer.end(node)
            elif node.name not in SKIP_TAGS:
                writer.start(node)
                stack.append((node, True))
                stack.extend((child, False) for child in reversed(node.contents))
        elif isinstance(node, NavigableString) and not isinstance(node, PreformattedString):
            writer.data(str(node))  # comments, doctypes and CDATA are not text a person sees
    text = "".join(writer.parts).replace("\xa0", " ")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and lines[-1] in ("", ">"):
        lines.pop()  # the close of a blockquote the document left open
    return re.sub(r"\n(?:>? ?\n){2,}", "\n\n", "\n".join(lines)).strip()


# --- quoted replies and signatures ---------------------------------------------------------------

ATTRIBUTION = re.compile(
    r"^\s*(On\b.{0,300}\bwrote\s*:|Am\b.{0,300}\bschrieb\b.{0,200}:|Le\b.{0,300}\ba écrit\s*:"
    r"|El\b.{0,300}\bescribió\s*:|Op\b.{0,300}\bschreef\b.{0,200}:)\s*$", re.IGNORECASE)
ORIGINAL = re.compile(r"^\s*-{2,}\s*(Original Message|Ursprüngliche Nachricht|Message d'origine|"
                      r"Mensaje original)\s*-{2,}\s*$", re.IGNORECASE)
SIGNATURE = re.compile(r"^(-- ?|_{30,}|Sent from my \w+.*|Von meinem \w+ gesendet.*)$")


# Ours, not a library's: on the 38 corpus messages whose parent is in the corpora too
# (benchmarks/library_bench.py), split_reply leaves 3 of the parent's lines in the new text and
# keeps 268 of 341 lines of the message's own; email-reply-parser 0.5.12 leaves 1 but keeps 234,
# mail-parser-reply 1.36 keeps 297 but leaves 222 quoted lines in, quotequail 0.5.4 leaves 95 and
# keeps 100. talon (last release 2017) was not tried.
def split_reply(text: str) -> tuple[str, str, str]:
    """(new text, quoted text, signature): ">" lines, "On … wrote:" lines and everything after an
    Outlook "Original Message" or From:/Sent: block are quoted; after "-- " comes the signature."""
    lines = text.split("\n")
    new: list[str] = []
    quoted: list[str] = []
    signature: list[str] = []
    in_signature = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        pair = f"{stripped} {lines[i + 1].strip()}" if i + 1 < len(lines) else stripped
        if stripped.startswith(">"):
            quoted.append(line)
        elif ATTRIBUTION.match(stripped) or _introduces_quote(lines, i):
            quoted.append(line)
        elif stripped.startswith("On ") and ATTRIBUTION.match(pair):
            quoted.extend(lines[i:i + 2])
            i += 1
        elif ORIGINAL.match(stripped) or _outlook_block(lines, i):
            quoted.extend(lines[i:])
            break
        elif in_signature or SIGNATURE.match(line.rstrip()):
            in_signature = True
            signature.append(line)
        else:
            new.append(line)
        i += 1
    return _tidy(new), _tidy(quoted), _tidy(signature)


def _introduces_quote(lines: list[str], i: int) -> bool:
    # "Yesterday at 15:02, Simos wrote:", "Jane <j@example.com> writes:" right above a quote
    if not re.search(r"\b(wrote|writes|schrieb|escribió|a écrit)\s*:\s*$", lines[i]):
        return False
    following = next((n for n in lines[i + 1:] if n.strip()), "")
    return following.lstrip().startswith(">")


def _outlook_block(lines: list[str], i: int) -> bool:
    # Outlook quotes without ">": a "From:" line followed by "Sent:" starts the previous message;
    # a forwarded message's header block (after "Forwarded message") is content, not a quote.
    if not re.match(r"^\s*\*?From:\*?\s", lines[i]):
        return False
    before = next((b for b in reversed(lines[:i]) if b.strip()), "")
    if "forward" in before.lower():
        return False
    return any(re.match(r"^\s*\*?Sent:\*?\s", n) for n in lines[i + 1:i + 5])


def _tidy(lines: list[str]) -> str:
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in lines)).strip()


# --- one message ---------------------------------------------------------------------------------


@dataclass
class Mail:
    """One message as a support agent reads it."""

    message_id: str = ""
    references: tuple[str, ...] = ()     # References, then In-Reply-To: the ids it answers
    subject: str = ""
    sender: str = ""                     # the From address, lower-case ("" if there is none)
    sender_name: str = ""
    date: str = ""                       # ISO 8601 when the Date header parses, else as written
    timestamp: float | None = None
    text: str = ""                       # the new text: quoted reply and signature taken out
    quoted: str = ""
    signature: str = ""
    attachments: list[str] = field(default_factory=list)   # "name (type, size)"
    unreadable: str = ""                 # why the body cannot be read (encrypted), if so
    headers: dict[str, str] = field(default_factory=dict)  # From/To/Cc/Date/... as written


def parse(raw: bytes) -> Mail:
    """Read one raw message; broken structure degrades the result (intake rejects what raises)."""
    raw = raw.lstrip(b"\r\n")
    end = re.search(rb"\r?\n\r?\n", raw)
    split = end.start() if end else len(raw)
    # obsolete syntax (RFC 5322 4.5): "Subject  : x" has blanks before the colon; the parser wants none
    head = re.sub(rb"(?m)^([!-9;-~]+)[ \t]+:", rb"\1:", raw[:split])
    msg = email.message_from_bytes(head + raw[split:], policy=email.policy.compat32)
    headers = _first_headers(msg)
    hint = _body_charset(msg)
    mail = Mail()
    mail.headers = {k: decode_header_value(headers[k], hint) for k in
                    ("from", "to", "cc", "date", "message-id", "subject") if headers.get(k)}
    mail.message_id = _first_id(headers.get("message-id", ""))
    refs = _ids(headers.get("references", ""))
    for parent in _ids(headers.get("in-reply-to", "")):
        if parent not in refs:
            refs.append(parent)
    mail.references = tuple(r for r in refs if r != mail.message_id)
    mail.subject = mail.headers.get("subject", "")
    mail.sender, mail.sender_name = _sender(headers.get("from") or headers.get("sender") or "",
                                            hint)
    mail.date, mail.timestamp = _date(headers.get("date", ""))

    body = _Body()
    body.walk(msg)
    mail.attachments = body.attachments
    mail.unreadable = body.unreadable
    text = body.text().replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    mail.text, mail.quoted, mail.signature = split_reply(text)
    if not mail.text and mail.quoted:
        # a message that is all quote (a bare forward) is still its own content
        mail.text, mail.quoted = mail.quoted, ""
    return mail


def _first_headers(msg) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in msg.raw_items():
        out.setdefault(name.strip().lower(), value)
    return out


def _ids(value: str) -> list[str]:
    value = _unescape_raw(value or "")
    found = ID.findall(value)
    if not found:
        found = [v.strip("<>,;") for v in value.split() if "@" in v]
    seen: list[str] = []
    for f in found:
        if f not in seen:
            seen.append(f)
    return seen


def _first_id(value: str) -> str:
    ids = _ids(value)
    if ids:
        return ids[0]
    return " ".join(_unescape_raw(value or "").split())[:300]


def _body_charset(msg) -> str | None:
    for part in msg.walk():
        try:
            charset = part.get_content_charset()
        except Exception:
            continue
        if known_charset(charset):
            return charset
    return None


def _sender(value: str, hint: str | None = None) -> tuple[str, str]:
    value = re.sub(r"\r?\n[ \t]*", " ", _unescape_raw(value, hint)).strip()
    if "@" not in value:
        # Mailman archives obfuscate "user@example.com" as "user at example.com"
        value = re.sub(r"^(\S+) at (\S+)", r"\1@\2", value)
    try:
        pairs = getaddresses([value])
    except Exception:  # getaddresses raises on some malformed groups
        pairs = []
    found = next(((name, addr.strip()) for name, addr in pairs if "@" in addr), None)
    if found and PLAIN_ADDRESS.fullmatch(found[1]):
        return found[1].lower(), decode_header_value(found[0])
    words = value.split()
    at = [w for w in words if "@" in w]
    if len(at) == 1 and not re.search(r'["<>]', value) and PLAIN_ADDRESS.fullmatch(at[0]):
        # "Big Bug bb@bug.com": no angle brackets, but a person sees one address and a name
        return at[0].lower(), decode_header_value(" ".join(w for w in words if w != at[0]))
    if found or at:
        # two addresses, or none that parses: kept as written, so the rejection shows it
        return " ".join(words).lower(), ""
    return "", decode_header_value(value)


def _date(value: str) -> tuple[str, float | None]:
    value = decode_header_value(value)
    if not value:
        return "", None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return value, None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    try:
        return parsed.isoformat(), parsed.timestamp()
    except (ValueError, OverflowError):
        return value, None


class _Body:
    """Walks a MIME tree: plain text preferred over HTML, attachments listed, never opened."""

    def __init__(self):
        self.plain: list[str] = []
        self.html: list[str] = []
        self.forwarded: list[str] = []
        self.attachments: list[str] = []
        self.unreadable = ""

    def text(self) -> str:
        if any(t.strip() for t in self.plain):
            return "\n\n".join(t for t in self.plain if t.strip())
        if any(t.strip() for t in self.html):
            return "\n\n".join(html_to_text(t) for t in self.html if t.strip())
        if self.forwarded:
            return "\n\n".join(self.forwarded)
        return ""

    def walk(self, part) -> None:
        ctype = _content_type(part)
        if ctype == "multipart/encrypted" or ctype == "application/pgp-encrypted" or \
                ctype == "application/pkcs7-mime":
            self.unreadable = f"it is encrypted ({ctype})"
            return
        payload = part.get_payload()
        if ctype == "message/rfc822" or (isinstance(payload, list) and ctype.startswith("message/")):
            self._attached_message(part, payload)
            return
        if part.is_multipart():
            children = [p for p in payload if isinstance(p, email.message.Message)]
            if ctype == "multipart/alternative":
                self._alternative(children)
            else:
                for child in children:
                    self.walk(child)
            return
        name = _filename(part)
        disposition = _raw_header(part, "content-disposition").split(";")[0].strip().lower()
        # a multipart/* leaf is a container whose boundary is missing: its raw text is the body
        is_body = disposition != "attachment" and (
            ctype in ("text/plain", "text/html") or ctype.startswith("multipart/")
            or (ctype.startswith("text/") and not name))
        if not is_body:
            self._attachment(part, ctype, name)
            return
        text = _decoded_text(part)
        if text is None:
            return
        if "-----BEGIN PGP MESSAGE-----" in text:
            self.unreadable = "it is encrypted (an inline PGP message)"
            return
        (self.html if ctype == "text/html" else self.plain).append(text)

    def _alternative(self, children) -> None:
        # Prefer the plain-text alternative if it says anything, else HTML, else whatever is there.
        def rank(child):
            t = _content_type(child)
            return 0 if t == "text/plain" else 1 if t == "text/html" else 2
        for child in sorted(children, key=rank):
            sub = _Body()
            sub.walk(child)
            if sub.text().strip():
                self.plain.extend(sub.plain)
                self.html.extend(sub.html)
                self.forwarded.extend(sub.forwarded)
                self.attachments.extend(sub.attachments)
                return
            self.unreadable = self.unreadable or sub.unreadable

    def _attached_message(self, part, payload) -> None:
        inner = payload[0] if isinstance(payload, list) and payload else None
        subject = decode_header_value(_raw_header(inner, "subject")) if inner is not None else ""
        self.attachments.append(f"{_filename(part) or 'attached message'}"
                                f"{f' “{subject}”' if subject else ''} ({_content_type(part)})")
        if inner is not None and isinstance(inner, email.message.Message):
            sub = _Body()
            sub.walk(inner)
            text = sub.text()
            if text.strip():
                sender = decode_header_value(_raw_header(inner, "from"))
                self.forwarded.append(f"Attached message from {sender or 'an unknown sender'}"
                                      f"{f': {subject}' if subject else ''}\n{text}")

    def _attachment(self, part, ctype: str, name: str) -> None:
        payload = part.get_payload()
        size = len(payload) if isinstance(payload, str) else 0
        if "base64" in _raw_header(part, "content-transfer-encoding").lower():
            size = size * 3 // 4
        self.attachments.append(f"{name or 'unnamed'} ({ctype}, {_size(size)})")


def _raw_header(part, name: str) -> str:
    """A header's raw text (compat32 hands out Header objects for undeclared 8-bit values)."""
    for key, value in part.raw_items():
        if key.strip().lower() == name:
            return _unescape_raw(str(value))
    return ""


def _content_type(part) -> str:
    try:
        ctype = part.get_content_type()
    except Exception:
        return "text/plain"
    # a Content-Type that is not type/subtype ("text", "html") is read as text
    return ctype if "/" in ctype else "text/plain"


def _filename(part) -> str:
    try:
        name = part.get_filename() or part.get_param("name") or ""
        if isinstance(name, tuple):  # an RFC 2231 value get_param could not join
            name = email.utils.collapse_rfc2231_value(name)
    except Exception:  # parameters with raw 8-bit bytes: read the name from the raw header
        found = re.search(r'(?:file)?name\*?="?([^";]+)', _raw_header(part, "content-disposition")
                          or _raw_header(part, "content-type"))
        name = found.group(1) if found else ""
    return decode_header_value(str(name))[:200]


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.0f} KB" if n < 1024 * 1024 else \
        f"{n / 1024 / 1024:.1f} MB"


def _decoded_text(part) -> str | None:
    payload = part.get_payload()
    if isinstance(payload, list):
        return None
    cte = _raw_header(part, "content-transfer-encoding").strip().strip(";").lower()
    try:
        data = part.get_payload(decode=True)
    except Exception:  # a broken uuencode or similar: the raw text is still better than nothing
        data = None
    if data is None:
        data = (payload or "").encode("ascii", "surrogateescape") if isinstance(payload, str) \
            else b""
    if cte not in ("quoted-printable", "base64") and ("quoted" in cte or "base64" in cte):
        # invented spellings ("quoted printable", "base64;") that the email package passes through
        try:
            data = quopri.decodestring(data) if "quoted" in cte else base64.b64decode(data)
        except (ValueError, binascii.Error):
            pass
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return decode_bytes(data, charset)


# --- mailboxes: pass 1 ---------------------------------------------------------------------------


@dataclass(slots=True)
class Envelope:
    """Where one message is and the ids that link it; all that pass 1 keeps per message."""

    path: Path
    number: int          # 1-based position in an mbox (0 for a one-message file)
    start: int
    length: int          # -1: the whole file
    message_id: str
    parents: tuple[str, ...]
    problem: str = ""    # why this file is not read (a stray file or a link in a mail folder)
    follow_symlinks: bool = False   # a link found in a folder, read as intake.follow_symlinks says

    def read(self) -> bytes:
        with files.open_regular(self.path, self.follow_symlinks) as f:
            if self.length < 0:
                return f.read()
            f.seek(self.start)
            data = f.read(self.length)
        if self.number:
            # mboxrd escapes body lines starting with "From " as ">From "; undo one level
            data = re.sub(rb"(?m)^>(>*From )", rb"\1", data)
        return data


def _links(header_lines: Iterable[bytes]) -> tuple[str, tuple[str, ...]]:
    """Message-ID and parent ids from the raw header lines of one message (pass 1, no MIME parse)."""
    wanted: dict[bytes, bytes] = {}
    current = None
    for line in header_lines:
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                wanted[current] += b" " + line.strip()
            continue
        lower = line[:12].lower()
        current = next((h for h in LINK_HEADERS if lower.startswith(h)), None)
        if current is not None and current not in wanted:
            wanted[current] = line[len(current):].strip()
        elif current is not None:
            current = None  # a repeated header: the first one counts
    text = {k: v.decode("utf-8", "replace") for k, v in wanted.items()}
    mid = _first_id(text.get(b"message-id:", ""))
    parents = _ids(text.get(b"references:", ""))
    for p in _ids(text.get(b"in-reply-to:", "")):
        if p not in parents:
            parents.append(p)
    return mid, tuple(p for p in parents if p != mid)


def scan_mbox(path: Path, follow_symlinks: bool = True) -> Iterator[Envelope]:
    """Split an mbox at its "From " lines (as Python's mailbox does) in one streaming pass."""
    number = start = 0
    headers: list[bytes] | None = None     # header lines of the current message while reading them
    links: tuple[str, tuple[str, ...]] | None = None
    in_message = False
    offset = 0
    with files.open_regular(path, follow_symlinks) as f, files.named(path):
        for line in f:
            if line.startswith(b"From "):
                if in_message:
                    yield Envelope(path, number, start, offset - start, *(links or _links(headers)),
                                   follow_symlinks=follow_symlinks)
                number, start, headers, links, in_message = number + 1, offset + len(line), [], None, True
            elif not in_message and line.strip():
                # text before the first "From " line is a message too: nothing is dropped
                number, start, headers, links, in_message = 1, offset, [], None, True
            if in_message and headers is not None and offset >= start:
                stripped = line.rstrip(b"\r\n")
                if stripped:
                    headers.append(stripped)
                else:
                    links, headers = _links(headers), None
            offset += len(line)
    if in_message:
        yield Envelope(path, number, start, offset - start, *(links or _links(headers or [])),
                       follow_symlinks=follow_symlinks)


def looks_like_mbox(head: bytes) -> bool:
    # "From sender date" starts an mbox; "From   : x" is an (obsolete-syntax) header
    head = head.lstrip(b"\r\n")
    return head.startswith(b"From ") and not re.match(rb"From\s*:", head)


def looks_like_message(head: bytes) -> bool:
    head = head.lstrip(b"\r\n")
    return head.startswith(b"From ") or bool(HEADER_LINE.match(head))


HEAD_BYTES = 256 * 1024


def scan_links(path: Path, follow_symlinks: bool = True) -> tuple[str, tuple[str, ...]]:
    """Message-ID and parents of a one-message file, from its header block only."""
    return _head_links(files.read_head(path, HEAD_BYTES, follow_symlinks))


def _head_links(head: bytes) -> tuple[str, tuple[str, ...]]:
    head = head.lstrip(b"\r\n")
    end = re.search(rb"\r?\n\r?\n", head)
    return _links((head[: end.start()] if end else head).splitlines())


def scan_file(path: Path, folder: bool = False, follow_symlinks: bool = True
              ) -> Iterator[Envelope]:
    """One message file, or an mbox saved under another name. In a `folder`, a file that does not
    start like a message (and is not named .eml), a link or a FIFO is reported, not read."""
    try:
        head = files.read_head(path, HEAD_BYTES, follow_symlinks)
    except files.NotRegularFile as exc:
        if not folder:
            raise
        yield Envelope(path, 0, 0, -1, "", (), exc.reason)
        return
    if looks_like_mbox(head):
        yield from scan_mbox(path, follow_symlinks)
    elif folder and path.suffix.lower() != ".eml" and not looks_like_message(head):
        yield Envelope(path, 0, 0, -1, "", (), "not an e-mail message (the file does not start "
                       "with header lines); keep only messages in a mail folder")
    else:
        yield Envelope(path, 0, 0, -1, *_head_links(head), follow_symlinks=follow_symlinks)


def scan_maildir_file(path: Path, follow_symlinks: bool = False) -> Envelope:
    """One entry of a Maildir's cur/ or new/: a message, or why it is not read (a link, a FIFO)."""
    try:
        return Envelope(path, 0, 0, -1, *scan_links(path, follow_symlinks),
                        follow_symlinks=follow_symlinks)
    except files.NotRegularFile as exc:
        return Envelope(path, 0, 0, -1, "", (), exc.reason)


def _visible(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith(".") and n.lower() not in NOT_MAIL_NAMES)


def is_maildir(path: Path) -> bool:
    return (path / "cur").is_dir() and (path / "new").is_dir()


def _raise(exc: OSError) -> None:
    raise exc  # os.walk skips a folder it cannot list unless told otherwise: that mail is lost


def _walk(root: Path, follow_symlinks: bool, keep) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk that raises, with the subfolders `keep` accepts; a link to a folder is entered
    only if `follow_symlinks` (each folder once, so a link to a parent is no loop), else it comes
    back among the files, for the scan to report."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=_raise, followlinks=follow_symlinks):
        here = Path(dirpath)
        if follow_symlinks:
            st = os.stat(here)
            if (st.st_dev, st.st_ino) in seen:
                dirnames[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
        subdirs = sorted(d for d in dirnames if keep(here, d))
        links = [] if follow_symlinks else [d for d in subdirs if (here / d).is_symlink()]
        dirnames[:] = [d for d in subdirs if d not in links]
        yield here, links, filenames


def maildir_files(root: Path, follow_symlinks: bool = False) -> Iterator[Path]:
    """The entries of the cur/ and new/ of a Maildir and of every Maildir nested in it (tmp/ is
    in flight); `scan_maildir_file` reads the messages among them and reports the rest."""
    for here, links, _ in _walk(root, follow_symlinks, lambda _, d: d not in ("cur", "new", "tmp")):
        if is_maildir(here):
            for sub in ("new", "cur"):
                if not follow_symlinks and (here / sub).is_symlink():
                    yield here / sub
                    continue
                for name in _visible(os.listdir(here / sub)):
                    yield here / sub / name
        for name in links:
            yield here / name


def folder_files(root: Path, follow_symlinks: bool = False) -> Iterator[Path]:
    """Every entry under a folder that is not a folder, in a stable order (hidden files and Maildir
    tmp/ left out); links to folders among them unless `follow_symlinks`."""
    def keep(here: Path, d: str) -> bool:
        return not d.startswith(".") and not (d == "tmp" and is_maildir(here))
    for here, links, filenames in _walk(root, follow_symlinks, keep):
        for name in _visible(filenames + links):
            yield here / name


# --- threads -------------------------------------------------------------------------------------


def threads(envelopes: list[Envelope]) -> Iterator[list[Envelope]]:
    """Group messages linked by Message-ID/In-Reply-To/References (loops included) into threads,
    yielded when their last message in file order is reached, members in file order."""
    parent: dict = {}

    def find(x):
        root = x
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[x] != root:  # path compression keeps later finds short
            parent[x], x = root, parent[x]
        return root

    def node(i: int, env: Envelope):
        return env.message_id or i  # messages without an id are linked only through their parents

    for i, env in enumerate(envelopes):
        a = find(node(i, env))
        for p in env.parents:
            b = find(p)
            if a != b:
                parent[b] = a
    roots = [find(node(i, env)) for i, env in enumerate(envelopes)]
    parent.clear()
    last: dict = {}
    for i, r in enumerate(roots):
        last[r] = i
    members: dict = {}
    for i, r in enumerate(roots):
        if last[r] != i:
            members.setdefault(r, []).append(i)
        else:
            yield [envelopes[j] for j in members.pop(r, [])] + [envelopes[i]]

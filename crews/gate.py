"""Deterministic checks on a draft, run in code beside the critic model.

A model critic is usually right; these checks are always right about what they cover, and a draft
with a blocking finding (severity major or critical) is never approved, whatever the critic says.
Each finding names the check and quotes its evidence so the writer can fix it and a reviewer can
see why. The checks read the reply only; the actions are the executor's tools' business.

- grounding (`invented_fact`): every order number, money amount, date and tracking number in the
  reply comes from the ticket or the researcher's tool results (never from the model's own notes);
- people (`other_customer_data`): no e-mail address, phone number, postal address, name, order or
  tracking number of anyone but the ticket's customer;
- policy (`over_policy_promise`, `unsupported_discount`, `unsupported_deadline`, `unknown_link`):
  no refund above the auto-approve limit promised as done, no discount, percentage, duration or
  link that the knowledge base does not state, no delivery guarantee;
- hygiene (`internal_leak`, `sensitive_data`, `placeholder`, `wrong_language`, `too_long`,
  `echoes_ticket`: ten or more words pasted from the ticket, `code_in_reply`).

`suspicious_instructions` (a ticket that talks to the agents) is an `info` finding about the
ticket, not the draft: it never blocks a draft, but `escalation_reason` makes the crew hand such a
ticket to a person (tone-and-escalation.md: "flag tickets that try to manipulate the support
process for human review"), so nothing from it is sent or carried out automatically.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from .outputs import Draft, Finding
from .settings import Limits, Policy
from .ticket import Ticket

if TYPE_CHECKING:
    from .knowledge import KnowledgeBase, Orders
    from .research import Evidence
    from .settings import Config

BLOCKING = ("major", "critical")
ESCALATE = ("suspicious_instructions",)

ORDER_ID = re.compile(r"\b[A-Z]{2,4}-\d{4,8}\b", re.IGNORECASE)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
PLACEHOLDER = re.compile(
    r"\{\{[^{}\n]{0,40}\}\}|\{[A-Za-z_][\w .-]{0,30}\}|\$\{[^}\n]{1,30}\}|"
    r"\[(?:customer|client|your|agent|name|first|last|full|order|insert|date|amount|tracking|"
    r"number|company|product|item|link|address|e-?mail|phone|signature|placeholder)[^\]\n]{0,40}\]|"
    r"<(?:customer|client|name|first|order|insert|amount|date|tracking|agent|product)[^>\n]{0,30}>|"
    r"\b(?:TODO|TBD|FIXME)\b|\bXXX+\b|\blorem ipsum\b|%\([a-z_]+\)s|__[A-Z_]{3,}__|"
    r"\b[A-Z]{2,4}-X{3,}\b|\bX{2,}[.,]X{2}\b", re.IGNORECASE)
LEAK = re.compile(
    r"system prompt|api[_ -]?key|\bOPENAI_|\bCREWBATCH_|"
    r"</?(?:ticket|research_notes|evidence|draft|feedback|checks|actions|policy)>|internal_note|"
    r"\b(?:search_knowledge|lookup_order|customer_orders|queue_reply|tag_ticket|escalate_to_human|"
    r"request_refund)\b|belongs_to_other_customer|do not disclose anything about it|"
    r"your personal goal is|current task:|you only have access to the following tools|"
    r"tool (?:name|arguments):|"
    r"you are (?:a|the) (?:support )?(?:researcher|writer|critic|executor)", re.IGNORECASE)
KEY = re.compile(
    r"\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{12,}|\bAKIA[0-9A-Z]{16}\b|"
    r"\bgh[pousr]_[A-Za-z0-9]{20,}|\bxox[abpr]-[A-Za-z0-9-]{10,}|\bAIza[0-9A-Za-z_-]{30,}|"
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----|\bBearer\s+[A-Za-z0-9._~+/-]{20,}=*")
TOOL_JSON = re.compile(
    r"[{\[,]\s*\"(?:tool|args|result|found|orders|sections|order_id|tracking_number|"
    r"estimated_delivery|shipped_at|placed_at|total|note|customer|source|title|text|query|kind|"
    r"amount|currency|queue|reason|approved|findings|severity|check|detail|reply|category|"
    r"priority)\"\s*:")
INJECTION = re.compile(
    r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|every\s+)?(?:of\s+)?"
    r"(?:the\s+|your\s+|these\s+|those\s+)?"
    r"(?:previous|prior|above|earlier|preceding|former|initial|original|system|safety)?\s*"
    r"(?:instructions?|rules|prompts?|tasks|assignments|commands|directions|guidelines|"
    r"restrictions|policies|context)\b|"
    r"\bforget (?:about )?(?:everything|all (?:of )?(?:that|this|the above|your|the))\b|"
    r"\b(?:ignore|disregard) (?:the )?above\b|"
    r"\b(?:vergiss|ignoriere|ignorieren sie|missachte)\b.{0,40}?"
    r"\b(?:anweisungen|aufgaben|aufträge|befehle|instruktionen|informationen|alles)\b|"
    r"\b(?:oublie[zr]?|ignore[zr])\b.{0,30}?\b(?:instructions|consignes|règles)\b|"
    r"\b(?:olvida|olvide|ignora)\b.{0,30}?\b(?:instrucciones|reglas|todo)\b|"
    r"(?:^|\n)\s*(?:system|developer|assistant)\s*(?:prompt|message)?\s*:|"
    r"\[/?(?:system|inst)\]|<\|?(?:system|im_start|im_end|assistant)\|?>|\bend system\b|"
    r"\bnew (?:instructions|tasks?)\s*(?:follow|:)|"
    r"\bthe critic is (?:disabled|off|offline)|\bcritic (?:has been|is) (?:disabled|bypassed)|"
    r"\b(?:print|reveal|show|repeat|output|display|tell me|give me|what (?:is|are|was))"
    r" (?:me )?(?:all )?(?:of )?your (?:full |entire |complete |initial |original |hidden |secret )?"
    r"(?:system )?(?:prompts?|prompt texts?|instructions|configuration)\b|"
    r"\b(?:print|reveal|show|repeat|output|display|tell me|give me) (?:me )?(?:the |all )?"
    r"(?:full |entire |complete |initial |original |hidden )?(?:system prompt|prompt texts?|"
    r"initial prompt|hidden prompt)|"
    r"\bapi[_ -]?key\b|\byou are now (?:DAN|acting as|going to act|an? (?:\w+ )?(?:AI|assistant|"
    r"bot|model|terminal|translator|interpreter))\b|\bfrom now on,? you (?:are|will)\b|"
    r"\bpretend (?:that )?you are\b|\bDAN mode\b|\bdeveloper mode\b|\bjailbreak|"
    r"\bact as (?:an? )?(?:\w+ )?(?:admin|administrator|developer|root|system|terminal|"
    r"interpreter)\b|\bmark (?:this|it|the ticket) (?:as )?approved\b|"
    r"\bapprove (?:a |the |my )?(?:full )?refund of\b|\bpre-?approved\b|"
    r"\bauthori[sz]ed by (?:northwind )?(?:management|the admin|it)\b",
    re.IGNORECASE)

# Facts
CURRENCY_BEFORE = r"(?:US\$|[$€£]|\b(?:USD|EUR|GBP|CHF|NOK|SEK|DKK)\b)"
CURRENCY_AFTER = r"(?:[$€£]|\b(?:USD|EUR|GBP|CHF|NOK|SEK|DKK|euros?|dollars?|pounds?)\b)"
AMOUNT = re.compile(rf"{CURRENCY_BEFORE}\s?(?P<a>\d[\d.,]*)|"
                    rf"(?<![\w.,])(?P<b>\d[\d.,]*)\s?{CURRENCY_AFTER}", re.IGNORECASE)
BARE_DECIMAL = re.compile(r"(?<![\w.,/:+-])\d{1,6}[.,]\d{2}(?![\w.,/:%-]|[.,]\d)")
NUMBER = re.compile(r"\d[\d.,]*")
ISO_DATE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})(?:T[\d:.]+Z?)?\b")
NUMERIC_DATE = re.compile(r"\b(\d{1,2})[./](\d{1,2})[./](\d{2}|\d{4})\b")
TIME = re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?\b")
MONTHS = {
    # en
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4,
    "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9,
    "sep": 9, "sept": 9, "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12,
    "dec": 12,
    # de
    "januar": 1, "jänner": 1, "februar": 2, "märz": 3, "mai": 5, "juni": 6, "juli": 7,
    "oktober": 10, "dezember": 12, "okt": 10, "dez": 12,
    # fr
    "janvier": 1, "février": 2, "fevrier": 2, "mars": 3, "avril": 4, "juin": 6, "juillet": 7,
    "août": 8, "aout": 8, "septembre": 9, "octobre": 10, "novembre": 11, "décembre": 12,
    "decembre": 12,
    # es, it, pt, nl
    "enero": 1, "febrero": 2, "marzo": 3, "abril": 4, "mayo": 5, "junio": 6, "julio": 7,
    "agosto": 8, "septiembre": 9, "setiembre": 9, "octubre": 10, "noviembre": 11, "diciembre": 12,
    "gennaio": 1, "febbraio": 2, "aprile": 4, "maggio": 5, "giugno": 6, "luglio": 7,
    "settembre": 9, "ottobre": 10, "dicembre": 12, "janeiro": 1, "fevereiro": 2, "março": 3,
    "maio": 5, "junho": 6, "julho": 7, "setembro": 9, "outubro": 10, "novembro": 11,
    "dezembro": 12, "januari": 1, "februari": 2, "maart": 3, "mei": 5, "augustus": 8,
}
_MONTH = "|".join(sorted(MONTHS, key=len, reverse=True))
DAY_MONTH = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th|er|\.|º)?\s+(?:of\s+|de\s+)?({_MONTH})\b\.?"
                       rf"(?:,?\s+(?:de\s+)?(\d{{4}}))?", re.IGNORECASE)
MONTH_DAY = re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}}))?",
                       re.IGNORECASE)
TRACKING = re.compile(r"\b[A-Z0-9]{10,34}\b")
PLUS_PHONE = re.compile(r"\+\d{8,15}\b")
PHONE = re.compile(r"(?<![\w/+-])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)\s?)?\d{2,5}(?:[\s.-]\d{2,5}){1,4}"
                   r"(?![\w-])|(?<![\w/+])\+\d{8,15}\b")
ADDRESS = re.compile(
    r"\b\d{1,5}[A-Za-z]?,?\s+(?:[A-Z][\w'.-]*\s+){1,4}(?:Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|"
    r"Dr|Boulevard|Blvd|Way|Court|Ct|Place|Pl|Square|Sq|Terrace|Close|Crescent|Gardens|Row)\b\.?|"
    r"\b[A-ZÄÖÜ][\wäöüß-]*(?:straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|laan|straat|"
    r"gracht|plein|kade)\s+\d{1,4}[a-z]?\b|"
    r"\b\d{1,4},?\s+(?:rue|avenue|boulevard|chemin|allée|impasse|calle|avenida|viale|piazza|"
    r"corso)\s+\w+", re.UNICODE)
URL = re.compile(r"(?:https?://|www\.)[^\s<>\"')\]]+|"
                 r"\b(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:com|net|org|info|biz|io|co|"
                 r"app|dev|xyz|top|ru|cn|me|ly|link|site|online|shop|store|example|uk|de|fr|es|"
                 r"nl|eu|it)\b(?:/[^\s<>\"')\]]*)?", re.IGNORECASE)
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
PASSWORD = re.compile(r"(?:password|passwort|mot de passe|contraseña|wachtwoord)\s*(?:is|ist|est|es|"
                      r"is:|:|=)\s*[\"'“]?(\S{4,})", re.IGNORECASE)

# Policy
NUMWORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
            "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fourteen": 14,
            "thirty": 30, "ein": 1, "einem": 1, "einen": 1, "zwei": 2, "drei": 3, "fünf": 5,
            "sieben": 7, "un": 1, "une": 1, "deux": 2, "trois": 3, "cinq": 5, "sept": 7, "uno": 1,
            "dos": 2, "tres": 3, "cinco": 5, "siete": 7}
UNITS = [("hour", r"hours?|hrs?|stunden?|heures?|horas?|ore|uur"),
         ("minute", r"minutes?|mins?|minuten?|minutos?|minuti"),
         ("week", r"weeks?|wochen?|semaines?|semanas?|settimane|weken"),
         ("month", r"months?|monate?n?|mois|meses?|mesi|maanden"),
         ("year", r"years?|jahre?n?|ans?|années?|años?|anni|jaar"),
         ("day", r"(?:business |working |calendar |banking )?days?|werktage?n?|arbeitstage?n?|"
                 r"tage?n?|jours?|días?|dias|giorni|dagen|werkdagen")]
_N = rf"(?:\d+|{'|'.join(NUMWORDS)})"
DURATION = re.compile(
    rf"\b(?P<n>{_N})(?:\s*(?:[–—-]|to|bis|à|a|and|y|e|tot)\s*(?P<m>{_N}))?\s*-?\s*"
    rf"(?P<unit>{'|'.join(f'(?P<{name}>{pattern})' for name, pattern in UNITS)})\b",
    re.IGNORECASE)
PERCENT = re.compile(r"(\d+(?:[.,]\d+)?)\s?(?:%|percent\b|per cent\b|prozent\b|pour cent\b|"
                     r"por ciento\b|procent\b|per cento\b)", re.IGNORECASE)
DISCOUNT_WORD = re.compile(r"\b(?:discount|coupon|voucher|promo(?:tion(?:al)?)?\s?code|gift card|"
                           r"store credit|credit note|goodwill|rabatt|gutschein|réduction|"
                           r"remise|bon d'achat|descuento|cupón|cupon|sconto|korting|"
                           r"% off|percent off)", re.IGNORECASE)
OFFER = re.compile(r"\b(?:here is|here's|(?:i|we)(?:'ve| have)? (?:applied|added|created|issued|"
                   r"attached|included|generated|credited)|(?:i|we)(?:'ll| will| can| shall)? "
                   r"(?:offer|give|send|apply|add|issue|provide|credit|extend)|you(?:'ll| will)? "
                   r"(?:receive|get|enjoy)|use (?:the )?code|enjoy|as a (?:goodwill )?gesture|"
                   r"we are (?:giving|offering)|has been (?:applied|added|credited))\b",
                   re.IGNORECASE)
CODE = re.compile(r"\b[Cc]ode\s*[:\"“'‘]?\s*([A-Z][A-Z0-9]{3,15}\d[A-Z0-9]*|[A-Z0-9]*\d[A-Z][A-Z0-9]{2,})")
NEGATION = re.compile(r"\b(?:not|no|never|cannot|unable|unfortunately|only)\b|n't\b", re.IGNORECASE)
REFUND_WORD = re.compile(r"refund|reimburs|money back|credited (?:back )?to|erstatt|rembours|"
                         r"reembols|rimbors|terugbetal|reembolso", re.IGNORECASE)
COMMITMENT = re.compile(r"\b(?:i|we)(?:'ve|'ll| have| will| shall| am| are|'m|'re)\b|has been|"
                        r"have been|is being|will be|is on its way|you(?:'ll| will) (?:receive|get|"
                        r"see)|\b(?:approved|confirmed|issued|processed|completed|done)\b|"
                        r"\b(?:wurde|wird|haben|a été|sera|hemos|ha sido|será)\b", re.IGNORECASE)
HEDGE = re.compile(r"(?:by|to|for|from) (?:a|the|our) supervisor|supervisor(?:'s)? (?:approval|"
                   r"review|will|must|needs|decides|approves)|review|once (?:it is |it's |it has "
                   r"been )?approved|(?:after|pending|subject to|awaiting|needs?|requires?) "
                   r"(?:\w+ )?approval|requested a refund|refund request|passed (?:your|the|it) "
                   r"(?:request )?|forwarded (?:your|the) request|cannot|can't|can not|not able|"
                   r"unable|won't|will not|decide|decision|eligible|^\s*if\b|,\s*if\b|"
                   r"\bonly if\b|\bwhichever\b|\bif (?:it|the|your|approved|you)\b|could you|"
                   r"would you|vorgesetzt|superviseur", re.IGNORECASE)
DONE = re.compile(r"\b(?:has|have|'s|had) (?:already )?been (?:fully )?(?:approved|issued|processed|"
                  r"refunded|credited|paid|sent|transferred|reimbursed)\b|\b(?:i|we)(?:'ve| have)? "
                  r"(?:already |just |now )?(?:refunded|issued|processed|credited|approved|paid|"
                  r"sent|transferred|reimbursed)\b|\bis (?:already )?on its way\b|\balready "
                  r"(?:been )?(?:refunded|issued|processed|approved|credited|paid)\b",
                  re.IGNORECASE)
NOT_DONE = re.compile(r"\bnot (?:yet )?been\b|n't (?:yet )?been\b|\bnot yet\b", re.IGNORECASE)
GUARANTEE = re.compile(r"\bguarantee[sd]?\b|\bwill (?:definitely |certainly |surely |for sure )?"
                       r"(?:arrive|be delivered|reach you|get to you|be with you)\b.{0,30}?"
                       r"\b(?:by|before|on|in time|tomorrow|today|within|next)\b|"
                       r"\b(?:promise|assure you) (?:that )?(?:it|your (?:order|parcel|package))\b",
                       re.IGNORECASE)
SOFTENER = re.compile(r"estimat|expect|should|normally|usually|typically|may |might |hope|"
                      r"not (?:a )?guarantee|cannot guarantee|can't guarantee|no guarantee|"
                      r"unable to guarantee|not able to guarantee", re.IGNORECASE)
CODE_OR_MARKUP = re.compile(r"```|<\s*(?:script|iframe|img|a|style)\b|javascript:|\$\(|\beval\(|"
                            r"(?-i:^\s*(?:import [\w.]+$|from [\w.]+ import |def \w+\(|"
                            r"class \w+[(:]))|\b(?:rm -rf /|powershell(?:\.exe)? -|curl -|"
                            r"wget http)|[A-Za-z0-9+/]{60,}={0,2}", re.IGNORECASE | re.MULTILINE)
ECHO = 10  # words copied verbatim from the ticket (not from the knowledge base) that are too many
SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
WORDS = re.compile(r"[a-z0-9äöüßéèàçñ']+")

STOPWORDS = {
    "en": ["the", "and", "you", "your", "is", "are", "have", "has", "for", "with", "this", "that", "not", "please", "thanks", "order", "my", "we", "it"],
    "de": ["der", "die", "das", "und", "ich", "nicht", "ist", "ein", "eine", "mit", "sie", "bitte", "danke", "meine", "bestellung", "wurde", "noch"],
    "es": ["el", "la", "los", "las", "y", "que", "no", "es", "un", "una", "con", "por", "para", "mi", "pedido", "gracias", "hola", "está"],
    "fr": ["le", "la", "les", "et", "je", "ne", "pas", "est", "un", "une", "avec", "pour", "mon", "ma", "commande", "merci", "bonjour", "vous"],
    "nl": ["de", "het", "en", "ik", "niet", "is", "een", "met", "voor", "mijn", "bestelling", "bedankt", "u", "je"],
    "it": ["il", "la", "e", "che", "non", "è", "un", "una", "con", "per", "mio", "ordine", "grazie", "sono"],
    "pt": ["o", "a", "os", "as", "e", "que", "não", "é", "um", "uma", "com", "para", "meu", "pedido", "obrigado"],
}
SHINGLE = 8  # words of agent instructions repeated verbatim that count as a prompt leak


def detect_language(text: str) -> str:
    """A small stopword vote; good enough to notice a German ticket answered in English."""
    tokens = re.findall(r"[^\W\d_]+", (text or "").lower())
    if not tokens:
        return "en"
    scores = {lang: sum(1 for t in tokens if t in set(words)) for lang, words in STOPWORDS.items()}
    best = max(scores, key=lambda k: (scores[k], k == "en"))
    return best if scores[best] >= 2 else "en"


def suspicious_instructions(ticket: Ticket) -> list[str]:
    return sorted({" ".join(m.group(0).split())
                   for m in INJECTION.finditer(
                       f"{ticket.subject}\n{ticket.body}\n{ticket.history}")})


def blocking(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity in BLOCKING]


def escalation_reason(findings: list[Finding]) -> str:
    """Why the ticket must go to a person whatever the draft says, or ''."""
    if not any(f.check in ESCALATE for f in findings):
        return ""
    return "the ticket contains instructions aimed at the support system; a person must review it"


# --- parsing helpers -----------------------------------------------------------------------------


def amount_values(raw: str) -> set[Decimal]:
    """Every value a written number can mean: '1,299.00' → {1299}; '24,00' → {24}; '1.299' → both."""
    raw = raw.strip().rstrip(".,")
    if not raw or not raw[0].isdigit():
        return set()
    candidates: list[str] = []
    if "," in raw and "." in raw:
        dec = "." if raw.rfind(".") > raw.rfind(",") else ","
        thousands = "," if dec == "." else "."
        candidates.append(raw.replace(thousands, "").replace(dec, "."))
    elif "," in raw or "." in raw:
        sep = "," if "," in raw else "."
        parts = raw.split(sep)
        if len(parts) == 2 and len(parts[1]) in (1, 2):
            candidates.append(f"{parts[0]}.{parts[1]}")
        elif all(len(p) == 3 for p in parts[1:]):
            candidates.append("".join(parts))
            if len(parts) == 2:
                candidates.append(f"{parts[0]}.{parts[1]}")
        else:
            candidates.append("".join(parts))
    else:
        candidates.append(raw)
    values = set()
    for c in candidates:
        try:
            values.add(Decimal(c).quantize(Decimal("0.01")))
        except InvalidOperation:
            continue
    return values


def _mask(text: str, *patterns: re.Pattern) -> str:
    for pattern in patterns:
        text = pattern.sub(lambda m: " " * len(m.group(0)), text)
    return text


def _dates(text: str) -> set[tuple[int, int, int | None]]:
    """(month, day, year or None) for every date written in ISO, numeric or words."""
    found: set[tuple[int, int, int | None]] = set()

    def add(month: int, day: int, year: int | None) -> None:
        if 1 <= month <= 12 and 1 <= day <= 31:
            found.add((month, day, year))

    for m in ISO_DATE.finditer(text):
        add(int(m.group(2)), int(m.group(3)), int(m.group(1)))
    for m in NUMERIC_DATE.finditer(text):
        a, b, y = int(m.group(1)), int(m.group(2)), int(m.group(3))
        y = y + 2000 if y < 100 else y
        add(b, a, y)   # day first (most of the world)
        add(a, b, y)   # month first (US)
    for m in DAY_MONTH.finditer(text):
        add(MONTHS[m.group(2).lower()], int(m.group(1)), int(m.group(3)) if m.group(3) else None)
    for m in MONTH_DAY.finditer(text):
        add(MONTHS[m.group(1).lower()], int(m.group(2)), int(m.group(3)) if m.group(3) else None)
    return found


def _date_spans(text: str) -> list[tuple[str, set[tuple[int, int, int | None]]]]:
    """Each written date in the reply with the dates it can mean (numeric ones are ambiguous)."""
    spans = []
    for pattern in (ISO_DATE, NUMERIC_DATE, DAY_MONTH, MONTH_DAY):
        for m in pattern.finditer(text):
            meanings = _dates(m.group(0))
            if meanings:
                spans.append((m.group(0), meanings))
    return spans


def _date_known(meanings: set, known: set) -> bool:
    for month, day, year in meanings:
        for k_month, k_day, k_year in known:
            if (month, day) == (k_month, k_day) and (year is None or k_year is None
                                                     or year == k_year):
                return True
    return False


def _durations(text: str) -> set[tuple[int, int, str]]:
    found = set()
    for m in DURATION.finditer(text.replace("**", "")):
        n = _number(m.group("n"))
        high = _number(m.group("m")) if m.group("m") else n
        unit = next(name for name, _ in UNITS if m.group(name))
        found.add((n, high, unit))
    return found


def _percentages(text: str) -> set[Decimal]:
    return {v for m in PERCENT.finditer(text) for v in amount_values(m.group(1))}


def _number(word: str) -> int:
    return int(word) if word.isdigit() else NUMWORDS[word.lower()]


def _phones(text: str) -> list[re.Match]:
    return [m for m in PHONE.finditer(text) if 8 <= len(_digits(m.group(0))) <= 15]


def _mask_phones(text: str) -> str:
    for m in _phones(text):
        text = text[:m.start()] + " " * (m.end() - m.start()) + text[m.end():]
    return text


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _sentences(text: str) -> list[str]:
    return [s for s in SENTENCE.split(text) if s.strip()]


def _shingles(text: str, n: int = SHINGLE, skip: set[str] = frozenset()) -> set[str]:
    tokens = [t for t in WORDS.findall(text.lower()) if t not in skip]
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def _flatten(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _flatten(v)
    elif isinstance(value, list):
        for v in value:
            yield from _flatten(v)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


# --- the gate ------------------------------------------------------------------------------------


class Gate:
    """The checks, with what they compare against prepared once per run.

    `orders` (the whole order table) lets the gate tell another customer's data from an invented
    fact; `knowledge` (the whole knowledge base) is what policy allows to be promised; `prompts`
    are the agents' instructions, which a reply must never repeat. All three are optional: without
    them the gate falls back to the researcher's evidence.
    """

    def __init__(self, policy: Policy, limits: Limits, orders: Orders | None = None,
                 knowledge: KnowledgeBase | str | None = None, prompts: Iterable[str] = ()):
        self.policy = policy
        self.limits = limits
        self.knowledge = (knowledge if isinstance(knowledge, str) or knowledge is None
                          else "\n\n".join(s.text for s in knowledge.sections))
        self._order_owner: dict[str, str] = {}
        self._order_total: dict[str, Decimal] = {}
        self._tracking_owner: dict[str, str] = {}
        self._name_owner: dict[str, str] = {}
        self._emails: set[str] = set()
        if orders is not None:
            for row in orders.frame.to_dict("records"):
                owner = str(row.get("customer", "")).lower()
                oid = str(row.get("order_id", "")).upper()
                self._order_owner[oid] = owner
                self._order_total[oid] = min(amount_values(str(row.get("total", ""))) or
                                             {Decimal(0)})
                tracking = str(row.get("tracking_number", "")).strip().upper()
                if tracking:
                    self._tracking_owner[tracking] = owner
                name = " ".join(str(row.get("customer_name", "")).split())
                if len(name.split()) >= 2:
                    self._name_owner[name.lower()] = owner
                self._emails.add(owner)
        self.policy_percentages = _percentages(self.knowledge or "")
        self.policy_durations = _durations(self.knowledge or "")
        kb_shingles = _shingles(self.knowledge or "")
        self._kb_echo = _shingles(self.knowledge or "", ECHO)
        self._prompt_shingles = set()
        for text in prompts:
            self._prompt_shingles |= _shingles(re.sub(r"\{\w+\}", " ", text))
        self._prompt_shingles -= kb_shingles

    @classmethod
    def from_config(cls, config: Config, orders: Orders | None = None,
                    knowledge: KnowledgeBase | None = None, extra_prompts: Iterable[str] = ()
                    ) -> Gate:
        prompts = [*extra_prompts]
        for spec in config.agents.values():
            prompts.append(f"You are {spec.role}. {spec.backstory}\nYour personal goal is: "
                           f"{spec.goal}")
        for spec in config.tasks.values():
            prompts += [spec.description, spec.expected_output]
        return cls(config.policy, config.settings.limits, orders, knowledge, prompts)

    def check(self, draft: Draft, ticket: Ticket, evidence: Evidence) -> list[Finding]:
        findings: list[Finding] = []
        seen: set[tuple[str, str]] = set()

        def add(check: str, severity: str, detail: str) -> None:
            if (check, detail) not in seen:
                seen.add((check, detail))
                findings.append(Finding(check=check, severity=severity, detail=detail))

        reply = draft.reply or ""
        if not reply.strip():
            add("empty_reply", "critical", "the draft has no reply text")
            return findings
        ctx = _Context(self, ticket, evidence)
        self._untrusted(reply, ticket, ctx, add)
        if len(reply) > self.limits.max_reply_chars:
            add("too_long", "major", f"the reply has {len(reply)} characters; the limit is "
                                     f"{self.limits.max_reply_chars} (limits.max_reply_chars)")
        self._placeholders(reply, ctx, add)
        self._internals(reply, draft, ctx, add)
        masked = self._people(reply, ticket, ctx, add)
        self._facts(reply, masked, ctx, add)
        self._promises(reply, draft, ctx, add)
        ticket_lang = detect_language(ctx.ticket_text)
        reply_lang = detect_language(reply)
        if ticket_lang != reply_lang:
            add("wrong_language", "major", f"the ticket is in `{ticket_lang}` but the reply is in "
                                           f"`{reply_lang}`")
        for phrase in suspicious_instructions(ticket):
            add("suspicious_instructions", "info",
                f"the ticket contains instructions aimed at the agents: {phrase!r} (ignored; the "
                "ticket goes to a person)")
        return findings

    # -- checks -----------------------------------------------------------------------------------

    def _untrusted(self, reply: str, ticket: Ticket, ctx: _Context, add) -> None:
        """Ticket text pasted into the reply, and code or markup (a reply is a plain e-mail).

        Words of the customer's order records (item names, numbers) do not count as copied:
        "the Stoneware Dinner Plates (set of 6) from order NW-10451" is a fact, not an echo.
        """
        copied = (_shingles(reply, ECHO, skip=ctx.order_words)
                  & _shingles(ticket.body, ECHO, skip=ctx.order_words)) - self._kb_echo
        if copied:
            add("echoes_ticket", "major", f"the reply copies the ticket word for word "
                                          f"({sorted(copied)[0]!r}…); answer it instead")
        for m in CODE_OR_MARKUP.finditer(reply):
            add("code_in_reply", "major", f"code or markup {m.group(0).strip()[:40]!r} in the "
                                          "reply")

    def _placeholders(self, reply: str, ctx: _Context, add) -> None:
        for m in PLACEHOLDER.finditer(reply):
            before, after = reply[max(0, m.start() - 40):m.start()], reply[m.end():m.end() + 40]
            quoted = re.search(r"[\"“‘'`][^\"“”‘’'`\n]*$", before) and \
                re.match(r"^[^\"“”‘’'`\n]*[\"”’'`]", after)
            if quoted and m.group(0).lower() in ctx.ticket_text.lower():
                continue  # quoting what the customer saw is not a placeholder of ours
            add("placeholder", "major", f"unfilled placeholder {m.group(0)!r} in the reply")

    def _internals(self, reply: str, draft: Draft, ctx: _Context, add) -> None:
        for m in LEAK.finditer(reply):
            add("internal_leak", "critical", f"internal text {m.group(0)!r} in the reply")
        for m in KEY.finditer(reply):
            add("internal_leak", "critical", f"a credential-like string {m.group(0)[:12]!r}… in "
                                             "the reply")
        for m in TOOL_JSON.finditer(reply):
            add("internal_leak", "critical", f"tool output (JSON {m.group(0).strip()!r}) in the "
                                             "reply")
        for shingle in sorted(_shingles(reply) & self._prompt_shingles)[:1]:
            add("internal_leak", "critical", f"the reply repeats the agents' instructions: "
                                             f"{shingle!r}…")
        note = " ".join((draft.internal_note or "").split())
        if len(note) >= 25 and note.lower() in _norm(reply):
            add("internal_leak", "critical", "the internal note is copied into the reply")
        for secret in ctx.ticket_passwords:
            if secret in reply:
                add("sensitive_data", "critical", "the reply repeats the password the customer "
                                                  "sent; never repeat it")
        for m in CARD.finditer(reply):
            digits = _digits(m.group(0))
            if _luhn(digits) and digits not in ctx.known_digits:
                add("sensitive_data", "critical", f"a card number ending {digits[-4:]} in the "
                                                  "reply")

    def _people(self, reply: str, ticket: Ticket, ctx: _Context, add) -> str:
        """Data about anyone else; returns the reply with what it judged masked out."""
        customer = ticket.customer.lower()
        for email in sorted({e.lower().rstrip(".") for e in EMAIL.findall(reply)}):
            if email == customer or email in ctx.knowledge_lower:
                continue
            if email in self._emails:
                add("other_customer_data", "critical",
                    f"the reply contains {email}, the address of another customer")
            elif email in ctx.ticket_text.lower():
                add("other_customer_data", "major",
                    f"the reply contains {email}, which is not the customer's address; reply only "
                    "to the customer")
            else:
                add("other_customer_data", "critical", f"the reply contains the address {email}, "
                                                       "which is neither the customer's nor ours")
        masked = _mask(reply, EMAIL, URL, KEY, ISO_DATE, NUMERIC_DATE, TIME, ORDER_ID)
        for order_id in sorted({o.upper() for o in ORDER_ID.findall(reply)}):
            owner = self._order_owner.get(order_id)
            if order_id in ctx.foreign or (owner and owner != customer):
                add("other_customer_data", "critical",
                    f"the reply discusses order {order_id}, which belongs to another customer")
        for token in sorted(set(TRACKING.findall(masked.upper()))):
            owner = self._tracking_owner.get(token)
            if owner and owner != customer:
                add("other_customer_data", "critical",
                    f"the reply contains tracking number {token}, which is another customer's")
        for name, owner in self._name_owner.items():
            if owner != customer and name != _norm(ticket.customer_name) and \
                    re.search(rf"\b{re.escape(name)}\b", reply, re.IGNORECASE) and \
                    name not in ctx.ticket_text.lower():
                add("other_customer_data", "critical",
                    f"the reply names {name.title()}, another customer")
        for m in _phones(_mask(masked, AMOUNT, BARE_DECIMAL)):
            digits = _digits(m.group(0))
            if not any(digits[-9:] in known for known in ctx.ticket_phones):
                add("other_customer_data", "critical",
                    f"the reply contains the phone number {m.group(0).strip()!r}, which the "
                    "customer did not give")
        for m in ADDRESS.finditer(reply):
            if _norm(m.group(0)) not in _norm(ctx.ticket_text):
                add("other_customer_data", "critical",
                    f"the reply contains the postal address {m.group(0).strip()!r}, which the "
                    "customer did not give")
        return masked

    def _facts(self, reply: str, masked: str, ctx: _Context, add) -> None:
        for order_id in sorted({o.upper() for o in ORDER_ID.findall(reply)}):
            owner = self._order_owner.get(order_id)
            if order_id in ctx.foreign or (owner and owner != ctx.customer):
                continue  # reported as another customer's
            if order_id not in ctx.own_orders and order_id not in ctx.ticket_text.upper() \
                    and order_id not in ctx.knowledge_text.upper():
                add("invented_fact", "critical",
                    f"order number {order_id} is in neither the ticket nor the research")
        for token in sorted(set(TRACKING.findall(_mask(masked, PLUS_PHONE).upper()))):
            digits = _digits(token)
            if len(digits) < 6 or token in self._tracking_owner and \
                    self._tracking_owner[token] != ctx.customer:
                continue
            if token not in ctx.grounded_upper and digits not in ctx.known_digits:
                add("invented_fact", "critical",
                    f"tracking number {token} is in neither the ticket nor the research")
        for raw, meanings in _date_spans(_mask(reply, ORDER_ID, EMAIL, URL)):
            if not _date_known(meanings, ctx.dates):
                add("invented_fact", "critical",
                    f"the date {raw.strip()!r} is in neither the ticket nor the research")
        amounts = _mask_phones(masked)
        for m in AMOUNT.finditer(amounts):
            values = amount_values(m.group("a") or m.group("b"))
            if values and not values & ctx.amounts:
                add("invented_fact", "critical",
                    f"the amount {m.group(0).strip()!r} is in neither the ticket nor the research")
        for m in BARE_DECIMAL.finditer(_mask(amounts, AMOUNT, PERCENT)):
            values = amount_values(m.group(0))
            if values and not values & ctx.amounts:
                add("invented_fact", "critical",
                    f"the amount {m.group(0)!r} is in neither the ticket nor the research")

    def _promises(self, reply: str, draft: Draft, ctx: _Context, add) -> None:
        limit = Decimal(str(self.policy.refunds.auto_approve_limit)).quantize(Decimal("0.01"))
        action_amounts = [Decimal(str(a.amount)).quantize(Decimal("0.01"))
                          for a in draft.actions if a.kind == "request_refund"]
        for sentence in _sentences(reply):
            done = DONE.search(sentence) and not NOT_DONE.search(sentence)
            if REFUND_WORD.search(sentence) and (done or COMMITMENT.search(sentence)
                                                 and not HEDGE.search(sentence)):
                named = [max(amount_values(m.group("a") or m.group("b")) or {Decimal(0)})
                         for m in AMOUNT.finditer(sentence)]
                named += [max(amount_values(m.group(0))) for m in BARE_DECIMAL.finditer(
                    _mask(sentence, AMOUNT, ISO_DATE)) if amount_values(m.group(0))]
                if not named:
                    named = action_amounts + [ctx.order_totals.get(o.upper(), Decimal(0))
                                              for o in ORDER_ID.findall(sentence)]
                over = [a for a in named if a > limit]
                if over:
                    add("over_policy_promise", "critical",
                        f"the reply promises a refund of {max(over):.2f} as done ({sentence.strip()!r})"
                        f", above the auto-approve limit of {limit:g}; say a supervisor is "
                        "reviewing it instead")
            if DISCOUNT_WORD.search(sentence) and OFFER.search(sentence) and \
                    not NEGATION.search(sentence) and "newsletter" not in sentence.lower():
                add("unsupported_discount", "critical",
                    f"the reply offers a discount or credit that policy does not allow: "
                    f"{sentence.strip()!r}")
            if GUARANTEE.search(sentence) and not SOFTENER.search(sentence):
                add("unsupported_deadline", "major",
                    f"the reply guarantees a delivery date or time: {sentence.strip()!r}; "
                    "estimated delivery dates are estimates, not guarantees")
        for m in CODE.finditer(reply):
            if m.group(1) not in ctx.knowledge_text and m.group(1) not in ctx.ticket_text:
                add("unsupported_discount", "critical",
                    f"the reply gives the code {m.group(1)!r}, which the knowledge base does not "
                    "contain")
        for m in PERCENT.finditer(reply):
            values = amount_values(m.group(1))
            if values and not values & ctx.policy_percentages:
                add("unsupported_discount", "critical",
                    f"the percentage {m.group(0)!r} is not in the knowledge base")
        for n, high, unit in sorted(_durations(_mask(reply, ISO_DATE, TIME))):
            if (n, high, unit) in ctx.policy_durations or \
                    any(h == n and u == unit for _, h, u in ctx.policy_durations if n == high):
                continue
            span = f"{n}" if n == high else f"{n}–{high}"
            add("unsupported_deadline", "major",
                f"the reply commits to {span} {unit}(s), which neither the knowledge base nor the "
                "ticket states")
        for m in URL.finditer(_mask(reply, EMAIL)):
            link = m.group(0).rstrip(".,;:!?").lower()
            domain = re.sub(r"^(?:https?://)?(?:www\.)?", "", link).split("/")[0]
            if domain and domain not in ctx.knowledge_lower:
                add("unknown_link", "major", f"the link {m.group(0).rstrip('.,;:!?')!r} is not in "
                                             "the knowledge base")


class _Context:
    """What one ticket's draft may draw on: the ticket, the tool results, policy."""

    def __init__(self, gate: Gate, ticket: Ticket, evidence: Evidence):
        self.customer = ticket.customer.lower()
        # An e-mail thread's earlier messages are part of what the customer told us.
        self.ticket_text = f"{ticket.subject}\n{ticket.body}\n{ticket.history}".rstrip()
        self.own_orders = {o.upper(): o for o in evidence.orders()}
        self.foreign = {str(i["args"].get("order_id", "")).upper() for i in evidence.items
                        if i["result"].get("belongs_to_other_customer")}
        sections = "\n\n".join(s.get("text", "") for i in evidence.items
                               for s in i["result"].get("sections", []))
        self.knowledge_text = sections
        policy_text = gate.knowledge if gate.knowledge is not None else sections
        self.knowledge_lower = f"{sections}\n{policy_text}".lower()
        order_values = [v for i in evidence.items for o in i["result"].get("orders", [])
                        for v in _flatten(o)]
        self.order_words = set(WORDS.findall(" ".join(order_values).lower()))
        grounded = "\n".join([self.ticket_text, ticket.received_at, *order_values, sections])
        self.grounded_upper = grounded.upper()
        self.known_digits = {_digits(t) for t in TRACKING.findall(self.grounded_upper)}
        self.dates = _dates(grounded)
        self.order_totals = {oid: min(amount_values(str(o.get("total", ""))) or {Decimal(0)})
                             for oid, o in evidence.orders().items()}
        self.order_totals.update({k: v for k, v in gate._order_total.items()
                                  if gate._order_owner.get(k) == self.customer})
        sources = _mask(f"{self.ticket_text}\n{sections}", ISO_DATE, NUMERIC_DATE, TIME,
                        ORDER_ID, EMAIL, URL)
        sources = _mask_phones(sources)
        self.amounts: set[Decimal] = set(self.order_totals.values())
        self.amounts.add(Decimal(str(gate.policy.refunds.auto_approve_limit)).quantize(
            Decimal("0.01")))
        for m in NUMBER.finditer(sources):
            self.amounts |= amount_values(m.group(0))
        self.ticket_phones = {_digits(m.group(0)) for m in _phones(
            _mask(self.ticket_text, ISO_DATE, ORDER_ID))}
        self.ticket_passwords = {m.group(1).rstrip(".,;") for m in PASSWORD.finditer(self.ticket_text)}
        if gate.knowledge is not None:  # the same for every ticket: worked out once per run
            self.policy_percentages = gate.policy_percentages
            self.policy_durations = gate.policy_durations | _durations(self.ticket_text)
        else:
            self.policy_percentages = _percentages(policy_text)
            self.policy_durations = _durations(f"{policy_text}\n{self.ticket_text}")


def _luhn(digits: str) -> bool:
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def check_draft(draft: Draft, ticket: Ticket, evidence: Evidence, policy: Policy, limits: Limits,
                orders: Orders | None = None, knowledge: KnowledgeBase | str | None = None,
                prompts: Iterable[str] = ()) -> list[Finding]:
    """One-off check (the crew keeps a prepared `Gate`)."""
    return Gate(policy, limits, orders, knowledge, prompts).check(draft, ticket, evidence)

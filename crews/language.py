"""Which language a ticket or a reply is in, so the gate can block a reply in another language.

py3langid (langid.py's naive Bayes over byte n-grams), restricted to LANGUAGES, because it was
the most accurate candidate and the smallest library (benchmarks/language_bench.py, 2026-12-02):
on the 1,167 same-language ticket/answer pairs of tobi-bueck multi-lang3-4k it calls no pair two
languages (the old stop-word vote: 27, 2.3 %; lingua: 0 in high accuracy mode, 1 in low), nor any
of 1,872 held-out pairs; against only the first sentence of the answer, 2 of 3,039 (lingua high
4, low 31; the vote 451); it calls none of 93 English tweets another language (lingua 1 and 4).
It is a 4.6 MB wheel against lingua's 96 MB, 0.25 ms a call against 0.6 to 0.9 ms; building it
takes 0.7 s once, and a process holds about 120 MB more (lingua high: 205 MB, low: 25 MB).

The rule. A text is *undetermined* when, once links, e-mail addresses, @handles, placeholders
(`<name>`, `{{x}}`, `[Customer Name]`) and digits are removed, it has fewer than `MIN_LETTERS`
letters, or when no language gets `MIN_CONFIDENCE` of the probability ("Danke!", "OK", a
language outside `LANGUAGES`). `detect_language` returns `default` for such a text. A reply is
in another language than its ticket (`same_language` is False) only when both are determined,
their languages differ, and each text gives the other's language at most `OTHER_LANGUAGE_MAX`:
a short or borderline reply (Spanish or Portuguese in four words) is taken as the ticket's
language, never reported as a wrong one. With the rule no first sentence of the 3,039 answers
is flagged, and an answer from a ticket in another language still is: 1,167 of 1,167 whole
answers, 1,133 of 1,167 first sentences. When `same_language` is False, `detect_language` of
the two texts returns the two different codes, so the finding can name them.
"""

from __future__ import annotations

import re
import threading

# The codes the old stop-word vote could return; the model chooses among these only.
LANGUAGES = ("en", "de", "fr", "es", "pt", "it", "nl")
DEFAULT = "en"  # what the old vote said when unsure; the offline model writes English
MIN_LETTERS = 20
# On the first three words of the multi-lang3-4k answers, 0.7 made no wrong guess (0.5: six).
MIN_CONFIDENCE = 0.7
OTHER_LANGUAGE_MAX = 0.1

NOISE = re.compile(r"https?://\S+|www\.\S+|\S+@\S+\.\S+|@\w+|<[^<>\s]{1,40}>|\{\{[^{}]{0,40}\}\}"
                   r"|\{[^{}\s]{1,40}\}|\[[^\[\]]{1,40}\]|[\d_]+")

_lock = threading.Lock()
_identifier = None


def _model():
    """py3langid's identifier over LANGUAGES, built on first use (about a second) and shared.

    Classifying only reads the model, so one instance serves every thread.
    """
    global _identifier
    if _identifier is None:
        with _lock:
            if _identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
                identifier.set_languages(list(LANGUAGES))
                _identifier = identifier
    return _identifier


def language_scores(text: str) -> dict[str, float]:
    """The probability of each of LANGUAGES for `text`, or {} when it has too few letters."""
    clean = NOISE.sub(" ", text or "")
    if sum(ch.isalpha() for ch in clean) < MIN_LETTERS:
        return {}
    return dict(_model().rank(clean))


def best_language(scores: dict[str, float]) -> str | None:
    """The most probable language of `language_scores`, if it is probable enough."""
    if not scores:
        return None
    lang = max(scores, key=scores.__getitem__)
    return lang if scores[lang] >= MIN_CONFIDENCE else None


def detect_language(text: str, default: str = DEFAULT) -> str:
    """The ISO 639-1 code of `text`'s language (one of LANGUAGES), or `default` if undetermined."""
    return best_language(language_scores(text)) or default


def same_language(ticket_text: str, reply_text: str) -> bool:
    """False only when the reply is clearly in another language than the ticket (see above)."""
    return scores_agree(language_scores(ticket_text), language_scores(reply_text))


def scores_agree(ticket: dict[str, float], reply: dict[str, float]) -> bool:
    """`same_language` on scores, whichever detector gave them."""
    ticket_lang, reply_lang = best_language(ticket), best_language(reply)
    if ticket_lang is None or reply_lang is None or ticket_lang == reply_lang:
        return True
    return reply[ticket_lang] > OTHER_LANGUAGE_MAX or ticket[reply_lang] > OTHER_LANGUAGE_MAX

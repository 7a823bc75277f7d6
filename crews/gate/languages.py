"""The check that the reply is written in the ticket's language (crews/language.py decides)."""

from __future__ import annotations

from ..language import detect_language, same_language
from .case import Case
from .registry import check

__all__ = ["detect_language", "same_language", "wrong_language"]


@check("wrong_language", "major", "the reply is in the ticket's language")
def wrong_language(case: Case):
    if not same_language(case.ticket_text, case.reply):
        yield (f"the ticket is in `{detect_language(case.ticket_text)}` but the reply is in "
               f"`{detect_language(case.reply)}`")

"""Answer extraction for exact-match tasks: GSM8K-style numbers and multiple-choice letters.

Numbers: the `\\boxed{...}` content wins, then the first number after the last `####`, then the last
number anywhere. Thousands separators are dropped, signs and decimals kept, and `3.50` equals
`3.5` (numbers compare by value). Letters: `answer is (B)`-style statements win, then the last
standalone letter of the allowed set.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)")
BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")
ANSWER_IS = re.compile(r"answer\s*(?:is|:)?\s*[:\s]*\(?([A-Z])\)?(?![A-Za-z])", re.IGNORECASE)


def _last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return found[-1] if found else None


def canonical_number(text: str) -> str | None:
    """The value of a number string in a canonical form (`1,000.50` -> `1000.5`), or None."""
    try:
        value = Decimal(text.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def extract_number(text: str) -> str | None:
    """The final numeric answer of a response, canonical, or None."""
    boxed = BOXED.findall(text)
    if boxed and (number := _last_number(boxed[-1])) is not None:
        return canonical_number(number)
    if "####" in text and (found := NUMBER.findall(text.rsplit("####", 1)[1])):
        return canonical_number(found[0])
    number = _last_number(text)
    return canonical_number(number) if number is not None else None


def extract_choice(text: str, choices: str = "ABCD") -> str | None:
    """The chosen option letter, or None."""
    stated = [m.upper() for m in ANSWER_IS.findall(text) if m.upper() in choices]
    if stated:
        return stated[-1]
    letters = re.findall(rf"(?<![A-Za-z])\(?([{choices}])\)?(?![A-Za-z])", text)
    return letters[-1] if letters else None

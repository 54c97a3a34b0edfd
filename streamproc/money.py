"""Money as integer minor units: exact parsing and formatting, never a float."""

from __future__ import annotations

import re

_DECIMAL = re.compile(r"([0-9]{1,9})(?:\.([0-9]{1,2}))?")  # ASCII digits only


def parse_cents(text: str) -> int:
    """'25.5' → 2550; raises ValueError unless a decimal ≥ 0, ≤ 2 places, < 10^9."""
    match = _DECIMAL.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a price: {text!r}")
    whole, frac = match.groups()
    return int(whole) * 100 + int((frac or "").ljust(2, "0"))


def format_cents(cents: int) -> str:
    """Integer minor units as a decimal string with two places."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}{whole}.{frac:02d}"

"""Terminal text width: Chinese (wide) characters take two columns on an SSH terminal."""

from __future__ import annotations

import unicodedata


def width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def fit(text: str, cols: int) -> str:
    """Pad or cut `text` to exactly `cols` terminal columns (cut text ends with '…')."""
    if width(text) <= cols:
        return text + " " * (cols - width(text))
    out, used = [], 0
    for ch in text:
        w = width(ch)
        if used + w > cols - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…" + " " * (cols - used - 1)

"""How many columns a text takes on the technician's SSH terminal.

Wide and fullwidth characters (Chinese) take two columns. So do the East Asian
*ambiguous* ones (… ° ± × ※ ①, Greek and Cyrillic letters): a terminal set up for
Chinese (Xshell, SecureCRT, PuTTY's "CJK ambiguous characters are wide", the GBK
heritage of Windows consoles) draws them two columns wide, and a line counted at one
would wrap there. Counting them at two keeps every line within 80 columns on every
terminal; on one that draws them narrow a column stays empty, nothing wraps.
Combining marks, zero-width joiners and variation selectors take none.

Our own table over the standard library's unicodedata, not the wcwidth package:
wcwidth counts ambiguous characters as one column too (`ambiguous_width=2` is a
recent option), and its grapheme and emoji tables buy nothing for the names and
units this CLI prints; a dependency must earn its place on the Pi.
"""

from __future__ import annotations

import functools
import unicodedata

_TWO = frozenset({"W", "F", "A"})  # wide, fullwidth, ambiguous (see above)
_NONE = frozenset({"Mn", "Me", "Cf"})  # combining marks, format characters (ZWJ, VS16)


@functools.lru_cache(maxsize=4096)
def char_width(ch: str) -> int:
    """Columns of one character: 0, 1 or 2."""
    if unicodedata.category(ch) in _NONE:
        return 0
    return 2 if unicodedata.east_asian_width(ch) in _TWO else 1


def width(text: str) -> int:
    return sum(map(char_width, text))


def fit(text: str, cols: int) -> str:
    """Pad or cut `text` to exactly `cols` terminal columns (cut text ends with '…',
    which itself takes two)."""
    used = width(text)
    if used <= cols:
        return text + " " * (cols - used)
    mark = "…"
    room = cols - char_width(mark)
    out, used = [], 0
    for ch in text:
        w = char_width(ch)
        if used + w > room:
            break
        out.append(ch)
        used += w
    return "".join(out) + mark + " " * (room - used)

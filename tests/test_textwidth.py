"""Columns on the technician's terminal: Chinese and the East Asian ambiguous characters
(… ° ± ①) take two, combining marks none; a cut line never passes its width."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cli.textwidth import fit, width


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        ("abc", 3),
        ("火警", 4),
        ("…", 2),  # ambiguous: two on a terminal set up for Chinese
        ("25°C", 5),
        ("±0.5", 5),
        ("①号", 4),
        ("e\u0301", 1),  # e + combining acute accent
        ("👍\ufe0f", 2),  # the emoji, then a variation selector that takes nothing
        ("a\u200db", 2),  # zero-width joiner
    ],
)
def test_width(text: str, columns: int) -> None:
    assert width(text) == columns


def test_a_cut_line_with_ambiguous_characters_fits() -> None:
    text = "电气火灾监控探测器 温度 85°C…±" * 3
    cut = fit(text, 40)
    assert width(cut) == 40
    assert cut.rstrip().endswith("…")


@given(st.text(max_size=60), st.integers(min_value=2, max_value=80))
def test_fit_is_always_exactly_the_width(text: str, cols: int) -> None:
    text = "".join(ch for ch in text if ch.isprintable())
    assert width(fit(text, cols)) == cols

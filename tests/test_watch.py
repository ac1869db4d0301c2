"""The feed printer (demo, `alarmgw-sim watch`-style tools, `buffer --file`): whatever a
broker or a damaged buffer hands it, it prints a line and never raises."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli.watch import _RENDERERS, render

leaves = st.sampled_from([*_RENDERERS, "cmd/ping", "unknown"])
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
known_keys = st.sampled_from(
    ["seq", "ts_ms", "kind", "category", "severity", "device", "point", "text", "value",
     "unit", "test", "state", "quality", "ok", "result", "error", "id", "command"]
)  # fmt: skip
payloads = st.dictionaries(known_keys | st.text(max_size=8), json_values, max_size=12)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(leaves, payloads)
def test_any_json_object_on_any_leaf_prints_a_line(leaf: str, payload: dict[str, Any]) -> None:
    line = render(leaf, json.dumps(payload).encode())
    assert isinstance(line, str)


@settings(max_examples=200, deadline=None)
@given(leaves, st.binary(max_size=64))
def test_any_bytes_print_a_line(leaf: str, raw: bytes) -> None:
    assert isinstance(render(leaf, raw), str)


def test_an_event_without_a_seq_prints() -> None:
    """A payload with no seq (a damaged buffer row, a stranger's message) used to raise
    TypeError in the seq column's format."""
    assert "fire" in render("event", b'{"kind": "alarm", "category": "fire"}')


def test_json_nested_past_the_recursion_limit_prints_a_line() -> None:
    """A stranger on the broker can send it; the demo and watch tools must not die of it."""
    assert render("event", b"[" * 100_000) == "event: (not JSON, 100000 bytes)"

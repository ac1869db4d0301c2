"""The record serialisation the buffer stores: byte for byte the payload of docs/feed.md
as the standard library's json.dumps writes it.

Event and Reading build their JSON text from a format (core/events.py), not from a
dict; the oracle here builds the dict the feed contract describes, field by field, and
hands it to json.dumps, for generated records of every shape."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.events import (
    FEED_VERSION,
    Category,
    Event,
    Identity,
    Kind,
    Reading,
    Severity,
    splice_seq,
)

texts = st.text(max_size=40)  # quotes, backslashes, control characters, CJK, emoji
opt_texts = st.none() | texts
numbers = st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
values = st.none() | st.booleans() | numbers | texts
finite = st.floats(allow_nan=False, allow_infinity=False)
json_leaves = st.none() | st.booleans() | st.integers() | finite | texts  # inf: refused below
details = st.none() | st.dictionaries(
    texts,
    st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=4,
)
identities = st.builds(Identity, texts, texts, texts, texts)
timestamps = st.integers(0, 2**42)

events = st.builds(
    Event,
    kind=st.sampled_from(Kind),
    category=st.sampled_from(Category),
    severity=st.sampled_from(Severity),
    state=texts,
    text=texts,
    device=texts,
    point=opt_texts,
    value=values,
    unit=opt_texts,
    test=st.booleans(),
    ts_ms=timestamps,
    clock_synced=st.booleans(),
    device_name=opt_texts,
    point_name=opt_texts,
    location=opt_texts,
    detail=details,
    id=texts,
)
readings = st.builds(
    Reading,
    device=texts,
    point=texts,
    value=numbers,
    unit=opt_texts,
    ts_ms=timestamps,
    clock_synced=st.booleans(),
    quality=st.sampled_from(["good", "stale", "bad"]),
    id=texts,
)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _iso(ts_ms: int) -> str:
    import datetime as dt

    # date arithmetic, not fromtimestamp: a 32-bit time_t refuses seconds after 2038
    moment = dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ts_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def _common(record: Event | Reading, seq: int, ident: Identity) -> dict[str, Any]:
    return {
        "v": FEED_VERSION,
        "seq": seq,
        "id": record.id,
        "ts": _iso(record.ts_ms),
        "ts_ms": record.ts_ms,
        "clock_synced": record.clock_synced,
        "site": ident.site,
        "gateway": ident.gateway,
        "device": record.device,
        "point": record.point,
    }


def event_oracle(event: Event, seq: int, ident: Identity) -> dict[str, Any]:
    """The event payload of docs/feed.md, in its field order."""
    payload = _common(event, seq, ident) | {
        "kind": event.kind.value,
        "category": event.category.value,
        "severity": event.severity.value,
        "state": event.state,
        "value": _finite(event.value),
        "unit": event.unit,
        "text": event.text,
        "test": event.test,
    }
    for key in ("device_name", "point_name", "location", "detail"):
        if getattr(event, key) is not None:
            payload[key] = getattr(event, key)
    return payload


def reading_oracle(reading: Reading, seq: int, ident: Identity) -> dict[str, Any]:
    """The telemetry payload of docs/feed.md: a value that is not finite is null, bad."""
    value = _finite(reading.value)
    return _common(reading, seq, ident) | {
        "value": value,
        "unit": reading.unit,
        "quality": reading.quality if value is not None else "bad",
    }


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8"
    )


@pytest.mark.slow
@settings(max_examples=600, deadline=None)
@given(events, st.integers(1, 2**53), identities)
def test_event_bytes_are_those_of_json_dumps(event: Event, seq: int, ident: Identity) -> None:
    expected = event_oracle(event, seq, ident)
    assert splice_seq(event.payload_without_seq(ident), seq) == _dumps(expected)
    assert event.with_seq(seq).to_payload(ident) == json.loads(_dumps(expected))


@settings(max_examples=400, deadline=None)
@given(readings, st.integers(1, 2**53), identities)
def test_reading_bytes_are_those_of_json_dumps(reading: Reading, seq: int, ident: Identity) -> None:
    expected = reading_oracle(reading, seq, ident)
    assert splice_seq(reading.payload_without_seq(ident), seq) == _dumps(expected)
    assert reading.with_seq(seq).to_payload(ident) == json.loads(_dumps(expected))


def _door(**changes: Any) -> Event:
    fields: dict[str, Any] = {
        "kind": Kind.STATE,
        "category": Category.DOOR,
        "severity": Severity.INFO,
        "state": "open",
        "text": "门",
        "device": "door",
    }
    return Event(**(fields | changes))


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"device": 5}, TypeError),  # a str field that is not a str (stricter than json)
        ({"point": b"d1"}, TypeError),
        ({"test": "false"}, TypeError),  # a flag that is not a bool (stricter than json)
        ({"clock_synced": None}, TypeError),
        ({"value": {1, 2}}, TypeError),  # a value that is not JSON
        ({"value": 1j}, TypeError),
        ({"detail": {"x": object()}}, TypeError),
        ({"detail": {"x": float("inf")}}, ValueError),  # allow_nan=False, as json.dumps
    ],
)
def test_a_record_outside_the_contract_is_refused(changes: dict[str, Any], error: type) -> None:
    """What json.dumps refuses, and fields of the wrong type, which it would write in a
    shape the contract does not allow. The buffer refuses such a record before it uses a
    seq (it catches these errors)."""
    with pytest.raises(error):
        _door(**changes).payload_without_seq(Identity("s", "g"))


def test_a_circular_detail_is_refused_not_looped_on() -> None:
    detail: dict[str, Any] = {}
    detail["self"] = detail
    with pytest.raises(ValueError, match="Circular"):
        _door(detail=detail).payload_without_seq(Identity("s", "g"))


def test_to_payload_needs_a_seq() -> None:
    with pytest.raises(ValueError, match="seq"):
        _door().to_payload(Identity("s", "g"))


def test_timestamps_after_2038_serialise_whatever_time_t_the_platform_has(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """32-bit Raspberry Pi OS has a 32-bit time_t: time.gmtime refuses 2038-01-19T03:14:08
    and later there, so the timestamp text must not come from it. This machine's time_t
    is 64-bit; its gmtime is made to refuse as the 32-bit one does."""
    import time

    real_gmtime = time.gmtime

    def gmtime_32(secs: float | None = None) -> time.struct_time:
        if secs is not None and secs >= 2**31:
            raise OverflowError("timestamp out of range for platform time_t")
        return real_gmtime(secs)

    monkeypatch.setattr(time, "gmtime", gmtime_32)
    ts = (2**31 + 1) * 1000 + 5
    body = json.loads(splice_seq(_door(ts_ms=ts).payload_without_seq(Identity("s", "g")), 1))
    assert body["ts"] == "2038-01-19T03:14:09.005Z"


def test_identity_is_still_a_plain_four_field_value() -> None:
    """Its cached JSON fragment is not a field: asdict/replace/equality see only the four."""
    import dataclasses

    ident = Identity("s", "g", "养老院", "网关")
    assert ident.json_fields == '"site":"s","gateway":"g"'
    assert dataclasses.asdict(ident) == {
        "site": "s",
        "gateway": "g",
        "site_name": "养老院",
        "gateway_name": "网关",
    }
    assert Identity(**dataclasses.asdict(ident)) == ident
    assert dataclasses.replace(ident, site="t").json_fields.startswith('"site":"t"')

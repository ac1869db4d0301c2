"""Properties of the GB/T 26875.3 codec: every typeflag's objects survive encode -> decode,
frames survive encode -> stream decode in any chunking, and the streaming decoder never raises
on garbage or on mutated frames, and never loses a good frame that follows them."""

from __future__ import annotations

import dataclasses
import itertools
import typing

from hypothesis import given
from hypothesis import strategies as st

from agent.gb26875 import adu as adu_module
from agent.gb26875.adu import (
    OBJECT_TYPES,
    Adu,
    AduError,
    AduObject,
    ComponentAddress,
    RawAdu,
    SyncClock,
    decode_adu,
    decode_gb18030,
    encode_description,
)
from agent.gb26875.codec import (
    MAX_ADU,
    BadFrame,
    Frame,
    FrameStream,
    GbTime,
    decode_frame,
    encode_frame,
)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
times = st.builds(GbTime, u8, u8, u8, u8, u8, u8)
addresses = st.builds(ComponentAddress, u16, u16)

# Text that a GB18030 field carries unchanged: no NUL (the end), no trailing space (dropped as
# padding), no lone surrogate (not a character).
_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


def texts(max_bytes: int) -> st.SearchStrategy[str]:
    return st.text(_chars, max_size=max_bytes).filter(
        lambda t: len(t.encode("gb18030")) <= max_bytes and not t.endswith(" ")
    )


_BY_NAME: dict[str, typing.Any] = {
    "time": times,
    "start": times,
    "component_address": addresses,
    "value": st.integers(-0x8000, 0x7FFF),
}


def _field_strategy(cls: type[AduObject], field: dataclasses.Field[typing.Any]) -> typing.Any:
    if cls is SyncClock:
        return st.none() | times
    if field.name == "description":
        return texts(31 if cls.TYPEFLAG in (2, 7) else 255)
    if field.name == "status" and cls.TYPEFLAG in (1, 2):
        return u16
    return _BY_NAME.get(field.name, u8)


def objects_of(cls: type[AduObject]) -> st.SearchStrategy[AduObject]:
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return st.builds(cls, *(_field_strategy(cls, f) for f in fields))


@st.composite
def typed_adus(draw: st.DrawFn) -> Adu:
    typeflag = draw(st.sampled_from(sorted(OBJECT_TYPES)))
    cls = OBJECT_TYPES[typeflag]
    items = draw(st.lists(objects_of(cls), min_size=1, max_size=min(cls.MAX_COUNT, 12)))
    return Adu(typeflag, tuple(items))


@given(typed_adus())
def test_every_typeflag_round_trips(adu: Adu) -> None:
    data = adu.encode()
    assert data[:2] == bytes((adu.typeflag, len(adu.objects)))
    assert decode_adu(data) == adu


def test_the_round_trip_covers_every_typeflag_of_the_brief() -> None:
    needed = {1, 2, 3, 4, 21, 24, 25, 26, 28, *range(61, 69), 81, 84, 85, 86, 88, 89, 90, 91}
    assert needed <= set(OBJECT_TYPES)


@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=40))
def test_description_is_31_bytes_and_a_prefix_of_the_text(text: str) -> None:
    field = encode_description(text)
    assert len(field) == 31
    shown = decode_gb18030(field)
    assert "\ufffd" not in shown or "\ufffd" in text  # never half a character
    assert text.split("\x00", 1)[0].startswith(shown)


@given(st.binary(max_size=300))
def test_adu_decoding_raises_only_adu_errors(data: bytes) -> None:
    try:
        decoded = decode_adu(data)
    except AduError:
        return
    assert isinstance(decoded, Adu | RawAdu)


frames = st.builds(
    Frame,
    serial=u16,
    command=u8,
    source=st.integers(0, (1 << 48) - 1),
    destination=st.integers(0, (1 << 48) - 1),
    time=times,
    adu=st.binary(max_size=80) | st.binary(min_size=MAX_ADU - 2, max_size=MAX_ADU),
    version=st.tuples(u8, u8),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_all(stream: FrameStream, chunks: list[bytes]) -> list[Frame | BadFrame]:
    out: list[Frame | BadFrame] = []
    for chunk in chunks:
        out += stream.feed(chunk)
    return out


@given(frames)
def test_frames_round_trip(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame)) == frame


@given(
    st.lists(
        st.tuples(st.binary(max_size=40).map(lambda b: b.replace(b"@", b"")), frames), max_size=5
    ),
    st.lists(st.integers(0, 10_000), max_size=12),
)
def test_stream_finds_every_frame_between_garbage_in_any_chunking(
    parts: list[tuple[bytes, Frame]], cuts: list[int]
) -> None:
    # garbage here never holds '@': every start marker in the stream is a real one
    data = b"".join(garbage + encode_frame(frame) for garbage, frame in parts)
    items = feed_all(FrameStream(), chunked(data, cuts))
    assert items == [frame for _, frame in parts]


@given(st.lists(st.binary(max_size=200), max_size=20))
def test_stream_never_raises_on_garbage(chunks: list[bytes]) -> None:
    stream = FrameStream()
    for item in feed_all(stream, chunks):
        assert isinstance(item, Frame | BadFrame)
    assert stream.pending <= len(b"".join(chunks))


@st.composite
def mutated(draw: st.DrawFn, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut", "start"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at] = b"@@"
    return bytes(data)


@given(frames, frames, st.data(), st.lists(st.integers(0, 10_000), max_size=12))
def test_stream_never_raises_on_mutated_frames_and_finds_the_next_good_one(
    broken: Frame, good: Frame, data: st.DataObject, cuts: list[int]
) -> None:
    stream = FrameStream()
    damaged = data.draw(mutated(encode_frame(broken)))
    items = feed_all(stream, chunked(damaged + encode_frame(good), cuts))
    assert all(isinstance(item, Frame | BadFrame) for item in items)
    assert good in items


def test_module_has_no_object_class_left_unregistered() -> None:
    declared = {
        obj.TYPEFLAG
        for obj in vars(adu_module).values()
        if isinstance(obj, type) and issubclass(obj, AduObject) and obj is not AduObject
    }
    assert declared == set(OBJECT_TYPES)

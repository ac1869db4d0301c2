"""The codec: register values in, typed values out (and back), with literal hex."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import Garbage, WrongLength
from core.events import Category, Kind, Severity
from drivers.codec import EncodeError, decode, encode, encode_state
from drivers.profile import FlagSpec, PointSpec, PointType, StateSpec, WordOrder
from drivers.types import Block, ReadRequest, Table


def spec(ptype: str, address: int = 0, table: Table = Table.HOLDING, **kw: object) -> PointSpec:
    return PointSpec(id="p", name="点", table=table, address=address, type=PointType(ptype), **kw)  # type: ignore[arg-type]


def regs(*values: int, address: int = 0, table: Table = Table.HOLDING) -> Block:
    return Block(ReadRequest(1, table, address, len(values)), tuple(values))


@pytest.mark.parametrize(
    ("ptype", "words", "kw", "expected"),
    [
        ("u16", (0xFFFF,), {}, 65535),
        ("s16", (0xFFFF,), {}, -1),
        ("s16", (0x8000,), {}, -32768),
        ("s16", (0x7FFF,), {}, 32767),
        ("u8lo", (0x0A01,), {}, 1),
        ("u8hi", (0x0A01,), {}, 10),
        ("bit", (0b1000_0000_0000_0100,), {"bit": 2}, True),
        ("bit", (0b1000_0000_0000_0100,), {"bit": 3}, False),
        ("bit", (0b1000_0000_0000_0100,), {"bit": 15}, True),
        ("u32", (0x0001, 0x0002), {}, 0x0001_0002),
        ("u32", (0x0001, 0x0002), {"word_order": WordOrder.LITTLE}, 0x0002_0001),
        ("s32", (0xFFFF, 0xFFFE), {}, -2),
        ("s32", (0xFFFE, 0xFFFF), {"word_order": WordOrder.LITTLE}, -2),
        ("f32", (0x41C8, 0x0000), {}, 25.0),
        ("f32", (0x0000, 0x41C8), {"word_order": WordOrder.LITTLE}, 25.0),
        ("f32", (0xC2F6, 0xE979), {}, -123.456),
        ("u16", (253,), {"scale": 0.1}, 25.3),
        ("s16", (0xFFEC,), {"scale": 0.1}, -2.0),
        ("u16", (1200,), {"scale": 0.1, "offset": -10.0}, 110.0),  # 0..1200 -> -10..110 %LEL
        ("u16", (0,), {"scale": 0.1, "offset": -10.0}, -10.0),
        ("u16", (12000,), {"raw_range": (4000.0, 20000.0), "eng_range": (0.0, 1.6)}, 0.8),
        ("u16", (4000,), {"raw_range": (4000.0, 20000.0), "eng_range": (0.0, 1.6)}, 0.0),
        ("u16", (20000,), {"raw_range": (4000.0, 20000.0), "eng_range": (0.0, 5.0)}, 5.0),
        ("u16", (3500,), {"raw_range": (4000.0, 20000.0), "eng_range": (0.0, 5.0)}, -0.15625),
        # a reversed transmitter: 4 mA = full, 20 mA = empty
        ("u16", (8000,), {"raw_range": (4000.0, 20000.0), "eng_range": (5.0, 0.0)}, 3.75),
    ],
)
def test_decode_literal_registers(
    ptype: str, words: tuple[int, ...], kw: dict[str, object], expected: object
) -> None:
    value = decode(spec(ptype, **kw), regs(*words))
    if isinstance(expected, float):
        assert isinstance(value, float)
        assert value == pytest.approx(expected, abs=1e-5)
    else:
        assert value == expected
        assert type(value) is type(expected)


def test_integer_points_without_scaling_stay_integers() -> None:
    assert type(decode(spec("u16"), regs(300))) is int
    assert type(decode(spec("u16", scale=0.1), regs(300))) is float


def test_state_table_codes_are_not_scaled() -> None:
    states = {0: StateSpec("normal", "正常", True, None, Category.FIRE, Severity.INFO)}
    assert decode(spec("u16", scale=0.1, states=states), regs(7)) == 7


def test_decode_finds_its_block_among_several() -> None:
    point = spec("u16", address=105)
    blocks = [
        regs(1, 2, 3, address=100, table=Table.INPUT),  # same addresses, other table
        regs(10, 11, address=100),
        regs(*range(50, 60), address=101),
    ]
    assert decode(point, blocks) == 54


def test_bit_tables() -> None:
    coil = spec("bit", address=17, table=Table.COIL)
    assert decode(coil, regs(0, 1, 0, address=16, table=Table.COIL)) is True
    discrete = spec("bit", address=18, table=Table.DISCRETE)
    assert decode(discrete, regs(0, 1, 0, address=16, table=Table.DISCRETE)) is False


def test_block_that_does_not_cover_the_point_is_wrong_length() -> None:
    with pytest.raises(WrongLength):
        decode(spec("u16", address=3), regs(1, 2, 3))
    with pytest.raises(WrongLength):  # a 32-bit value needs both registers
        decode(spec("u32", address=2), regs(1, 2, 3))
    with pytest.raises(WrongLength):
        decode(spec("u16"), regs(1, table=Table.INPUT))
    with pytest.raises(WrongLength):
        decode(spec("u16"), [])


def test_impossible_register_values_are_garbage() -> None:
    with pytest.raises(Garbage):
        decode(spec("u16"), regs(0x10000))
    with pytest.raises(Garbage):
        decode(spec("bit", table=Table.COIL), regs(2, table=Table.COIL))
    with pytest.raises(Garbage):  # NaN
        decode(spec("f32"), regs(0x7FC0, 0x0000))


# --- encode: the simulator's direction ------------------------------------------------


def test_encode_literals() -> None:
    assert encode(spec("u16", scale=0.1), 25.3) == {0: 253}
    assert encode(spec("s16", address=4), -2) == {4: 0xFFFE}
    assert encode(spec("u32", address=10), 0x0001_0002) == {10: 0x0001, 11: 0x0002}
    little = spec("u32", address=10, word_order=WordOrder.LITTLE)
    assert encode(little, 0x0001_0002) == {10: 0x0002, 11: 0x0001}
    assert encode(spec("f32"), 25.0) == {0: 0x41C8, 1: 0x0000}
    four_twenty = spec("u16", raw_range=(4000.0, 20000.0), eng_range=(0.0, 1.6))
    assert encode(four_twenty, 0.8) == {0: 12000}
    assert encode(spec("bit", address=3, table=Table.COIL), True) == {3: 1}


def test_encode_keeps_the_other_bits_and_byte() -> None:
    assert encode(spec("bit", bit=2), True, {0: 0x8001}) == {0: 0x8005}
    assert encode(spec("bit", bit=15), False, {0: 0x8001}) == {0: 0x0001}
    assert encode(spec("u8lo"), 7, {0: 0x0502}) == {0: 0x0507}
    assert encode(spec("u8hi"), 1, {0: 0x0502}) == {0: 0x0102}


def test_encode_rejects_what_does_not_fit() -> None:
    with pytest.raises(EncodeError):
        encode(spec("u16"), 70000)
    with pytest.raises(EncodeError):
        encode(spec("u16"), -1)
    with pytest.raises(EncodeError):
        encode(spec("u8lo"), 256)
    with pytest.raises(EncodeError):
        encode(spec("u16"), True)


def test_encode_state_by_name_or_label() -> None:
    states = {
        0: StateSpec("normal", "正常", True, None, Category.FIRE, Severity.INFO),
        1: StateSpec("fire", "火警", False, Kind.ALARM, Category.FIRE, Severity.CRITICAL),
    }
    point = spec("u8lo", states=states)
    assert encode_state(point, "fire", {0: 0x0500}) == {0: 0x0501}
    assert encode_state(point, "火警") == {0: 1}
    with pytest.raises(EncodeError, match="known: normal, fire"):
        encode_state(point, "smoke")
    flag = FlagSpec(
        Kind.FAULT, Category.POWER, Severity.MINOR, "power_fault", "normal", "故障", "恢复"
    )
    bit = spec("bit", bit=1, flag=flag)
    assert encode_state(bit, "power_fault", {0: 0x0004}) == {0: 0x0006}
    assert encode_state(bit, "恢复", {0: 0x0006}) == {0: 0x0004}
    with pytest.raises(EncodeError):
        encode_state(spec("u16"), "normal")


@given(st.integers(0, 0xFFFF))
def test_u16_roundtrip(value: int) -> None:
    point = spec("u16")
    assert decode(point, regs(*encode(point, value).values())) == value


@given(st.integers(-0x8000_0000, 0x7FFF_FFFF), st.sampled_from(list(WordOrder)))
def test_s32_roundtrip_both_word_orders(value: int, order: WordOrder) -> None:
    point = spec("s32", word_order=order)
    words = encode(point, value)
    assert decode(point, regs(words[0], words[1])) == value


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), st.sampled_from(list(WordOrder)))
def test_f32_roundtrip(value: float, order: WordOrder) -> None:
    point = spec("f32", word_order=order)
    words = encode(point, value)
    assert decode(point, regs(words[0], words[1])) == value


@given(st.integers(4000, 20000))
def test_four_to_twenty_roundtrip_in_microamps(raw: int) -> None:
    point = spec("u16", raw_range=(4000.0, 20000.0), eng_range=(0.0, 1.6))
    value = decode(point, regs(raw))
    assert encode(point, value) == {0: raw}

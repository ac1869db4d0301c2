"""Pure conversions between Modbus register blocks and a point's typed value.

`decode` turns the registers (or bits) a point occupies into its value:
a bool for bits, the raw integer code for state tables, and for analogs the
engineering value (scale and offset, then the raw_range -> eng_range linear
map of 4-20 mA inputs). `encode` and `encode_state` go the other way; the
simulator uses them to set registers from an engineering value or a state name,
so agent and simulator share one definition of every device.

This module must never do I/O, never guess and never return None for a
failure: a block that does not cover the point is WrongLength, a register
value outside 0..65535 (or a non-finite float) is Garbage, a value that cannot
be represented is EncodeError.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Mapping

from core.errors import AlarmgwError, FieldError, Garbage, WrongLength
from drivers.profile import PointSpec, PointType, WordOrder
from drivers.types import Block, ReadRequest

Value = float | int | bool

# Engineering values are rounded to this many decimals: enough for any sensor,
# and it keeps 253 * 0.1 == 25.3 in golden files and in the feed.
DECIMALS = 6

_INT_LIMITS = {
    PointType.U8LO: (0, 0xFF),
    PointType.U8HI: (0, 0xFF),
    PointType.U16: (0, 0xFFFF),
    PointType.S16: (-0x8000, 0x7FFF),
    PointType.U32: (0, 0xFFFFFFFF),
    PointType.S32: (-0x80000000, 0x7FFFFFFF),
}


class EncodeError(AlarmgwError, ValueError):
    """A value or state name that the point cannot represent."""


# --- decode ----------------------------------------------------------------------------


def _words(spec: PointSpec, blocks: Iterable[Block]) -> tuple[int, ...]:
    """The raw register (or bit) values the point occupies, checked."""
    count = spec.register_count
    for block in blocks:
        if block.request.table is spec.table and block.covers(spec.address, count):
            start = spec.address - block.request.address
            words = block.values[start : start + count]
            limit = 1 if spec.table.is_bits else 0xFFFF
            for word in words:
                if not 0 <= word <= limit:
                    raise Garbage(f"point {spec.id}: value {word} out of range 0..{limit}")
            return tuple(words)
    last = spec.address + count - 1
    raise WrongLength(f"point {spec.id}: no block covers {spec.table.value} {spec.address}..{last}")


def _join32(spec: PointSpec, words: tuple[int, ...]) -> int:
    high, low = words if spec.word_order is WordOrder.BIG else (words[1], words[0])
    return (high << 16) | low


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _f32(spec: PointSpec, words: tuple[int, ...]) -> float:
    value: float = struct.unpack(">f", _join32(spec, words).to_bytes(4, "big"))[0]
    if not math.isfinite(value):
        raise Garbage(f"point {spec.id}: float value {value} is not finite")
    return value


def _bit(spec: PointSpec, words: tuple[int, ...]) -> bool:
    assert spec.bit is not None  # guaranteed by the profile loader
    return bool((words[0] >> spec.bit) & 1)


_REGISTER_DECODERS: dict[PointType, Callable[[PointSpec, tuple[int, ...]], Value]] = {
    PointType.BIT: _bit,
    PointType.U8LO: lambda _spec, w: w[0] & 0xFF,
    PointType.U8HI: lambda _spec, w: w[0] >> 8,
    PointType.U16: lambda _spec, w: w[0],
    PointType.S16: lambda _spec, w: _signed(w[0], 16),
    PointType.U32: _join32,
    PointType.S32: lambda spec, w: _signed(_join32(spec, w), 32),
    PointType.F32: _f32,
}


def decode_raw(spec: PointSpec, blocks: Iterable[Block]) -> Value:
    """The point's raw value before scaling: bool for bits, int or float otherwise."""
    words = _words(spec, blocks)
    if spec.table.is_bits:
        return bool(words[0])
    return _REGISTER_DECODERS[spec.type](spec, words)


def is_scaled(spec: PointSpec) -> bool:
    """True when the raw value is scaled or range-mapped (and then rounded to
    DECIMALS); an unscaled f32 is passed through at full precision."""
    return spec.scale != 1.0 or spec.offset != 0.0 or spec.raw_range is not None


def raw_to_engineering(spec: PointSpec, raw: float) -> float:
    """scale/offset, then the raw_range -> eng_range line (4-20 mA inputs)."""
    value = raw * spec.scale + spec.offset
    if spec.raw_range is not None and spec.eng_range is not None:
        raw_lo, raw_hi = spec.raw_range
        eng_lo, eng_hi = spec.eng_range
        value = eng_lo + (value - raw_lo) * (eng_hi - eng_lo) / (raw_hi - raw_lo)
    return round(value, DECIMALS)


def engineering_to_raw_units(spec: PointSpec, value: float) -> float:
    """The inverse of the range map: an engineering value back in raw_range units
    (e.g. uA), which is what `fault_below` is written in."""
    if spec.raw_range is None or spec.eng_range is None:
        return value
    raw_lo, raw_hi = spec.raw_range
    eng_lo, eng_hi = spec.eng_range
    return round(raw_lo + (value - eng_lo) * (raw_hi - raw_lo) / (eng_hi - eng_lo), DECIMALS)


def decode(spec: PointSpec, blocks: Iterable[Block] | Block) -> Value:
    """The point's value from the blocks read this cycle (any order, any tables)."""
    block_list = [blocks] if isinstance(blocks, Block) else list(blocks)
    raw = decode_raw(spec, block_list)
    if isinstance(raw, bool) or spec.states is not None or not is_scaled(spec):
        return raw
    return raw_to_engineering(spec, raw)


def why_unread(
    spec: PointSpec, failed: Iterable[tuple[ReadRequest, FieldError]]
) -> FieldError | None:
    """Why the point's registers did not come back this time, if a failed request covered
    them: the device's own answer ("illegal data address (2)") beats "no block covers"."""
    for request, error in failed:
        if request.covers(spec.table, spec.address, spec.register_count):
            return error
    return None


# --- encode (the simulator's direction) ------------------------------------------------


def _split32(spec: PointSpec, value: int) -> tuple[int, int]:
    high, low = (value >> 16) & 0xFFFF, value & 0xFFFF
    return (high, low) if spec.word_order is WordOrder.BIG else (low, high)


def _raw_from_value(spec: PointSpec, value: float) -> float:
    if spec.states is not None or not is_scaled(spec):
        return value
    return (engineering_to_raw_units(spec, value) - spec.offset) / spec.scale


def _encode_integer(spec: PointSpec, raw: float) -> int:
    code = round(raw)
    lo, hi = _INT_LIMITS[spec.type]
    if not lo <= code <= hi:
        raise EncodeError(
            f"point {spec.id}: raw value {code} does not fit {spec.type} ({lo}..{hi})"
        )
    return code


def encode(
    spec: PointSpec, value: Value, current: Mapping[int, int] | None = None
) -> dict[int, int]:
    """Registers (address -> 0..65535, or 0/1 for bit tables) that make `decode`
    return `value`. `current` holds the registers as they are now, so writing a
    bit or a byte keeps the other bits of its register."""
    current = current or {}
    if spec.table.is_bits:
        return {spec.address: int(bool(value))}
    if spec.type is PointType.BIT:
        assert spec.bit is not None
        word = current.get(spec.address, 0)
        mask = 1 << spec.bit
        return {spec.address: (word | mask) if value else (word & ~mask & 0xFFFF)}
    if isinstance(value, bool):
        raise EncodeError(f"point {spec.id}: a {spec.type} point takes a number, not a bool")
    raw = _raw_from_value(spec, float(value))
    if spec.type is PointType.F32:
        bits = int.from_bytes(struct.pack(">f", raw), "big")
        return dict(zip((spec.address, spec.address + 1), _split32(spec, bits), strict=True))
    return _encode_integer_word(spec, _encode_integer(spec, raw), current.get(spec.address, 0))


def _encode_integer_word(spec: PointSpec, code: int, word: int) -> dict[int, int]:
    if spec.type is PointType.U8LO:
        return {spec.address: (word & 0xFF00) | code}
    if spec.type is PointType.U8HI:
        return {spec.address: (word & 0x00FF) | (code << 8)}
    if spec.type.register_count == 1:
        return {spec.address: code & 0xFFFF}
    pair = _split32(spec, code & 0xFFFFFFFF)
    return dict(zip((spec.address, spec.address + 1), pair, strict=True))


def encode_state(
    spec: PointSpec, state: str, current: Mapping[int, int] | None = None
) -> dict[int, int]:
    """Registers that put a state-table or flag point into the named state
    (its `state` id or its label)."""
    if spec.states is not None:
        for code, state_spec in sorted(spec.states.items()):
            if state in (state_spec.state, state_spec.label):
                return encode(spec, code, current)
        known = ", ".join(s.state for s in spec.states.values())
        raise EncodeError(f"point {spec.id}: no state {state!r} (known: {known})")
    if spec.flag is not None:
        flag = spec.flag
        if state in (flag.active_state, flag.active_label):
            return encode(spec, True, current)
        if state in (flag.inactive_state, flag.inactive_label):
            return encode(spec, False, current)
        raise EncodeError(
            f"point {spec.id}: no state {state!r} "
            f"(known: {flag.active_state}, {flag.inactive_state})"
        )
    raise EncodeError(f"point {spec.id} has no states or flag; set a value instead")

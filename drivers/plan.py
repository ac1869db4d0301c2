"""Request planning: which Modbus reads poll a device, and what they cost on the wire.

`plan_device` coalesces a device's points of one poll class into block reads
(nearby addresses of one table become one request, bridging gaps of at most
`max_gap` registers, never more than `max_block` registers or 2000 bits), so a
16-point panel is one request instead of sixteen. `wire_time_s` estimates what
one request costs on an RS-485 line at its baud rate, and `render_plan` prints
the plan of every line for `alarmgw check-config --plan`, warning when a cycle
cannot fit its poll period.

This module must never talk to a device: it is arithmetic on profiles and
config. It reads config objects only through the attribute names written in
docs/architecture.md (Config.lines/devices/profiles, LineConfig, DeviceConfig).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from drivers.profile import Profile, apply_overrides
from drivers.types import (
    MAX_BITS,
    MAX_REGISTERS,
    PollClass,
    ReadRequest,
    Table,
    bits_per_char,
    inter_frame_gap_ms,
)

BITS_PER_REGISTER = 16  # a bit-table gap is counted in bits: 16 bits cost what 1 register does

REQUEST_BYTES = 8  # unit, fc, address(2), count(2), crc(2)
RESPONSE_OVERHEAD = 5  # unit, fc, byte count, crc(2)
_TABLE_ORDER = (Table.COIL, Table.DISCRETE, Table.HOLDING, Table.INPUT)


# --- coalescing --------------------------------------------------------------------------


def _spans(profile: Profile, poll: PollClass) -> dict[Table, list[tuple[int, int]]]:
    """(start, end-exclusive) of every point of the poll class, per table, sorted."""
    spans: dict[Table, list[tuple[int, int]]] = {}
    for spec in profile.points.values():
        if spec.poll is poll:
            spans.setdefault(spec.table, []).append(
                (spec.address, spec.address + spec.register_count)
            )
    return {table: sorted(items) for table, items in spans.items()}


def _coalesce(
    spans: Iterable[tuple[int, int]], max_gap: int, max_count: int
) -> list[tuple[int, int]]:
    """Merge sorted spans whose gap is <= max_gap while the block stays <= max_count."""
    blocks: list[tuple[int, int]] = []
    for start, end in spans:
        if blocks:
            block_start, block_end = blocks[-1]
            gap = start - block_end
            if gap <= max_gap and max(end, block_end) - block_start <= max_count:
                blocks[-1] = (block_start, max(end, block_end))
                continue
        blocks.append((start, end))
    return blocks


def plan_device(
    profile: Profile, unit: int, poll: PollClass, max_gap: int, max_block: int = MAX_REGISTERS
) -> list[ReadRequest]:
    """The reads that fetch every point of `profile` in poll class `poll`.

    `max_gap` is the largest run of unused registers one read may bridge
    (reading a few extra registers is cheaper than a new request: each request
    costs 13 bytes of framing plus two inter-frame gaps). Bit tables bridge
    `max_gap * 16` bits and are capped at 2000 bits; register tables at
    `max_block` (<= 125) registers.
    """
    requests: list[ReadRequest] = []
    spans = _spans(profile, poll)
    for table in _TABLE_ORDER:
        if table not in spans:
            continue
        if table.is_bits:
            gap, limit = max_gap * BITS_PER_REGISTER, MAX_BITS
        else:
            gap, limit = max_gap, min(max_block, MAX_REGISTERS)
        for start, end in _coalesce(spans[table], gap, limit):
            requests.append(ReadRequest(unit=unit, table=table, address=start, count=end - start))
    return requests


def plan_polls(
    profile: Profile, unit: int, max_gap: int, max_block: int = MAX_REGISTERS
) -> dict[PollClass, list[ReadRequest]]:
    """The reads of both poll classes of one device (see `plan_device`)."""
    return {
        poll: plan_device(profile, unit, poll, max_gap, max_block)
        for poll in (PollClass.FAST, PollClass.SLOW)
    }


# --- wire time ---------------------------------------------------------------------------


def response_bytes(request: ReadRequest) -> int:
    if request.table.is_bits:
        return RESPONSE_OVERHEAD + math.ceil(request.count / 8)
    return RESPONSE_OVERHEAD + 2 * request.count


def wire_time_s(
    request: ReadRequest,
    baudrate: int,
    bytesize: int = 8,
    parity: str = "N",
    stopbits: int = 1,
    *,
    gap_ms: float | None = None,
) -> float:
    """Seconds one read occupies the line: request and response frames at the
    baud rate, plus two inter-frame gaps (before the answer, and before the next
    request). The device's own processing time is not included."""
    if gap_ms is None:
        gap_ms = inter_frame_gap_ms(baudrate, bytesize, parity, stopbits)
    chars = REQUEST_BYTES + response_bytes(request)
    return chars * bits_per_char(bytesize, parity, stopbits) / baudrate + 2 * gap_ms / 1000.0


# --- the plan of a whole config ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DevicePlan:
    device_id: str
    unit: int
    profile_id: str
    fast: list[ReadRequest]
    slow: list[ReadRequest]
    fast_poll_s: float
    slow_poll_s: float


@dataclass(frozen=True, slots=True)
class LinePlan:
    line_id: str
    serial: bool
    devices: list[DevicePlan]
    request_s: Mapping[ReadRequest, float]  # estimated wire time of each request (serial only)

    def cycle_s(self, poll: PollClass) -> float:
        """Wire time of one pass over every device's requests of one poll class."""
        return sum(
            self.request_s.get(req, 0.0)
            for dev in self.devices
            for req in (dev.fast if poll is PollClass.FAST else dev.slow)
        )

    def load(self) -> float:
        """Fraction of the line's time the plan needs (1.0 = the line is full)."""
        total = 0.0
        for dev in self.devices:
            total += sum(self.request_s.get(r, 0.0) for r in dev.fast) / dev.fast_poll_s
            total += sum(self.request_s.get(r, 0.0) for r in dev.slow) / dev.slow_poll_s
        return total


def plan_line(config: Any, line: Any) -> LinePlan:
    """Plan every device of one line (device point overrides applied: a disabled
    point is not read)."""
    devices = []
    for device in config.devices:
        if device.line != line.id:
            continue
        profile = apply_overrides(config.profiles[device.profile], device.points)
        polls = plan_polls(profile, device.unit_id, line.max_gap, line.max_block)
        devices.append(
            DevicePlan(
                device_id=device.id,
                unit=device.unit_id,
                profile_id=device.profile,
                fast=polls[PollClass.FAST],
                slow=polls[PollClass.SLOW],
                fast_poll_s=device.fast_poll_s,
                slow_poll_s=device.slow_poll_s,
            )
        )
    serial = line.type == "rtu"
    request_s: dict[ReadRequest, float] = {}
    if serial:
        for dev in devices:
            for req in (*dev.fast, *dev.slow):
                request_s[req] = wire_time_s(
                    req,
                    line.baudrate,
                    line.bytesize,
                    line.parity,
                    line.stopbits,
                    gap_ms=line.inter_frame_gap_ms,
                )
    return LinePlan(line.id, serial, devices, request_s)


def _describe(req: ReadRequest) -> str:
    last = req.address + req.count - 1
    where = f"{req.address}" if req.count == 1 else f"{req.address}..{last}"
    return f"{req.table.value:<8} {where:<11} ({req.count})"


def _line_header(line: Any) -> str:
    if line.type != "rtu":
        return f"line {line.id}: Modbus TCP {line.host}:{line.tcp_port}"
    frame = f"{line.bytesize}{line.parity}{line.stopbits}"
    return (
        f"line {line.id}: RTU {line.port} {line.baudrate} {frame}, "
        f"gap {line.inter_frame_gap_ms:.2f} ms"
    )


def _device_lines(plan: LinePlan, dev: DevicePlan) -> list[str]:
    out = [f"  {dev.device_id}  unit {dev.unit}  {dev.profile_id}"]
    for poll, requests in ((PollClass.FAST, dev.fast), (PollClass.SLOW, dev.slow)):
        for req in requests:
            cost = f"{plan.request_s[req] * 1000:7.1f} ms" if plan.serial else ""
            out.append(f"    {poll.value:<4}  {_describe(req):<30} {cost}")
    return out


def _fit_lines(plan: LinePlan) -> list[str]:
    if not plan.serial or not plan.devices:
        return []
    fast = plan.cycle_s(PollClass.FAST)
    slow = plan.cycle_s(PollClass.SLOW)
    fast_period = min(d.fast_poll_s for d in plan.devices)
    slow_period = min(d.slow_poll_s for d in plan.devices)
    out = [
        f"  fast cycle {fast * 1000:7.1f} ms  (fastest fast period {fast_period:g} s)",
        f"  slow cycle {slow * 1000:7.1f} ms  (fastest slow period {slow_period:g} s)",
        f"  line load  {plan.load() * 100:6.1f} %",
    ]
    if fast > fast_period:
        out.append(f"  WARNING: the fast cycle ({fast:.2f} s) does not fit in {fast_period:g} s")
    if fast + slow > slow_period:
        out.append(
            f"  WARNING: fast + slow reads ({fast + slow:.2f} s) do not fit in {slow_period:g} s"
        )
    if plan.load() > 1.0:
        out.append("  WARNING: the line is over-subscribed: polls will run late")
    return out


def render_plan(config: Any) -> str:
    """The request plan of every line, for `alarmgw check-config --plan` (80 columns)."""
    out: list[str] = []
    for line in config.lines:
        plan = plan_line(config, line)
        out.append(_line_header(line))
        if not plan.devices:
            out.append("  (no devices)")
        for dev in plan.devices:
            out.extend(_device_lines(plan, dev))
        out.extend(_fit_lines(plan))
        out.append("")
    return "\n".join(out).rstrip() + "\n"

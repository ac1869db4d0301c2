"""GB/T 26875.3 frames and ADUs against byte-exact vectors from independent public sources.

The vectors are facts copied from those sources, cited beside each; none of their code is ours:
- DESC: the Chinese description of the standard with worked frames, ActorLancer/
  GB-T-26875.3.2011-rs, file GB26875文档.md ("示例" 1-11, checksums verified by hand);
- GO: shootingfans/codec_gb26875_3_2011, codec/codec_test.go (TestDecode, TestDecodeAppData,
  TestEncode, TestNew*AppData) and codec/reader_decoder_test.go; its expected Unix times are
  Beijing wall time (UTC+8);
- DGIOT: dgiot/dgiot, apps/dgiot_gb26875/src/protocol/dgiot_gb26875_decoder.erl test/0, which
  decodes and re-encodes the GO success frame with its own checksum code;
- RUST: ActorLancer/GB-T-26875.3.2011-rs, examples/protocol_compliance_test.rs (layouts only).
"""

from __future__ import annotations

import pytest

from agent.gb26875.adu import (
    Adu,
    AduError,
    ComponentAddress,
    ComponentAnalog,
    ComponentConfig,
    ComponentState,
    DutyCheck,
    InitialiseUitd,
    RawAdu,
    ReadComponentAnalog,
    ReadComponentConfig,
    ReadComponentState,
    ReadSystemClock,
    ReadSystemConfig,
    ReadSystemOperations,
    ReadSystemState,
    ReadSystemVersion,
    ReadUitdClock,
    ReadUitdConfig,
    ReadUitdOperations,
    ReadUitdState,
    ReadUitdVersion,
    SyncClock,
    SystemClock,
    SystemConfig,
    SystemOperation,
    SystemState,
    SystemVersion,
    UitdClock,
    UitdConfig,
    UitdOperation,
    UitdState,
    UitdVersion,
    decode_adu,
    decode_gb18030,
    encode_description,
    fit_gb18030,
    pack,
)
from agent.gb26875.codec import (
    BadFrame,
    CodecError,
    Command,
    Frame,
    FrameError,
    FrameStream,
    GbTime,
    decode_frame,
    encode_frame,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# DESC: every example shares this header time, 2012-09-26 09:58:32 (device) / :35 (centre),
# the UITD address 0x000000000379 and the centre address 0x000000015B38.
DESC_T = GbTime(2, 58, 9, 26, 9, 12)  # "12年9月26日9时58分02秒" in the objects
UITD, CENTRE = 0x0379, 0x015B38

# (name, frame bytes, serial, command, source, destination, label seconds, typed ADU or None)
DESC_FRAMES = [
    (
        "1 component fire: 2号10区 smoke detector",
        h(
            "4040 0100 0101 203A091A090C 790300000000 385B01000000 3000 02"
            "0201 01 01 28 0A000200 0200" + "20" * 30 + "00" + "023A091A090C 46 2323"
        ),
        1, Command.SEND_DATA, UITD, CENTRE, 32,
        Adu.of(ComponentState(1, 1, 40, ComponentAddress(10, 2), 0x0002, " " * 30, DESC_T)),
    ),
    (
        "centre confirm",
        h("4040 0100 0101 233A091A090C 385B01000000 790300000000 0000 03 AB 2323"),
        1, Command.CONFIRM, CENTRE, UITD, 35, None,
    ),
    (
        "centre deny",
        h("4040 0100 0101 233A091A090C 385B01000000 790300000000 0000 06 AE 2323"),
        1, Command.DENY, CENTRE, UITD, 35, None,
    ),
    (
        "2 UITD main power fault",
        h(
            "4040 0100 0101 203A091A090C 790300000000 385B01000000 0900 "
            "02 1501 08 023A091A090C 42 2323"
        ),
        1, Command.SEND_DATA, UITD, CENTRE, 32, Adu.of(UitdState(0x08, DESC_T)),
    ),
    (
        "3 duty-check answer operation",
        h(
            "4040 0100 0101 203A091A090C 790300000000 385B01000000 0A00 "
            "02 1801 2001 023A091A090C 5F 2323"
        ),
        1, Command.SEND_DATA, UITD, CENTRE, 32, Adu.of(UitdOperation(0x20, 1, DESC_T)),
    ),
    (
        "4 UITD software version 1.1",
        h("4040 0100 0101 203A091A090C 790300000000 385B01000000 0400 02 1901 0101 C7 2323"),
        1, Command.SEND_DATA, UITD, CENTRE, 32, Adu.of(UitdVersion(1, 1)),
    ),
    (
        "5 UITD clock",
        h(
            "4040 0100 0101 203A091A090C 790300000000 385B01000000 0800 "
            "02 1C01 023A091A090C 40 2323"
        ),
        1, Command.SEND_DATA, UITD, CENTRE, 32, Adu.of(UitdClock(DESC_T)),
    ),
    (
        "6 read UITD state",
        h("4040 0100 0101 203A091A090C 385B01000000 790300000000 0300 04 5101 00 FE 2323"),
        1, Command.REQUEST, CENTRE, UITD, 32, Adu.of(ReadUitdState()),
    ),
    (
        "6 answer: main power fault",
        h(
            "4040 0100 0101 203A091A090C 790300000000 385B01000000 0900 "
            "05 1501 08 023A091A090C 45 2323"
        ),
        1, Command.RESPONSE, UITD, CENTRE, 32, Adu.of(UitdState(0x08, DESC_T)),
    ),
    (
        "7 read UITD version",
        h("4040 0100 0101 203A091A090C 385B01000000 790300000000 0300 04 5501 00 02 2323"),
        1, Command.REQUEST, CENTRE, UITD, 32, Adu.of(ReadUitdVersion()),
    ),
    (
        "7 answer: V1.1",
        h("4040 0100 0101 203A091A090C 790300000000 385B01000000 0400 05 1901 0101 CA 2323"),
        1, Command.RESPONSE, UITD, CENTRE, 32, Adu.of(UitdVersion(1, 1)),
    ),
    (
        "8 read UITD clock",
        h("4040 0100 0101 203A091A090C 385B01000000 790300000000 0300 04 5801 00 05 2323"),
        1, Command.REQUEST, CENTRE, UITD, 32, Adu.of(ReadUitdClock()),
    ),
    (
        "8 answer: clock",
        h(
            "4040 0100 0101 203A091A090C 790300000000 385B01000000 0800 "
            "05 1C01 023A091A090C 43 2323"
        ),
        1, Command.RESPONSE, UITD, CENTRE, 32, Adu.of(UitdClock(DESC_T)),
    ),
    (
        "9 initialise, as command 1",
        h("4040 0100 0101 203A091A090C 385B01000000 790300000000 0300 01 5901 00 03 2323"),
        1, Command.CONTROL, CENTRE, UITD, 32, Adu.of(InitialiseUitd()),
    ),
    (
        "9 UITD confirm",
        h("4040 0100 0101 233A091A090C 790300000000 385B01000000 0000 03 AB 2323"),
        1, Command.CONFIRM, UITD, CENTRE, 35, None,
    ),
    (
        "10 clock sync with a 6-byte time",
        h(
            "4040 0100 0101 203A091A090C 385B01000000 790300000000 0800 "
            "01 5A01 023A091A090C 7D 2323"
        ),
        1, Command.CONTROL, CENTRE, UITD, 32, Adu.of(SyncClock(DESC_T)),
    ),
    (
        "11 duty check, answer within 10 minutes",
        h("4040 0100 0101 203A091A090C 385B01000000 790300000000 0300 01 5B01 0A 0F 2323"),
        1, Command.CONTROL, CENTRE, UITD, 32, Adu.of(DutyCheck(10)),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("raw", "serial", "command", "source", "destination", "second", "adu"),
    [case[1:] for case in DESC_FRAMES],
    ids=[case[0] for case in DESC_FRAMES],
)
def test_description_frames_decode_and_encode_byte_exact(
    raw: bytes,
    serial: int,
    command: int,
    source: int,
    destination: int,
    second: int,
    adu: Adu | None,
) -> None:
    frame = decode_frame(raw)
    label = GbTime(second, 58, 9, 26, 9, 12)
    assert (frame.serial, frame.command, frame.version) == (serial, command, (1, 1))
    assert (frame.source, frame.destination, frame.time) == (source, destination, label)
    assert encode_frame(frame) == raw
    if adu is None:
        assert frame.adu == b""
        return
    assert adu.encode() == frame.adu  # typed objects encode to the very bytes
    rebuilt = Frame(serial, command, source, destination, label, adu.encode(), (1, 1))
    assert encode_frame(rebuilt) == raw


def test_description_component_address_is_zone_then_position() -> None:
    # DESC example 1: "2号10区" (position 2 of zone 10) is 0A 00 02 00; its 30 spaces + NUL
    # description reads as empty text; the Go codec's one number for the same bytes is 0x0002000A
    frame = decode_frame(DESC_FRAMES[0][1])
    adu = decode_adu(frame.adu)
    assert isinstance(adu, Adu)
    (obj,) = adu.objects
    assert isinstance(obj, ComponentState)
    assert obj.component_address == ComponentAddress(zone=10, position=2)
    assert obj.component_address.u32 == 0x0002000A
    assert obj.description == ""
    assert str(obj.time) == "2012-09-26 09:58:02"


# GO codec_test.go TestDecode "test success" (also DGIOT dgiot_gb26875_decoder.erl test/0)
GO_FRAME = bytes(
    [0x40, 0x40, 0x00, 0x00, 0x01, 0x01, 0x18, 0x0d, 0x11, 0x16, 0x0a, 0x14, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x30, 0x00, 0x02, 0x02, 0x01, 0x01,
     0x03, 0x00, 0xd9, 0x00, 0x06, 0x00, 0x02, 0x00, 0xa3, 0xc1, 0xc7, 0xf8, 0xa3, 0xb1, 0xb2,
     0xe3, 0xdf, 0xc8, 0xb2, 0xb8, 0xd7, 0xdf, 0xc0, 0xc8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
     0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x30, 0x12, 0x13, 0x01, 0x08, 0x14,
     0x68, 0x23, 0x23]
)  # fmt: skip


def test_go_frame_decodes_with_its_description_and_beijing_time() -> None:
    frame = decode_frame(GO_FRAME)
    assert (frame.serial, frame.version, frame.source) == (0, (1, 1), 0)
    assert frame.destination == 0x010203040506
    assert frame.command == Command.SEND_DATA
    adu = decode_adu(frame.adu)
    assert adu == Adu.of(
        ComponentState(
            1, 3, 0, ComponentAddress.from_u32(0x0600D9), 0x02, "Ａ区１层呷哺走廊",
            GbTime(0x30, 0x12, 0x13, 0x01, 0x08, 0x14),
        )
    )  # fmt: skip
    assert isinstance(adu, Adu)
    assert adu.objects[0].time.to_epoch() == 1596280728
    assert encode_frame(frame) == GO_FRAME


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (bytes([0x43, 0x23, 0x23]), "checksum"),  # GO TestDecode "test check sum fail"
        (bytes([0x53, 0x23, 0x13]), "end"),  # GO TestDecode "test invalid tail flag"
    ],
)
def test_go_broken_frames_are_refused_with_their_reason(tail: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as caught:
        decode_frame(GO_FRAME[:-3] + tail)
    assert caught.value.reason == reason


def test_go_ack_and_request_encode_byte_exact() -> None:
    # GO TestEncode: serial 1, Version 1 written big-endian (00 01), source 0x000102030405,
    # target 0x060708090a0b, time 1625187605 (2021-07-02 09:00:05 +08); checksums computed
    # as the standard says (the Go test computes them with utils.Sum).
    label = GbTime.from_epoch(1625187605)
    assert label == GbTime(5, 0, 9, 2, 7, 21)
    ack = Frame(1, Command.CONFIRM, 0x000102030405, 0x060708090A0B, label, b"", (0, 1))
    assert encode_frame(ack) == h(
        "4040 0100 0001 050009020715 050403020100 0b0a09080706 0000 03 73 2323"
    )
    init = InitialiseUitd()
    request = Frame(
        1, Command.REQUEST, 0x000102030405, 0x060708090A0B, label, Adu.of(init).encode(), (0, 1)
    )
    assert encode_frame(request) == h(
        "4040 0100 0001 050009020715 050403020100 0b0a09080706 0300 04 590100 D1 2323"
    )


T4 = GbTime(4, 0, 9, 2, 7, 21)  # GO's 1625187604
T5 = GbTime(5, 0, 9, 2, 7, 21)  # GO's 1625187605
DESC_7F = h("37c2a53032cad2bbe1d2e9cad2d1ccb8d0")  # "7楼02室会议室烟感" in GB18030, 17 bytes

# GO codec_test.go TestDecodeAppData (commit 11ce434d): ADU bytes -> expected objects
GO_UPSTREAM = [
    (h("0101 0102 0402 040009020715"), [SystemState(1, 2, 0x0204, T4)]),
    (
        h("0102 0102 0402 040009020715 0d03 0501 050009020715"),
        [SystemState(1, 2, 0x0204, T4), SystemState(13, 3, 0x0105, T5)],
    ),
    (
        h("0201 0102 79 01020304 0402") + DESC_7F + bytes(14) + h("040009020715"),
        [
            ComponentState(
                1, 2, 121, ComponentAddress.from_u32(0x04030201), 0x0204, "7楼02室会议室烟感", T4
            )
        ],
    ),
    (
        h("0302 0102 28 01020304 03 2003 040009020715 0d03 79 03040506 02 0150 050009020715"),
        [
            ComponentAnalog(1, 2, 40, ComponentAddress.from_u32(0x04030201), 3, 0x0320, T4),
            ComponentAnalog(13, 3, 121, ComponentAddress.from_u32(0x06050403), 2, 0x5001, T5),
        ],
    ),
    (
        h("0402 0102 84fa 040009020715 0d03 73fb 050009020715"),
        [SystemOperation(1, 2, 0x84, 0xFA, T4), SystemOperation(13, 3, 0x73, 0xFB, T5)],
    ),
    (h("0501 0102 0304"), [SystemVersion(1, 2, 3, 4)]),
    (h("0502 0102 0304 0d03 0101"), [SystemVersion(1, 2, 3, 4), SystemVersion(13, 3, 1, 1)]),
    (h("0601 0102 1e") + DESC_7F + bytes(13), [SystemConfig(1, 2, "7楼02室会议室烟感")]),
    (
        h("0701 0102 28 01020304") + DESC_7F + bytes(14),
        [ComponentConfig(1, 2, 40, ComponentAddress.from_u32(0x04030201), "7楼02室会议室烟感")],
    ),
    (h("0801 0102 040009020715"), [SystemClock(1, 2, T4)]),
    (h("1501 08 040009020715"), [UitdState(0x08, T4)]),
    (
        h("1802 31fa 040009020715 73fb 050009020715"),
        [UitdOperation(0x31, 0xFA, T4), UitdOperation(0x73, 0xFB, T5)],
    ),
    (h("1901 0304"), [UitdVersion(3, 4)]),
    (h("1a01 1e") + DESC_7F + bytes(13), [UitdConfig("7楼02室会议室烟感")]),
    (h("1c01 050009020715"), [UitdClock(T5)]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "objects"), GO_UPSTREAM, ids=lambda v: v.hex()[:4] if isinstance(v, bytes) else ""
)
def test_go_upstream_adus_decode(data: bytes, objects: list[object]) -> None:
    assert decode_adu(data) == Adu(data[0], tuple(objects))


def test_go_times_are_beijing_wall_time() -> None:
    assert T4.to_epoch() == 1625187604
    assert GbTime.from_epoch(1625187604) == T4
    assert T4.to_epoch(utc_offset_s=0) == 1625187604 + 8 * 3600


# GO TestNew*AppData: what the centre sends -> the bytes; our objects must encode to them
GO_DOWNSTREAM = [
    ([ReadSystemState(1, 1)], h("3d01 0101")),
    ([ReadSystemState(1, 1), ReadSystemState(13, 2)], h("3d02 0101 0d02")),
    ([ReadComponentState(1, 1, ComponentAddress.from_u32(0x01110203))], h("3e01 0101 03021101")),
    (
        [ReadComponentState(1, 1, ComponentAddress.from_u32(0x01110203)),
         ReadComponentState(13, 3, ComponentAddress.from_u32(0x12345678))],
        h("3e02 0101 03021101 0d03 78563412"),
    ),
    ([ReadComponentAnalog(1, 1, ComponentAddress.from_u32(0x01110203))], h("3f01 0101 03021101")),
    (
        [ReadSystemOperations(1, 1, 10, GbTime.from_epoch(1625155200))],
        h("4001 0101 0a 000000020715"),
    ),
    ([ReadSystemVersion(1, 2)], h("4101 0102")),
    ([ReadSystemConfig(1, 3), ReadSystemConfig(13, 2)], h("4202 0103 0d02")),
    (
        [ReadComponentConfig(1, 1, ComponentAddress.from_u32(0x12345678)),
         ReadComponentConfig(13, 3, ComponentAddress.from_u32(0x01020304))],
        h("4302 0101 78563412 0d03 04030201"),
    ),
    ([ReadSystemClock(1, 3)], h("4401 0103")),
    ([ReadUitdState()], h("5101 00")),
    ([ReadUitdOperations(16, T4)], h("5401 10 040009020715")),
    ([ReadUitdVersion()], h("5501 00")),
    ([ReadUitdConfig()], h("5601 00")),
    ([ReadUitdClock()], h("5801 00")),
    ([InitialiseUitd()], h("5901 00")),
    ([SyncClock(T4)], h("5a01 040009020715")),
    ([DutyCheck(0)], h("5b01 00")),
    ([DutyCheck(10)], h("5b01 0a")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("objects", "data"), GO_DOWNSTREAM, ids=lambda v: v.hex()[:4] if isinstance(v, bytes) else ""
)
def test_go_downstream_adus_encode_and_decode(objects: list[object], data: bytes) -> None:
    adu = Adu.of(*objects)
    assert adu.encode() == data
    assert decode_adu(data) == adu


@pytest.mark.parametrize(
    ("data", "time"),
    [
        (h("5a01 023A091A090C"), DESC_T),  # DESC example 10 and GO: the time right after the count
        (h("5a01 00 1e2d0e040b18"), GbTime(30, 45, 14, 4, 11, 24)),  # RUST: reserved, then time
        (h("5a01 00"), None),  # DESC's table: one reserved byte
        (h("5a01"), None),
    ],
)
def test_clock_sync_accepts_every_published_form(data: bytes, time: GbTime | None) -> None:
    assert decode_adu(data) == Adu.of(SyncClock(time))


def test_reserved_byte_may_be_missing_and_duty_check_defaults_to_ten_minutes() -> None:
    assert decode_adu(h("5101")) == Adu.of(ReadUitdState())
    check = decode_adu(h("5b01 00"))
    assert isinstance(check, Adu)
    assert check.objects[0].timeout_min == 10
    assert Adu.of(DutyCheck(3)).objects[0].timeout_min == 3


@pytest.mark.parametrize(
    "data",
    [
        h("16"),  # the 1-byte handshake ADU real devices send
        h("8001 0102"),  # user-defined typeflag 128
        h("fe05"),  # user-defined typeflag 254
        h("0901 00"),  # reserved typeflag 9
        b"",
    ],
)
def test_unknown_typeflags_pass_through_raw(data: bytes) -> None:
    adu = decode_adu(data)
    assert adu == RawAdu(data)
    assert adu.encode() == data


@pytest.mark.parametrize(
    "data",
    [
        h("0101 0102 04"),  # cut short
        h("0101 0102 0402 040009020715 00"),  # a byte left over
        h("0202 0102") + bytes(44),  # two objects announced, one and a bit given
        h("1a01 1e 41"),  # length byte says 30, one byte follows
    ],
)
def test_known_typeflag_with_wrong_layout_is_an_adu_error(data: bytes) -> None:
    with pytest.raises(AduError):
        decode_adu(data)


# --- descriptions ---------------------------------------------------------------------------------


def test_description_is_cut_on_a_character_boundary() -> None:
    text = "一二三四五六七八九十一二三四五六"  # 16 two-byte characters = 32 bytes
    field = encode_description(text)
    assert len(field) == 31
    assert field == text[:15].encode("gb18030") + b"\x00"  # 30 bytes: the 16th would be half
    assert decode_gb18030(field) == text[:15]
    # 4-byte GB18030 sequences are never split either
    assert fit_gb18030("a" * 28 + "😀", 31) == b"a" * 28
    assert fit_gb18030("a" * 27 + "😀", 31) == b"a" * 27 + "😀".encode("gb18030")


def test_description_is_cut_at_the_first_nul_and_garbage_after_it_ignored() -> None:
    assert decode_gb18030("烟感".encode("gb18030") + b"\x00\xff\xfe garbage") == "烟感"
    assert decode_gb18030(b"\x00" * 31) == ""
    assert decode_gb18030(b"\xff\x00") == "\ufffd"  # a stray byte: replaced, never raised


# --- limits and batching -------------------------------------------------------------------------


def test_encode_refuses_too_many_objects_and_oversized_adus() -> None:
    state = UitdState(1, T4)
    with pytest.raises(CodecError, match="allows 1 objects"):
        Adu.of(state, state).encode()
    with pytest.raises(CodecError, match="carries"):
        Adu(21, (UitdVersion(1, 1),)).encode()
    with pytest.raises(CodecError, match="over the limit"):
        encode_frame(Frame(1, 2, 0, 0, T4, bytes(1025)))
    with pytest.raises(CodecError):
        Adu.of(SystemState(256, 0, 0, T4)).encode()


def _component(n: int) -> ComponentState:
    return ComponentState(1, 1, 40, ComponentAddress(1, n), 0x0003, f"{n}号烟感", T4)


def test_pack_fills_each_adu_to_the_type_limit_in_order() -> None:
    states = [_component(n) for n in range(50)]
    adus = pack(states)
    assert [len(a.objects) for a in adus] == [22, 22, 6]  # typeflag 2 allows 22 (46 bytes each)
    assert [o for a in adus for o in a.objects] == states
    assert all(len(a.encode()) <= 1024 for a in adus)


def test_pack_keeps_order_across_typeflags() -> None:
    a, b = _component(1), _component(2)
    power = UitdState(0x08, T4)
    adus = pack([a, power, b, UitdState(0x01, T4)])
    assert [(x.typeflag, len(x.objects)) for x in adus] == [(2, 1), (21, 1), (2, 1), (21, 1)]


def test_pack_respects_each_types_own_limit() -> None:
    operations = [UitdOperation(1, n % 256, T4) for n in range(300)]  # 127 per ADU
    assert [len(a.objects) for a in pack(operations)] == [127, 127, 46]
    configs = [SystemConfig(1, n, "长" * 127) for n in range(4)]  # 3 per ADU, 258 bytes each
    assert [len(a.objects) for a in pack(configs)] == [3, 1]
    assert [len(a.objects) for a in pack([UitdState(1, T4)] * 2)] == [1, 1]


# --- streaming -----------------------------------------------------------------------------------

# GO reader_decoder_test.go: one frame with a wrong checksum (0x63), then three good ones,
# written in the chunks the Go test writes them in.
GO_HEAD = bytes(
    [0x40, 0x40, 0x00, 0x00, 0x01, 0x01, 0x18, 0x0D, 0x11, 0x16, 0x0A, 0x14, 0, 0, 0, 0, 0, 0]
)
GO_ADDR = bytes([0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x30, 0x00, 0x02])
GO_ADU = GO_FRAME[27:75]  # fmt: skip


def test_go_reader_stream_reports_the_bad_checksum_then_decodes_the_rest() -> None:
    stream = FrameStream()
    items = []
    for tail in (0x63, 0x68, 0x68, 0x68):
        for chunk in (GO_HEAD, GO_ADDR, GO_ADU, bytes([tail, 0x23, 0x23])):
            items += stream.feed(chunk)
    assert isinstance(items[0], BadFrame)
    assert (items[0].reason, items[0].serial, items[0].destination) == (
        "checksum",
        0,
        0x010203040506,
    )
    assert items[1:] == [decode_frame(GO_FRAME)] * 3
    assert stream.pending == 0 and stream.discarded == 0


def test_stream_skips_garbage_and_reports_each_kind_of_bad_frame() -> None:
    good = DESC_FRAMES[1][1]
    bad_length = bytearray(good)
    bad_length[24:26] = (1025).to_bytes(2, "little")
    bad_end = good[:-1] + b"$"
    bad_sum = good[:-3] + b"\x00##"
    stream = FrameStream()
    items = stream.feed(b"\x01garbage#" + bytes(bad_length) + bad_end + bad_sum + good)
    assert [i.reason if isinstance(i, BadFrame) else "frame" for i in items] == [
        "length", "end", "checksum", "frame",
    ]  # fmt: skip
    assert items[-1] == decode_frame(good)


def test_stream_is_not_stalled_by_a_false_start_announcing_a_long_adu() -> None:
    false_start = b"@@" + bytes(22) + (900).to_bytes(2, "little") + b"\x02"
    stream = FrameStream()
    assert stream.feed(false_start) == []
    good = DESC_FRAMES[1][1]
    assert stream.feed(good) == [decode_frame(good)]


def test_a_corrupted_length_does_not_make_a_frame_swallow_the_next_one() -> None:
    # the length of the first frame grew by exactly the second frame: its extent now ends at
    # the second frame's end marker, so only the checksum can tell
    good = DESC_FRAMES[3][1]
    damaged = bytearray(DESC_FRAMES[1][1])
    damaged[24:26] = len(good).to_bytes(2, "little")
    items = FrameStream().feed(bytes(damaged) + good)
    assert [i.reason if isinstance(i, BadFrame) else i for i in items] == [
        "checksum", decode_frame(good),
    ]  # fmt: skip


def test_garbage_running_into_a_real_start_is_not_reported_as_a_bad_frame() -> None:
    # "@@" + "@@..." reads as a header at first; a second start inside it means garbage,
    # so no deny goes out for it
    good = DESC_FRAMES[1][1]
    assert FrameStream().feed(b"@@" + good) == [decode_frame(good)]
    assert FrameStream().feed(b"\x00@" + good) == [decode_frame(good)]


def test_stream_keeps_a_lone_at_sign_that_may_start_a_frame() -> None:
    good = DESC_FRAMES[1][1]
    stream = FrameStream()
    assert stream.feed(b"xyz@") == []
    assert stream.feed(good[1:]) == [decode_frame(good)]


# --- time label ----------------------------------------------------------------------------------


def test_time_label_clamps_what_it_cannot_carry_and_survives_2038() -> None:
    assert GbTime.from_epoch(0) == GbTime(0, 0, 0, 1, 1, 0)  # unsynced clock: 2000-01-01
    assert GbTime.from_epoch(2**31 + 10, utc_offset_s=0) == GbTime(18, 14, 3, 19, 1, 38)
    assert GbTime(18, 14, 3, 19, 1, 38).to_epoch(utc_offset_s=0) == 2**31 + 10
    assert GbTime.from_epoch(10**12) == GbTime(59, 59, 23, 31, 12, 99)
    assert not GbTime(0, 0, 0, 31, 2, 20).valid
    with pytest.raises(CodecError):
        GbTime(60, 0, 0, 1, 1, 20).to_epoch()
    assert str(GbTime(0, 0, 0, 31, 2, 20)) == "invalid(20-2-31 0:0:0)"

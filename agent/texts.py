"""Every sentence the gateway writes itself into an event's `text`, in both languages.

The `text` of an event is for the people who read it (the platform's operator, the
technician's `alarmgw events`); machines read kind, category, state and detail. The
site chooses the language with `[site] language` ("zh", the default for this market,
or "en"); names from the config and the device profiles are used as they are written.

One catalogue, one key per sentence, both languages side by side in the two tables
below (tests/test_texts.py checks that every key has both, with the same fields).
Adding a sentence: a key in `Msg`, then one line in each table.

This module must never do I/O and never raise on a field it is given: a template
is filled by `Texts(...)(Msg.X, field=value)`; a missing field is a bug the tests catch.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

DEFAULT_LANGUAGE: Final = "zh"


class Msg(enum.StrEnum):
    # the field: comm, decoding, contacts (device and point names come from the config)
    COMM_LOST = "comm_lost"
    COMM_RESTORED = "comm_restored"
    DECODE_FAILED = "decode_failed"
    DECODE_RESTORED = "decode_restored"
    RESTORED_LABEL = "restored_label"  # a threshold's or a condition's label, restored
    WIRE_BREAK = "wire_break"
    UNKNOWN_CODE = "unknown_code"
    CONTACT = "contact"
    CONTACT_KIND = "contact_kind"
    WORD_ALARM = "word_alarm"
    WORD_FAULT = "word_fault"
    WORD_SUPERVISORY = "word_supervisory"
    WORD_RESTORE = "word_restore"
    REMEMBERED_ALARM = "remembered_alarm"
    # the gateway itself
    TEST_ALARM = "test_alarm"
    RESTART_RECHECK = "restart_recheck"
    CLOCK_SYNCED = "clock_synced"
    CLOCK_UNSYNCED = "clock_unsynced"
    GPIO_UNAVAILABLE = "gpio_unavailable"
    CONTROL_SOCKET_DOWN = "control_socket_down"
    POINTSTATE_FAULT = "pointstate_fault"
    POINTSTATE_RESTORED = "pointstate_restored"
    POINTSTATE_UNREAD = "pointstate_unread"
    INTERNAL_ERROR = "internal_error"
    INTERNAL_RESTORED = "internal_restored"
    OUTPUT_FAILED = "output_failed"
    OUTPUT_RESTORED = "output_restored"
    # the duties of a user information transmission device
    DUTY_ANSWERED = "duty_answered"
    DUTY_UNANSWERED = "duty_unanswered"
    WORD_SOURCE_CENTRE = "word_source_centre"
    WORD_SOURCE_PLATFORM = "word_source_platform"
    # the UITD duties: self-test, simulated fire transmissions, monthly self-check
    SELFTEST_PASSED = "selftest_passed"
    SELFTEST_FAILED = "selftest_failed"
    SELFTEST_ITEM_FAILED = "selftest_item_failed"
    SELFTEST_ITEM_RESTORED = "selftest_item_restored"
    SIMULATED_FIRES_DUE = "simulated_fires_due"
    SELFCHECK_REPORT = "selfcheck_report"
    POINT_UNDER_TEST = "point_under_test"
    POINT_TEST_ENDED = "point_test_ended"
    # delivery: the uplink and the buffer
    SET_ASIDE = "set_aside"
    BUFFER_DEGRADED = "buffer_degraded"
    BUFFER_RESTORED = "buffer_restored"
    BUFFER_OVERFLOW = "buffer_overflow"
    BUFFER_LOST_RANGE = "buffer_lost_range"
    BUFFER_CONTINUITY_UNKNOWN = "buffer_continuity_unknown"
    # the GB/T 26875.3 uplink to the fire remote-monitoring centre
    GB_LINK_FAULT = "gb_link_fault"
    GB_LINK_RESTORED = "gb_link_restored"
    GB_DENIED = "gb_denied"
    GB_UNMAPPED = "gb_unmapped"
    GB_CLOCK_SYNC = "gb_clock_sync"
    GB_INITIALISE = "gb_initialise"
    GB_CLOCK_SET = "gb_clock_set"
    GB_CLOCK_NOT_CONFIGURED = "gb_clock_not_configured"
    GB_CLOCK_KEPT_BY_NTP = "gb_clock_kept_by_ntp"
    GB_CLOCK_REFUSED = "gb_clock_refused"
    GB_CLOCK_INVALID = "gb_clock_invalid"


ZH: Final[Mapping[Msg, str]] = {
    Msg.COMM_LOST: "{device} 通信故障（{reason}，连续{failures}次）",
    Msg.COMM_RESTORED: "{device} 通信恢复",
    Msg.DECODE_FAILED: "{device} {point} 数据无法解析",
    Msg.DECODE_RESTORED: "{device} {point} 数据恢复",
    Msg.RESTORED_LABEL: "{label}恢复",
    Msg.WIRE_BREAK: "断线",
    Msg.UNKNOWN_CODE: "未知状态码{code}",
    Msg.CONTACT: "{name}：{state}",
    Msg.CONTACT_KIND: "{name}：{state}（{word}）",
    Msg.WORD_ALARM: "报警",
    Msg.WORD_FAULT: "故障",
    Msg.WORD_SUPERVISORY: "监管",
    Msg.WORD_RESTORE: "恢复",
    Msg.REMEMBERED_ALARM: "{device} {point} {state}（重启前已报）",
    Msg.TEST_ALARM: "{who} 测试火警（{requested_by}）",
    Msg.RESTART_RECHECK: "网关重启，重新检测：{state}",
    Msg.CLOCK_SYNCED: "网关时钟已同步",
    Msg.CLOCK_UNSYNCED: "网关时钟未同步（无RTC，等待NTP）：事件时间可能不准",
    Msg.GPIO_UNAVAILABLE: "网关GPIO不可用：{reason}",
    Msg.CONTROL_SOCKET_DOWN: "本地控制接口不可用：{reason}",
    Msg.POINTSTATE_FAULT: "报警记忆无法保存（{problem}）：重启后报警可能重复上报，恢复可能缺失",
    Msg.POINTSTATE_RESTORED: "报警记忆恢复保存",
    Msg.POINTSTATE_UNREAD: (
        "报警记忆无法读取：重启前的报警若仍存在将再次上报，停机期间已恢复的报警可能收不到恢复"
    ),
    Msg.INTERNAL_ERROR: "网关内部处理出错（{what}）：{reason}",
    Msg.INTERNAL_RESTORED: "网关内部处理恢复正常（{what}）",
    Msg.OUTPUT_FAILED: "输出 {output} 无法驱动：{reason}",
    Msg.OUTPUT_RESTORED: "输出 {output} 恢复驱动",
    Msg.DUTY_ANSWERED: "{source}查岗已应答（{response_s:.0f} 秒，{how}）",
    Msg.DUTY_UNANSWERED: "{source}查岗无人应答（等待 {waited_s:.0f} 秒）",
    Msg.WORD_SOURCE_CENTRE: "监控中心",
    Msg.WORD_SOURCE_PLATFORM: "平台",
    Msg.SELFTEST_PASSED: "网关自检通过（{count}项）",
    Msg.SELFTEST_FAILED: "网关自检发现{count}项异常：{items}",
    Msg.SELFTEST_ITEM_FAILED: "自检异常：{part} {item}（{reason}）",
    Msg.SELFTEST_ITEM_RESTORED: "自检恢复正常：{part} {item}",
    Msg.SIMULATED_FIRES_DUE: "本月模拟火警传输仅{count}次（至少{required}次），请尽快进行",
    Msg.SELFCHECK_REPORT: (
        "月度自检（{operator}）：通过{passed}，失败{failed}，未测{untested}，模拟火警确认{confirmed}次"
    ),
    Msg.POINT_UNDER_TEST: "月度自检开始测试 {device}/{point}：其事件标为测试，不启动疏散蜂鸣",
    Msg.POINT_TEST_ENDED: "月度自检结束测试 {device}/{point}（{why}）：其事件恢复为真实报警",
    Msg.SET_ASIDE: "{lane} 序号 {seq} 被服务器拒收，未发送即移除：{why}",
    Msg.BUFFER_DEGRADED: "缓存降级：数据库拒绝写入（{reason}），事件暂存内存",
    Msg.BUFFER_RESTORED: "缓存恢复：事件重新写入磁盘",
    Msg.BUFFER_OVERFLOW: "缓存已满：丢弃 {total} 条记录（上限 {max_events}）",
    Msg.BUFFER_LOST_RANGE: "{why}；{lane} 序号 {low}..{high} 可能丢失",
    Msg.BUFFER_CONTINUITY_UNKNOWN: "{why}；{lane} 序号连续性未知",
    Msg.GB_LINK_FAULT: "与消防远程监控中心通信故障：{reason}",
    Msg.GB_LINK_RESTORED: "与消防远程监控中心通信恢复",
    Msg.GB_DENIED: "消防远程监控中心拒收 {lane} 序号 {seqs}（重发{sends}次），不再向中心发送",
    Msg.GB_UNMAPPED: "{lane} 序号 {seqs} 的报警无法转换为 GB/T 26875.3 信息对象，未发往监控中心",
    Msg.GB_CLOCK_SYNC: "监控中心校时：中心时间 {centre}，网关时钟相差 {offset_s} 秒，{action}",
    Msg.GB_INITIALISE: "监控中心要求初始化传输装置：重新上报运行状态和版本，缓存记录保留",
    Msg.GB_CLOCK_SET: "已按中心时间校准网关时钟",
    Msg.GB_CLOCK_NOT_CONFIGURED: "未校准网关时钟（配置 set_clock = false）",
    Msg.GB_CLOCK_KEPT_BY_NTP: "未校准网关时钟（时钟由NTP同步）",
    Msg.GB_CLOCK_REFUSED: "无法校准网关时钟（{why}）",
    Msg.GB_CLOCK_INVALID: "中心时间无效，已忽略",
}

EN: Final[Mapping[Msg, str]] = {
    Msg.COMM_LOST: "{device} not answering ({reason}, {failures} times in a row)",
    Msg.COMM_RESTORED: "{device} answering again",
    Msg.DECODE_FAILED: "{device} {point}: data cannot be decoded",
    Msg.DECODE_RESTORED: "{device} {point}: data decoded again",
    Msg.RESTORED_LABEL: "{label} restored",
    Msg.WIRE_BREAK: "wire break",
    Msg.UNKNOWN_CODE: "unknown state code {code}",
    Msg.CONTACT: "{name}: {state}",
    Msg.CONTACT_KIND: "{name}: {state} ({word})",
    Msg.WORD_ALARM: "alarm",
    Msg.WORD_FAULT: "fault",
    Msg.WORD_SUPERVISORY: "supervisory",
    Msg.WORD_RESTORE: "restore",
    Msg.REMEMBERED_ALARM: "{device} {point} {state} (reported before the restart)",
    Msg.TEST_ALARM: "{who} test fire alarm ({requested_by})",
    Msg.RESTART_RECHECK: "gateway restarted, checking again: {state}",
    Msg.CLOCK_SYNCED: "gateway clock synchronised",
    Msg.CLOCK_UNSYNCED: (
        "gateway clock not synchronised (no RTC, waiting for NTP): event times may be wrong"
    ),
    Msg.GPIO_UNAVAILABLE: "gateway GPIO unavailable: {reason}",
    Msg.CONTROL_SOCKET_DOWN: "local control socket unavailable: {reason}",
    Msg.POINTSTATE_FAULT: (
        "alarm memory cannot be saved ({problem}): after a restart alarms may be reported "
        "again and restores may be missing"
    ),
    Msg.POINTSTATE_RESTORED: "alarm memory saved again",
    Msg.POINTSTATE_UNREAD: (
        "alarm memory could not be read: alarms from before the restart that still hold are "
        "reported again; one that ended while the agent was down may get no restore"
    ),
    Msg.INTERNAL_ERROR: "gateway internal error ({what}): {reason}",
    Msg.INTERNAL_RESTORED: "gateway internal processing works again ({what})",
    Msg.OUTPUT_FAILED: "output {output} cannot be driven: {reason}",
    Msg.OUTPUT_RESTORED: "output {output} driven again",
    Msg.DUTY_ANSWERED: "{source} duty check answered ({response_s:.0f} s, {how})",
    Msg.DUTY_UNANSWERED: "{source} duty check not answered (waited {waited_s:.0f} s)",
    Msg.WORD_SOURCE_CENTRE: "monitoring centre",
    Msg.WORD_SOURCE_PLATFORM: "platform",
    Msg.SELFTEST_PASSED: "gateway self-test passed ({count} items)",
    Msg.SELFTEST_FAILED: "gateway self-test: {count} items failed: {items}",
    Msg.SELFTEST_ITEM_FAILED: "self-test failed: {part} {item} ({reason})",
    Msg.SELFTEST_ITEM_RESTORED: "self-test passes again: {part} {item}",
    Msg.SIMULATED_FIRES_DUE: (
        "only {count} simulated fire transmissions this month (at least {required}): run them soon"
    ),
    Msg.SELFCHECK_REPORT: (
        "monthly self-check ({operator}): {passed} passed, {failed} failed, {untested} untested, "
        "{confirmed} simulated fire transmissions confirmed"
    ),
    Msg.POINT_UNDER_TEST: (
        "monthly self-check: {device}/{point} under test, its events are tests"
        " (no evacuation buzzer)"
    ),
    Msg.POINT_TEST_ENDED: (
        "monthly self-check: {device}/{point} no longer under test ({why}): its events are real"
    ),
    Msg.SET_ASIDE: "{lane} seq {seq} was refused by the broker and set aside unsent: {why}",
    Msg.BUFFER_DEGRADED: (
        "buffer degraded: database refuses writes ({reason}); events held in memory"
    ),
    Msg.BUFFER_RESTORED: "buffer recovered: events are stored on disk again",
    Msg.BUFFER_OVERFLOW: "buffer full: {total} records dropped (max_events {max_events})",
    Msg.BUFFER_LOST_RANGE: "{why}; {lane} seqs {low}..{high} may have been lost",
    Msg.BUFFER_CONTINUITY_UNKNOWN: "{why}; {lane} sequence continuity unknown",
    Msg.GB_LINK_FAULT: "link to the fire remote-monitoring centre failed: {reason}",
    Msg.GB_LINK_RESTORED: "link to the fire remote-monitoring centre restored",
    Msg.GB_DENIED: (
        "the fire remote-monitoring centre denied {lane} seqs {seqs} ({sends} sends); "
        "not sent to the centre again"
    ),
    Msg.GB_UNMAPPED: (
        "the alarm {lane} seqs {seqs} cannot be made into a GB/T 26875.3 object; "
        "not sent to the centre"
    ),
    Msg.GB_CLOCK_SYNC: (
        "clock sync from the centre: centre time {centre}, gateway clock {offset_s} s off, {action}"
    ),
    Msg.GB_INITIALISE: (
        "the centre asked the device to initialise: running state and version sent again, "
        "buffered records kept"
    ),
    Msg.GB_CLOCK_SET: "gateway clock set to the centre's time",
    Msg.GB_CLOCK_NOT_CONFIGURED: "gateway clock not set (set_clock = false)",
    Msg.GB_CLOCK_KEPT_BY_NTP: "gateway clock not set (kept by NTP)",
    Msg.GB_CLOCK_REFUSED: "gateway clock could not be set ({why})",
    Msg.GB_CLOCK_INVALID: "the centre's time is not valid: ignored",
}

CATALOGUE: Final[Mapping[str, Mapping[Msg, str]]] = {"zh": ZH, "en": EN}
LANGUAGES: Final = tuple(CATALOGUE)


class Texts:
    """The catalogue in one language: `texts(Msg.COMM_RESTORED, device="1号控制器")`."""

    __slots__ = ("_table", "language")

    def __init__(self, language: str = DEFAULT_LANGUAGE) -> None:
        if language not in CATALOGUE:
            raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}")
        self.language = language
        self._table = CATALOGUE[language]

    def __call__(self, key: Msg, /, **fields: object) -> str:
        return self._table[key].format(**fields)

    def __repr__(self) -> str:
        return f"Texts({self.language!r})"


CHINESE: Final = Texts("zh")  # the default of every part that takes a `texts`

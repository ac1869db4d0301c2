"""The standard's code tables (GB/T 26875.3-2011, 8.2.1): names of system, component and
analog types, and the status and operation bits. Facts, used for readable logs, the simulated
centre and docs; the profile mapping that chooses codes for our points is not here.

Source: the Chinese description in ActorLancer/GB-T-26875.3.2011-rs, file GB26875文档.md,
checked against dgiot/dgiot apps/dgiot_gb26875/src/protocol/dgiot_gb26875_utils.erl. Where
they differ the fix is noted: system type 23 is 消防电源 (the description repeats 消防电梯),
analog type 5's step is 0.1 kPa (the description says "0.1Mpa").
"""

from __future__ import annotations

import enum
from typing import NamedTuple

SYSTEM_TYPES: dict[int, str] = {
    0: "通用",
    1: "火灾报警系统",
    10: "消防联动控制器",
    11: "消火栓系统",
    12: "自动喷水灭火系统",
    13: "气体灭火系统",
    14: "水喷雾灭火系统（泵启动方式）",
    15: "水喷雾灭火系统（压力容器启动方式）",
    16: "泡沫灭火系统",
    17: "干粉灭火系统",
    18: "防烟排烟系统",
    19: "防火门及卷帘系统",
    20: "消防电梯",
    21: "消防应急广播",
    22: "消防应急照明和疏散指示系统",
    23: "消防电源",
    24: "消防电话",
}

COMPONENT_TYPES: dict[int, str] = {
    0: "通用",
    1: "火灾报警控制器",
    10: "可燃气体探测器",
    11: "点型可燃气体探测器",
    12: "独立式可燃气体探测器",
    13: "线型可燃气体探测器",
    16: "电气火灾监控报警器",
    17: "剩余电流式电气火灾监控探测器",
    18: "测温式电气火灾监控探测器",
    21: "探测回路",
    22: "火灾显示盘",
    23: "手动火灾报警按钮",
    24: "消火栓按钮",
    25: "火灾探测器",
    30: "感温火灾探测器",
    31: "点型感温火灾探测器",
    32: "点型感温火灾探测器（S型）",
    33: "点型感温火灾探测器（R型）",
    34: "线型感温火灾探测器",
    35: "线型感温火灾探测器（S型）",
    36: "线型感温火灾探测器（R型）",
    37: "光纤感温火灾探测器",
    40: "感烟火灾探测器",
    41: "点型离子感烟火灾探测器",
    42: "点型光电感烟火灾探测器",
    43: "线型光束感烟火灾探测器",
    44: "吸气式感烟火灾探测器",
    50: "复合式火灾探测器",
    51: "复合式感烟感温火灾探测器",
    52: "复合式感光感温火灾探测器",
    53: "复合式感光感烟火灾探测器",
    61: "紫外火焰探测器",
    62: "红外火焰探测器",
    69: "感光火灾探测器",
    74: "气体探测器",
    78: "图像摄像方式火灾探测器",
    79: "感声火灾探测器",
    81: "气体灭火控制器",
    82: "消防电气控制装置",
    83: "消防控制室图形显示装置",
    84: "模块",
    85: "输入模块",
    86: "输出模块",
    87: "输入/输出模块",
    88: "中继模块",
    91: "消防水泵",
    92: "消防水箱",
    95: "喷淋泵",
    96: "水流指示器",
    97: "信号阀",
    98: "报警阀",
    99: "压力开关",
    101: "阀驱动装置",
    102: "防火门",
    103: "防火阀",
    104: "通风空调",
    105: "泡沫液泵",
    106: "管网电磁阀",
    111: "防烟排烟风机",
    113: "排烟防火阀",
    114: "常闭送风口",
    115: "排烟口",
    116: "电控挡烟垂壁",
    117: "防火卷帘控制器",
    118: "防火门监控器",
    121: "警报装置",
}


class AnalogType(NamedTuple):
    name: str
    unit: str
    step: float  # engineering value of one count of the signed 16-bit value


ANALOG_TYPES: dict[int, AnalogType] = {
    1: AnalogType("事件计数", "件", 1),
    2: AnalogType("高度", "m", 0.01),
    3: AnalogType("温度", "℃", 0.1),
    4: AnalogType("压力", "MPa", 0.1),
    5: AnalogType("压力", "kPa", 0.1),
    6: AnalogType("气体浓度", "%LEL", 0.1),
    7: AnalogType("时间", "s", 1),
    8: AnalogType("电压", "V", 0.1),
    9: AnalogType("电流", "A", 0.1),
    10: AnalogType("流量", "L/s", 0.1),
    11: AnalogType("风量", "m³/min", 0.1),
    12: AnalogType("风速", "m/s", 1),
}


def type_name(table: dict[int, str], code: int) -> str:
    """The name of a code, or what the standard says its range is."""
    if code in table:
        return table[code]
    return "用户自定义" if code >= 128 else "预留"


class ComponentStatus(enum.IntFlag):
    """Component status bits (8.2.1.2); bit 0 set = normal operation, clear = test."""

    NORMAL = 1 << 0
    FIRE = 1 << 1
    FAULT = 1 << 2
    ISOLATED = 1 << 3  # 屏蔽
    SUPERVISORY = 1 << 4
    STARTED = 1 << 5
    FEEDBACK = 1 << 6
    DELAYED = 1 << 7
    POWER_FAULT = 1 << 8


class SystemStatus(enum.IntFlag):
    """Facility system status bits (8.2.1.1): the component bits 0-7, then power and mode."""

    NORMAL = 1 << 0
    FIRE = 1 << 1
    FAULT = 1 << 2
    ISOLATED = 1 << 3
    SUPERVISORY = 1 << 4
    STARTED = 1 << 5
    FEEDBACK = 1 << 6
    DELAYED = 1 << 7
    MAIN_POWER_FAULT = 1 << 8
    BACKUP_POWER_FAULT = 1 << 9
    BUS_FAULT = 1 << 10
    MANUAL_MODE = 1 << 11
    CONFIG_CHANGED = 1 << 12
    RESET = 1 << 13


class UitdStatus(enum.IntFlag):
    """The UITD's own running state (8.2.1.8, typeflag 21)."""

    NORMAL = 1 << 0  # clear = test state
    FIRE = 1 << 1
    FAULT = 1 << 2
    MAIN_POWER_FAULT = 1 << 3
    BACKUP_POWER_FAULT = 1 << 4
    LINK_FAULT = 1 << 5  # the channel to the monitoring centre
    LINE_FAULT = 1 << 6  # the monitored connection lines


class SystemOperationFlags(enum.IntFlag):
    """Facility operation bits (8.2.1.4, typeflag 4)."""

    RESET = 1 << 0
    SILENCE = 1 << 1
    MANUAL_ALARM = 1 << 2
    ALARM_CLEARED = 1 << 3
    SELF_TEST = 1 << 4
    CONFIRM = 1 << 5
    TEST = 1 << 6


class UitdOperationFlags(enum.IntFlag):
    """UITD operation bits (8.2.1.9, typeflag 24); bit 5 is the duty-check answer."""

    RESET = 1 << 0
    SILENCE = 1 << 1
    MANUAL_ALARM = 1 << 2
    ALARM_CLEARED = 1 << 3
    SELF_TEST = 1 << 4
    DUTY_ANSWER = 1 << 5
    TEST = 1 << 6

"""The gateway's own texts: one catalogue, both languages complete, the site's choice
applied to every sentence the gateway writes (names from the config stay as written)."""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from agent.config import load_config
from agent.field import DeviceRuntime, comm_event, field_devices
from agent.points import DevicePoints
from agent.rules import contact_event
from agent.texts import CATALOGUE, LANGUAGES, Msg, Texts
from core.errors import ConfigError
from drivers.gpio import ContactChange
from drivers.line import CommChange
from drivers.types import PollClass

ROOT = Path(__file__).resolve().parent.parent
CJK = re.compile(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]")


def fields_of(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_key_is_in_every_language_with_the_same_fields() -> None:
    assert LANGUAGES == ("zh", "en")
    for language, table in CATALOGUE.items():
        assert set(table) == set(Msg), language
    for key in Msg:
        assert fields_of(CATALOGUE["zh"][key]) == fields_of(CATALOGUE["en"][key]), key


def test_english_has_no_chinese_and_chinese_is_chinese() -> None:
    for key, template in CATALOGUE["en"].items():
        assert not CJK.search(template), key
    words = [t for k, t in CATALOGUE["zh"].items() if not fields_of(t) or k is Msg.COMM_LOST]
    assert all(CJK.search(t) for t in words)


def test_an_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="zh, en"):
        Texts("fr")


def example(tmp_path: Path, site: str | None) -> Path:
    text = (ROOT / "config" / "example.toml").read_text(encoding="utf-8")
    text = text.replace('language = "zh"\n', "" if site is None else f"language = {site}\n")
    path = tmp_path / "alarmgw.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_site_language_is_chinese_by_default_and_checked(tmp_path: Path) -> None:
    assert load_config(example(tmp_path, None)).site.language == "zh"
    assert load_config(example(tmp_path, '"en"')).site.language == "en"
    with pytest.raises(ConfigError) as info:
        load_config(example(tmp_path, '"fr"'))
    assert [p.key for p in info.value.problems] == ["site.language"]


def devices(tmp_path: Path, texts: Texts) -> dict[str, DeviceRuntime]:
    cfg = load_config(example(tmp_path, None))
    return field_devices(cfg.devices, cfg.profiles, {}, texts)


def test_comm_events_speak_the_site_language_and_keep_the_device_name(tmp_path: Path) -> None:
    lost = CommChange("gas-1", lost=True, reason="timeout", failures=3, ts_ms=1)
    zh = comm_event(devices(tmp_path, Texts("zh"))["gas-1"], lost, True, Texts("zh"))
    en_dev = devices(tmp_path, Texts("en"))["gas-1"]
    en = comm_event(en_dev, lost, True, Texts("en"))
    assert "通信故障" in zh.text
    assert en.text.endswith("not answering (timeout, 3 times in a row)")
    assert en.text.startswith(en_dev.cfg.name)  # the name as the site wrote it (Chinese)
    assert (en.kind, en.state, en.detail) == (zh.kind, zh.state, zh.detail)  # machines: same


def test_a_point_that_stops_decoding_says_so_in_english(tmp_path: Path) -> None:
    dev = devices(tmp_path, Texts("en"))["gas-1"]
    points = DevicePoints("gas-1", "Kitchen gas", None, dev.profile, texts=Texts("en"))
    events = points.update(PollClass.FAST, [], 1, True)  # no block: nothing decodes
    assert events
    assert all(e.text.endswith("data cannot be decoded") for e in events)
    assert not any("数据" in e.text for e in events)  # point names are the profile's


def test_contact_events_speak_the_site_language(tmp_path: Path) -> None:
    cfg = load_config(example(tmp_path, None))
    manual = next(i for i in cfg.inputs if i.kind == "alarm")
    change = ContactChange(manual.id, True, 1)
    zh = contact_event(manual, change, True)
    en = contact_event(manual, change, True, Texts("en"))
    assert zh.text == f"{manual.name}：{manual.active_state}（报警）"
    assert en.text == f"{manual.name}: {manual.active_state} (alarm)"

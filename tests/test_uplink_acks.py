"""A broker that keeps the connection but stops acknowledging: the gateway notices within
a bound, reconnects and sends everything unacknowledged again, and says why in
`alarmgw status` (exit 1) and in the heartbeat. Real mosquitto behind
simulator.mqtt_proxy.MqttProxy, which swallows PUBLISH packets while muted (so the
broker neither delivers nor acknowledges them; CONNACK and pings still go through)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.buffer import EventBuffer
from agent.cli import EXIT_OK, EXIT_PROBLEM, main
from agent.cli.render import problems
from agent.uplink import PUBACK_TIMEOUT_S, Uplink
from simulator.broker import Mosquitto
from simulator.mqtt_proxy import MqttProxy
from simulator.procs import stop_process
from tests.rig import BIN, running_rig
from tests.test_schemas import validator
from tests.uplink_helpers import IDENT, Collector, Settings, alarm, running, wait_until

ROOT = "alarmgw/v1/site-t/gw-t"


@pytest.fixture
def proxy(broker: Mosquitto) -> Iterator[MqttProxy]:
    with MqttProxy(broker.host, broker.port) as p:
        yield p


def test_a_broker_that_stops_acknowledging_is_dropped_everything_resent_and_it_says_why(
    tmp_path: Path, broker: Mosquitto, proxy: MqttProxy
) -> None:
    col = Collector(broker.host, broker.port, f"{ROOT}/#")
    buffer = EventBuffer(tmp_path / "buffer.db", IDENT, 1000)
    uplink = Uplink(Settings(proxy.host, proxy.port), IDENT, buffer, version="t", config_digest="d")
    try:
        with running(buffer, uplink):
            before = buffer.submit(alarm("before")).result(5)
            assert col.wait_for(lambda: before.seq in col.seqs("event"))
            assert wait_until(lambda: uplink.last_error is None)
            assert problems({"uplink": uplink.stats()}) == []
            proxy.mute()
            muted_at = time.monotonic()
            silenced = buffer.submit(alarm("into the silence")).result(5)
            assert wait_until(lambda: "no PUBACK" in (uplink.last_error or ""), timeout=30)
            noticed_s = time.monotonic() - muted_at
            assert uplink.counters.puback_timeouts >= 1
            # connected again or backing off: either way `status` names a problem
            assert problems({"uplink": uplink.stats()}) in (
                ["uplink down"],
                ["uplink not delivering"],
            )
            assert "no PUBACK" in uplink.health()["uplink"]["last_error"]  # the heartbeat's
            assert silenced.seq not in col.seqs("event")  # swallowed: nothing was delivered
            assert buffer.stats()["event_depth"] == 1  # and nothing was let go
            proxy.unmute()
            assert col.wait_for(lambda: silenced.seq in col.seqs("event"), timeout=30)
            assert wait_until(lambda: uplink.last_error is None)
            assert wait_until(lambda: buffer.stats()["event_depth"] == 0)
            assert problems({"uplink": uplink.stats()}) == []
        print(f"noticed after {noticed_s:.1f} s (PUBACK_TIMEOUT_S = {PUBACK_TIMEOUT_S})")
        # the first heartbeat of the session after the stall told the platform why
        said = [b for b in col.payloads("heartbeat") if b["uplink"].get("last_error")]
        assert said and "no PUBACK" in said[0]["uplink"]["last_error"]
        assert said[0]["uplink"]["puback_timeouts"] >= 1
        validator("heartbeat").validate(said[0])
    finally:
        col.close()


def test_a_slow_broker_that_still_acknowledges_is_not_dropped(
    tmp_path: Path, broker: Mosquitto
) -> None:
    """The bound runs from the last PUBACK, not from each publish: a backlog drained
    through a broker that acknowledges is never cut, however long it takes."""
    buffer = EventBuffer(tmp_path / "buffer.db", IDENT, 100_000)
    uplink = Uplink(
        Settings(broker.host, broker.port, inflight_window=5),
        IDENT,
        buffer,
        version="t",
        config_digest="d",
    )
    with running(buffer, uplink):
        assert wait_until(lambda: uplink.connected)
        for f in [buffer.submit(alarm(f"a{i}")) for i in range(3000)]:
            f.result(10)
        broker.freeze()  # a pause shorter than the bound: acknowledgements resume after
        time.sleep(PUBACK_TIMEOUT_S / 2)  # the stimulus itself is a span of time
        broker.thaw()
        assert wait_until(lambda: buffer.stats()["depth"] == 0, timeout=60)
    assert uplink.counters.puback_timeouts == 0
    assert uplink.counters.reconnects == 0


def _status(socket: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["status", "--json", "--socket", str(socket)])
    return code, json.loads(capsys.readouterr().out)


def test_status_exits_1_and_shows_why_when_the_broker_never_acknowledges(
    tmp_path: Path, broker: Mosquitto, proxy: MqttProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole agent (`alarmgw run`) against a broker that accepts and CONNACKs but
    never PUBACKs: even idle, its online status goes unacknowledged and it notices."""
    proxy.mute()
    with running_rig(tmp_path, broker, play_timeline=False, agent=False) as rig:
        with (tmp_path / "agent.log").open("ab") as log:
            broker_arg = f"127.0.0.1:{proxy.port}"
            rig.agent = subprocess.Popen(
                [str(BIN / "alarmgw"), "run", str(rig.agent_config), "--broker", broker_arg],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=rig.env,
            )
        try:
            rig.wait_agent_ready()
            deadline = time.monotonic() + 30
            code, status = _status(rig.control_socket, capsys)
            while "no PUBACK" not in (status["uplink"].get("last_error") or ""):
                assert time.monotonic() < deadline, f"never noticed: {status['uplink']}"
                time.sleep(0.2)  # the agent's state changes on its own clock; nothing to await
                code, status = _status(rig.control_socket, capsys)
            assert code == EXIT_PROBLEM
            assert main(["status", "--socket", str(rig.control_socket)]) == EXIT_PROBLEM
            screen = capsys.readouterr().out
            assert "last error: no PUBACK from the broker" in screen
            assert "uplink not delivering" in screen or "uplink down" in screen
            proxy.unmute()  # the broker acknowledges again: all clear once it has
            assert wait_until(lambda: _status(rig.control_socket, capsys)[0] == EXIT_OK, 30)
        finally:
            stop_process(rig.agent)

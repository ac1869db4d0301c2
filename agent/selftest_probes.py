"""What the self-test (agent/selftest.py) reads of the running gateway: the views' parts
(GPIO, devices, buffer), the live-read path of agent/views.py, the faults outstanding,
the alarm memory, the UITD records file and the uplinks. Reads only: nothing here drives
an output or writes anywhere but the records file's probe key.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.faults import Faults
from agent.selftest import PROBE_KEY
from agent.uitd_records import UitdRecords
from agent.views import Actions, Parts


class GatewayProbes:
    """agent.selftest.Probes over the running gateway's parts."""

    def __init__(
        self,
        parts: Parts,
        actions: Actions,
        faults: Faults,
        records: UitdRecords,
        pointstate_problem: Callable[[], str | None],
        uplinks: Callable[[], dict[str, Any]],
    ) -> None:
        self.parts = parts
        self.actions = actions
        self.faults = faults
        self.records = records
        self._pointstate_problem = pointstate_problem
        self._uplinks = uplinks

    def input_ids(self) -> list[str]:
        return [i.id for i in self.parts.cfg.inputs]

    def gpio_inputs(self) -> dict[str, Callable[[], bool]]:
        gpio = self.parts.gpio
        return {} if gpio is None else {k: c.read_now for k, c in gpio.inputs.items()}

    def devices(self) -> dict[str, bool]:
        return {dev_id: dev.lost for dev_id, dev in self.parts.devices.items()}

    def live_read(self, device: str) -> None:
        answer = self.actions.read_point(device, None)
        failed = [p for p, v in answer["points"].items() if "error" in v]
        if failed and len(failed) == len(answer["points"]):
            raise RuntimeError(answer["points"][failed[0]]["error"])

    def outputs(self) -> dict[str, tuple[str, bool] | None]:
        gpio = self.parts.gpio
        out: dict[str, tuple[str, bool] | None] = {}
        for cfg in self.parts.cfg.outputs:
            output = None if gpio is None else gpio.outputs.get(cfg.id)
            out[cfg.id] = None if output is None else (output.mode, output.is_on)
        return out

    def failing(self) -> dict[str, str]:
        return self.faults.failing

    def buffer_degraded(self) -> str | None:
        stats = self.parts.buffer.stats()
        return (stats.get("degraded_reason") or "degraded") if stats.get("degraded") else None

    def pointstate_problem(self) -> str | None:
        return self._pointstate_problem()

    def storage_dir(self) -> Path:
        return self.parts.cfg.buffer.path.parent

    def records_probe(self, token: str) -> str:
        self.records.put(PROBE_KEY, token)
        return str(self.records.get(PROBE_KEY))

    def uplinks(self) -> dict[str, bool]:
        return {name: bool(part.connected) for name, part in self._uplinks().items()}

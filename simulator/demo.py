"""The end-to-end demo: a private broker, the simulator, the agent, and the feed printed.

devices (alarmgw-sim, care-home scenario) -> agent (alarmgw run) -> mosquitto
-> a subscriber printing each message in readable form; beside it, the same agent's
GB/T 26875.3 uplink -> a simulated fire remote-monitoring centre (simulator/centre.py)
printing each packet it receives and sends, prefixed "centre". Ctrl-C (or --duration)
stops everything and leaves nothing running.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli.watch import render
from simulator.broker import Mosquitto
from simulator.centre import DEFAULT_ADDRESS, Centre, CentreControl
from simulator.procs import stop_process
from simulator.scenario import RUN_DIR

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "config" / "scenarios"
AGENT_CONFIG = ROOT / "config" / "scenarios" / "care-home-agent.toml"


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # its own session: Ctrl-C goes to the terminal's process group, and the demo, not the
    # keyboard, stops the parts in order (agent first, so it says offline cleanly)
    with log.open("ab") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _subscribe(port: int, printed: list[str], telemetry: bool) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alarmgw-demo-feed")

    def on_connect(c: mqtt.Client, *_: object) -> None:
        c.subscribe("alarmgw/v1/#", qos=1)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        leaf = msg.topic.split("/", 4)[-1]
        if leaf == "telemetry" and not telemetry:
            return
        line = render(leaf, bytes(msg.payload))
        printed.append(line)
        print(line, flush=True)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


class _CentreView:
    """The simulated centre's echo, printed beside the feed: each line prefixed. Without
    telemetry, the periodic analog values (typeflag 3) and their confirms are left out."""

    def __init__(self, printed: list[str], telemetry: bool) -> None:
        self._printed = printed
        self._telemetry = telemetry
        self._hidden: set[str] = set()  # serials of analog packets, to hide their confirms

    def _shown(self, line: str) -> bool:
        if self._telemetry:
            return True
        serial = re.search(r"(?:<-|->) (#\d+) ", line)
        if "ComponentAnalog" in line and serial:
            self._hidden.add(serial.group(1))
            return False
        return not (serial and "confirm" in line and serial.group(1) in self._hidden)

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip() and self._shown(line):
                shown = f"centre   {line}"
                self._printed.append(shown)
                print(shown, flush=True)
        return len(text)

    def flush(self) -> None:
        pass


def _agent_config(work: Path, centre_port: int) -> Path:
    """The demo agent's config with a [gb26875] section towards the simulated centre."""
    path = work / "agent.toml"
    text = AGENT_CONFIG.read_text(encoding="utf-8")
    text += (
        "\n# added by the demo: the simulated fire remote-monitoring centre\n"
        f'[gb26875]\nhost = "127.0.0.1"\nport = {centre_port}\n'
        f"uitd_address = 0x0000C0A80164\ncentre_address = {DEFAULT_ADDRESS}\n"
    )
    path.write_text(text, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="alarmgw-demo", description=__doc__)
    parser.add_argument(
        "--duration", type=float, default=0, help="stop after S seconds (0: until Ctrl-C)"
    )
    parser.add_argument("--no-telemetry", action="store_true", help="hide telemetry lines")
    parser.add_argument(
        "--scenario",
        default="care-home",
        choices=("care-home", "training"),
        help="care-home: alarms, faults, restores and a duty check (the default); training: "
        "the staff training's fire, electrical fire, gas leak and duty check",
    )
    args = parser.parse_args(argv)
    scenario = SCENARIOS / f"{args.scenario}.toml"

    work = Path(tempfile.mkdtemp(prefix="alarmgw-demo-"))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    procs: list[subprocess.Popen[bytes]] = []
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="alarmgw-sim", PYTHONUNBUFFERED="1")
    bindir = Path(sys.executable).parent
    printed: list[str] = []
    centre = Centre(log=work / "centre.jsonl", echo=_CentreView(printed, not args.no_telemetry))  # type: ignore[arg-type]
    with Mosquitto(work / "broker") as broker, centre:
        print(f"broker   mosquitto on 127.0.0.1:{broker.port}")
        print(f"centre   GB/T 26875.3 on 127.0.0.1:{centre.port}  (log {work / 'centre.jsonl'})")
        # `alarmgw-sim centre duty-check` (or read, clock-sync) from another terminal reaches it
        control_path = Path(os.environ.get("ALARMGW_CENTRE_CONTROL", RUN_DIR / "centre.sock"))
        control = CentreControl(centre, control_path).start()
        print("centre   try: alarmgw-sim centre duty-check, then alarmgw-sim press duty-answer")
        agent_config = _agent_config(work, centre.port)
        client = _subscribe(broker.port, printed, telemetry=not args.no_telemetry)
        try:
            # the simulator's platform stand-in asks for the duty check through this broker
            sim = [str(bindir / "alarmgw-sim"), "run", str(scenario)]
            procs.append(
                _spawn([*sim, "--broker", f"127.0.0.1:{broker.port}"], work / "sim.log", env)
            )
            print(f"sim      {scenario.relative_to(ROOT)}  (log {work / 'sim.log'})")
            procs.append(
                _spawn(
                    [
                        str(bindir / "alarmgw"),
                        "run",
                        str(agent_config),
                        "--broker",
                        f"127.0.0.1:{broker.port}",
                    ],
                    work / "agent.log",
                    env,
                )
            )
            print(
                f"agent    {AGENT_CONFIG.relative_to(ROOT)} + [gb26875]  (log {work / 'agent.log'})"
            )
            print("feed     (Ctrl-C to stop)\n" + "-" * 79)
            deadline = time.monotonic() + args.duration if args.duration else None
            while not stop.wait(0.2):
                if deadline and time.monotonic() > deadline:
                    break
                dead = [p for p in procs if p.poll() is not None]
                if dead:
                    print(f"a component exited (status {dead[0].returncode}); see logs in {work}")
                    return 1
        finally:
            for p in reversed(procs):  # the agent, then the simulator; the broker last
                stop_process(p, timeout=10)
            client.disconnect()
            client.loop_stop()
            control.close()
    print("-" * 79 + f"\nstopped; {len(printed)} messages shown; logs in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

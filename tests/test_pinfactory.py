"""The alarmgw-sim gpiozero pin factory: gpiozero code works unchanged against the simulator.

In-process tests run the simulator's board and a SimFactory side by side over a
real Unix socket; one test runs gpiozero in a second process selected only by
GPIOZERO_PIN_FACTORY=alarmgw-sim, as the agent will.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import LED, Button, DigitalInputDevice
from gpiozero.exc import BadPinFactory

from simulator.gpio_server import GpioBoard, GpioServer, SimInput, SimOutput
from simulator.pinfactory import SimFactory


def wait_for(condition, timeout: float = 5.0) -> bool:
    """Poll a condition with a deadline (the state lives in another thread or process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


@pytest.fixture
def board(tmp_path: Path) -> Iterator[tuple[GpioBoard, Path]]:
    b = GpioBoard(
        [
            SimInput("door", 17),
            SimInput("tamper", 23, active="high"),
            SimInput("flow", 5, rail="3v3", active="high"),
        ],
        [SimOutput("buzzer", 24), SimOutput("led", 25)],
    )
    server = GpioServer(b, tmp_path / "gpio.sock").start()
    try:
        yield b, tmp_path / "gpio.sock"
    finally:
        server.close()


@pytest.fixture
def factory(board) -> Iterator[SimFactory]:
    f = SimFactory(str(board[1]))
    try:
        yield f
    finally:
        f.close()


def test_pull_up_contact_reads_and_edges_fire_in_a_factory_thread(board, factory) -> None:
    b, _ = board
    button = Button(17, pull_up=True, pin_factory=factory)
    assert not button.is_pressed  # open contact + pull-up = high = not pressed
    seen: list[tuple[str, str]] = []
    pressed, released = threading.Event(), threading.Event()
    button.when_pressed = lambda: (
        seen.append(("p", threading.current_thread().name)),
        pressed.set(),
    )
    button.when_released = released.set
    b.set_input("door", True)
    assert pressed.wait(5)
    assert button.is_pressed
    assert seen[0][1] != threading.main_thread().name
    b.set_input("door", False)
    assert released.wait(5)
    assert not button.is_pressed
    button.close()


def test_pulls_are_honoured(board, factory) -> None:
    b, _ = board
    # Tamper: active high, switch held closed to ground by the lid; a pull-up is needed.
    tamper = DigitalInputDevice(23, pull_up=True, pin_factory=factory)
    assert tamper.pin.state == 0  # lid on: contact closed to ground
    b.set_input("tamper", True)  # lid off: contact opens, the pull-up lifts the pin
    assert wait_for(lambda: tamper.pin.state == 1)
    tamper.close()
    # The same open contact with a pull-down reads low: a wrong pull shows, as on a board.
    floating = DigitalInputDevice(23, pull_up=False, pin_factory=factory)
    assert floating.pin.state == 0
    floating.close()
    # A contact to 3V3 with a pull-down: active high works.
    flow = DigitalInputDevice(5, pull_up=False, pin_factory=factory)
    assert not flow.is_active
    b.set_input("flow", True)
    assert wait_for(lambda: flow.is_active)
    flow.close()


def test_outputs_and_blink_are_seen_by_the_simulator(board, factory) -> None:
    b, _ = board
    led = LED(25, pin_factory=factory)
    led.on()
    assert b.outputs["led"].state == 1  # synchronous: seen before on() returned
    led.off()
    assert b.outputs["led"].state == 0
    led.blink(on_time=0.02, off_time=0.02, n=3, background=False)
    states = [h["state"] for h in b.outputs["led"].history]
    assert states[-6:] == [1, 0, 1, 0, 1, 0]
    monos = [h["mono"] for h in b.outputs["led"].history]
    assert monos == sorted(monos)
    led.close()
    assert b.outputs["led"].state is None  # released: no longer driven


def test_no_simulator_is_a_loud_bad_pin_factory(tmp_path: Path) -> None:
    with pytest.raises(BadPinFactory, match=r"gpio\.sock is not reachable.*alarmgw-sim run"):
        SimFactory(str(tmp_path / "gpio.sock"))


def test_unknown_input_is_named(board) -> None:
    b, _ = board
    with pytest.raises(ValueError, match=r"unknown input 'dor' \(known: door, flow, tamper\)"):
        b.set_input("dor", True)


CHILD = r"""
import sys, threading
from gpiozero import Button, Buzzer, Device
button = Button(17, pull_up=True)
buzzer = Buzzer(24)
pressed = threading.Event()
button.when_pressed = pressed.set
print(type(Device.pin_factory).__name__, button.is_pressed, flush=True)
assert pressed.wait(10), "no edge"
buzzer.on()                     # the simulator must see this
print("buzzing", flush=True)
sys.stdin.readline()
"""


@pytest.mark.slow
def test_pin_factory_works_from_a_second_process(board) -> None:
    b, path = board
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="alarmgw-sim", ALARMGW_SIM_GPIO=str(path))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().split() == ["SimFactory", "False"]
        assert b.snapshot()["inputs"]["door"]["pull"] == "up"
        b.set_input("door", True)
        assert child.stdout.readline().strip() == "buzzing"
        assert b.outputs["buzzer"].state == 1
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(10) == 0, child.stderr.read() if child.stderr else ""
        # the child is gone: its pins no longer drive anything
        assert wait_for(lambda: b.outputs["buzzer"].state is None)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()

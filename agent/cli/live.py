"""The `alarmgw` commands that ask the running agent, over its control socket.

status, devices, events (--follow), read, test-alarm, silence, buffer: each sends one
request (agent/cli/client.py), prints the answer in 80 columns (agent/cli/render.py)
or as JSON, and exits with a code that says what it found. An agent that is not
running, a socket this user may not open, an error answer: each is its own exit code.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.cli import render
from agent.cli.client import (
    DEFAULT_SOCKET,
    AgentNotRunning,
    ControlAccessDenied,
    ControlClient,
    ControlError,
)
from agent.cli.output import (
    EXIT_BAD_CONFIG,
    EXIT_NO_PERMISSION,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_PROBLEM,
    emit,
    error,
    print_problems,
)
from core.checks import Problems, read_toml
from core.errors import ConfigError, ConfigProblem

TEST_ALARM_TIMEOUT_S = 30.0  # > the agent's 10 s to store + 10 s to see the PUBACK


def _socket_from_config(path: str) -> Path:
    """The [control] socket of a config file; ConfigError naming file and key.

    Only this key is read: a technician half-way through editing another
    section must still be able to see what the running agent says."""
    # read as check-config reads it: an unreadable, non-UTF-8, malformed or absurdly
    # nested file is one clean problem, never a traceback
    problems = Problems(path)
    raw = read_toml(Path(path), problems)
    problems.raise_if_any()
    assert raw is not None
    control = raw.get("control", {})
    socket_path = control.get("socket", str(DEFAULT_SOCKET)) if isinstance(control, dict) else None
    if not isinstance(socket_path, str) or not socket_path:
        raise ConfigError([ConfigProblem(path, "control.socket", "must be a path (a string)")])
    # relative paths are relative to the config file, as the agent reads them
    return Path(path).resolve().parent / socket_path


def _client(args: argparse.Namespace) -> ControlClient:
    if args.socket:
        return ControlClient(Path(args.socket))
    if args.config:
        return ControlClient(_socket_from_config(args.config))
    return ControlClient(DEFAULT_SOCKET)


def agent_command(
    run: Callable[[argparse.Namespace, ControlClient], int],
) -> Callable[[argparse.Namespace], int]:
    """Wrap a command that needs the agent: every failure becomes a documented exit code."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args, _client(args))
        except ConfigError as exc:
            print_problems(args.config, exc.problems, as_json=False)
            return EXIT_BAD_CONFIG
        except AgentNotRunning as exc:
            error(f"the agent is not running ({exc})\nstart it: sudo systemctl start alarmgw")
            return EXIT_NOT_RUNNING
        except ControlAccessDenied as exc:
            error(str(exc))
            return EXIT_NO_PERMISSION
        except ControlError as exc:
            error(f"the agent answered: {exc.code}: {exc.message}")
            return EXIT_PROBLEM

    return handler


def run_status(args: argparse.Namespace, client: ControlClient) -> int:
    status = client.call("status")
    emit(args, status, render.render_status(status))
    return EXIT_PROBLEM if render.problems(status) else EXIT_OK


def run_devices(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.call("devices")
    devices = result.get("devices", [])
    emit(args, result, render.render_devices(devices))
    return EXIT_PROBLEM if any(d.get("comm") == "lost" for d in devices) else EXIT_OK


def run_events(args: argparse.Namespace, client: ControlClient) -> int:
    request: dict[str, Any] = {"limit": args.limit}
    if args.since is not None:
        request["since_seq"] = args.since
    if not args.follow:
        result = client.call("events", **request)
        emit(args, result, render.render_events(result.get("events", [])))
        return EXIT_OK
    stream = client.stream("events", follow=True, **request)
    try:
        _follow(args, stream)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow ends
    finally:
        close = getattr(stream, "close", None)  # a generator: closing it closes the socket
        if close is not None:
            close()
    return EXIT_OK


def _follow(args: argparse.Namespace, stream: Iterable[dict[str, Any]]) -> None:
    """Print the backlog, then each event as it is stored, one line (or JSON object) each."""
    for message in stream:
        if "result" in message:
            items = message["result"].get("events", [])
        elif "event" in message:
            items = [message["event"]]
        else:
            items = []
            notice = message.get("notice", {})
            # 80 columns: the events are buffered and delivered; only this screen missed them
            missed = notice.get("missed")
            text = f"(missed {missed} here; all are buffered for the platform; see `events`)"
            print(json.dumps(message, ensure_ascii=False) if args.json else text, flush=True)
        for event in items:
            text = json.dumps(event, ensure_ascii=False) if args.json else render.event_row(event)
            print(text, flush=True)


def run_read(args: argparse.Namespace, client: ControlClient) -> int:
    request = {"device": args.device}
    if args.point:
        request["point"] = args.point
    result = client.call("read", **request)
    emit(args, result, render.render_read(result))
    points = result.get("points", {})
    return EXIT_PROBLEM if any("error" in v for v in points.values()) else EXIT_OK


def run_test_alarm(args: argparse.Namespace, client: ControlClient) -> int:
    # the agent may take 10 s to store it and 10 s more to hear the broker's PUBACK; giving
    # up sooner would report a failure for an alarm that went, and invite a second one
    client.timeout_s = max(client.timeout_s, TEST_ALARM_TIMEOUT_S)
    result = client.call("test_alarm", requested_by="cli")
    emit(args, result, render.render_test_alarm(result))
    return EXIT_OK if result.get("acked") else EXIT_PROBLEM


def run_silence(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.call("silence")
    was = "it was sounding" if result.get("was_sounding") else "it was not sounding"
    emit(args, result, [f"local buzzer silenced until the next new alarm ({was})"])
    return EXIT_OK


def run_ack(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.call("ack")
    if result.get("answered"):
        lines = [f"duty check answered after {result.get('response_s')} s"]
    else:
        lines = ["no duty check was waiting for an answer"]
    emit(args, result, lines)
    return EXIT_OK if result.get("answered") else EXIT_PROBLEM


def run_buffer(args: argparse.Namespace, client: ControlClient) -> int:
    result = client.call("buffer")
    emit(args, result, render.render_buffer(result))
    return EXIT_PROBLEM if result.get("degraded") else EXIT_OK

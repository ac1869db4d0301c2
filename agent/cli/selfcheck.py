"""`alarmgw selftest` and `alarmgw selfcheck`: the gateway's self-test on demand, and the
monthly self-check walked through with a technician (docs/operations.md).

The self-check asks the agent for the points to check, follows the live event stream of
the control socket (as `alarmgw events --follow` does) and, point by point, waits for the
point's alarm and then its restore while the technician triggers it: passed (both seen),
failed (not within the timeout) or untested (the technician said so). Then it fires the
simulated fire transmissions (test alarms) and waits for every uplink's confirmation of
each, and hands the report to the agent, which stores it once and sends it on the feed.
While it waits on a point it declares that point under test to the agent (for at most its
timeout): the point's events are tests, so a checked detector dispatches nobody.

A scripted mode (`--script FILE`, a TOML file checked like every file a person writes)
needs nobody at the keyboard: operator, points left untested, how many simulated fires,
and optionally the commands that trigger each point and, once the gateway saw its alarm,
clear it (the simulator's `alarmgw-sim alarm` / `clear-alarm` in CI and on the training
rig; `alarmgw-sim pulse` does both with a fixed hold).

It must never leave the agent's state changed but by what it says: the test alarms and
the report. A point it could not trigger is reported failed, never passed.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agent.cli.client import ControlClient, OpenStream
from agent.cli.output import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, emit, error
from agent.cli.render import clip, date_time
from agent.cli.textwidth import fit
from agent.config_schema import CHECK_POINTS
from agent.uitd_records import RecordsError, read_reports
from agent.undertest import LEASE_S
from core.checks import Key, Table, Value, integer, number, shown, text
from core.errors import AlarmgwError, ConfigError, ConfigProblem

SELFTEST_TIMEOUT_S: Final = 180.0  # a live read of each device, each bounded at ~11 s
TEST_ALARM_TIMEOUT_S: Final = 30.0  # as `alarmgw test-alarm`
TRIGGER_COMMAND_TIMEOUT_S: Final = 60.0


def _argv(value: Any) -> str | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return f"must be a non-empty list of strings (a command, its arguments), got {shown(value)}"
    return None


ARGV = Value(_argv, {"type": "array", "minItems": 1, "items": {"type": "string"}}, (list,))

SCRIPT = Table(
    {
        "operator": Key(text(60, nonempty=True), required=True),
        "simulated_fires": Key(integer(0, 10), default=2),
        "untested": Key(CHECK_POINTS, default=[]),
        "only": Key(CHECK_POINTS, doc="default: every point the agent lists"),
        "point_timeout_s": Key(number(gt=0, le=3600), doc="default: the agent's"),
        # {device} {point} {id} are replaced. trigger_command runs when the walk reaches the
        # point, clear_command once its alarm was seen (a person releasing the test button)
        "trigger_command": Key(ARGV),
        "clear_command": Key(ARGV),
    },
    doc="A scripted monthly self-check (alarmgw selfcheck --script FILE).",
)


def load_script(path: Path) -> dict[str, Any]:
    from core.checks import check_file  # noqa: PLC0415 - only the scripted mode needs it

    clean, out = check_file(path, SCRIPT)
    out.raise_if_any()
    return SCRIPT.with_defaults(clean)


# --- alarmgw selftest ------------------------------------------------------------------


def run_selftest(args: argparse.Namespace, client: ControlClient) -> int:
    client.timeout_s = max(client.timeout_s, SELFTEST_TIMEOUT_S)
    result = client.call("selftest")
    emit(args, result, render_selftest(result))
    return EXIT_OK if result.get("ok") else EXIT_PROBLEM


def render_selftest(result: dict[str, Any]) -> list[str]:
    lines = [
        f"{'pass' if item.get('ok') else 'FAIL'}  {item.get('part', ''):<8} "
        f"{fit(str(item.get('id', '')), 20)}  {item.get('detail', '')}"
        for item in result.get("items", [])
    ]
    failed = sum(1 for item in result.get("items", []) if not item.get("ok"))
    lines.append(
        "self-test passed" if not failed else f"self-test: {failed} item(s) failed (faults sent)"
    )
    return [clip(line) for line in lines]


# --- alarmgw selfcheck --show ---------------------------------------------------------------


def run_show(args: argparse.Namespace, client: ControlClient | None) -> int:
    which = args.show
    limit = 1 if which == "latest" else 100
    if client is None:  # --file: the records file, read-only, no agent needed
        try:
            reports = read_reports(Path(args.file), limit)
        except RecordsError as exc:
            error(str(exc))
            return EXIT_PROBLEM
    else:
        reports = client.call("selfcheck_reports", limit=limit)["reports"]
    if which == "latest":
        emit(args, reports[0] if reports else {}, render_report(reports[0]) if reports else
             ["no self-check report stored yet"])  # fmt: skip
        return EXIT_OK if reports else EXIT_PROBLEM
    emit(args, {"reports": reports}, [_report_line(r) for r in reports] or ["no reports"])
    return EXIT_OK


def _report_line(report: dict[str, Any]) -> str:
    s = report.get("summary", {})
    return clip(
        f"#{report.get('number')}  {date_time(report.get('ts_ms', 0))}  {report.get('operator')}  "
        f"passed {s.get('passed')} failed {s.get('failed')} untested {s.get('untested')}  "
        f"fires {s.get('simulated_confirmed')}/{s.get('simulated_sent')}"
    )


def render_report(report: dict[str, Any]) -> list[str]:
    synced = "" if report.get("clock_synced", True) else "  (clock NOT synchronised)"
    lines = [
        f"self-check #{report.get('number') or '- (NOT stored)'}  "
        f"{date_time(report.get('ts_ms', 0))}{synced}",
        f"operator {report.get('operator')}  (handed in by {report.get('handed_in_by')})",
    ]
    lines.extend(
        f"  {point['result']:<9} {fit(point['id'], 24)}  {point.get('name', '')}"
        for point in report.get("points", [])
    )
    for n, sim in enumerate(report.get("simulated", []), 1):
        said = "confirmed by every uplink" if sim.get("confirmed") else "NOT confirmed"
        lines.append(f"  simulated fire {n}: seq {sim.get('seq')} {said}")
    lines.append(_report_line(report))
    return [clip(line) for line in lines]


# --- alarmgw selfcheck: the walk -------------------------------------------------------------


@dataclass
class EventWatch:
    """Every event the agent stores from now on, for the walk to look through."""

    stream: OpenStream
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    thread: threading.Thread | None = None

    def start(self) -> EventWatch:
        self.thread = threading.Thread(target=self._read, name="selfcheck-events", daemon=True)
        self.thread.start()
        return self

    def _read(self) -> None:
        for message in self.stream.messages():
            if "event" in message:
                with self.changed:
                    self.events.append(message["event"])
                    self.changed.notify_all()

    def mark(self) -> int:
        with self.changed:
            return len(self.events)

    def wait(self, match: Callable[[dict[str, Any]], bool], since: int, deadline: float) -> Any:
        """The first event from index `since` for which match() holds, or None at deadline."""
        with self.changed:
            while True:
                found = next((e for e in self.events[since:] if match(e)), None)
                left = deadline - time.monotonic()
                if found is not None or left <= 0:
                    return found
                self.changed.wait(left)

    def close(self) -> None:
        self.stream.close()
        if self.thread is not None:
            self.thread.join(timeout=5)


def _of(point: dict[str, Any], kind: str, after: int = -1) -> Callable[[dict[str, Any]], bool]:
    def match(event: dict[str, Any]) -> bool:
        return (
            event.get("device") == point["device"]
            and event.get("point") == point["point"]
            and event.get("kind") == kind
            and (event.get("seq") or 0) > after
        )

    return match


class Walk:
    """One self-check: the points, the person (or the script) and the live events."""

    def __init__(
        self,
        client: ControlClient,
        watch: EventWatch,
        timeout_s: float,
        *,
        ask: Callable[[str], str] | None,
        script: dict[str, Any] | None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.client = client
        self.watch = watch
        self.timeout_s = timeout_s
        self.ask = ask
        self.script = script
        self.say = say
        self._calls = threading.Lock()  # the lease's renewals share the control connection
        self._lease_stop: threading.Event | None = None

    def point(self, n: int, total: int, point: dict[str, Any]) -> dict[str, Any]:
        head = f"[{n}/{total}] {point['name']} ({point['id']})"
        out = {"id": point["id"], "name": point["name"], "result": "untested",
               "alarm_seq": None, "restore_seq": None, "note": ""}  # fmt: skip
        since = self.watch.mark()
        try:
            if not self._start(head, point, out):
                self.say(clip(f"{head}: not tested"))
                return out
            return self._watch(head, point, out, since)
        finally:
            self._testing(point, 0)  # done: that point's events are real again

    def _testing(self, point: dict[str, Any], seconds: float) -> None:
        """Tell the agent this point is under test (its events go out as tests, the
        evacuation buzzer stays silent) while this walk is on it; 0: no longer. The agent
        holds it for LEASE_S (agent/undertest.py): a thread renews it every LEASE_S / 3
        until 0 or until `seconds` have passed, so a self-check that dies leaves the point
        real again within LEASE_S, and one left waiting at its prompt within `seconds`."""
        if self._lease_stop is not None:
            self._lease_stop.set()
            self._lease_stop = None
        self._mark(point, seconds)
        if seconds > 0:
            stop = self._lease_stop = threading.Event()
            until = time.monotonic() + seconds
            threading.Thread(target=self._renew, args=(point, stop, until), daemon=True,
                             name="selfcheck-lease").start()  # fmt: skip

    def _mark(self, point: dict[str, Any], seconds: float) -> None:
        lease = max(0, min(math.ceil(LEASE_S), math.ceil(seconds)))
        with self._calls:
            self.client.call("selfcheck_testing", device=point["device"], point=point["point"],
                             seconds=lease)  # fmt: skip

    def _renew(self, point: dict[str, Any], stop: threading.Event, until: float) -> None:
        while not stop.wait(LEASE_S / 3):
            left = until - time.monotonic()
            if left <= 0:
                return  # its window is over: the lease runs out, the point is real again
            try:
                with self._calls:
                    if stop.is_set():
                        return  # ended meanwhile: a late renewal would mark it again
                    self.client.call("selfcheck_testing", device=point["device"],
                                     point=point["point"],
                                     seconds=math.ceil(min(LEASE_S, left)))  # fmt: skip
            except (OSError, AlarmgwError) as exc:  # the agent restarting: the next one tries
                self.say(clip(f"{point['id']}: could not renew the test mark: {exc}"))

    def _watch(
        self, head: str, point: dict[str, Any], out: dict[str, Any], since: int
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        alarm = self.watch.wait(_of(point, "alarm"), since, deadline)
        if alarm is None:
            out |= {"result": "failed", "note": out["note"] or "no alarm seen in time"}
            self.say(clip(f"{head}: FAILED - no alarm within {self.timeout_s:g} s"))
            return out
        out["alarm_seq"] = alarm.get("seq")
        self.say(clip(f"{head}: alarm seen (seq {alarm.get('seq')}); now restore it"))
        self._run("clear_command", head, point, out)  # released once the gateway saw it
        restore = self.watch.wait(_of(point, "restore", alarm.get("seq") or 0), since, deadline)
        if restore is None:
            out |= {"result": "failed", "note": "alarm seen, no restore in time"}
            self.say(clip(f"{head}: FAILED - no restore within {self.timeout_s:g} s"))
            return out
        out |= {"result": "passed", "restore_seq": restore.get("seq")}
        self.say(clip(f"{head}: passed (restore seq {restore.get('seq')})"))
        return out

    def _start(self, head: str, point: dict[str, Any], out: dict[str, Any]) -> bool:
        """Whether to watch this point; runs the script's trigger command if it has one."""
        if self.script is None:
            assert self.ask is not None
            self._testing(point, self.timeout_s)  # triggered before Enter: a test too
            answer = self.ask(f"{head}\n  trigger it now (Enter: watch for it, s: not tested) ")
            if answer.strip().lower() in ("s", "skip", "n"):
                return False
            self._testing(point, self.timeout_s)
            return True
        if point["id"] in self.script["untested"]:
            out["note"] = "untested (script)"
            return False
        self._testing(point, self.timeout_s)  # before its trigger: the alarm is a test
        self._run("trigger_command", head, point, out)
        return True

    def _run(self, key: str, head: str, point: dict[str, Any], out: dict[str, Any]) -> None:
        """The script's trigger (or clear) command for this point, if it has one. A command
        that fails is noted: the point then fails unless its events come all the same."""
        command = (self.script or {}).get(key)
        if not command:
            return
        argv = [a.format(device=point["device"], point=point["point"], id=point["id"])
                for a in command]  # fmt: skip
        self.say(clip(f"{head}: {key.removesuffix('_command')} ({' '.join(argv)})"))
        try:
            done = subprocess.run(argv, capture_output=True, timeout=TRIGGER_COMMAND_TIMEOUT_S,
                                  check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            out["note"] = f"{key} failed: {exc}"[:200]
            return
        if done.returncode:
            out["note"] = f"{key} exited {done.returncode}"

    def simulated(self, count: int) -> list[dict[str, Any]]:
        self.client.timeout_s = max(self.client.timeout_s, TEST_ALARM_TIMEOUT_S)
        out = []
        for n in range(1, count + 1):
            result = self.client.call("test_alarm", requested_by="selfcheck")
            acked = bool(result.get("acked"))
            said = "confirmed by every uplink" if acked else "NOT confirmed"
            self.say(f"simulated fire transmission {n}/{count}: seq {result.get('seq')} {said}")
            out.append({"seq": result.get("seq"), "id": result.get("id", ""), "confirmed": acked})
        return out


EXIT_ABANDONED: Final = 130  # as a shell reports Ctrl-C


def run_selfcheck(args: argparse.Namespace, client: ControlClient) -> int:
    if args.show:
        return run_show(args, client)
    script = load_script(Path(args.script)) if args.script else None
    try:
        report = _walk(args, client, script)
    except KeyboardInterrupt:
        error("self-check abandoned: no report stored (the alarms seen are on the feed)")
        return EXIT_ABANDONED
    except EOFError:
        error("no answer on the keyboard: run it in a terminal, or with --script FILE")
        return EXIT_USAGE
    stored = client.call("selfcheck_report", report=report)
    emit(args, stored, render_report(stored))
    if stored.get("number") is None:
        error("the report could NOT be stored on the gateway (see `alarmgw status`, the "
              "uitd_records fault); it was sent on the feed")  # fmt: skip
    failed = stored["summary"]["failed"] or not all(s["confirmed"] for s in report["simulated"])
    return EXIT_PROBLEM if failed or stored.get("number") is None else EXIT_OK


def _walk(
    args: argparse.Namespace, client: ControlClient, script: dict[str, Any] | None
) -> dict[str, Any]:
    """Ask who, walk the points with the live events watched, send the simulated fires:
    the report to hand in. The command line wins over the script, the script over the
    agent's config."""
    operator = args.operator or (script["operator"] if script else "")
    while not operator.strip():
        operator = input("operator (your name): ")
    listed = client.call("selfcheck_points")
    points = _chosen(listed["points"], script, args.script)
    timeout_s = args.timeout or (script or {}).get("point_timeout_s") or listed["point_timeout_s"]
    fires = args.simulated if args.simulated is not None else (script or {}).get(
        "simulated_fires", 2)  # fmt: skip
    started = int(time.time() * 1000)
    watch = EventWatch(client.open_stream("events", follow=True, limit=0)).start()
    try:
        walk = Walk(client, watch, timeout_s, ask=None if script else input, script=script,
                    say=_progress(args.json))  # fmt: skip
        checked = [walk.point(n, len(points), p) for n, p in enumerate(points, 1)]
    finally:
        watch.close()
    return {"operator": operator, "started_ms": started, "points": checked,
            "simulated": walk.simulated(fires)}  # fmt: skip


def _progress(as_json: bool) -> Callable[[str], None]:
    """Progress lines: on stdout for a person; on stderr with --json (stdout is the report)."""
    if not as_json:
        return print
    return lambda text: print(text, file=sys.stderr, flush=True)


def _chosen(points: Iterable[dict[str, Any]], script: dict[str, Any] | None,
            path: str | None) -> list[dict[str, Any]]:  # fmt: skip
    """The agent's points, or those the script's `only` names (each must be one)."""
    only = (script or {}).get("only")
    chosen = [p for p in points if only is None or p["id"] in only]
    known = {p["id"] for p in chosen}
    problems = [
        ConfigProblem(str(path), f"only[{n}]", f'"{entry}" is not a self-check point here')
        for n, entry in enumerate(only or []) if entry not in known
    ]  # fmt: skip
    if problems:
        raise ConfigError(problems)
    return chosen


def add_commands(sub: Any, agent_options: Callable[[argparse.ArgumentParser], None],
                 wrap: Callable[[Any], Any]) -> None:  # fmt: skip
    """`selftest` and `selfcheck` in the `alarmgw` parser (agent/cli/main.py)."""
    test = sub.add_parser(
        "selftest",
        help="run the gateway's self-test now",
        description="inputs, outputs, storage and link; exit 1 on a failure",
    )
    agent_options(test)
    test.set_defaults(handler=wrap(run_selftest))
    check = sub.add_parser(
        "selfcheck",
        help="the monthly self-check: trigger each point, simulated fires, a stored report",
    )
    agent_options(check)
    check.add_argument("--operator", help="who runs it (asked when not given)")
    check.add_argument("--script", metavar="FILE", help="scripted: nobody at the keyboard")
    check.add_argument("--simulated", type=int, choices=range(11), metavar="N",
                       help="simulated fire transmissions (default 2)")  # fmt: skip
    check.add_argument("--timeout", type=float, metavar="S", help="per point (default: config)")
    check.add_argument("--show", nargs="?", const="latest", choices=("latest", "list"),
                       help="show the stored reports instead (default latest)")  # fmt: skip
    check.add_argument("--file", metavar="DB", help="with --show: read the records file "
                       "(/var/lib/alarmgw/uitd.db) offline instead (agent stopped)")  # fmt: skip
    check.set_defaults(handler=_offline_or(wrap(run_selfcheck)))


def _offline_or(online: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`selfcheck --show --file DB` reads the file; everything else asks the agent."""

    def handler(args: argparse.Namespace) -> int:
        if args.file is None:
            return online(args)
        if not args.show:
            error("--file goes with --show (a self-check needs the running agent)")
            return EXIT_USAGE
        return run_show(args, None)

    return handler

"""The UITD duties of the gateway itself (GB 26875.1): the daily self-test, the count of
simulated fire transmissions per month with its reminder, and the monthly self-check
reports. A duty of the runtime (`start`, `stop`, `alive`: agent/runtime.py's `duties`).

- Daily self-test (agent/selftest.py) at `[selftest] time`, local time, once per
  calendar day: it waits for a synchronised clock (no RTC: until NTP has set it, "today"
  means nothing), and the day it last ran is kept in the records file (agent/uitd_records.py)
  so a restart never runs it twice the same day. A gateway started after the time runs it
  once its uplinks and lines had two minutes to come up. `alarmgw selftest` runs it on
  demand (not counted as the day's run).
- Simulated fire transmissions: every stored test alarm (`point: test_alarm`, from the CLI
  or the platform) is noted (in memory by the buffer's writer, which never waits for this
  file; written down by this duty's thread a moment later); once every uplink confirmed it
  (EventBuffer.delivered), it counts in the local calendar month of that
  moment. Confirmed while the clock was unsynced, it counts in the first month the clock
  is synchronised again. Fewer than `min_simulated_fires` by `reminder_day`: one reminder
  event that month, and a line in `alarmgw status`.
- Self-check reports: the CLI (`alarmgw selfcheck`) walks a technician through the points
  and hands the report here; it is stored once (SD wear) and sent as an event.

It must never raise into the runtime: a records file on a sick card is a fault event (and
the self-test's storage item), and the duty goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from agent import selftest
from agent.clock import local_now
from agent.config import SelfTestConfig
from agent.faults import Faults
from agent.selftest import Probes, Result
from agent.texts import Msg, Texts
from agent.uitd_records import RecordsError, UitdRecords
from core.events import Category, Event, Kind, Record, Severity, now_ms, system_event

log = logging.getLogger("alarmgw")

CHECK_S: Final = 20.0
# after a start, the day's self-test waits this long: the uplink connects and every device
# is polled first, so a reboot after the test's time does not report a link "failure"
STARTUP_GRACE_S: Final = 120.0  # how often the schedule and the reminder are looked at
CONFIRM_CHECK_S: Final = 1.0  # while a test alarm waits for its confirmation
LAST_DAY: Final = "selftest_day"
LAST_RESULT: Final = "selftest_last"
REMINDED: Final = "simulated_reminded_month"
RECORDS_CAUSE: Final = "uitd_records"

Now = Callable[[], datetime]


def month_of(moment: datetime) -> str:
    return moment.strftime("%Y-%m")


def _hh_mm(text: str) -> tuple[int, int]:
    hours, minutes = text.split(":")
    return int(hours), int(minutes)


class UitdDuty:
    """The self-test schedule, the simulated-fire count and the self-check reports."""

    def __init__(
        self,
        cfg: SelfTestConfig,
        records: UitdRecords,
        probes: Probes,
        emit: Callable[[Record], object],
        faults: Faults,
        *,
        is_confirmed: Callable[[int], bool],
        synced: Callable[[], bool],
        texts: Texts,
        now: Now = local_now,
        startup_grace_s: float = STARTUP_GRACE_S,
    ) -> None:
        self.cfg = cfg
        self.records = records
        self.probes = probes
        self._emit = emit
        self._faults = faults
        self._is_confirmed = is_confirmed
        self._synced = synced
        self._texts = texts
        self._now = now
        self._at = _hh_mm(cfg.selftest_time)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._run_lock = threading.Lock()  # one self-test at a time (daily or asked)
        self._thread: threading.Thread | None = None
        self._alive = time.monotonic()
        self._last_day: str | None = None
        self._last: dict[str, Any] | None = None
        self._reminded: str | None = None
        # test alarms stored, not yet confirmed: id -> (seq, ts_ms); `stored` (the buffer's
        # writer) adds, this duty's thread confirms: under _waiting_lock
        self._waiting: dict[str, tuple[int, int]] = {}
        self._unwritten: set[str] = set()  # of those, not yet in the records file
        self._waiting_lock = threading.Lock()
        self._loaded = False
        self._not_before = time.monotonic() + startup_grace_s

    # --- Running --------------------------------------------------------------------

    @property
    def alive(self) -> float:
        return self._alive

    def start(self) -> UitdDuty:
        self._thread = threading.Thread(target=self._loop, name="uitd-duty", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.records.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._alive = time.monotonic()
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the duty must outlive a bug in a tick
                self._faults.failed("uitd_duty", exc)
            else:
                self._faults.worked("uitd_duty")
            self._wake.wait(CONFIRM_CHECK_S if self._waiting else CHECK_S)
            self._wake.clear()

    # --- the periodic look --------------------------------------------------------------

    def tick(self) -> None:
        """Load what the records hold (once), confirm test alarms, run the day's self-test
        when due, remind of missing simulated fires. The loop calls it; tests too."""
        if not self._loaded:
            self._load()
        self._confirm_waiting()
        if not self._synced():
            return  # no RTC: until NTP set the clock, neither the day nor the month is known
        now = self._now()
        self._date_undated(now)
        day = now.date().isoformat()
        due = self._last_day != day and (now.hour, now.minute) >= self._at
        if due and time.monotonic() >= self._not_before:
            self._last_day = day
            self._guarded_put(LAST_DAY, day)  # first: a run cut short is not run again today
            self.run_selftest("daily")
        self._remind(now)

    def _load(self) -> None:
        try:
            self._last_day = self.records.get(LAST_DAY)
            self._last = self.records.get(LAST_RESULT)
            self._reminded = self.records.get(REMINDED)
            # merged: a test alarm stored meanwhile (the buffer's writer) stays watched
            known = {s.event_id: (s.seq, s.ts_ms) for s in self.records.unconfirmed()}
            with self._waiting_lock:
                self._waiting.update(known)
        except RecordsError as exc:
            self._faults.failed(RECORDS_CAUSE, exc)
        else:
            self._faults.worked(RECORDS_CAUSE)
        self._loaded = True

    def _guarded_put(self, key: str, value: Any) -> bool:
        try:
            self.records.put(key, value)
        except RecordsError as exc:
            self._faults.failed(RECORDS_CAUSE, exc)
            return False
        self._faults.worked(RECORDS_CAUSE)
        return True

    # --- simulated fire transmissions ---------------------------------------------------

    def stored(self, event: Event) -> None:
        """A stored listener (runs in the buffer's writer, which must never wait: a real
        fire may be next in its queue): note each test alarm in memory and wake this
        duty's thread, which writes it to the records file (no I/O here)."""
        if event.kind is not Kind.TEST or event.point != "test_alarm" or event.seq is None:
            return
        with self._waiting_lock:
            self._waiting[event.id] = (event.seq, event.ts_ms)
            self._unwritten.add(event.id)
        self._wake.set()

    def _confirm_waiting(self) -> None:
        """Write the test alarms noted since the last tick, then count those every uplink
        has confirmed. A write that fails stays noted (a fault) and is tried next tick."""
        with self._waiting_lock:
            waiting = dict(self._waiting)
            unwritten = {i: waiting[i] for i in self._unwritten if i in waiting}
        wrote = bool(unwritten)
        try:
            for event_id, (seq, ts_ms) in unwritten.items():
                self.records.simulated_seen(event_id, seq, ts_ms)
                with self._waiting_lock:
                    self._unwritten.discard(event_id)
            for event_id, (seq, ts_ms) in waiting.items():
                if not self._is_confirmed(seq):
                    continue
                month = month_of(self._now()) if self._synced() else None
                # counted even if its "seen" row is missing (the upsert makes it)
                self.records.confirm(event_id, seq, ts_ms, now_ms(), month)
                wrote = True
                with self._waiting_lock:
                    self._waiting.pop(event_id, None)
                    self._unwritten.discard(event_id)
        except RecordsError as exc:
            self._faults.failed(RECORDS_CAUSE, exc)
            return  # tried again next tick
        if wrote:
            self._faults.worked(RECORDS_CAUSE)

    def _date_undated(self, now: datetime) -> None:
        try:
            self.records.date_undated(month_of(now))
        except RecordsError as exc:
            self._faults.failed(RECORDS_CAUSE, exc)

    def simulated_fires(self) -> dict[str, Any]:
        """This month's confirmed simulated fire transmissions, for `status`."""
        cfg = self.cfg
        if not self._synced():
            return {"month": None, "count": None, "required": cfg.min_simulated_fires,
                    "reminder_day": cfg.reminder_day, "due": False}  # fmt: skip
        now = self._now()
        count = len(self.records.simulated_in(month_of(now)))
        return {
            "month": month_of(now),
            "count": count,
            "required": cfg.min_simulated_fires,
            "reminder_day": cfg.reminder_day,
            "due": now.day >= cfg.reminder_day and count < cfg.min_simulated_fires,
        }

    def _remind(self, now: datetime) -> None:
        month = month_of(now)
        if self._reminded == month or now.day < self.cfg.reminder_day:
            return
        count = len(self.records.simulated_in(month))
        required = self.cfg.min_simulated_fires
        if count >= required:
            return
        self._reminded = month
        self._guarded_put(REMINDED, month)
        self._emit(
            system_event(
                Kind.SYSTEM,
                Severity.WARNING,
                "simulated_fires_due",
                self._texts(Msg.SIMULATED_FIRES_DUE, count=count, required=required),
                point="simulated_fires",
                clock_synced=True,
                detail={"simulated_fires": {"month": month, "count": count, "required": required,
                                            "reminder_day": self.cfg.reminder_day}},
            )
        )  # fmt: skip

    # --- the self-test -----------------------------------------------------------------

    def run_selftest(self, trigger: str) -> Result:
        """Run every item now, record and report it; failed items are faults, items that
        pass again restore theirs."""
        with self._run_lock:
            result = selftest.run(self.probes, trigger, alive=self._touch)
            self._last = result.as_dict()
            self._guarded_put(LAST_RESULT, self._last)
            self._emit(selftest.result_event(result, self._texts, synced=self._synced()))
            for item in result.items:
                self._report_item(item)
            return result

    def _touch(self) -> None:
        self._alive = time.monotonic()

    def _report_item(self, item: selftest.Item) -> None:
        if item.ok:
            self._faults.worked(item.cause)
            return
        self._faults.check_failed(
            item.cause,
            "selftest_failed",
            self._texts(Msg.SELFTEST_ITEM_FAILED, part=item.part, item=item.id, reason=item.detail),
            restore_text=self._texts(Msg.SELFTEST_ITEM_RESTORED, part=item.part, item=item.id),
            reason=item.detail,
        )

    def summary(self) -> dict[str, Any]:
        """What `alarmgw status` shows of the duties."""
        out: dict[str, Any] = {"selftest_time": self.cfg.selftest_time, "last_selftest": None}
        if self._last is not None:
            last = self._last
            failed = [f"{i['part']} {i['id']}" for i in last.get("items", []) if not i.get("ok")]
            out["last_selftest"] = {k: last.get(k) for k in ("ts_ms", "trigger", "ok")} | {
                "failed": failed
            }
        try:
            out["simulated_fires"] = self.simulated_fires()
            reports = self.records.reports(1)
        except RecordsError as exc:
            out["records_error"] = str(exc)
            return out
        out["last_selfcheck"] = reports[0]["summary"] | {
            "number": reports[0]["number"], "ts_ms": reports[0]["ts_ms"],
            "operator": reports[0]["operator"],
        } if reports else None  # fmt: skip
        return out

    # --- self-check reports --------------------------------------------------------------

    def reports(self, limit: int) -> list[dict[str, Any]]:
        """The stored self-check reports, newest first."""
        return self.records.reports(limit)

    def store_report(self, report: dict[str, Any]) -> dict[str, Any]:
        """Store a self-check report once and send it as an event (`point: selfcheck`).
        A records file that refuses it (a sick card) is a fault, and the report still
        goes out on the feed (`number` null): the technician's work is not lost."""
        summary = {
            "passed": sum(1 for p in report["points"] if p["result"] == "passed"),
            "failed": sum(1 for p in report["points"] if p["result"] == "failed"),
            "untested": sum(1 for p in report["points"] if p["result"] == "untested"),
            "simulated_confirmed": sum(1 for s in report["simulated"] if s["confirmed"]),
            "simulated_sent": len(report["simulated"]),
        }
        body = report | {"summary": summary, "ts_ms": now_ms(), "clock_synced": self._synced()}
        number: int | None = None
        try:
            number = self.records.add_report(body["ts_ms"], report["operator"], body)
        except RecordsError as exc:
            self._faults.failed(RECORDS_CAUSE, exc)
        else:
            self._faults.worked(RECORDS_CAUSE)
        text = self._texts(
            Msg.SELFCHECK_REPORT,
            operator=report["operator"],
            passed=summary["passed"],
            failed=summary["failed"],
            untested=summary["untested"],
            confirmed=summary["simulated_confirmed"],
        )
        self._emit(
            system_event(
                Kind.SYSTEM,
                Severity.MINOR if summary["failed"] else Severity.INFO,
                "selfcheck_report",
                text,
                point="selfcheck",
                clock_synced=self._synced(),
                category=Category.SYSTEM,
                detail={"selfcheck": body | {"number": number}},
            )
        )
        return body | {"number": number}

"""The service under a real systemd, installed as a technician installs it.

A minimal Debian bookworm root (scripts/roots systemd, cached outside the checkout) is
booted with `systemd-nspawn --boot`, with no network of its own; this checkout is in it,
read-only, at /root/alarmgw, and pip takes the agent's packages from a wheel folder, as
from a local mirror. The tests run in file order, each on the state the previous one left:
install -> READY and status -> delivery -> hardening -> watchdog -> bad config ->
upgrade -> uninstall.

They boot a container, which needs root: they run in CI (CI=true) and where
ALARMGW_SYSTEMD_BOOT=1 asks for them, and skip elsewhere. Wanted but impossible (not
root, no systemd-nspawn) is a failure, not a skip.

MemoryMax, TasksMax and DevicePolicy are set but not enforced on a host with cgroup v1,
whose controllers a container cannot use (docs/operations.md): that test skips there,
saying so, and checks the limits where the controllers exist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ALARMGW_CI_CACHE", "/var/cache/alarmgw-ci"))
UNIT = "alarmgw"
CHECKOUT = "/root/alarmgw"  # where the technician cloned the repository
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WATCHDOG_S = 30  # systemd/alarmgw.service WatchdogSec
RESTART_S = 2  # and RestartSec
WHEELS_IN = "/var/cache/alarmgw-wheels"  # the wheel folder, inside the container

WANTED = os.environ.get("ALARMGW_SYSTEMD_BOOT", "1" if os.environ.get("CI") else "0") == "1"
pytestmark = pytest.mark.skipif(
    not WANTED,
    reason="boots a systemd container as root: runs in CI, or with ALARMGW_SYSTEMD_BOOT=1",
)


class Container:
    """A booted systemd-nspawn container and a way to run commands in it."""

    def __init__(self, root: Path, wheels: Path, workdir: Path) -> None:
        pip_conf = workdir / "pip.conf"
        pip_conf.write_text(f"[global]\nno-index = true\nfind-links = {WHEELS_IN}\n")
        self.log_path = workdir / "console.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                "systemd-nspawn", "--boot", "--quiet", f"--directory={root}",
                # writes go to a tmpfs over the cached root: every run starts clean
                "--volatile=overlay",
                # no system bus on a CI host; no network: the container's own
                # 127.0.0.1 has its own broker, not the host's
                "--register=no", "--keep-unit", "--private-network",
                f"--bind-ro={ROOT}:{CHECKOUT}",
                f"--bind-ro={wheels}:{WHEELS_IN}",
                f"--bind-ro={pip_conf}:/etc/pip.conf",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.leader = 0
        try:
            assert wait_until(self._find_leader, timeout=30), self.console()
            # no answer, or "offline", until systemd listens on its socket; then --wait works
            assert wait_until(lambda: self._state() not in ("", "offline"), timeout=30), (
                self.console()
            )
            booted = self.sh("systemctl is-system-running --wait", check=False, timeout=90)
            assert booted.stdout.strip() == "running", (
                booted.stdout + booted.stderr + self.sh("systemctl --failed", check=False).stdout
            )
        except BaseException:
            self.close()
            raise

    def _find_leader(self) -> bool:
        """The container's PID 1, once it is systemd (a child of systemd-nspawn)."""
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited:\n{self.console()}")
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        for pid in children.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    self.leader = int(pid)
                    return True
            except OSError:
                continue  # the outer child of nspawn, gone once PID 1 runs
        return False

    def _state(self) -> str:
        return self.sh("systemctl is-system-running", check=False).stdout.strip()

    def console(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def sh(
        self, command: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command as root in the container (all its namespaces)."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}",
             "HOME=/root", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )  # fmt: skip
        if check:
            assert result.returncode == 0, (
                f"`{command}` exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def unit(self, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {UNIT} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self) -> str:
        return self.sh(f"journalctl -u {UNIT} --no-pager -o cat", check=False).stdout

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # nspawn shuts the container down cleanly
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def pi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """A freshly booted container; the tests below share it, in order."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    if shutil.which("systemd-nspawn") is None and os.geteuid() == 0:
        problems.append("no systemd-nspawn (scripts/roots installs it)")
    assert not problems, "a systemd container was asked for, but: " + ", ".join(problems)
    # builds the root and the wheel folder when missing or out of date; quick otherwise
    subprocess.run(
        [ROOT / "scripts" / "roots", "systemd"], check=True, timeout=900, stdout=subprocess.DEVNULL
    )
    container = Container(
        CACHE / "roots" / "systemd", CACHE / "wheels" / "systemd", tmp_path_factory.mktemp("pi")
    )
    try:
        yield container
    finally:
        container.close()


@pytest.fixture(scope="module")
def installed(pi: Container) -> subprocess.CompletedProcess[str]:
    """`sudo systemd/install.sh` in the technician's clone, exactly as the README says."""
    return pi.sh(f"cd {CHECKOUT} && systemd/install.sh", timeout=240)


def _example() -> dict[str, Any]:
    with (ROOT / "config" / "example.toml").open("rb") as f:
        return tomllib.load(f)


def test_install_script_installs_enables_and_starts_the_service(
    pi: Container, installed: subprocess.CompletedProcess[str]
) -> None:
    assert "(re)starting alarmgw" in installed.stdout, installed.stdout + installed.stderr
    assert pi.sh(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    assert pi.sh(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    # the technician's command is on the PATH, and the example config is in place for them
    assert pi.sh("alarmgw --version").stdout.startswith("alarmgw ")
    assert pi.sh("stat -c '%a %U %G' /etc/alarmgw/alarmgw.toml").stdout.split() == [
        "640", "root", "alarmgw"
    ]  # fmt: skip


def test_ready_arrives_by_sd_notify_with_the_status_text(pi: Container, installed: object) -> None:
    # Type=notify: systemctl restart returned, and the unit is active, only on READY=1
    state = pi.unit("Type", "ActiveState", "SubState", "StatusText", "NRestarts")
    example = _example()
    assert state == {
        "Type": "notify",
        "ActiveState": "active",
        "SubState": "running",
        "StatusText": f"watching {len(example['devices'])} devices, "
        f"{len(example['inputs'])} inputs",
        "NRestarts": "0",
    }


def test_the_hardened_agent_delivers_a_test_alarm(pi: Container, installed: object) -> None:
    """Seccomp, no capabilities, AF_UNIX/AF_INET only: the agent still does its job
    (control socket in, MQTT out to the container's broker, PUBACK back)."""
    result = pi.sh("alarmgw test-alarm", check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr + pi.journal()[-2000:]


def test_the_hardening_is_in_effect(pi: Container, installed: object) -> None:
    pid = pi.unit("MainPID")["MainPID"]
    status = dict(
        line.split(":", 1) for line in pi.sh(f"cat /proc/{pid}/status").stdout.splitlines()
    )
    fields = {key: value.split() for key, value in status.items()}
    user = pi.sh("id -u alarmgw").stdout.strip()
    assert fields["Uid"] == [user] * 4 and user != "0"  # not root, for real, effective, saved
    assert fields["NoNewPrivs"] == ["1"]
    assert fields["Seccomp"] == ["2"]  # a filter is loaded
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap][0], 16) == 0, (cap, fields[cap])
    # ProtectSystem=strict, seen from the service's own mount namespace: even root
    # cannot write to /usr there, while the state directory stays writable
    usr = pi.sh(f"nsenter -t {pid} -m touch /usr/alarmgw-probe", check=False)
    assert usr.returncode != 0 and "Read-only file system" in usr.stderr, usr.stderr
    pi.sh(f"nsenter -t {pid} -m touch /var/lib/alarmgw/probe")


def test_memory_and_task_limits_where_the_cgroups_can_enforce_them(
    pi: Container, installed: object
) -> None:
    group = pi.unit("ControlGroup")["ControlGroup"]
    v2 = f"/sys/fs/cgroup{group}"
    v1_memory = f"/sys/fs/cgroup/memory{group}"
    have = pi.sh(f"ls {v2}/memory.max {v1_memory}/memory.limit_in_bytes", check=False).stdout
    if not have.strip():
        pytest.skip(
            "MemoryMax, TasksMax and DevicePolicy are not enforced here: the host's cgroup v1 "
            "controllers are not available in the container (docs/operations.md)"
        )
    if "memory.max" in have:
        assert pi.sh(f"cat {v2}/memory.max").stdout.strip() == str(200 * 2**20)
        assert pi.sh(f"cat {v2}/pids.max").stdout.strip() == "64"
    else:
        assert pi.sh(f"cat {v1_memory}/memory.limit_in_bytes").stdout.strip() == str(200 * 2**20)
        assert pi.sh(f"cat /sys/fs/cgroup/pids{group}/pids.max").stdout.strip() == "64"


def test_a_hung_agent_is_restarted_by_the_watchdog(pi: Container, installed: object) -> None:
    before = pi.unit("MainPID", "NRestarts")
    pi.sh(f"kill -STOP {before['MainPID']}")  # alive but no longer pinging

    def restarted() -> bool:
        now = pi.unit("MainPID", "NRestarts", "ActiveState")
        return now["NRestarts"] != before["NRestarts"] and now["ActiveState"] == "active"

    # WatchdogSec after the last ping before the stop, then RestartSec and a start-up
    assert wait_until(restarted, timeout=WATCHDOG_S * 2 + RESTART_S + 30, step=0.5), (
        pi.unit("MainPID", "NRestarts", "ActiveState", "SubState"),
        pi.journal()[-2000:],
    )
    after = pi.unit("MainPID", "NRestarts", "StatusText")
    assert after["MainPID"] != before["MainPID"] and int(after["NRestarts"]) == 1
    assert after["StatusText"].startswith("watching "), after  # READY again
    assert "Watchdog timeout" in pi.journal(), pi.journal()[-2000:]


def _break_config(pi: Container) -> None:
    pi.sh("cp -p /etc/alarmgw/alarmgw.toml /root/alarmgw.toml.good")
    pi.sh("printf '\\n[uplink]\\nport = 1\\n' >> /etc/alarmgw/alarmgw.toml")  # twice: bad


def _mend_config(pi: Container) -> None:
    pi.sh("cp -p /root/alarmgw.toml.good /etc/alarmgw/alarmgw.toml")


def test_a_bad_config_exits_78_and_stays_failed(pi: Container, installed: object) -> None:
    _break_config(pi)
    try:
        restart = pi.sh(f"systemctl restart {UNIT}", check=False)
        assert restart.returncode != 0  # the technician sees it fail at once
        state = pi.unit("ActiveState", "Result", "ExecMainStatus", "NRestarts")
        assert state == {
            "ActiveState": "failed",
            "Result": "exit-code",
            "ExecMainStatus": "78",
            "NRestarts": "0",
        }
        # RestartPreventExitStatus=78: no restart loop. Observe a few RestartSec periods;
        # nothing happening has no event to await.
        time.sleep(RESTART_S * 3)
        assert pi.unit("ActiveState", "NRestarts") == {"ActiveState": "failed", "NRestarts": "0"}
        assert "1 problem in /etc/alarmgw/alarmgw.toml" in pi.journal()
    finally:
        _mend_config(pi)
    pi.sh(f"systemctl restart {UNIT}")
    assert pi.unit("ActiveState")["ActiveState"] == "active"


def test_install_again_upgrades_and_keeps_the_config(pi: Container, installed: object) -> None:
    pi.sh("echo '# edited on site' >> /etc/alarmgw/alarmgw.toml")
    again = pi.sh(f"cd {CHECKOUT} && systemd/install.sh", timeout=240)
    assert "keeping the existing /etc/alarmgw/alarmgw.toml" in again.stdout
    assert pi.sh("tail -n 1 /etc/alarmgw/alarmgw.toml").stdout == "# edited on site\n"
    assert pi.unit("ActiveState")["ActiveState"] == "active"


def test_uninstall_leaves_no_unit_and_keeps_config_and_buffer(
    pi: Container, installed: object
) -> None:
    # a technician may well remove a service that is failing: nothing of it may linger
    _break_config(pi)
    pi.sh(f"systemctl restart {UNIT}", check=False)
    assert pi.unit("ActiveState")["ActiveState"] == "failed"
    out = pi.sh(f"cd {CHECKOUT} && systemd/install.sh --uninstall").stdout
    assert "kept: /etc/alarmgw" in out
    listed = pi.sh(f"systemctl list-units --all --no-legend {UNIT}.service").stdout
    assert listed.strip() == "", listed
    files = pi.sh(f"systemctl list-unit-files --no-legend {UNIT}.service", check=False).stdout
    assert files.strip() == "", files
    gone = (
        "/opt/alarmgw /usr/local/bin/alarmgw /usr/share/alarmgw /etc/systemd/system/alarmgw.service"
    )
    assert pi.sh(f"ls -d {gone}", check=False).stdout == ""
    pi.sh("test -f /etc/alarmgw/alarmgw.toml && test -f /var/lib/alarmgw/buffer.db")
    uid = pi.sh("id -u alarmgw").stdout.strip()  # the user stays, its processes do not
    running = pi.sh(f"grep -l '^Uid:[[:space:]]*{uid}[[:space:]]' /proc/[0-9]*/status", check=False)
    assert running.stdout == "", running.stdout

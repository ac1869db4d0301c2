"""The service as the Pi's systemd will load it, and the script that installs it.

`systemd-analyze verify` exits 0 even on unknown keys and bad values, so any
line on its output fails the test. The install script is not run for real
here: it is checked with bash -n and shellcheck, and its --dry-run is run with
every system-changing command replaced by a shim that records the call. It runs
for real, under a booted systemd, in test_systemd_boot.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

UNIT_NAME = "alarmgw.service"
REAL_EXEC = "/opt/alarmgw/venv/bin/alarmgw"

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def parse_unit(text: str) -> dict[str, list[str]]:
    """`Section.Key` -> every value, in order (systemd keys may repeat)."""
    settings: dict[str, list[str]] = defaultdict(list)
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings[f"{section}.{key.strip()}"].append(value.strip())
    return settings


@pytest.fixture
def unit_text(repo_root: Path) -> str:
    return (repo_root / "systemd" / UNIT_NAME).read_text()


@pytest.fixture
def unit(unit_text: str) -> dict[str, list[str]]:
    return parse_unit(unit_text)


def verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess[str]:
    """Run systemd-analyze verify on a copy whose ExecStart binary exists (verify
    fails on a missing one, and the venv is not installed here)."""
    fake = tmp_path / "alarmgw"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    assert REAL_EXEC in unit_text
    copy = tmp_path / UNIT_NAME
    copy.write_text(unit_text.replace(REAL_EXEC, str(fake)))
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_analyze
def test_systemd_analyze_verify_prints_nothing(tmp_path: Path, unit_text: str) -> None:
    result = verify(tmp_path, unit_text)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == ""


@needs_analyze
@pytest.mark.parametrize(
    "bad_line",
    [
        "WatchdogSecs=30",
        "MemoryMax=lots",
        "DeviceAllow=/dev/gpiochip0 rwz",
        "RestrictAddressFamilies=AF_BOGUS",
    ],
)
def test_verify_check_catches_a_broken_unit(tmp_path: Path, unit_text: str, bad_line: str) -> None:
    # Proves the check above can fail: verify still exits 0 on these, but talks.
    broken = unit_text.replace("[Service]\n", f"[Service]\n{bad_line}\n", 1)
    result = verify(tmp_path, broken)
    assert result.stderr != ""


def test_service_contract(unit: dict[str, list[str]]) -> None:
    expect = {
        "Service.Type": "notify",
        "Service.NotifyAccess": "main",
        "Service.WatchdogSec": "30",
        "Service.Restart": "always",
        "Service.RestartSec": "2",
        "Service.User": "alarmgw",
        "Service.Group": "alarmgw",
        "Service.SupplementaryGroups": "dialout gpio",
        "Service.ExecStart": f"{REAL_EXEC} run /etc/alarmgw/alarmgw.toml",
        "Service.StateDirectory": "alarmgw",
        "Service.ConfigurationDirectory": "alarmgw",
        "Service.RuntimeDirectory": "alarmgw",
        "Service.RuntimeDirectoryMode": "0750",
        "Service.MemoryMax": "200M",
        "Service.CapabilityBoundingSet": "",
        "Service.DevicePolicy": "closed",
        "Service.ProtectSystem": "strict",
        "Service.RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "Unit.StartLimitIntervalSec": "0",
        "Install.WantedBy": "multi-user.target",
    }
    for key, value in expect.items():
        assert unit.get(key) == [value], key
    for flag in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert unit.get(f"Service.{flag}") == ["yes"], flag
    assert unit["Service.SystemCallArchitectures"] == ["native"]


def test_devices_allowed_are_the_serial_ports_and_gpio_chips(unit: dict[str, list[str]]) -> None:
    allowed = set(unit["Service.DeviceAllow"])
    assert {"char-ttyUSB rw", "char-ttyAMA rw", "char-ttyS rw", "char-gpiochip rw"} <= allowed
    assert "char-ttySC rw" in allowed  # SPI-UART RS-485 HATs
    assert all(entry.endswith(" rw") for entry in allowed)
    assert "Service.PrivateDevices" not in unit  # it would hide /dev/ttyUSB0


def test_boot_waits_for_neither_the_network_nor_ntp(unit: dict[str, list[str]]) -> None:
    """The agent watches and buffers offline: waiting for network-online (or for NTP, which
    systemd-time-wait-sync would make forever) only leaves the site unwatched at boot."""
    ordering = " ".join(unit.get("Unit.Wants", []) + unit.get("Unit.After", []))
    assert "network-online.target" not in ordering
    assert "time-sync.target" not in ordering


def test_clock_sync_can_still_be_read(unit: dict[str, list[str]]) -> None:
    # ProtectClock's filter denies adjtimex even for a read (systemd #26413).
    assert unit.get("Service.ProtectClock", ["no"]) == ["no"]


def _environment(unit: dict[str, list[str]]) -> dict[str, str]:
    words = (word for line in unit["Service.Environment"] for word in line.split())
    return dict(word.split("=", 1) for word in words)


def test_cwd_and_lgpio_pipes_are_in_writable_directories(unit: dict[str, list[str]]) -> None:
    # ProtectSystem=strict makes / read-only, and lgpio (Pi 5) creates its .lgd-nfy*
    # pipes in $LG_WD or else the cwd (gpiozero#1106): both must be ours to write.
    state = [f"/var/lib/{name}" for name in unit["Service.StateDirectory"][0].split()]
    runtime = [f"/run/{name}" for name in unit["Service.RuntimeDirectory"][0].split()]
    assert unit["Service.ProtectSystem"] == ["strict"]
    assert unit.get("Service.WorkingDirectory") == ["/var/lib/alarmgw"]
    assert unit["Service.WorkingDirectory"][0] in state
    assert _environment(unit).get("LG_WD") in runtime + state


def _expand(group: str, cache: dict[str, set[str]]) -> set[str]:
    """The syscalls in a systemd filter group, nested groups included."""
    if not group.startswith("@"):
        return {group}
    if group not in cache:
        listing = subprocess.run(
            ["systemd-analyze", "syscall-filter", "--no-pager", group],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        members: set[str] = set()
        for line in listing.splitlines()[1:]:
            name = line.strip()
            if name and not name.startswith("#"):
                members |= _expand(name, cache)
        cache[group] = members
    return cache[group]


def effective_allow_list(filters: list[str]) -> set[str]:
    """What systemd does with repeated SystemCallFilter= lines that start as an allow
    list: plain lines add, `~` lines remove, in file order (later wins)."""
    cache: dict[str, set[str]] = {}
    allowed: set[str] = set()
    for entry in filters:
        deny = entry.startswith("~")
        for name in entry.lstrip("~").split():
            calls = _expand(name, cache)
            allowed = allowed - calls if deny else allowed | calls
    return allowed


@needs_analyze
def test_syscall_filter_allows_what_the_agent_needs(unit: dict[str, list[str]]) -> None:
    filters = unit["Service.SystemCallFilter"]
    assert not filters[0].startswith("~"), "the first line must make it an allow list"
    allowed = effective_allow_list(filters)
    needed = {
        "adjtimex", "clock_adjtime",  # clock_synced, read-only
        # serial line, sqlite
        "ioctl", "openat", "read", "write", "fsync", "fdatasync", "pwrite64", "fcntl",
        # mqtt, modbus tcp, control socket
        "socket", "connect", "sendto", "recvfrom", "setsockopt", "accept4",
        "mmap", "mprotect", "futex", "clone", "clone3", "epoll_wait", "ppoll", "getrandom",
        # `[control] group`: os.chown of the control socket (@privileged holds @chown)
        "chown", "fchown", "fchownat", "lchown",
    }  # fmt: skip
    assert needed <= allowed, sorted(needed - allowed)
    denied = {"settimeofday", "clock_settime", "setuid", "mount", "init_module", "ptrace", "reboot"}
    assert not denied & allowed, sorted(denied & allowed)


# --- install.sh -------------------------------------------------------------------

MUTATING = [
    "groupadd",
    "useradd",
    "usermod",
    "install",
    "systemctl",
    "rm",
    "pip",
    "cp",
    "chown",
    "chmod",
]


@pytest.fixture
def script(repo_root: Path) -> Path:
    return repo_root / "systemd" / "install.sh"


def test_install_script_parses(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    assert os.access(script, os.X_OK)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_install_script_passes_shellcheck(script: Path) -> None:
    result = subprocess.run(
        ["shellcheck", str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout


def dry_run(script: Path, tmp_path: Path, *args: str) -> tuple[str, list[str]]:
    """Run install.sh --dry-run with every system-changing command shimmed; returns
    (stdout, the shim calls that happened)."""
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    calls = tmp_path / "calls.log"
    for name in MUTATING:
        shim = shims / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 1\n')
        shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(script), "--dry-run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    made = calls.read_text().splitlines() if calls.exists() else []
    return result.stdout, made


def test_dry_run_install_changes_nothing_and_shows_each_step(script: Path, tmp_path: Path) -> None:
    out, calls = dry_run(script, tmp_path)
    assert calls == []  # systemctl is only called for real in --uninstall's read-only check
    planned = [line for line in out.splitlines() if line.startswith("+ ")]
    joined = "\n".join(planned)
    assert "python3 -m venv /opt/alarmgw/venv" in joined or "upgrading" in out
    # built from a staged copy, so root leaves no build/ or *.egg-info in the checkout
    assert "+ stage_sources /opt/alarmgw/src" in planned
    assert "/opt/alarmgw/venv/bin/pip install --quiet --upgrade /opt/alarmgw/src" in joined
    assert planned.index("+ stage_sources /opt/alarmgw/src") < planned.index(
        "+ rm -rf /opt/alarmgw/src", planned.index("+ stage_sources /opt/alarmgw/src")
    )
    assert "install -m 0644 " in joined and "/etc/systemd/system/alarmgw.service" in joined
    assert "+ systemctl daemon-reload" in planned
    assert "+ systemctl enable alarmgw" in planned
    assert "+ systemctl restart alarmgw" in planned
    # the docs' `alarmgw status` must work on the Pi: the command is put on the PATH
    assert "+ ln -sfn /opt/alarmgw/venv/bin/alarmgw /usr/local/bin/alarmgw" in planned
    if not Path("/etc/alarmgw/alarmgw.toml").exists():
        assert "install -m 0640 -o root -g alarmgw" in joined
    assert planned.index("+ systemctl daemon-reload") < planned.index("+ systemctl restart alarmgw")


def test_dry_run_uninstall_keeps_config_and_buffer(script: Path, tmp_path: Path) -> None:
    out, calls = dry_run(script, tmp_path, "--uninstall")
    assert all(call.startswith("systemctl list-unit-files") for call in calls), calls
    assert "+ rm -rf /opt/alarmgw /usr/share/alarmgw /usr/share/doc/alarmgw" in out
    assert "+ rm -f /etc/systemd/system/alarmgw.service" in out
    assert "/etc/alarmgw" not in "\n".join(
        line for line in out.splitlines() if line.startswith("+ rm")
    )
    assert "/var/lib/alarmgw" not in "\n".join(
        line for line in out.splitlines() if line.startswith("+ ")
    )
    assert "kept: /etc/alarmgw" in out


def test_unknown_option_is_a_usage_error(script: Path) -> None:
    result = subprocess.run(
        ["bash", str(script), "--frobnicate"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--uninstall" in result.stderr

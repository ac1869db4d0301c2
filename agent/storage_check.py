"""`check-config`'s look at storage as the service will see it.

The agent runs as its own user inside systemd/alarmgw.service's sandbox
(ProtectSystem=strict: only the unit's StateDirectory, ReadWritePaths and the
like are writable). A buffer path that root can write, checked with sudo, can
still be one the service cannot: the agent would then run degraded from its
first start. So the buffer's directory (which also holds the point-state
memory) is checked for the service user and against the installed unit, and
the card's free space against what a full buffer needs.

Problems make check-config fail (exit 78, the install script then does not
restart the service); a card that is merely short of room for a full buffer is
a warning. Only check-config calls this: the agent itself starts on any storage
(degraded), never refusing to watch because of it.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Final

from agent import config_files
from agent.config import Config

# Where install.sh puts the unit, and where `systemctl edit` puts drop-ins.
UNIT_FILE: Final = Path("/etc/systemd/system/alarmgw.service")
MIN_FREE_BYTES: Final = 20 * 1024 * 1024  # below this even a short outage fills the card
# on disk per buffered record: ~440 bytes measured for 340-byte payloads (payload, key,
# index); doubled for long texts and details, and the WAL beside the file
BYTES_PER_RECORD: Final = 1024
BUFFER_FILES: Final = ("", "-wal", "-shm", ".seq")
POINTSTATE: Final = "pointstate.db"


@dataclass
class StorageReport:
    problems: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    warnings: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class UnitSandbox:
    """What the unit lets the service write (the parts of it we need)."""

    protect_system: str = "no"
    writable: list[PurePosixPath] = field(default_factory=list)
    state_dirs: list[PurePosixPath] = field(default_factory=list)
    private_tmp: bool = False


def check_storage(config: Config, unit_file: Path | None = None) -> StorageReport:
    """Every storage problem the service would meet with this config."""
    report = StorageReport()
    directory = config.buffer.path.parent
    sandbox = read_unit(unit_file or UNIT_FILE)
    if sandbox is not None:
        _check_sandbox(directory, sandbox, report)
    service = config_files.service_account()
    state_dir = sandbox is not None and _inside(directory, sandbox.state_dirs)
    if service is not None:
        _check_service_user(config.buffer.path, service, state_dir, report)
    elif _we_are_the_service_user():
        _check_our_access(directory, report)
    _check_free_space(directory, config.buffer.max_events, report)
    return report


# --- the unit -------------------------------------------------------------------------------


def read_unit(unit_file: Path) -> UnitSandbox | None:
    """The [Service] settings of the installed unit and its drop-ins; None if not installed."""
    files = [unit_file, *sorted(Path(f"{unit_file}.d").glob("*.conf"))]
    texts = []
    for path in files:
        try:
            texts.append(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            if path == unit_file:
                return None
    sandbox = UnitSandbox()
    for key, value in _service_settings(texts):
        _apply(sandbox, key, value)
    return sandbox


def _service_settings(texts: Iterable[str]) -> Iterable[tuple[str, str]]:
    for text in texts:
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]" and "=" in line:
                key, _, value = line.partition("=")
                yield key.strip(), value.strip()


def _apply(sandbox: UnitSandbox, key: str, value: str) -> None:
    """One assignment; as in systemd, an empty one resets a list setting."""
    bases = {
        "StateDirectory": "/var/lib",
        "CacheDirectory": "/var/cache",
        "LogsDirectory": "/var/log",
        "RuntimeDirectory": "/run",
    }
    if key == "ProtectSystem":
        sandbox.protect_system = value or "no"
    elif key == "PrivateTmp":
        sandbox.private_tmp = value.lower() in ("yes", "true", "1", "on")
    elif key == "ReadWritePaths":
        if not value:
            sandbox.writable.clear()
        sandbox.writable += [PurePosixPath(p.lstrip("-+")) for p in value.split()]
    elif key in bases:
        if not value and key == "StateDirectory":
            sandbox.state_dirs.clear()
        # "name" or "name:symlink" (systemd 250+): the directory is the first part
        dirs = [PurePosixPath(bases[key]) / p.split(":")[0] for p in value.split()]
        sandbox.writable += dirs
        if key == "StateDirectory":
            sandbox.state_dirs += dirs


# PrivateTmp=yes: the service's own /tmp and /var/tmp, emptied at every start
_PRIVATE_TMP: Final = (PurePosixPath("/tmp"), PurePosixPath("/var/tmp"))  # noqa: S108
_READ_ONLY_UNDER: Final = {
    "yes": ("/usr", "/boot", "/efi"),
    "true": ("/usr", "/boot", "/efi"),
    "full": ("/usr", "/boot", "/efi", "/etc"),
}


# memory file systems: a buffer there is gone at every reboot or power cut (and
# systemd empties the unit's RuntimeDirectory=/run/alarmgw at every stop)
_IN_RAM: Final = (PurePosixPath("/run"), PurePosixPath("/var/run"), PurePosixPath("/dev/shm"))  # noqa: S108


def _check_sandbox(directory: Path, sandbox: UnitSandbox, report: StorageReport) -> None:
    where = PurePosixPath(os.path.realpath(directory))
    if _inside(where, _IN_RAM):
        report.problems.append(
            (
                "buffer.path",
                f"{directory} is in memory (tmpfs): queued events, their seqs and the "
                "alarm memory would be lost at every power cut or reboot (and /run/alarmgw "
                "at every stop of the service); use /var/lib/alarmgw/buffer.db",
            )
        )
        return
    if sandbox.private_tmp and _inside(where, _PRIVATE_TMP):
        report.problems.append(
            (
                "buffer.path",
                f"{directory} is in the service's private /tmp (PrivateTmp=yes): it is "
                "emptied at every restart and queued events would be lost; use "
                "/var/lib/alarmgw/buffer.db",
            )
        )
        return
    if sandbox.protect_system == "strict":
        if not _inside(where, sandbox.writable):
            allowed = ", ".join(str(p) for p in sandbox.writable) or "none"
            report.problems.append(
                (
                    "buffer.path",
                    f"{directory} is read-only for the service (ProtectSystem=strict; "
                    f"writable: {allowed}): use /var/lib/alarmgw/buffer.db, or add "
                    f"ReadWritePaths={directory} with `systemctl edit alarmgw`",
                )
            )
        return
    read_only = [PurePosixPath(p) for p in _READ_ONLY_UNDER.get(sandbox.protect_system, ())]
    if _inside(where, read_only) and not _inside(where, sandbox.writable):
        report.problems.append(
            (
                "buffer.path",
                f"{directory} is read-only for the service (ProtectSystem="
                f"{sandbox.protect_system}): use /var/lib/alarmgw/buffer.db",
            )
        )


def _inside(path: Path | PurePosixPath, roots: Iterable[PurePosixPath]) -> bool:
    p = PurePosixPath(os.path.realpath(path))
    return any(p == r or r in p.parents for r in (PurePosixPath(str(r)) for r in roots))


# --- the service user -------------------------------------------------------------------


def _we_are_the_service_user() -> bool:
    import pwd  # noqa: PLC0415 - only here

    try:
        return os.geteuid() == pwd.getpwnam(config_files.SERVICE_USER).pw_uid
    except KeyError:
        return False


def _check_service_user(
    buffer: Path, service: tuple[int, set[int]], state_dir: bool, report: StorageReport
) -> None:
    user = config_files.SERVICE_USER
    directory = buffer.parent
    closed = next(
        (p for p in _nearest_existing(directory).parents if not _can_enter(p, service)), None
    )
    if closed is not None:
        report.problems.append(
            (
                "buffer.path",
                f"the service runs as {user} and cannot reach {directory}: {closed} is closed "
                f"to it ({_owner_mode(closed)})",
            )
        )
        return
    if not directory.exists():
        if state_dir:
            return  # systemd creates the StateDirectory for the service user at start
        if not _can_write(_nearest_existing(directory), service):
            report.problems.append(
                (
                    "buffer.path",
                    f"{directory} does not exist and the service user {user} cannot create "
                    f"it: sudo install -d -o {user} -g {user} -m 0750 {directory}",
                )
            )
        return
    if not _can_write(directory, service):
        report.problems.append(
            (
                "buffer.path",
                f"the service runs as {user} and cannot write {directory} "
                f"({_owner_mode(directory)}): sudo chown {user}: {directory}",
            )
        )
    for path in _our_files(buffer):
        if not _can_write(path, service, directory=False):
            report.problems.append(
                (
                    "buffer.path",
                    f"the service runs as {user} and cannot write {path} ({_owner_mode(path)}; "
                    f"left by a run as another user?): sudo chown {user}: {path}",
                )
            )


def _check_our_access(directory: Path, report: StorageReport) -> None:
    """check-config run as the service user itself: ask the kernel."""
    target = directory if directory.exists() else _nearest_existing(directory)
    if not os.access(target, os.W_OK | os.X_OK):
        report.problems.append(("buffer.path", f"{target} is not writable for this user"))


def _our_files(buffer: Path) -> list[Path]:
    """The buffer's and the point state's files that exist already."""
    names = [f"{buffer.name}{suffix}" for suffix in BUFFER_FILES]
    names += [f"{POINTSTATE}{suffix}" for suffix in ("", "-wal", "-shm")]
    return [buffer.parent / name for name in names if (buffer.parent / name).exists()]


def _can_enter(path: Path, service: tuple[int, set[int]]) -> bool:
    uid, groups = service
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _can_write(path: Path, service: tuple[int, set[int]], *, directory: bool = True) -> bool:
    uid, groups = service
    try:
        st = path.stat()
    except OSError:
        return False
    need_user = stat.S_IWUSR | (stat.S_IXUSR if directory else 0)
    need_group = stat.S_IWGRP | (stat.S_IXGRP if directory else 0)
    need_other = stat.S_IWOTH | (stat.S_IXOTH if directory else 0)
    if st.st_uid == uid:
        return st.st_mode & need_user == need_user
    if st.st_gid in groups:
        return st.st_mode & need_group == need_group
    return st.st_mode & need_other == need_other


def _owner_mode(path: Path) -> str:
    import grp  # noqa: PLC0415
    import pwd  # noqa: PLC0415

    st = path.stat()
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"owner {owner}:{group}, mode {stat.S_IMODE(st.st_mode):04o}"


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


# --- room on the card -------------------------------------------------------------------


def _check_free_space(directory: Path, max_events: int, report: StorageReport) -> None:
    where = _nearest_existing(directory)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    mb = free / 1024 / 1024
    if free < MIN_FREE_BYTES:
        report.problems.append(
            (
                "buffer.path",
                f"only {mb:.1f} MB free on the file system of {where}: the agent would run "
                f"degraded (events held in memory only) at the first outage; free at least "
                f"{MIN_FREE_BYTES // 1024 // 1024} MB",
            )
        )
        return
    need = max_events * BYTES_PER_RECORD
    if free < need:
        report.warnings.append(
            (
                "buffer.max_events",
                f"a full buffer ({max_events} records) needs about {need / 1024 / 1024:.0f} MB "
                f"and {where} has {mb:.0f} MB free: in a long outage the card fills first "
                "(degraded, events held in memory) instead of dropping telemetry first; "
                "lower max_events or free space",
            )
        )

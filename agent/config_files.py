"""The files the config names, opened as the service will open them (check-config).

The credentials file and the TLS files are loaded as the uplink loads them at start, and
must be readable by the service user: a file only root can read passes a check run with
sudo and then stops the service with exit 78. A secret reached through a symlink is
checked against the policy in docs/operations.md. Run last, once the config itself has
no problem, so that one mistake gives one problem.

It must never change a file or its mode: it only says what to run.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from pathlib import Path

from agent.config_schema import Checked, config_relative
from core.checks import Problems

SERVICE_USER = "alarmgw"  # systemd/alarmgw.service: User=


def check_uplink_files(checked: Checked, base: Path, out: Problems) -> None:
    """The credentials file and TLS files, opened as the uplink opens them at start (mode,
    format, a CA and key that load), and readable by the service user: a file only root
    can read passes a check run with sudo and then stops the service with exit 78."""
    from agent.mqtt import TlsFiles, load_credentials, tls_context  # noqa: PLC0415
    from core.errors import UplinkError  # noqa: PLC0415 - paho only when there are files

    u = checked.sections["uplink"]
    files = {key: config_relative(u.get(key), base) for key in _UPLINK_FILES}
    creds = files["credentials_file"]
    if creds is not None:
        try:
            load_credentials(creds)
        except UplinkError as exc:
            out.add("uplink.credentials_file", str(exc))
    ca = files["ca_file"]
    if ca is not None:
        try:
            tls_context(TlsFiles(ca, files["cert_file"], files["key_file"]), "check-config")
        except UplinkError as exc:
            out.add("uplink.ca_file", str(exc))
    service = service_account()
    for key, path in files.items():
        reason = _service_cannot_read(path, service) if path and service else None
        if reason:
            out.add(f"uplink.{key}", reason)
        elif path and key in _SECRETS:
            reason = _secret_link_problem(path)
            if reason:
                out.add(f"uplink.{key}", reason)


_UPLINK_FILES = ("credentials_file", "ca_file", "cert_file", "key_file")
_SECRETS = ("credentials_file", "key_file")


def _secret_link_problem(path: Path) -> str | None:
    """The policy for a symlinked secret (docs/operations.md): the link is followed, and
    only root or the service user may control it: the file it ends at is owned by one of
    them, and no directory holding a link on the way is writable by anyone else (who
    could point it elsewhere). The file's mode is checked by the loaders (0600)."""
    if not path.is_symlink():
        return None
    trusted = {0}
    with contextlib.suppress(KeyError):
        trusted.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    try:
        target = path.resolve(strict=True)
        owner = target.stat().st_uid
    except (OSError, RuntimeError):  # a dangling link or a loop: the loaders say so
        return None
    if owner not in trusted:
        return (
            f"{path} is a symlink to {target}, owned by uid {owner}: a secret may only be "
            f"owned by root or {SERVICE_USER} (sudo chown {SERVICE_USER}: {target})"
        )
    link = path
    for _ in range(40):  # the kernel's own limit on a chain of links
        if not link.is_symlink():
            return None
        st = link.parent.stat()
        if st.st_uid not in trusted or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return (
                f"{link} is a symlink in {link.parent}, which others can write: they could "
                f"point it at another file; link from a directory only root can write, or "
                f"copy the file itself"
            )
        link = link.parent / link.readlink()
    return None


def service_account() -> tuple[int, set[int]] | None:
    """The service user's uid and groups, or None when this machine has no such user (a
    config checked away from the gateway) or we are that user (the loaders above then
    opened each file as the service will, or said why not)."""
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    if os.geteuid() == user.pw_uid:
        return None
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if SERVICE_USER in g.gr_mem}
    return user.pw_uid, groups


def _service_cannot_read(path: Path, service: tuple[int, set[int]]) -> str | None:
    """Why the service user could not read `path`, or None if it can."""
    uid, groups = service
    try:
        st = path.stat()
    except OSError:
        return None  # a missing file is reported by the loaders
    mode = st.st_mode
    if (
        (st.st_uid == uid and mode & stat.S_IRUSR)
        or (st.st_gid in groups and mode & stat.S_IRGRP)
        or mode & stat.S_IROTH
    ):
        return None
    return (
        f"the service runs as {SERVICE_USER} and cannot read {path} (mode "
        f"{stat.S_IMODE(mode):04o}): sudo chown {SERVICE_USER}: {path} && sudo chmod 600 {path}"
    )

"""Real file systems for the storage tests: a size-limited tmpfs, filled to the last
block or remounted read-only, as an SD card fills up or turns read-only (tests run as
root here; without root they are skipped).

Every mount is unmounted when its block ends, also when the test fails; a mount
that is still busy (a leaked file) is detached lazily rather than left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` mounted on `path` (created if needed) for the block."""
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path) -> Path:
    """Write a file in `path` until the file system has no block left; returns it
    (delete it to give the room back)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        chunk = b"\0" * 4096
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return filler
                chunk = chunk[: len(chunk) // 2]  # the last partial block too
    finally:
        os.close(fd)


def remount(path: Path, mode: str) -> None:
    """`mode` "ro" or "rw" (the kernel refuses "ro" while a file is open for writing)."""
    _mount("-o", f"remount,{mode}", str(path))


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"mount {' '.join(args)}: {result.stderr.strip()}")


@contextlib.contextmanager
def read_only_file(path: Path) -> Iterator[Path]:
    """`path` (created empty if missing) made read-only by a read-only bind mount over
    it, for the block: opening it for writing fails with EROFS, as on a card the kernel
    turned read-only, while its directory stays writable."""
    if not path.exists():
        path.touch()
    _mount("--bind", str(path), str(path))
    try:
        _mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)

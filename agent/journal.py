"""Structured logging to the systemd journal, without a dependency.

Under systemd (JOURNAL_STREAM is set and the journal socket exists) each log
record is sent in the journal's native protocol with fields the operator can
filter on: `journalctl -u alarmgw DEVICE=efd-1` or `SEQ=1234`. Elsewhere the
agent logs plain lines to stderr. A failing journal never stops logging or the
agent: the record falls back to stderr.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
IDENTIFIER = "alarmgw"
# extra={...} keys that become journal fields (upper-cased)
EXTRA_FIELDS = ("device", "seq", "point", "line", "lane", "kind")

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _field(name: str, value: object) -> bytes:
    data = str(value).encode("utf-8", "replace")
    key = name.encode("ascii")
    if b"\n" in data:
        # binary-safe form: NAME\n<64-bit little-endian length><data>\n
        return key + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
    return key + b"=" + data + b"\n"


def encode_record(record: logging.LogRecord, message: str) -> bytes:
    """One journal datagram for `record` (pure; tested directly)."""
    parts = [
        _field("MESSAGE", message),
        _field("PRIORITY", _PRIORITY.get(record.levelno, 6)),
        _field("SYSLOG_IDENTIFIER", IDENTIFIER),
        _field("LOGGER", record.name),
        _field("CODE_FILE", record.pathname),
        _field("CODE_LINE", record.lineno),
        _field("CODE_FUNC", record.funcName),
    ]
    for name in EXTRA_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            parts.append(_field(name.upper(), value))
    return b"".join(parts)


class JournalHandler(logging.Handler):
    """Sends records to the journal's native socket; falls back to stderr per record."""

    def __init__(self, path: Path = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._fallback = logging.StreamHandler(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            self._sock.sendto(encode_record(record, message), str(self.path))
        except OSError:
            self._fallback.emit(record)

    def close(self) -> None:
        self._sock.close()
        super().close()


def under_journal() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM")) and JOURNAL_SOCKET.exists()


def setup_logging(level: int = logging.INFO) -> None:
    """Journal fields under systemd, plain stderr lines elsewhere."""
    handler: logging.Handler
    if under_journal():
        handler = JournalHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)

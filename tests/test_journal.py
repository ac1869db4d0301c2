"""Journal records carry fields an operator can filter on (DEVICE, SEQ) over a real socket."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from agent.journal import JournalHandler, encode_record


def _parse(datagram: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, _, tail = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode()
            rest = tail
        else:  # binary-safe form
            size = int.from_bytes(tail[:8], "little")
            fields[line.decode()] = tail[8 : 8 + size].decode()
            rest = tail[8 + size + 1 :]
    return fields


def test_record_fields_reach_a_journal_socket(tmp_path: Path) -> None:
    path = tmp_path / "journal.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        handler = JournalHandler(path)
        logger = logging.getLogger("alarmgw.test.journal")
        logger.addHandler(handler)
        logger.propagate = False
        try:
            logger.warning("设备 %s 通信故障", "efd-1", extra={"device": "efd-1", "seq": 42})
            fields = _parse(server.recv(65536))
        finally:
            logger.removeHandler(handler)
            handler.close()
    assert fields["MESSAGE"] == "设备 efd-1 通信故障"
    assert fields["PRIORITY"] == "4"
    assert fields["DEVICE"] == "efd-1"
    assert fields["SEQ"] == "42"
    assert fields["SYSLOG_IDENTIFIER"] == "alarmgw"


def test_multiline_message_uses_the_binary_safe_form() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "line1\nline2", None, None)
    fields = _parse(encode_record(record, "line1\nline2"))
    assert fields["MESSAGE"] == "line1\nline2"
    assert fields["PRIORITY"] == "3"


def test_a_missing_journal_falls_back_to_stderr(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    handler = JournalHandler(tmp_path / "absent.sock")
    logger = logging.getLogger("alarmgw.test.fallback")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("still logged")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert "still logged" in capsys.readouterr().err

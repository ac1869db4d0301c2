"""What every `alarmgw` command shares: exit codes and how results and errors are printed.

Exit codes mean something to scripts and to systemd (agent/cli/main.py lists them in
`--help`). Errors go to stderr, never cut: the reason is the point.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from core.errors import ConfigProblem

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 69
EXIT_BUSY = 75
EXIT_NO_PERMISSION = 77
EXIT_BAD_CONFIG = 78
EXIT_CUT_SHORT = 141  # as a shell reports a command killed by SIGPIPE


def print_problems(path: str, problems: list[ConfigProblem], as_json: bool) -> None:
    if as_json:
        listed = [{"file": p.file, "key": p.key, "reason": p.reason} for p in problems]
        print(json.dumps({"ok": False, "file": path, "problems": listed}, ensure_ascii=False))
        return
    for problem in problems:
        print(problem)  # FILE: key.path: reason — not cut: the reason is the point
    count = len(problems)
    print(f"{count} problem{'s' if count != 1 else ''} in {path}")


def emit(args: argparse.Namespace, result: Any, lines: Iterable[str]) -> None:
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for text in lines:
            print(text)


def error(text: str) -> None:
    print(f"alarmgw: {text}", file=sys.stderr)  # not cut: the reason is the point

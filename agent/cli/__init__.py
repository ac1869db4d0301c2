"""The technician's tools: the `alarmgw` command and what it needs, apart from the agent.

main.py      `alarmgw` entry point (`agent.cli:main`): arguments, exit codes, `run`
offline.py   check-config, scan, buffer --file: no running agent needed
live.py      status, devices, events, read, test-alarm, silence, buffer: ask the agent
client.py    the CLI's end of the control socket (agent/control.py serves it)
render.py    results as 80-column lines; textwidth.py: how wide a text is on a terminal
watch.py     one readable line per feed message (the demo, buffer --file)
buffer_file.py  an offline, read-only look into a buffer file (the only sqlite-utils user)

The running agent never imports this package (tests/test_layering.py holds it): these
tools sit on top of the house, they are not part of what decides and delivers.
"""

from agent.cli.main import main
from agent.cli.output import (
    EXIT_BAD_CONFIG,
    EXIT_BUSY,
    EXIT_CUT_SHORT,
    EXIT_NO_PERMISSION,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_PROBLEM,
    EXIT_USAGE,
)

__all__ = [
    "EXIT_BAD_CONFIG",
    "EXIT_BUSY",
    "EXIT_CUT_SHORT",
    "EXIT_NOT_RUNNING",
    "EXIT_NO_PERMISSION",
    "EXIT_OK",
    "EXIT_PROBLEM",
    "EXIT_USAGE",
    "main",
]

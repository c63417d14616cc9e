"""Worker-side logging: one line per event on stderr, which is a pipe to the master.

Log(name) with name in server | smtp | imap | pop (master/proto.py: LOG_NAMES); .error() /
.info() / .debug() map to the levels low / medium / high of `log_level`. A line on the wire
is proto.format_log_line's `<L> <name> <text>` with L one of E, M, H; the master's logwriter
(the single writer of the files) adds the time and `service[pid]:` prefix, filters by level
and rotates. Anything else a worker prints (a traceback) is logged by the master as an
error in server.log.
Only processes the master started log this way (their stderr is the master's pipe); outside
the master (a tool, a unit test) the lines simply land on the process's own stderr.
Diagnostics: a failed write (the master is gone) is dropped silently.
"""
from __future__ import annotations

import os
import sys

from master.proto import LOG_NAMES, format_log_line


class Log:
    def __init__(self, name: str):
        if name not in LOG_NAMES:
            raise ValueError(f"unknown log {name!r}")
        self.name = name

    def _emit(self, code: str, text: str) -> None:
        # One write per line keeps lines whole in the pipe (format_log_line stays < PIPE_BUF).
        try:
            os.write(sys.stderr.fileno(), format_log_line(code, self.name, text))
        except OSError:
            pass

    def error(self, text: str) -> None:
        self._emit("E", text)

    def info(self, text: str) -> None:
        self._emit("M", text)

    def debug(self, text: str) -> None:
        self._emit("H", text)

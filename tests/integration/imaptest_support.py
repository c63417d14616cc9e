"""Dovecot's imaptest (../shared/tools/imaptest) for the tests, CI and the benchmarks: building or
locating its binary once, and running its compliance and stress modes with their results parsed.

    path, reason = imaptest_binary()          # path None when it cannot be built (reason says why)
    result = run_compliance("127.0.0.1", port, "bob", "pw")
    result.failed, result.failures            # failures: "NAME command i/n (line L): what went wrong"
    cmds_per_s, errors = run_stress("127.0.0.1", port, "stress", "pw", clients=5, secs=10)

The scripts of the tool folder do the work (build.sh, compliance.sh, stress.sh; see its
README.md); this module only calls them with bounded timeouts and reads their summary lines.
Every run writes its full output to a log file of its own, so parallel runs never share one.

    python -m tests.integration.imaptest_support build        # one line: the binary, or why not
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

REPO = Path(__file__).resolve().parents[2]
TOOL_DIR = Path(os.environ.get("IMAPTEST_TOOL_DIR", REPO.parent / "shared" / "tools" / "imaptest"))
BUILD_TIMEOUT = 900          # seconds: apt-get of the build deps (if missing) + about 25-45 s of build


@functools.lru_cache(maxsize=None)
def imaptest_binary() -> tuple[Path | None, str]:
    """(path of the imaptest binary, "") or (None, why it cannot be had). Built at most once per
    process; build.sh is idempotent and locked, so parallel test processes do not build twice.
    Its environment applies: IMAPTEST_HOME (where), IMAPTEST_NO_APT=1 (never apt-get)."""
    build = TOOL_DIR / "build.sh"
    if not build.is_file():
        return None, f"no imaptest tool folder ({build} is missing)"
    try:
        done = subprocess.run(["bash", str(build)], capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, f"imaptest build.sh did not finish in {BUILD_TIMEOUT}s"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        return None, f"imaptest could not be built (build.sh exit {done.returncode}): {tail}"
    path = Path(lines[-1])
    if not (path.is_file() and os.access(path, os.X_OK)):
        return None, f"build.sh named {path}, which is not an executable file"
    return path, ""


# ---------------------------------------------------------------- compliance

@dataclass
class Result:
    """One compliance run. passed/failed/skipped count test groups (one test file = one group)."""
    passed: int
    failed: int
    skipped: int
    failures: list[str]            # one entry per failed command: test name, place and what went wrong
    output: str                    # compliance.sh's whole output
    failed_tests: list[str] = field(default_factory=list)
    skipped_tests: list[str] = field(default_factory=list)
    finished: bool = True          # False: imaptest was killed or never printed its summary
    returncode: int = 0

    def report(self, limit: int = 60) -> str:
        """A text for an assertion message: the counts, then the failures (at most `limit`)."""
        head = (f"imaptest: {self.passed} passed, {self.failed} failed, {self.skipped} skipped"
                f"{'' if self.finished else ' (imaptest did not finish)'}")
        shown = self.failures[:limit]
        more = [f"... and {len(self.failures) - limit} more"] if len(self.failures) > limit else []
        if not shown and self.failed:
            shown = ["no failure details; the tail of the output:", *self.output.splitlines()[-30:]]
        return "\n".join([head, *("  " + line for line in shown + more)])


_LAST = re.compile(r"^imaptest: (\d+) passed, (\d+) failed$")
_SKIPPED = re.compile(r"^skipped: (\d+) of \d+ groups$")
_TEST = re.compile(r"^\*\*\* Test (\S+) (.*)$")


def parse_compliance(output: str, returncode: int = 0) -> Result:
    """Read compliance.sh's output (see its header for the format)."""
    lines = output.splitlines()
    last = next((m for m in map(_LAST.match, reversed(lines)) if m), None)
    skipped_m = next((m for m in map(_SKIPPED.match, reversed(lines)) if m), None)
    failures: list[str] = []
    failed_tests: list[str] = []
    skipped_tests: list[str] = []
    pending_errors: list[str] = []      # imaptest's "Error: ..." lines come before the test's "***" line
    current: list[str] | None = None
    for line in lines:
        if line.startswith("----"):       # the script's own summary follows
            break
        match = _TEST.match(line)
        if match:
            if current:
                failures.append("; ".join(current))
            name, rest = match.groups()
            if rest.startswith("skipped"):
                skipped_tests.append(name)
                current = None
            else:
                current = [f"{name} {rest}", *pending_errors[-3:]]
                if name not in failed_tests:
                    failed_tests.append(name)
            pending_errors = []
        elif line.startswith(" - ") and current is not None:
            current.append(line[3:].strip())
        elif line.startswith(("Error:", "Fatal:", "Panic:")):
            pending_errors.append(line)
        elif current and not line.strip():
            failures.append("; ".join(current))
            current = None
    if current:
        failures.append("; ".join(current))
    if last is None:                      # the script itself went wrong (bad args, killed)
        return Result(0, 0, 0, failures or ["compliance.sh printed no summary line"], output,
                      failed_tests, skipped_tests, finished=False, returncode=returncode)
    passed, failed = int(last.group(1)), int(last.group(2))
    finished = skipped_m is not None      # only printed when imaptest printed its own summary
    if not finished:
        failures.append(next((l for l in lines if l.startswith("imaptest did not finish")),
                             "imaptest did not finish"))
    return Result(passed, failed, int(skipped_m.group(1)) if skipped_m else 0, failures, output,
                  failed_tests, skipped_tests, finished=finished, returncode=returncode)


def run_compliance(host: str, port: int, user: str, password: str, extra_args: Sequence[str] = (),
                   timeout: float = 600, tests: str | Path | None = None,
                   log: str | Path | None = None) -> Result:
    """Run the scripted tests against host:port as user (a throw-away account: its mailboxes
    `imaptest*` are deleted and re-created, its INBOX left alone). imaptest is killed after
    `timeout` seconds (then every group counts as failed). tests: one test file or a folder of
    them instead of all 71. extra_args go to imaptest (user2=NAME, rawlog, ...)."""
    env = dict(os.environ, IMAPTEST_TIMEOUT=str(int(timeout)))
    if tests is not None:
        env["IMAPTEST_TESTS"] = str(tests)
    with tempfile.TemporaryDirectory(prefix="imaptest-") as scratch:
        env["IMAPTEST_LOG"] = str(log or Path(scratch) / "compliance.log")
        command = ["bash", str(TOOL_DIR / "compliance.sh"), host, str(port), user, password, *extra_args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=scratch,
                                  timeout=timeout + 60, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            return Result(0, 0, 0, [f"compliance.sh did not return within {timeout + 60:.0f}s"], out,
                          finished=False, returncode=-1)
    return parse_compliance(done.stdout + (f"\n{done.stderr}" if done.stderr.strip() else ""),
                            done.returncode)


# ---------------------------------------------------------------- stress

class Stress(NamedTuple):
    cmds_per_s: int       # all commands of imaptest's Totals row / secs
    errors: int           # Error:/Fatal:/Panic: lines: protocol errors, state-tracking mismatches


_STRESS = re.compile(r"^imaptest-stress: (\d+) cmds/s, (\d+) errors$")


def run_stress(host: str, port: int, user_prefix: str, password: str, clients: int = 5, secs: int = 10,
               extra_args: Sequence[str] = (), users: int = 100, log: str | Path | None = None) -> Stress:
    """imaptest's random LOGIN/SELECT/FETCH/STORE/EXPUNGE/APPEND/LOGOUT mix with `clients` clients
    for `secs` seconds, as users user_prefix1..user_prefix<users> (or a prefix with %d), all with
    `password`. It appends, flags and expunges in their INBOXes. The whole output goes to `log`
    (default: a temporary file, removed). A run that does not finish counts as (0, >= 1)."""
    env = dict(os.environ, IMAPTEST_USERS=str(users))
    with tempfile.TemporaryDirectory(prefix="imaptest-") as scratch:
        env["IMAPTEST_LOG"] = str(log or Path(scratch) / "stress.log")
        command = ["bash", str(TOOL_DIR / "stress.sh"), host, str(port), user_prefix, password,
                   str(clients), str(secs), *extra_args]
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=scratch,
                                  timeout=secs + 200, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Stress(0, 1)
    for line in reversed(done.stdout.splitlines()):
        match = _STRESS.match(line)
        if match:
            return Stress(int(match.group(1)), int(match.group(2)))
    return Stress(0, 1)


def main(argv: list[str]) -> int:
    """`build`: build or locate the binary; print its path, or the reason it is missing (exit 0
    either way: test_imaptest.py skips, or fails under MAILHOUSE_REQUIRE_IMAPTEST=1).
    `compliance HOST PORT USER PASS [args]`: run and print the report (exit 1 when a group failed)."""
    if argv[:1] == ["build"]:
        path, reason = imaptest_binary()
        print(f"imaptest: {path}" if path else f"imaptest unavailable: {reason}")
        return 0
    if argv[:1] == ["compliance"] and len(argv) >= 5:
        result = run_compliance(argv[1], int(argv[2]), argv[3], argv[4], argv[5:])
        print(result.report(limit=1000))
        return 0 if result.failed == 0 and result.finished else 1
    print(main.__doc__, file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Running the coverage-guided fuzz targets (atheris, i.e. libFuzzer) for a bounded time.

    python -m tests.fuzz.atheris_NAME [SECONDS]   one target for SECONDS (default 20)
    python -m tests.fuzz.atheris_NAME FILE...     just these inputs (replay a crash)
    python -m tests.fuzz.harness SECONDS          every target in turn (make fuzz, CI); one
                                                  line each, the log's end on a failure

A target script calls run(name, one_input, seeds) after importing, under
atheris.instrument_imports(), the code it checks. one_input(data) raises on a failed
property; libFuzzer then stops, writes the input to build/fuzz/NAME/crash-<sha1> and the
script exits non-zero. The corpus lives in build/fuzz/NAME/corpus: seeded with `seeds`
(real mail, the smuggling variants, recorded sessions) at each start, grown by libFuzzer
with every input that reaches new code, and kept for the next run. Inputs are at most
MAX_LEN octets; one input running longer than INPUT_TIMEOUT seconds (a hang, a quadratic
blow-up) is a failure too. scratch(name) is an emptied folder build/fuzz/NAME/scratch for
a target's own files (a user database, a store): libFuzzer exits without cleaning up.
Without atheris (it has wheels for Linux x86-64 only) `harness SECONDS` says so and exits 0.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterable

from tests.fuzz.seeds import REPO

TARGETS = ["data", "smtp", "sasl", "pop3", "imap"]
MAX_LEN = 16 * 1024
INPUT_TIMEOUT = 10
DEFAULT_SECONDS = 20
WORK = REPO / "build" / "fuzz"


def scratch(name: str) -> str:
    folder = WORK / name / "scratch"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return str(folder)


def _seed(corpus: Path, seeds: Iterable[bytes]) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        if len(seed) <= MAX_LEN:
            (corpus / f"seed-{hashlib.sha1(seed).hexdigest()}").write_bytes(seed)


def run(name: str, one_input: Callable[[bytes], None], seeds: Iterable[bytes]) -> None:
    import atheris
    args = sys.argv[1:] or [str(DEFAULT_SECONDS)]
    flags = [f"-max_len={MAX_LEN}", f"-timeout={INPUT_TIMEOUT}", "-rss_limit_mb=2048",
             f"-artifact_prefix={WORK / name}/"]
    if os.environ.get("CI"):            # CI repeats one walk (a landing must not hang on luck);
        flags.append("-seed=1")         # `make fuzz` walks a new one each time
    if len(args) == 1 and args[0].isdigit():
        _seed(WORK / name / "corpus", seeds)
        inputs = [f"-max_total_time={args[0]}", str(WORK / name / "corpus")]
    else:
        inputs = args
    atheris.Setup([sys.argv[0], *flags, *inputs], one_input)
    atheris.Fuzz()


def run_all(seconds: int) -> int:
    if importlib.util.find_spec("atheris") is None:
        print("fuzz: atheris is not installed here: coverage-guided fuzzing skipped")
        return 0
    failed = 0
    for name in TARGETS:
        WORK.mkdir(parents=True, exist_ok=True)
        log = WORK / f"{name}.log"
        with open(log, "wb") as out:
            status = subprocess.call([sys.executable, "-m", f"tests.fuzz.atheris_{name}", str(seconds)],
                                     cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        text = log.read_text(errors="replace")
        done = re.findall(r"^Done (\d+) runs", text, re.M)
        print(f"fuzz: atheris_{name}: {'ok' if status == 0 else 'FAILED'}, "
              f"{done[-1] if done else '?'} inputs in {seconds} s (log: {log.relative_to(REPO)})")
        if status != 0:
            failed += 1
            print("".join(text.splitlines(keepends=True)[-40:]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_all(int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SECONDS))

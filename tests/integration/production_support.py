"""The production layout for tests: mailhouse installed as an administrator installs it.

`build_installation()` builds a venv on the system interpreter
(/usr/bin/python3) in a world-readable folder under /tmp and `pip install`s this checkout
into it (not editable: the workers must not need the checkout), with the compiled index that
`make install` built in the checkout. `production_root()` makes a
0755 folder for one system's etc/ and var/ (pytest's own tmp_path lives under a 0700 folder
that mail_owner cannot enter). A MailSystem given the Installation runs the venv's `master`
as root with every service unpriv, so workers run as mail_owner, and `mailctl` is the venv's.
These tests need root (the only way to start the production layout) and the system
interpreter with venv; CI has both.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import REPO, Installation

SYSTEM_PYTHON = "/usr/bin/python3"


def _world_readable_folder(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def requirements() -> None:
    if os.geteuid() != 0:
        pytest.skip("the production layout needs root (root master, workers as mail_owner)")
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"the production layout is installed with {SYSTEM_PYTHON}, not installed here")


def build_installation() -> Installation:
    """mailhouse installed into a fresh venv on the system interpreter."""
    requirements()
    venv = _world_readable_folder("mailhouse-venv-") / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", str(venv)], check=True)
    source = _world_readable_folder("mailhouse-src-") / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", "*.so", "_index.c", ".pytest_cache"))
    # The checkout's compiled index (built by `make install`) is reused rather than compiled
    # again: the same CPython minor version, so the same ABI.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MAILHOUSE_PURE_PYTHON"] = "1"
    pip = str(venv / "bin" / "pip")
    result = subprocess.run(f"{pip} install -q wheel && {pip} install -q --no-build-isolation {source}",
                            shell=True, env=env, capture_output=True, text=True, timeout=600)
    shutil.rmtree(source.parent)
    if result.returncode != 0:
        raise RuntimeError(f"pip install into the production venv failed:\n{result.stdout}\n{result.stderr}")
    install = Installation(venv)
    site_store = Path(subprocess.check_output(
        [install.python, "-c", "import store, os; print(os.path.dirname(store.__file__))"], env=env, cwd="/", text=True).strip())
    for compiled in (REPO / "store").glob("_index.*.so"):
        shutil.copy(compiled, site_store / compiled.name)
    return install


def remove_installation(install: Installation) -> None:
    shutil.rmtree(install.venv.parent, ignore_errors=True)


def production_root() -> Path:
    return _world_readable_folder("mailhouse-prod-")

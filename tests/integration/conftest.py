"""Fixtures of the integration tests that need more than tests/conftest.py's `mailsystem`.

    production_install      (session) mailhouse pip-installed into a venv on the system Python
    production_system(main) a MailSystem on that installation, in a 0755 folder, started as
                            root with workers as mail_owner; stopped and removed afterwards
"""
from __future__ import annotations

import shutil

import pytest

from tests.conftest import MailSystem
from tests.integration.production_support import build_installation, production_root, remove_installation


@pytest.fixture(scope="session")
def production_install():
    install = build_installation()
    yield install
    remove_installation(install)


@pytest.fixture
def production_system(production_install):
    systems: list[MailSystem] = []

    def make(main: dict[str, str] | None = None) -> MailSystem:
        ms = MailSystem(production_root(), main, install=production_install)
        systems.append(ms)
        return ms

    yield make
    for ms in systems:
        ms.stop()
        ms.kill()
        shutil.rmtree(ms.root, ignore_errors=True)

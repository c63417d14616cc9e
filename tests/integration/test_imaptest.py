"""imapd against Dovecot's imaptest: all of its scripted compliance tests must pass.

One real master with an imapd service and one throw-away user; imaptest (built once from
../shared/tools/imaptest, see tests/integration/imaptest_support.py) runs its 71 test files, each
of which re-creates the mailbox `imaptest` and appends its messages. A test file whose
`capabilities:` header names something imapd does not announce is skipped by imaptest, so every
capability imapd announces commits it to that extension's tests. Skipped here only when imaptest
cannot be built on this machine (MAILHOUSE_REQUIRE_IMAPTEST=1, as in CI, makes that a failure).
"""
from __future__ import annotations

import os

import pytest

from store.users import User, UserDB
from tests.conftest import MailSystem
from tests.integration.imaptest_support import imaptest_binary, run_compliance

pytestmark = [pytest.mark.integration, pytest.mark.imaptest]

USER, PASSWORD = "imaptest", "imaptest-pw"


def require_imaptest() -> None:
    path, reason = imaptest_binary()
    if path is None:
        if os.environ.get("MAILHOUSE_REQUIRE_IMAPTEST") == "1":
            pytest.fail(f"imaptest is required here but unavailable: {reason}")
        pytest.skip(f"imaptest unavailable: {reason}")


# imaptest fails a command the server never answers after 30 s, and is killed after 600 s in all;
# the rest of the budget is for building it when `make imaptest` has not already.
@pytest.mark.timeout(1200)
def test_imaptest_compliance(tmp_path):
    require_imaptest()
    ms = MailSystem(tmp_path / "ms")
    ms.add_service("imapd", maxproc=8, name="imap")
    ms.write_config()
    try:
        ms.start()
        with UserDB(str(ms.var / "users"), str(ms.var / "secret.key")) as db:
            db.add(User(USER, protocols=["imap"]), PASSWORD)
        result = run_compliance("127.0.0.1", ms.port("imap"), USER, PASSWORD, timeout=600)
    finally:
        ms.stop()
        ms.kill()
    clean = result.finished and result.failed == 0
    assert clean, (
        result.report() + f"\nskipped (capability not announced): {' '.join(result.skipped_tests) or '-'}"
        + f"\nimapd log (tail):\n{ms.log('imap')[-3000:]}")
    assert result.passed > 0, result.report()

"""imapd's group commit (workers/imapd/writer.py) through the real master: two sessions of
each of three users at once APPEND, UID STORE and UID EXPUNGE in their shared INBOXes; each
gets its own right answers (distinct APPENDUIDs, its flags in the STORE's FETCH, its expunges
alone), a request that fails (a missing mailbox) fails nobody else's, and the store ends
exactly as the sessions' commands say."""
from __future__ import annotations

import imaplib
import re
import threading

import pytest

from store.mailstore import INBOX
from tests.conftest import CORPUS
from tests.integration.imapd_support import ImapSystem, login

pytestmark = pytest.mark.integration
PASSWORD = "Group commit 1"
USERS = ("gc1", "gc2", "gc3")
SESSIONS_PER_USER = 2   # six sessions: the plain service takes eight connections
ROUNDS = 6
MESSAGES = sorted(CORPUS.glob("*.eml"))


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    running = ImapSystem(tmp_path_factory.mktemp("imapd-group-commit"))
    for user in USERS:
        running.add_user(user, PASSWORD)
    yield running
    running.stop()


def session_work(port: int, user: str, number: int, start: threading.Barrier) -> dict:
    """APPEND, then flag each message; expunge every other one; a failing APPEND between.
    Returns {uid: flags it should have} for the messages it kept, and what went wrong."""
    client = login(port, user, PASSWORD)
    kept, problems = {}, []
    try:
        client.select(INBOX)
        start.wait(timeout=30)
        for n in range(ROUNDS):
            keyword = f"s{number}r{n}"
            message = MESSAGES[(number + n) % len(MESSAGES)].read_bytes()
            typ, data = client.append(INBOX, f"({keyword})", None, message)
            found = re.search(rb"APPENDUID \d+ (\d+)", data[0])
            if typ != "OK" or not found:
                problems.append(("append", typ, data))
                continue
            uid = int(found.group(1))
            typ, data = client.uid("STORE", str(uid), "+FLAGS", "(\\Flagged)")
            answer = b" ".join(d for d in data if isinstance(d, bytes))
            if typ != "OK" or f"UID {uid} ".encode() not in answer or b"\\Flagged" not in answer \
                    or keyword.encode() not in answer:
                problems.append(("store", uid, typ, data))
            typ, data = client.append("Missing-Mailbox", None, None, message)
            if typ != "NO" or b"TRYCREATE" not in data[0]:
                problems.append(("missing", typ, data))
            if n % 2:
                client.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)")
                typ, data = client.uid("EXPUNGE", str(uid))
                if typ != "OK":
                    problems.append(("expunge", uid, typ, data))
            else:
                kept[uid] = {keyword, "\\Flagged"}
    finally:
        client.logout()
    return {"kept": kept, "problems": problems}


def test_concurrent_sessions_each_get_their_own_results(system):
    port = system.port()
    start = threading.Barrier(len(USERS) * SESSIONS_PER_USER)
    outcomes: dict[tuple[str, int], dict] = {}

    def worker(user, number):
        try:
            outcomes[(user, number)] = session_work(port, user, number, start)
        except (OSError, imaplib.IMAP4.error) as e:  # reported below, with the others
            outcomes[(user, number)] = {"kept": {}, "problems": [("crash", repr(e))]}

    threads = [threading.Thread(target=worker, args=(user, number))
               for user in USERS for number in range(SESSIONS_PER_USER)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == len(threads)
    assert [o["problems"] for o in outcomes.values()] == [[]] * len(threads)
    store = system.store()
    try:
        for user in USERS:
            expected = {uid: flags for (u, _), o in outcomes.items() if u == user for uid, flags in o["kept"].items()}
            assert len(expected) == SESSIONS_PER_USER * ((ROUNDS + 1) // 2)   # no APPENDUID twice
            view = store.open_mailbox(user, INBOX)
            assert {m.uid: set(m.flags) for m in view.messages()} == expected
            assert view.view.uids() == sorted(expected)
    finally:
        store.index.close()

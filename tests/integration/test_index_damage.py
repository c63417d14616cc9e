"""A damaged mail index through the real master: a data file cut short under running workers,
and a foreign one found at start. No process dies of SIGBUS; sessions get temporary errors
(POP3 -ERR [SYS/TEMP], deliveries deferred), server.log says what is wrong, and
`mailctl reconstruct` puts a rebuilt index in place: the messages are back with their UIDs
and flags, and the same workers serve again. Runs on the index the test run uses
(compiled, or the reference with MAILHOUSE_PURE_PYTHON=1: the workers inherit it)."""
from __future__ import annotations

import os
import poplib
import re
from contextlib import closing

import pytest

from store.mailstore import INBOX, MailStore
from tests.integration.delivery_support import delivery_system, sendmail, wait_queues_empty

pytestmark = pytest.mark.integration

PAGE = os.sysconf("SC_PAGE_SIZE")   # LMDB's page size: the two meta pages come first


def start(mailsystem):
    system = delivery_system(mailsystem, users={"bob": (), "carol": ()})
    system.add_service("pop3d", name="pop")
    system.start()
    return system


def store_of(system) -> MailStore:
    return MailStore(str(system.var / "store"), str(system.var / "index"))


def data_file(system):
    return system.var / "index" / "data.mdb"


def send(system, rcpt: str, subject: str) -> None:
    sendmail(system, "-f", "alice@example.test", rcpt, message=f"Subject: {subject}\n\nbody\n".encode())


def wait_delivered(system, user: str, count: int) -> list[tuple[int, tuple[str, ...]]]:
    """(uid, flags) of user's INBOX once every queued message is delivered. The test process
    opens the index only while it is sound (old code died of SIGBUS on a damaged one)."""
    assert wait_queues_empty(system, timeout=30) == {q: [] for q in ("maildrop", "incoming", "active", "deferred")}
    with store_of(system) as store:
        messages = store.open_mailbox(user, INBOX).messages()
    assert len(messages) == count
    return [(m.uid, m.flags) for m in messages]


def pop_uidl(system, user: str) -> list[bytes]:
    with closing(poplib.POP3("127.0.0.1", system.port("pop"), timeout=10)) as client:
        client.user(user)
        client.pass_(f"{user}-pw")
        return client.uidl()[1]


def pop_refused(system, user: str) -> str:
    with closing(poplib.POP3("127.0.0.1", system.port("pop"), timeout=10)) as client:
        client.user(user)
        with pytest.raises(poplib.error_proto) as refused:
            client.pass_(f"{user}-pw")
        answer = refused.value.args[0]       # bytes from the server; str when it hung up
        return answer.decode() if isinstance(answer, bytes) else answer


def workers(system) -> dict[str, list[int]]:
    return {svc["name"]: svc["workers"] for svc in system.status()["services"]}


def test_index_cut_short_under_running_workers(mailsystem):
    system = start(mailsystem)
    send(system, "bob", "one")
    send(system, "bob", "two")
    wait_delivered(system, "bob", 2)
    with store_of(system) as store:
        first = store.open_mailbox("bob", INBOX).messages()[0].uid
        store.set_flags("bob", INBOX, [(first, first)], "+", ["\\Seen", "$Label1"])
    before = wait_delivered(system, "bob", 2)
    uidl = pop_uidl(system, "bob")
    serving = workers(system)

    os.truncate(data_file(system), 2 * PAGE)       # the meta pages survive, the tree is gone

    assert pop_refused(system, "bob").startswith("-ERR [SYS/TEMP]")
    send(system, "carol", "while damaged")
    smtp_log = system.wait_for_log("smtp", "status=deferred")
    assert re.search(r"to=<carol@[^>]+>.*status=deferred \(.*data\.mdb is damaged: cut short", smtp_log)
    server_log = system.wait_for_log("server", "data.mdb is damaged: cut short")
    assert "mailctl reconstruct" in server_log
    assert workers(system) == serving and "SIGBUS" not in system.log("server")

    accounts = system.mailctl("accounts", check=False)
    assert accounts.returncode == 1 and "is damaged" in accounts.stderr and len(accounts.stderr.splitlines()) == 1

    repaired = system.mailctl("reconstruct", "bob")
    assert "is damaged: cut short" in repaired.stdout
    kept = re.search(r"damaged file kept as (\S+)", repaired.stdout).group(1)
    assert os.path.getsize(kept) == 2 * PAGE and os.path.dirname(kept) == str(system.var / "index")
    assert "all of them were rebuilt" in repaired.stdout
    assert "bob: 2 messages" in repaired.stdout

    after = wait_delivered(system, "bob", 2)         # carol's deferred mail goes out meanwhile
    assert after == before and set(after[0][1]) == {"\\Seen", "$Label1"}
    assert pop_uidl(system, "bob") == uidl
    assert wait_delivered(system, "carol", 1)
    assert pop_uidl(system, "carol")
    assert workers(system) == serving and "SIGBUS" not in system.log("server")
    assert system.mailctl("reconstruct").stdout.count("nothing to repair") == 2


def test_foreign_index_found_at_start(mailsystem):
    system = start(mailsystem)
    send(system, "bob", "before")
    before = wait_delivered(system, "bob", 1)
    system.stop()
    with open(data_file(system), "r+b") as f:   # someone else's file where the index was
        f.write(b"this is not an LMDB file".ljust(PAGE, b"\0"))
    system.start()

    send(system, "bob", "after")
    system.wait_for_log("smtp", "status=deferred")
    assert "not an LMDB data file" in system.wait_for_log("server", "is damaged")
    assert pop_refused(system, "carol").startswith("-ERR [SYS/TEMP]")

    ghost = system.mailctl("reconstruct", "ghost", check=False)
    assert (ghost.returncode, ghost.stdout, ghost.stderr) == (1, "", "mailctl: no mail store for user 'ghost'\n")
    bad = system.mailctl("reconstruct", "../bob", check=False)
    assert bad.returncode == 1 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr

    repaired = system.mailctl("reconstruct")
    assert "not an LMDB data file" in repaired.stdout
    after = wait_delivered(system, "bob", 2)
    assert after[0] == before[0] and after[1][0] > before[0][0]
    assert "SIGBUS" not in system.log("server")

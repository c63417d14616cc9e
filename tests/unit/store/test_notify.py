"""Change notification: a subscription on a mailbox directory wakes after the index commit of
a change to that mailbox (in this process or another), and only then; the polled fallback."""
from __future__ import annotations

import asyncio
import os
import sys

import pytest

from store import notify
from store.mailstore import MailStore
from store.notify import Watcher

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
WOKEN_WITHIN = 5.0


@pytest.fixture
def store(tmp_path):
    ms = MailStore(tmp_path / "store", tmp_path / "index")
    ms.ensure_inbox("bob")
    ms.create_mailbox("bob", "Other")
    yield ms
    ms.close()


def run(coroutine):
    return asyncio.run(coroutine)


def later(action, *args, delay=0.1, **kwargs):
    """Change the store from the loop's own thread while a wait is under way."""
    asyncio.get_running_loop().call_later(delay, lambda: action(*args, **kwargs))


def test_deliver_in_this_process_wakes_the_mailbox_only(store):
    async def scenario():
        watcher = Watcher.for_loop()
        assert watcher.inotify
        inbox = watcher.watch(store.mailbox_dir("bob", "INBOX"))
        other = watcher.watch(store.mailbox_dir("bob", "Other"))
        assert not inbox.polled
        later(store.deliver, "bob", "INBOX", MESSAGE)
        assert await inbox.wait(WOKEN_WITHIN)
        assert len(store.open_mailbox("bob", "INBOX")) == 1
        assert not await other.wait(0.5)
        assert not await inbox.wait(0.3)  # the wake was used up
        inbox.close()
        other.close()
    run(scenario())


def test_a_delivery_by_another_process_wakes_after_the_index_commit(store, tmp_path):
    script = (
        "import sys\n"
        "from store.mailstore import MailStore, DeliveryRequest\n"
        "ms = MailStore(sys.argv[1], sys.argv[2])\n"
        "requests = [DeliveryRequest('bob', box, b'Subject: %d\\r\\n\\r\\nx\\r\\n' % i, flags=('$Batch',))\n"
        "            for i, box in enumerate(['INBOX', 'Other', 'INBOX'])]\n"
        "assert all(isinstance(uid, int) for uid in ms.deliver_many(requests))\n"
        "ms.close()\n"
    )

    async def scenario():
        sub = Watcher.for_loop().watch(store.mailbox_dir("bob", "INBOX"))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, str(tmp_path / "store"), str(tmp_path / "index"), cwd=ROOT)
        woken = await sub.wait(WOKEN_WITHIN + 10)  # a fresh interpreter has to start first
        seen = len(store.open_mailbox("bob", "INBOX"))  # read in the woken coroutine, at once
        assert await child.wait() == 0
        sub.close()
        return woken, seen
    woken, seen = run(scenario())
    assert woken and seen == 2  # one batch, one index commit, one signal after it


def test_flags_expunge_and_copy_wake_their_mailbox(store):
    for _ in range(3):
        store.deliver("bob", "INBOX", MESSAGE)

    async def scenario():
        watcher = Watcher.for_loop()
        inbox = watcher.watch(store.mailbox_dir("bob", "INBOX"))
        other = watcher.watch(store.mailbox_dir("bob", "Other"))
        later(store.set_flags, "bob", "INBOX", [(1, 2)], "+", ["\\Deleted"])
        assert await inbox.wait(WOKEN_WITHIN)
        later(store.set_flags, "bob", "INBOX", [(1, 2)], "+", ["\\Deleted"])  # changes nothing
        assert not await inbox.wait(0.5)
        later(store.expunge, "bob", "INBOX")
        assert await inbox.wait(WOKEN_WITHIN)
        assert store.open_mailbox("bob", "INBOX").view.uids() == [3]
        later(store.copy, "bob", "INBOX", [(3, 3)], "Other")
        assert await other.wait(WOKEN_WITHIN)
        assert len(store.open_mailbox("bob", "Other")) == 1
        assert not await inbox.wait(0.5)  # a hard link to its file is no change to INBOX
        later(store.copy, "bob", "Other", [(1, 1)], "INBOX", move=True)
        assert await inbox.wait(WOKEN_WITHIN) and await other.wait(WOKEN_WITHIN)
        inbox.close()
        other.close()
    run(scenario())


def test_rename_and_delete_wake_the_mailbox(store):
    store.create_mailbox("bob", "Work/Old")

    async def scenario():
        watcher = Watcher.for_loop()
        child = watcher.watch(store.mailbox_dir("bob", "Work/Old"))
        later(store.rename_mailbox, "bob", "Work", "Archive")
        assert await child.wait(WOKEN_WITHIN)
        while await child.wait(0.3):
            pass
        assert store.mailbox("bob", "Archive/Old") is not None
        later(store.delete_mailbox, "bob", "Archive/Old")
        assert await child.wait(WOKEN_WITHIN)
        assert store.mailbox("bob", "Archive/Old") is None
        child.close()
        assert watcher._subscribers == {}
    run(scenario())


def test_subscriptions_on_one_directory_share_a_watch(store):
    async def scenario():
        watcher = Watcher.for_loop()
        assert Watcher.for_loop() is watcher
        first = watcher.watch(store.mailbox_dir("bob", "INBOX"))
        second = watcher.watch(store.mailbox_dir("bob", "INBOX"))
        assert len(watcher._subscribers) == 1
        later(store.deliver, "bob", "INBOX", MESSAGE)
        assert await first.wait(WOKEN_WITHIN) and await second.wait(WOKEN_WITHIN)
        first.close()
        later(store.deliver, "bob", "INBOX", MESSAGE)
        assert await second.wait(WOKEN_WITHIN)
        second.close()
        second.close()
        assert watcher._subscribers == {}
    run(scenario())


def test_nothing_changes_and_the_wait_times_out(store):
    async def scenario():
        sub = Watcher.for_loop().watch(store.mailbox_dir("bob", "INBOX"))
        assert not await sub.wait(0.5)
        sub.close()
    run(scenario())


def test_a_failed_signal_fails_no_store_operation(store, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(1, "refused")
    monkeypatch.setattr(os, "utime", refuse)
    uid = store.deliver("bob", "INBOX", MESSAGE)
    store.set_flags("bob", "INBOX", [(uid, uid)], "+", ["\\Seen"])
    store.copy("bob", "INBOX", [(uid, uid)], "Other", move=True)
    assert len(store.open_mailbox("bob", "Other")) == 1


def test_without_inotify_a_subscription_polls(store, monkeypatch):
    monkeypatch.setattr(notify, "_libc", lambda: None)

    async def scenario():
        watcher = Watcher.for_loop()
        assert not watcher.inotify
        sub = watcher.watch(store.mailbox_dir("bob", "INBOX"))
        assert sub.polled
        assert not await sub.wait(1.5)
        later(store.deliver, "bob", "INBOX", MESSAGE)
        assert await sub.wait(WOKEN_WITHIN)
        sub.close()
        gone = watcher.watch(store.mailbox_dir("bob", "Nope"))
        assert await gone.wait(0.1)
        watcher.close()
    run(scenario())


def test_a_directory_that_is_not_there_is_woken_already(store):
    async def scenario():
        sub = Watcher.for_loop().watch(store.mailbox_dir("bob", "Nope"))
        assert sub.polled and await sub.wait(0.1)
        sub.close()
    run(scenario())


def test_the_user_directory_wakes_on_mailbox_list_and_subscription_changes(store):
    async def scenario():
        user = Watcher.for_loop().watch(store.user_dir("bob"))
        later(store.deliver, "bob", "INBOX", MESSAGE)       # messages: not the list of mailboxes
        assert not await user.wait(0.5)
        for change in ((store.create_mailbox, "bob", "Lists"), (store.subscribe, "bob", "Lists", True),
                       (store.rename_mailbox, "bob", "Lists", "Lists2"), (store.delete_mailbox, "bob", "Lists2")):
            later(*change)
            assert await user.wait(WOKEN_WITHIN), change[0].__name__
        user.close()
    run(scenario())

"""A delivery attempt on a real store, killed after its mailbox write and before the queue
file is removed (no done mark written: the mailbox transport is idempotent), then recovered
and run again: the message is in the mailbox once."""
from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

from master.params import Params
from store.directory import Directory
from store.mailstore import INBOX, MailStore
from store.queue import Envelope, Queue, Recipient
from store.resolve import Resolver
from workers.qmgr.attempt import Attempt, Context
from workers.qmgr.transports.local import RunAs

MESSAGE = b"Subject: once\r\n\r\nbody\r\n"


class Users:
    """store.users.UserDB's get(): every name is a user without a quota."""

    def get(self, name):
        return SimpleNamespace(name=name, enabled=True, forward=[], keep_copy=False, quota=0)


def test_an_attempt_killed_after_the_mailbox_write_stores_once_when_run_again(tmp_path, monkeypatch):
    params = Params({"data_directory": str(tmp_path), "myhostname": "mail.example.test"}, {}, str(tmp_path))
    queue = Queue.from_params(params)
    queue.ensure_layout()
    writer = queue.writer()
    writer.write(MESSAGE)
    qid = writer.commit(Envelope("alice@example.org", [Recipient("bob@mail.example.test")]))
    log = SimpleNamespace(info=lambda _t: None, error=lambda _t: None, debug=lambda _t: None)

    def attempt() -> str:
        """One attempt with a store of its own (LMDB is opened after the fork, never before)."""
        mail = MailStore(tmp_path / "store", tmp_path / "index")
        directory = Directory(params, Users(), SimpleNamespace(lookup=lambda _name: None), mail)
        store = SimpleNamespace(queue=queue, mail=mail, directory=directory, resolver=Resolver(directory, ""))
        ctx = Context.build(params, log, store, RunAs(name="t"))
        try:
            assert queue.activate(qid)
            return asyncio.run(Attempt(ctx, qid).run())
        finally:
            ctx.close()
            mail.close()

    pid = os.fork()
    if pid == 0:                      # qmgr, killed as it comes to remove the delivered file
        try:
            monkeypatch.setattr(queue, "finish", lambda _qid: os._exit(9))
            attempt()
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9
    assert os.listdir(queue.path("state")) == []          # nothing was marked done
    assert queue.recover()["incoming"] == [qid]
    assert attempt() == "finished"
    with MailStore(tmp_path / "store", tmp_path / "index") as mail:
        view = mail.open_mailbox("bob", INBOX)
        assert len(view) == 1
        with view.open(1) as f:
            assert f.read().endswith(MESSAGE)
    assert queue.ids("active") == queue.ids("incoming") == []

"""qmgr's transport table: each kind of target has the transport that delivers it.

    table = Transports(MailboxTransport(...), PipeTransport(...), FileTransport(...), RemoteTransport(...))
    transport = table.of(target)        # by the target's class (store.resolve: Mailbox, ...)

The transports (mailbox.py, pipe.py, file.py, remote.py) speak transports/base.py's shape:
idempotent, key, destination, address, describe, deliver. A new kind (smtp, list) is one
more module and one more entry here; the attempt and the scheduler do not change.
Diagnostics: KeyError for a target no transport delivers (a bug: the resolver and the table
disagree).
"""
from __future__ import annotations

from workers.qmgr.transports.base import Transport


class Transports:
    def __init__(self, *transports: Transport):
        self._by_kind = {t.kind: t for t in transports}

    def of(self, target) -> Transport:
        return self._by_kind[type(target)]

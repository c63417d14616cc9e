"""The file transport: `/file` alias targets, appended in mbox form by a child process.

FileTransport(run_as, mail_owner, time_limit, files): the queue file is opened here (on the
`files` executor) and read by the child of transports.local.append_to_file, which has
dropped to mail_owner's rights and may not open it itself; the child appends, locks and
fsyncs, and is killed after command_time_limit. run_as None (mail_owner is no user here):
a temporary failure.
Destination: the file's path.
"""
from __future__ import annotations

import asyncio
import time

from store.resolve import File
from workers.qmgr.message import read_chunks
from workers.qmgr.transports.base import Delivery, Outcome
from workers.qmgr.transports.local import AsMailOwner, append_to_file, mbox_entry, no_run_as, unix_form


class FileTransport(AsMailOwner):
    name = "file"
    kind = File

    def key(self, target: File) -> str:
        return f"t:file:{target.alias}:{target.path}"

    def destination(self, target: File) -> str:
        return target.path

    def describe(self, target: File) -> str:
        return f"delivered to file: {target.path}"

    async def deliver(self, delivery: Delivery) -> Outcome:
        if self.run_as is None:
            return no_run_as(self.mail_owner)
        source = await asyncio.get_running_loop().run_in_executor(self.files, delivery.message.open)
        try:
            unix = unix_form(read_chunks(source), delivery.sender, delivery.recipient)
            entry = mbox_entry(unix, delivery.sender, time.time())
            return await append_to_file(delivery.target.path, entry, self.run_as, self.time_limit)
        finally:
            source.close()

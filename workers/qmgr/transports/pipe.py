"""The pipe transport: `|command` alias targets, each run as an asyncio subprocess.

PipeTransport(run_as, mail_owner, time_limit, files): the command runs through
transports.local.run_pipe (as mail_owner, killed after command_time_limit); its stdin is
the message in UNIX form, read from the queue file in chunks on the `files` executor while
the command consumes it. run_as None (mail_owner is no user here): a temporary failure.
Destination: the command (however many aliases name it).
"""
from __future__ import annotations


from store.resolve import Pipe
from workers.qmgr.message import in_thread
from workers.qmgr.transports.base import Delivery, Outcome
from workers.qmgr.transports.local import AsMailOwner, no_run_as, run_pipe, unix_form


class PipeTransport(AsMailOwner):
    name = "pipe"
    kind = Pipe

    def key(self, target: Pipe) -> str:
        return f"t:pipe:{target.alias}:{target.command}"

    def destination(self, target: Pipe) -> str:
        return target.command

    def describe(self, target: Pipe) -> str:
        return f"delivered to command: {target.command}"

    async def deliver(self, delivery: Delivery) -> Outcome:
        if self.run_as is None:
            return no_run_as(self.mail_owner)
        stdin = in_thread(self.files, unix_form(delivery.message.chunks(), delivery.sender, delivery.recipient))
        return await run_pipe(delivery.target.command, stdin, delivery.sender, delivery.recipient,
                              delivery.original, self.run_as, self.time_limit)

"""The queue manager, organised by transport as Postfix's qmgr is.

    manager.py     the process: recovery, passes over the queue, one attempt per ready file
    attempt.py     one attempt of one queue file: resolve, deliver, bounce, defer or finish
    scheduler.py   per-transport and per-destination queues, a bounded number in flight
    transports/    the transport table: mailbox, pipe, file, remote (a placeholder)
    message.py     the queue file's message, streamed to the transports
    bounce.py      RFC 3464 delivery status notifications
`python -m workers.qmgr` (__main__.py) is master.cf's `qmgr` command.
"""

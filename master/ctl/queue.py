"""mailctl queue: look at and act on the mail queue (store/queue.py); `mailq` = queue list.

    queue list [@DOMAIN] [--json]   every queued message: id, queue, arrival, size, sender,
                           recipients still pending (with the last deferral reason)
    queue show ID          the envelope, the delivery state and the message headers
    queue flush [@DOMAIN]  every deferred message is due now; the queue manager is woken
    queue delete WHICH     WHICH: an ID, ALL (every message in every queue), or @DOMAIN
    queue hold WHICH       keep it until released;  queue release WHICH   due now
    queue requeue WHICH    deferred mail back to incoming: tried now, resolved afresh
@DOMAIN selects the messages with a recipient still pending in DOMAIN (postsuper and
postqueue -s work by ID and ALL; this is the same by destination).
A message being delivered right now is held or deleted when its attempt ends.
Diagnostics: exit 1 with one line for an id that is not queued or malformed, or a selection
that matches nothing.
"""
from __future__ import annotations

import json
import time

from master.ctl import Refused
from store.fsio import StorageError
from store.queue import QUEUES, NotQueued, Queue, QueueCorrupt, QueueItem, is_queue_id, wake_qmgr

HEADER_LIMIT = 64 * 1024        # bytes of a message shown by `queue show`


def register(sub) -> None:
    queue = sub.add_parser("queue", help="list, show, flush, delete, hold and release queued mail")
    actions = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list the queue (mailq)")
    listing.add_argument("domain", nargs="?", metavar="@DOMAIN")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=cmd_list)
    flush = actions.add_parser("flush", help="retry deferred mail now")
    flush.add_argument("domain", nargs="?", metavar="@DOMAIN")
    flush.set_defaults(handler=cmd_flush)
    show = actions.add_parser("show", help="show one message")
    show.add_argument("id", metavar="ID")
    show.set_defaults(handler=cmd_show)
    for name, handler, text in (("delete", cmd_delete, "delete messages (ID, ALL or @DOMAIN)"),
                                ("hold", cmd_hold, "put messages on hold"),
                                ("release", cmd_release, "release held messages"),
                                ("requeue", cmd_requeue, "retry deferred messages now, resolved afresh")):
        action = actions.add_parser(name, help=text)
        action.add_argument("id", metavar="ID|ALL|@DOMAIN")
        action.set_defaults(handler=handler)


def _queue(config) -> Queue:
    return Queue.from_params(config.params)


def _id(text: str) -> str:
    queue_id = text.strip().upper()
    if not is_queue_id(queue_id):
        raise Refused(f"{text!r} is not a queue id")
    return queue_id


def _domain(text: str | None) -> str | None:
    """@DOMAIN (or None) -> the lower-cased domain; anything else is refused."""
    if text is None:
        return None
    if not text.startswith("@") or len(text) < 2 or any(c in text[1:] for c in "@ /"):
        raise Refused(f"{text!r} is not @DOMAIN")
    return text[1:].lower().rstrip(".")


def _for_domain(items: list[QueueItem], domain: str) -> list[QueueItem]:
    return [item for item in items
            if any(r.address.rpartition("@")[2].lower() == domain for _, r in item.pending())]


def _selected(queue: Queue, which: str) -> list[str]:
    """The ids an ID, ALL or @DOMAIN names (ALL: every queue, corrupt/ too)."""
    if which.upper() == "ALL":
        return [queue_id for name in QUEUES for queue_id in queue.ids(name)]
    if which.startswith("@"):
        ids = [item.queue_id for item in _for_domain(queue.list_all(), _domain(which))]
        if not ids:
            raise Refused(f"no queued message has a recipient in {which[1:]}")
        return ids
    return [_id(which)]


def describe(item: QueueItem) -> dict:
    envelope, state = item.envelope, item.state
    return {
        "id": item.queue_id, "queue": item.queue, "arrival": round(envelope.arrival, 3),
        "size": envelope.size, "sender": envelope.sender,
        "recipients": [{"address": r.address, "reason": state.reasons.get(key, "")} for key, r in item.pending()],
        "done": len(state.done), "attempts": state.attempts,
        "next_try": round(state.next_try, 3) if item.queue == "deferred" else None,
    }


def cmd_list(args, config) -> int:
    items = _queue(config).list_all()
    domain = _domain(args.domain)
    rows = [describe(item) for item in (items if domain is None else _for_domain(items, domain))]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("Mail queue is empty")
        return 0
    for row in rows:
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(row["arrival"]))
        mark = {"active": "*", "hold": "!"}.get(row["queue"], " ")
        print(f"{row['id']}{mark} {row['size']:>8} {arrival}  {row['sender'] or '<>'}  ({row['queue']})")
        for rcpt in row["recipients"]:
            if rcpt["reason"]:
                print(f"    ({rcpt['reason']})")
            print(f"    {rcpt['address']}")
    print(f"-- {sum(r['size'] for r in rows) // 1024} Kbytes in {len(rows)} messages.")
    return 0


def cmd_show(args, config) -> int:
    queue = _queue(config)
    queue_id = _id(args.id)
    try:
        item = queue.load(queue_id)
        with queue.message_file(queue_id, item.queue) as f:
            head = f.read(HEADER_LIMIT).split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    except (NotQueued, QueueCorrupt) as e:
        raise Refused(str(e)) from None
    except FileNotFoundError:       # the queue manager moved or finished it meanwhile
        raise Refused(f"{queue_id} changed queues or was delivered just now; try again") from None
    print(json.dumps(describe(item), indent=2))
    print(head.decode("utf-8", "replace"))
    return 0


def cmd_flush(args, config) -> int:
    queue = _queue(config)
    domain = _domain(args.domain)
    count = queue.flush(None if domain is None else [i.queue_id for i in _for_domain(queue.list_all(), domain)])
    wake_qmgr(config.params)
    print(f"{count} deferred messages are due now")
    return 0


def _act(args, config, action) -> int:
    """action on each selected id, a line each; one id that is not queued is refused, among
    many (ALL, @DOMAIN) one that went meanwhile (delivered) is skipped."""
    queue = _queue(config)
    ids = _selected(queue, args.id)
    for queue_id in ids:
        try:
            outcome = action(queue, queue_id)
        except (NotQueued, StorageError) as e:
            if len(ids) == 1 or not isinstance(e, NotQueued):
                raise Refused(str(e)) from None
            continue
        print(f"{queue_id}: {outcome}")
    return 0


def cmd_delete(args, config) -> int:
    if args.id.upper() != "ALL":
        return _act(args, config, Queue.delete)
    deleted, requested = _queue(config).delete_all()
    print(f"{deleted} messages deleted" + (f"; {requested} in delivery will be deleted when it ends" if requested else ""))
    return 0


def cmd_requeue(args, config) -> int:
    result = _act(args, config, Queue.requeue)
    wake_qmgr(config.params)
    return result


def cmd_hold(args, config) -> int:
    return _act(args, config, Queue.hold)


def cmd_release(args, config) -> int:
    result = _act(args, config, Queue.release)
    wake_qmgr(config.params)
    return result

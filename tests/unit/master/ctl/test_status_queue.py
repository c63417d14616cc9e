"""mailctl status's queue part: messages per queue directory, the deferred ones by reason."""
from __future__ import annotations

import time

from master.ctl.status import queue_summary
from store.queue import Envelope, Queue, Recipient


def test_deferred_mail_is_counted_by_its_last_reason(tmp_path):
    queue = Queue(str(tmp_path / "queue"))
    queue.ensure_layout()
    ids = []
    for rcpts in (["a@down.example"], ["b@down.example", "c@grey.example"], ["d@down.example"], ["e@x.test"]):
        writer = queue.writer()
        writer.write(b"Subject: s\r\n\r\nbody\r\n")
        ids.append(writer.commit(Envelope("alice@example.test", [Recipient(r) for r in rcpts])))
    refused = "connect to mx.down.example[192.0.2.1]:25: Connection refused"
    reasons = [{"0": refused}, {"0": refused, "1": "451 4.7.1 greylisted, try later"}, {"0": refused}]
    for queue_id, why in zip(ids, reasons):
        queue.activate(queue_id)
        queue.defer(queue_id, time.time() + 600, why)
    queue.hold(ids[3])
    summary = queue_summary(queue)
    assert {k: summary[k] for k in ("incoming", "active", "deferred", "hold", "corrupt")} == \
        {"incoming": 0, "active": 0, "deferred": 3, "hold": 1, "corrupt": 0}
    assert summary["deferred_reasons"] == [{"reason": refused, "messages": 3},
                                           {"reason": "451 4.7.1 greylisted, try later", "messages": 1}]


def test_an_unreadable_queue_is_said_not_fatal(tmp_path):
    queue = Queue(str(tmp_path / "queue"))
    queue.ensure_layout()
    (tmp_path / "queue" / "deferred").rmdir()
    (tmp_path / "queue" / "deferred").write_text("not a folder")
    assert queue_summary(queue)["error"].startswith("cannot read the queue: ")

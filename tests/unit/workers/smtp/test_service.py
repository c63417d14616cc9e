"""The smtp service's socket protocol (workers/smtp/service.py, workers/smtp/request.py):
a real service on a unix socket in tmp_path, asked with raw JSON lines, delivering to the
fake server of fakesmtp.py."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest

from store.queue import new_queue_id
from tests.fakes import FakeLog
from tests.unit.workers.smtp.fakesmtp import FakeSMTP
from workers._jsonservice import JSONLineService
from workers.smtp.client import Settings
from workers.smtp.deliver import Deliverer
from workers.smtp.request import BadRequest, id_of, parse_request
from workers.smtp.service import LIMITS, SMTPService

MESSAGE = b"Subject: hi\r\n\r\nhello\r\n"


def good(queue_id: str, port: int, **changes) -> dict:
    return {"id": 7, "queue_id": queue_id, "offset": 0, "size": len(MESSAGE), "sender": "a@x.test",
            "ret": None, "envid": None, "body": None, "smtputf8": False, "nexthop": f"[127.0.0.1]:{port}",
            "recipients": [{"address": "b@y.test", "notify": None, "orcpt": None}], **changes}


def serve(tmp_path, scenario):
    directory = tmp_path / "queue"
    (directory / "active").mkdir(parents=True)
    queue_id = new_queue_id()
    (directory / "active" / queue_id).write_bytes(MESSAGE)

    async def main():
        path = str(tmp_path / "smtp.sock")
        log = FakeLog()
        deliverer = Deliverer(Settings("me.test", "none", "", 5, 5, 5, 5, 5, 5, 5), None, 5, 0, 4, log)
        lines = JSONLineService(SMTPService(deliverer, str(directory), log).answer, id_of, LIMITS, log, "smtp service")
        server = await asyncio.start_unix_server(lines.serve, path=path, limit=LIMITS.request_max)
        reader, writer = await asyncio.open_unix_connection(path, limit=2**20)
        try:
            async with FakeSMTP() as smtp:
                return await asyncio.wait_for(scenario(reader, writer, queue_id, smtp), 20), log
        finally:
            writer.close()
            server.close()
            lines.stop_reading()
            await lines.finish()
            await deliverer.closed()
    return asyncio.run(main())


async def ask(reader, writer, *requests) -> dict:
    for request in requests:
        writer.write(request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n")
    return {reply["id"]: reply for reply in [json.loads(await reader.readline()) for _ in requests]}


def test_a_delivery_is_answered_with_one_result_per_recipient(tmp_path):
    async def scenario(reader, writer, queue_id, smtp):
        two = good(queue_id, smtp.port, id=8, recipients=[{"address": "c@y.test", "notify": ["NEVER"], "orcpt": None},
                                                          {"address": "d@y.test", "notify": None, "orcpt": None}])
        return await ask(reader, writer, good(queue_id, smtp.port), two), smtp.messages
    (replies, messages), _log = serve(tmp_path, scenario)
    assert [r["outcome"] for r in replies[7]["results"]] == ["sent"]
    result = replies[8]["results"][1]
    assert result["address"] == "d@y.test" and result["status"] == "2.0.0" and result["code"] == 250
    assert result["relay"].startswith("127.0.0.1[127.0.0.1]:") and set(result) == {
        "address", "outcome", "status", "code", "text", "relay"}
    assert messages == [MESSAGE, MESSAGE]


def test_bad_requests_and_missing_queue_files_get_error_replies(tmp_path):
    async def scenario(reader, writer, queue_id, smtp):
        return await ask(reader, writer, b"not json\n", good("../../etc/passwd", smtp.port, id=3),
                         good("0123456789ABCDEF012345", smtp.port, id=4),
                         good(queue_id, smtp.port, id=5, size=len(MESSAGE) + 1))
    replies, log = serve(tmp_path, scenario)
    assert replies[None] == {"id": None, "error": "bad request: not JSON"}
    assert replies[3] == {"id": 3, "error": "bad request: bad queue_id"}
    assert replies[4]["error"].startswith("cannot read queue file active/0123456789ABCDEF012345: No such file")
    assert "shorter" in replies[5]["error"]
    assert any("bad request (not JSON)" in line for line in log.lines)


@pytest.mark.parametrize("change, error", [
    ({"id": -1}, "bad or missing id"),
    ({"offset": "0"}, "'offset' must be int"),
    ({"size": True}, "'size' must be int"),
    ({"sender": "a b@x"}, "bad sender address"),
    ({"sender": "<a@x>"}, "bad sender address"),
    ({"recipients": []}, "between 1 and"),
    ({"recipients": [{"address": "x@y\r\nDATA"}]}, "bad recipient address"),
    ({"recipients": [{"address": "x@y", "notify": ["NEVER", "DELAY"]}]}, "bad notify"),
    ({"recipients": [{"address": "x@y", "orcpt": "x@y"}]}, "TYPE;ADDRESS"),
    ({"ret": "ALL"}, "bad ret or body"),
    ({"envid": "a\nb"}, "bad envid"),
    ({"nexthop": "[x"}, "bad host"),
    ({"smtputf8": 1}, "'smtputf8' has the wrong type"),
    ({"extra": 1}, "unknown field 'extra'"),
])
def test_malformed_requests_are_refused(change, error):
    data = good("0123456789ABCDEF012345", 25, **change)
    with pytest.raises(BadRequest, match=error):
        parse_request(json.dumps(data).encode())
    assert id_of(json.dumps(data).encode()) == (None if change.get("id") == -1 else 7)


class StandInDaemon:
    """What main() uses of workers._server.Daemon: params, log, stopping, wait_wakeup."""

    def __init__(self, params, log):
        self.params = params
        self.log = log
        self.stopping = False
        self._woken = asyncio.Event()

    async def wait_wakeup(self, timeout=None) -> bool:
        await self._woken.wait()
        self._woken.clear()
        return True

    def stop(self) -> None:
        self.stopping = True
        self._woken.set()


def test_drain_finishes_the_delivery_under_way_then_quits_kept_connections(tmp_path, monkeypatch):
    from master import proto
    from master.params import Params
    from workers.smtp import service

    directory = tmp_path / "queue"
    (directory / "active").mkdir(parents=True)
    queue_id = new_queue_id()
    (directory / "active" / queue_id).write_bytes(MESSAGE)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "smtp.sock"))
    listener.listen()
    monkeypatch.setenv(proto.ENV_LISTEN_FD, str(listener.fileno()))
    params = Params({"queue_directory": str(directory), "smtp_connection_cache_time_limit": "60s",
                     "smtp_tls_security_level": "none", "myhostname": "me.test"}, {}, str(tmp_path))

    async def main():
        release = asyncio.Event()
        async with FakeSMTP(hold_end_of_data=release) as smtp:
            daemon = StandInDaemon(params, FakeLog())
            running = asyncio.ensure_future(service.main(daemon))
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "smtp.sock"))
            writer.write(json.dumps(good(queue_id, smtp.port)).encode() + b"\n")
            await smtp.data_received.wait()
            daemon.stop()                       # SIGTERM / drain while the message is in flight
            release.set()
            reply = json.loads(await reader.readline())
            await asyncio.wait_for(running, 10)
            writer.close()
            return reply, smtp.commands
    reply, commands = asyncio.run(asyncio.wait_for(main(), 20))
    assert reply["results"][0]["outcome"] == "sent"
    assert commands[-1] == "QUIT"

"""master/proto.py: the master<->worker contract, both ends of each message and log line."""
from __future__ import annotations

from master import proto
from master.params import Params


def test_messages_survive_the_wire():
    for message in (proto.handover(7, proto.MAXPROC, True), proto.drain(), proto.drain(stop=True),
                    proto.wakeup(), proto.login_answer(7, 2.0, ""), proto.ready("smtp"), proto.closed(7),
                    proto.session(7, "bob", "pop"), proto.login(7, False, None), proto.alive()):
        data = proto.encode(message)
        assert len(data) <= proto.CONTROL_MSG_MAX
        assert proto.decode(data) == message
    assert "op" not in proto.handover(1, "", False)          # a connection is told by its socket
    assert proto.drain()["op"] == proto.drain(stop=True)["op"] == proto.OP_DRAIN


def test_anything_but_a_json_object_decodes_as_invalid():
    for data in (b"", b"not json", b"[1, 2]", b"42", b'"text"', b"\xff" * 500):
        message = proto.decode(data)
        assert message["op"] == proto.OP_INVALID
        assert len(message["data"]) <= proto.INVALID_DATA_MAX


def test_log_lines_format_and_parse():
    line = proto.format_log_line("M", "smtp", "one\ntwo")
    assert line == b"M smtp one two\n"
    assert proto.parse_log_line(line) == ("M", "smtp", "one two")
    assert proto.parse_log_line(b"E pop x\r\n") == ("E", "pop", "x")
    for other in (b"Traceback (most recent call last):\n", b"X smtp text\n", b"M mail text\n", b"M smtp\n"):
        assert proto.parse_log_line(other) is None


def test_a_long_log_line_stays_one_pipe_write():
    line = proto.format_log_line("E", "server", "\u00e9" * 10_000)
    assert len(line) <= proto.LOG_LINE_BYTES + 1 and line.endswith(b"\n")
    code, log, text = proto.parse_log_line(line)
    assert (code, log) == ("E", "server") and text.startswith("\u00e9\u00e9")


def test_heartbeat_is_well_inside_the_hang_timeout(tmp_path):
    def interval(timeout: str) -> float:
        return proto.heartbeat_interval(Params({"worker_hang_timeout": timeout}, {}, str(tmp_path)))
    assert interval("60s") == proto.HEARTBEAT_MAX
    assert interval("2s") == 0.5
    assert interval("0") == proto.HEARTBEAT_MAX              # no deadline: beats are harmless


def test_lowspace_flag_in_the_run_directory(tmp_path):
    params = Params({"data_directory": str(tmp_path)}, {}, str(tmp_path))
    assert proto.lowspace_path(params) == f"{params.run_directory}/{proto.LOWSPACE_FLAG}"
    assert not proto.is_low(params)
    (tmp_path / "run").mkdir(exist_ok=True)
    open(proto.lowspace_path(params), "w").close()
    assert proto.is_low(params)

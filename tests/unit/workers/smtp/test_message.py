"""DATA encoding (workers/smtp/message.py DataEncoder) whatever the chunk boundaries, and
reading the message from its queue file (MessageSource)."""
from __future__ import annotations

import asyncio
import random

import pytest

from workers.smtp import message as message_module
from workers.smtp.message import DataEncoder, MessageSource, Truncated


def reference(data: bytes) -> bytes:
    """Line by line: CRLF ends, one more dot before a leading dot, an end for the last line."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = b"".join((b"." if line.startswith(b".") else b"") + line.removesuffix(b"\r") + b"\r\n"
                   for line in lines)
    return out + b".\r\n"


def encode(data: bytes, sizes) -> bytes:
    encoder, out, i = DataEncoder(), [], 0
    for size in sizes:
        out.append(encoder.feed(data[i:i + size]))
        i += size
    out.append(encoder.feed(data[i:]))
    return b"".join(out) + encoder.end()


@pytest.mark.parametrize("data", [
    b"", b"a", b".", b"..\r\n", b"a\r\nb\r\n", b"a\nb", b".x\n.y\r\n..z", b"a\r", b"\r\n\r\n.\r\n",
    b"x\r\n.\r\ny\r\n", b"\n.\n", b"a\rb\r\n.",
])
def test_dot_stuffing_and_line_ends(data):
    assert encode(data, []) == reference(data)
    for cut in range(len(data) + 1):
        assert encode(data, [cut]) == reference(data)


def test_any_chunking_gives_the_same_bytes():
    rng = random.Random(7)
    alphabet = [b"a", b".", b"\r", b"\n", b"\r\n", b".."]
    for _ in range(2000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(60)))
        sizes = [rng.randrange(1, 8) for _ in range(20)]
        assert encode(data, sizes) == reference(data), data


def test_a_long_line_is_passed_on_in_pieces(monkeypatch):
    monkeypatch.setattr(message_module, "LONG_LINE", 10)
    encoder = DataEncoder()
    first = encoder.feed(b".a" + b"x" * 20 + b"\r")
    assert first == b"..a" + b"x" * 20 and encoder.carry == b"\r"
    assert encoder.feed(b"\n.b\r\n") + encoder.end() == b"\r\n..b\r\n.\r\n"


def test_the_message_is_read_from_its_queue_file_only(tmp_path):
    (tmp_path / "active").mkdir()
    queue_id = "0123456789ABCDEF012345"
    (tmp_path / "active" / queue_id).write_bytes(b"HEAD" + b"m" * 200_000)

    async def read(offset, size):
        source = await MessageSource.open(str(tmp_path), queue_id, offset, size)
        try:
            return b"".join([chunk async for chunk in source.chunks()])
        finally:
            source.close()
    assert asyncio.run(read(4, 200_000)) == b"m" * 200_000
    with pytest.raises(ValueError, match="shorter"):
        asyncio.run(read(4, 200_001))
    with pytest.raises(ValueError, match="bad queue id"):
        asyncio.run(MessageSource.open(str(tmp_path), "../etc/passwd", 0, 1))
    (tmp_path / "active" / "ABCDEF0123456789ABCDEF").symlink_to(tmp_path / "active" / queue_id)
    with pytest.raises(ValueError, match="symbolic link"):
        asyncio.run(MessageSource.open(str(tmp_path), "ABCDEF0123456789ABCDEF", 0, 1))


def test_a_file_cut_short_while_sending_raises_truncated(tmp_path):
    (tmp_path / "active").mkdir()
    path = tmp_path / "active" / "0123456789ABCDEF012345"
    path.write_bytes(b"x" * 100)

    async def go():
        source = await MessageSource.open(str(tmp_path), path.name, 0, 100)
        path.write_bytes(b"x" * 10)
        try:
            return [chunk async for chunk in source.chunks()]
        finally:
            source.close()
    with pytest.raises(Truncated):
        asyncio.run(go())

"""COMPRESS (RFC 4978): DEFLATE under the session's streams, after login.

`tag COMPRESS DEFLATE` is answered `tag OK DEFLATE active` in clear (after any mailbox
updates); from the next octet on, both directions are raw DEFLATE, inside TLS when TLS is
active (conn.start_deflate, workers/_compress.py). A second COMPRESS gets
`NO [COMPRESSIONACTIVE]`; another algorithm, or not exactly one atom, gets BAD.
Diagnostics: imap.log (debug) `compress: user=... ip=... DEFLATE`; a damaged compressed
stream from the client is logged `damaged compressed stream: <zlib's words>: ip=...` and
ends the session like a lost connection.
"""
from __future__ import annotations

from workers.imapd.parser import Atom, Bad

CAPABILITIES = ("COMPRESS=DEFLATE",)
ALGORITHMS = ("DEFLATE",)


async def compress(session, command) -> None:
    args = command.args
    if len(args) != 1 or not isinstance(args[0], Atom):
        raise Bad("COMPRESS needs one algorithm name")
    algorithm = args[0].upper()
    if algorithm not in ALGORITHMS:
        raise Bad(f"Unsupported compression algorithm; supported: {' '.join(ALGORITHMS)}")
    if session.conn.compressed:
        await session.no("Compression is already active", "COMPRESSIONACTIVE")
        return
    await session.ok(f"{algorithm} active")
    session.conn.start_deflate()
    session.log.debug(f"compress: user={session.user} ip={session.conn.peer_ip} {algorithm}")

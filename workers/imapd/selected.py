"""The selected mailbox of one IMAP session: what the client has been told, and what changed.

Selected(session, name, readonly, owner=None, rights=ALL) holds the snapshot the client's
sequence numbers refer to: `view` (a store MailboxView: .view is the index View, .path(seq)
the message file), `info` (its MailboxInfo), `rights` (the user's ACL rights on it,
workers/imapd/acl.py; may(right): selected read-write and granted). The snapshot only moves forward in send_updates(), which the
session calls before every tagged OK/NO and IDLE calls when the store signals a change:
    gone, changed = old.diff(new)    messages expunged elsewhere, flags changed elsewhere
    `* n EXPUNGE` for each gone one (highest first, so no number shifts under the client),
    `* n EXISTS` when messages came, `* n FETCH (FLAGS (...))` for the changed ones
    (once QRESYNC is enabled one `* VANISHED uid-set` replaces the EXPUNGEs, and once
    CONDSTORE is, the FETCHes carry MODSEQ: workers/imapd/condstore.py)
except the flag changes this session made and has already reported (own_change(uid,
modseq) records them). When expunges are not allowed now (during FETCH, STORE, SEARCH)
and some happened, the snapshot keeps the expunged messages (their last records) and
adopts everything else (flags, new messages: FETCH and EXISTS are sent), so sequence
numbers never change under a client except through the EXPUNGE responses it was sent,
while flags read from the snapshot (FETCH FLAGS right after a STORE) are current; the
EXPUNGEs follow at the next command that allows them. This session's own EXPUNGE, CLOSE
and MOVE go the same way: the store removes, send_updates reports. A mailbox deleted or
recreated (UIDVALIDITY changed) meanwhile ends the session with `* BYE`.
\\Recent: a message is recent in the one read-write session that first claims it
(claim_recent(): at SELECT and when new messages arrive; the store keeps the first
unclaimed UID per mailbox); EXAMINE sees the unclaimed ones as recent without claiming.
`* n RECENT` follows every `* n EXISTS`; flag_names(seq) includes \\Recent. Once IMAP4rev2 is
enabled (RFC 9051) neither is sent: no message is recent to that session (is_recent).
Helpers for the commands: resolve(token, uid) -> array of sequence numbers (parser
Bad for a malformed set, BAD for a sequence number beyond the snapshot; `$` is the saved
search result, `saved`, which lives as long as this selection);
flags_list(seq) -> bytes `(\\Seen ...)`.
Diagnostics: none; store errors propagate.
"""
from __future__ import annotations

from array import array

from store._index_view import RECORD
from store.index import View, flag_names
from store.mailstore import MailboxView
from workers._session import Close
from workers.imapd import condstore, general
from workers.imapd.acl import ALL as ALL_RIGHTS
from workers.imapd.parser import Atom, Bad

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class Selected:
    def __init__(self, session, name: str, readonly: bool, owner: str | None = None, rights: str = ALL_RIGHTS):
        self.session = session
        self.mail = session.backend.mail
        self.user = owner or session.user     # whose mailbox: another user's or the Shared namespace's
        self.name = name
        self.readonly = readonly
        self.rights = rights                  # the user's ACL rights on it (workers/imapd/acl.py)
        self.view = self.mail.open_mailbox(self.user, name)
        self.info = self.view.info
        self._own: dict[int, int] = {}        # uid -> modseq of this session's reported flag changes
        self._expunges_waiting = False        # the snapshot holds messages expunged meanwhile
        self._recent: list[tuple[int, int]] = []   # [first, end) UID ranges \\Recent in this session
        self.watch = None                     # a store.notify subscription, made by IDLE
        self.saved: list[int] = []            # ascending UIDs of SEARCH RETURN (SAVE), `$` (RFC 5182)
        self.announced_keywords = self.view.view.keywords   # the client's FLAGS (sent by SELECT)

    def __len__(self) -> int:
        return len(self.view)

    def may(self, right: str) -> bool:
        """Selected read-write and the ACL grants the right (e.g. "s": FETCH may set \\Seen)."""
        return not self.readonly and right in self.rights

    @property
    def directory(self) -> str:
        return self.view.directory

    # -- sequence sets
    def resolve(self, token, uid: bool) -> array:
        if not isinstance(token, Atom):
            raise Bad("Invalid sequence set")
        if str(token) == "$":
            return self.view.view.seqs_in_uid_ranges([(uid, uid) for uid in self.saved])
        try:
            return self.view.view.resolve(str(token), uid)
        except ValueError as e:
            raise Bad(f"Invalid sequence set: {e}") from None

    def flags_list(self, seq: int) -> bytes:
        return ("(" + " ".join(self.flag_names(seq)) + ")").encode()

    def flag_names(self, seq: int, view: View | None = None) -> tuple[str, ...]:
        """The message's flags, \\Recent included when it is recent in this session."""
        view = view or self.view.view
        names = flag_names(view.flag_bits(seq), view.keywords)
        return ("\\Recent", *names) if self.is_recent(view.uid(seq)) else names

    # -- \\Recent (RFC 3501 2.3.2): new messages are recent in the one session that claims them
    async def claim_recent(self) -> None:
        """Claim the store's unclaimed UIDs (a read-write session; EXAMINE only looks)."""
        if self.readonly:
            first, end = self.mail.recent_from(self.user, self.name)
            self._recent = [(first, end)] if first < end else []
            return
        first, end = await self.session.backend.writer.claim_recent(self.session, self.user, self.name)
        if first < end:
            self._recent.append((first, end))

    def is_recent(self, uid: int) -> bool:
        if not self._recent or general.rev2(self.session):
            return False
        for first, end in self._recent:      # a plain loop: this runs once per message of a FETCH
            if first <= uid < end:
                return True
        return False

    def recent_count(self, view: View | None = None) -> int:
        view = view or self.view.view
        if not self._recent or not len(view):
            return 0
        return len(view.seqs_in_uid_ranges([(first, end - 1) for first, end in sorted(self._recent)]))

    def keywords(self) -> tuple[str, ...]:
        return self.view.view.keywords

    # -- updates
    def own_change(self, uid: int, modseq: int) -> None:
        """This session reported the flags of uid as of modseq: no unsolicited FETCH for it."""
        self._own[uid] = modseq

    async def send_updates(self, session, allow_expunge: bool) -> None:
        info = self.mail.mailbox(self.user, self.name)     # one read when nothing changed
        if info is not None and (info.uidvalidity, info.highestmodseq, info.uidnext) == \
                (self.info.uidvalidity, self.info.highestmodseq, self.info.uidnext) \
                and not (allow_expunge and self._expunges_waiting):
            return
        if info is None or info.uidvalidity != self.info.uidvalidity:
            await session.farewell("The selected mailbox was deleted or renamed")
            raise Close
        newer = self.mail.open_mailbox(self.user, self.name)
        gone, changed = self.view.view.diff(newer.view)
        self._expunges_waiting = bool(gone) and not allow_expunge
        if self._expunges_waiting:
            newer = MailboxView(newer.user, newer.mailbox, newer.directory, _keeping_gone(self.view.view, newer.view))
            gone, changed = self.view.view.diff(newer.view)
        if newer.info.uidnext > self.info.uidnext:
            await self.claim_recent()
        before = len(self.view) - len(gone)
        if gone and condstore.qresync(session):
            await session.untagged("VANISHED " + condstore.number_set(sorted(self.view.view.uid(seq) for seq in gone)))
        else:
            for seq in gone:
                await session.untagged(f"{seq} EXPUNGE")
        await self.announce_flags(session, newer.view.keywords)
        if len(newer) != before:
            await session.untagged(f"{len(newer)} EXISTS")
            if not general.rev2(session):
                await session.untagged(f"{self.recent_count(newer.view)} RECENT")
        for seq in changed:
            record = newer.view.record(seq)
            if self._own.get(record.uid) == record.modseq:
                continue
            flags = " ".join(self.flag_names(seq, newer.view))
            modseq = f" MODSEQ ({record.modseq})" if condstore.enabled(session) else ""
            await session.untagged(f"{seq} FETCH (UID {record.uid} FLAGS ({flags}){modseq})")
        self.view = newer
        self.info = newer.info
        self._own.clear()

    async def announce_flags(self, session, keywords: tuple[str, ...]) -> None:
        """`* FLAGS` and PERMANENTFLAGS again when the mailbox's keywords grew: a keyword must be
        in FLAGS before a FETCH shows it."""
        if keywords == self.announced_keywords:
            return
        self.announced_keywords = keywords
        await session.untagged(b"FLAGS " + self.flag_set(keywords))
        if not self.readonly:
            await session.untagged(b"OK [PERMANENTFLAGS " + self.flag_set(keywords)[:-1] + b" \\*)] Flags permitted")

    @staticmethod
    def flag_set(keywords) -> bytes:
        return ("(" + " ".join(SYSTEM_FLAGS + tuple(keywords)) + ")").encode()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None


def _keeping_gone(old: View, newer: View) -> View:
    """newer, but with old's records of the messages newer no longer has (expunges the
    client has not been told of); both in UID order. The keyword table only grows, so
    old's flag bits mean the same under newer's."""
    packed = bytearray()
    j = 1
    for seq in range(1, len(old) + 1):
        uid = old.uid(seq)
        while j <= len(newer) and newer.uid(j) < uid:
            packed += _packed(newer, j)
            j += 1
        if j <= len(newer) and newer.uid(j) == uid:
            packed += _packed(newer, j)
            j += 1
        else:
            packed += _packed(old, seq)
    for rest in range(j, len(newer) + 1):
        packed += _packed(newer, rest)
    return View(newer.info, bytes(packed))


def _packed(view: View, seq: int) -> bytes:
    record = view.record(seq)
    return RECORD.pack(record.uid, record.size, view.flag_bits(seq), record.internal_date, record.modseq)

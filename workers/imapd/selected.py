"""The selected mailbox of one IMAP session: what the client has been told, and what changed.

Selected(session, name, readonly) holds the snapshot the client's sequence numbers refer
to: `view` (a store MailboxView: .view is the index View, .path(seq) the message file) and
`info` (its MailboxInfo). The snapshot only moves forward in send_updates(), which the
session calls before every tagged OK/NO and IDLE calls when the store signals a change:
    gone, changed = old.diff(new)    messages expunged elsewhere, flags changed elsewhere
    `* n EXPUNGE` for each gone one (highest first, so no number shifts under the client),
    `* n EXISTS` when messages came, `* n FETCH (FLAGS (...))` for the changed ones
except the flag changes this session made and has already reported (own_change(uid,
modseq) records them). When expunges are not allowed now (during FETCH, STORE, SEARCH)
and some happened, nothing moves: the whole update waits, so sequence numbers never
change under a client except through the EXPUNGE responses it was sent. A mailbox deleted
or recreated (UIDVALIDITY changed) meanwhile ends the session with `* BYE`.
Helpers for the commands: resolve(token, uid) -> array of sequence numbers (parser
Bad for a malformed set, BAD for a sequence number beyond the snapshot);
flags_list(seq) -> bytes `(\\Seen ...)`; reload() to adopt the store's state right after
this session's own change (EXPUNGE, which reports what it removed itself).
Diagnostics: none; store errors propagate.
"""
from __future__ import annotations

from array import array

from store.index import flag_names
from workers._session import Close
from workers.imapd.parser import Atom, Bad

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


class Selected:
    def __init__(self, session, name: str, readonly: bool):
        self.session = session
        self.mail = session.backend.mail
        self.user = session.user
        self.name = name
        self.readonly = readonly
        self.view = self.mail.open_mailbox(self.user, name)
        self.info = self.view.info
        self._own: dict[int, int] = {}        # uid -> modseq of this session's reported flag changes
        self.watch = None                     # a store.notify subscription, made by IDLE

    def __len__(self) -> int:
        return len(self.view)

    @property
    def directory(self) -> str:
        return self.view.directory

    # -- sequence sets
    def resolve(self, token, uid: bool) -> array:
        if not isinstance(token, Atom):
            raise Bad("Invalid sequence set")
        if str(token) == "$":
            raise Bad("No saved search result")   # SEARCHRES is not announced
        try:
            return self.view.view.resolve(str(token), uid)
        except ValueError as e:
            raise Bad(f"Invalid sequence set: {e}") from None

    def flags_list(self, seq: int) -> bytes:
        names = flag_names(self.view.view.flag_bits(seq), self.view.view.keywords)
        return ("(" + " ".join(names) + ")").encode()

    def keywords(self) -> tuple[str, ...]:
        return self.view.view.keywords

    # -- updates
    def own_change(self, uid: int, modseq: int) -> None:
        """This session reported the flags of uid as of modseq: no unsolicited FETCH for it."""
        self._own[uid] = modseq

    def reload(self) -> None:
        self.view = self.mail.open_mailbox(self.user, self.name)
        self.info = self.view.info
        self._own.clear()

    def changed(self) -> bool:
        info = self.mail.mailbox(self.user, self.name)
        return info is None or (info.uidvalidity, info.highestmodseq, info.uidnext) != \
            (self.info.uidvalidity, self.info.highestmodseq, self.info.uidnext)

    async def send_updates(self, session, allow_expunge: bool) -> None:
        if not self.changed():
            return
        info = self.mail.mailbox(self.user, self.name)
        if info is None or info.uidvalidity != self.info.uidvalidity:
            await session.farewell("The selected mailbox was deleted or renamed")
            raise Close
        newer = self.mail.open_mailbox(self.user, self.name)
        old_keywords = self.view.view.keywords
        gone, changed = self.view.view.diff(newer.view)
        if gone and not allow_expunge:
            return
        before = len(self.view) - len(gone)
        for seq in gone:
            await session.untagged(f"{seq} EXPUNGE")
        if newer.view.keywords != old_keywords:
            await session.untagged(b"FLAGS " + self.flag_set(newer.view.keywords))
        if len(newer) != before:
            await session.untagged(f"{len(newer)} EXISTS")
        for seq in changed:
            record = newer.view.record(seq)
            if self._own.get(record.uid) == record.modseq:
                continue
            await session.untagged(f"{seq} FETCH (UID {record.uid} FLAGS ({' '.join(record.flags)}))")
        self.view = newer
        self.info = newer.info
        self._own.clear()

    @staticmethod
    def flag_set(keywords) -> bytes:
        return ("(" + " ".join(SYSTEM_FLAGS + tuple(keywords)) + ")").encode()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
            self.watch = None

"""Mailbox commands: SELECT/EXAMINE, NAMESPACE (RFC 2342), LIST (RFC 3501, LIST-EXTENDED
RFC 5258, LIST-STATUS RFC 5819, SPECIAL-USE RFC 6154), LSUB, CREATE (CREATE-SPECIAL-USE),
DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, STATUS (STATUS=SIZE RFC 8438).

SELECT and EXAMINE open a mailbox (workers/imapd/selected.py) and answer FLAGS, EXISTS,
RECENT, UNSEEN, PERMANENTFLAGS, UIDVALIDITY, UIDNEXT and READ-WRITE / READ-ONLY; a failed
SELECT leaves no mailbox selected (RFC 3501 6.3.1).
One personal namespace: prefix "", delimiter "/". Every parent of a mailbox is a mailbox
in the store, so \\Noselect / \\NonExistent appear only for a parent the index lacks
(and for `LIST "" ""`). Subscriptions belong to existing mailboxes: SUBSCRIBE to a name
that does not exist is NO [NONEXISTENT], DELETE drops the subscription with the mailbox.
LIST answers \\HasChildren / \\HasNoChildren and the special-use attributes always,
\\Subscribed with the SUBSCRIBED selection or return option. DELETE refuses INBOX
([CANNOT]) and a mailbox with children ([ALREADYEXISTS], as Dovecot); deleting the
selected mailbox unselects it. RENAME INBOX moves INBOX's messages into a new mailbox and
leaves INBOX empty (its children stay); RENAME of the selected mailbox (or a parent of it)
keeps it selected under its new name.
Store writes run in the store thread (backend.run); its refusals become NO with a response
code (ALREADYEXISTS, NONEXISTENT, CANNOT). Diagnostics: a store failure (StorageError,
OSError) is logged to imap.log and answered NO [UNAVAILABLE].
"""
from __future__ import annotations

import re

from store.fsio import StorageError
from store.index import SEEN, NoSuchMailbox
from store.mailstore import INBOX, BadMailboxName, MailboxExists, MailboxNotEmpty
from workers.imapd.names import DELIMITER, mailbox_name, utf8_names, wire_name
from workers.imapd.parser import Atom, Bad, String, astring, mutf7_decode
from workers.imapd.selected import Selected

CAPABILITIES = ("NAMESPACE", "CHILDREN", "SPECIAL-USE", "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS",
                "STATUS=SIZE")

SPECIAL_USES = ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive")   # what a mailbox of the store can be
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE")
SELECT_OPTIONS = ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE")
RETURN_OPTIONS = ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS")


async def select(session, command) -> None:
    if len(command.args) != 1:
        raise Bad(f"{command.name} takes a mailbox name")
    name = mailbox_name(session, command.args[0])
    readonly = command.name == "EXAMINE"
    session.unselect()
    try:
        selected = Selected(session, name, readonly)
    except NoSuchMailbox:
        await session.no("Mailbox does not exist", "NONEXISTENT")
        return
    view = selected.view.view
    await session.untagged(b"FLAGS " + Selected.flag_set(view.keywords))
    permanent = b"()" if readonly else Selected.flag_set(view.keywords)[:-1] + b" \\*)"
    await session.untagged(b"OK [PERMANENTFLAGS " + permanent + b"] Limited" if readonly
                           else b"OK [PERMANENTFLAGS " + permanent + b"] Flags permitted")
    await session.untagged(f"{len(view)} EXISTS")
    await selected.claim_recent()
    await session.untagged(f"{selected.recent_count()} RECENT")
    unseen = next((seq for seq in range(1, len(view) + 1) if not view.flag_bits(seq) & SEEN), 0)
    if unseen:
        await session.untagged(f"OK [UNSEEN {unseen}] First unseen")
    info = selected.info
    await session.untagged(f"OK [UIDVALIDITY {info.uidvalidity}] UIDs valid")
    await session.untagged(f"OK [UIDNEXT {info.uidnext}] Predicted next UID")
    session.select(selected)
    await session.ok(f"{command.name} completed", "READ-ONLY" if readonly else "READ-WRITE")


# ---------------------------------------------------------------- helpers

async def _write(session, fn, *args):
    """fn(*args) in the store thread; the store's refusals as Bad(status="NO") with their code."""
    try:
        return await session.backend.run(fn, *args)
    except MailboxExists:
        raise Bad("Mailbox already exists", status="NO", code="ALREADYEXISTS") from None
    except NoSuchMailbox:
        raise Bad("Mailbox does not exist", status="NO", code="NONEXISTENT") from None
    except BadMailboxName as e:
        raise Bad(f"Invalid mailbox name: {e}", status="NO", code="CANNOT") from None
    except (StorageError, OSError) as e:
        session.log.error(f"mailbox command failed: user={session.user} command={session.command.name}: {e}")
        raise Bad("The mailboxes cannot be changed now, try again later", status="NO", code="UNAVAILABLE") from None


def _args(command, count: int, usage: str) -> list:
    if len(command.args) != count:
        raise Bad(f"{command.name} takes {usage}")
    return command.args


def _words(token, allowed: tuple[str, ...], what: str) -> list[str]:
    """A parenthesised list of atoms, upper-cased; BAD for anything not in allowed."""
    if not isinstance(token, list) or not all(isinstance(t, Atom) for t in token):
        raise Bad(f"Invalid {what} list")
    words = [t.upper() for t in token]
    unknown = next((w for w in words if w not in allowed), None)
    if unknown is not None:
        raise Bad(f"Unknown {what}: {unknown}")
    return words


def _recent(session, name: str, info) -> int:
    """Messages no session has claimed as \\Recent yet (what a SELECT now would see)."""
    mail = session.backend.mail
    first, end = mail.recent_from(session.user, name)
    if first >= end or not info.count:
        return 0
    if first <= 1:
        return info.count
    return len(mail.open_mailbox(session.user, name).view.seqs_in_uid_ranges([(first, end - 1)]))


def _status_text(session, name: str, info, items) -> str:
    values = {"MESSAGES": info.count, "UIDNEXT": info.uidnext, "UIDVALIDITY": info.uidvalidity,
              "UNSEEN": info.unseen, "SIZE": info.total_size}
    if "RECENT" in items:
        values["RECENT"] = _recent(session, name, info)
    return " ".join(f"{item} {values[item]}" for item in items)


async def _send_status(session, name: str, info, items) -> None:
    text = _status_text(session, name, info, items)
    await session.untagged(b"STATUS " + wire_name(session, name) + f" ({text})".encode())


# ---------------------------------------------------------------- NAMESPACE, STATUS

async def namespace(session, command) -> None:
    _args(command, 0, "no arguments")
    await session.untagged(f'NAMESPACE (("" "{DELIMITER}")) NIL NIL')
    await session.ok("NAMESPACE completed")


async def status(session, command) -> None:
    name_token, items = _args(command, 2, "a mailbox name and a list of status items")
    name = mailbox_name(session, name_token)
    items = _words(items, STATUS_ITEMS, "status item")
    if not items:
        raise Bad("STATUS needs at least one status item")
    info = session.backend.mail.mailbox(session.user, name)
    if info is None:
        raise Bad("Mailbox does not exist", status="NO", code="NONEXISTENT")
    await _send_status(session, name, info, items)
    await session.ok("STATUS completed")


# ---------------------------------------------------------------- CREATE, DELETE, RENAME, (UN)SUBSCRIBE

def _special_use(params) -> str:
    """CREATE's parameters (RFC 4466): only `(USE (\\flag))`; the store keeps one use per mailbox."""
    if (not isinstance(params, list) or len(params) != 2 or not isinstance(params[0], Atom)
            or params[0].upper() != "USE" or not isinstance(params[1], list)
            or not params[1] or not all(isinstance(t, Atom) for t in params[1])):
        raise Bad("CREATE: the only parameter is (USE (special-use))")
    if len(params[1]) > 1:
        raise Bad("A mailbox can have only one special use", status="NO", code="USEATTR")
    use = next((u for u in SPECIAL_USES if u.upper() == params[1][0].upper()), None)
    if use is None:
        raise Bad(f"Special use {params[1][0]} is not supported", status="NO", code="USEATTR")
    return use


async def create(session, command) -> None:
    if len(command.args) not in (1, 2):
        raise Bad("CREATE takes a mailbox name and optionally (USE (special-use))")
    text = astring(command.args[0])
    if text.endswith(DELIMITER):                 # RFC 3501 6.3.3: a trailing delimiter is dropped
        text = text[:-1]
    name = mailbox_name(session, String(text))
    use = _special_use(command.args[1]) if len(command.args) == 2 else ""
    if name == INBOX:
        raise Bad("INBOX always exists", status="NO", code="ALREADYEXISTS")
    await _write(session, session.backend.mail.create_mailbox, session.user, name, use)
    await session.ok("CREATE completed")


async def delete(session, command) -> None:
    [token] = _args(command, 1, "a mailbox name")
    name = mailbox_name(session, token)
    if name == INBOX:
        raise Bad("INBOX cannot be deleted", status="NO", code="CANNOT")
    try:
        await _write(session, session.backend.mail.delete_mailbox, session.user, name)
    except MailboxNotEmpty:
        raise Bad("Mailbox has children, delete them first", status="NO", code="ALREADYEXISTS") from None
    if session.selected is not None and session.selected.name == name:
        session.unselect()
    await session.ok("DELETE completed")


def _move_inbox(mail, user: str, new: str) -> None:
    """RENAME INBOX (RFC 3501 6.3.5): a new mailbox gets all of INBOX's messages."""
    mail.create_mailbox(user, new)
    info = mail.ensure_inbox(user)
    if info.uidnext > 1:
        mail.copy(user, INBOX, [(1, info.uidnext - 1)], new, move=True)


async def rename(session, command) -> None:
    old_token, new_token = _args(command, 2, "two mailbox names")
    old, new = mailbox_name(session, old_token), mailbox_name(session, new_token)
    if new == INBOX:
        raise Bad("INBOX always exists", status="NO", code="ALREADYEXISTS")
    mail = session.backend.mail
    if old == INBOX:
        await _write(session, _move_inbox, mail, session.user, new)
    else:
        await _write(session, mail.rename_mailbox, session.user, old, new)
        _follow_rename(session, old, new)
    await session.ok("RENAME completed")


def _follow_rename(session, old: str, new: str) -> None:
    """The selected mailbox, if renamed (with a parent, too), keeps its snapshot under the new name."""
    selected = session.selected
    if selected is None or not (selected.name == old or selected.name.startswith(old + DELIMITER)):
        return
    selected.name = selected.view.mailbox = new + selected.name[len(old):]
    selected.view.directory = session.backend.mail.mailbox_dir(session.user, selected.name)


async def subscribe(session, command) -> None:
    [token] = _args(command, 1, "a mailbox name")
    name = mailbox_name(session, token)
    await _write(session, session.backend.mail.set_mailbox_attributes, session.user, name,
                 command.name == "SUBSCRIBE")
    await session.ok(f"{command.name} completed")


unsubscribe = subscribe


# ---------------------------------------------------------------- LIST, LSUB

def _pattern(session, token) -> str:
    text = astring(token)
    return text if utf8_names(session) else mutf7_decode(text)


def _full_pattern(reference: str, pattern: str) -> str:
    """The reference prefixed to the pattern (RFC 3501 6.3.8), one delimiter between them."""
    if reference.endswith(DELIMITER) and pattern.startswith(DELIMITER):
        pattern = pattern[1:]
    return reference + pattern


def _matcher(pattern: str):
    """`*` matches anything, `%` anything but the delimiter; a leading INBOX in any case is INBOX."""
    head = pattern[:len(INBOX)]
    if head.upper() == INBOX and pattern[len(INBOX):len(INBOX) + 1] in ("", DELIMITER):
        pattern = INBOX + pattern[len(INBOX):]
    regex = "".join(".*" if c == "*" else f"[^{re.escape(DELIMITER)}]*" if c == "%" else re.escape(c)
                    for c in pattern)
    return re.compile(regex, re.DOTALL).fullmatch


class _Tree:
    """The user's mailboxes with the parents they imply; names in LIST's order (INBOX first)."""

    def __init__(self, infos):
        self.boxes = {info.name: info for info in infos}
        self.parents: set[str] = set()
        for name in self.boxes:
            parts = name.split(DELIMITER)
            self.parents.update(DELIMITER.join(parts[:depth]) for depth in range(1, len(parts)))
        self.names = sorted(self.boxes.keys() | self.parents, key=lambda n: (n.split(DELIMITER)[0] != INBOX, n))

    def descendants(self, name: str):
        prefix = name + DELIMITER
        return (n for n in self.names if n.startswith(prefix))


class _ListRequest:
    """LIST's arguments (RFC 5258 3): selection options, reference, patterns, return options."""

    def __init__(self, session, args: list):
        args = list(args)
        self.extended = False
        self.select: list[str] = []
        if args and isinstance(args[0], list):
            self.extended = True
            self.select = _words(args.pop(0), SELECT_OPTIONS, "selection option")
        if len(args) < 2:
            raise Bad("LIST takes a reference and a mailbox pattern")
        reference = _pattern(session, args[0])
        if isinstance(args[1], list):
            self.extended = True
            if not args[1]:
                raise Bad("LIST: empty pattern list")
            patterns = [_pattern(session, t) for t in args[1]]
        else:
            patterns = [_pattern(session, args[1])]
        self.returns: list[str] = []
        self.status_items: list[str] = []
        rest = args[2:]
        if rest:
            if len(rest) != 2 or not isinstance(rest[0], Atom) or rest[0].upper() != "RETURN":
                raise Bad("LIST: unexpected arguments")
            self.extended = True
            self._return_options(rest[1])
        if "RECURSIVEMATCH" in self.select and not set(self.select) - {"RECURSIVEMATCH", "REMOTE"}:
            raise Bad("RECURSIVEMATCH needs another selection option")
        self.root = "" in patterns                      # LIST "" "": the delimiter
        self.matchers = [_matcher(_full_pattern(reference, p)) for p in patterns if p]
        self.criteria = [o for o in self.select if o in ("SUBSCRIBED", "SPECIAL-USE")]
        self.show_subscribed = "SUBSCRIBED" in self.select or "SUBSCRIBED" in self.returns

    def _return_options(self, token) -> None:
        if not isinstance(token, list):
            raise Bad("LIST: RETURN needs a list of options")
        tokens = iter(token)
        for option in tokens:
            word = option.upper() if isinstance(option, Atom) else None
            if word not in RETURN_OPTIONS:
                raise Bad("LIST: unknown return option")
            if word == "STATUS":
                self.status_items = _words(next(tokens, None), STATUS_ITEMS, "status item")
                if not self.status_items:
                    raise Bad("LIST: STATUS needs status items")
            self.returns.append(word)

    def matches(self, name: str) -> bool:
        return any(match(name) for match in self.matchers)

    def meets(self, info) -> bool:
        """The selection criteria (SUBSCRIBED, SPECIAL-USE) hold for this mailbox."""
        return info is not None and all(info.subscribed if c == "SUBSCRIBED" else bool(info.special_use)
                                        for c in self.criteria)


def _attributes(tree: _Tree, name: str, extended: bool) -> list[str]:
    info = tree.boxes.get(name)
    attrs = []
    if info is None:
        attrs += ["\\NonExistent", "\\Noselect"] if extended else ["\\Noselect"]
    attrs.append("\\HasChildren" if name in tree.parents else "\\HasNoChildren")
    if info is not None and info.special_use:
        attrs.append(info.special_use)
    return attrs


async def _list_line(session, verb: str, attrs: list[str], name: str, extra: bytes = b"") -> None:
    await session.untagged(f"{verb} ({' '.join(attrs)}) \"{DELIMITER}\" ".encode()
                           + wire_name(session, name) + extra)


async def list_(session, command) -> None:
    request = _ListRequest(session, command.args)
    if request.root:
        await session.untagged(f'LIST (\\Noselect) "{DELIMITER}" ""')
    tree = _Tree(session.backend.mail.list_mailboxes(session.user))
    for name in tree.names:
        if not request.matches(name):
            continue
        info = tree.boxes.get(name)
        chosen = request.meets(info) if request.criteria else True
        extra = b""
        if request.criteria and "RECURSIVEMATCH" in request.select and any(
                request.meets(tree.boxes.get(d)) for d in tree.descendants(name)):
            chosen = True
            extra = (" (\"CHILDINFO\" (" + " ".join(f'"{c}"' for c in request.criteria) + "))").encode()
        if not chosen:
            continue
        attrs = _attributes(tree, name, request.extended)
        if request.show_subscribed and info is not None and info.subscribed:
            attrs.append("\\Subscribed")
        await _list_line(session, "LIST", attrs, name, extra)
        if request.status_items and info is not None:
            await _send_status(session, name, info, request.status_items)
    await session.ok("LIST completed")


async def lsub(session, command) -> None:
    reference, pattern = (_pattern(session, t) for t in _args(command, 2, "a reference and a mailbox pattern"))
    if not pattern:
        await session.untagged(f'LSUB (\\Noselect) "{DELIMITER}" ""')
        await session.ok("LSUB completed")
        return
    match = _matcher(_full_pattern(reference, pattern))
    tree = _Tree(session.backend.mail.list_mailboxes(session.user))
    subscribed = {name for name, info in tree.boxes.items() if info.subscribed}
    for name in tree.names:
        if not match(name):
            continue
        below = [d for d in tree.descendants(name) if d in subscribed]
        if name in subscribed:
            await _list_line(session, "LSUB", [], name)
        elif below and not any(match(d) for d in below):
            await _list_line(session, "LSUB", ["\\Noselect"], name)   # `%` stopped above a subscribed one
    await session.ok("LSUB completed")

"""Mailbox commands: SELECT/EXAMINE, NAMESPACE (RFC 2342), LIST (RFC 3501, LIST-EXTENDED
RFC 5258, LIST-STATUS RFC 5819, SPECIAL-USE RFC 6154), LSUB, CREATE (CREATE-SPECIAL-USE),
DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, STATUS (STATUS=SIZE RFC 8438).

SELECT and EXAMINE open a mailbox (workers/imapd/selected.py) and answer FLAGS, EXISTS,
RECENT, UNSEEN, PERMANENTFLAGS, UIDVALIDITY, UIDNEXT and READ-WRITE / READ-ONLY; a failed
SELECT leaves no mailbox selected (RFC 3501 6.3.1). Their CONDSTORE / QRESYNC parameters and
responses (OK [CLOSED], HIGHESTMODSEQ, VANISHED (EARLIER)) are workers/imapd/condstore.py's;
STATUS has HIGHESTMODSEQ too, and DELETED (RFC 9051: the \\Deleted messages).
Once IMAP4rev2 is enabled (RFC 9051, workers/imapd/general.py rev2) SELECT sends no RECENT
and no UNSEEN code but `* LIST (attributes) "/" name` of the mailbox, every LIST says
\\NonExistent (not \\Noselect) for a name that does not exist, and DELETE of a mailbox with
children is NO [HASCHILDREN].
Namespaces (workers/imapd/names.py), delimiter "/": the personal one, prefix ""; "Other
Users", prefix "user/" (`user/NAME/...`); "Shared", prefix "shared/". Outside the personal
one the ACL decides (workers/imapd/acl.py): LIST shows what has l, SELECT/EXAMINE/STATUS
need r (SELECT is READ-ONLY without any of s, t, w, e: an admin's read access), CREATE
needs k on the parent (admins create anywhere under `shared/`; the new mailbox inherits its
parent's ACL), DELETE needs x; without l or r a mailbox does not exist (NO [NONEXISTENT]),
with them a missing right is NO [NOPERM]; LIST-STATUS answers only where r is granted.
RENAME is for the personal namespace only; (UN)SUBSCRIBE takes any namespace's names.
Every parent of a mailbox is a mailbox in the store. Subscriptions are names kept apart from the mailboxes (store subscriptions,
as Dovecot): SUBSCRIBE to a name that does not exist is allowed, DELETE keeps the
subscription, RENAME moves those of the renamed tree. So \\NonExistent (LIST-EXTENDED;
\\Noselect in a plain LIST) appears for a subscribed name that does not exist, listed by
the SUBSCRIBED selection option (RFC 5258 3.1), for its parents the index lacks, and for
`LIST "" ""`; LSUB lists such a name as it lists any other subscription.
LIST answers \\HasChildren / \\HasNoChildren and the special-use attributes always,
\\Subscribed with the SUBSCRIBED selection or return option. RECURSIVEMATCH adds CHILDINFO
to a mailbox that has a descendant meeting the selection criteria which no pattern matches
(itself listed otherwise). A reference or pattern that is not valid modified UTF-7 matches
nothing. DELETE refuses INBOX
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
from workers.imapd import acl, condstore, general
from workers.imapd.names import (
    DELIMITER,
    OTHER_USERS,
    SHARED,
    mailbox_name,
    mailbox_ref,
    name_text,
    reserved,
    shown_name,
    utf8_names,
    wire_name,
)
from workers.imapd.parser import Atom, Bad, String, mutf7_decode
from workers.imapd.selected import Selected

CAPABILITIES = ("NAMESPACE", "CHILDREN", "SPECIAL-USE", "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS",
                "STATUS=SIZE")

SPECIAL_USES = ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive")   # what a mailbox of the store can be
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED", "SIZE", "HIGHESTMODSEQ")
SELECT_OPTIONS = ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE")
RETURN_OPTIONS = ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS")


async def select(session, command) -> None:
    if not 1 <= len(command.args) <= 2:
        raise Bad(f"{command.name} takes a mailbox name and optional parameters")
    params = condstore.select_parameters(session, command.args[1:])
    owner, name = mailbox_ref(session, command.args[0])
    await condstore.close_selected(session)
    rights = acl.require(session, owner, name, "r")          # after the close: a failed SELECT unselects
    readonly = command.name == "EXAMINE" or not acl.read_write(rights)
    try:
        selected = Selected(session, name, readonly, owner, rights)
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
    rev2 = general.rev2(session)
    if not rev2:
        await session.untagged(f"{selected.recent_count()} RECENT")
    unseen = 0 if rev2 else next((seq for seq in range(1, len(view) + 1) if not view.flag_bits(seq) & SEEN), 0)
    if unseen:
        await session.untagged(f"OK [UNSEEN {unseen}] First unseen")
    info = selected.info
    await session.untagged(f"OK [UIDVALIDITY {info.uidvalidity}] UIDs valid")
    await session.untagged(f"OK [UIDNEXT {info.uidnext}] Predicted next UID")
    if rev2:
        await _list_selected(session, selected)
    await condstore.report_selected(session, selected, params)
    session.select(selected)
    await session.ok(f"{command.name} completed", "READ-ONLY" if readonly else "READ-WRITE")


async def _list_selected(session, selected) -> None:
    """IMAP4rev2's LIST response for the mailbox SELECT opens (RFC 9051 6.3.2)."""
    prefix = selected.name + DELIMITER
    children = any(info.name.startswith(prefix) for info in session.backend.mail.list_mailboxes(selected.user))
    attrs = ["\\HasChildren" if children else "\\HasNoChildren"]
    if selected.info.special_use:
        attrs.append(selected.info.special_use)
    await _list_line(session, "LIST", attrs, shown_name(session, selected.user, selected.name))


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


def _recent(mail, info) -> int:
    """Messages no session has claimed as \\Recent yet (what a SELECT now would see)."""
    first, end = mail.recent_from(info.user, info.name)
    if first >= end or not info.count:
        return 0
    if first <= 1:
        return info.count
    return len(mail.open_mailbox(info.user, info.name).view.seqs_in_uid_ranges([(first, end - 1)]))


def _status_text(session, info, items) -> str:
    values = {"MESSAGES": info.count, "UIDNEXT": info.uidnext, "UIDVALIDITY": info.uidvalidity,
              "UNSEEN": info.unseen, "SIZE": info.total_size, "HIGHESTMODSEQ": info.highestmodseq}
    if "RECENT" in items:
        values["RECENT"] = _recent(session.backend.mail, info)
    if "DELETED" in items:
        view = session.backend.mail.open_mailbox(info.user, info.name).view
        values["DELETED"] = len(view.search(has=("\\Deleted",)))
    return " ".join(f"{item} {values[item]}" for item in items)


async def _send_status(session, shown: str, info, items) -> None:
    """STATUS of the mailbox info describes (its owner's), under the name the client used."""
    text = _status_text(session, info, items)
    await session.untagged(b"STATUS " + wire_name(session, shown) + f" ({text})".encode())


# ---------------------------------------------------------------- NAMESPACE, STATUS

async def namespace(session, command) -> None:
    _args(command, 0, "no arguments")
    await session.untagged(f'NAMESPACE (("" "{DELIMITER}")) (("{OTHER_USERS}{DELIMITER}" "{DELIMITER}"))'
                           f' (("{SHARED}{DELIMITER}" "{DELIMITER}"))')
    await session.ok("NAMESPACE completed")


async def status(session, command) -> None:
    name_token, items = _args(command, 2, "a mailbox name and a list of status items")
    owner, name = mailbox_ref(session, name_token)
    items = _words(items, STATUS_ITEMS, "status item")
    if not items:
        raise Bad("STATUS needs at least one status item")
    acl.require(session, owner, name, "r")
    info = session.backend.mail.mailbox(owner, name)
    if info is None:
        raise Bad("Mailbox does not exist", status="NO", code="NONEXISTENT")
    await _send_status(session, shown_name(session, owner, name), info, items)
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
    text = name_text(command.args[0])
    if text.endswith(DELIMITER):                 # RFC 3501 6.3.3: a trailing delimiter is dropped
        text = text[:-1]
    owner, name = mailbox_ref(session, String(text))
    use = _special_use(command.args[1]) if len(command.args) == 2 else ""
    acl.require_create(session, owner, name)     # Other Users, Shared: by the ACL (workers/imapd/acl.py)
    if name == INBOX:
        raise Bad("INBOX always exists", status="NO", code="ALREADYEXISTS")
    mail = session.backend.mail
    if owner == session.user:
        await _write(session, mail.create_mailbox, owner, name, use)
    else:
        await _write(session, acl.create_inheriting, mail, owner, name, use)
    await session.ok("CREATE completed")


async def delete(session, command) -> None:
    [token] = _args(command, 1, "a mailbox name")
    owner, name = mailbox_ref(session, token)
    if name == INBOX:
        raise Bad("INBOX cannot be deleted", status="NO", code="CANNOT")
    acl.require(session, owner, name, "x")
    try:
        await _write(session, session.backend.mail.delete_mailbox, owner, name)
    except MailboxNotEmpty:
        raise Bad("Mailbox has children, delete them first", status="NO",
                  code="HASCHILDREN" if general.rev2(session) else "ALREADYEXISTS") from None
    if session.selected is not None and (session.selected.user, session.selected.name) == (owner, name):
        session.unselect()
    await session.ok("DELETE completed")


def _selected_own(session) -> bool:
    """A mailbox of the user's own is selected (not another user's)."""
    return session.selected is not None and session.selected.user == session.user


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
    if not _selected_own(session) or not (selected.name == old or selected.name.startswith(old + DELIMITER)):
        return
    selected.name = selected.view.mailbox = new + selected.name[len(old):]
    selected.view.directory = session.backend.mail.mailbox_dir(session.user, selected.name)


async def subscribe(session, command) -> None:
    [token] = _args(command, 1, "a mailbox name")
    name = shown_name(session, *mailbox_ref(session, token))     # `shared/...` and `user/...` names too
    await _write(session, session.backend.mail.subscribe, session.user, name, command.name == "SUBSCRIBE")
    await session.ok(f"{command.name} completed")


unsubscribe = subscribe


# ---------------------------------------------------------------- LIST, LSUB

def _pattern(session, token) -> str | None:
    """A reference or pattern argument as store text; None when it is not valid modified UTF-7."""
    text = name_text(token)
    if utf8_names(session):
        return text
    try:
        return mutf7_decode(text)
    except Bad:
        return None


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


def _matchers(reference: str | None, patterns: list[str | None]) -> list:
    if reference is None:
        return []
    return [_matcher(_full_pattern(reference, p)) for p in patterns if p]


def _may_reach_others(pattern: str) -> bool:
    """The pattern may match a name of the Other Users or Shared namespace (what precedes
    its first wildcard is a prefix of `user/` or `shared/` or starts with one)."""
    literal = re.split(r"[*%]", pattern, maxsplit=1)[0]
    return any((head + DELIMITER).startswith(literal[:len(head) + 1]) for head in (OTHER_USERS, SHARED))


def _ancestors(names) -> set[str]:
    """Every parent of the names (`a` and `a/b` for `a/b/c`)."""
    out = set()
    for name in names:
        parts = name.split(DELIMITER)
        out.update(DELIMITER.join(parts[:depth]) for depth in range(1, len(parts)))
    return out


class _Tree:
    """The user's mailboxes with the parents they imply, and the subscribed names; names in
    LIST's order (INBOX first): the mailboxes, their parents and, with_subscribed, the
    subscribed names and their parents, existing or not; with others, the other users' and
    Shared mailboxes the user may list (acl.visible_others), under their namespace names
    (boxes: listed name -> the owner's MailboxInfo)."""

    def __init__(self, session, with_subscribed: bool, others: bool = False):
        mail = session.backend.mail
        self.boxes = {info.name: info for info in mail.list_mailboxes(session.user) if not reserved(info.name)}
        if others:
            self.boxes.update(acl.visible_others(session))
        self.subscribed = set(mail.subscriptions(session.user))
        self.parents = _ancestors(self.boxes)            # the names with existing children
        names = self.boxes.keys() | self.parents
        if with_subscribed:
            names |= self.subscribed | _ancestors(self.subscribed)
        self.names = sorted(names, key=lambda n: (n.split(DELIMITER)[0] != INBOX, n))

    def descendants(self, name: str):
        prefix = name + DELIMITER
        return (n for n in self.names if n.startswith(prefix))


class _ListRequest:
    """LIST's arguments (RFC 5258 3): selection options, reference, patterns, return options."""

    def __init__(self, session, args: list):
        args = list(args)
        self.extended = general.rev2(session)      # RFC 9051 has LIST-EXTENDED's attributes
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
        self.matchers = _matchers(reference, patterns)
        self.others = reference is not None and any(
            _may_reach_others(_full_pattern(reference, p)) for p in patterns if p)
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

    def meets(self, tree: _Tree, name: str) -> bool:
        """The selection criteria (SUBSCRIBED, SPECIAL-USE) hold for this name."""
        info = tree.boxes.get(name)
        return all(name in tree.subscribed if c == "SUBSCRIBED" else info is not None and bool(info.special_use)
                   for c in self.criteria)

    def child_info(self, tree: _Tree, name: str) -> bool:
        """RECURSIVEMATCH: a descendant meets the criteria but is not listed for itself."""
        return "RECURSIVEMATCH" in self.select and any(
            self.meets(tree, d) and not self.matches(d) for d in tree.descendants(name))


def _attributes(tree: _Tree, name: str, extended: bool) -> list[str]:
    info = tree.boxes.get(name)
    attrs = []
    if info is None:
        attrs.append("\\NonExistent" if extended else "\\Noselect")   # RFC 5258: it implies \\Noselect
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
    tree = _Tree(session, "SUBSCRIBED" in request.criteria, request.others)
    for name in tree.names:
        if not request.matches(name):
            continue
        child_info = bool(request.criteria) and request.child_info(tree, name)
        if request.criteria and not child_info and not request.meets(tree, name):
            continue
        attrs = _attributes(tree, name, request.extended)
        if request.show_subscribed and name in tree.subscribed:
            attrs.append("\\Subscribed")
        extra = (" (\"CHILDINFO\" (" + " ".join(f'"{c}"' for c in request.criteria) + "))").encode() \
            if child_info else b""
        await _list_line(session, "LIST", attrs, name, extra)
        info = tree.boxes.get(name)
        if request.status_items and info is not None and acl.may_read(session, info):
            await _send_status(session, name, info, request.status_items)
    await session.ok("LIST completed")


async def lsub(session, command) -> None:
    reference, pattern = (_pattern(session, t) for t in _args(command, 2, "a reference and a mailbox pattern"))
    if pattern == "":
        await session.untagged(f'LSUB (\\Noselect) "{DELIMITER}" ""')
        await session.ok("LSUB completed")
        return
    matches = _matchers(reference, [pattern])
    tree = _Tree(session, True)
    for name in tree.names:
        if not any(match(name) for match in matches):
            continue
        below = [d for d in tree.descendants(name) if d in tree.subscribed]
        if name in tree.subscribed:
            await _list_line(session, "LSUB", [], name)
        elif below and not any(match(d) for d in below for match in matches):
            await _list_line(session, "LSUB", ["\\Noselect"], name)   # `%` stopped above a subscribed one
    await session.ok("LSUB completed")

"""NOTIFY (RFC 5465): which changes a session hears of, also while no command is in progress.

notify(session, command) answers `NOTIFY NONE` (back to plain IMAP: updates only with
command responses and IDLE) and `NOTIFY SET [STATUS] (filter events)...`, where a filter is
SELECTED, SELECTED-DELAYED, INBOXES (INBOX), PERSONAL, SUBSCRIBED, SUBTREE names or
MAILBOXES names (one name or a parenthesised list; names that are not the user's own
mailboxes, `user/...` and `shared/...`, are ignored), and events are NONE or a list of
MessageNew [(fetch-att ...)], MessageExpunge, FlagChange, MailboxName, SubscriptionChange.
BAD for malformed arguments, for MessageNew without MessageExpunge (or the reverse), FlagChange
without both, fetch attributes outside SELECTED(-DELAYED), mailbox events under SELECTED(-DELAYED)
and two selected filters; NO [BADEVENT (supported events)] for AnnotationChange,
MailboxMetadataChange, ServerMetadataChange and unknown events. STATUS sends at once a
`* STATUS` of every mailbox the message events cover (the selected one aside).
The first group whose filter covers a mailbox decides its events; SELECTED(-DELAYED) alone
decides the selected mailbox's, which never gets a STATUS.
Session.notifier is then a Notifier: session.serve() reads the next command line through
idle.read_pushing(session, notifier), which waits for the line and for the Notifier's
change signal (store/notify.py watches: the user's top directory, signalled by the store on
mailbox create/delete/rename and (un)subscribe, and the directory of each covered mailbox),
and on a signal calls push(), which sends, in the session's own task (so never inside a
command's responses):
    the selected mailbox (SELECTED / SELECTED-DELAYED with message events; without
    FlagChange only when messages came or went): selected.send_updates (EXISTS, EXPUNGE or
    VANISHED, FETCH FLAGS), expunges held until a command allows them under
    SELECTED-DELAYED; then `* n FETCH (UID ... fetch-atts)` of the new messages when
    MessageNew asked for attributes (as .PEEK: \\Seen is never set)
    other mailboxes: `* STATUS name (MESSAGES n UIDNEXT n UIDVALIDITY n [HIGHESTMODSEQ n])`
    (HIGHESTMODSEQ with FlagChange) when messages came or went or, with FlagChange, flags
    changed
    MailboxName: `* LIST () "/" name` (created), `* LIST (\\NonExistent) "/" name` (deleted),
    `* LIST () "/" new ("OLDNAME" ("old"))` (renamed: a new name with a gone name's UIDVALIDITY)
    SubscriptionChange: `* LIST (\\Subscribed) "/" name` / `* LIST () "/" name`.
IDLE with a notifier waits the same way (workers/imapd/idle.py). Changes made by this
session are reported too (after the command).
Diagnostics: none of its own.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

from store import notify as store_notify
from store.mailstore import INBOX
from workers.imapd import condstore, fetch, folders
from workers.imapd.names import DELIMITER, mailbox_name, reserved, wire_name
from workers.imapd.parser import Atom, Bad

CAPABILITIES = ("NOTIFY",)

SUPPORTED = ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
UNSUPPORTED = ("AnnotationChange", "MailboxMetadataChange", "ServerMetadataChange")
BY_WORD = {name.upper(): name for name in SUPPORTED + UNSUPPORTED}
MESSAGE_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange"})
SELECTED_FILTERS = ("SELECTED", "SELECTED-DELAYED")
FILTERS = SELECTED_FILTERS + ("INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES")
FORWARD_WAIT = 3600.0       # seconds one watch waits before it simply waits again


@dataclass(frozen=True)
class Group:
    """One event group: a filter (with its names for SUBTREE / MAILBOXES), its events and
    MessageNew's fetch items (SELECTED filters only)."""
    filter: str
    names: tuple[str, ...]
    events: frozenset[str]
    items: tuple = ()

    def covers(self, name: str, subscribed) -> bool:
        if self.filter == "INBOXES":
            return name == INBOX
        if self.filter == "PERSONAL":
            return True
        if self.filter == "SUBSCRIBED":
            return name in subscribed
        if self.filter == "SUBTREE":
            return any(name == top or name.startswith(top + DELIMITER) for top in self.names)
        return self.filter == "MAILBOXES" and name in self.names

    @property
    def messages(self) -> bool:
        return "MessageNew" in self.events


# ---------------------------------------------------------------- the command

async def notify(session, command) -> None:
    args = list(command.args)
    word = args.pop(0).upper() if args and isinstance(args[0], Atom) else ""
    if word == "NONE" and not args:
        _stop(session)
        await session.ok("NOTIFY completed")
        return
    if word != "SET":
        raise Bad("NOTIFY takes NONE or SET [STATUS] (filter events)...")
    status = bool(args) and isinstance(args[0], Atom) and args[0].upper() == "STATUS"
    groups = [_group(session, token) for token in (args[1:] if status else args)]
    if not groups:
        raise Bad("NOTIFY SET needs at least one event group")
    if sum(g.filter in SELECTED_FILTERS for g in groups) > 1:
        raise Bad("NOTIFY: one SELECTED or SELECTED-DELAYED filter at most")
    unsupported = sorted({e for g in groups for e in g.events if e not in SUPPORTED})
    if unsupported:
        raise Bad(f"Event {unsupported[0]} is not supported", status="NO",
                  code="BADEVENT (" + " ".join(SUPPORTED) + ")")
    _stop(session)
    session.notifier = Notifier(session, groups)
    if status:
        await session.notifier.send_status()
    await session.ok("NOTIFY completed")


def _stop(session) -> None:
    if session.notifier is not None:
        session.notifier.close()
        session.notifier = None


def _group(session, token) -> Group:
    if not isinstance(token, list) or not token or not isinstance(token[0], Atom) \
            or token[0].upper() not in FILTERS:
        raise Bad("NOTIFY: an event group is (filter events)")
    kind = token[0].upper()
    rest = token[1:]
    names: tuple[str, ...] = ()
    if kind in ("SUBTREE", "MAILBOXES"):
        if len(rest) != 2:
            raise Bad(f"NOTIFY: {kind} takes mailbox names and events")
        names = _names(session, rest.pop(0))
    if len(rest) != 1:
        raise Bad(f"NOTIFY: {kind} takes one event list")
    events, items = _events(rest[0])
    selected = kind in SELECTED_FILTERS
    if selected and events - MESSAGE_EVENTS:
        raise Bad("NOTIFY: only message events apply to the selected mailbox")
    if items and not selected:
        raise Bad("NOTIFY: MessageNew's fetch attributes are for the selected mailbox only")
    if ("MessageNew" in events) != ("MessageExpunge" in events):
        raise Bad("NOTIFY: MessageNew and MessageExpunge go together")
    if events & {"FlagChange", "AnnotationChange"} and "MessageNew" not in events:
        raise Bad("NOTIFY: FlagChange needs MessageNew and MessageExpunge")
    return Group(kind, names, events, items)


def _names(session, token) -> tuple[str, ...]:
    names = []
    for one in token if isinstance(token, list) else [token]:
        if isinstance(one, list):
            raise Bad("NOTIFY: invalid mailbox name")
        try:
            names.append(mailbox_name(session, one))
        except Bad as error:
            if error.status != "NO":
                raise
    return tuple(names)


def _events(token) -> tuple[frozenset[str], tuple]:
    if isinstance(token, Atom) and token.upper() == "NONE":
        return frozenset(), ()
    if not isinstance(token, list) or not token:
        raise Bad("NOTIFY: events are NONE or a parenthesised list")
    events, items = set(), ()
    for i, one in enumerate(token):
        if isinstance(one, list):
            if i == 0 or not isinstance(token[i - 1], Atom) or token[i - 1].upper() != "MESSAGENEW":
                raise Bad("NOTIFY: only MessageNew takes fetch attributes")
            items = tuple(fetch.parse_items(one, True))
            continue
        if not isinstance(one, Atom):
            raise Bad("NOTIFY: invalid event")
        events.add(BY_WORD.get(one.upper(), str(one)))
    return frozenset(events), items


# ---------------------------------------------------------------- the notifier

def _status_items(group: Group) -> list[str]:
    return ["MESSAGES", "UIDNEXT", "UIDVALIDITY"] + (["HIGHESTMODSEQ"] if "FlagChange" in group.events else [])


def _state(info) -> tuple[int, int, int, int]:
    return info.uidvalidity, info.count, info.uidnext, info.highestmodseq


class Notifier:
    """The groups of one session's NOTIFY SET, what it last told of, and its watches."""

    def __init__(self, session, groups: list[Group]):
        self.session = session
        self.mail = session.backend.mail
        self.user = session.user
        self.selected_group = next((g for g in groups if g.filter in SELECTED_FILTERS and g.messages), None)
        self.groups = [g for g in groups if g.filter not in SELECTED_FILTERS]
        self._signal = asyncio.Event()
        self._woken: set[str] = set()
        self._watches: dict[str, tuple] = {}             # directory -> (subscription, forwarding task)
        self._user_dir = self.mail.user_dir(self.user)
        self._selection = None                           # (owner, name) the watches were made for
        self._boxes = self._list()
        self._subscribed = set(self.mail.subscriptions(self.user))
        self._told: dict[str, tuple] = {}                # covered mailbox -> _state when last told
        self._dirs: dict[str, str] = {}                  # covered mailbox's directory -> its name
        self._sync()

    # -- which mailboxes
    def _list(self) -> dict:
        return {info.name: info for info in self.mail.list_mailboxes(self.user) if not reserved(info.name)}

    def group_of(self, name: str, event: str | None = None, subscribed=None) -> Group | None:
        """The first group covering name (with the event, when given)."""
        subscribed = self._subscribed if subscribed is None else subscribed
        group = next((g for g in self.groups if g.covers(name, subscribed)), None)
        return group if group is not None and (event is None or event in group.events) else None

    def _covered(self) -> dict[str, Group]:
        """Mailbox -> the group whose message events cover it."""
        out = {}
        for name in self._boxes:
            group = self.group_of(name)
            if group is not None and group.messages:
                out[name] = group
        return out

    def _selection_key(self):
        selected = self.session.selected
        return None if selected is None else (selected.user, selected.name)

    def _sync(self) -> None:
        """The watches and the last told states follow the mailboxes, subscriptions and selection."""
        self._selection = self._selection_key()
        covered = self._covered()
        self._told = {name: self._told.get(name) or _state(self._boxes[name]) for name in covered}
        self._dirs = {self.mail.mailbox_dir(self.user, name): name for name in covered}
        wanted = {self._user_dir, *self._dirs}
        selected = self.session.selected
        if self.selected_group is not None and selected is not None:
            wanted.add(selected.directory)
        for directory in set(self._watches) - wanted:
            self._unwatch(directory)
        for directory in wanted - set(self._watches):
            subscription = store_notify.Watcher.for_loop().watch(directory)
            self._watches[directory] = (subscription, asyncio.ensure_future(self._forward(directory, subscription)))

    async def _forward(self, directory: str, subscription) -> None:
        while True:
            if await subscription.wait(FORWARD_WAIT):
                self._woken.add(directory)
                self._signal.set()

    def _unwatch(self, directory: str) -> None:
        subscription, task = self._watches.pop(directory)
        task.cancel()
        subscription.close()

    def close(self) -> None:
        for directory in list(self._watches):
            self._unwatch(directory)

    # -- waiting and telling
    async def wait(self, timeout: float) -> bool:
        """True when a watched directory was signalled (since the last wait that said so)."""
        if self._selection_key() != self._selection:
            self._sync()
        try:
            await asyncio.wait_for(self._signal.wait(), timeout)
        except TimeoutError:
            return False
        self._signal.clear()
        return True

    async def push(self) -> None:
        woken, self._woken = self._woken, set()
        if self._user_dir in woken:
            await self._mailbox_changes()
        selected = self.session.selected
        if self.selected_group is not None and selected is not None and selected.directory in woken:
            await self._push_selected(selected)
        for directory in woken:
            name = self._dirs.get(directory)
            info = self.mail.mailbox(self.user, name) if name is not None else None
            if info is None:
                continue
            before, now = self._told[name], _state(info)
            self._told[name] = now
            group = self.group_of(name)
            told = before[:3] != now[:3] or ("FlagChange" in group.events and before != now)
            if told and self._selection != (self.user, name):
                await folders._send_status(self.session, name, info, _status_items(group))

    async def send_status(self) -> None:
        """NOTIFY SET STATUS: the STATUS of every covered mailbox but the selected one."""
        for name, group in self._covered().items():
            if self._selection != (self.user, name):
                await folders._send_status(self.session, name, self._boxes[name], _status_items(group))

    async def _push_selected(self, selected) -> None:
        info = self.mail.mailbox(selected.user, selected.name)
        if info is not None and "FlagChange" not in self.selected_group.events and \
                (info.count, info.uidnext) == (selected.info.count, selected.info.uidnext):
            return                              # flags only: they wait for a command
        first_new = selected.info.uidnext
        await selected.send_updates(self.session, self.selected_group.filter == "SELECTED")
        if self.selected_group.items and selected.info.uidnext > first_new:
            view = selected.view.view
            plan = fetch.Plan(list(self.selected_group.items), view.keywords, selected.is_recent,
                              condstore.enabled(self.session))
            seqs = view.seqs_in_uid_ranges([(first_new, selected.info.uidnext - 1)])
            await fetch.answer(self.session, selected, plan, seqs, {})

    async def _mailbox_changes(self) -> None:
        """MailboxName and SubscriptionChange: LIST responses for what changed in the lists."""
        old_boxes, old_subscribed = self._boxes, self._subscribed
        self._boxes, self._subscribed = self._list(), set(self.mail.subscriptions(self.user))
        either = old_subscribed | self._subscribed
        gone = {info.uidvalidity: name for name, info in old_boxes.items() if name not in self._boxes}
        for name, info in self._boxes.items():
            if name in old_boxes:
                continue
            old = gone.pop(info.uidvalidity, None)
            if self.group_of(name, "MailboxName", either) or (old and self.group_of(old, "MailboxName", either)):
                extra = b"" if old is None else b' ("OLDNAME" (' + wire_name(self.session, old) + b"))"
                await folders._list_line(self.session, "LIST", [], name, extra)
        for name in sorted(gone.values()):
            if self.group_of(name, "MailboxName", either):
                await folders._list_line(self.session, "LIST", ["\\NonExistent"], name)
        for name in sorted(old_subscribed ^ self._subscribed):
            if self.group_of(name, "SubscriptionChange", either):
                await folders._list_line(self.session, "LIST", ["\\Subscribed"] if name in self._subscribed else [],
                                         name)
        self._sync()

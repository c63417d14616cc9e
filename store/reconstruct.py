"""Reconstruct: rebuild the index from the message files, while the server runs.

reconstruct(store, user=None) -> list[Report], one per user (every user found on disk or in
the index when user is None). For each mailbox directory, under the mailbox's lock (so
deliveries, flag changes and expunges wait):
- a mailbox the index lost is re-created with the UIDVALIDITY, subscription, special-use
  and ACL of its .mailbox file, and UIDNEXT above every UID its files and journal have seen;
- files named <uid>.<uidvalidity>.eml the index lacks are adopted with that UID, the
  internal date from their mtime and the flags from the journal's last word on them;
  files of UIDs recorded as expunged (a crash between expunge and unlink) are removed, and
  so are files at or above the mailbox's UIDNEXT: a delivery renames its files inside the
  index transaction that hands out their UIDs, so such a file is one whose transaction never
  committed (never acknowledged: the queue or the client sends it again);
- any other file (dropped in by hand, or of another UIDVALIDITY) gets the next UID and is
  renamed to its canonical name, so UIDVALIDITY never has to change;
- index entries whose files are gone are dropped (expunged, so sessions are told);
- index mailboxes without a directory are dropped; quota usage is recounted;
- temp files older than an hour (their writer died) and mailbox or user directories whose
  deletion was cut short (.deleted.*) are removed;
- a user without a directory has no mail: everything the index holds for them goes
  (a `user del --purge` cut short after its rename).
Entries that are fine keep their flags, UIDs and modseqs untouched.
Directories whose names are not the store's encoding of a mailbox name (made by hand) are
skipped and reported, never guessed at.

replace_damaged_index(store) -> Replacement | None: when the index's data file is damaged
(cut short or foreign: store.lmdbcheck), nothing can be read from it, so every user's index
is rebuilt from the files into a new environment in a .rebuild.* folder inside
index_directory; the damaged file is kept as data.mdb.damaged.<UTC time> and the new one
renamed into its place with the old one's owner and mode (lock.mdb is removed first, so
no process pairs the new data file with the old lock file; processes that had the old file
open switch at their next transaction). While it runs, index_directory is flock()ed (one repair at a time) and the
damaged file stays in place, so sessions keep getting temporary errors instead of creating
mailboxes afresh. What the files do not hold is lost: modseqs restart, delivery ids (a
delivery re-run after a crash may store its message twice) and the expunge history.
None when the index is fine (nothing done).
Diagnostics: the Reports say what changed; StorageError if the index cannot be written or
the mail store directory is missing (an unmounted filesystem must not empty the index).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from store import fsio, lmdbcheck
from store.index import NoSuchMailbox, ranges_from_values
from store.layout import (
    DELETED_PREFIX, JOURNAL_FILE, META_FILE, SEPARATOR, BadMailboxName, Journal, decode_component,
    message_file_name, meta_acl, normalise_mailbox, parse_message_file_name, read_journal, read_meta,
)
from store.mailstore import MailStore

DELIVERY_MEMORY = 30 * 86400  # delivery ids older than this are forgotten on a full run
STALE_TEMP_AGE = 3600  # a temp file this old belongs to a writer that died
REBUILD_PREFIX = ".rebuild."
DAMAGED_SUFFIX = ".damaged."


@dataclass
class Report:
    user: str
    mailboxes_added: list[str] = field(default_factory=list)
    mailboxes_dropped: list[str] = field(default_factory=list)
    adopted: list[tuple[str, int]] = field(default_factory=list)
    renumbered: list[tuple[str, str, int]] = field(default_factory=list)
    dropped: list[tuple[str, int]] = field(default_factory=list)
    removed_files: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    usage: tuple[int, int] = (0, 0)

    @property
    def changed(self) -> bool:
        return any((self.mailboxes_added, self.mailboxes_dropped, self.adopted, self.renumbered, self.dropped,
                    self.removed_files, self.skipped))

    def lines(self) -> list[str]:
        out = [f"{self.user}: mailbox {m} re-created" for m in self.mailboxes_added]
        out += [f"{self.user}: mailbox {m} dropped (no directory)" for m in self.mailboxes_dropped]
        out += [f"{self.user}: {m}: UID {uid} adopted from its file" for m, uid in self.adopted]
        out += [f"{self.user}: {m}: file {name} added as UID {uid}" for m, name, uid in self.renumbered]
        out += [f"{self.user}: {m}: UID {uid} dropped (file missing)" for m, uid in self.dropped]
        out += [f"{self.user}: {m}: removed {name} (expunged before)" for m, name in self.removed_files]
        out += [f"{self.user}: directory {d} skipped: not a name this store writes (see README)"
                for d in self.skipped]
        out.append(f"{self.user}: {self.usage[1]} messages, {self.usage[0]} bytes"
                   + ("" if self.changed else ", nothing to repair"))
        return out


@dataclass
class Replacement:
    """What replace_damaged_index did."""
    data_file: str
    reason: str
    kept_as: str
    reports: list[Report]

    def lines(self) -> list[str]:
        out = [f"index {self.data_file} is damaged: {self.reason}",
               f"index: damaged file kept as {self.kept_as}"]
        for report in self.reports:
            out += report.lines()
        out.append(f"index: rebuilt from the message files of {len(self.reports)} users and put in place")
        return out


def _decoded(entry: str) -> str | None:
    try:
        return decode_component(entry)
    except UnicodeDecodeError:
        return None


def _mailbox_name(store: MailStore, user: str, relative: str, directory: str) -> str | None:
    """The mailbox a directory holds, or None when its name is not the store's encoding of a
    valid mailbox name (made by hand: indexing it would point at files under another name)."""
    parts = [_decoded(p) for p in relative.split(os.sep)]
    if None in parts:
        return None
    try:
        name = normalise_mailbox(SEPARATOR.join(parts))
        return name if store.mailbox_dir(user, name) == directory else None
    except BadMailboxName:
        return None


def reconstruct(store: MailStore, user: str | None = None) -> list[Report]:
    if not os.path.isdir(store.store_dir):
        # an unmounted mail filesystem must not empty the index
        raise fsio.StorageError(f"mail store directory {store.store_dir} is missing; nothing done")
    _remove_cut_short_deletions(store.store_dir, os.listdir(store.store_dir))
    if user is not None:
        return [_reconstruct_user(store, user)]
    on_disk = set()
    for entry in os.listdir(store.store_dir):
        if not entry.startswith(".") and os.path.isdir(os.path.join(store.store_dir, entry)):
            name = _decoded(entry)
            if name is not None:
                on_disk.add(name)
    reports = [_reconstruct_user(store, name) for name in sorted(on_disk | set(store.index.users()))]
    store.index.prune_deliveries(time.time() - DELIVERY_MEMORY)
    return reports


def replace_damaged_index(store: MailStore) -> Replacement | None:
    index_dir = store.index.path
    if _damage(index_dir) is None:
        return None
    with store.locked(index_dir):
        damage = _damage(index_dir)  # another run may have repaired it meanwhile
        if damage is None:
            return None
        for entry in os.listdir(index_dir):  # the leftovers of a rebuild that died
            if entry.startswith(REBUILD_PREFIX):
                shutil.rmtree(os.path.join(index_dir, entry), ignore_errors=True)
        build = tempfile.mkdtemp(prefix=REBUILD_PREFIX, dir=index_dir)
        try:
            with MailStore(store.store_dir, build) as fresh:
                reports = reconstruct(fresh)
            _same_owner_and_mode(lmdbcheck.data_file(build), damage.path)
            kept = _keep_damaged(damage.path)
            try:
                os.unlink(os.path.join(index_dir, lmdbcheck.LOCK_FILE))
            except FileNotFoundError:
                pass
            os.rename(lmdbcheck.data_file(build), damage.path)
            fsio.fsync_dir(index_dir)
        except OSError as e:
            raise fsio.StorageError(f"cannot replace the damaged index in {index_dir}: {e.strerror}", e.errno) from e
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return Replacement(damage.path, damage.reason, kept, reports)


def _damage(index_dir: str) -> lmdbcheck.DamagedEnvironment | None:
    try:
        lmdbcheck.read_meta(index_dir)
    except lmdbcheck.DamagedEnvironment as e:
        return e
    return None


def _same_owner_and_mode(path: str, like: str) -> None:
    """The new file as the damaged one was: mailctl run as root must not leave an index the
    workers (mail_owner) cannot write."""
    st = os.stat(like)
    os.chmod(path, st.st_mode & 0o777)
    if os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid)


def _keep_damaged(path: str) -> str:
    """A second name for the damaged file (a hard link, so the data file is never missing:
    a process opening the index meanwhile must not start an empty one)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for attempt in range(100):
        kept = f"{path}{DAMAGED_SUFFIX}{stamp}" + (f"-{attempt}" if attempt else "")
        try:
            os.link(path, kept)
            return kept
        except FileExistsError:
            continue
    raise fsio.StorageError(f"cannot find a free name to keep {path}")


def _remove_cut_short_deletions(directory: str, entries: list[str]) -> None:
    for leftover in entries:
        if leftover.startswith(DELETED_PREFIX):
            shutil.rmtree(os.path.join(directory, leftover), ignore_errors=True)


def _reconstruct_user(store: MailStore, user: str) -> Report:
    report = Report(user)
    root = store.user_dir(user)
    if not os.path.isdir(root):
        report.mailboxes_dropped = [info.name for info in store.index.remove_user(user)]
        return report
    found = set()
    for directory, subdirs, _ in os.walk(root):
        _remove_cut_short_deletions(directory, subdirs)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if directory == root:
            continue
        relative = os.path.relpath(directory, root)
        name = _mailbox_name(store, user, relative, directory)
        if name is None:
            report.skipped.append(relative)
            subdirs[:] = []
            continue
        found.add(name)
        with store.locked(directory):
            _reconstruct_mailbox(store, user, name, directory, report)
    for info in store.index.mailboxes(user):
        if info.name not in found:
            try:
                store.index.delete_mailbox(user, info.name)
                report.mailboxes_dropped.append(info.name)
            except NoSuchMailbox:
                pass  # deleted meanwhile
    report.usage = store.index.recount_usage(user)
    return report


def _stale_temp(path: str) -> bool:
    """Remove a temp file left by a crash (older than STALE_TEMP_AGE); a delivery under way
    may remove its own temp file meanwhile, which is not an error."""
    try:
        if os.stat(path).st_mtime >= time.time() - STALE_TEMP_AGE:
            return False
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _reconstruct_mailbox(store: MailStore, user: str, name: str, directory: str, report: Report) -> None:
    journal = read_journal(os.path.join(directory, JOURNAL_FILE))
    canonical: dict[int, tuple[int, str]] = {}
    foreign: list[str] = []
    for entry in sorted(os.listdir(directory)):
        path = os.path.join(directory, entry)
        if fsio.is_temp_name(entry):
            if _stale_temp(path):
                report.removed_files.append((name, entry))
            continue
        if entry.startswith(".") or not os.path.isfile(path):
            continue  # our own files (.mailbox, .journal, temp files) and subfolders
        parsed = parse_message_file_name(entry)
        if parsed:
            canonical[parsed[0]] = (parsed[1], entry)
        else:
            foreign.append(entry)
    info = store.index.mailbox(user, name)
    if info is None:
        info = _recreate(store, user, name, directory, canonical, journal)
        report.mailboxes_added.append(name)
    else:
        for uid in [uid for uid, (validity, _) in canonical.items() if uid >= info.uidnext and validity == info.uidvalidity]:
            entry = canonical.pop(uid)[1]  # renamed in a delivery transaction that never committed
            os.unlink(os.path.join(directory, entry))
            report.removed_files.append((name, entry))
    for uid, (validity, entry) in list(canonical.items()):
        if validity != info.uidvalidity:
            foreign.append(entry)
            del canonical[uid]

    indexed = set(store.index.open_view(user, name).uids())
    missing = sorted(indexed - canonical.keys())
    if missing:
        store.index.expunge(user, name, ranges_from_values(missing), deleted_only=False)
        report.dropped += [(name, uid) for uid in missing]

    expunged = journal.expunged | set(store.index.expunged_since(user, name, 0))
    adopt = []
    for uid in sorted(canonical.keys() - indexed):
        entry = canonical[uid][1]
        path = os.path.join(directory, entry)
        if uid in expunged:
            os.unlink(path)
            report.removed_files.append((name, entry))
            continue
        st = os.stat(path)
        adopt.append((uid, st.st_size, int(st.st_mtime), journal.flags.get(uid, ())))
        report.adopted.append((name, uid))
    store.index.append_many(user, name, adopt)

    for entry in foreign:
        _adopt_foreign(store, user, name, directory, entry, report)
    if report.removed_files or foreign:
        fsio.fsync_dir(directory)


def _recreate(store: MailStore, user: str, name: str, directory: str, canonical, journal: Journal):
    meta = read_meta(os.path.join(directory, META_FILE))
    validity = int(meta.get("uidvalidity", 0) or 0)
    if not validity and canonical:
        validity = Counter(v for v, _ in canonical.values()).most_common(1)[0][0]
    uids = [uid for uid, (v, _) in canonical.items() if v == validity]
    uidnext = max([journal.highest_uid, *uids, 0]) + 1
    info = store.index.create_mailbox(user, name, uidvalidity=validity or None, uidnext=uidnext,
                                      special_use=meta.get("special-use", ""),
                                      subscribed=meta.get("subscribed") == "1")
    for identifier, rights in meta_acl(meta).items():
        store.index.set_acl(user, name, identifier, rights)
    store.write_meta(directory, info)
    return info


def _adopt_foreign(store: MailStore, user: str, name: str, directory: str, entry: str, report: Report) -> None:
    source = os.path.join(directory, entry)
    reservation = store.index.reserve_uid(user, name)
    target_name = message_file_name(reservation.uid, reservation.uidvalidity)
    st = os.stat(source)
    os.rename(source, os.path.join(directory, target_name))
    store.index.append(user, name, reservation.uid, st.st_size, int(st.st_mtime))
    report.renumbered.append((name, entry, reservation.uid))

"""The mail index: picks the compiled implementation or the pure-Python reference.

MAILHOUSE_PURE_PYTHON=1 forces store._index_py; otherwise store._index (Cython) is used when
it was built, else the reference (MAILHOUSE_REQUIRE_EXT=1 makes a missing build an error).
IMPL names the one in use (workers log it once at start).
Interface, the same in both (details in store/_index_py.py and store/_index_view.py):
  Index(path): open_view, mailbox, mailboxes, users, create_mailbox, delete_mailbox,
    rename_mailbox, set_mailbox_attributes, reserve_uid, append, reserve_uids, append_batch
    (group commit: many deliveries in one transaction each), deliver_in_one (both in one),
    append_many, store_flags,
    write_many (flags, expunge, \\Recent and structure requests in one transaction: group
    commit), delivered, expunge, expunged_since, changes_since, usage, recount_usage, prune_deliveries,
    remove_user, structures, put_structures (the imapd's per-message blobs), close
  View (a snapshot): len, uid, seq, uids, record, flag_bits, total_size, resolve,
    seqs_in_uid_ranges, uid_ranges, search, sort, changed_since, diff
  parse_sequence_set(text, largest); flag_names; ranges_from_values; normalise_ranges; the data classes
  MailboxInfo, MessageRecord, Reservation, Records and the errors.
Diagnostics: NoSuchMailbox, MailboxExists, TooManyKeywords, ValueError; StorageError, and its
store.lmdbcheck.DamagedEnvironment when the data file is cut short or foreign (never mapped).
"""
from __future__ import annotations

import os

from store._index_view import (  # noqa: F401  (the shared data types and errors)
    ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, SYSTEM_FLAGS, MailboxExists, MailboxInfo, MessageRecord, NoSuchMailbox, Records, Reservation,
    TooManyKeywords, flag_names, normalise_ranges, only, ranges_from_values,
)

if os.environ.get("MAILHOUSE_PURE_PYTHON"):
    from store._index_py import Index, View, parse_sequence_set
else:
    try:
        from store._index import Index, View, parse_sequence_set
    except ImportError:
        if os.environ.get("MAILHOUSE_REQUIRE_EXT"):
            raise
        from store._index_py import Index, View, parse_sequence_set

IMPL = Index.__module__

__all__ = [
    "IMPL", "Index", "View", "parse_sequence_set", "SEEN", "ANSWERED", "FLAGGED", "DELETED", "DRAFT", "SYSTEM_FLAGS", "MailboxExists", "MailboxInfo",
    "MessageRecord", "NoSuchMailbox", "Records", "Reservation", "TooManyKeywords", "flag_names",
    "normalise_ranges", "only", "ranges_from_values",
]
